r"""Fitting: one training loop, the exact log-likelihood objective, and closed-form solvers.

A fully observed program has the exact log-likelihood
:math:`\log p(x) = \sum_i \log p(x_i \mid \mathrm{Pa}(x_i))`, a sum of one term per site whose
parameters enter no other term. :func:`fit_mle` solves tabular, linear-Gaussian and root nodes
in closed form and fits the neural ones by minibatch Adam on their exact terms, with early
stopping per node.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ppgen import distributed
from ppgen.data import Table, _is_frame, place, table
from ppgen.elbo import (
    _ARGUMENT,
    ELBOS,
    ELBOObjective,
    _parameters_of,
    _set_rng_state,
    per_row,
    svi_table,
)
from ppgen.graph import _is_variable, _unweighted, trace_calls
from ppgen.io import LoadError, load_checkpoint, save_checkpoint
from ppgen.nn import LinearGaussian, Node, Root, Tabular, features

__all__ = [
    "ExactLogLikelihood",
    "FitResult",
    "fit_gan",
    "fit_mle",
    "fit_svi",
    "solve_closed_form",
    "train",
]

Objective = Callable[[dict[str, Tensor]], dict[str, Tensor]]


@dataclass
class FitResult:
    r"""What a fit returns, beside the fitted model itself.

    Attributes:
        history: One record per epoch: `epoch`, `train` and `val` (the mean log-likelihood or
            ELBO in nats per row), `train/SITE`, `val/SITE` per term, and `seconds` (the
            epoch's optimisation time, validation excluded).
        best_epoch: For each group of parameters trained together (a site, or `"all"`), the
            epoch whose parameters were kept.
        closed_form: The sites solved exactly, without gradient steps.
        seconds: The wall-clock time of the fit.
        categories: The labels of the data's categorical columns, in the order of their codes,
            for `ppgen.sample(..., as_frame=True, categories=fit.categories)` and
            `ppgen.log_prob(model, frame, categories=fit.categories)`.
        interrupted: Whether the fit was stopped by Ctrl-C (the model then holds the best
            parameters reached so far).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: dict[str, int] = field(default_factory=dict)
    closed_form: list[str] = field(default_factory=list)
    seconds: float = 0.0
    categories: dict[str, list[object]] = field(default_factory=dict)
    interrupted: bool = False

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        shown = ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k in ("train", "val"))
        return f"FitResult(epochs={len(self.history)}, {shown}, closed_form={self.closed_form})"


class ExactLogLikelihood(nn.Module):
    r"""The exact log-likelihood of a fully observed program, one term per site.

    Where every site's distribution comes from a ppgen conditional called directly on its
    parents' values, the terms are computed from those modules alone, without running the
    program (checked once against Pyro's own trace); otherwise the conditioned program is traced.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        probe: A few rows of checked data, used to find the structure.
        args, kwargs: Other inputs of `model`.

    Example:
        >>> model = ppgen.dag([("a", "b")])
        >>> rows = {"a": torch.zeros(4), "b": torch.ones(4)}
        >>> sorted(ExactLogLikelihood(model, rows)(rows))
        ['a', 'b']
    """

    def __init__(
        self,
        model: Callable[..., object],
        probe: dict[str, Tensor],
        *args: object,
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.model, self.args, self.kwargs = model, args, kwargs
        self.factors = self._structure(probe)

    def _structure(self, probe: dict[str, Tensor]) -> dict[str, tuple[Node, list[str]]] | None:
        rows = len(next(iter(probe.values())))
        conditioned = pyro.condition(self.model, data=probe)
        with torch.no_grad():
            trace, calls = trace_calls(conditioned, *self.args, n=rows, **self.kwargs)
        sites = {name: s for name, s in trace.nodes.items() if _is_variable(s)}
        names = {id(site["value"]): name for name, site in sites.items()}
        factors = {}
        for name, site in sites.items():
            call = calls.get(name)
            if call is None or not _unweighted(site):
                return None
            parents = [names.get(id(value)) for value in call[1]]
            if None in parents:
                return None
            factors[name] = (call[0], parents)
        if all(isinstance(m, Tabular) for m, _ in factors.values()) and all(
            sites[n]["fn"].shape() == (rows,) for n in factors
        ):  # each site is its table's Categorical (matched above), one value a row: they agree
            return factors
        self.factors = factors
        with torch.no_grad():
            fast = sum(t.sum() for t in self(probe).values())
            self.factors = None
            exact = sum(t.sum() for t in self(probe).values())
        return factors if torch.allclose(fast, exact, rtol=1e-5, atol=1e-5) else None

    def forward(
        self, batch: dict[str, Tensor], sites: Iterable[str] | None = None
    ) -> dict[str, Tensor]:
        """Returns each site's log-likelihood per row, of shape :math:`(N,)`, for every site or
        for `sites` alone (computed alone where the structure is known)."""
        rows = len(next(iter(batch.values())))
        if self.factors is not None:
            factors = self.factors if sites is None else {s: self.factors[s] for s in sites}
            return {
                name: _per_row(module.log_prob(batch[name], *(batch[p] for p in parents)), rows)
                for name, (module, parents) in factors.items()
            }
        conditioned = poutine.condition(self.model, data=batch)
        trace = poutine.trace(conditioned).get_trace(*self.args, n=rows, **self.kwargs)
        with warnings.catch_warnings():  # a non-finite term gets train's own error, naming it
            warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
            trace.compute_log_prob()
        terms = {
            name: _per_row(site["log_prob"], rows)
            for name, site in trace.nodes.items()
            if _is_variable(site)
        }
        return terms if sites is None else {s: terms[s] for s in sites}


def _per_row(log_prob: Tensor, rows: int) -> Tensor:
    if log_prob.dim() == 1:
        return log_prob
    return log_prob.reshape(rows, -1).sum(-1) if log_prob.dim() else log_prob.expand(rows) / rows


def solve_closed_form(module: Node, value: Tensor, parents: Iterable[Tensor]) -> bool:
    r"""Sets a conditional's parameters to their maximum-likelihood values, where a formula exists.

    Tabular nodes take the empirical conditional frequencies (a parent configuration never seen
    gets the uniform distribution), linear-Gaussian nodes least squares and the biased residual
    standard deviation, and roots of the Normal, Bernoulli and Categorical families their
    sample statistics over every value of the site (its rows, and the plates inside them). A
    frequency of 0 is the log-probability :math:`-\infty` of a table and the logit
    :math:`-\infty` of a categorical root; a Bernoulli root's frequency of 0 or 1 is the logit
    :math:`\mp 1000`, as certain (see :class:`~ppgen.nn.Root`).

    Returns:
        Whether the module was solved; `False` leaves it untouched, for gradient ascent.

    Example:
        >>> root = Root(dist.Bernoulli)
        >>> solve_closed_form(root, torch.tensor([1.0, 1.0, 0.0, 1.0]), [])
        True
        >>> round(root().probs.item(), 6)
        0.75
    """
    return _solve(module, value, parents)[0]


def _solve(module: Node, value: Tensor, parents: Iterable[Tensor]) -> tuple[bool, Tensor | None]:
    """As :func:`solve_closed_form`, and the log-likelihood summed over the rows at the solution
    where the solver has it for free (a table's, from its counts), else `None`."""
    parents = list(parents)
    with torch.no_grad():
        if isinstance(module, Tabular):
            return True, _solve_tabular(module, value, parents)
        if isinstance(module, LinearGaussian):
            return _solve_linear_gaussian(module, value, parents), None
        if isinstance(module, Root):
            return _solve_root(module, value), None
    return False, None


def _solve_tabular(module: Tabular, value: Tensor, parents: list[Tensor]) -> Tensor:
    r"""Counts each (parents, value) configuration with one `bincount` over a mixed-radix index,
    sets the table to the conditional frequencies, and returns the log-likelihood of the rows
    under it, :math:`\sum n \log(n / N_{pa})`, from the counts alone."""
    shape = (*module.parent_cardinalities, module.cardinality)
    digits = [*parents, value]
    index = digits[0].long()
    for p, k in zip(digits[1:], shape[1:], strict=True):  # index * k + p, in one kernel
        index = torch.add(p.long(), index, alpha=k)
    counts = torch.bincount(index.reshape(-1), minlength=math.prod(shape))
    counts = distributed.all_reduce(counts)  # every rank's rows, under a process group
    counts = counts.reshape(shape).to(module.logits.dtype)
    totals = counts.sum(-1, keepdim=True)
    logits = torch.where(totals > 0, counts.log() - totals.log(), torch.zeros_like(counts))
    module.logits.copy_(logits)
    return torch.where(counts > 0, counts * module.logits.log_softmax(-1), 0.0).sum()


def _solve_linear_gaussian(module: LinearGaussian, value: Tensor, parents: list[Tensor]) -> bool:
    dtype = module.scale.dtype
    cards = module.parent_cardinalities or [None] * len(parents)
    x = features(parents, cards, dtype) if parents else value.new_zeros(len(value), 0, dtype=dtype)
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)
    y = value.reshape(-1, 1).to(dtype)
    if distributed.active() is not None:
        return _solve_normal_equations(module, design, y)
    solution = torch.linalg.lstsq(
        design, y, driver="gelsd" if design.device.type == "cpu" else None
    )
    coef = solution.solution
    sigma = (y - design @ coef).pow(2).mean().sqrt()
    return _set_linear_gaussian(module, coef, sigma)


def _set_linear_gaussian(module: LinearGaussian, coef: Tensor, sigma: Tensor) -> bool:
    """Writes least-squares coefficients (bias last) and residual scale into `module`, if valid."""
    if not torch.isfinite(coef).all() or sigma <= 0:
        return False
    module.linear.weight.copy_(coef[:-1].T)
    module.linear.bias.copy_(coef[-1])
    module.scale.copy_(_inverse_softplus(sigma))
    return True


def _solve_normal_equations(module: LinearGaussian, design: Tensor, y: Tensor) -> bool:
    """Least squares from XᵀX and Xᵀy summed over the ranks (the rows of each on its own)."""
    gram = distributed.all_reduce(torch.cat([design.T @ design, design.T @ y], dim=-1))
    rows = distributed.all_reduce(torch.tensor(float(len(y)), dtype=y.dtype, device=y.device))
    driver = "gelsd" if design.device.type == "cpu" else None
    coef = torch.linalg.lstsq(gram[:, :-1], gram[:, -1:], driver=driver).solution
    sigma = (distributed.all_reduce((y - design @ coef).pow(2).sum()) / rows).sqrt()
    return _set_linear_gaussian(module, coef, sigma)


def _mean(value: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The mean over `dims` (the rows first), of every rank's rows under a process group."""
    if distributed.active() is None:
        return value.mean(dims)
    count = math.prod(value.shape[d] for d in dims)
    rows = torch.tensor(float(count), dtype=value.dtype, device=value.device)
    return distributed.all_reduce(value.sum(dims)) / distributed.all_reduce(rows)


# The logit of a probability of 1 (its opposite: of 0). torch's Bernoulli has no log-density at
# an infinite logit; at ±1000 it is certain in every float dtype: exp(-1000) is 0 in float64.
_CERTAIN = 1000.0


def _solve_root(module: Root, value: Tensor) -> bool:
    """Sets a root's η to its maximum-likelihood value on every value of its site: the rows
    and any plate dimensions beside them share the one parameter, split only along the root's
    event dimensions."""
    head = module.head
    if not head.params:  # every parameter is fixed
        return True
    value = value.to(module.eta.dtype)
    dims = tuple(range(value.dim() - len(head.event_shape)))  # the rows and the plates'
    if head.family is dist.Normal:
        fixed = {
            name: torch.as_tensor(v, dtype=value.dtype, device=value.device)
            for name, v in head.fixed.items()
        }
        loc = fixed.get("loc")
        if loc is None:  # each value weighs its precision: one weight, unless scales are fixed
            weight = fixed.get("scale", value.new_ones(())).pow(-2).expand_as(value)
            loc = _mean(weight * value, dims) / _mean(weight, dims)
        stats = {"loc": loc, "scale": _mean((value - loc).pow(2), dims).sqrt()}
        if "scale" not in fixed and (stats["scale"] <= 0).any():
            return False
    elif head.family is dist.Bernoulli:
        p = _mean(value, dims)
        stats = {"logits": (p.log() - (-p).log1p()).clamp(-_CERTAIN, _CERTAIN)}
    elif head.family is dist.Categorical:
        counts = F.one_hot(value.long(), head.cardinality).sum(dims)
        counts = distributed.all_reduce(counts).to(value.dtype)
        stats = {"logits": counts.log() - counts.sum(-1, keepdim=True).log()}  # log 0 = -inf
    else:
        return False
    parts = [transform.inv(stats[name]).reshape(-1) for name, _, transform, _ in head.params]
    module.eta.copy_(torch.cat(parts))
    return True


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def train(
    objective: Objective,
    groups: Mapping[str, tuple[list[nn.Parameter], list[str]]],
    data: Table,
    val: Table | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int | None,
    progress: bool,
    description: str,
    weight_decay: float = 0.0,
    checkpoint: str | os.PathLike[str] | None = None,
    every: int = 1,
    resume: bool = False,
    fixed: Mapping[str, Tensor] | None = None,
) -> FitResult:
    r"""The one training loop: minibatch Adam on the sum of an objective's terms.

    Arguments:
        objective: Maps a batch (a dict of tensors, rows first) to named terms, each the
            log-likelihood (or ELBO) of every row of shape :math:`(N,)`, or its sum over the
            rows as a scalar; their mean per row is maximised. An objective with a method
            `step(batch, rows) -> terms` optimises itself instead (a GAN's two players, with
            their own optimisers: :class:`ppgen.models.gan.GANObjective`), dividing its losses'
            sums by `rows`; `lr` is then unused, and the loop only records its terms. An
            objective with a method `score(rows) -> {name: value}` scores the validation rows
            all at once with it (higher is better), instead of as a mean of per-row terms.
        groups: Named groups of parameters, each with the terms it alone enters; a group whose
            validation terms have not improved for `patience` epochs stops training, and each
            group keeps the parameters of its best validation epoch.
        data, val: The training rows, and the validation rows (or `None`).
        epochs, batch_size, lr: The optimisation budget.
        weight_decay: Adam's L2 penalty on the parameters (a Gaussian prior: the fit is then
            the maximum a posteriori, not the maximum likelihood).
        patience: Epochs without improvement before a group stops (`None`: never).
        progress: Whether to show a tqdm bar.
        description: The bar's label.
        checkpoint: A folder where the loop's whole state (parameters, Adam's moments, the
            random state, the best parameters and the history) is written atomically to
            `checkpoint.safetensors` every `every` epochs and at the end.
        every: The epochs between checkpoints.
        resume: Whether to continue from the checkpoint in `checkpoint`, when there is one:
            the fit then ends with the parameters an uninterrupted fit would have reached.
        fixed: The terms of every training row, in order, that no step changes (such as the
            sites :func:`fit_mle` solved in closed form). The steps then call
            `objective(batch, sites=...)` for the other terms alone, and each epoch's history
            sums the fixed ones over the epoch's rows.

    Ctrl-C stops the fit between two steps: the parameters of the best epoch so far are
    restored, a warning says so, and the result has `interrupted=True`.

    Under a `torch.distributed` process group (see :mod:`ppgen.distributed` and
    `docs/scaling.md`), each rank takes its share of every epoch's permutation, `batch_size`
    rows per step (the global batch is `batch_size × world_size`), the objective runs in
    `DistributedDataParallel` (:class:`~ppgen.distributed.Lockstep`: an error on one rank
    stops every rank with the same message), the epoch's sums are all-reduced for the history
    (each row counted once), and rank 0 alone writes checkpoints and shows the bar.
    """
    _check_budget(epochs, batch_size)
    start = time.perf_counter()
    path = _checkpoint_file(checkpoint, resume)
    parameters = [p for params, _ in groups.values() for p in params]
    stepper = getattr(objective, "step", None)  # an objective with its own optimisers (a GAN)
    optimizer = None
    if parameters and stepper is None:  # one fused kernel steps every parameter, where it can
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
        optimizer = torch.optim.Adam(
            parameters, lr=lr, weight_decay=weight_decay, fused=fused or None
        )
    if path is not None and stepper is not None:
        raise ValueError("Checkpoints need the loop's own optimiser; this objective has its own.")
    result = FitResult()
    best = {name: -math.inf for name in groups}
    saved: dict[str, list[Tensor]] = {}
    stale = dict.fromkeys(groups, 0)
    frozen: set[str] = set()
    epoch = first = 1
    if path is not None and resume and path.exists():
        saved, state = load_checkpoint(path, parameters, optimizer)
        best, stale, frozen = state["best"], state["stale"], set(state["frozen"])
        result.history, result.best_epoch = state["history"], state["best_epoch"]
        first = epochs + 1 if state["done"] else state["epoch"] + 1

    trained = () if fixed is None else ([t for _, terms in groups.values() for t in terms],)
    names: list[str] = []  # the trained terms, in the order of their stacked sums

    def loss_of(batch: dict[str, Tensor], rows: float) -> tuple[Tensor, Tensor | None]:
        if not len(next(iter(batch.values()))):  # a rank's share ran out: it adds nothing
            return torch.zeros(()), None
        terms = objective(batch, *trained)
        values = [t.sum() if t.dim() else t for t in terms.values()]
        if len(values) == 1:  # one term (an ELBO): no stack and sum in the autograd graph
            total, totals = values[0], values[0].detach().reshape(1)
        else:
            stacked = torch.stack(values)
            total, totals = stacked.sum(), stacked.detach()
        loss = total / -rows  # minus the mean per row
        names[:] = terms
        if not math.isfinite(loss.item()):  # one step, where torch.isfinite takes four
            bad = next(name for name, t in terms.items() if not torch.isfinite(t).all())
            raise ValueError(
                f"The log-likelihood of site {bad!r} became non-finite at epoch {epoch}; "
                "the parameters are left at the last finite step. Try a smaller lr."
            )
        return loss, totals

    # DDP under a process group, every rank stopping together where one fails
    step = None if stepper is not None else distributed.Lockstep(loss_of, objective, parameters)
    writer = distributed.is_writer()
    for name, t in (fixed or {}).items():
        if not torch.isfinite(t).all():
            raise ValueError(
                f"The log-likelihood of site {name!r} is non-finite on the training rows, and "
                "no step can change it: it has no parameters to train."
            )
    last = [p.detach().clone() for p in parameters]  # the parameters after the last epoch
    show = progress and writer
    bar = tqdm(range(first, epochs + 1), desc=description, disable=not show, leave=False)
    try:
        for epoch in bar:
            tic = time.perf_counter()
            order = torch.randperm(len(data), device=data.home)
            order, longest = distributed.shard(order)  # this rank's rows (all, in one process)
            sums: dict[str, Tensor] = {}
            running = None  # the trained terms' sums over the epoch's rows, stacked
            for start_row in range(0, longest, batch_size):
                index = order[start_row : start_row + batch_size]
                rows = distributed.batch_rows(len(data), start_row, batch_size)
                if stepper is not None:
                    for name, t in stepper(data.rows(index), rows).items():
                        sums[name] = sums.get(name, 0.0) + t.detach().sum()
                    continue
                loss, totals = step(data.rows(index), rows)
                optimizer.zero_grad(set_to_none=True)
                step.backward(loss)
                for name in frozen:
                    for p in groups[name][0]:
                        p.grad = None
                optimizer.step()
                if totals is not None:
                    running = totals if running is None else running + totals
            seconds = time.perf_counter() - tic
            if running is not None:
                sums = dict(zip(names, running, strict=True))
                sums.update(
                    {n: t[order].sum().to(running.device) for n, t in (fixed or {}).items()}
                )
            if distributed.active() is not None and sums:  # every rank's rows, each once
                summed = distributed.all_reduce(torch.stack(list(sums.values())))
                sums = dict(zip(sums, summed, strict=True))
            record = _record(epoch, objective, sums, data, val, batch_size)
            record["seconds"] = seconds
            result.history.append(record)
            split = "val" if val is not None else "train"
            for name, (params, terms) in groups.items():
                if name in frozen:
                    continue
                score = sum(record[f"{split}/{t}"] for t in terms)
                if val is None or score > best[name]:
                    best[name], stale[name] = score, 0
                    result.best_epoch[name] = epoch
                    if val is not None:
                        saved[name] = [p.detach().clone() for p in params]
                else:
                    stale[name] += 1
                    if patience is not None and stale[name] >= patience:
                        frozen.add(name)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train", "val")})
            done = frozen == set(groups)
            if path is not None and writer and (epoch % every == 0 or epoch == epochs or done):
                state = {"epoch": epoch, "done": done, "best": best, "stale": stale,
                         "frozen": sorted(frozen), "history": result.history,
                         "best_epoch": result.best_epoch}  # fmt: skip
                save_checkpoint(path, parameters, optimizer, saved, state)
            last = [p.detach().clone() for p in parameters]
            if done:
                break
    except KeyboardInterrupt:
        with torch.no_grad():
            for p, v in zip(parameters, last, strict=True):
                p.copy_(v)
        result.interrupted = True
        warnings.warn(
            f"{description} interrupted at epoch {epoch}: the model keeps the best parameters "
            f"so far (epochs {result.best_epoch or 'none'}).",
            UserWarning,
            stacklevel=2,
        )
    with torch.no_grad():
        for name, values in saved.items():
            for p, v in zip(groups[name][0], values, strict=True):
                p.copy_(v)
    result.seconds = time.perf_counter() - start
    return result


def _check_budget(epochs: int, batch_size: int) -> None:
    """One sentence for a budget of no epoch or no row a batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, not {batch_size}.")
    if epochs < 1:
        raise ValueError(f"epochs must be a positive number, not {epochs}.")


def _checkpoint_file(checkpoint: str | os.PathLike[str] | None, resume: bool) -> Path | None:
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


def evaluate(objective: Objective, data: Table, batch_size: int) -> dict[str, Tensor]:
    """Sums each term of `objective` over all rows of `data`, in batches, without gradients."""
    sums: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            for name, t in objective(data.rows(slice(start, start + batch_size))).items():
                sums[name] = sums.get(name, 0.0) + t.sum()
    return sums


_EVALUATION_ROWS = 8192


def _record(
    epoch: int,
    objective: Objective,
    train_sums: dict[str, Tensor] | None,
    data: Table,
    val: Table | None,
    batch_size: int,
) -> dict[str, float]:
    """One line of history: mean terms per row on the training rows (as summed during the
    epoch, or evaluated afresh) and on the validation rows."""
    record: dict[str, float] = {"epoch": epoch}
    splits = [("train", data, train_sums), ("val", val, None)]
    for split, rows, sums in splits:
        if rows is None:
            continue
        # scoring needs no small batches: large chunks keep it cheap beside the training steps
        chunk = max(batch_size, _EVALUATION_ROWS)
        score = getattr(objective, "score", None)  # a score of all the rows at once (a GAN's)
        if split == "val" and score is not None:
            means = {f"val/{name}": value for name, value in score(rows.rows(slice(None))).items()}
        else:
            sums = sums if sums is not None else evaluate(objective, rows, chunk)
            means = {f"{split}/{name}": float(total) / len(rows) for name, total in sums.items()}
        record.update({split: sum(means.values()), **means})
    return record


def _terms(
    objective: ExactLogLikelihood, sites: list[str], data: Table, batch_size: int
) -> dict[str, Tensor]:
    """The terms of `sites` on every row of `data`, in order, without gradients, where the
    rows are (in host memory, for data streamed to a GPU)."""
    chunk = max(batch_size, _EVALUATION_ROWS)
    with torch.no_grad():
        parts = [
            objective(data.rows(slice(i, i + chunk)), sites) for i in range(0, len(data), chunk)
        ]
    return {site: torch.cat([part[site] for part in parts]).to(data.home) for site in sites}


def _device(model: object, device: str | torch.device | None) -> torch.device | None:
    """Resolves `device` (`"auto"`: CUDA where there is a GPU) and moves `model` there."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device is not None:
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not {device!r}.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} needs a CUDA GPU, and torch finds none here; use "
                "'cpu' or 'auto'."
            )
    if device == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per process, under torchrun
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    if device is not None and isinstance(model, nn.Module):
        model.to(device)
    return torch.device(device) if device is not None else None


def _parameters(run: Callable[[], object], *programs: object) -> list[nn.Parameter]:
    """The trainable tensors of `programs`, each once: the unconstrained values of the
    `pyro.param`s that `run()` reads (creating them), then the parameters of the programs that
    are modules or a module's bound methods."""
    with torch.random.fork_rng(), poutine.trace(param_only=True) as params:
        run()
    found = [site["value"].unconstrained() for site in params.trace.nodes.values()]
    found += [p for program in programs for p in _parameters_of(program)]
    return list({id(p): p for p in found if p.requires_grad}.values())


def _check_columns(val: object, data: Table) -> None:
    """Raises, naming it, for a site of the training rows that the validation data (a dict
    or a DataFrame) lack, which :func:`~ppgen.data.table` would call latent."""
    names = {str(c) for c in val.columns} if hasattr(val, "iloc") else val
    if isinstance(names, Mapping | set):
        for name in data.columns:
            if name not in names:
                raise ValueError(
                    f"The validation data lack column {name!r}, which the training data have."
                )


def fit_mle(
    model: Callable[..., object],
    data: Mapping[str, object] | object,
    *args: object,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val: Mapping[str, object] | object | None = None,
    patience: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    **kwargs: object,
) -> FitResult:
    r"""Fits a fully observed program by exact maximum likelihood.

    Tabular, linear-Gaussian and root (Normal, Bernoulli, Categorical) nodes are solved in
    closed form; the other parameters by minibatch Adam on the exact log-likelihood. Each node's
    parameters enter only its own term, so early stopping on `val` is per node, and each node
    keeps its best validation epoch; a module that makes several sites is fitted by steps on
    all their terms together. The data are checked first; on bad data the model is left
    untouched.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`: a `ppgen.Model`,
            any `PyroModule` or a function. Its module parameters and the `pyro.param`s it
            reads are fitted.
        data: A dict of site name to array (rows first) or a pandas DataFrame.
        args, kwargs: Other inputs of `model`.
        epochs, batch_size, lr: The Adam budget for neural nodes.
        weight_decay: Adam's L2 penalty on the neural nodes' parameters (a Gaussian prior:
            the fit is then the maximum a posteriori); closed-form nodes stay exact.
        val: Validation data, in the same form as `data`.
        patience: Epochs without validation improvement before a node stops.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.
        checkpoint, checkpoint_every, resume: A folder for checkpoints of the whole fit, the
            epochs between them, and whether to continue from the one there (see :func:`train`:
            a resumed fit ends where an uninterrupted one would). Ctrl-C returns the best
            parameters so far, with a warning.

    Returns:
        A :class:`FitResult`; the model holds the fitted parameters.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "linear_gaussian"})
        >>> fit = fit_mle(model, {"a": [0, 1, 1, 0], "b": [0.0, 2.0, 2.2, 0.1]}, progress=False)
        >>> fit.closed_form
        ['a', 'b']
    """
    start = time.perf_counter()
    _check_budget(epochs, batch_size)
    path = _checkpoint_file(checkpoint, resume)  # before anything changes
    device = _device(None, device)  # where to go, once the data have passed their checks
    distributed.init_from_env(device)
    data = table(model, data, *args, device=device, **kwargs)
    if val is not None:
        _check_columns(val, data)
        val = table(model, val, *args, categories=data.categories, device=device, **kwargs)
    _device(model, device)
    probe = data.rows(slice(0, 64))
    objective = ExactLogLikelihood(model, probe, *args, **kwargs)
    closed: list[str] = []
    sums: dict[str, Tensor] = {}  # the training rows' log-likelihood per site, where counted
    resuming = path is not None and path.exists()  # a checkpoint that may yet be refused
    modules = [m for m, _ in (objective.factors or {}).values()] if resuming else []
    before = [(p, p.detach().clone()) for m in modules for p in m.parameters()]
    if objective.factors is not None:
        group = distributed.active()  # each rank counts its own rows, and the counts are summed
        own = slice(None) if group is None else slice(group[0], None, group[1])
        uses = Counter(id(m) for m, _ in objective.factors.values())
        for name, (module, parents) in objective.factors.items():  # one node's columns at a time
            if uses[id(module)] > 1:  # one module, several sites: steps fit it on all their terms
                continue
            value, parent_values = data.column(name, own), [data.column(p, own) for p in parents]
            solved, total = _solve(module, value, parent_values)
            if solved:
                closed.append(name)
            if total is not None:
                sums[name] = total
        neural = {
            n: list(m.parameters()) for n, (m, _) in objective.factors.items() if n not in closed
        }
        unique = {id(p): p for ps in neural.values() for p in ps}
        if len(unique) == sum(map(len, neural.values())):
            groups = {n: (ps, [n]) for n, ps in neural.items()}
        else:  # a parameter shared by several sites: their terms are trained together
            groups = {"all": (list(unique.values()), list(neural))}
    else:  # the model's parameters, and the pyro.params the program reads
        groups = {"all": (_parameters(lambda: objective(probe), model), list(data.columns))}
    groups = {n: (ps, terms) for n, (ps, terms) in groups.items() if ps}
    trained = {t for _, terms in groups.values() for t in terms}
    constant = [s for s in objective.factors or () if s not in trained]  # no step changes them
    trainable = {p for ps, _ in groups.values() for p in ps}
    exact = [objective.factors[name][0] for name in closed]
    fixed = [p for m in exact for p in m.parameters() if p.requires_grad and p not in trainable]
    for p in fixed:  # closed-form nodes still count in the history, but take no gradients
        p.requires_grad_(False)
    try:
        if groups:
            result = train(
                objective, groups, data, val, epochs=epochs, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, patience=patience, progress=progress,
                description="fit_mle", checkpoint=checkpoint, every=checkpoint_every,
                resume=resume,
                fixed=_terms(objective, constant, data, batch_size) if constant else None,
            )  # fmt: skip
        else:  # every site solved: the training terms come from the counts where all have them
            counted = sums if len(sums) == len(data.columns) else None
            result = FitResult(history=[_record(0, objective, counted, data, val, len(data))])
    except LoadError:  # the checkpoint refused: the closed forms are undone
        with torch.no_grad():
            for p, value in before:
                p.copy_(value)
        raise
    finally:
        for p in fixed:
            p.requires_grad_(True)
    result.closed_form, result.categories = closed, data.categories
    result.seconds = time.perf_counter() - start  # the checks and closed forms included
    return result


def fit_svi(
    model: Callable[..., object],
    guide: Callable[..., object] | str,
    data: Mapping[str, object] | Tensor,
    *args: object,
    elbo: str | None = None,
    num_particles: int = 1,
    epochs: int = 200,
    batch_size: int | None = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val: Mapping[str, object] | Tensor | None = None,
    patience: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    **kwargs: object,
) -> FitResult:
    r"""Fits a model with latent sites and its guide by minibatch stochastic variational inference.

    Pyro's ELBO is the objective of :func:`train`, the loop of :func:`fit_mle`: Adam on the
    parameters of `model` and `guide`, early stopping on the validation ELBO, and the
    parameters of the best validation epoch kept. The guide and the model run once on all the
    rows first, as `SVI.step` would, for the checks (Pyro's validation, the data against the
    sites that observe them); the steps run without validation. An error inside either
    program is one sentence naming it and the line, the original chained. Where every site
    of the model and the guide comes from a ppgen :class:`~ppgen.nn.Node` called on other
    sites' values or on the inputs (reparameterised guide sites, no masks or scales), the
    `"trace"` and `"mean_field"` ELBOs are computed from those modules alone, without tracing,
    after a check against Pyro's on the same draws. The data come in one of two conventions:

    - a dict of observed site name to array (rows first), as for :func:`fit_mle`: each batch
      conditions `model(*args, n=N, **kwargs)`, and the guide is called as `guide(*args, n=N,
      **kwargs)` (so it cannot see the data: use this for guides of global latents, auto
      guides among them);
    - anything else is the programs' first argument, as `SVI.step(data, *args, **kwargs)`
      calls them: every argument with rows (a tensor whose leading size is the one most tensor
      arguments share, at any position or keyword) is indexed with the same rows in each
      batch, and the others pass unchanged.

    With `batch_size=None` (or at least the rows), where the program subsamples itself (a
    plate with `subsample_size`) or no argument has rows, one batch holds the data in its
    order and each epoch is `SVI.step`'s, on the random stream the fit started with: the same
    parameters as SVI's with Adam after as many steps (with `checkpoint`, the steps draw from
    the loop's random state instead, which a checkpoint saves, so that a resumed fit ends where
    an uninterrupted one would). With minibatches, the model's plate of
    the rows has the batch's size. Latent sites outside it (global ones, such as a prior's
    mean) and their guide sites count in each batch by the batch's share of the rows, as
    Pyro's subsampling plates scale the local ones, and a short last batch weighs by its rows:
    an epoch sums the ELBO of the whole data once, and the fit does not depend on
    `batch_size`. (The validation ELBO per row counts them per training row.)

    Arguments:
        model: A Pyro program.
        guide: A Pyro program sampling the latent sites of `model`, or `"auto_normal"` /
            `"auto_delta"` for Pyro's `AutoNormal` / `AutoDelta` built on `model`.
        data: The observed rows as a dict or a DataFrame, or the programs' first argument.
        args, kwargs: Other inputs of `model` and `guide`.
        elbo: `"trace"` (`Trace_ELBO`), `"mean_field"` (`TraceMeanField_ELBO`, analytic KL
            where known), `"trace_enum"` (`TraceEnum_ELBO`, its `max_plate_nesting` read from
            the programs), `"trace_graph"` (`TraceGraph_ELBO`) or `"iwae"` (the
            importance-weighted bound with `num_particles` draws, per row: the value of
            `RenyiELBO(alpha=0)`, whose log-sum-exp runs inside the data plate, computed
            differentiably by :mod:`ppgen.importance` since `RenyiELBO` has no differentiable
            loss; every site in the data plate, reparameterised guides only, the rows in the
            first argument alone). `None`: `"trace_enum"` where a site is marked for
            enumeration, else `"trace"`.
        num_particles: The draws per row of the ELBO's estimate.
        epochs, batch_size, lr: The Adam budget (`batch_size=None`: every row in one batch).
            The defaults (200 epochs of batches of 64,
            lr 1e-3) take more and smaller steps than :func:`fit_mle`'s (100, 256): the ELBO's
            gradients are noisy whatever the batch, so steps count more than rows per step.
            With them, `VAE(64, 8)` reaches 16.74 nats/image (test IWAE-500) on
            :func:`ppgen.datasets.digits` (`benchmarks/vae.py --defaults`); they were chosen
            on a validation split of its training images.
        weight_decay: Adam's L2 penalty on the parameters (a Gaussian prior on them).
        val: Validation data, in the same form as `data`.
        patience: Epochs without validation improvement before the fit stops.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.
        checkpoint, checkpoint_every, resume: As for :func:`fit_mle`.

    Returns:
        A :class:`FitResult` whose history holds the ELBO per row; the model and guide hold
        the fitted parameters.

    Raises:
        ValueError: For bad data (naming the column), an error inside a program, an
            enumerated site under a non-enumerating `elbo`, with minibatches a parameter per
            row (pass `batch_size=None`, or subsample in the program), and when the ELBO
            becomes non-finite (naming the site; the parameters are left at the last finite
            step).

    Example:
        >>> def model(x):  # the mean of x, with a N(0, 1) prior
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("rows", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> fit = fit_svi(model, "auto_delta", torch.ones(8), epochs=3, progress=False)
        >>> len(fit.history)
        3
    """
    if elbo is not None and elbo not in (*ELBOS, "iwae"):
        raise ValueError(
            f"elbo must be one of {', '.join(map(repr, [*ELBOS, 'iwae']))}, not {elbo!r}."
        )
    if isinstance(guide, str) and guide not in ("auto_normal", "auto_delta"):
        raise ValueError(f"guide must be a program, 'auto_normal' or 'auto_delta', not {guide!r}.")
    _check_budget(epochs, 1 if batch_size is None else batch_size)
    _checkpoint_file(checkpoint, resume)  # before anything changes
    device = _device(None, device)  # where to go, once the data have passed their checks
    distributed.init_from_env(device)
    argument = not isinstance(data, Mapping) and not _is_frame(data)
    if argument:  # model(data, *args, **kwargs), as SVI.step calls it
        args = (data, *args)
        data, val = _argument_rows(model, args, kwargs, val, device, batch_size, elbo)
    else:
        data = svi_table(model, data, args, kwargs, device)
        if val is not None:
            _check_columns(val, data)
            val = svi_table(model, val, args, kwargs, device, categories=data.categories)
    _device(model, device)
    rows = None if argument and _NO_ROWS in data.columns else len(data)
    objective = ELBOObjective(
        model, guide, elbo, num_particles, list(data.columns), argument, args, kwargs, rows=rows
    )
    _device(objective.guide, device)
    unique = _parameters(  # the structure, from the programs run once on all rows
        lambda: objective.inspect(data.rows(slice(None)), batch_size), model, objective.guide
    )
    if not unique:
        raise ValueError(
            "Neither the model nor the guide has parameters to fit (no nn.Parameter or pyro.param)."
        )
    _as_floats(objective, data, val, _parameters_of(model))
    if checkpoint is not None:  # the loop's random state alone is saved: the steps draw from it
        objective.stream = []
    batch_size = objective.batch_size
    objective.prepare(data.rows(slice(0, batch_size)))
    with pyro.validation_enabled(False):  # checked on all rows above; lean steps here
        result = train(
            objective, {"all": (unique, ["elbo"])}, data, val, epochs=epochs,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
            progress=progress, description="fit_svi", checkpoint=checkpoint,
            every=checkpoint_every, resume=resume,
        )  # fmt: skip
    if objective.stream:  # the random stream continues as after SVI's steps
        _set_rng_state(objective.stream)
    result.categories = data.categories
    return result


_NO_ROWS = "*none"  # the one empty row of a program whose arguments have none


def _argument_rows(
    model: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    val: Tensor | tuple[Tensor, ...] | None,
    device: torch.device | None,
    batch_size: int | None,
    elbo: str | None,
) -> tuple[Table, Table | None]:
    """The arguments of `model(*args, **kwargs)` that have rows (:func:`~ppgen.elbo.per_row`),
    checked and placed, and `val` (their held-out rows: a tensor for one, else a tuple)."""
    size, columns, hidden = per_row(args, kwargs)
    if hidden is not None and batch_size is not None and size is not None and batch_size < size:
        raise ValueError(
            f"Argument {hidden[1:]!r} holds tensors with rows inside a container that no "
            "minibatch can index; pass batch_size=None to train on all rows at once, or pass "
            "them as tensors."
        )
    if elbo == "iwae" and list(columns) != [_ARGUMENT]:
        raise ValueError("elbo='iwae' needs the rows in the program's first argument alone.")
    if not columns:
        columns = {_NO_ROWS: torch.zeros(1, 0)}
    for key, value in columns.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(
                "The data tensor must have rows, and no NaN or inf."
                if key == _ARGUMENT
                else f"Argument {key[1:]!r} holds NaN or inf."
            )
    placed, device = place(columns, device, model)
    data = Table(placed, device=device)
    if val is None:
        return data, None
    held = (val,) if isinstance(val, Tensor) else tuple(val)
    if len(held) != len(columns) or not all(isinstance(v, Tensor) for v in held):
        raise ValueError(
            f"val must hold the held-out rows of the {len(columns)} arguments with rows "
            f"({', '.join(k[1:] for k in columns)}): a tensor for one, else a tuple."
        )
    placed, _ = place(dict(zip(columns, held, strict=True)), device, model)
    return data, Table(placed, device=device)


def _as_floats(
    objective: ELBOObjective, data: Table, val: Table | None, parameters: list[Tensor]
) -> None:
    """Integer columns that a site reads as floats (images under a Bernoulli) become the
    model's floats; those a program uses as integers (indices) stay integers."""
    floats = [p.dtype for p in parameters if p.is_floating_point()]
    dtype = floats[0] if floats else torch.get_default_dtype()
    for rows in (data, val):
        for key in objective.floats & set(rows.columns if rows is not None else ()):
            rows.columns[key] = rows.columns[key].to(dtype)
    if objective.floats and objective.whole is not None:
        objective.whole = data.rows(slice(None))


def _check_gan_rows(gan: nn.Module, data: Table, val: Table | None) -> None:
    """Checks, before any step, that the generator's rows, the data and `val` agree in shape
    and that `val` has the two rows an MMD² needs."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        made = tuple(gan.generator(gan.prior(2).sample()).shape[1:])
    shapes = {
        name: next(iter(t.columns.values())).shape
        for name, t in [("data", data), ("val", val)]
        if t is not None
    }
    if "val" in shapes and shapes["val"][0] < 2:
        raise ValueError("val must have at least 2 rows to compare with the samples, not 1.")
    for name, shape in shapes.items():
        if tuple(shape[1:]) != made:
            raise ValueError(
                f"The {name} rows have shape {tuple(shape[1:])}, but the generator makes rows of "
                f"shape {made}."
            )


def fit_gan(
    gan: nn.Module,
    data: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    lr_g: float = 1e-3,
    lr_d: float = 1e-3,
    d_steps: int = 1,
    betas: tuple[float, float] = (0.5, 0.999),
    r1: float = 0.0,
    average: float | None = None,
    val: Tensor | None = None,
    val_samples: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FitResult:
    r"""Fits a :class:`ppgen.models.GAN` by alternating Adam steps of its two players.

    The loop is :func:`train`, that of :func:`fit_mle` and :func:`fit_svi`, with the objective
    :class:`ppgen.models.gan.GANObjective`: on each batch of real rows, `d_steps` steps of the
    discriminator (each on fresh codes), then one step of the generator with the GAN's loss.
    There is no likelihood. Without `val`, the last epoch's parameters are kept. With `val`,
    each epoch's generator is scored by the MMD² (:func:`ppgen.metrics.mmd`) of `val_samples`
    of its rows against the held-out rows `val`, and the GAN keeps both players' parameters of
    the epoch with the lowest: its quality swings from one epoch to the next, and the last one
    is a poor pick. Under `torchrun`, both players run in `DistributedDataParallel` and the
    rows are shared as for :func:`fit_mle` (`docs/scaling.md`).

    Arguments:
        gan: The GAN.
        data: The real rows, of shape :math:`(N, *)`.
        epochs, batch_size: The budget.
        lr_g, lr_d: The learning rates of the generator and the discriminator.
        d_steps: Discriminator steps per generator step.
        betas: Adam's betas, for both players.
        r1: The weight of the R1 penalty on the discriminator's gradient at real rows (see
            :class:`~ppgen.models.gan.GANObjective`; 0: none).
        average: The decay of an exponential moving average of the generator's parameters
            over its steps, e.g. 0.999 (`None`: none). The average is what is scored against
            `val`, and what the GAN's generator holds at the end: it swings far less than the
            trained parameters.
        val: Held-out real rows, of the shape of `data`, that choose the epoch (never the
            test rows); `None`: the last epoch.
        val_samples: The generated rows scored against `val` each epoch.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.

    Returns:
        A :class:`FitResult` whose history holds, per epoch, the mean per row of the
        discriminator's loss `train/loss_d`, the generator's `train/loss_g`, the
        discriminator's accuracy `train/accuracy` on real and generated rows and its mean
        probabilities that they are real, `train/d_real` (:math:`D(x)`) and `train/d_fake`
        (:math:`D(G(z))`), as measured during the steps, and with `val` the MMD² `val/mmd`.
        `best_epoch["gan"]` is then the epoch kept (without `val`, `best_epoch` names the last
        for each player).

    Raises:
        ValueError: For data with NaN or inf, and when a player's loss becomes non-finite
            (naming it; the parameters are left at the last finite step).

    Example:
        >>> from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator
        >>> gan = GAN(MLPGenerator(2, 1), MLPDiscriminator(1), 2)
        >>> fit = fit_gan(gan, torch.randn(64, 1), epochs=2, batch_size=32, progress=False)
        >>> sorted(fit.history[-1])  # doctest: +NORMALIZE_WHITESPACE
        ['epoch', 'seconds', 'train/accuracy', 'train/d_fake', 'train/d_real',
         'train/loss_d', 'train/loss_g']
    """
    from ppgen.models.gan import GANObjective

    _check_budget(epochs, batch_size)
    device = _device(gan, device)
    distributed.init_from_env(device)
    rows = svi_table(gan, data, (), {}, device, observed_by_model=False)
    if val is not None:
        val = svi_table(gan, val, (), {}, device, observed_by_model=False)
    _check_gan_rows(gan, rows, val)
    objective = GANObjective(
        gan, lr_g=lr_g, lr_d=lr_d, d_steps=d_steps, betas=betas, r1=r1, samples=val_samples,
        average=average,
    )  # fmt: skip
    averaged = objective.averaged
    generator = list((gan.generator if averaged is None else averaged.module).parameters())
    if val is None:
        groups = {
            "generator": (generator, ["loss_g"]),
            "discriminator": (list(gan.discriminator.parameters()), ["loss_d"]),
        }
    else:  # the players of the epoch whose samples are nearest the held-out rows, together
        groups = {"gan": ([*generator, *gan.discriminator.parameters()], ["neg_mmd"])}
    result = train(
        objective, groups, rows, val, epochs=epochs, batch_size=batch_size, lr=lr_g,
        patience=None, progress=progress, description="fit_gan",
    )  # fmt: skip
    if averaged is not None:  # the GAN's generator becomes the average (of the epoch kept)
        with torch.no_grad():
            for p, q in zip(gan.generator.parameters(), generator, strict=True):
                p.copy_(q)
    for record in result.history:  # the sum of the players' terms means nothing
        record.pop("train", None)
        record.pop("val", None)
        if "val/neg_mmd" in record:
            record["val/mmd"] = -record.pop("val/neg_mmd")
    return result
