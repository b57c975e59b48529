"""Properties of random DAGs of up to 30 nodes of mixed kinds, checked with hypothesis."""

import tempfile
from pathlib import Path

import networkx as nx
import pyro
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.builder import KINDS

SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DISCRETE = ("bernoulli", "categorical", "tabular")


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 30) -> tuple[list, dict, dict]:
    """An edge list (in a random order), the kinds and the cardinalities of a random DAG."""
    n = draw(st.integers(1, max_nodes))
    names = [f"v{i}" for i in range(n)]
    kinds, cardinalities, edges = {}, {}, []
    for i, name in enumerate(names):
        kind = draw(st.sampled_from(KINDS))
        candidates = [p for p in names[:i] if kind != "tabular" or kinds[p] in DISCRETE]
        parents = (
            draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True))
            if (candidates)
            else []
        )
        kinds[name] = kind
        if kind in ("categorical", "tabular"):
            cardinalities[name] = draw(st.integers(2, 4))
        edges += [(p, name) for p in parents]
    edges = draw(st.permutations(edges)) if edges else edges
    # isolated nodes enter as a graph, since an edge list cannot name them
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(edges)
    return g, kinds, cardinalities


def _model(spec) -> ppgen.builder.DAG:
    g, kinds, cardinalities = spec
    pyro.set_rng_seed(0)
    return ppgen.dag(g, kinds=kinds, cardinalities=cardinalities, hidden=(3,))


@SETTINGS
@given(dags())
def test_graph_is_the_declared_graph(spec):
    g = ppgen.graph(_model(spec))
    assert set(g.nodes) == set(spec[0].nodes)
    assert set(g.edges) == set(spec[0].edges)


@SETTINGS
@given(dags(), st.integers(1, 8))
def test_log_prob_is_the_sum_of_per_node_terms(spec, rows):
    model = _model(spec)
    data = ppgen.sample(model, rows)
    total = ppgen.log_prob(model, data)
    terms = {}
    for node, conditional in zip(model.nodes, model.conditionals, strict=True):
        parents = [data[p] for p in model.parents[node]]
        terms[node] = conditional(*parents).log_prob(data[node])
    assert torch.allclose(total, sum(terms.values()), rtol=0, atol=1e-10)
    per_node = ppgen.log_prob(model, data, per_node=True)
    assert all(torch.allclose(per_node[k], terms[k], rtol=0, atol=1e-12) for k in terms)


@SETTINGS
@given(dags(), st.integers(1, 50))
def test_samples_respect_the_supports(spec, rows):
    _, kinds, cardinalities = spec
    data = ppgen.sample(_model(spec), rows)
    for node, value in data.items():
        assert value.shape == (rows,) and torch.isfinite(value).all()
        if kinds[node] == "bernoulli":
            assert set(value.unique().tolist()) <= {0.0, 1.0}
        elif kinds[node] in ("categorical", "tabular"):
            assert value.min() >= 0 and value.max() < cardinalities[node]
            assert torch.equal(value, value.round())


@SETTINGS
@given(dags(max_nodes=20), st.integers(1, 8))
def test_save_load_round_trips_exactly(spec, rows):
    model = _model(spec)
    data = ppgen.sample(model, rows)
    with tempfile.TemporaryDirectory() as folder:
        loaded = ppgen.io.load(ppgen.io.save(model, Path(folder) / "m.safetensors"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert torch.equal(ppgen.log_prob(loaded, data), ppgen.log_prob(model, data))
    assert set(ppgen.graph(loaded).edges) == set(ppgen.graph(model).edges)


def test_root_linear_gaussian_node_is_a_root_normal():
    model = ppgen.dag(nx.DiGraph([("a", "b")]), kinds={"a": "linear_gaussian"})
    assert type(model.conditionals[0]).__name__ == "Root"
    assert ppgen.sample(model, 3)["a"].shape == (3,)
