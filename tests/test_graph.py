import networkx as nx
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.nn import Conditional, Root


def edges(g: nx.DiGraph) -> set[tuple[str, str]]:
    return set(g.edges)


def test_relay_graph_and_attributes(relay):
    g = ppgen.graph(relay, n=4)
    assert list(g.nodes) == ["t0", "t1", "t2"]
    assert edges(g) == {("t0", "t1"), ("t1", "t2")}
    for name, module in [("t0", relay.t0), ("t1", relay.t1), ("t2", relay.t2)]:
        node = g.nodes[name]
        assert node["distribution"] == "Normal"
        assert node["observed"] is False
        assert node["plates"] == ("race",)
        assert node["event_shape"] == ()
        assert node["n_params"] == sum(p.numel() for p in module.parameters())
    assert g.graph["plates"] == {"race": 4}


def test_relay_factorization(relay):
    assert ppgen.factorization(relay) == "p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)"


def test_observed_sites_under_condition(relay):
    data = {"t0": torch.zeros(3), "t1": torch.zeros(3), "t2": torch.zeros(3)}
    g = ppgen.graph(pyro.condition(relay, data=data), n=3)
    assert all(g.nodes[v]["observed"] for v in g)
    assert edges(g) == {("t0", "t1"), ("t1", "t2")}


@pytest.mark.parametrize("nodes,p,seed", [(5, 0.5, 0), (12, 0.3, 1), (25, 0.15, 2), (50, 0.08, 3)])
def test_dag_graph_equals_declared_edges(nodes, p, seed):
    random = nx.gnp_random_graph(nodes, p, seed=seed, directed=True)
    declared = nx.DiGraph((u, v) for u, v in random.edges if u < v)
    declared.add_nodes_from(range(nodes))
    model = ppgen.dag(declared, hidden=(4,))
    g = ppgen.graph(model, n=2)
    assert set(g.nodes) == {str(v) for v in declared}
    assert edges(g) == {(str(u), str(v)) for u, v in declared.edges}
    for v, module in zip(model.nodes, model.conditionals, strict=True):
        assert g.nodes[v]["n_params"] == sum(p.numel() for p in module.parameters())


def test_mixed_kinds_graph_and_counts():
    model = ppgen.dag(
        [("season", "rain"), ("season", "sprinkler"), ("rain", "wet"), ("sprinkler", "wet"),
         ("wet", "height"), ("season", "height")],
        kinds={"season": "categorical", "rain": "tabular", "sprinkler": "bernoulli",
               "wet": "tabular", "height": "linear_gaussian"},
        cardinalities={"season": 4, "rain": 2, "wet": 3},
        hidden=(8,),
    )  # fmt: skip
    g = ppgen.graph(model, n=5)
    assert ppgen.factorization(g) == (
        "p(season, rain, sprinkler, wet, height) = p(season) p(rain | season) "
        "p(sprinkler | season) p(wet | rain, sprinkler) p(height | season, wet)"
    )
    counts = dict(g.nodes(data="n_params"))
    assert counts["season"] == 3  # k - 1 free logits
    assert counts["rain"] == 4 * 1  # (k - 1) * prod of parent cardinalities
    assert counts["wet"] == 2 * 2 * 2
    assert counts["height"] == (4 + 3) + 1 + 1  # one-hot parents, bias, scale
    assert g.nodes["season"]["distribution"] == "Categorical"
    assert g.nodes["sprinkler"]["distribution"] == "Bernoulli"


def test_plain_function_with_plate_and_deterministic():
    def model(n):
        with pyro.plate("rows", n):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            h = pyro.deterministic("h", torch.tanh(2 * a) + 1)
            b = pyro.sample("b", dist.Normal(h, 1.0))
            pyro.sample("c", dist.Bernoulli(logits=b * a))
        pyro.sample("d", dist.Gamma(2.0, 1.0))

    g = ppgen.graph(model, 3)
    assert list(g.nodes) == ["a", "b", "c", "d"]
    assert edges(g) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert g.nodes["d"]["plates"] == ()
    assert g.nodes["c"]["n_params"] is None
    assert g.graph["plates"] == {"rows": 3}


def test_vae_style_latent_and_nested_event():
    decoder = torch.nn.Linear(2, 6)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    g = ppgen.graph(model, torch.zeros(5, 6))
    assert edges(g) == {("z", "x")}
    assert g.nodes["z"]["observed"] is False and g.nodes["x"]["observed"] is True
    assert g.nodes["x"]["event_shape"] == (6,)
    assert ppgen.factorization(g) == "p(z, x) = p(z) p(x | z)"


def test_graph_does_not_consume_randomness(relay):
    state = torch.random.get_rng_state()
    ppgen.graph(relay, n=3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_program_without_sites_is_an_error():
    def empty():
        return torch.zeros(1)

    with pytest.raises(ValueError, match="The program empty has no pyro.sample site"):
        ppgen.graph(empty)
    with pytest.raises(ValueError, match="The program empty has no pyro.sample site"):
        ppgen.graph(pyro.poutine.seed(pyro.poutine.block(empty), 0))  # not "partial"


class Mixed(ppgen.Model):
    """Sites whose distributions are not a ppgen conditional of parent values as such."""

    def __init__(self):
        super().__init__()
        self.a = Root(dist.Normal)
        self.b = Conditional(dist.Normal, in_features=1, hidden=(3,))
        self.c = Root(dist.Normal)

    def forward(self, n=1):
        with pyro.plate("rows", n):
            a = pyro.sample("a", self.a())
            b = pyro.sample("b", self.b(2 * a))  # a transformed parent
            pyro.sample("c", dist.Normal(self.c().loc + b, 1.0))  # a module's output, edited


def test_edges_outside_ppgen_calls_come_from_provenance():
    g = ppgen.graph(Mixed(), n=3)
    assert edges(g) == {("a", "b"), ("b", "c")}
    assert g.nodes["b"]["n_params"] == 3 + 3 + 3 * 2 + 2
    assert g.nodes["c"]["n_params"] is None


def test_calls_and_provenance_agree_on_a_dag():
    model = ppgen.dag(
        [("a", "c"), ("b", "c"), ("c", "d"), ("a", "d")],
        kinds={"a": "categorical", "b": "bernoulli", "c": "tabular", "d": "linear_gaussian"},
        cardinalities={"a": 3, "c": 2}, hidden=(3,),
    )  # fmt: skip
    from_calls = edges(ppgen.graph(model, n=4))
    relations = pyro.infer.inspect.get_model_relations(model, model_kwargs={"n": 4})
    from_provenance = {(p, v) for v, ps in relations["sample_sample"].items() for p in ps}
    assert from_calls == from_provenance == {("a", "c"), ("b", "c"), ("c", "d"), ("a", "d")}


def test_broadcast_mixture_root_is_still_its_module():
    from ppgen.nn import MixtureOfGaussians

    class Mix(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a = MixtureOfGaussians(components=3)  # batch shape (): the plate expands it
            self.b = MixtureOfGaussians(1, components=2, hidden=(4,))

        def forward(self, n=1):
            with pyro.plate("rows", n):
                pyro.sample("b", self.b(pyro.sample("a", self.a())))

    model = Mix()
    g = ppgen.graph(model, n=5)
    assert edges(g) == {("a", "b")}
    assert g.nodes["a"]["n_params"] == model.a.n_params == 8  # 3 means, 3 scales, 2 free logits
    assert g.nodes["b"]["n_params"] == model.b.n_params


def test_two_sites_conditioned_on_one_tensor_keep_their_edge():
    class Chain(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a, self.c = Root(dist.Normal), Conditional(dist.Normal, 1, hidden=(3,))

        def forward(self, n=1):
            with pyro.plate("rows", n):
                pyro.sample("c", self.c(pyro.sample("a", self.a())))

    x = torch.randn(5)
    assert list(ppgen.graph(pyro.condition(Chain(), data={"a": x, "c": x}), n=5).edges) == [
        ("a", "c")
    ]


def test_factorization_and_draw_of_a_graph_check_it_and_take_any_node_names():
    import matplotlib.pyplot as plt

    g = nx.DiGraph([(0, 1), (1, 2)])
    assert ppgen.factorization(g) == "p(0, 1, 2) = p(0) p(1 | 0) p(2 | 1)"
    plt.close(ppgen.draw(g, title=True).figure)
    for bad, message in [(nx.DiGraph(), "The graph is empty"),
                         (nx.DiGraph([(0, 1), (1, 0)]), "The graph has a cycle: 0 -> 1 -> 0"),
                         (nx.Graph([(0, 1)]), "Expected a networkx.DiGraph, not Graph")]:  # fmt: skip
        for query in (ppgen.factorization, ppgen.draw):
            with pytest.raises(ValueError, match=message):
                query(bad)


def test_a_conditional_of_ones_own_that_reads_more_than_its_inputs_keeps_every_edge():
    from ppgen.nn import Node

    class Shifted(Node):  # reads a global latent through an attribute, not an input
        shift = torch.tensor(0.0)

        def distribution(self, x):
            return dist.Normal(x + self.shift, 1.0)

    class Model(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.g, self.a, self.b = Root(dist.Normal), Root(dist.Normal), Shifted()

        def forward(self, n=1):
            self.b.shift = pyro.sample("g", self.g())
            with pyro.plate("rows", n):
                pyro.sample("b", self.b(pyro.sample("a", self.a())))

    relations = pyro.infer.inspect.get_model_relations(Model(), model_kwargs={"n": 3})
    assert relations["sample_sample"]["b"] == ["g", "a"]
    assert edges(ppgen.graph(Model(), n=3)) == {("g", "b"), ("a", "b")}


def test_a_program_parameter_named_as_an_option_of_graph_or_draw_is_said():
    import functools

    import matplotlib.pyplot as plt

    def noisy(n, deterministic=False):  # graph's option `deterministic` never reaches it
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        if not deterministic:
            pyro.sample("b", dist.Normal(a, 1.0))

    said = "noisy takes a parameter 'deterministic', which {} takes as its own option"
    with pytest.warns(UserWarning, match=said.format("graph")):
        assert list(ppgen.graph(noisy, 3, deterministic=True)) == ["a", "b"]
    with pytest.warns(UserWarning, match=said.format("draw")):
        plt.close(ppgen.draw(noisy, 3).figure)
    with pytest.warns(UserWarning, match=said.format("graph")):  # through Pyro's handlers too
        ppgen.graph(pyro.condition(noisy, data={"a": torch.tensor(0.0)}), 3, deterministic=True)
    assert list(ppgen.graph(functools.partial(noisy, deterministic=True), 3)) == ["a"]
