r"""The DAG of a Pyro program, read by Pyro's own provenance tracking, and its factorisation."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import torch
from pyro.infer.inspect import get_model_relations

from ppgen.tracing import (
    Call,
    is_factor,
    is_variable,
    program_name,
    trace_calls,
    unwrapped,
    warn_shadowed,
)

__all__ = ["check_dag", "digraph", "factorization", "family", "graph"]


def _parents_from_calls(
    sites: dict[str, dict], calls: dict[str, Call]
) -> dict[str, list[str]] | None:
    """Each site's parents, where every site's distribution is one of ppgen's own conditionals
    called on the values other sites returned; `None` where any is not (then provenance
    decides: a conditional whose `distribution` the user wrote may read more than its inputs)."""
    names = {id(site["value"]): name for name, site in sites.items()}
    if len(names) < len(sites):  # two sites hold one tensor (conditioned on it): ambiguous
        return None
    parents = {}
    for name in sites:
        if name not in calls or not _reads_only_its_inputs(calls[name][0]):
            return None
        parents[name] = [names.get(id(value)) for value in calls[name][1]]
        if None in parents[name]:
            return None
    return parents


def _reads_only_its_inputs(module: object) -> bool:
    """Whether a conditional's distribution is ppgen's, a function of its inputs and its own
    parameters alone."""
    return getattr(type(module).distribution, "__module__", "").startswith("ppgen.")


def family(fn: object) -> str:
    """The name of the distribution the program wrote, through `to_event`, `expand` and masks
    (a `LogNormal` is a LogNormal, not the Normal it transforms).

    Example:
        >>> family(dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        'LogNormal'
    """
    fn = unwrapped(fn)
    public = next(c for c in type(fn).__mro__ if not c.__name__.startswith("_"))
    return public.__name__  # a private subclass (ppgen's table) by the family it is


def graph(
    model: Callable[..., object], *args: object, deterministic: bool = False, **kwargs: object
) -> nx.DiGraph:
    r"""Returns the DAG of the sample sites of a Pyro program.

    Where every site's distribution is one of ppgen's conditionals (not a subclass with a
    `distribution` of its own) called directly on the values other sites returned, the edges
    are those calls' inputs, read from one trace. Otherwise they come
    from Pyro's provenance tracking (`pyro.infer.inspect.get_model_relations`), which follows
    values through any torch computation, `pyro.deterministic` sites included; those sites are
    not random variables and are left out of the graph, their dependences kept. Neither sees
    through Python control flow: a site chosen by `if z > 0:` or shaped by `z.item()` has no
    edge from `z` (compute with tensors: `torch.where`, indexing).

    Arguments:
        model: A Pyro program (a `ppgen.Model`, any `PyroModule` or a function); it is run
            once or twice without gradients, with the random state restored afterwards.
        args, kwargs: Inputs of `model`.
        deterministic: Whether to keep the `pyro.deterministic` sites as nodes (attribute
            `deterministic=True`), with the edges into and out of them, as
            `pyro.render_model(render_deterministic=True)` does; by default they are left out
            and their dependences kept. A program's own parameter of that name never gets it
            (a warning says so): bind it first with `functools.partial`.

    Returns:
        A graph whose nodes are site names in program order, with attributes `observed`,
        `distribution` (the class the program wrote, e.g. `LogNormal`), `factor` (whether it
        is a `pyro.factor` term, not a variable), `event_shape`, `plates` (outermost first)
        and `n_params` (of its ppgen conditional, else `None`). `graph.graph["plates"]` maps
        each plate name to its full size (`None` for a plate without one), and
        `graph.graph["subsample_sizes"]` each subsampling plate to its subsample size. An
        edge `u -> v` means the distribution at `v` reads `u`.

    Example:
        >>> def relay():
        ...     t0 = pyro.sample("t0", dist.Normal(0.0, 1.0))
        ...     pyro.sample("t1", dist.Normal(t0, 1.0))
        >>> list(graph(relay).edges)
        [('t0', 't1')]
    """
    warn_shadowed("graph", ["deterministic"], model)
    return _graph(model, args, kwargs, deterministic=deterministic)


def _graph(
    model: Callable[..., object], args: tuple, kwargs: dict, *, deterministic: bool = False
) -> nx.DiGraph:
    """:func:`graph`, for callers with options of their own, which have said where the program
    names one of those."""
    with torch.random.fork_rng(), torch.no_grad():
        trace, calls = trace_calls(model, *args, **kwargs)
    sites = {
        name: site
        for name, site in trace.nodes.items()
        if is_variable(site) or (deterministic and _is_deterministic(site))
    }
    if not any(is_variable(site) for site in sites.values()):
        raise ValueError(
            f"The program {program_name(model)} has no pyro.sample site, so it has no graph."
        )
    parents = None if deterministic else _parents_from_calls(sites, calls)
    if parents is None:  # some site is not a ppgen conditional of its parents' values
        with torch.random.fork_rng(), torch.no_grad():
            relations = get_model_relations(model, args, kwargs, include_deterministic=deterministic)
        parents = relations["sample_sample"]
    g = nx.DiGraph(plates={}, subsample_sizes={})
    for name, site in sites.items():
        frames = site["cond_indep_stack"]
        for f in frames:
            full = f.size if f.full_size is None else f.full_size
            g.graph["plates"][f.name] = None if full < 0 else full  # a plate without a size
            if 0 <= f.size != full:
                g.graph["subsample_sizes"][f.name] = f.size
        g.add_node(
            name,
            observed=bool(site["is_observed"]) and not _is_deterministic(site),
            distribution=family(site["fn"]),
            factor=is_factor(site),
            deterministic=_is_deterministic(site),
            event_shape=tuple(site["fn"].event_shape),
            plates=tuple(f.name for f in frames),
            n_params=calls[name][0].n_params if name in calls else None,
        )
    for name in sites:
        g.add_edges_from((p, name) for p in parents.get(name, ()) if p in sites)
    return g


def _is_deterministic(site: dict) -> bool:
    return site["type"] == "sample" and bool(site["infer"].get("_deterministic", False))


def check_dag(g: object) -> nx.DiGraph:
    """Returns `g` where it is a DAG (a `networkx.DiGraph` with a node, no self-loop and no
    cycle), else raises one `ValueError` naming the problem.

    Example:
        >>> check_dag(nx.DiGraph([("a", "b"), ("b", "a")]))
        Traceback (most recent call last):
        ...
        ValueError: The graph has a cycle: 'a' -> 'b' -> 'a'; a DAG has none.
    """
    if not isinstance(g, nx.DiGraph):
        raise ValueError(f"Expected a networkx.DiGraph, not {type(g).__name__}.")
    if g.number_of_nodes() == 0:
        raise ValueError("The graph is empty: a DAG needs at least one edge or node.")
    loops = list(nx.nodes_with_selfloops(g))
    if loops:
        raise ValueError(f"Node {loops[0]!r} has an edge to itself; a DAG has no self-loops.")
    if not nx.is_directed_acyclic_graph(g):
        cycle = [u for u, _ in nx.find_cycle(g)]
        path = " -> ".join(repr(v) for v in [*cycle, cycle[0]])
        raise ValueError(f"The graph has a cycle: {path}; a DAG has none.")
    return g


def digraph(edges: object) -> nx.DiGraph:
    """The directed graph of an edge list or a `networkx.DiGraph`, else one `ValueError` (an
    undirected graph is refused, not read as edges both ways).

    Example:
        >>> list(digraph([("a", "b")]).edges)
        [('a', 'b')]
    """
    if isinstance(edges, nx.Graph) and not edges.is_directed():
        raise ValueError(
            f"Expected a directed graph (a networkx.DiGraph), not {type(edges).__name__}."
        )
    try:
        return nx.DiGraph(edges)
    except (nx.NetworkXError, TypeError, ValueError):
        shown = repr(edges)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(
            f"Expected edges as (parent, child) pairs or a networkx.DiGraph, not {shown}."
        ) from None


def factorization(
    model: Callable[..., object] | nx.DiGraph, *args: object, **kwargs: object
) -> str:
    r"""Returns the factorisation :math:`p(x) = \prod_i p(x_i \mid \mathrm{Pa}(x_i))` as text.

    Sites are in topological (program) order, latent sites included, and each conditioning set
    is in that order too. A `pyro.factor` term (a node with `factor=True`) is a factor
    :math:`\exp f(\mathrm{Pa})` named after its site, not a variable: the program's density is
    then proportional to the product.

    Arguments:
        model: A Pyro program, or a graph returned by :func:`graph`.
        args, kwargs: Inputs of `model`.

    Example:
        >>> factorization(nx.DiGraph([("t0", "t1"), ("t1", "t2")]))
        'p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)'
        >>> def penalised():
        ...     x = pyro.sample("x", dist.Normal(0.0, 1.0))
        ...     pyro.factor("penalty", -x.abs())
        >>> factorization(penalised)
        'p(x) ∝ p(x) exp(penalty(x))'
    """
    g = check_dag(model) if isinstance(model, nx.Graph) else graph(model, *args, **kwargs)
    position = {v: i for i, v in enumerate(g.nodes)}
    order = list(nx.lexicographical_topological_sort(g, key=position.__getitem__))
    rank = {v: i for i, v in enumerate(order)}
    factors = {v for v in order if g.nodes[v].get("factor", False)}
    terms = []
    for v in order:
        parents = [str(u) for u in sorted(g.predecessors(v), key=rank.__getitem__)]
        if v in factors:
            terms.append(f"exp({v}({', '.join(parents)}))" if parents else f"exp({v})")
        else:
            terms.append(f"p({v} | {', '.join(parents)})" if parents else f"p({v})")
    variables = ", ".join(str(v) for v in order if v not in factors)
    return f"p({variables}) {'∝' if factors else '='} {' '.join(terms)}"
