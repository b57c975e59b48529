r"""The importance-weighted estimate of :math:`\log p(x)` per row, for a model with a guide.

With :math:`K` draws :math:`z_k \sim q(z \mid x)` of the guide,

.. math:: \log p(x) \ge \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},

a bound that equals the ELBO for :math:`K = 1`, grows with :math:`K` in expectation and tends to
:math:`\log p(x)` (Burda et al., 2016). Each row gets its own sum: the log-sum-exp runs over the
draws, inside the data plate, never over the rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoDelta, AutoGuideList
from torch import Tensor

from ppgen.tracing import is_variable, program_name, signature, unwrapped

__all__ = ["check_guided", "importance_log_prob", "reads_rows"]

Data = Mapping[str, Tensor] | Tensor


def importance_log_prob(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Data,
    *args: object,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    **kwargs: object,
) -> Tensor:
    r"""Estimates :math:`\log p(x)` of every row by importance sampling from the guide.

    The data come in one of the two conventions of :func:`ppgen.fit_svi`: a dict of observed
    site name to tensor conditions `model(*args, n=N, **kwargs)` (the guide is called the same
    way), and a tensor is the first argument of `model(x, *args, **kwargs)` and
    `guide(x, *args, **kwargs)`; a guide whose signature names `data` is given the observed
    columns as it, in the dict convention (see :func:`reads_rows`). The rows are repeated once
    per draw, so the programs run unchanged, `chunk_size` draws at a time; every sample site
    must be inside the data plate. A latent site the guide leaves out is drawn from its prior in the model, which is then its
    proposal (its density ratio is 1). Programs that cannot follow the rows repeated (a guide
    with a parameter per row, as `AutoNormal` of a latent site per row; a tensor per row read
    from outside the arguments, such as a mask) run once per draw. A guide that
    draws a site as a point (a `Delta`, as `AutoDelta` does) is refused: its weight is
    :math:`p(x, z)` at that point, no estimate of :math:`p(x)`.

    Arguments:
        model: A Pyro program whose rows are its outermost plate.
        guide: A Pyro program sampling the latent sites of `model`.
        data: The observed rows, :math:`N` of them.
        args, kwargs: Other inputs of `model` and `guide`.
        num_samples: The number of draws :math:`K` per row.
        chunk_size: Draws per pass (default: as many as keep a pass near 65536 rows).

    Returns:
        The estimate for every row, of shape :math:`(N,)`, without gradients.

    Example:
        >>> def model(x):
        ...     with pyro.plate("rows", len(x)):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior: every weight is p(x)
        ...     with pyro.plate("rows", len(x)):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> x = torch.tensor([0.0, 1.0])
        >>> importance_log_prob(model, guide, x, num_samples=10)
        tensor([-1.2655, -1.5155])
        >>> dist.Normal(0.0, 2**0.5).log_prob(x)
        tensor([-1.2655, -1.5155])
    """
    if isinstance(data, Tensor):
        rows = len(data)
    else:
        rows = len(next(iter(data.values())))
    if chunk_size is None:
        chunk_size = max(1, 65536 // rows)
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(
            f"num_samples and chunk_size must be at least 1, not {num_samples} and {chunk_size}."
        )
    chunks = []
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            draws = min(chunk_size, num_samples - start)
            chunks.append(log_weights(model, guide, data, draws, rows, args, kwargs))
    return torch.cat(chunks).logsumexp(0) - math.log(num_samples)


def reads_rows(guide: Callable[..., object]) -> bool:
    """Whether a guide takes the observed columns of its rows as its keyword `data`: in the dict
    convention, where a guide is called with the number of rows `n` alone, an amortised guide
    (such as :class:`ppgen.guides.Amortized`) is then called with `data=` the batch's columns.

    Example:
        >>> reads_rows(lambda n, data: None), reads_rows(lambda n: None)
        (True, False)
    """
    try:
        parameter = signature(guide).parameters.get("data")
    except (TypeError, ValueError):  # a builtin, or a callable without a signature
        return False
    return parameter is not None and parameter.kind in (
        parameter.POSITIONAL_OR_KEYWORD,
        parameter.KEYWORD_ONLY,
    )


def log_weights(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Data,
    draws: int,
    rows: int,
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> Tensor:
    """The log-weights of `draws` draws per row, of shape (draws, rows): the rows repeated once
    per draw, or one draw a pass for programs that cannot follow the rows repeated (a guide
    with a parameter per row, as `AutoNormal` of a latent site per row; a tensor per row that
    the programs read from outside their arguments)."""
    failed = None
    try:
        traces = _traces(model, guide, data, draws, rows, args, kwargs)
    except ValueError as error:  # the rows repeated, or the programs' own error: once a pass
        if draws == 1:
            raise
        traces, failed = None, error
    if traces is None:
        try:
            first = log_weights(model, guide, data, 1, rows, args, kwargs)
        except ValueError:
            if failed is None:
                raise
            raise failed from failed.__cause__  # the programs' own error: said as it came
        rest = (log_weights(model, guide, data, 1, rows, args, kwargs) for _ in range(draws - 1))
        return torch.cat([first, *rest])
    guide_trace, model_trace = traces
    guided = {name for name, site in guide_trace.nodes.items() if is_variable(site)}
    points = _points(guide, guide_trace)
    terms = []
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        for name, site in trace.nodes.items():
            if not is_variable(site) or (sign < 0 and site["is_observed"]):
                continue
            if sign < 0 and name in points:
                raise ValueError(
                    f"Site {name!r} of the guide is a Delta (a point), which has no importance "
                    "weights: p(x, z) at one point estimates no p(x); give a guide with a density "
                    "(AutoNormal, say)."
                )
            log_prob = site["log_prob"]
            if log_prob.dim() == 0 or log_prob.shape[0] != draws * rows:
                raise ValueError(
                    f"Site {name!r} is not inside the data plate (its log-probability has shape "
                    f"{tuple(log_prob.shape)}, not one value per row first: {rows} rows, "
                    f"repeated for {draws} draws), so it has no importance weight per row."
                )
            if sign > 0 and not site["is_observed"] and name not in guided:
                continue  # drawn from its prior, its own proposal: p / q = 1
            terms.append(sign * log_prob.reshape(draws, rows, -1).sum(-1))
    check_guided(guide_trace, model_trace)
    return torch.stack(terms).sum(0)


def _traces(
    model: Callable[..., object],
    guide: Callable[..., object],
    data: Data,
    draws: int,
    rows: int,
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> tuple[poutine.Trace, poutine.Trace] | None:
    """The guide's trace on the rows repeated `draws` times and the model's replayed on it,
    their log-densities computed; `None` where the guide draws a value per row, not per repeat."""
    args = tuple(_repeat(a, draws, rows) for a in args)  # y of model(x, y) too
    kwargs = {k: _repeat(v, draws, rows) for k, v in kwargs.items()}
    if isinstance(data, Tensor):
        repeated = _repeat(data, draws, rows)
        args = (repeated, *args)
    else:
        repeated = {name: _repeat(v, draws, rows) for name, v in data.items()}
        model = poutine.condition(model, data=repeated)
        kwargs = {**kwargs, "n": draws * rows}
    rows_of = {"data": repeated} if reads_rows(guide) and not isinstance(data, Tensor) else {}
    where = f" on {rows} rows, repeated for {draws} draws"
    guide_trace = _traced("guide", guide, where, lambda: poutine.trace(guide).get_trace(
        *args, **kwargs, **rows_of))  # fmt: skip
    if draws > 1 and _draws_per_row(guide_trace, rows):
        return None
    replayed = poutine.replay(model, trace=guide_trace)
    model_trace = _traced("model", model, where, lambda: poutine.trace(replayed).get_trace(
        *args, **kwargs))  # fmt: skip
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return guide_trace, model_trace


def _traced(
    role: str, program: object, where: str, run: Callable[[], poutine.Trace]
) -> poutine.Trace:
    """`run()`, an error of torch's or Python's inside the program made one sentence naming
    it (the original chained, without the trace's shapes that Pyro appends)."""
    try:
        return run()
    except (RuntimeError, TypeError, IndexError, KeyError, AssertionError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
        raise ValueError(
            f"The {role} {program_name(program)} raised {type(error).__name__}{where}: {text}"
        ) from error


def check_guided(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> None:
    """One sentence for a site that the guide draws and the model observes: the model never
    uses that draw, yet its :math:`-\\log q` would count (Pyro's validation only warns); and a
    warning for a latent site of the model that the guide does not draw (nor enumerates).

    Example:
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))
        >>> def guide():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> guided = pyro.poutine.trace(guide).get_trace()
        >>> check_guided(guided, pyro.poutine.trace(model).get_trace())
        Traceback (most recent call last):
        ...
        ValueError: Site 'z' is observed by the model (by obs= or in the data), yet the guide draws it: ...
    """
    for name, site in guide_trace.nodes.items():
        if not is_variable(site) or site["is_observed"] or site["infer"].get("is_auxiliary"):
            continue
        modelled = model_trace.nodes.get(name)
        if modelled is not None and modelled["type"] == "sample" and modelled["is_observed"]:
            raise ValueError(
                f"Site {name!r} is observed by the model (by obs= or in the data), yet the guide "
                "draws it: the model never uses that draw, but its log q would count; leave it "
                "out of the guide (or out of the data, to keep it latent)."
            )
    unguided = [
        name
        for name, site in model_trace.nodes.items()
        if is_variable(site) and not site["is_observed"] and not site["infer"].get("enumerate")
        and (name not in guide_trace.nodes or not is_variable(guide_trace.nodes[name]))
    ]  # fmt: skip
    if unguided:
        warnings.warn(
            f"Site {unguided[0]!r} is latent in the model, but neither the data give it nor the "
            "guide draws it, so it is drawn from the model's prior (as Pyro does, whose "
            "validation warns 'Found vars in model but not guide'); if it is a column, give it "
            "in the data.",
            stacklevel=3,
        )


def _points(guide: Callable[..., object], trace: poutine.Trace) -> set[str]:
    """The latent sites that a guide's trace draws as points, without a density: its Delta
    sites, unless they transform auxiliary draws (as `AutoNormal`'s do), and those of an
    `AutoDelta` part of an `AutoGuideList`."""
    deltas = {
        name
        for name in trace.stochastic_nodes
        if isinstance(unwrapped(trace.nodes[name]["fn"]), dist.Delta)
    }
    if not any(trace.nodes[name]["infer"].get("is_auxiliary") for name in trace.stochastic_nodes):
        return deltas
    parts = guide if isinstance(guide, AutoGuideList) else []
    return {
        name
        for part in parts
        if isinstance(part, AutoDelta)
        for name in part.prototype_trace.nodes
        if name in deltas
    }


def _draws_per_row(trace: poutine.Trace, rows: int) -> bool:
    """Whether a guide's trace on the rows repeated draws one value per row (not per repeat)."""
    for site in trace.nodes.values():
        if is_variable(site) and not site["is_observed"]:
            shape = site["fn"].batch_shape
            if shape and shape[0] == rows:
                return True
    return False


def _repeat(value: object, draws: int, rows: int) -> object:
    """A tensor of `rows` rows repeated `draws` times (rows within draws); else `value` itself."""
    if not isinstance(value, Tensor) or value.dim() == 0 or len(value) != rows:
        return value
    return value.repeat(draws, *[1] * (value.dim() - 1))
