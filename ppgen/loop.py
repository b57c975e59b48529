r"""The one training loop: epochs of shuffled batches over a :class:`~ppgen.steps.Step`.

The loop knows a fit only through its step (:mod:`ppgen.steps`): it shuffles and shares the rows
(each rank its share under a process group), records each epoch's terms, scores the validation
rows, stops each group of parameters on its own patience and keeps its best epoch, writes and
resumes checkpoints, and stops cleanly on Ctrl-C. :func:`ppgen.fit_mle`, :func:`ppgen.fit_svi`
and :func:`ppgen.fit_gan` differ only in the step they hand it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ppgen import distributed
from ppgen.data import Table
from ppgen.io import LoadError, exclusive, load_checkpoint, save_checkpoint
from ppgen.result import FitResult
from ppgen.steps import Step

__all__ = ["check_budget", "checkpoint_file", "train"]


@dataclass
class LoopState:
    """What the loop carries from one epoch to the next, and through a checkpoint.

    Attributes:
        epoch: The last epoch done.
        done: Whether every group has stopped.
        best: Each group's best score so far (higher is better).
        stale: Each group's epochs since its best.
        frozen: The groups that have stopped.
        saved: Each group's parameters of its best epoch (with validation rows).
    """

    epoch: int = 0
    done: bool = False
    best: dict[str, float] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    saved: dict[str, list[Tensor]] = field(default_factory=dict)


def train(
    step: Step,
    data: Table,
    val: Table | None,
    *,
    epochs: int,
    batch_size: int,
    patience: int | None,
    progress: bool,
    description: str,
    checkpoint: str | os.PathLike[str] | None = None,
    every: int = 1,
    resume: bool = False,
    identity: Mapping[str, object] | None = None,
) -> FitResult:
    r"""Trains `step` for `epochs` epochs of shuffled batches of `batch_size` rows of `data`.

    Arguments:
        step: What one step does (:class:`~ppgen.steps.Step`).
        data, val: The training rows, and the validation rows (or `None`).
        epochs, batch_size: The budget.
        patience: Epochs without improvement of a group's validation terms before it stops
            (`None`: never); each group keeps the parameters of its best validation epoch.
        progress: Whether to show a tqdm bar, labelled `description`.
        checkpoint: A folder where the loop's whole state (the step's parameters and optimiser
            moments, the random state, the best parameters and the history) is written
            atomically to `checkpoint.safetensors` every `every` epochs and at the end.
        resume: Whether to continue from the checkpoint in `checkpoint`, when there is one:
            the fit then ends with the parameters an uninterrupted fit would have reached.
        identity: What the checkpoint belongs to (JSON: the fit, the model's structure, a
            fingerprint of the data, the settings), written with it; a resume onto anything
            else is refused, naming what differs. While a fit writes to a folder, a lock file
            keeps any other fit out of it.

    A step with no group of parameters (every site solved in closed form) is scored once, as
    epoch 0. Ctrl-C stops the fit between two steps: the parameters of the best epoch so far
    are restored, a warning says so, and the result has `interrupted=True`. An error during an
    epoch (a non-finite loss) leaves the parameters of the last epoch that ended.

    Under a `torch.distributed` process group (see :mod:`ppgen.distributed` and
    `docs/scaling.md`), each rank takes its share of every epoch's permutation, `batch_size`
    rows per step (the global batch is `batch_size × world_size`), the epoch's sums are
    all-reduced for the history (each row counted once), and rank 0 alone writes checkpoints
    and shows the bar.

    Example:
        >>> model = ppgen.dag([("a", "b")], hidden=(4,))
        >>> rows = ppgen.data.table(model, {"a": torch.zeros(8), "b": torch.ones(8)})
        >>> objective = ppgen.density.ExactLogLikelihood(model, rows.rows(slice(None)))
        >>> step = ppgen.steps.GradientStep(
        ...     objective, {"all": (list(model.parameters()), ["a", "b"])}, lr=0.01)
        >>> fit = train(step, rows, None, epochs=2, batch_size=4, patience=None,
        ...             progress=False, description="fit")
        >>> [record["epoch"] for record in fit.history]
        [1, 2]
    """
    check_budget(epochs, batch_size)
    start = time.perf_counter()
    path = checkpoint_file(checkpoint, resume)
    result = FitResult()
    if not step.groups:  # nothing to train: the model as it is, scored once
        result.history.append(_record(0, step, _means(step.constant, data), data, val, batch_size))
        result.seconds = time.perf_counter() - start
        return result
    state = LoopState(best=dict.fromkeys(step.groups, -math.inf), stale=dict.fromkeys(step.groups, 0))
    identity = dict(identity or {})
    held = exclusive(path.parent) if path is not None and distributed.is_writer() else nullcontext()
    with held:  # no second fit writes into the folder meanwhile
        if path is not None and resume and path.exists():
            _resume(path, step, state, result, identity)
        _run(step, data, val, state, result, epochs=epochs, batch_size=batch_size,
             patience=patience, progress=progress, description=description, path=path,
             every=every, identity=identity)  # fmt: skip
    for name, values in state.saved.items():
        _copy(step.groups[name][0], values)
    result.seconds = time.perf_counter() - start
    return result


def _run(
    step: Step,
    data: Table,
    val: Table | None,
    state: LoopState,
    result: FitResult,
    *,
    epochs: int,
    batch_size: int,
    patience: int | None,
    progress: bool,
    description: str,
    path: Path | None,
    every: int,
    identity: dict[str, object],
) -> None:
    """The epochs from the one after `state.epoch`, with their records and checkpoints."""
    parameters = step.parameters()
    last = [p.detach().clone() for p in parameters]  # the parameters after the last epoch
    writer = distributed.is_writer()
    first = epochs + 1 if state.done else state.epoch + 1
    bar = tqdm(range(first, epochs + 1), desc=description, disable=not (progress and writer),
               leave=False)  # fmt: skip
    epoch = first
    try:
        for epoch in bar:
            record = _epoch(step, data, val, epoch, batch_size, state.frozen)
            result.history.append(record)
            _keep_best(step, state, result, record, val is not None, patience)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train", "val")})
            state.epoch, state.done = epoch, state.frozen == set(step.groups)
            if path is not None and writer and (epoch % every == 0 or epoch == epochs or state.done):
                _save(path, step, state, result, identity)
            last = [p.detach().clone() for p in parameters]
            if state.done:
                break
    except KeyboardInterrupt:
        _copy(parameters, last)
        result.interrupted = True
        warnings.warn(
            f"{description} interrupted at epoch {epoch}: the model keeps the best parameters "
            f"so far (epochs {result.best_epoch or 'none'}).",
            UserWarning,
            stacklevel=3,
        )
    except Exception:  # a non-finite loss, or the program failing: the last epoch that ended
        _copy(parameters, last)
        raise


def _epoch(
    step: Step, data: Table, val: Table | None, epoch: int, batch_size: int, frozen: set[str]
) -> dict[str, float]:
    """Runs one epoch of steps over a fresh permutation of the rows; returns its record."""
    tic = time.perf_counter()
    order = torch.randperm(len(data), device=data.home)
    order, longest = distributed.shard(order)  # this rank's rows (all, in one process)
    running = None  # the terms' sums over the epoch's rows, stacked
    for start in range(0, longest, batch_size):
        index = order[start : start + batch_size]
        rows = distributed.batch_rows(len(data), start, batch_size)
        totals = step.step(data.rows(index), rows, epoch, frozen)
        if totals is not None:
            running = totals if running is None else running + totals
    seconds = time.perf_counter() - tic
    sums = {} if running is None else dict(zip(step.terms, running, strict=True))
    if distributed.active() is not None and sums:  # every rank's rows, each once
        summed = distributed.all_reduce(torch.stack(list(sums.values())))
        sums = dict(zip(sums, summed, strict=True))
    sums.update(step.constant)  # every training row's, on each rank
    record = _record(epoch, step, _means(sums, data), data, val, batch_size)
    record["seconds"] = seconds
    return record


def _means(sums: dict[str, Tensor | float], data: Table) -> dict[str, float] | None:
    """Sums over the training rows as means per row (`None` where there are none)."""
    return {name: float(total) / len(data) for name, total in sums.items()} or None


def _record(
    epoch: int,
    step: Step,
    train: dict[str, float] | None,
    data: Table,
    val: Table | None,
    batch_size: int,
) -> dict[str, float]:
    """One line of history: each term's mean per row on the training rows (as summed during
    the epoch, or evaluated afresh) and the validation rows' scores; with their total where
    the terms add up to one objective."""
    record: dict[str, float] = {"epoch": epoch}
    for split, rows, means in (("train", data, train), ("val", val, None)):
        if rows is None:
            continue
        means = means if means is not None else step.evaluate(rows, batch_size)
        if step.summed:
            record[split] = sum(means.values())
        record.update({f"{split}/{name}": value for name, value in means.items()})
    return record


def _keep_best(
    step: Step,
    state: LoopState,
    result: FitResult,
    record: dict[str, float],
    validated: bool,
    patience: int | None,
) -> None:
    """Keeps each group's parameters where its score improved, and stops a group that has not
    improved for `patience` epochs."""
    split, sign = ("val" if validated else "train"), (1 if step.maximise else -1)
    for name, (params, terms) in step.groups.items():
        if name in state.frozen:
            continue
        score = sign * sum(record[f"{split}/{t}"] for t in terms)
        if not validated or score > state.best[name]:
            state.best[name], state.stale[name] = score, 0
            result.best_epoch[name] = int(record["epoch"])
            if validated:
                state.saved[name] = [p.detach().clone() for p in params]
        else:
            state.stale[name] += 1
            if patience is not None and state.stale[name] >= patience:
                state.frozen.add(name)


def _copy(parameters: list[Tensor], values: list[Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(parameters, values, strict=True):
            p.copy_(v)


def _save(
    path: Path, step: Step, state: LoopState, result: FitResult, identity: dict[str, object]
) -> None:
    """Writes the step's state, the best parameters, the random state and the bookkeeping."""
    tensors, meta = step.state()
    for name, values in state.saved.items():
        tensors.update({f"saved.{i}.{name}": v for i, v in enumerate(values)})
    tensors["rng"] = torch.random.get_rng_state()
    bookkeeping = {"epoch": state.epoch, "done": state.done, "best": state.best,
                   "stale": state.stale, "frozen": sorted(state.frozen),
                   "history": result.history, "best_epoch": result.best_epoch}  # fmt: skip
    description = {"state": bookkeeping, "saved": list(state.saved), "identity": identity, **meta}
    save_checkpoint(path, tensors, description)


def _resume(
    path: Path, step: Step, state: LoopState, result: FitResult, identity: dict[str, object]
) -> None:
    """Restores a checkpoint written by :func:`_save` for the same `identity`; nothing changes
    where it does not fit, or belongs to another fit."""
    description, tensors = load_checkpoint(path)
    theirs = description.get("identity") or {}
    differ = [key for key in identity if theirs.get(key) != identity[key]]
    if differ:
        raise LoadError(
            f"{path} holds the checkpoint of another model or fit: its {' and '.join(differ)} "
            "differ from this fit's; choose another folder for this fit."
        )
    try:
        saved = {name: _saved(tensors, name) for name in description["saved"]}
        bookkeeping = description["state"]
        fields = ("best", "stale", "frozen", "epoch", "done", "history", "best_epoch")
        best, stale, frozen, epoch, done, history, best_epoch = (bookkeeping[k] for k in fields)
        rng = tensors["rng"]
        step.load_state(tensors, description)  # checks before it changes anything
    except (KeyError, TypeError, ValueError, RuntimeError):
        raise LoadError(f"{path} holds the checkpoint of another model or fit.") from None
    state.saved, state.best, state.stale, state.frozen = saved, best, stale, set(frozen)
    state.epoch, state.done = epoch, done
    result.history, result.best_epoch = history, best_epoch
    torch.random.set_rng_state(rng)


def _saved(tensors: dict[str, Tensor], name: str) -> list[Tensor]:
    values = []
    while (key := f"saved.{len(values)}.{name}") in tensors:
        values.append(tensors[key])
    return values


def check_budget(epochs: int, batch_size: int) -> None:
    """One sentence for a budget of no epoch or no row a batch.

    Example:
        >>> check_budget(0, 10)
        Traceback (most recent call last):
        ...
        ValueError: epochs must be a positive number, not 0.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, not {batch_size}.")
    if epochs < 1:
        raise ValueError(f"epochs must be a positive number, not {epochs}.")


def checkpoint_file(checkpoint: str | os.PathLike[str] | None, resume: bool) -> Path | None:
    """The checkpoint file in folder `checkpoint`; an existing one is kept unless resumed."""
    if checkpoint is None:
        return None
    folder = Path(checkpoint)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint={str(folder)!r} is a file; give a folder.")
    path = folder / "checkpoint.safetensors"
    if path.exists() and not resume:
        raise ValueError(
            f"{path} already holds a checkpoint; pass resume=True to continue it, or choose "
            "another folder."
        )
    if distributed.is_writer():  # under a process group, rank 0 alone writes
        folder.mkdir(parents=True, exist_ok=True)
    return path
