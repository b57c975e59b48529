r"""The step protocol of the loop, and the gradient step of the exact likelihood and the ELBO.

:func:`ppgen.loop.train` knows a fit only through a :class:`Step`: its parameters in named
groups (each with the terms it alone enters, for early stopping), one training step on a batch,
an evaluation of held-out rows, and its state for checkpoints. :class:`GradientStep` is Adam on
the sum of an objective's terms (the exact log-likelihood of :mod:`ppgen.density`, or an ELBO of
:mod:`ppgen.elbo`); :class:`ppgen.adversarial.AdversarialStep` is a GAN's two players.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from ppgen import distributed
from ppgen.data import Table
from ppgen.result import NONFINITE

__all__ = ["GradientStep", "Group", "Step", "load_optimizer_state", "optimizer_state"]

Group = tuple[list[Tensor], list[str]]
"""A group of parameters trained together, and the names of the terms it alone enters."""

Objective = Callable[..., dict[str, Tensor]]

# scoring needs no small batches: large chunks keep it cheap beside the training steps
EVALUATION_ROWS = 8192


class Step(Protocol):
    r"""One optimisation step of a fit, as the loop drives it.

    Attributes:
        groups: Named groups of parameters; a group whose validation terms stop improving
            stops training (`frozen`), and each keeps the parameters of its best epoch.
        terms: The names of the sums :meth:`step` returns, in their order (known once a step
            has run).
        constant: Sums over all training rows of terms that no step changes (sites solved in
            closed form), added to each epoch's record.
        summed: Whether the terms add up to one objective (recorded as `train` and `val`).
        maximise: Whether higher terms are better (log-likelihoods, ELBOs) or lower (losses).
    """

    groups: Mapping[str, Group]
    terms: list[str]
    constant: Mapping[str, float]
    summed: bool
    maximise: bool

    def parameters(self) -> list[Tensor]:
        """Every tensor a step changes, in a fixed order (the checkpoint's)."""

    def step(
        self, batch: dict[str, Tensor], rows: float, epoch: int, frozen: set[str]
    ) -> Tensor | None:
        """Trains on `batch` (a loss divided by `rows`, the global batch's size), leaving the
        groups in `frozen` as they are; returns its terms summed over the batch's rows,
        stacked in the order of :attr:`terms`, detached (`None`: no rows here)."""

    def evaluate(self, data: Table, batch_size: int) -> dict[str, float]:
        """Each term's mean per row over all rows of `data` (or a score of them), without
        gradients or a change of the random state's use by training."""

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        """The step's tensors (parameters, optimiser moments) and JSON state, for checkpoints."""

    def load_state(self, tensors: Mapping[str, Tensor], meta: Mapping[str, object]) -> None:
        """Restores :meth:`state`'s output; raises `ValueError`, changing nothing, where it does
        not fit this step."""


class GradientStep:
    r"""Adam on minus the mean per row of an objective's terms (log-likelihoods or an ELBO).

    Arguments:
        objective: Maps a batch (a dict of tensors, rows first) to named terms, each of shape
            :math:`(N,)` (one per row) or a scalar (their sum); with `constant`, it is called as
            `objective(batch, trained_terms)` for the trained terms alone. Where it has a
            method `totals` (as :class:`ppgen.density.ExactLogLikelihood`), called the same
            way and returning the terms' names and their sums stacked, the steps and
            :meth:`evaluate` take the sums from it at once.
        groups: Named groups of parameters, each with the terms it alone enters.
        lr, weight_decay, eps: Adam's learning rate, L2 penalty and term added to the
            denominator (of the gradient of the mean per row: `1e-8 / rows` steps as Adam's
            default on their sum, as `SVI.step` takes).
        constant: Terms that no step changes, summed over the training rows.

    Example:
        >>> model = ppgen.dag([("a", "b")], hidden=(4,))
        >>> rows = {"a": torch.zeros(8), "b": torch.ones(8)}
        >>> objective = ppgen.density.ExactLogLikelihood(model, rows)
        >>> step = GradientStep(objective, {"all": (list(model.parameters()), ["a", "b"])}, lr=0.1)
        >>> step.step(rows, 8, 1, set()).shape, step.terms
        (torch.Size([2]), ['a', 'b'])
    """

    summed = True
    maximise = True

    def __init__(
        self,
        objective: Objective,
        groups: Mapping[str, Group],
        *,
        lr: float,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        constant: Mapping[str, float] | None = None,
    ) -> None:
        self.objective, self.groups = objective, dict(groups)
        self.constant = dict(constant or {})
        self.terms: list[str] = []
        self.params = [p for params, _ in self.groups.values() for p in params]
        self.trained = (
            ([t for _, terms in self.groups.values() for t in terms],) if self.constant else ()
        )
        self.optimizer = None
        if self.params:  # one fused kernel steps every parameter, where it can
            fused = all(
                p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in self.params
            )
            self.optimizer = torch.optim.Adam(
                self.params, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused or None
            )
        # DDP under a process group, every rank stopping together where one fails
        self.lockstep = distributed.Lockstep(self._loss, objective, self.params)

    def parameters(self) -> list[Tensor]:
        return self.params

    def _loss(self, batch: dict[str, Tensor], rows: float, epoch: int) -> tuple[Tensor, Tensor]:
        if not len(next(iter(batch.values()))):  # a rank's share ran out: it adds nothing
            return torch.zeros(()), None
        names, stacked = self._terms(batch, self.trained)
        # one term (an ELBO): no stack and sum in the autograd graph
        total = stacked if stacked.dim() == 0 else stacked.sum()
        totals = stacked.detach().reshape(-1)
        loss = total / -rows  # minus the mean per row
        self.terms = names
        if not math.isfinite(loss.item()):  # one step, where torch.isfinite takes four
            bad = next((n for n, t in zip(names, totals.tolist(), strict=True)
                        if not math.isfinite(t)), names[-1])  # fmt: skip
            raise ValueError(
                f"The log-likelihood of site {bad!r} became non-finite at epoch {epoch}; "
                f"{NONFINITE}. Try a smaller lr."
            )
        return loss, totals

    def _terms(
        self, batch: dict[str, Tensor], sites: tuple[list[str], ...]
    ) -> tuple[list[str], Tensor]:
        """The terms' names (those of `*sites`), and their sums over the batch's rows stacked
        (a scalar for one term), at once where the objective gives them so (`totals`)."""
        totals = getattr(self.objective, "totals", None)
        if totals is not None:
            return totals(batch, *sites)
        terms = self.objective(batch, *sites)
        values = [t.sum() if t.dim() else t for t in terms.values()]
        return list(terms), values[0] if len(values) == 1 else torch.stack(values)

    def step(
        self, batch: dict[str, Tensor], rows: float, epoch: int, frozen: set[str]
    ) -> Tensor | None:
        loss, totals = self.lockstep(batch, rows, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        self.lockstep.backward(loss)
        for name in frozen:
            for p in self.groups[name][0]:
                p.grad = None
        self.optimizer.step()
        return totals

    def evaluate(self, data: Table, batch_size: int) -> dict[str, float]:
        names, sums = [], 0.0
        chunk = max(batch_size, EVALUATION_ROWS)
        with torch.no_grad():
            for start in range(0, len(data), chunk):
                names, totals = self._terms(data.rows(slice(start, start + chunk)), ())
                sums = sums + totals.reshape(-1)
        return dict(zip(names, (float(t) / len(data) for t in sums.tolist()), strict=True))

    def state(self) -> tuple[dict[str, Tensor], dict[str, object]]:
        tensors = {f"param.{i}": p.detach() for i, p in enumerate(self.params)}
        optim, meta = optimizer_state(self.optimizer, "optim")
        return {**tensors, **optim}, {"optimizer": meta}

    def load_state(self, tensors: Mapping[str, Tensor], meta: Mapping[str, object]) -> None:
        check_parameters(self.params, tensors)
        load_optimizer_state(self.optimizer, "optim", tensors, meta["optimizer"])
        copy_parameters(self.params, tensors)


def check_parameters(parameters: list[Tensor], tensors: Mapping[str, Tensor]) -> None:
    """Raises where the saved `param.I` tensors are not one per parameter, of its shape."""
    found = [tuple(tensors[f"param.{i}"].shape) for i in range(len(parameters))
             if f"param.{i}" in tensors]  # fmt: skip
    if found != [tuple(p.shape) for p in parameters] or f"param.{len(parameters)}" in tensors:
        raise ValueError("the checkpoint of another model or fit")


def copy_parameters(parameters: list[Tensor], tensors: Mapping[str, Tensor]) -> None:
    """Copies the saved `param.I` tensors into `parameters`."""
    with torch.no_grad():
        for i, p in enumerate(parameters):
            p.copy_(tensors[f"param.{i}"])


def optimizer_state(
    optimizer: torch.optim.Optimizer | None, prefix: str
) -> tuple[dict[str, Tensor], dict[str, object]]:
    """An optimiser's state as tensors named `PREFIX.INDEX.SLOT` and JSON (its scalars and
    parameter groups).

    Example:
        >>> optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
        >>> optimizer_state(optimizer, "optim")[1]["state"]
        {}
    """
    if optimizer is None:
        return {}, {"param_groups": [], "state": {}}
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, object]] = {}
    for index, slots in state["state"].items():
        scalars[str(index)] = {}
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[str(index)][key] = value
    return tensors, {"param_groups": state["param_groups"], "state": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer | None,
    prefix: str,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, object],
) -> None:
    """Restores an optimiser from :func:`optimizer_state`'s tensors and JSON."""
    if optimizer is None:
        return
    state = {}
    for index, scalars in meta["state"].items():
        slots = dict(scalars)
        start = f"{prefix}.{index}."
        slots.update({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)})
        state[int(index)] = slots
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
