r"""Conditionals of the same shape evaluated together: one batched matrix product a layer.

In a fully observed graph every parent is observed, so the networks of all nodes whose
:class:`~ppgen.nn.Conditional`\ s have the same shape (layer widths, activation, head, parent
cardinalities; one number a row for the node and each parent) can run as one: their weights are
stacked at each call (`torch.stack`, differentiable, so that each node keeps its own parameters,
its own early stopping and its own checkpoints), their parents gathered by one index from a stack
of the batch's columns, and their heads and log-densities computed over (node, row) at once.
A node that fits no group keeps its own call. A large group runs in parts whose activations fit
a core's cache (:data:`CACHED`): elementwise work on larger tensors waits on memory.

The same groups draw rows ancestrally, one topological layer at a time (:func:`sample`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from numbers import Number

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.nn import Conditional, Node

__all__ = ["ConditionalGroup", "Stacked", "groups", "hooked", "sample"]

Factors = Mapping[str, tuple[Node, list[str]]]

CACHED = 1 << 18
"""The numbers a part of a group holds in its widest layer (1 MiB in float32, about a core's L2
cache): at 1,024 rows, 16 nodes of 16 hidden units or 4 of 64. Measured on one thread, a step of
100 nodes with hidden (64, 64) took 0.87x the time of one call a node with parts of this size,
and 1.2x in one part (see docs/scaling.md)."""


def hooked(module: nn.Module) -> bool:
    """Whether `module` or one inside it has forward hooks (a user's, `spectral_norm`'s), which
    a call runs and a group's or a layer's evaluation would not.

    Example:
        >>> hooked(nn.utils.spectral_norm(nn.Linear(2, 2))), hooked(nn.Linear(2, 2))
        (True, False)
    """
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _shape(module: Node, parents: int) -> tuple | None:
    """What a conditional must share with others to be evaluated with them (`None`: it runs
    alone): its class, layers, activation, head, parent cardinalities, dtype and device. Its
    network must alternate linear layers and one elementwise activation of torch's (whose repr
    shows its settings, where a user's may hide them; not `Softmax` along a dimension, nor a
    normalisation), ending with a linear layer, and no hooks."""
    if type(module) is not Conditional or not parents or hooked(module):
        return None
    head, net = module.head, module.net
    linears, activations = list(net)[0::2], list(net)[1::2]
    if (
        type(net) is not nn.Sequential
        or not len(net) % 2
        or head.event_shape
        or not all(type(m) is nn.Linear and m.bias is not None for m in linears)
        or any(list(m.parameters(recurse=True)) for m in activations)
        or not all(type(m).__module__ == nn.Tanh.__module__ for m in activations)
        or any(hasattr(m, "dim") for m in activations)  # Softmax(dim=1): rows in a group
        or len({(type(m), repr(m)) for m in activations}) > 1
        or not all(isinstance(v, Number) for v in head.fixed.values())
    ):
        return None
    cards = tuple(module.parent_cardinalities or [None] * parents)
    if len(cards) != parents or sum(k or 1 for k in cards) != linears[0].in_features:
        return None
    weight = linears[0].weight
    return (
        tuple(m.weight.shape for m in linears),
        None if not activations else (type(activations[0]), repr(activations[0])),
        head.family, head.cardinality, head.reference, tuple(sorted(head.fixed.items())),
        cards, weight.dtype, weight.device,
    )  # fmt: skip


def groups(factors: Factors, scalar: Mapping[str, bool]) -> list[list[str]]:
    """The sites whose conditionals can be evaluated together, two or more a group.

    Arguments:
        factors: Each site's module and parents' names.
        scalar: Whether each site's value is one number a row, shape :math:`(N,)`.

    Example:
        >>> model = ppgen.dag([("a", "b"), ("a", "c"), ("b", "d")], hidden=(4,))
        >>> factors = dict(zip(model.nodes, zip(model.conditionals, model.parents.values())))
        >>> groups(factors, dict.fromkeys(model.nodes, True))
        [['b', 'c', 'd']]
    """
    keyed: dict[tuple, list[str]] = {}
    for name, (module, parents) in factors.items():
        if scalar[name] and all(scalar[p] for p in parents):
            key = _shape(module, len(parents))
            if key is not None:
                keyed.setdefault(key, []).append(name)
    return [names for names in keyed.values() if len(names) > 1]


class ConditionalGroup:
    r"""Same-shaped conditionals (see :func:`groups`), evaluated as one.

    Arguments:
        modules: The group's :class:`~ppgen.nn.Conditional`\ s.
        parents: Each one's parents, as positions in the columns it will be given.

    Example:
        >>> nets = [Conditional(dist.Normal, 1, hidden=(4,)) for _ in range(3)]
        >>> group = ConditionalGroup(nets, [[0], [1], [2]])
        >>> group.distribution(torch.randn(3, 5)).batch_shape
        torch.Size([3, 5])
    """

    def __init__(self, modules: Sequence[Conditional], parents: Sequence[Sequence[int]]) -> None:
        self.modules = list(modules)
        self.index = torch.tensor(parents, dtype=torch.long)  # (G, P) positions of the columns
        first = self.modules[0]
        self.head = first.head
        self.activation = first.net[1] if len(first.net) > 1 else None
        self.cards = list(first.parent_cardinalities or [None] * self.index.shape[1])
        self.layers = [[m.net[i] for m in self.modules] for i in range(0, len(first.net), 2)]
        self.width = max(layer[0].out_features for layer in self.layers)

    def _features(self, parents: Tensor, dtype: torch.dtype) -> Tensor:
        """The networks' inputs, :math:`(G, N, F)`, from the parents' values, :math:`(G, P, N)`
        (one-hot where a parent has a cardinality, as :func:`ppgen.nn.features`)."""
        if all(k is None for k in self.cards):
            return parents.transpose(1, 2).to(dtype)
        columns = [
            parents[:, j, :, None] if k is None else F.one_hot(parents[:, j].long(), k)
            for j, k in enumerate(self.cards)
        ]
        return torch.cat([c.to(dtype) for c in columns], dim=-1)

    def _eta(self, parents: Tensor, part: slice) -> Tensor:
        """The outputs of the networks in `part` on their parents' values, :math:`(G, P, N)`."""
        layers = [layer[part] for layer in self.layers]
        h = self._features(parents, layers[0][0].weight.dtype)
        for i, linears in enumerate(layers):
            if i:
                h = self.activation(h)
            weights = torch.stack([m.weight for m in linears])
            biases = torch.stack([m.bias for m in linears])
            h = torch.baddbmm(biases.unsqueeze(1), h, weights.transpose(1, 2))
        return h

    def eta(self, columns: Tensor) -> Tensor:
        r"""The heads' inputs :math:`\eta`, :math:`(G, N, S)`, from the columns, :math:`(C, N)`:
        each layer one batched product of the weights, stacked at this call, for each part of
        the group whose widest activations hold about :data:`CACHED` numbers (elementwise work
        on larger tensors waits on memory rather than arithmetic)."""
        if self.index.device != columns.device:  # moved once, with the model
            self.index = self.index.to(columns.device)
        parents = columns[self.index]
        size = max(1, CACHED // (columns.shape[1] * self.width))
        if size >= len(self.modules):
            return self._eta(parents, slice(None))
        parts = [slice(i, i + size) for i in range(0, len(self.modules), size)]
        return torch.cat([self._eta(parents[part], part) for part in parts])

    def distribution(self, columns: Tensor) -> dist.Distribution:
        """The conditionals at the parents' values in `columns`, batched over (node, row)."""
        return self.head(self.eta(columns))


class Stacked:
    r"""The log-densities of some sites, those of each group computed together (see
    :func:`groups`) from one stack of the batch's columns.

    Arguments:
        factors: Each site's module and parents' names.
        groups: The groups of :func:`groups`.
        sites: The sites to evaluate; those of a group without another of its own in `sites`
            run alone (:attr:`singles`).

    Example:
        >>> model = ppgen.dag([("a", "b"), ("a", "c")], hidden=(4,))
        >>> factors = dict(zip(model.nodes, zip(model.conditionals, model.parents.values())))
        >>> stacked = Stacked(factors, [["b", "c"]], ["a", "b", "c"])
        >>> rows = {"a": torch.zeros(5), "b": torch.zeros(5), "c": torch.ones(5)}
        >>> stacked.names, stacked.singles, [t.shape for t in stacked(rows)]
        (['b', 'c'], ['a'], [torch.Size([2, 5])])
    """

    def __init__(
        self, factors: Factors, groups: Sequence[Sequence[str]], sites: Sequence[str]
    ) -> None:
        wanted = set(sites)
        parts = [[n for n in names if n in wanted] for names in groups]
        self.parts = [names for names in parts if len(names) > 1]
        self.names = [n for names in self.parts for n in names]  # the rows of the result
        self.grouped = grouped = set(self.names)
        self.singles = [s for s in sites if s not in grouped]
        parents = {p for n in self.names for p in factors[n][1]}
        self.inputs = [c for c in factors if c in parents]  # the parents' columns, then the sites'
        self.columns = self.inputs + [n for n in factors if n in grouped and n not in parents]
        position = {c: i for i, c in enumerate(self.columns)}
        self.values = torch.tensor([position[n] for n in self.names], dtype=torch.long)
        self.groups = [
            ConditionalGroup(
                [factors[n][0] for n in names], [[position[p] for p in factors[n][1]] for n in names]
            )
            for names in self.parts
        ]
        dtypes = [g.layers[0][0].weight.dtype for g in self.groups]
        self.dtype = functools.reduce(torch.promote_types, dtypes) if dtypes else None

    def _stack(self, values: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
        """The columns `names` of `values`, :math:`(C, N)`, in the networks' (widest) dtype:
        codes and 0/1 values are exact in it."""
        columns = [values[c] for c in names]
        if any(c.dtype != self.dtype for c in columns):
            columns = [c.to(self.dtype) for c in columns]
        return torch.stack(columns)

    def __call__(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        r"""The grouped sites' log-densities per row, one :math:`(G, N)` tensor a group in its
        networks' dtype (as each one's own call), in the order of :attr:`names`."""
        if not self.groups:
            return []
        columns = self._stack(batch, self.columns)
        if self.values.device != columns.device:
            self.values = self.values.to(columns.device)
        values = columns[self.values]
        terms, start = [], 0
        for group in self.groups:
            size = len(group.modules)
            value = values[start : start + size].to(group.layers[0][0].weight.dtype)
            terms.append(group.distribution(columns).log_prob(value))
            start += size
        return terms

    def sample(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Draws the grouped sites given their parents' `values`, each group at once, as
        `pyro.sample` draws (`rsample` where the family has it)."""
        columns = self._stack(values, self.inputs)
        drawn = {}
        for group, names in zip(self.groups, self.parts, strict=True):
            drawn.update(zip(names, group.distribution(columns)().unbind(0), strict=True))
        return drawn


def sample(factors: Factors, n: int) -> dict[str, Tensor]:
    r"""Draws `n` rows ancestrally, one topological layer at a time, the same-shaped
    conditionals of a layer at once (see :func:`groups`), the others one by one, in order.

    The draws have the distribution of the program's own (site by site, in the program's
    order), but not its values under a fixed seed, unless every layer holds one site: the
    random stream is taken in another order (a layer before the next, a group's draws at once).

    Arguments:
        factors: Each site's module and parents' names, in a topological order, every value
            one number a row.
        n: The number of rows.

    Returns:
        Each site's values, of shape :math:`(n,)`, in the order of `factors`.

    Example:
        >>> model = ppgen.dag([("a", "b"), ("a", "c")], hidden=(4,))
        >>> factors = dict(zip(model.nodes, zip(model.conditionals, model.parents.values())))
        >>> {name: value.shape for name, value in sample(factors, 3).items()}
        {'a': torch.Size([3]), 'b': torch.Size([3]), 'c': torch.Size([3])}
    """
    depth: dict[str, int] = {}
    for name, (_, parents) in factors.items():
        depth[name] = 1 + max((depth[p] for p in parents), default=-1)
    layers: dict[int, list[str]] = {}
    for name in factors:
        layers.setdefault(depth[name], []).append(name)
    shapes = groups(factors, dict.fromkeys(factors, True))
    values: dict[str, Tensor] = {}
    for layer in layers.values():
        stacked = Stacked(factors, shapes, layer)
        if stacked.groups:
            values.update(stacked.sample(values))
        for name in stacked.singles:
            module, parents = factors[name]
            d = module.distribution(*(values[p] for p in parents))
            values[name] = (d if d.batch_shape == (n,) else d.expand((n,)))()
    return {name: values[name] for name in factors}
