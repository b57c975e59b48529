r"""Amortised guides built from a program's graph: the faithful inverse of its DAG, one network
a latent site.

A guide :math:`q(z \mid x)` can only match the posterior :math:`p(z \mid x)` if its own
factorisation asserts no independence the posterior lacks. :func:`faithful_inverse` builds
such a factorisation from the model's DAG by simulating variable elimination (NaMI, Webb et
al. 2018); :class:`Amortized` gives each latent site of that inverse a network of its inverse
parents, so that any program with latent sites can be fitted by :func:`ppgen.fit_svi` without
writing a guide.

References:
    Webb, Goliński, Zinkov, Siddharth, Rainforth, Teh and Wood, "Faithful Inversion of
    Generative Models for Effective Amortized Inference", NeurIPS 2018.
    Stuhlmüller, Taylor and Goodman, "Learning Stochastic Inverses", NeurIPS 2013.
    Krishnan, Shalit and Sontag, "Structured Inference Networks for Nonlinear State Space
    Models", AAAI 2017.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import networkx as nx
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import Tensor, nn
from torch.distributions import biject_to

from ppgen.graph import graph
from ppgen.model import Model
from ppgen.nn import Node, mlp
from ppgen.tracing import is_variable, plate_of_rows, program_name

__all__ = ["Amortized", "faithful_inverse"]

_ROW = "*x"  # the input of the `model(x)` convention: the row of x, flattened
_ONES = "*1"  # the input of a network with no parent that varies by row


def faithful_inverse(g: nx.DiGraph) -> nx.DiGraph:
    r"""Returns the minimally faithful inverse of a DAG: the structure of a guide
    :math:`q(z \mid x) = \prod_v q(v \mid \mathrm{Pa}_H(v))` that can equal the posterior.

    The latent nodes (attribute `observed` false or absent) are eliminated from the moral graph
    one at a time, each once all its latent children are (reverse topological order): a node's
    inverse parents are its neighbours when it is eliminated, which are then joined pairwise
    (NaMI, Webb et al. 2018). Among the candidates, nodes in more plates (attribute `plates`)
    go first, so that the rows' latents never become parents of a global one; then the one
    adding the fewest edges (min-fill); then the latest in the graph's node order. Observed
    nodes are never eliminated: they are the inverse's roots.

    Arguments:
        g: A DAG, such as :func:`ppgen.graph` returns.

    Returns:
        A DAG on the same nodes (with their attributes) whose edges point from each latent
        node's inverse parents to it; observed nodes have no parents.

    Example:
        >>> g = nx.DiGraph([("a", "x"), ("b", "x")])  # a v-structure: a and b meet at x
        >>> g.nodes["x"]["observed"] = True
        >>> sorted(faithful_inverse(g).edges)  # given x, a and b are dependent: an edge a -> b
        [('a', 'b'), ('x', 'a'), ('x', 'b')]
    """
    moral = nx.moral_graph(g)
    inverse = nx.DiGraph()
    inverse.add_nodes_from(g.nodes(data=True))
    position = {v: i for i, v in enumerate(g)}
    remaining = {v for v in g if not g.nodes[v].get("observed", False)}
    while remaining:
        frontier = [v for v in remaining if not any(c in remaining for c in g.successors(v))]
        v = min(
            frontier,
            key=lambda v: (-len(g.nodes[v].get("plates", ())), _fill(moral, v), -position[v]),
        )
        neighbours = list(moral.neighbors(v))
        inverse.add_edges_from((u, v) for u in neighbours)
        moral.add_edges_from(itertools.combinations(neighbours, 2))
        moral.remove_node(v)
        remaining.remove(v)
    return inverse


def _fill(moral: nx.Graph, v: object) -> int:
    """The edges that eliminating `v` adds: pairs of its neighbours not yet joined."""
    neighbours = list(moral.neighbors(v))
    return sum(not moral.has_edge(a, b) for a, b in itertools.combinations(neighbours, 2))


@dataclass
class _Site:
    """How the guide draws one latent site."""

    name: str
    kind: str  # "normal" (a Normal, maybe pushed through a bijection), "bernoulli", "categorical"
    frames: list[tuple[str, int, int]]  # the site's plates: name, size, dim
    event_dim: int
    shape: tuple[int, ...]  # of a row's unconstrained value; of the whole value for a global
    axis: int | None  # the rows' dimension in the value; None: a global site
    support: constraints.Constraint | None = None  # of a continuous site not on the reals
    cardinality: int = 0
    inputs: list[str] = field(default_factory=list)  # observed columns and latent sites
    span: int = 0  # the number of batch dimensions of the site's value, unenumerated
    chain: int | None = None  # the chain of repeated sites it belongs to (see _chains)
    step: int = 0  # its place in that chain
    transform: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.transform = None if self.support is None else biject_to(self.support)

    @property
    def spec(self) -> tuple[int | None, int, int]:
        """The site as an input of a network (see :func:`_column`)."""
        return (None if self.axis is None else self.axis - self.span, self.cardinality,
                self.event_dim)  # fmt: skip


class _SiteNet(Node):
    r"""The conditional of one latent site given its inverse parents' values: a linear map
    plus a ReLU network whose last layer starts at zero (so exact for linear-Gaussian posteriors
    from the first step), sharing one matrix product on the input.

    Each parent is given as its value; `columns` says how it becomes a row of features (see
    :func:`_column`). A parent enumerated by `TraceEnum_ELBO` brings its enumeration dimensions,
    which the site's distribution takes on, left of its own batch dimensions.
    """

    def __init__(
        self,
        site: _Site,
        columns: list[tuple[int | None, int, int | None]],
        features: int,
        hidden: Sequence[int],
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.site, self.columns = site, columns
        vector = site.kind == "normal" and _event_dim(site) == 1 and site.shape[-1] > 1
        self.rank = rank if vector else 0  # of the covariance's factor, on a vector's entries
        self.size = size = math.prod(site.shape)
        out = {"normal": (2 + self.rank) * size, "bernoulli": size}.get(
            site.kind, size * site.cardinality
        )
        self.width = hidden[0] if hidden else 0  # the first layer's outputs for the hidden path
        self.first = nn.Linear(features, self.width + out)
        self.rest = mlp([*hidden, out], nn.ReLU) if hidden else None
        if self.rest is not None:
            nn.init.zeros_(self.rest[-1].weight)
            nn.init.zeros_(self.rest[-1].bias)

    def distribution(self, *parents: Tensor) -> dist.Distribution:
        site, dtype = self.site, self.first.weight.dtype
        pairs = zip(parents, self.columns, strict=True)
        return self.of_features([_column(v, spec, site.span, dtype) for v, spec in pairs])

    def of_features(self, h: list[Tensor]) -> dist.Distribution:
        """The distribution given the parents' features, each (*enumerated, rows, features)."""
        site = self.site
        out = self._first(h)
        if self.rest is not None:
            hidden, out = out.split([self.width, out.shape[-1] - self.width], -1)
            out = out + self.rest(F.relu(hidden))
        at = out.dim() - 2  # the rows' dimension, after the enumerated parents' dimensions
        shape = (*out.shape[:-1], *site.shape, *((-1,) if site.kind == "categorical" else ()))
        if site.kind == "normal":
            size = self.size
            loc, scale, factor = out.split([size, size, size * self.rank], -1)
            loc, scale = loc.reshape(shape), F.softplus(scale.reshape(shape))
            factor = _rows_at(factor.reshape(*shape, self.rank), at, site.axis) if self.rank else None
            return _normal(_rows_at(loc, at, site.axis), _rows_at(scale, at, site.axis), site, factor)
        logits = _rows_at(out.reshape(shape), at, site.axis)
        family = dist.Bernoulli if site.kind == "bernoulli" else dist.Categorical
        return family(logits=logits).to_event(site.event_dim)

    def _first(self, h: list[Tensor]) -> Tensor:
        """The first layer on the parents' features: one product on them side by side, or, for
        parents of other enumeration dimensions, one a parent, broadcast and summed."""
        if all(t.shape[:-1] == h[0].shape[:-1] for t in h[1:]):
            return self.first(h[0] if len(h) == 1 else torch.cat(h, -1))
        lead = torch.broadcast_shapes(*(t.shape[:-1] for t in h))
        if len(lead) == 1:
            h = [t.expand(*lead, -1) for t in h]  # a global parent's one row, repeated
            return self.first(torch.cat(h, -1))
        blocks = self.first.weight.split([t.shape[-1] for t in h], -1)
        return sum((F.linear(t, w) for t, w in zip(h, blocks, strict=True)), self.first.bias)


class _Chain(nn.Module):
    r"""The networks of sites that repeat along a sequence of observed sites, as the latent
    states of a deep Markov model do: site :math:`t` of the chain has the previous one and the
    observed sites from the :math:`t`-th on as inverse parents. One GRU runs backwards over the
    sequence once a call, its state at :math:`t` summing up the observed sites from there on,
    and one network of that state and the previous site's value (zeros for the first) draws
    every site of the chain: each weight learns from every step (Krishnan et al. 2017).
    """

    def __init__(
        self,
        site: _Site,
        sequence: list[tuple[str, tuple[int | None, int, int | None]]],
        index: list[int] | None,
        widths: tuple[int, int],
        hidden: Sequence[int],
        rank: int = 0,
    ) -> None:
        super().__init__()
        self.sequence, self.widths = sequence, widths
        self.register_buffer("index", torch.tensor(index or []), persistent=False)
        self.rnn = nn.GRU(widths[0], hidden[0], batch_first=True)
        self.head = _SiteNet(site, [], hidden[0] + widths[1], hidden, rank)

    def states(self, values: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """The GRU's states, (rows, steps, hidden): each sums up the sequence from its step."""
        if self.index.numel():  # the rows of `x`: the sequence's features, gathered at once
            row = values[_ROW]
            steps = row.reshape(len(row), -1)[:, self.index].to(dtype)
            steps = steps.reshape(len(row), len(self.sequence), -1)
        else:
            steps = torch.stack([_column(values[n], spec, 0, dtype) for n, spec in self.sequence], 1)
        states, _ = self.rnn(steps.flip(1))
        return states.flip(1)

    def distribution(self, state: Tensor, previous: Tensor | None, spec: tuple) -> dist.Distribution:
        """The distribution of a site of the chain, given its state and the previous value."""
        dtype, span = state.dtype, self.head.site.span
        if previous is None:
            previous = state.new_zeros(len(state), self.widths[1])
        else:
            previous = _column(previous, spec, span, dtype)
        return self.head.of_features([state, previous])


def _rows_at(value: Tensor, at: int, axis: int) -> Tensor:
    """`value`, its rows at dimension `at`, with them moved `axis` dimensions further."""
    return value.movedim(at, at + axis) if axis else value


def _column(
    value: Tensor, spec: tuple[int | None, int, int | None], span: int, dtype: torch.dtype
) -> Tensor:
    """A parent's value as features of shape (*enumerated, rows, features) for a site of `span`
    batch dimensions. `spec`: the dimension of its rows in its batch dimensions (`None`: a
    global value, one row for all), its number of categories (0: a number; else one-hot) and
    its event dimensions (`None`: an observed column, rows first, never enumerated)."""
    axis, categories, event_dim = spec
    if axis is None:
        return value.reshape(1, -1).to(dtype)
    lead = 0
    if event_dim is not None:
        batch = value.dim() - event_dim
        lead = max(batch - span, 0)  # dimensions of enumeration left of the site's plates
        if batch + axis != lead:
            value = value.movedim(batch + axis, lead)
    if categories:
        value = F.one_hot(value.long(), categories)
    return value.reshape(*value.shape[: lead + 1], -1).to(dtype)


def _width(value: Tensor, spec: tuple[int | None, int, int | None]) -> int:
    """The number of features `_column` makes of an unenumerated value."""
    axis, categories, event_dim = spec
    if axis is None:
        return value.numel()
    rows = value.shape[0] if event_dim is None else value.shape[value.dim() - event_dim + axis]
    return value.numel() // rows * max(categories, 1)


def _event_dim(site: _Site) -> int:
    """The event dimensions of the site's unconstrained value, which may differ from the
    site's (a correlation's Cholesky factor is a vector's image)."""
    transform = site.transform
    if transform is None:
        return site.event_dim
    return site.event_dim - transform.codomain.event_dim + transform.domain.event_dim


def _normal(
    loc: Tensor, scale: Tensor, site: _Site, factor: Tensor | None = None
) -> dist.Distribution:
    """A Normal on the site's unconstrained value (with `factor`, of shape `(*, size, rank)`, a
    low-rank multivariate Normal on a vector: covariance `factor factor^T + diag(scale^2)`),
    pushed through its bijection."""
    if factor is None:
        base = dist.Normal(loc, scale).to_event(_event_dim(site))
    else:
        base = dist.LowRankMultivariateNormal(loc, factor, scale.square())
    return base if site.transform is None else dist.TransformedDistribution(base, [site.transform])


class Amortized(Model):
    r"""An amortised guide for any program with latent sites, structured by the faithful inverse
    of its graph.

    Each latent site is drawn, in the order of :func:`faithful_inverse`, from a distribution
    whose parameters are a network of the row's observed values and of the latents its
    inverse parents name (already drawn). The family follows the site's support: a Normal for
    real sites (with `rank`, low-rank multivariate on a vector site), a Normal pushed through
    `torch.distributions.biject_to` of the support for positive, bounded or simplex sites,
    and for Bernoulli and Categorical sites their own
    family with logits from the network, marked for parallel enumeration
    (`infer={"enumerate": "parallel"}`, as Pyro's `config_enumerate` marks a guide), so that
    `TraceEnum_ELBO` (:func:`ppgen.fit_svi`'s choice where `elbo` is left unset) sums over their
    values exactly; a non-enumerating ELBO draws them and estimates their gradient by the score
    function, which :func:`ppgen.fit_svi` says in a warning. Latent sites outside the plate of
    the rows (global ones) get a Normal of their own, with learnt location and scale, as
    `AutoNormal` does. Continuous sites that repeat along a sequence of observed sites (each
    the only latent inverse parent of the next, the observed ones shrinking by one site a step,
    as a deep Markov model's states) share their weights: a GRU run backwards over the sequence
    and one network of its state and the previous site (see :class:`_Chain`). A global site
    that the model reads only at each row's code of an observed categorical column (group
    means `mu[g]`) is read there, in place of the whole value.

    The guide is called as the model is, in either convention of :func:`ppgen.fit_svi`:
    `guide(x, *args, **kwargs)` (the networks then read the whole row of `x`, and of every
    other tensor argument with as many rows), or
    `guide(*args, n=N, data=rows, **kwargs)` with the observed columns of those rows, which
    `fit_svi` and :func:`ppgen.log_prob` hand it. It is built on its first call, as Pyro's
    autoguides are, or at once when given the inputs here. Once built, :func:`ppgen.save`
    writes it with its structure, from which :func:`ppgen.load` rebuilds it without its model;
    an unbuilt guide cannot be saved.

    Arguments:
        model: A Pyro program with at least one latent site.
        args, kwargs: Inputs of a first call, to build the guide now (optional).
        hidden_features: The hidden widths of each site's network.
        rank: For a real vector site of the rows (one event dimension), the rank of a factor
            of its Normal's covariance, `factor factor^T + diag(scale^2)`, from its network as
            its location is (0: a diagonal Normal; Pyro's `LowRankMultivariateNormal`).
        structure: The structure of a built guide, as its `init_arguments` hold it (what
            :func:`ppgen.load` passes), to rebuild it without `model`.

    Example:
        >>> def model(x):
        ...     with pyro.plate("rows", len(x)):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> guide = Amortized(model)
        >>> fit = ppgen.fit_svi(model, guide, torch.randn(64), epochs=2, progress=False)
        >>> guide.encode(torch.zeros(3))["z"].shape
        torch.Size([3])
    """

    def __init__(
        self,
        model: Callable[..., object] | None = None,
        *args: object,
        hidden_features: Sequence[int] = (64,),
        rank: int = 0,
        structure: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__()
        if model is None and structure is None:
            raise ValueError("Amortized needs the model it guides (or a saved guide's structure).")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be a whole number of 0 or more, not {rank!r}.")
        self.rank = rank
        self._program = (model,)  # not a submodule: the model's parameters stay the model's
        self.hidden_features = tuple(hidden_features)
        self.inverse: nx.DiGraph | None = None
        self.sites: list[_Site] = []
        self.columns: dict[str, tuple] = {}  # each input's spec (see _column) and width
        self.plate: str | None = None  # the plate of the rows
        self.nets = nn.ModuleDict()
        self.chains = nn.ModuleDict()
        self.chain_specs: list[dict[str, object]] = []
        self.gathers: dict[str, list[object]] = {}  # inputs read at a row's code (_gathers)
        self.locs = nn.ParameterDict()
        self.scales = nn.ParameterDict()
        self._pending: Mapping[str, Tensor] | None = None
        if structure is not None:
            self._rebuild(structure)
        elif args or kwargs:
            data = kwargs.pop("data", None)
            self._setup(args, kwargs, data)

    @property
    def init_arguments(self) -> tuple[tuple[object, ...], dict[str, object]]:
        """The hidden widths and the structure (sites, families, inverse parents, shapes): what
        :func:`ppgen.load` rebuilds the guide from, without its model.

        Raises:
            ValueError: For a guide not built yet (by a call, or inputs given to the
                constructor), which has no structure to save.
        """
        if self.inverse is None:
            raise ValueError(
                "The Amortized guide is not built yet, so it has nothing to save: fit it (or "
                "call it once, or give Amortized the inputs of a call) before saving it."
            )
        return (), {"hidden_features": self.hidden_features, "rank": self.rank,
                    "structure": self._describe()}  # fmt: skip

    def forward(
        self, *args: object, data: Mapping[str, Tensor] | None = None, **kwargs: object
    ) -> dict[str, Tensor]:
        """Draws the latent sites of the rows given (`x`, or `data` with `n`), as Pyro sites."""
        return self._draw(args, kwargs, data, sample=True)

    def encode(
        self, *args: object, data: Mapping[str, Tensor] | None = None, **kwargs: object
    ) -> dict[str, Tensor]:
        r"""Returns the guide's location of each latent site for the rows given, each site's
        networks reading the locations of its inverse parents: the mean of a Normal site, its
        image under the bijection for a constrained one (the median), the most probable value
        of a discrete one.

        Arguments:
            args, data, kwargs: The rows, as for a call of the guide.

        Returns:
            A dict of site name to tensor (a row's values along the rows' plate dimension).
        """
        with torch.no_grad():  # values, never the guide's own parameters (a global's location)
            drawn = self._draw(args, kwargs, data, sample=False)
            return {name: value.clone() for name, value in drawn.items()}

    def load_state_dict(
        self, state_dict: Mapping[str, Tensor], strict: bool = True, assign: bool = False
    ) -> object:
        """As `nn.Module.load_state_dict`; before the guide is built, the weights are kept
        and loaded when it is (on its first call)."""
        if self.inverse is None and state_dict:
            self._pending = dict(state_dict)
            return nn.modules.module._IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _rows(
        self, args: tuple[object, ...], kwargs: dict[str, object], data: Mapping | None
    ) -> dict:
        """The inputs of the networks: each observed column, or the row of `x` and of every
        other tensor argument with as many rows (`model(x, y)`: `y` is data too), flattened."""
        if data is not None:
            return {name: _numbers(name, v) for name, v in data.items()}
        if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
            raise ValueError(
                "Amortized needs the rows it encodes: call it as guide(x, ...) with a tensor of "
                "rows, or as guide(..., n=N, data=rows) with a dict of observed columns."
            )
        x = args[0]
        named = [*((f"*args[{i}]", a) for i, a in enumerate(args[1:], 1)),
                 *((f"*kwargs[{k}]", v) for k, v in kwargs.items())]  # fmt: skip
        others = {k: v for k, v in named if isinstance(v, Tensor) and v.dim() and len(v) == len(x)}
        return {_ROW: x, **others}

    def _setup(
        self, args: tuple[object, ...], kwargs: dict[str, object], data: Mapping | None
    ) -> None:
        model = self._program[0]
        if model is None:
            raise ValueError("A rebuilt Amortized guide is built already; it has no model to trace.")
        program = model if data is None else poutine.condition(model, data=data)
        with poutine.block():  # a first call inside an ELBO: the model's sites are not ours
            with torch.random.fork_rng(), torch.no_grad():
                trace = poutine.trace(program).get_trace(*args, **kwargs)
            g = graph(program, *args, **kwargs)
        latent = [v for v in g if not g.nodes[v]["observed"]]
        if not latent:
            raise ValueError(
                f"The program {program_name(model)} has no latent site (every site is observed), so it needs "
                "no guide: fit it with ppgen.fit_mle."
            )
        masked = [v for v in latent if trace.nodes[v]["mask"] is not None]
        if masked:
            warnings.warn(
                f"Site {masked[0]!r} is masked in the model (obs_mask or poutine.mask), which "
                "Amortized does not mirror: it draws the site in every row, so the ELBO also "
                "counts the guide's density where the model masks it out.",
                stacklevel=4,
            )
        inputs = self._rows(args, kwargs, data)
        first = next(iter(inputs.values()))
        dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        plate = plate_of_rows(trace, len(first), data)
        inverse = faithful_inverse(g)
        position = {v: i for i, v in enumerate(g)}
        order = nx.lexicographical_topological_sort(inverse, key=position.__getitem__)
        x = list(inputs) if data is None else None
        sites = [_site(trace.nodes[v], plate, inverse, data, x) for v in order if v in latent]
        joint = next((s.name for s in sites if s.kind != "normal" and s.event_dim), None)
        if joint is not None:
            warnings.warn(
                f"Site {joint!r} is a discrete latent with event dimensions, which Pyro cannot "
                "enumerate (it would take the product of their values): the guide draws it, "
                "its gradient estimated by the score function (unbiased, noisier).",
                stacklevel=4,
            )
        columns = {}
        for name, value in inputs.items():
            spec = (0, _categories(trace, name), None)
            columns[name] = (*spec, _width(value, spec))
        for site in sites:
            columns[site.name] = (*site.spec, _width(trace.nodes[site.name]["value"], site.spec))
        views = _views(trace, first) if data is None else {}
        chains = _chains(sites, inverse, views, columns) if self.hidden_features else []
        chained = {m for chain in chains for m in chain["members"]}
        indexes = functools.partial(_indexes, program, args, kwargs, trace, plate)
        gathers = _gathers([s for s in sites if s.name not in chained], columns, trace, indexes)
        self._make(sites, columns, inverse, plate, chains, gathers)
        self.to(device=first.device, dtype=dtype)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            super().load_state_dict(pending, strict=True)

    def _make(
        self,
        sites: list[_Site],
        columns: dict[str, tuple],
        inverse: nx.DiGraph,
        plate: str | None,
        chains: list[dict[str, object]],
        gathers: dict[str, list[object]],
    ) -> None:
        """Makes each site's parameters: a location and scale, its network, or its chain's."""
        for j, chain in enumerate(chains):
            members = [next(s for s in sites if s.name == m) for m in chain["members"]]
            for step, site in enumerate(members):
                site.chain, site.step = j, step
            sequence = [(n, columns[n][:3] if n in columns else None) for n in chain["sequence"]]
            self.chains[str(j)] = _Chain(
                members[0], sequence, chain["index"], tuple(chain["widths"]), self.hidden_features,
                self.rank,
            )  # fmt: skip
        for site in sites:
            key = _key(site.name)
            if site.chain is not None:
                continue
            if site.axis is None:
                self.locs[key] = nn.Parameter(torch.zeros(site.shape))
                self.scales[key] = nn.Parameter(torch.full(site.shape, math.log(math.expm1(0.1))))
                continue
            if all(columns[name][0] is None for name in site.inputs):
                site.inputs.append(_ONES)  # no parent that varies by row: a network of a constant
                columns[_ONES] = (0, 0, None, 1)
            spec = [columns[name][:3] for name in site.inputs]
            features = sum(columns[name][3] for name in site.inputs)
            self.nets[key] = _SiteNet(site, spec, features, self.hidden_features, self.rank)
        self.sites, self.columns, self.inverse, self.plate = sites, columns, inverse, plate
        self.chain_specs, self.gathers = chains, gathers

    def _describe(self) -> dict[str, object]:
        """The structure as JSON values (see :meth:`_rebuild`)."""
        sites = [
            {"name": s.name, "kind": s.kind, "frames": [list(f) for f in s.frames],
             "event_dim": s.event_dim, "shape": list(s.shape), "axis": s.axis,
             "support": _encode_constraint(s.support), "cardinality": s.cardinality,
             "inputs": list(s.inputs), "span": s.span}
            for s in self.sites
        ]  # fmt: skip
        nodes = [[v, bool(self.inverse.nodes[v].get("observed", False))] for v in self.inverse]
        return {
            "plate": self.plate,
            "sites": sites,
            "columns": {name: list(spec) for name, spec in self.columns.items()},
            "inverse": {"nodes": nodes, "edges": [list(e) for e in self.inverse.edges]},
            "chains": self.chain_specs,
            "gathers": self.gathers,
        }

    def _rebuild(self, structure: Mapping[str, object]) -> None:
        """Builds the guide from the structure :meth:`_describe` wrote."""
        sites = [
            _Site(
                s["name"], s["kind"], [tuple(f) for f in s["frames"]], s["event_dim"],
                tuple(s["shape"]), s["axis"], _decode_constraint(s["support"]), s["cardinality"],
                list(s["inputs"]), s["span"],
            )
            for s in structure["sites"]
        ]  # fmt: skip
        inverse = nx.DiGraph()
        for name, observed in structure["inverse"]["nodes"]:
            inverse.add_node(name, observed=observed)
        inverse.add_edges_from(map(tuple, structure["inverse"]["edges"]))
        columns = {name: tuple(spec) for name, spec in structure["columns"].items()}
        gathers = dict(structure.get("gathers", {}))
        self._make(sites, columns, inverse, structure["plate"], list(structure["chains"]), gathers)

    def _draw(
        self,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        data: Mapping[str, Tensor] | None,
        *,
        sample: bool,
    ) -> dict[str, Tensor]:
        inputs = self._rows(args, kwargs, data)
        if self.inverse is None:
            self._setup(args, kwargs, data)
        read = (n for n, c in self.columns.items() if c[2] is None and n not in self.gathers)
        missing = next((n for n in read if n != _ONES and n not in inputs), None)
        if missing is not None:
            raise ValueError(
                f"The guide reads the input {missing!r}, which this call does not give (or not "
                "with as many rows as the others): call it with the inputs it was built on."
            )
        rows = len(next(iter(inputs.values())))
        nets, locs, scales = self.nets, self.locs, self.scales  # in Pyro's param store, as
        # a PyroModule's attributes are, so that Pyro's own SVI trains them too
        values = dict(inputs)
        if any(_ONES in site.inputs for site in self.sites):
            values[_ONES] = next(iter(self.parameters())).new_ones(rows, 1)
        frames = {f[0]: f for site in self.sites for f in site.frames}
        plates = {
            name: pyro.plate(name, rows if name == self.plate else size, dim=dim)
            for name, size, dim in (frames.values() if sample else ())
        }
        drawn, states, opened = {}, {}, None
        with ExitStack() as stack:
            for site in self.sites:
                key = _key(site.name)
                if site.chain is not None:
                    d = self._link(site, values, states)
                elif site.axis is None:
                    d = _normal(locs[key], F.softplus(scales[key]), site)
                else:
                    for name in site.inputs:
                        if name in self.gathers and name not in values:
                            values[name] = _gathered(values, *self.gathers[name])
                    d = nets[key](*(values[name] for name in site.inputs))
                if not sample:
                    values[site.name] = drawn[site.name] = _location(d, site)
                    continue
                if site.frames != opened:  # its plates, kept open for the next sites in them
                    stack.close()
                    for name, _, _ in site.frames:
                        stack.enter_context(plates[name])
                    opened = site.frames
                discrete = site.kind != "normal" and not site.event_dim  # as config_enumerate
                infer = {"enumerate": "parallel"} if discrete else {}
                values[site.name] = drawn[site.name] = pyro.sample(site.name, d, infer=infer)
        return drawn

    def _link(self, site: _Site, values: dict[str, Tensor], states: dict) -> dist.Distribution:
        """The distribution of a site of a chain; its first site runs the chain's GRU."""
        chain = self.chains[str(site.chain)]
        if site.chain not in states:
            states[site.chain] = chain.states(values, next(chain.parameters()).dtype)
        previous = self.chain_specs[site.chain]["members"][site.step - 1] if site.step else None
        spec = self.columns[previous][:3] if previous else None
        value = values[previous] if previous else None
        return chain.distribution(states[site.chain][:, site.step], value, spec)


def _numbers(name: str, value: object) -> Tensor:
    """A column of the rows as a tensor, refusing labels (a pandas categorical or text column,
    text in numpy), whose codes only a fit's coding knows: read as numbers they are wrong."""
    pd = sys.modules.get("pandas")  # data hold pandas objects only where pandas is imported
    kind = None if isinstance(value, Tensor) else getattr(value, "dtype", None)
    if kind is not None and pd is not None and (
        isinstance(kind, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(kind)
        or pd.api.types.is_string_dtype(kind)
    ):
        raise ValueError(
            f"Column {name!r} holds labels (a pandas categorical or text column), which the "
            "guide does not code: give it their codes in the fit, as ppgen.fit_svi and "
            f"ppgen.log_prob do (by ppgen.model.coding(model)[{name!r}])."
        )
    return torch.as_tensor(value)


def _views(trace: poutine.Trace, x: Tensor) -> dict[str, list[int]]:
    """The observed sites whose values are the rows of `x` read in place, rows first, each
    with the positions its row's entries have in a flattened row of `x`."""
    if x.dim() < 2:
        return {}
    column = {p: i for i, p in enumerate(_first_row(x))}
    views = {}
    for name, site in trace.nodes.items():
        v = site["value"] if is_variable(site) and site["is_observed"] else None
        if (
            isinstance(v, Tensor)
            and v.dim() > 0
            and len(v) == len(x)
            and v.stride(0) == x.stride(0)
            and v.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        ):
            where = _first_row(v)
            if all(p in column for p in where):
                views[name] = [column[p] for p in where]
    return views


def _first_row(t: Tensor) -> list[int]:
    """The places in its storage of the entries of the first row of `t`, in order."""
    offsets = torch.zeros((), dtype=torch.long)
    for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True):
        offsets = offsets[..., None] + torch.arange(size) * stride
    return (offsets.reshape(-1) + t.storage_offset()).tolist()


def _chains(
    sites: list[_Site], inverse: nx.DiGraph, views: dict[str, list[int]], columns: dict
) -> list[dict[str, object]]:
    """The chains of sites that repeat (see :class:`_Chain`): three or more continuous sites of
    the rows of one shape, support and plates, each the only latent inverse parent of the next
    (none of the first), whose observed inverse parents shrink by one site a step, all of one
    width, which the guide can read (columns of the data, or views of `x` in `views`)."""
    groups: dict[tuple, list[_Site]] = {}
    for site in sites:
        if site.kind == "normal" and site.axis is not None:
            frames = tuple((name, dim) for name, _, dim in site.frames)
            key = (site.shape, site.event_dim, site.axis, site.span, repr(site.support), frames)
            groups.setdefault(key, []).append(site)
    chains = []
    for members in groups.values():
        parents = [set(inverse.predecessors(m.name)) for m in members]
        observed = [{p for p in ps if inverse.nodes[p].get("observed")} for ps in parents]
        latent = [ps - obs for ps, obs in zip(parents, observed, strict=True)]
        readable = set(views) if views else {n for n in columns if columns[n][2] is None}
        if (
            len(members) < 3
            or any(lat != ({members[i - 1].name} if i else set()) for i, lat in enumerate(latent))
            or not all(obs <= readable for obs in observed)
        ):
            continue
        sequence = []
        for here, after in itertools.pairwise([*observed, set()]):
            if not after < here or len(here - after) != 1:
                break
            sequence.extend(here - after)
        width = {len(views[n]) if views else columns[n][3] for n in sequence}
        if len(sequence) == len(members) and len(width) == 1:
            index = [i for n in sequence for i in views[n]] if views else None
            previous = columns[members[0].name][3]
            chains.append({"members": [m.name for m in members], "sequence": sequence,
                           "index": index, "widths": [width.pop(), previous]})  # fmt: skip
    return chains


def _gathers(
    sites: list[_Site],
    columns: dict[str, tuple],
    trace: poutine.Trace,
    indexes: Callable[[str, str, int], bool],
) -> dict[str, list[object]]:
    """Inputs that read a global site at each row's code, where the model indexes group-level
    latents by a row's observed group (`mu[g]`): for each site of the rows, each of its global
    inverse parents with one dimension of the size of an observed categorical column's
    categories (also a parent) that the model reads only at the row's code (`indexes`) is
    replaced by its entries at that code, in the site's inputs and in `columns`. Each row's
    posterior depends on no other entry, whose noise the network would otherwise have to learn
    to ignore. Returns each gathered input's global site, code column and dimension."""
    gathers: dict[str, list[object]] = {}
    for site in sites:
        if site.axis is None:
            continue
        codes = [n for n in site.inputs if columns[n][1] and columns[n][2] is None]
        for source in [n for n in site.inputs if columns[n][0] is None]:
            value = trace.nodes[source]["value"]
            for code in codes:
                dims = [d for d, size in enumerate(value.shape) if size == columns[code][1]]
                if len(dims) != 1 or not indexes(source, code, dims[0]):
                    continue
                name = f"{source}[{code}]"
                columns[name] = (0, 0, None, value.numel() // value.shape[dims[0]])
                gathers[name] = [source, code, dims[0]]
                site.inputs[site.inputs.index(source)] = name
                break
    return gathers


def _indexes(
    program: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    trace: poutine.Trace,
    plate: str | None,
    source: str,
    code: str,
    dim: int,
) -> bool:
    """Whether the terms of each row (the sites in the plate of the rows) read the global site
    `source` only at the row's code of column `code` along `dim`: by the gradient of the rows
    of each code present, which must be zero at every other code."""
    value = trace.nodes[source]["value"].detach().clone().requires_grad_(True)
    values = {n: site["value"] for n, site in trace.nodes.items() if is_variable(site)}
    values[source] = value
    with poutine.block(), torch.random.fork_rng(), torch.enable_grad():
        rerun = poutine.trace(poutine.condition(program, data=values)).get_trace(*args, **kwargs)
        codes = values[code].reshape(-1).long()
        total = 0.0
        for site in rerun.nodes.values():
            frame = next((f for f in site.get("cond_indep_stack", ()) if f.name == plate), None)
            if is_variable(site) and frame is not None:
                log_p = site["fn"].log_prob(site["value"])
                if log_p.dim() >= -frame.dim and log_p.shape[frame.dim] == len(codes):
                    total = total + log_p.movedim(frame.dim, 0).reshape(len(codes), -1).sum(-1)
        if not isinstance(total, Tensor) or not total.requires_grad:
            return False
        for k in codes.unique().tolist():
            (grad,) = torch.autograd.grad(total[codes == k].sum(), value, retain_graph=True,
                                          allow_unused=True)  # fmt: skip
            if grad is None:  # these rows do not read it at all
                continue
            grad = grad.movedim(dim, 0).reshape(value.shape[dim], -1)
            if torch.cat([grad[:k], grad[k + 1 :]]).abs().max() > 0:
                return False
    return True


def _gathered(values: Mapping[str, Tensor], source: str, code: str, dim: int) -> Tensor:
    """The global value `source` at each row's code in column `code`, (rows, features)."""
    codes = values[code].long()
    return values[source].movedim(dim, 0)[codes].reshape(len(codes), -1)


def _encode_constraint(support: constraints.Constraint | None) -> object:
    """A support as JSON: its class in torch's or Pyro's constraints, and its arguments."""
    if support is None:
        return None
    cls = type(support)
    if _constraint_class(cls.__name__) is not cls:
        raise ValueError(f"Amortized cannot describe the support {support} in a file.")
    arguments = {}
    for name, value in vars(support).items():
        if isinstance(value, constraints.Constraint):
            value = _encode_constraint(value)
        elif isinstance(value, Tensor):
            value = {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
        arguments[name] = value
    return {"class": cls.__name__, "arguments": arguments}


def _constraint_class(name: str) -> type | None:
    """The class of that name in torch's or Pyro's constraints, found statically, or `None`."""
    for module in (torch.distributions.constraints, constraints):
        cls = inspect.getattr_static(module, name, None)
        if isinstance(cls, type) and issubclass(cls, constraints.Constraint):
            return cls
    return None


def _decode_constraint(value: object) -> constraints.Constraint | None:
    """The support :func:`_encode_constraint` described; only constraints' classes are built."""
    if value is None:
        return None
    cls = _constraint_class(str(value["class"]))
    if cls is None:
        raise ValueError(f"{value['class']!r} is not a constraint of torch's or Pyro's.")
    arguments = {}
    for name, argument in dict(value["arguments"]).items():
        if isinstance(argument, dict) and "tensor" in argument:
            argument = torch.tensor(argument["tensor"], dtype=getattr(torch, argument["dtype"]))
        elif isinstance(argument, dict):
            argument = _decode_constraint(argument)
        arguments[name] = argument
    return cls(**arguments)


def _key(name: str) -> str:
    """A site name as a module key (which cannot hold a dot)."""
    return name.replace(".", "\N{MIDDLE DOT}")


def _unwrapped(fn: dist.Distribution) -> dist.Distribution:
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _site(
    site: dict, plate: str | None, inverse: nx.DiGraph, data: Mapping | None, x: list[str] | None
) -> _Site:
    """How to draw a latent site of the model's trace, or a `ValueError` naming it; `x`: the
    inputs of the `model(x)` convention, which every site reads."""
    name, fn, value = site["name"], site["fn"], site["value"]
    frames = [(f.name, f.size, f.dim) for f in site["cond_indep_stack"]]
    event_dim = len(fn.event_shape)
    rows = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
    axis = None if rows is None else value.dim() - event_dim + rows.dim
    base = _unwrapped(fn)
    kind, support, cardinality, unconstrained = "normal", None, 0, value
    if fn.support.is_discrete:
        discrete = base.support
        if discrete is constraints.boolean:
            kind = "bernoulli"
        elif cardinality := _interval(discrete):
            kind = "categorical"
        if kind == "normal" or axis is None:
            where = "outside the plate of the rows" if kind != "normal" else f"{discrete}-valued"
            if kind == "normal" and isinstance(discrete, constraints.integer_interval):
                where = "with a bound that varies by row"
            raise ValueError(
                f"Site {name!r} is a {type(base).__name__} latent {where}, which Amortized cannot "
                "parameterise: it draws discrete sites only inside the rows' plate, and only "
                "Bernoulli and Categorical ones; write a guide for it."
            )
    else:
        try:
            transform = biject_to(fn.support)
        except NotImplementedError:
            raise ValueError(
                f"Site {name!r} has support {fn.support}, which no bijection from the real "
                "numbers reaches, so Amortized cannot parameterise it; write a guide for it."
            ) from None
        _check_bounds(name, fn.support, value.dim(), axis)
        unconstrained = transform.inv(value)
        support = None if _is_real(fn.support) else fn.support
    shape = unconstrained.shape if axis is None else unconstrained.movedim(axis, 0).shape[1:]
    parents = list(inverse.predecessors(name))
    observed = [p for p in parents if inverse.nodes[p]["observed"]]
    columns = list(x) if data is None else [p for p in observed if p in data]
    latent = [p for p in parents if p not in observed]
    return _Site(
        name, kind, frames, event_dim, tuple(shape), axis, support, cardinality,
        inputs=columns + latent, span=value.dim() - event_dim,
    )  # fmt: skip


def _check_bounds(name: str, support: object, dim: int, axis: int | None) -> None:
    """Raises where a site of the rows has support bounds that vary along its rows' dimension
    `axis` (of a value of `dim` dimensions): the guide's bijection is fixed when it is built."""
    if axis is None:
        return
    for bound in vars(support).values():
        if isinstance(bound, constraints.Constraint):
            _check_bounds(name, bound, dim, axis)
        elif isinstance(bound, Tensor) and bound.dim() >= dim - axis:
            if bound.shape[axis - dim] == 1:  # one bound, broadcast over the rows
                continue
            raise ValueError(
                f"Site {name!r} has a support whose bounds vary by row, which Amortized cannot "
                "follow (its bijection is fixed when it is built); write a guide for it."
            )


def _categories(trace: poutine.Trace, name: str) -> int:
    """The number of categories of an observed site of codes 0..k-1 (one-hot inputs), else 0."""
    site = trace.nodes.get(name)
    if site is None or not site["fn"].support.is_discrete:
        return 0
    return _interval(_unwrapped(site["fn"]).support)


def _interval(support: constraints.Constraint) -> int:
    """The number of values of an integer interval from 0 whose upper bound is one for all rows
    (a Categorical's, a Binomial's of one total count, where it is a tensor), else 0."""
    if not isinstance(support, constraints.integer_interval):
        return 0
    bounds = (support.lower_bound, support.upper_bound)
    lower, upper = (torch.as_tensor(b).reshape(-1) for b in bounds)
    if not len(upper) or (lower != 0).any() or (upper != upper[0]).any():
        return 0
    return int(upper[0]) + 1


def _is_real(support: constraints.Constraint) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return type(support) is type(constraints.real)


def _location(d: dist.Distribution, site: _Site) -> Tensor:
    """The location of a guide site's distribution (see :meth:`Amortized.encode`)."""
    base = _unwrapped(d)
    if site.kind == "bernoulli":
        return (base.logits > 0).to(base.logits.dtype)
    if site.kind == "categorical":
        return base.logits.argmax(-1)
    return base.loc if site.transform is None else site.transform(base.loc)
