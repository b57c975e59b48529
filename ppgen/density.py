r"""The queries of a generative model: density :math:`\log p(x)` and ancestral sampling."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pyro.poutine as poutine
import torch
from torch import Tensor

from ppgen.data import table
from ppgen.elbo import _ARGUMENT, svi_table
from ppgen.graph import _is_variable
from ppgen.importance import importance_log_prob
from ppgen.infer import ExactLogLikelihood, _device

__all__ = ["log_prob", "sample"]


def log_prob(
    model: Callable[..., object],
    data: Mapping[str, object] | object,
    *args: object,
    per_node: bool = False,
    batch_size: int = 4096,
    guide: Callable[..., object] | None = None,
    num_samples: int = 1000,
    categories: Mapping[str, Sequence[object]] | None = None,
    device: str | torch.device | None = None,
    **kwargs: object,
) -> Tensor | dict[str, Tensor]:
    r"""Returns the log-likelihood :math:`\log p(x)` of each row: exact where every site is
    observed, else the importance-weighted estimate with draws from `guide`.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        data: A dict of site name to array (rows first) or a pandas DataFrame; checked first,
            as by :func:`ppgen.data.table`, with or without `guide`.
        args, kwargs: Other inputs of `model`.
        per_node: Whether to return each site's term :math:`\log p(x_i \mid \mathrm{Pa}(x_i))`
            instead of their sum.
        batch_size: Rows evaluated at once.
        guide: For a model with latent sites, a guide over them: the result is then the
            importance-weighted bound :math:`\log \frac{1}{K} \sum_k p(x, z_k) / q(z_k \mid x)`
            of :func:`ppgen.importance.importance_log_prob`, per row.
        num_samples: The draws :math:`K` per row, with `guide`.
        categories: The labels of each label column (a pandas categorical or text column), in
            the order of their codes: the fit's, `fit.categories`. Data with such columns need
            it, so that each label gets the code it had in the fit.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is): the model (and
            guide) are moved there, as by the fits, and the rows follow in batches (data
            larger than a GPU's memory stay in host memory, see :func:`ppgen.data.fits`).

    Returns:
        A tensor of shape :math:`(N,)` on the device, or a dict of such tensors per site (they
        sum to it).

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "bernoulli"})
        >>> log_prob(model, {"a": [0, 1], "b": [1, 1]}).shape
        torch.Size([2])
    """
    if not getattr(model, "has_density", True):
        raise ValueError(
            f"{type(model).__name__} has no density: some site is implicit (a deterministic "
            "function of latent draws), so log p(x) is undefined; compare samples instead, e.g. "
            "with ppgen.metrics.mmd."
        )
    if guide is not None and per_node:
        raise ValueError("per_node needs a fully observed model; with a guide it is undefined.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, not {batch_size}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive number of draws, not {num_samples}.")
    device = _device(model, device)
    if guide is not None:
        _device(guide, device)
        rows = svi_table(model, data, args, kwargs, device, categories=categories)
    else:
        rows = table(model, data, *args, categories=categories, device=device, **kwargs)
    if categories is None and rows.categories:
        raise ValueError(
            f"Column {next(iter(rows.categories))!r} holds labels, and log_prob needs the codes "
            "they had in the fit: pass categories=fit.categories."
        )
    if guide is not None:
        batch = rows.rows(slice(None))
        data = batch.get(_ARGUMENT, batch)
        return importance_log_prob(model, guide, data, *args, num_samples=num_samples, **kwargs)
    objective = ExactLogLikelihood(model, rows.rows(slice(0, 64)), *args, **kwargs)
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            for name, term in objective(rows.rows(slice(start, start + batch_size))).items():
                parts.setdefault(name, []).append(term)
    terms = {name: torch.cat(chunks) for name, chunks in parts.items()}
    return terms if per_node else sum(terms.values())


def sample(
    model: Callable[..., object],
    n: int,
    *args: object,
    as_frame: bool = False,
    categories: Mapping[str, list[object]] | None = None,
    device: str | torch.device | None = None,
    **kwargs: object,
) -> dict[str, Tensor] | object:
    r"""Draws `n` rows from a program by ancestral sampling, in one vectorised run.

    Seeded by `pyro.set_rng_seed`. Sites that the program observes (`obs=`) are returned as
    they are; `pyro.deterministic` sites are left out.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        n: The number of rows, at least 1.
        args, kwargs: Other inputs of `model`.
        as_frame: Whether to return a pandas DataFrame (one column per site with scalar rows).
        categories: For `as_frame`, the labels of each integer code of a column: the fit's,
            `fit.categories` (as :func:`log_prob` takes them).
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is); the model is moved
            there, as by the fits, and the draws are made there.

    Returns:
        A dict of site name to tensor of shape :math:`(n, *)`, or a DataFrame.

    Example:
        >>> rows = sample(ppgen.dag([("a", "b")]), 5)
        >>> sorted(rows), rows["b"].shape
        (['a', 'b'], torch.Size([5]))
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of rows, not {n}.")
    _device(model, device)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=n, **kwargs)
    values = {name: site["value"] for name, site in trace.nodes.items() if _is_variable(site)}
    if not as_frame:
        return values
    import pandas as pd

    columns = {}
    for name, value in values.items():
        if value.shape != (n,):
            raise ValueError(
                f"Site {name!r} has values of shape {tuple(value.shape)}; as_frame needs one "
                f"number per row, shape ({n},)."
            )
        column = value.cpu().numpy()
        labels = (categories or {}).get(name)
        if labels and not 0 <= column.min() <= column.max() < len(labels):
            code = column.max() if column.max() >= len(labels) else column.min()
            raise ValueError(
                f"Site {name!r} drew code {int(code)}, but categories has "
                f"{len(labels)} labels for column {name!r}: the fit saw fewer labels than the "
                "site takes values; sample without as_frame to get the codes."
            )
        columns[name] = (
            pd.Categorical.from_codes(column.astype("int64"), labels) if labels else column
        )
    return pd.DataFrame(columns)
