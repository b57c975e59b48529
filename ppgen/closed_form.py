r"""Closed-form maximum likelihood: the conditionals whose optimum has a formula.

Tabular nodes take the conditional frequencies, linear-Gaussian nodes least squares and the
residual scale, and roots of the Normal, LogNormal, Bernoulli, Binomial (a fixed number of
trials), Categorical, Geometric, Poisson and Exponential families their sample statistics. :func:`ppgen.fit_mle` solves these before any gradient step; under a process group
the counts and sums are all-reduced, so that every rank's rows count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ppgen import distributed
from ppgen.nn import LinearGaussian, Node, Root, Tabular, features

__all__ = ["COUNT_ROWS", "solve", "solve_closed_form"]

# rows of a table's columns counted at once: the index of a chunk (1 to 4 bytes a row, for a
# table of fewer than 2**31 cells) bounds the count's memory, whatever the number of rows
COUNT_ROWS = 1 << 20


def solve_closed_form(module: Node, value: Tensor, parents: Iterable[Tensor]) -> bool:
    r"""Sets a conditional's parameters to their maximum-likelihood values, where a formula exists.

    Tabular nodes take the empirical conditional frequencies (a parent configuration never seen
    gets the uniform distribution), linear-Gaussian nodes least squares and the biased residual
    standard deviation, and roots of the Normal, LogNormal, Bernoulli, Binomial (a fixed number
    of trials), Categorical, Geometric, Poisson and Exponential families their sample
    statistics over every value of the site (its rows, and the plates inside them). A
    frequency of 0 is the log-probability :math:`-\infty` of a table and the logit
    :math:`-\infty` of a categorical root; a Bernoulli root's frequency of 0 or 1 is the logit
    :math:`\mp 1000`, as certain (see :class:`~ppgen.nn.Root`). A Normal's residual scale of 0
    (constant values, or values its parents fit exactly) has no maximum likelihood: it is set
    to the rounding of the values, with a warning. A Poisson's or Exponential's rate of 0 (every
    count 0) has no finite parameter either: that root is left to the gradient steps.

    A module with a frozen parameter (`requires_grad=False`) is left as it is: the formulas
    would set every parameter; so is a subclass that makes its distribution or log-density
    its own way (a Student t with a linear mean is no least-squares problem), and a module
    whose tensors are computed from others at each call (a parametrization such as
    `weight_norm`, a hook).

    Returns:
        Whether the module was solved; `False` leaves it untouched, for gradient ascent.

    Example:
        >>> root = Root(dist.Bernoulli)
        >>> solve_closed_form(root, torch.tensor([1.0, 1.0, 0.0, 1.0]), [])
        True
        >>> round(root().probs.item(), 6)
        0.75
    """
    return solve(module, value, parents)[0]


def solve(
    module: Node, value: Tensor, parents: Iterable[Tensor], name: str | None = None
) -> tuple[bool, Tensor | None]:
    """As :func:`solve_closed_form`, and the log-likelihood summed over the rows at the solution
    where the solver has it for free (a table's, from its counts), else `None`; `name` is the
    site's, for the warning of a scale whose maximum-likelihood value is 0."""
    parents = list(parents)
    if not _free(module):
        return False, None
    unbounded = False
    with torch.no_grad():
        if isinstance(module, Tabular):
            return True, _solve_tabular(module, value, parents)
        if isinstance(module, LinearGaussian):
            solved, unbounded = _solve_linear_gaussian(module, value, parents)
        elif isinstance(module, Root):
            solved, unbounded = _solve_root(module, value)
        else:
            solved = False
    if unbounded:
        who = "The node" if name is None else f"Site {name!r}"
        warnings.warn(
            f"{who} has no maximum-likelihood estimate: its values are constant, or fitted "
            "exactly by its parents, so its likelihood grows without bound as its scale "
            "shrinks to 0; its scale is set to the rounding of its values instead.",
            UserWarning,
            stacklevel=3 if name is None else 4,  # the caller of fit_mle, or of solve_closed_form
        )
    return solved, None


def _floor(sigma: Tensor, rms: Tensor) -> tuple[Tensor, bool]:
    """A residual scale of at least the rounding of values of root mean square `rms`, and
    whether it was below: the values are then constant, or fitted exactly (a constant column's
    mean leaves residuals of 1e-17 or of 0, as it rounds), and the likelihood has no maximum."""
    info = torch.finfo(sigma.dtype)
    floor = (8 * info.eps * rms).clamp_min(info.tiny)
    return torch.maximum(sigma, floor), bool((sigma <= floor).any())


def _free(module: Node) -> bool:
    """Whether the formulas hold for `module`: its class computes its distribution as the
    solvers' own class does (a subclass's may be another family), and no parameter is frozen
    (`requires_grad=False`: the user's value, which the formulas would set with the others),
    and none is computed at each call from others (:func:`_reshaped`)."""
    own = next((c for c in (Tabular, LinearGaussian, Root) if isinstance(module, c)), None)
    return (
        own is not None
        and all(getattr(type(module), m) is getattr(own, m) for m in _COMPUTING)
        and all(p.requires_grad for p in module.parameters())
        and not any(_reshaped(m) for m in module.modules())
    )


def _reshaped(module: nn.Module) -> bool:
    """Whether `module`'s tensors are computed at each call from others (a parametrization, as
    `weight_norm`'s, or a hook, as the older `spectral_norm`'s): the formulas' values, written
    into them, would not be the ones used."""
    return bool(
        parametrize.is_parametrized(module) or module._forward_hooks or module._forward_pre_hooks
    )


# the methods that make a node's distribution and log-density
_COMPUTING = ("forward", "distribution", "log_prob")


def _solve_tabular(module: Tabular, value: Tensor, parents: list[Tensor]) -> Tensor:
    r"""Counts each (parents, value) configuration with `bincount` over a mixed-radix index,
    :data:`COUNT_ROWS` rows at a time in the smallest integer type that holds it, sets the
    table to the conditional frequencies, and returns the log-likelihood of the rows under
    it, :math:`\sum n \log(n / N_{pa})`, from the counts alone (in float64)."""
    shape = (*module.parent_cardinalities, module.cardinality)
    cells = math.prod(shape)
    digits = (*parents, value)
    if any(d.shape != value.shape for d in parents):  # a parent outside a plate of the value's
        common = torch.broadcast_shapes(*(d.shape for d in digits))
        digits = [d.expand(common) for d in digits]
    digits = [d.reshape(len(value), -1) for d in digits]  # a plate's values too
    dtype = next(t for t in (torch.uint8, torch.int16, torch.int32, torch.int64)
                 if cells - 1 <= torch.iinfo(t).max)  # narrower: a faster bincount  # fmt: skip
    counts = torch.zeros(cells, dtype=torch.int64, device=value.device)
    for start in range(0, len(value), COUNT_ROWS):
        rows = [d[start : start + COUNT_ROWS] for d in digits]
        shapes = {r.shape for r in rows}  # torch.broadcast_shapes takes 40 us, even for one
        size = shapes.pop() if len(shapes) == 1 else torch.broadcast_shapes(*shapes)
        index = torch.empty(size, dtype=dtype, device=value.device)
        index.copy_(rows[0])
        for p, k in zip(rows[1:], shape[1:], strict=True):  # index * k + p, in place
            index.mul_(k).add_(p.to(dtype))  # one dtype: a mixed add is 100x slower
        counts += torch.bincount(index.reshape(-1), minlength=cells)
    counts = distributed.all_reduce(counts)  # every rank's rows, under a process group
    counts = counts.reshape(shape)
    totals = counts.sum(-1, keepdim=True)
    log_freq = torch.where(totals > 0, counts.double().log() - totals.double().log(), 0.0)
    module.logits.copy_(log_freq)
    return torch.where(counts > 0, counts * module.logits.double().log_softmax(-1), 0.0).sum()


def _solve_linear_gaussian(
    module: LinearGaussian, value: Tensor, parents: list[Tensor]
) -> tuple[bool, bool]:
    """Least squares and the residual scale (see :func:`_floor`): whether solved, and whether
    the scale was at its floor."""
    dtype = module.scale.dtype
    cards = module.parent_cardinalities or [None] * len(parents)
    width = module.linear.in_features
    # the parents' features as the module computes them, one row of the design per value of the
    # site (its rows, and the plates inside them)
    x = features(parents, cards, dtype, width) if parents else value.new_zeros((0,), dtype=dtype)
    shape = torch.broadcast_shapes(x.shape[:-1], value.shape)
    x = x.expand(*shape, width).reshape(-1, width)
    design = torch.cat([x, x.new_ones(len(x), 1)], dim=-1)
    y = value.expand(shape).reshape(-1, 1).to(dtype)
    if distributed.active() is not None:
        return _solve_normal_equations(module, design, y)
    coef = _least_squares(design, y)
    sigma, unbounded = _floor((y - design @ coef).pow(2).mean().sqrt(), y.pow(2).mean().sqrt())
    return _set_linear_gaussian(module, coef, sigma), unbounded


def _least_squares(design: Tensor, y: Tensor) -> Tensor:
    """The minimum-norm least-squares solution, by LAPACK's SVD-based `gelsd` on the host
    wherever the tensors are: CUDA's only driver, `gels`, assumes a design of full rank, and
    a categorical parent's one-hot columns beside the intercept never are (its coefficients
    came out near 1e14, the residuals above the least ones)."""
    solution = torch.linalg.lstsq(design.cpu(), y.cpu(), driver="gelsd").solution
    return solution.to(design.device)


def _set_linear_gaussian(module: LinearGaussian, coef: Tensor, sigma: Tensor) -> bool:
    """Writes least-squares coefficients (bias last) and residual scale into `module`, if valid."""
    if not torch.isfinite(coef).all():
        return False
    module.linear.weight.copy_(coef[:-1].T)
    module.linear.bias.copy_(coef[-1])
    module.scale.copy_(_inverse_softplus(sigma))
    return True


def _solve_normal_equations(
    module: LinearGaussian, design: Tensor, y: Tensor
) -> tuple[bool, bool]:
    """Least squares from XᵀX and Xᵀy summed over the ranks (the rows of each on its own)."""
    gram = distributed.all_reduce(torch.cat([design.T @ design, design.T @ y], dim=-1))
    rows = distributed.all_reduce(torch.tensor(float(len(y)), dtype=y.dtype, device=y.device))
    coef = _least_squares(gram[:, :-1], gram[:, -1:])
    sigma = (distributed.all_reduce((y - design @ coef).pow(2).sum()) / rows).sqrt()
    sigma, unbounded = _floor(sigma, (distributed.all_reduce(y.pow(2).sum()) / rows).sqrt())
    return _set_linear_gaussian(module, coef, sigma), unbounded


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


def _solve_root(module: Root, value: Tensor) -> tuple[bool, bool]:
    """Sets a root's η to its maximum-likelihood value on every value of its site: the rows
    and any plate dimensions beside them share the one parameter, split only along the root's
    event dimensions. Returns whether solved, and whether a Normal's scale was at its floor
    (:func:`_floor`)."""
    head = module.head
    unbounded = False
    if not head.params:  # every parameter is fixed
        return True, unbounded
    value = value.to(module.eta.dtype)
    dims = tuple(range(value.dim() - len(head.event_shape)))  # the rows and the plates'
    fixed = {
        name: torch.as_tensor(v, dtype=value.dtype, device=value.device)
        for name, v in head.fixed.items()
    }
    family = head.family
    if family in (dist.Normal, dist.LogNormal):  # a LogNormal's log is Normal
        stats, unbounded = _normal(value if family is dist.Normal else value.log(), fixed, dims)
    elif family in (dist.Bernoulli, dist.Binomial, dist.Geometric):
        mean = _mean(value, dims)
        if family is dist.Geometric:  # failures before the first success: mean (1 - p) / p
            logits = -mean.log()
        else:  # the successes over the trials: a Bernoulli's one trial, a Binomial's fixed count
            trials = fixed.get("total_count", value.new_ones(()))
            p = mean / _mean(trials.expand_as(value), dims)
            logits = p.log() - (-p).log1p()
        stats = {"logits": logits.clamp(-_CERTAIN, _CERTAIN)}
    elif family in (dist.Poisson, dist.Exponential):
        mean = _mean(value, dims)
        stats = {"rate": mean if family is dist.Poisson else mean.reciprocal()}
    elif family is dist.Categorical:
        counts = F.one_hot(value.long(), head.cardinality).sum(dims)
        counts = distributed.all_reduce(counts).to(value.dtype)
        stats = {"logits": counts.log() - counts.sum(-1, keepdim=True).log()}  # log 0 = -inf
    else:
        return False, unbounded
    if any(name not in stats for name, *_ in head.params) or (
        family is dist.Binomial and "total_count" not in fixed
    ):  # a parameterisation (or a learnt number of trials) the formulas do not give
        return False, unbounded
    if family in (dist.Poisson, dist.Exponential) and not bool(
        torch.isfinite(stats["rate"]).all() and (stats["rate"] > 0).all()
    ):  # a rate of 0 (every count 0) has no finite parameter: left to the steps
        return False, unbounded
    parts = [transform.inv(stats[name]).reshape(-1) for name, _, transform, _ in head.params]
    module.eta.copy_(torch.cat(parts))
    return True, unbounded


def _normal(value: Tensor, fixed: dict[str, Tensor], dims: tuple[int, ...]) -> tuple[dict, bool]:
    """A Normal's maximum-likelihood location and scale over `dims`, given its fixed ones (each
    value weighs its precision where scales are fixed), and whether the scale is at its floor."""
    loc = fixed.get("loc")
    if loc is None:
        weight = fixed.get("scale", value.new_ones(())).pow(-2).expand_as(value)
        loc = _mean(weight * value, dims) / _mean(weight, dims)
    scale, unbounded = _mean((value - loc).pow(2), dims).sqrt(), False
    if "scale" not in fixed:
        scale, unbounded = _floor(scale, _mean(value.pow(2), dims).sqrt())
    return {"loc": loc, "scale": scale}, unbounded


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))
