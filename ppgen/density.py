r"""The queries of a generative model: the exact density :math:`\log p(x)` and ancestral sampling.

A fully observed program has the exact log-likelihood
:math:`\log p(x) = \sum_i \log p(x_i \mid \mathrm{Pa}(x_i))`, a sum of one term per site
(:class:`ExactLogLikelihood`): :func:`log_prob` scores rows with it, :func:`ppgen.fit_mle` fits
it, and :func:`sample` draws rows ancestrally.

A program is called ppgen's way, told its number of rows as the keyword `n` and conditioned on a
table of rows, where its signature has a parameter `n` (or `**kwargs`); otherwise Pyro's way
(:func:`takes_rows`), with its data as arguments (`model(x, y)`, with `obs=` inside): run once on
all of them, its log-density is the sum over its sites of Pyro's trace, `trace.log_prob_sum()`
(:class:`ProgramLogLikelihood`).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import Tensor, nn

from ppgen.batched import Stacked, groups, hooked
from ppgen.batched import sample as sample_layers
from ppgen.builder import DAG
from ppgen.data import Table, is_frame, read_table
from ppgen.device import resolve_device
from ppgen.elbo import ARGUMENT, check_observed, per_row, svi_table
from ppgen.importance import importance_log_prob
from ppgen.model import coding
from ppgen.nn import Node, Tabular
from ppgen.tracing import (
    is_factor,
    is_unweighted,
    is_variable,
    plate_of_rows,
    program_name,
    signature,
    trace_calls,
    validates,
)

__all__ = [
    "ExactLogLikelihood",
    "ProgramLogLikelihood",
    "check_codes",
    "log_prob",
    "refuse_row_arguments",
    "sample",
    "takes_rows",
]


class ExactLogLikelihood(nn.Module):
    r"""The exact log-likelihood of a fully observed program, one term per site.

    Where every site's distribution comes from a ppgen conditional called directly on its
    parents' values, the terms are computed from those modules alone, without running the
    program (checked once against Pyro's own trace); otherwise the conditioned program is traced.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        probe: A few rows of checked data, used to find the structure.
        args, kwargs: Other inputs of `model`.
        data_rows: The rows of the whole data (by default, those of each batch): a term outside
            the plate of the rows (a site observed through `pyro.condition` outside it, a
            `pyro.factor` of all rows) counts by each row's share of them, so that the whole
            data count it once, as Pyro's trace does.
        batched: Whether the conditionals of the same shape are evaluated together where the
            structure is known (:mod:`ppgen.batched`: the same terms, in fewer operations);
            `False`: one call a site.

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
        data_rows: int | None = None,
        batched: bool = True,
        **kwargs: object,
    ) -> None:
        super().__init__()
        self.model, self.args, self.kwargs, self.rows = model, args, kwargs, data_rows
        self.batched = batched
        self.groups: list[list[str]] = []  # the sites evaluated together (ppgen.batched.groups)
        self._plans: dict[tuple[str, ...] | None, Stacked] = {}
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
            if call is None or name not in probe or not is_unweighted(site):
                return None
            parents = [names.get(id(value)) for value in call[1]]
            if None in parents:
                return None
            factors[name] = (call[0], parents)
        check_codes(factors, probe)
        if all(isinstance(m, Tabular) for m, _ in factors.values()) and all(
            sites[n]["fn"].shape() == (rows,) for n in factors
        ):  # each site is its table's Categorical (matched above), one value a row: they agree
            return factors
        self.factors = factors
        if self.batched:
            self.groups = groups(factors, {name: v.dim() == 1 for name, v in probe.items()})
        with torch.no_grad():
            fast = sum(t.sum() for t in self(probe).values())
            self.factors = None
            exact = sum(t.sum() for t in self(probe).values())
        if torch.allclose(fast, exact, rtol=1e-5, atol=1e-5):
            return factors
        self.groups, self._plans = [], {}
        return None

    def _plan(self, sites: Iterable[str] | None) -> Stacked:
        """The evaluation of `sites` (every site: `None`), same-shaped conditionals together."""
        key = None if sites is None else tuple(sites)
        plan = self._plans.get(key)
        if plan is None:
            plan = Stacked(self.factors, self.groups, list(self.factors) if key is None else key)
            self._plans[key] = plan
        return plan

    def _singles(self, batch: dict[str, Tensor], plan: Stacked) -> list[Tensor]:
        """The terms per row of the sites that `plan` leaves alone, each from its module."""
        rows = len(next(iter(batch.values())))
        return [
            _per_row(module.log_prob(batch[name], *(batch[p] for p in parents)), rows)
            for module, parents, name in ((*self.factors[s], s) for s in plan.singles)
        ]

    def forward(
        self, batch: dict[str, Tensor], sites: Iterable[str] | None = None
    ) -> dict[str, Tensor]:
        """Returns each site's log-likelihood per row, of shape :math:`(N,)`, for every site or
        for `sites` alone (computed alone where the structure is known)."""
        rows = len(next(iter(batch.values())))
        if self.factors is not None:
            plan = self._plan(sites)
            terms = dict(zip(plan.singles, self._singles(batch, plan), strict=True))
            grouped = (term for group in plan(batch) for term in group.unbind(0))
            terms.update(zip(plan.names, grouped, strict=True))
            return {name: terms[name] for name in (self.factors if sites is None else sites)}
        conditioned = poutine.condition(self.model, data=batch)
        trace = poutine.trace(conditioned).get_trace(*self.args, n=rows, **self.kwargs)
        with warnings.catch_warnings():  # a non-finite term gets train's own error, naming it
            warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
            trace.compute_log_prob()
        plate = plate_of_rows(trace, rows, batch)
        terms = {
            name: self._site_per_row(site, rows, plate)
            for name, site in trace.nodes.items()
            if is_variable(site)
        }
        return terms if sites is None else {s: terms[s] for s in sites}

    def totals(
        self, batch: dict[str, Tensor], sites: Iterable[str] | None = None
    ) -> tuple[list[str], Tensor]:
        """Each site's log-likelihood summed over the rows of `batch`, stacked in one tensor of
        shape :math:`(S,)`, and the sites' names in its order: where the structure is known,
        each group's sums at once, without a tensor per site."""
        if self.factors is None:
            terms = self(batch, sites)
            return list(terms), torch.stack([t.sum() for t in terms.values()])
        plan = self._plan(sites)
        grouped, singles = plan(batch), self._singles(batch, plan)
        parts = [torch.cat(grouped).sum(-1)] if len(grouped) > 1 else [g.sum(-1) for g in grouped]
        if singles:
            parts.append(torch.stack([t.sum() for t in singles]))
        return plan.names + plan.singles, parts[0] if len(parts) == 1 else torch.cat(parts)

    def _site_per_row(self, site: dict, rows: int, plate: str | None) -> Tensor:
        """A traced site's log-density per row, summed inside the plate of the rows (`plate`,
        the one around every data site; else the outermost of their size); a term outside it
        (in another plate, of the same size or not) counts by each row's share of the data."""
        log_prob = site["log_prob"]
        for frame in site["cond_indep_stack"]:
            dim = frame.dim
            if frame.size == rows and dim is not None and -dim <= log_prob.dim():
                if log_prob.shape[dim] == rows and plate in (None, frame.name):
                    return log_prob.movedim(dim, 0).reshape(rows, -1).sum(-1)
        first = -log_prob.dim()  # the leading dimension, as a plate's
        plated = any(f.dim == first for f in site["cond_indep_stack"])
        if log_prob.dim() and log_prob.shape[0] == rows and not plated:  # rows first, unplated
            return log_prob.reshape(rows, -1).sum(-1)
        return log_prob.sum().expand(rows) / (self.rows or rows)

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


def check_codes(factors: Mapping[str, tuple[Node, list[str]]], columns: Mapping[str, Tensor]) -> None:
    """Refuses a parent's value that has no row in a child's table: a code outside the values
    the :class:`~ppgen.nn.Tabular` gives that parent, which a count would put in another row's
    cell (a mixed-radix index carries it over) and a look-up would not find.

    Example:
        >>> factors = {"b": (Tabular(2, (2,)), ["a"])}
        >>> check_codes(factors, {"a": torch.tensor([0, 2])})
        Traceback (most recent call last):
        ...
        ValueError: Site 'a' has value 2 in row 1, but the Tabular of site 'b' takes 2 values of it (0 to 1): give that Tabular the parent's cardinality.
    """
    ranges: dict[str, tuple[float, float]] = {}  # each parent's least and largest value, once
    for name, (module, parents) in factors.items():
        if not isinstance(module, Tabular):
            continue
        for parent, k in zip(parents, module.parent_cardinalities, strict=False):
            column = columns[parent]
            if parent not in ranges:
                ranges[parent] = tuple(float(v) for v in torch.aminmax(column))
            low, high = ranges[parent]
            if low < 0 or high >= k:
                outside = (column < 0) | (column >= k)
                row = int(outside.reshape(len(column), -1).any(-1).nonzero()[0])
                value = column[row][outside[row]].reshape(-1)[0]
                raise ValueError(
                    f"Site {parent!r} has value {value.item():g} in row {row}, but the Tabular "
                    f"of site {name!r} takes {k} values of it (0 to {k - 1}): give that "
                    "Tabular the parent's cardinality."
                )


def _draw(
    model: Callable[..., object], n: int, args: tuple[object, ...], kwargs: dict[str, object]
) -> dict[str, Tensor]:
    """The values of the random variables of one run of `model` on `n` rows: a :class:`DAG`'s
    one topological layer at a time, same-shaped conditionals together."""
    if _layered(model, args, kwargs):
        nodes = zip(model.nodes, model.conditionals, strict=True)
        factors = {v: (c, model.parents[v]) for v, c in nodes}
        with torch.no_grad():
            return sample_layers(factors, n)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=n, **kwargs)
    sites = {k: s for k, s in trace.nodes.items() if is_variable(s) and not is_factor(s)}
    for name, site in sites.items():
        if site["is_observed"]:
            _check_observed_rows(name, site, n)
    return {name: site["value"] for name, site in sites.items()}


def _check_observed_rows(name: str, site: dict, n: int) -> None:
    """One sentence for a site observed with another number of values than the `n` rows
    drawn, along a plate of `n` (the rows would not pair)."""
    value = site["value"]
    batch = value.shape[: value.dim() - len(site["fn"].event_shape)]
    for frame in site["cond_indep_stack"]:
        if frame.size == n and frame.dim is not None and -frame.dim <= len(batch):
            if batch[frame.dim] != n:
                raise ValueError(
                    f"Site {name!r} is observed with {batch[frame.dim]} values along the plate "
                    f"{frame.name!r}, but sample draws {n} rows: draw as many rows as it has "
                    "values, or leave it unobserved."
                )


def _layered(
    model: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
) -> bool:
    """Whether `model` is :func:`ppgen.dag`'s program as it is, called outside any Pyro handler
    and without forward hooks, so that its draws may be made without running it
    (:func:`ppgen.batched.sample`)."""
    return (
        isinstance(model, DAG)
        and type(model).forward is DAG.forward
        and not args
        and not kwargs
        and not poutine.runtime.am_i_wrapped()
        and all(type(c).forward is Node.forward for c in model.conditionals)
        and not hooked(model)
    )


def _rows_independent(
    model: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
) -> bool:
    """Whether every site of `model` is inside the plate of the rows, along its first
    dimension, and drawn (observed values are the data's, whole): runs on 2 and 3 rows, the
    random state kept, so that a plate of a fixed size is not taken for the rows'."""
    plates: set[str] | None = None
    for n in (2, 3):
        with torch.random.fork_rng(), torch.no_grad():
            trace = poutine.trace(model).get_trace(*args, n=n, **kwargs)
        for site in trace.nodes.values():
            if not is_variable(site):
                continue
            if site["is_observed"] and not is_factor(site):
                return False
            first = len(site["fn"].event_shape) - site["value"].dim()  # as a plate's dim
            names = {f.name for f in site["cond_indep_stack"] if f.size == n and f.dim == first}
            plates = names if plates is None else plates & names
            if not plates:
                return False
    return True


def _per_row(log_prob: Tensor, rows: int) -> Tensor:
    if log_prob.dim() == 1:
        return log_prob
    return log_prob.reshape(rows, -1).sum(-1) if log_prob.dim() else log_prob.expand(rows) / rows


def takes_rows(model: Callable[..., object]) -> bool:
    """Whether `model` takes the number of rows as its keyword `n` (ppgen's convention): its
    signature has a parameter `n`, or `**kwargs`. A program without a readable signature is
    taken to.

    Example:
        >>> takes_rows(lambda n=1: None), takes_rows(lambda x, y: None)
        (True, False)
    """
    try:
        parameters = signature(model).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == "n" and p.kind is not p.VAR_POSITIONAL)
        for p in parameters
    )


class ProgramLogLikelihood(nn.Module):
    r"""The log-density of a program in Pyro's style on all of its data, one term per site.

    Each term is the site's log-density summed over its values, scaled and masked as in Pyro's
    trace (a subsampling plate's scale included), so that the terms add up to
    `trace.log_prob_sum()`; `pyro.factor` terms count as sites.

    Arguments:
        model: A Pyro program without a keyword `n`.
        data: A dict (or DataFrame) of site name to value, which conditions the program
            (`pyro.condition`), each value of the shape of its site; `None`: every input is in
            `args` and `kwargs`; anything else (a tensor): the program's first argument.
        args, kwargs: The program's (other) inputs.
        purpose: What the terms are for, named in errors: `"log_prob"` or `"fit_mle"`.

    Raises:
        ValueError: Naming the site, for a site that is latent (neither observed by the program
            nor in `data`), a value of the wrong shape, NaN or inf, or a value outside the
            support of its site.

    Example:
        >>> def model(x):
        ...     with pyro.plate("rows", len(x)):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
        >>> ProgramLogLikelihood(model, torch.zeros(2))()
        {'x': tensor(-1.8379)}
    """

    def __init__(
        self,
        model: Callable[..., object],
        data: Mapping[str, object] | Tensor | object | None = None,
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        purpose: str = "log_prob",
    ) -> None:
        super().__init__()
        self.model, self.kwargs, self.purpose = model, dict(kwargs or {}), purpose
        self.rows = len(data) if isinstance(data, Tensor) and data.dim() else 1
        conditions = data is not None and (isinstance(data, Mapping) or is_frame(data))
        self.args = args if data is None or conditions else (data, *args)
        conditioned = poutine.condition(model, data=self._conditions(data)) if conditions else None
        self.program = model if conditioned is None else conditioned
        self._check()

    def _conditions(self, data: Mapping[str, object] | object) -> dict[str, Tensor]:
        """The values of `data` as tensors, checked against the sites of the program."""
        if is_frame(data):
            data = {str(name): series for name, series in data.items()}
        with torch.random.fork_rng(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        sites = {name: s for name, s in trace.nodes.items() if is_variable(s)}
        values = {}
        for name, given in data.items():
            site = sites.get(name)
            if site is None:
                raise ValueError(
                    f"{name!r} is not a sample site of the program {program_name(self.model)} (its "
                    f"sites: {', '.join(map(repr, sites))})."
                )
            value = _as_tensor(name, given)
            expected = site["value"]
            if value.shape != expected.shape:
                raise ValueError(
                    f"Site {name!r} has values of shape {tuple(expected.shape)}, but the data "
                    f"give it shape {tuple(value.shape)}."
                )
            if not expected.is_floating_point() and value.is_floating_point():
                if not torch.equal(value, value.round()):
                    raise ValueError(f"Site {name!r} takes whole numbers; the data give others.")
            values[name] = value.to(dtype=expected.dtype, device=expected.device)
        return values

    def _check(self) -> None:
        """Runs the program once: every site must be observed, each value in its support."""
        with torch.random.fork_rng(), torch.no_grad():
            trace = self._run(
                lambda: poutine.trace(self.program).get_trace(*self.args, **self.kwargs)
            )
        rows = [*self.args, *self.kwargs.values()]  # a site reading them gets no broadcast
        check_observed(trace, [a for a in rows if isinstance(a, Tensor) and a.dim()])
        for name, site in trace.nodes.items():
            if not is_variable(site):
                continue
            if not site["is_observed"]:
                fix = (
                    "fit it with ppgen.fit_svi(model, guide, ...)"
                    if self.purpose == "fit_mle"
                    else "pass its values in data, or give a guide"
                )
                raise ValueError(
                    f"Site {name!r} of the program {program_name(self.model)} is latent (neither "
                    f"observed with obs= nor in the data), so {self.purpose} has no exact "
                    f"log-likelihood: {fix}."
                )
            value = site["value"]
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"Site {name!r} holds NaN or inf.")
            fn = site["fn"]
            if not is_factor(site) and validates(fn) and not bool(fn.support.check(value).all()):
                raise ValueError(
                    f"Site {name!r} has a value outside the support of its distribution."
                )
        with torch.no_grad():
            self._run(trace.compute_log_prob)

    def _run(self, step: Callable[[], object]) -> object:
        """`step()`, an error inside the program made one sentence naming it (chained)."""
        try:
            return step()
        except (
            RuntimeError, TypeError, IndexError, AssertionError, ValueError, ZeroDivisionError
        ) as error:
            raise ValueError(
                f"The program {program_name(self.model)} fails on its data: {type(error).__name__}: "
                f"{error}"
            ) from error

    @property
    def table(self) -> Table:
        """The loop's rows: positions only, since every step runs the program on all its data."""
        return Table({"*rows": torch.arange(self.rows)})

    def forward(self, batch: object = None, sites: object = None) -> dict[str, Tensor]:
        """Each site's log-density summed over its values (the whole data, whatever `batch`)."""
        trace = poutine.trace(self.program).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob()
        terms = {
            name: site["log_prob"].sum() for name, site in trace.nodes.items() if is_variable(site)
        }
        return terms if sites is None else {s: terms[s] for s in sites}


def _as_tensor(name: str, value: object) -> Tensor:
    """A site's value as a tensor (a pandas column's numbers too)."""
    value = value.to_numpy() if hasattr(value, "to_numpy") else value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"The value of site {name!r} cannot be read as numbers: {error}"
        ) from None


def log_prob(
    model: Callable[..., object],
    data: Mapping[str, object] | object | None = None,
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

    A program taking the number of rows as its keyword `n` (ppgen's convention) is conditioned
    on the rows of `data`, in batches. A program in Pyro's style, without `n`, takes its data
    as arguments: `log_prob(model, x, y)` runs `model(x, y)` once and returns, without a
    guide, the total :math:`\log p` of Pyro's `trace.log_prob_sum()`, a scalar (see
    `docs/programs.md`). Sites observed through `pyro.condition` and `pyro.factor` terms count,
    as in Pyro's trace.

    Arguments:
        model: A Pyro program.
        data: With `n`: a dict of site name to array (rows first) or a pandas DataFrame;
            checked first, as by :func:`ppgen.data.table`, with or without `guide`. Without
            `n`: a dict of site name to value that conditions the program, or `None` (every
            input in `args`), or else (a tensor) the program's first argument.
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
        sum to it); for a program without `n` and no guide, scalars.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "bernoulli"})
        >>> log_prob(model, {"a": [0, 1], "b": [1, 1]}).shape
        torch.Size([2])
        >>> def coin(flips):  # Pyro's style: the data are an argument
        ...     with pyro.plate("flips", len(flips)):
        ...         pyro.sample("flip", dist.Bernoulli(0.5), obs=flips)
        >>> log_prob(coin, torch.tensor([1.0, 0.0, 1.0]))
        tensor(-2.0794)
    """
    if not getattr(model, "has_density", True):
        raise ValueError(
            f"{type(model).__name__} has no density: some site is implicit (a deterministic "
            "function of latent draws), so log p(x) is undefined; compare samples instead, e.g. "
            "with ppgen.metrics.mmd."
        )
    if isinstance(guide, str):
        raise ValueError(
            f"guide must be a program (fit.guide, the guide fit_svi fitted), not {guide!r}."
        )
    if guide is not None and per_node:
        raise ValueError("per_node needs a fully observed model; with a guide it is undefined.")
    _check_count("batch_size", batch_size, "rows")
    _check_count("num_samples", num_samples, "draws")
    device = resolve_device(model, device)
    if not takes_rows(model):  # Pyro's style: the data are the program's arguments
        if guide is None:
            with torch.no_grad():
                terms = ProgramLogLikelihood(model, data, args, kwargs)()
            return terms if per_node else sum(terms.values())
        if not isinstance(data, Tensor):
            raise ValueError(
                "With a guide, a program without the keyword n takes its data tensor as its "
                "first argument: log_prob(model, x, ..., guide=guide)."
            )
    if isinstance(data, Mapping) or is_frame(data):  # the rows of a program taking n
        columns = dict(data).values()
        lengths = [len(v) for v in columns if hasattr(v, "__len__") and getattr(v, "ndim", 1)]
        refuse_row_arguments(args, kwargs, max(lengths, default=0), "log_prob")
    if guide is not None:
        hidden = per_row((data, *args), kwargs)[2] if isinstance(data, Tensor) else None
        if hidden is not None and num_samples > 1:  # examples/dmm's packed sequences
            raise ValueError(
                f"Argument {hidden[1:]!r} holds tensors with rows inside a container that "
                "log_prob cannot repeat once per draw of the guide (a list, a PackedSequence); "
                "pass them as tensors, or num_samples=1."
            )
        resolve_device(guide, device)
        rows = svi_table(model, data, args, kwargs, device, categories=categories, known=True)
        batch = rows.rows(slice(None))
        data = batch.get(ARGUMENT, batch)
        return importance_log_prob(model, guide, data, *args, num_samples=num_samples, **kwargs)
    rows = read_table(model, data, args, kwargs, categories=categories, device=device, known=True)
    probe = rows.rows(slice(0, 64))
    objective = ExactLogLikelihood(model, probe, *args, data_rows=len(rows), **kwargs)
    check_codes(objective.factors or {}, rows.columns)
    terms = objective.terms(rows, batch_size)
    return terms if per_node else sum(terms.values())


def refuse_row_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], rows: int, function: str
) -> None:
    """Refuses, for a program taking `n`, a tensor argument with one value per row of the data
    (per-row weights, say): `function` runs the program on batches of the rows (shuffled, to
    fit) and passes its arguments as they are, so those values would not follow their rows.

    Example:
        >>> refuse_row_arguments((torch.ones(3),), {}, 3, "log_prob")
        Traceback (most recent call last):
        ...
        ValueError: The model's argument 0 has one value per row of the data (3 rows), but ...
    """
    named = [(f"argument {i}", v) for i, v in enumerate(args)]
    named += [(f"keyword {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        if rows > 1 and isinstance(value, Tensor) and value.dim() and len(value) == rows:
            raise ValueError(
                f"The model's {label} has one value per row of the data ({rows} rows), but "
                f"{function} runs the program on batches of the rows and passes its arguments "
                "as they are; write the program in Pyro's style, its data and these values as "
                f"its arguments (docs/programs.md), and {function}(model, *arguments)."
            )


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
    they are; `pyro.deterministic` sites and `pyro.factor` terms are left out (but for a
    program in Pyro's style, below). Where every site
    is inside a plate of the rows and drawn (none observed), the rows are independent and are
    drawn `batch_size` at a time, so that memory holds the result and one batch's work; the
    rows have the same distribution whatever `batch_size` is, and with a fixed seed the first
    `batch_size` rows of a larger draw are those of `sample(model, batch_size)`. Otherwise (a
    site outside the plate, shared by the rows; observed rows, which must number `n`) all `n`
    rows are drawn at once. A :func:`ppgen.dag` model is drawn one
    topological layer at a time, its same-shaped conditionals together
    (:func:`ppgen.batched.sample`): the distribution of its program's run, but other values
    under a seed unless each layer holds one site. A program in Pyro's style, without the
    keyword `n`, is run `n` times by `pyro.infer.Predictive(model, num_samples=n)`, whose
    draws are returned as they are (pass `None` for the data arguments to draw them rather
    than observe them): each site's `n` draws stacked, a site outside some of the program's
    plates padded with a dimension of size 1 for each (a global scalar under one plate:
    :math:`(n, 1)`), `pyro.deterministic` sites and `pyro.factor` terms (empty) included.

    Arguments:
        model: A Pyro program.
        n: The number of rows (draws of a program without `n`), at least 1.
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
    n = _check_count("n", n, "rows")
    batch_size = _check_count("batch_size", batch_size, "rows")
    resolve_device(model, device)
    if not takes_rows(model):
        values = _predictive(model, n, args, kwargs)
    elif n <= batch_size or not _rows_independent(model, args, kwargs):
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
        if not value.numel():  # a pyro.factor term among Predictive's draws: no values
            continue
        if value.shape[:1] != (n,) or value.numel() != n:
            raise ValueError(
                f"Site {name!r} has values of shape {tuple(value.shape)}; as_frame needs one "
                f"number per row, shape ({n},)."
            )
        column = value.reshape(n).cpu().numpy()  # a global site, (n, 1) as Predictive pads it
        labels = categories.get(name)
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


def _check_count(name: str, value: object, what: str) -> int:
    """`value` as an int, or one sentence for anything but a positive whole number (a float, a
    bool), which torch would take or fail on deep inside."""
    try:
        count = operator.index(value) if not isinstance(value, bool) else 0
    except TypeError:
        count = 0
    if count < 1:
        raise ValueError(f"{name} must be a positive number of {what}, not {value!r}.")
    return count


def _predictive(
    model: Callable[..., object], n: int, args: tuple[object, ...], kwargs: dict[str, object]
) -> dict[str, Tensor]:
    """`n` runs of a program in Pyro's style: `Predictive(model, num_samples=n)`'s own draws."""
    with torch.no_grad():
        return dict(Predictive(model, num_samples=n)(*args, **kwargs))
