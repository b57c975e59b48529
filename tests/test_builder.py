import re

import networkx as nx
import pytest
import torch

import ppgen


def test_dag_samples_in_topological_order_with_supports():
    model = ppgen.dag(
        [("c", "a"), ("a", "b"), ("c", "b")],
        kinds={"c": "categorical", "a": "bernoulli", "b": "tabular"},
        cardinalities={"c": 3, "b": 4},
        hidden=(8,),
    )
    assert model.nodes == ["c", "a", "b"]
    values = model(n=200)
    assert values["c"].shape == (200,) and set(values["c"].tolist()) <= {0, 1, 2}
    assert set(values["a"].tolist()) <= {0.0, 1.0}
    assert set(values["b"].tolist()) <= {0, 1, 2, 3}


def test_dag_accepts_networkx_with_isolated_nodes_and_int_names():
    g = nx.DiGraph([(0, 1)])
    g.add_node(2)
    model = ppgen.dag(g)
    assert model.nodes == ["0", "1", "2"]
    assert set(ppgen.graph(model).edges) == {("0", "1")}


@pytest.mark.parametrize(
    "edges,kwargs,message",
    [
        ([("a", "b"), ("b", "c"), ("c", "a")], {}, "cycle: 'a' -> 'b' -> 'c' -> 'a'"),
        ([("a", "a")], {}, "Node 'a' has an edge to itself"),
        ([("a", "b")], {"kinds": {"b": "poisson"}}, "Node 'b' has unknown kind 'poisson'"),
        ([("a", "b")], {"kinds": {"z": "normal"}}, "kinds names node 'z', which is not in"),
        ([("a", "b")], {"cardinalities": {"q": 2}}, "cardinalities names node 'q'"),
        ([("a", "b")], {"kinds": {"b": "categorical"}}, "Node 'b' is categorical but has no"),
        ([("a", "b")], {"kinds": {"b": "tabular"}, "cardinalities": {"b": 2}},
         "Node 'b' is tabular but its parent 'a' is normal"),
        ([("a", "b")], {"cardinalities": {"a": 2}}, "Node 'a' is normal, so it takes no"),
        ([], {}, "The graph is empty"),
        (nx.DiGraph(), {}, "The graph is empty"),
        ([("a", "b")], {"kinds": {"a": "tabular", "b": "tabular"},
                        "cardinalities": {"a": 1, "b": 2}}, "Node 'a' has cardinality 1; it must"),
        ([("a", "b")], {"kinds": {"a": "categorical"}, "cardinalities": {"a": 2.5}},
         "Node 'a' has cardinality 2.5"),
        ([("a", "b")], {"kinds": {"a": "bernoulli"}, "cardinalities": {"a": 3}},
         "Node 'a' is bernoulli, so its cardinality is 2, not 3"),
        ([("data", "b")], {}, "Node 'data' has the name of the plate of the rows"),
        (nx.Graph([("a", "b")]), {}, "Expected a directed graph (a networkx.DiGraph), not Graph"),
        ([("a", "b", "c")], {}, "Expected edges as (parent, child) pairs or a networkx.DiGraph"),
        ([(None, "a")], {}, "Expected edges as (parent, child) pairs or a networkx.DiGraph"),
        ([("a", "b")], {"hidden": 8}, "hidden must be a sequence of layer widths"),
        ([("a", "b")], {"hidden": (0,)}, "Layer widths must be positive whole numbers, not [1, 0"),
    ],
)  # fmt: skip
def test_dag_bad_input(edges, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ppgen.dag(edges, **kwargs)


def test_dag_neural_parents_see_one_hot_categoricals():
    model = ppgen.dag(
        [("c", "x")], kinds={"c": "categorical"}, cardinalities={"c": 5}, hidden=(3,)
    )
    x = model.conditionals[1]
    assert x.net[0].in_features == 5
    d = x(torch.tensor([0, 4]))
    assert d.batch_shape == (2,)
