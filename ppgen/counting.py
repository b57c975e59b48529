r"""Free-parameter counts of discrete joint distributions, of DAG factorisations and of modules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import networkx as nx
from torch import nn

from ppgen.graph import digraph
from ppgen.nn import Node

__all__ = ["count_parameters"]

Structure = str | nx.DiGraph | Iterable[tuple[object, object]]


def count_parameters(
    cardinalities: Sequence[int] | Mapping[object, int] | nn.Module,
    structure: Structure = "joint",
) -> int:
    r"""Returns the number of free parameters of a discrete model, or of a module.

    For discrete variables with cardinalities :math:`k_i` the structures count:

    - `"joint"`: the full joint table, :math:`\prod_i k_i - 1`;
    - `"independent"`: a product of marginals, :math:`\sum_i (k_i - 1)`;
    - `"chain"`: the chain rule with full conditionals :math:`p(x_i \mid x_{<i})`, which is the
      joint again, :math:`\sum_i (k_i - 1) \prod_{j < i} k_j`;
    - a DAG (a `networkx.DiGraph` or an edge list over the variables), with one table per node:
      :math:`\sum_i (k_i - 1) \prod_{j \in \mathrm{Pa}(i)} k_j`.

    Given a module instead (a `ppgen.Model`, a conditional, any `torch.nn.Module`), it counts
    the parameters the module actually learns: each :class:`~ppgen.nn.Node` counts its own
    `n_params`; elsewhere a weight with a `mask` buffer of its shape (a masked layer) counts
    its unmasked entries, and any other trainable tensor all its entries. A module or a tensor
    reached twice (a shared submodule, a tied weight) counts once. It runs nothing: a
    `pyro.param` that the program creates when it runs is not the module's and is not
    counted (declare it as a `pyro.nn.PyroParam` attribute to have it counted).

    Arguments:
        cardinalities: The number of values of each variable: a sequence (variables are then
            named `0, 1, ...`) or a mapping from names; or a module.
        structure: `"joint"`, `"independent"`, `"chain"`, or a DAG over the variable names.

    Returns:
        The count, as an exact python int.

    Example:
        >>> count_parameters([2] * 10), count_parameters([2] * 10, "independent")
        (1023, 10)
        >>> count_parameters([256] * 3)  # one RGB pixel
        16777215
        >>> count_parameters([2] * 4, [(0, 1), (1, 2), (2, 3)])  # a Markov chain
        7
        >>> count_parameters(Tabular(3, (2, 2)))
        8
    """
    if isinstance(cardinalities, nn.Module):
        return _count_module(cardinalities)
    if callable(cardinalities) or not isinstance(cardinalities, Iterable):  # a program
        raise ValueError(
            "count_parameters takes cardinalities (a sequence or mapping of ints) or a module, "
            f"not a value of type {type(cardinalities).__name__}; for a program's parameters, "
            "pass the nn.Module that holds them."
        )
    cards = dict(
        cardinalities.items() if isinstance(cardinalities, Mapping) else enumerate(cardinalities)
    )
    if any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1
           for k in cards.values()):  # fmt: skip
        raise ValueError(f"Cardinalities must be positive ints, got {list(cards.values())}.")
    cards = {v: int(k) for v, k in cards.items()}
    if isinstance(structure, str):
        sizes = list(cards.values())
        if structure == "joint":
            return math.prod(sizes) - 1
        if structure == "independent":
            return sum(k - 1 for k in sizes)
        if structure == "chain":
            total, before = 0, 1  # the product of the earlier cardinalities, kept as it grows
            for k in sizes:
                total, before = total + (k - 1) * before, before * k
            return total
        raise ValueError(
            f"Unknown structure '{structure}': use 'joint', 'independent', 'chain' or a DAG."
        )
    g = digraph(structure)
    unknown = set(g.nodes) - set(cards)
    if unknown:
        raise ValueError(
            f"The DAG has variables without a cardinality: {sorted(map(str, unknown))}."
        )
    if not nx.is_directed_acyclic_graph(g):
        raise ValueError("The structure has a cycle, so it is not a DAG.")
    g.add_nodes_from(cards)
    return sum((k - 1) * math.prod(cards[p] for p in g.predecessors(v)) for v, k in cards.items())


def _count_module(module: nn.Module, seen: set[int] | None = None) -> int:
    """The count of `module`, where a module or a tensor reached a second time (a shared
    submodule, a tied weight) counts once: `seen` holds the ids of those already counted."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return 0
    seen.add(id(module))
    if isinstance(module, Node):
        seen.update(id(p) for p in module.parameters())
        return module.n_params
    total = 0
    for name, p in module.named_parameters(recurse=False):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        mask = getattr(module, "mask", None)
        masked = name == "weight" and mask is not None and tuple(mask.shape) == tuple(p.shape)
        total += int(mask.count_nonzero()) if masked else p.numel()
    return total + sum(_count_module(child, seen) for child in module.children())
