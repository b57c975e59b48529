r"""Fitting: one training loop, the exact log-likelihood objective, and closed-form solvers.

A fully observed program has the exact log-likelihood
:math:`\log p(x) = \sum_i \log p(x_i \mid \mathrm{Pa}(x_i))`, a sum of one term per site whose
parameters enter no other term. :func:`fit_mle` solves tabular, linear-Gaussian and root nodes
in closed form and fits the neural ones by minibatch Adam on their exact terms, with early
stopping per node.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ppgen.data import Table, table
from ppgen.graph import _is_variable, trace_calls
from ppgen.nn import LinearGaussian, Node, Root, Tabular, features

__all__ = ["ExactLogLikelihood", "FitResult", "fit_mle", "solve_closed_form", "train"]

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
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: dict[str, int] = field(default_factory=dict)
    closed_form: list[str] = field(default_factory=list)
    seconds: float = 0.0

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
            if call is None or site["mask"] is not None or not _is_one(site["scale"]):
                return None
            parents = [names.get(id(value)) for value in call[1]]
            if None in parents:
                return None
            factors[name] = (call[0], parents)
        self.factors = factors
        with torch.no_grad():
            fast = sum(t.sum() for t in self(probe).values())
            self.factors = None
            exact = sum(t.sum() for t in self(probe).values())
        return factors if torch.allclose(fast, exact, rtol=1e-5, atol=1e-5) else None

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Returns each site's log-likelihood per row, of shape :math:`(N,)`."""
        rows = len(next(iter(batch.values())))
        if self.factors is not None:
            return {
                name: _per_row(module(*(batch[p] for p in parents)).log_prob(batch[name]), rows)
                for name, (module, parents) in self.factors.items()
            }
        conditioned = poutine.condition(self.model, data=batch)
        trace = poutine.trace(conditioned).get_trace(*self.args, n=rows, **self.kwargs)
        trace.compute_log_prob()
        return {
            name: _per_row(site["log_prob"], rows)
            for name, site in trace.nodes.items()
            if _is_variable(site)
        }


def _is_one(scale: object) -> bool:
    return bool(torch.all(torch.as_tensor(scale) == 1))


def _per_row(log_prob: Tensor, rows: int) -> Tensor:
    return log_prob.reshape(rows, -1).sum(-1) if log_prob.dim() else log_prob.expand(rows) / rows


def solve_closed_form(module: Node, value: Tensor, parents: Iterable[Tensor]) -> bool:
    r"""Sets a conditional's parameters to their maximum-likelihood values, where a formula exists.

    Tabular nodes take the empirical conditional frequencies (a parent configuration never seen
    gets the uniform distribution), linear-Gaussian nodes least squares and the biased residual
    standard deviation, and roots of the Normal, Bernoulli and Categorical families their
    sample statistics.

    Returns:
        Whether the module was solved; `False` leaves it untouched, for gradient ascent.

    Example:
        >>> root = Root(dist.Bernoulli)
        >>> solve_closed_form(root, torch.tensor([1.0, 1.0, 0.0, 1.0]), [])
        True
        >>> round(root().probs.item(), 6)
        0.75
    """
    parents = list(parents)
    with torch.no_grad():
        if isinstance(module, Tabular):
            return _solve_tabular(module, value, parents)
        if isinstance(module, LinearGaussian):
            return _solve_linear_gaussian(module, value, parents)
        if isinstance(module, Root):
            return _solve_root(module, value)
    return False


def _solve_tabular(module: Tabular, value: Tensor, parents: list[Tensor]) -> bool:
    shape = (*module.parent_cardinalities, module.cardinality)
    index = torch.zeros_like(value, dtype=torch.long)
    for p, k in zip([*parents, value], shape, strict=True):
        index = index * k + p.long()
    counts = torch.bincount(index.reshape(-1), minlength=math.prod(shape))
    counts = counts.reshape(shape).to(module.logits.dtype)
    totals = counts.sum(-1, keepdim=True)
    logits = torch.where(totals > 0, counts.log() - totals.log(), torch.zeros_like(counts))
    module.logits.copy_(logits)
    return True


def _solve_linear_gaussian(module: LinearGaussian, value: Tensor, parents: list[Tensor]) -> bool:
    dtype = module.scale.dtype
    cards = module.parent_cardinalities or [None] * len(parents)
    x = features(parents, cards, dtype) if parents else value.new_zeros(len(value), 0, dtype=dtype)
    design = torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)
    y = value.reshape(-1, 1).to(dtype)
    solution = torch.linalg.lstsq(
        design, y, driver="gelsd" if design.device.type == "cpu" else None
    )
    coef = solution.solution
    sigma = (y - design @ coef).pow(2).mean().sqrt()
    if not torch.isfinite(coef).all() or sigma <= 0:
        return False
    module.linear.weight.copy_(coef[:-1].T)
    module.linear.bias.copy_(coef[-1])
    module.scale.copy_(_inverse_softplus(sigma))
    return True


def _solve_root(module: Root, value: Tensor) -> bool:
    head = module.head
    value = value.to(module.eta.dtype)
    stats: dict[str, Tensor] = {}
    if head.family is dist.Normal:
        loc = torch.as_tensor(head.fixed.get("loc", value.mean(0)), dtype=value.dtype)
        stats = {"loc": loc, "scale": (value - loc).pow(2).mean(0).sqrt()}
        if (stats["scale"] <= 0).any():
            return False
    elif head.family is dist.Bernoulli:
        p = value.mean(0)
        if ((p <= 0) | (p >= 1)).any():
            return False
        stats = {"logits": p.log() - (-p).log1p()}
    elif head.family is dist.Categorical:
        counts = F.one_hot(value.long(), head.cardinality).sum(0).to(value.dtype)
        if (counts == 0).any():
            return False
        stats = {"logits": (counts.log() - counts[..., -1:].log())[..., :-1]}
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
) -> FitResult:
    r"""The one training loop: minibatch Adam on the sum of an objective's terms.

    Arguments:
        objective: Maps a batch (a dict of tensors, rows first) to named terms, each the
            log-likelihood (or ELBO) of every row of shape :math:`(N,)`; their mean is maximised.
        groups: Named groups of parameters, each with the terms it alone enters; a group whose
            validation terms have not improved for `patience` epochs stops training, and each
            group keeps the parameters of its best validation epoch.
        data, val: The training rows, and the validation rows (or `None`).
        epochs, batch_size, lr: The optimisation budget.
        patience: Epochs without improvement before a group stops (`None`: never).
        progress: Whether to show a tqdm bar.
        description: The bar's label.
    """
    start = time.perf_counter()
    parameters = [p for params, _ in groups.values() for p in params]
    optimizer = torch.optim.Adam(parameters, lr=lr) if parameters else None
    result = FitResult()
    best = {name: -math.inf for name in groups}
    saved: dict[str, list[Tensor]] = {}
    stale = dict.fromkeys(groups, 0)
    frozen: set[str] = set()
    bar = tqdm(range(1, epochs + 1), desc=description, disable=not progress, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        order = torch.randperm(len(data), device=next(iter(data.columns.values())).device)
        sums: dict[str, Tensor] = {}
        for start_row in range(0, len(data), batch_size):
            index = order[start_row : start_row + batch_size]
            terms = objective(data.rows(index))
            loss = -sum(t.sum() for t in terms.values()) / len(index)
            if not torch.isfinite(loss):
                bad = next(name for name, t in terms.items() if not torch.isfinite(t).all())
                raise ValueError(
                    f"The log-likelihood of site {bad!r} became non-finite at epoch {epoch}; "
                    "the parameters are left at the last finite step. Try a smaller lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for name in frozen:
                for p in groups[name][0]:
                    p.grad = None
            optimizer.step()
            for name, t in terms.items():
                sums[name] = sums.get(name, 0.0) + t.detach().sum()
        seconds = time.perf_counter() - tic
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
        if frozen == set(groups):
            break
    with torch.no_grad():
        for name, values in saved.items():
            for p, v in zip(groups[name][0], values, strict=True):
                p.copy_(v)
    result.seconds = time.perf_counter() - start
    return result


def evaluate(objective: Objective, data: Table, batch_size: int) -> dict[str, Tensor]:
    """Sums each term of `objective` over all rows of `data`, in batches, without gradients."""
    sums: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            for name, t in objective(data.rows(slice(start, start + batch_size))).items():
                sums[name] = sums.get(name, 0.0) + t.sum()
    return sums


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
        sums = sums if sums is not None else evaluate(objective, rows, batch_size)
        means = {f"{split}/{name}": float(total) / len(rows) for name, total in sums.items()}
        record.update({split: sum(means.values()), **means})
    return record


def _device(model: object, device: str | torch.device | None) -> torch.device | None:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device is not None and isinstance(model, nn.Module):
        model.to(device)
    return torch.device(device) if device is not None else None


def fit_mle(
    model: Callable[..., object],
    data: Mapping[str, object] | object,
    *args: object,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    val: Mapping[str, object] | object | None = None,
    patience: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **kwargs: object,
) -> FitResult:
    r"""Fits a fully observed program by exact maximum likelihood.

    Tabular, linear-Gaussian and root (Normal, Bernoulli, Categorical) nodes are solved in
    closed form; the other parameters by minibatch Adam on the exact log-likelihood. Each node's
    parameters enter only its own term, so early stopping on `val` is per node, and each node
    keeps its best validation epoch. The data are checked first; on bad data the model is left
    untouched.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        data: A dict of site name to array (rows first) or a pandas DataFrame.
        args, kwargs: Other inputs of `model`.
        epochs, batch_size, lr: The Adam budget for neural nodes.
        val: Validation data, in the same form as `data`.
        patience: Epochs without validation improvement before a node stops.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.

    Returns:
        A :class:`FitResult`; the model holds the fitted parameters.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "linear_gaussian"})
        >>> fit = fit_mle(model, {"a": [0, 1, 1, 0], "b": [0.0, 2.0, 2.2, 0.1]}, progress=False)
        >>> fit.closed_form
        ['a', 'b']
    """
    device = _device(model, device)
    data = table(model, data, *args, device=device, **kwargs)
    val = table(model, val, *args, device=device, **kwargs) if val is not None else None
    objective = ExactLogLikelihood(model, data.rows(slice(0, 64)), *args, **kwargs)
    closed: list[str] = []
    if objective.factors is not None:
        for name, (module, parents) in objective.factors.items():
            if solve_closed_form(module, data.columns[name], (data.columns[p] for p in parents)):
                closed.append(name)
        neural = {n: m for n, (m, _) in objective.factors.items() if n not in closed}
        if len({id(m) for m in neural.values()}) == len(neural):
            groups = {n: (list(m.parameters()), [n]) for n, m in neural.items()}
        else:  # a module shared by several sites: its terms are trained together
            groups = {"all": ([p for m in neural.values() for p in m.parameters()], list(neural))}
    else:
        groups = {"all": (list(model.parameters()), list(data.columns))}
    groups = {n: (ps, terms) for n, (ps, terms) in groups.items() if ps}
    trainable = {p for ps, _ in groups.values() for p in ps}
    fixed = [p for p in model.parameters() if p.requires_grad and p not in trainable]
    for p in fixed:  # closed-form nodes still count in the history, but take no gradients
        p.requires_grad_(False)
    try:
        if groups:
            result = train(
                objective, groups, data, val, epochs=epochs, batch_size=batch_size, lr=lr,
                patience=patience, progress=progress, description="fit_mle",
            )  # fmt: skip
        else:
            result = FitResult(history=[_record(0, objective, None, data, val, batch_size)])
    finally:
        for p in fixed:
            p.requires_grad_(True)
    result.closed_form = closed
    return result
