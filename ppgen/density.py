r"""The queries of a generative model: the exact density :math:`\log p(x)` and ancestral sampling.

A fully observed program has the exact log-likelihood
:math:`\log p(x) = \sum_i \log p(x_i \mid \mathrm{Pa}(x_i))`, a sum of one term per site
(:class:`ExactLogLikelihood`): :func:`log_prob` scores rows with it, :func:`ppgen.fit_mle` fits
it, and :func:`sample` draws rows ancestrally.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from ppgen.data import Table, read_table
from ppgen.device import resolve_device
from ppgen.elbo import ARGUMENT, svi_table
from ppgen.importance import importance_log_prob
from ppgen.model import coding
from ppgen.nn import Node, Tabular
from ppgen.tracing import is_unweighted, is_variable, trace_calls

__all__ = ["ExactLogLikelihood", "log_prob", "sample"]


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
        sites = {name: s for name, s in trace.nodes.items() if is_variable(s)}
        names = {id(site["value"]): name for name, site in sites.items()}
        factors = {}
        for name, site in sites.items():
            call = calls.get(name)
            if call is None or not is_unweighted(site):
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
            if is_variable(site)
        }
        return terms if sites is None else {s: terms[s] for s in sites}

    def terms(
        self, data: Table, batch_size: int, sites: list[str] | None = None
    ) -> dict[str, Tensor]:
        """Each site's terms (or those of `sites`) on every row of `data`, in order, `batch_size`
        rows at a time, without gradients, on the device of the rows' batches."""
        parts: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                for name, term in self(data.rows(slice(start, start + batch_size)), sites).items():
                    parts.setdefault(name, []).append(term)
        return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _draw(
    model: Callable[..., object], n: int, args: tuple[object, ...], kwargs: dict[str, object]
) -> dict[str, Tensor]:
    """The values of the random variables of one run of `model` on `n` rows."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=n, **kwargs)
    return {name: site["value"] for name, site in trace.nodes.items() if is_variable(site)}


def _rows_independent(
    model: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
) -> bool:
    """Whether every site of `model` is inside a plate of the rows, along its first dimension
    (a run on 2 rows, the random state kept)."""
    with torch.random.fork_rng(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=2, **kwargs)
    for site in trace.nodes.values():
        if is_variable(site):
            first = len(site["fn"].event_shape) - site["value"].dim()  # as a plate's dim
            if not any(f.size == 2 and f.dim == first for f in site["cond_indep_stack"]):
                return False
    return True


def _per_row(log_prob: Tensor, rows: int) -> Tensor:
    if log_prob.dim() == 1:
        return log_prob
    return log_prob.reshape(rows, -1).sum(-1) if log_prob.dim() else log_prob.expand(rows) / rows


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
            the order of their codes; by default the model's own (:func:`ppgen.model.coding`),
            which a fit on labels records, so that each label gets the code it had in the fit.
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
    device = resolve_device(model, device)
    if guide is not None:
        resolve_device(guide, device)
        rows = svi_table(model, data, args, kwargs, device, categories=categories, known=True)
        batch = rows.rows(slice(None))
        data = batch.get(ARGUMENT, batch)
        return importance_log_prob(model, guide, data, *args, num_samples=num_samples, **kwargs)
    rows = read_table(model, data, args, kwargs, categories=categories, device=device, known=True)
    objective = ExactLogLikelihood(model, rows.rows(slice(0, 64)), *args, **kwargs)
    terms = objective.terms(rows, batch_size)
    return terms if per_node else sum(terms.values())


def sample(
    model: Callable[..., object],
    n: int,
    *args: object,
    batch_size: int = 1 << 15,
    as_frame: bool = False,
    categories: Mapping[str, list[object]] | None = None,
    device: str | torch.device | None = None,
    **kwargs: object,
) -> dict[str, Tensor] | object:
    r"""Draws `n` rows from a program by ancestral sampling, vectorised over `batch_size` rows.

    Seeded by `pyro.set_rng_seed`. Sites that the program observes (`obs=`) are returned as
    they are; `pyro.deterministic` sites are left out. Where every site is inside a plate of
    the rows, the rows are independent and are drawn `batch_size` at a time, so that memory
    holds the result and one batch's work; the rows have the same distribution whatever
    `batch_size` is, and with a fixed seed the first `batch_size` rows of a larger draw are
    those of `sample(model, batch_size)`. Otherwise (a site outside the plate, shared by the
    rows) all `n` rows are drawn at once.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        n: The number of rows, at least 1.
        args, kwargs: Other inputs of `model`.
        batch_size: Rows drawn at once, at least 1.
        as_frame: Whether to return a pandas DataFrame (one column per site with scalar rows).
        categories: For `as_frame`, the labels of each integer code of a column; by default
            the model's own (:func:`ppgen.model.coding`), as :func:`log_prob` takes them.
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
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of rows, not {batch_size}.")
    resolve_device(model, device)
    if n > batch_size and not _rows_independent(model, args, kwargs):
        batch_size = n
    if n <= batch_size:
        values = _draw(model, n, args, kwargs)
    else:
        values = {}
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            for name, value in _draw(model, rows, args, kwargs).items():  # freed batch by batch
                if start == 0:  # the whole result, filled a batch at a time
                    values[name] = value.new_empty((n, *value.shape[1:]))
                values[name][start : start + rows] = value
    if not as_frame:
        return values
    import pandas as pd

    categories = coding(model) if categories is None else categories
    columns = {}
    for name, value in values.items():
        if value.shape != (n,):
            raise ValueError(
                f"Site {name!r} has values of shape {tuple(value.shape)}; as_frame needs one "
                f"number per row, shape ({n},)."
            )
        column = value.cpu().numpy()
        labels = categories.get(name)
        columns[name] = (
            pd.Categorical.from_codes(column.astype("int64"), labels) if labels else column
        )
    return pd.DataFrame(columns)
