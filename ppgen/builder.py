r"""Builds a ppgen program from a graph: one conditional per node, sampled in topological order."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppgen.graph import check_dag, digraph
from ppgen.nn import Conditional, LinearGaussian, Model, Node, Root, Tabular, check_table

__all__ = ["DAG", "KINDS", "dag"]

KINDS = ("normal", "bernoulli", "categorical", "tabular", "linear_gaussian")
_DISCRETE = ("bernoulli", "categorical", "tabular")
_MULTI = ("categorical", "tabular")
_PLATE = "data"  # the plate of the rows
_FAMILIES = {"normal": dist.Normal, "bernoulli": dist.Bernoulli, "categorical": dist.Categorical}


class DAG(Model):
    r"""The program built by :func:`dag`: every node sampled from its conditional, in order.

    Arguments:
        edges: The edges `(parent, child)`, in the order they were declared.
        nodes: Every node, in topological order.
        kinds: The kind of each node (see :data:`KINDS`).
        cardinalities: The number of values of each discrete node.
        hidden: The hidden widths of the neural conditionals.
    """

    def __init__(
        self,
        edges: Sequence[tuple[str, str]],
        nodes: Sequence[str],
        kinds: Mapping[str, str],
        cardinalities: Mapping[str, int],
        hidden: Sequence[int],
    ) -> None:
        super().__init__()
        self.edges, self.nodes = [tuple(e) for e in edges], list(nodes)
        self.kinds, self.cardinalities = dict(kinds), dict(cardinalities)
        self.hidden = tuple(hidden)
        self.parents = {v: [u for u, w in self.edges if w == v] for v in self.nodes}
        self.conditionals = nn.ModuleList(self._conditional(v) for v in self.nodes)

    def _conditional(self, node: str) -> Node:
        kind, parents = self.kinds[node], self.parents[node]
        if kind == "tabular":
            return Tabular(self.cardinalities[node], [self.cardinalities[p] for p in parents])
        # Categorical parents are one-hot encoded; Bernoulli ones are already 0/1 features.
        cards = [self.cardinalities[p] if self.kinds[p] in _MULTI else None for p in parents]
        widths = [1 if k is None else k for k in cards]
        if kind == "linear_gaussian" and parents:
            return LinearGaussian(sum(widths), parent_cardinalities=cards)
        family = _FAMILIES["normal" if kind == "linear_gaussian" else kind]
        k = self.cardinalities.get(node) if kind == "categorical" else None
        if not parents:
            return Root(family, cardinality=k)
        return Conditional(
            family, sum(widths), hidden=self.hidden, cardinality=k, parent_cardinalities=cards
        )

    def forward(self, n: int = 1) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        with pyro.plate(_PLATE, n):
            for node, conditional in zip(self.nodes, self.conditionals, strict=True):
                parents = (values[p] for p in self.parents[node])
                values[node] = pyro.sample(node, conditional(*parents))
        return values


def dag(
    edges: Iterable[tuple[object, object]] | nx.DiGraph,
    *,
    kinds: Mapping[object, str] | None = None,
    cardinalities: Mapping[object, int] | None = None,
    hidden: Sequence[int] = (64, 64),
    default: str = "normal",
) -> DAG:
    r"""Builds a ppgen model from a directed acyclic graph.

    Each node becomes a sample site named `str(node)`; its conditional is chosen by its kind:
    `"normal"`, `"bernoulli"` and `"categorical"` are neural (:class:`~ppgen.nn.Conditional`,
    or :class:`~ppgen.nn.Root` without parents), `"tabular"` is a conditional probability table
    over discrete parents and `"linear_gaussian"` a Normal linear in its parents (a root Normal
    without them). Discrete
    parents are one-hot encoded for the neural and linear kinds.

    Arguments:
        edges: An edge list `[(parent, child), ...]` or a `networkx.DiGraph` (isolated nodes kept).
        kinds: The kind of each node; nodes not named get `default`.
        cardinalities: The number of values of each `"categorical"` or `"tabular"` node.
        hidden: The hidden widths of the neural conditionals.
        default: The kind of nodes not named in `kinds`.

    Returns:
        A :class:`DAG` model whose `forward(n)` samples `n` rows in the plate `"data"`.

    Example:
        >>> model = dag([("t0", "t1"), ("t1", "t2")])
        >>> ppgen.factorization(model)
        'p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)'
    """
    g = check_dag(digraph(edges))
    if not isinstance(hidden, Iterable) or isinstance(hidden, str):  # (its entries: mlp's)
        raise ValueError(f"hidden must be a sequence of layer widths, e.g. (64,), not {hidden}.")
    kinds = {**dict.fromkeys(g.nodes, default), **(kinds or {})}
    cardinalities = dict(cardinalities or {})
    for name, mapping in (("kinds", kinds), ("cardinalities", cardinalities)):
        unknown = [v for v in mapping if v not in g]
        if unknown:
            raise ValueError(f"{name} names node {unknown[0]!r}, which is not in the graph.")
    for v, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"Node {v!r} has unknown kind {kind!r}; choose one of {KINDS}.")
        if kind in _DISCRETE and kind != "bernoulli" and v not in cardinalities:
            raise ValueError(f"Node {v!r} is {kind} but has no entry in cardinalities.")
        if kind not in _DISCRETE and v in cardinalities:
            raise ValueError(f"Node {v!r} is {kind}, so it takes no cardinality.")
        if v in cardinalities:
            k = cardinalities[v]
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
                raise ValueError(
                    f"Node {v!r} has cardinality {k!r}; it must be a whole number >= 2."
                )
            if kind == "bernoulli" and k != 2:
                raise ValueError(f"Node {v!r} is bernoulli, so its cardinality is 2, not {k}.")
            cardinalities[v] = int(k)
        if kind == "bernoulli":
            cardinalities[v] = 2
        if kind == "tabular":
            for p in g.predecessors(v):
                if kinds[p] not in _DISCRETE:
                    raise ValueError(
                        f"Node {v!r} is tabular but its parent {p!r} is {kinds[p]}; "
                        "a table needs discrete parents."
                    )
    _check_tables(g, kinds, cardinalities)
    names = _site_names(g)
    position = {v: i for i, v in enumerate(g.nodes)}
    order = [names[v] for v in nx.lexicographical_topological_sort(g, key=position.__getitem__)]
    return DAG(
        edges=[(names[u], names[v]) for u, v in g.edges],
        nodes=order,
        kinds={names[v]: k for v, k in kinds.items()},
        cardinalities={names[v]: k for v, k in cardinalities.items()},
        hidden=hidden,
    )


def _site_names(g: nx.DiGraph) -> dict[object, str]:
    """Each node's site name, its text, where those are unique and none is the plate's."""
    names = {v: str(v) for v in g}
    if len(set(names.values())) < len(names):
        raise ValueError("Two nodes have the same name as text; site names must be unique.")
    if _PLATE in names.values():
        raise ValueError(f"Node '{_PLATE}' has the name of the plate of the rows; rename it.")
    return names


def _check_tables(g: nx.DiGraph, kinds: Mapping[object, str], cards: Mapping[object, int]) -> None:
    """Refuses a tabular node whose table is too large, before anything is allocated."""
    for v, kind in kinds.items():
        if kind == "tabular":
            check_table(f"Node {v!r}", cards[v], [cards[p] for p in g.predecessors(v)])
