r"""The importance-weighted estimate of :math:`\log p(x)` per row, for a model with a guide.

With :math:`K` draws :math:`z_k \sim q(z \mid x)` of the guide,

.. math:: \log p(x) \ge \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},

a bound that equals the ELBO for :math:`K = 1`, grows with :math:`K` in expectation and tends to
:math:`\log p(x)` (Burda et al., 2016). Each row gets its own sum: the log-sum-exp runs over the
draws, inside the data plate, never over the rows.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from ppgen.tracing import is_variable, program_name

__all__ = ["importance_log_prob", "reads_rows"]

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
    proposal (its density ratio is 1).

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
    target = guide.forward if isinstance(guide, nn.Module) else guide
    try:
        parameter = inspect.signature(target).parameters.get("data")
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
    """The log-weights of `draws` draws per row, of shape (draws, rows)."""
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
    replayed = poutine.replay(model, trace=guide_trace)
    model_trace = _traced("model", model, where, lambda: poutine.trace(replayed).get_trace(
        *args, **kwargs))  # fmt: skip
    guided = {name for name, site in guide_trace.nodes.items() if is_variable(site)}
    terms = []
    for sign, trace in ((1, model_trace), (-1, guide_trace)):
        trace.compute_log_prob()
        for name, site in trace.nodes.items():
            if not is_variable(site) or (sign < 0 and site["is_observed"]):
                continue
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
    return torch.stack(terms).sum(0)


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


def _repeat(value: object, draws: int, rows: int) -> object:
    """A tensor of `rows` rows repeated `draws` times (rows within draws); else `value` itself."""
    if not isinstance(value, Tensor) or value.dim() == 0 or len(value) != rows:
        return value
    return value.repeat(draws, *[1] * (value.dim() - 1))
