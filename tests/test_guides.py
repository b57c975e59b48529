"""The amortised guide built from the graph: the faithful inverse, and fits against exact posteriors."""

import importlib
import json
import math
import subprocess
import sys

import networkx as nx
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ppgen
from ppgen.elbo import ELBOObjective
from ppgen.guides import Amortized, _gathered, faithful_inverse
from ppgen.models import VAE
from ppgen.nn import Model


@pytest.fixture(autouse=True)
def param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def dag(edges, observed, plates=None):
    g = nx.DiGraph(edges)
    for v in g:
        g.nodes[v]["observed"] = v in observed
        g.nodes[v]["plates"] = (plates or {}).get(v, ())
    return g


def faithful(g, inverse):
    """Whether q(z | x) = prod_v q(v | Pa_H(v)) can equal p(z | x): in an order of the inverse with
    the observed nodes first, each latent is d-separated in `g` from the nodes before it by its
    inverse parents (the ordered Markov property of the posterior)."""
    order = list(nx.lexicographical_topological_sort(inverse, key=lambda v: (not g.nodes[v]["observed"], str(v))))
    for i, v in enumerate(order):
        if g.nodes[v]["observed"]:
            continue
        parents = set(inverse.predecessors(v))
        rest = set(order[:i]) - parents
        if rest and not nx.is_d_separator(g, {v}, rest, parents):
            return False
    return True


CASES = {  # a DAG, its observed nodes, and its faithful inverse (the tie-breaks of faithful_inverse)
    "v-structure": (
        [("a", "x"), ("b", "x")], {"x"}, {("x", "a"), ("x", "b"), ("a", "b")},
    ),
    "confounder": (
        [("z", "x1"), ("z", "x2"), ("x1", "x2")], {"x1", "x2"}, {("x1", "z"), ("x2", "z")},
    ),
    "chain": (
        [("z1", "z2"), ("z2", "z3"), ("z3", "x")], {"x"},
        {("z2", "z3"), ("x", "z3"), ("z1", "z2"), ("x", "z2"), ("x", "z1")},
    ),
    "hmm": (  # z_t depends on z_{t-1} and x_t, ..., x_T: the structure of a DMM's guide
        [("z1", "z2"), ("z2", "z3"), ("z1", "x1"), ("z2", "x2"), ("z3", "x3")], {"x1", "x2", "x3"},
        {("z2", "z3"), ("x3", "z3"), ("z1", "z2"), ("x2", "z2"), ("x3", "z2"),
         ("x1", "z1"), ("x2", "z1"), ("x3", "z1")},
    ),
    "two causes, two effects": (  # a -> x <- b -> y: min-fill eliminates a first (no fill-in)
        [("a", "x"), ("b", "x"), ("b", "y")], {"x", "y"},
        {("x", "a"), ("b", "a"), ("x", "b"), ("y", "b")},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_faithful_inverse_of_known_dags(name):
    edges, observed, expected = CASES[name]
    g = dag(edges, observed)
    inverse = faithful_inverse(g)
    assert set(inverse.edges) == expected
    assert faithful(g, inverse)


def test_naive_reversal_of_a_v_structure_is_not_faithful():
    g = dag([("a", "x"), ("b", "x")], {"x"})
    naive = nx.DiGraph([("x", "a"), ("x", "b")])  # every edge reversed: asserts a _||_ b | x
    assert not faithful(g, naive)
    assert faithful(g, faithful_inverse(g))


def test_global_latents_are_never_children_of_a_rows_latent():
    # theta is listed last, so without the plate rule min-fill's tie would eliminate it first
    g = dag([("z", "x"), ("theta", "x")], {"x"}, plates={"z": ("rows",), "x": ("rows",)})
    inverse = faithful_inverse(g)
    assert set(inverse.edges) == {("x", "z"), ("theta", "z"), ("x", "theta")}


@st.composite
def random_dags(draw):
    n = draw(st.integers(2, 8))
    edges = [(f"v{i}", f"v{j}") for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    observed = {f"v{i}" for i in range(n) if draw(st.booleans())}
    g = nx.DiGraph()
    g.add_nodes_from(f"v{i}" for i in range(n))
    g.add_edges_from(edges)
    for v in g:
        g.nodes[v]["observed"] = v in observed
    return g


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_inverse_of_random_dags_is_faithful_and_acyclic(g):
    inverse = faithful_inverse(g)
    assert nx.is_directed_acyclic_graph(inverse)
    assert set(inverse) == set(g)
    assert all(inverse.in_degree(v) == 0 for v in g if g.nodes[v]["observed"])
    assert faithful(g, inverse)


# A linear-Gaussian DAG with three latents and a v-structure at x1: z1 -> x1 <- z2 -> z3 -> x2 <- z1.
# Its joint is Gaussian, so the posterior of (z1, z2, z3) given (x1, x2) is Gaussian with a mean
# linear in x and a constant covariance, which the guide's structure can represent exactly.
SEM = {"z1": ({}, 1.0), "z2": ({}, 1.0), "x1": ({"z1": 1.0, "z2": 1.0}, 0.5),
       "z3": ({"z2": 0.7}, 0.6), "x2": ({"z3": 1.0, "z1": -0.5}, 0.4)}  # fmt: skip
LATENT, OBSERVED = ["z1", "z2", "z3"], ["x1", "x2"]


def linear_gaussian(n=1):
    values = {}
    with pyro.plate("rows", n):
        for name, (weights, scale) in SEM.items():
            loc = sum(w * values[p] for p, w in weights.items()) if weights else torch.zeros(n)
            values[name] = pyro.sample(name, dist.Normal(loc, scale))


def exact_posterior(x):
    """The mean (rows x 3) and covariance (3 x 3) of p(z | x), from the SEM's joint covariance."""
    names = list(SEM)
    b, noise = torch.zeros(5, 5), torch.zeros(5)
    for i, (weights, scale) in enumerate(SEM.values()):
        noise[i] = scale**2
        for p, w in weights.items():
            b[i, names.index(p)] = w
    a = torch.linalg.inv(torch.eye(5) - b)
    cov = a @ torch.diag(noise) @ a.T
    zi, xi = [names.index(v) for v in LATENT], [names.index(v) for v in OBSERVED]
    gain = cov[zi][:, xi] @ torch.linalg.inv(cov[xi][:, xi])
    return x @ gain.T, cov[zi][:, zi] - gain @ cov[xi][:, zi]


def test_fitted_guide_matches_the_exact_posterior_of_a_linear_gaussian_dag():
    rows = ppgen.sample(linear_gaussian, 2000)
    data = {name: rows[name] for name in OBSERVED}
    guide = Amortized(linear_gaussian, hidden_features=())  # linear maps: the exact family
    ppgen.fit_svi(linear_gaussian, guide, data, epochs=30, batch_size=200, lr=0.03,
                  num_particles=4, progress=False)  # fmt: skip
    x = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.5, 0.5]])
    mean, cov = exact_posterior(x)
    encoded = guide.encode(n=3, data={"x1": x[:, 0], "x2": x[:, 1]})
    # the noise of a constant-lr SVI fit: 0.05 on means whose posterior sd is 0.36-0.53
    assert torch.stack([encoded[v] for v in LATENT], -1) == pytest.approx(mean, abs=0.05)
    draws = 20000  # the joint of the guide's draws for one row, through its inverse's edges
    row = {"x1": x[1, 0].expand(draws), "x2": x[1, 1].expand(draws)}
    with torch.no_grad():
        drawn = guide(n=draws, data=row)
    z = torch.stack([drawn[v] for v in LATENT], -1)
    # the covariance (variances 0.13-0.28), to 0.02: Monte Carlo error ~0.003, the rest the fit's
    assert torch.cov(z.T) == pytest.approx(cov, abs=0.02)


def test_graph_of_the_guide_is_the_inverse_among_latents():
    rows = ppgen.sample(linear_gaussian, 4)
    data = {name: rows[name] for name in OBSERVED}
    guide = Amortized(linear_gaussian, n=4, data=data)
    expected = {(u, v) for u, v in guide.inverse.edges if u in LATENT}
    assert set(ppgen.graph(guide, n=4, data=data).edges) == expected
    assert expected == {("z2", "z3"), ("z1", "z3"), ("z1", "z2")}  # z3's parents: z2 and z1
    ax = ppgen.draw(guide, n=4, data=data)
    assert {p.get_gid() for p in ax.patches if p.get_gid().startswith("node")} == {
        "node:z1", "node:z2", "node:z3"
    }  # fmt: skip


def tensor_model(x):
    """z ~ N(0, 1), x | z ~ N(z, 1), in the `model(x)` convention: p(z | x) = N(x/2, 1/2)."""
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_tensor_convention_minibatches_log_prob_and_predictive():
    x = torch.randn(1000) * 2**0.5
    guide = Amortized(tensor_model, hidden_features=())
    ppgen.fit_svi(tensor_model, guide, x, epochs=30, batch_size=100, lr=0.03, num_particles=4,
                  progress=False)  # fmt: skip
    test = torch.tensor([-2.0, 0.0, 1.0, 2.0])
    # the noise of a constant-lr SVI fit: 0.08 on means whose posterior sd is 0.71
    assert guide.encode(test)["z"] == pytest.approx(test / 2, abs=0.08)
    exact = dist.Normal(0.0, 2**0.5).log_prob(test)
    # a guide near the posterior: importance weights near constant, the estimate near log p(x)
    assert ppgen.log_prob(tensor_model, test, guide=guide, num_samples=500) == pytest.approx(
        exact, abs=0.01
    )
    samples = pyro.infer.Predictive(tensor_model, guide=guide, num_samples=7)(test)
    assert samples["z"].shape == (7, 4)


SCALED = """
import pyro, pyro.distributions as dist
from ppgen.nn import Model, Root

class Scaled(Model):
    \"\"\"z ~ N(0, 1), s ~ LogNormal(0, 0.3), x ~ N(z, s) per row, in the dict convention.\"\"\"

    def __init__(self):
        super().__init__()
        self.z = Root(dist.Normal)

    def forward(self, n=1):
        with pyro.plate("rows", n):
            z = pyro.sample("z", self.z())
            s = pyro.sample("s", dist.LogNormal(0.0, 0.3))
            pyro.sample("x", dist.Normal(z, s))
"""

FRESH = """
import json, sys, torch, ppgen
sys.path.insert(0, sys.argv[1])
from scaled import Scaled
torch.set_default_dtype(torch.float64)  # as the suite runs
model = ppgen.load(sys.argv[1] + "/model.safetensors", classes=[Scaled])
guide = ppgen.load(sys.argv[1] + "/guide.safetensors")
rows = {"x": torch.tensor([0.0, 2.0])}
torch.manual_seed(3)
log_p = ppgen.log_prob(model, rows, guide=guide, num_samples=50)
print(json.dumps({"encode": {k: v.tolist() for k, v in guide.encode(n=2, data=rows).items()},
                  "log_prob": log_p.tolist()}))
"""


def test_dict_convention_positive_site_saved_and_loaded_in_a_fresh_process(tmp_path, monkeypatch):
    (tmp_path / "scaled.py").write_text(SCALED)
    monkeypatch.syspath_prepend(tmp_path)
    model = importlib.import_module("scaled").Scaled()
    guide = Amortized(model, hidden_features=(8,))
    with pytest.raises(ValueError, match=r"^The Amortized guide is not built yet, so it has"):
        ppgen.save(guide, tmp_path / "guide.safetensors")
    ppgen.fit_svi(model, guide, {"x": torch.randn(256)}, epochs=3, batch_size=64, progress=False)
    rows = {"x": torch.tensor([0.0, 2.0])}
    encoded = guide.encode(n=2, data=rows)
    assert (encoded["s"] > 0).all()  # a LogNormal-like guide: exp of a Normal
    torch.manual_seed(3)
    log_p = ppgen.log_prob(model, rows, guide=guide, num_samples=50)
    ppgen.save(model, tmp_path / "model.safetensors")
    ppgen.save(guide, tmp_path / "guide.safetensors")
    run = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout)
    assert loaded["encode"] == {k: v.tolist() for k, v in encoded.items()}  # the same floats
    assert loaded["log_prob"] == log_p.tolist()  # the same draws, the same weights
    again = Amortized(model, hidden_features=(8,))  # torch's way: weights kept until it is built
    again.load_state_dict(guide.state_dict())
    assert torch.equal(again.encode(n=2, data=rows)["s"], encoded["s"])


def test_global_latents_get_their_own_normal():
    def model(x):  # a global mean and per-row latents
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    guide = Amortized(model, torch.zeros(3))
    assert [s.name for s in guide.sites] == ["mu", "z"]
    assert list(guide.locs) == ["mu"] and list(guide.nets) == ["z"]
    assert guide.sites[1].inputs == ["*x", "mu"]  # the row of x, and mu's draw
    # encode gives mu's location as a value, not the guide's own parameter (it aliased it)
    encoded = guide.encode(torch.zeros(3))["mu"]
    assert not isinstance(encoded, nn.Parameter) and not encoded.requires_grad
    encoded += 1.0
    assert guide.locs["mu"].item() != encoded.item()


class Mixture(Model):
    """A two-component mixture, a class per row: c ~ Categorical(w), x | c ~ N(loc_c, 1)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2))
        self.locs = nn.Parameter(torch.tensor([-0.5, 0.5]))

    def forward(self, x):
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            pyro.sample("x", dist.Normal(self.locs[c], 1.0), obs=x)


def test_enumerated_class_matches_the_exact_posterior_of_the_fitted_mixture():
    c = (torch.rand(1000) < 0.7).long()
    x = torch.tensor([-2.0, 2.0])[c] + torch.randn(1000)
    model = Mixture()
    guide = Amortized(model, hidden_features=())  # logits linear in x: the exact family
    ppgen.fit_svi(model, guide, x, epochs=300, batch_size=None, lr=0.05, progress=False)
    test = torch.linspace(-4.0, 4.0, 9)
    with torch.no_grad():
        q = poutine.trace(guide).get_trace(test).nodes["c"]["fn"].probs
        joint = model.logits.log_softmax(-1) + dist.Normal(model.locs, 1.0).log_prob(test[:, None])
    assert model.locs.tolist() == pytest.approx([-2.0, 2.0], abs=0.1)  # a fitted model
    # the posterior of the fitted model; 0.02: the error of 300 steps (0.0001 after 900)
    assert q == pytest.approx(joint.softmax(-1), abs=0.02)


def test_an_enumerated_parent_gives_its_children_its_dimension():
    def model(x):  # a class and a number per row, both parents of x: z's inverse parents are x, c
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1) + 2 * c, 1.0), obs=x)

    x = torch.randn(5)
    guide = Amortized(model, x, hidden_features=(4,))
    assert [(s.name, s.inputs) for s in guide.sites] == [("c", ["*x"]), ("z", ["*x", "c"])]
    enumerated = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
    assert enumerated.nodes["c"]["value"].shape == (2, 1)
    assert enumerated.nodes["z"]["fn"].batch_shape == (2, 5)  # z given each value of c
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    assert torch.isfinite(loss)


def test_a_drawing_elbo_draws_discrete_sites_by_the_score_function():
    def model(x):
        with pyro.plate("rows", len(x)):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(c.double(), 0.3), obs=x)

    guide = Amortized(model, hidden_features=(8,))
    x = torch.tensor([0.0, 1.0, 2.0]).repeat(100)
    with pytest.warns(UserWarning, match=r"^Site 'c' of the guide is marked for enumeration, "
                      r"which elbo='trace' does not do: it is drawn, .* score function"):  # fmt: skip
        ppgen.fit_svi(model, guide, x, elbo="trace", epochs=30, batch_size=60, lr=0.03,
                      progress=False)  # fmt: skip
    assert guide.encode(torch.tensor([0.0, 1.0, 2.0]))["c"].tolist() == [0, 1, 2]


def markov(x):
    """A deep-Markov-like chain: z_t | z_{t-1} and x_t | z_t, sequences as rows of x."""
    with pyro.plate("rows", len(x)):
        z = x.new_zeros(len(x), 2)
        for t in range(x.shape[1]):
            z = pyro.sample(f"z{t}", dist.Normal(0.9 * z, 1.0).to_event(1))
            pyro.sample(f"x{t}", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1),
                        obs=x[:, t])  # fmt: skip


def test_repeated_sites_share_one_chain_of_networks(tmp_path):
    x = torch.randn(6, 4, 1)
    guide = Amortized(markov, x, hidden_features=(8,))
    # z_t's inverse parents: z_{t-1} and x_t, ..., x_3; one GRU over x3, ..., x0, one head
    assert guide.chain_specs == [{"members": ["z0", "z1", "z2", "z3"], "index": [0, 1, 2, 3],
                                  "sequence": ["x0", "x1", "x2", "x3"], "widths": [1, 2]}]  # fmt: skip
    assert list(guide.nets) == [] and list(guide.chains) == ["0"]
    expected = {(f"z{t}", f"z{t + 1}") for t in range(3)}  # among latents, as the inverse's
    assert set(ppgen.graph(guide, x).edges) == expected
    with torch.no_grad():  # z_0 reads the GRU's state after x_3, ..., x_0
        before = guide.encode(x)
        moved = x.clone()
        moved[:, 0] += 1.0
        after = guide.encode(moved)
    assert not torch.equal(before["z0"], after["z0"])
    ppgen.fit_svi(markov, guide, torch.randn(64, 4, 1), epochs=2, batch_size=16, progress=False)
    ppgen.save(guide, tmp_path / "chain.safetensors")
    loaded = ppgen.load(tmp_path / "chain.safetensors")
    assert loaded.chain_specs == guide.chain_specs
    assert all(torch.equal(loaded.encode(x)[k], v) for k, v in guide.encode(x).items())


def test_a_chain_reads_columns_in_the_dict_convention():
    def columns(n=1):  # markov's program, its observed sites given as columns
        with pyro.plate("rows", n):
            z = torch.zeros(n, 2)
            for t in range(4):
                z = pyro.sample(f"z{t}", dist.Normal(0.9 * z, 1.0).to_event(1))
                pyro.sample(f"x{t}", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1))

    data = {f"x{t}": torch.randn(6, 1) for t in range(4)}
    guide = Amortized(columns, n=6, data=data, hidden_features=(8,))
    assert [(c["sequence"], c["index"]) for c in guide.chain_specs] == [(list(data), None)]
    codes = guide.encode(n=6, data=data)
    columns_moved = {**data, "x3": data["x3"] + 1.0}  # x_3 is in every step's state
    moved = guide.encode(n=6, data=columns_moved)
    assert all(not torch.equal(codes[k], moved[k]) for k in codes)


def grouped(n=1, offset=False):
    """Group means mu (a plate of 3 groups), each row's group g, a per-row z and x | z; with
    `offset`, z also reads the sum of all of mu, so that it is no longer mu[g] alone."""
    with pyro.plate("groups", 3):
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("rows", n):
        g = pyro.sample("g", dist.Categorical(logits=torch.zeros(3)))
        z = pyro.sample("z", dist.Normal(mu[g] + (mu.sum() if offset else 0.0), 1.0))
        pyro.sample("x", dist.Normal(z, 0.5))


def test_a_global_indexed_by_a_rows_code_is_read_at_that_code(tmp_path):
    data = {"g": torch.tensor([0, 2, 1, 2, 0, 1]), "x": torch.randn(6)}
    guide = Amortized(grouped, n=6, data=data, hidden_features=(8,))
    z = guide.sites[-1]
    assert z.name == "z" and "mu" not in z.inputs and "mu[g]" in z.inputs
    assert guide.gathers == {"mu[g]": ["mu", "g", 0]}
    values = {"mu": torch.tensor([10.0, 20.0, 30.0]), "g": data["g"]}
    expected = torch.tensor([[10.0], [30], [20], [30], [10], [20]])
    assert torch.equal(_gathered(values, *guide.gathers["mu[g]"]), expected)
    ppgen.save(guide, tmp_path / "grouped.safetensors")
    loaded = ppgen.load(tmp_path / "grouped.safetensors")
    assert loaded.gathers == guide.gathers
    codes, again = guide.encode(n=6, data=data), loaded.encode(n=6, data=data)
    assert all(torch.equal(codes[k], again[k]) for k in codes)


def test_a_global_read_beyond_the_rows_code_stays_whole():
    data = {"g": torch.tensor([0, 2, 1, 2, 0, 1]), "x": torch.randn(6)}
    guide = Amortized(grouped, n=6, offset=True, data=data, hidden_features=(8,))
    assert guide.gathers == {} and "mu" in guide.sites[-1].inputs


def summed(x):  # one observation of z_1 + z_2: their posterior correlation is -0.8
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.5).to_event(1), obs=x)


def guide_covariance(guide, x):
    fn = poutine.trace(guide).get_trace(x).nodes["z"]["fn"]
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn.covariance_matrix if hasattr(fn, "cov_factor") else torch.diag_embed(fn.scale**2)


def test_a_low_rank_guide_matches_a_correlated_exact_posterior(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(512, 2).sum(-1, keepdim=True) + 0.5 * torch.randn(512, 1)
    ones = torch.ones(1, 2)
    exact = torch.linalg.inv(torch.eye(2) + ones.T @ ones / 0.25)  # [[5, -4], [-4, 5]] / 9
    errors = {}
    for rank in (0, 1):
        pyro.clear_param_store()
        torch.manual_seed(1)
        guide = Amortized(summed, hidden_features=(), rank=rank)
        ppgen.fit_svi(summed, guide, x, epochs=800, batch_size=None, lr=0.02, progress=False)
        with torch.no_grad():
            errors[rank] = (guide_covariance(guide, x[:8]) - exact).abs().max().item()
            mean = x[:8] @ ones / 0.25 @ exact
            assert torch.allclose(guide.encode(x[:8])["z"], mean, atol=0.05)
    assert errors[1] < 0.08 < 0.3 < errors[0]  # a diagonal Normal cannot hold the correlation
    ppgen.save(guide, tmp_path / "low_rank.safetensors")
    loaded = ppgen.load(tmp_path / "low_rank.safetensors")
    assert loaded.rank == 1
    with torch.no_grad():
        assert torch.equal(guide_covariance(loaded, x[:8]), guide_covariance(guide, x[:8]))


def test_rank_is_a_whole_number():
    with pytest.raises(ValueError, match="rank must be a whole number of 0 or more, not -1"):
        Amortized(summed, rank=-1)


def test_a_masked_latent_site_is_drawn_in_every_row_with_a_warning():
    def model(x, seen):  # x is missing where not seen: the site x_unobserved, masked where seen
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x, obs_mask=seen)

    with pytest.warns(UserWarning, match=r"^Site 'x_unobserved' is masked in the model .* "
                      r"draws the site in every row"):  # fmt: skip
        guide = Amortized(model, torch.zeros(3), torch.tensor([True, False, True]))
    assert [s.name for s in guide.sites] == ["x_unobserved"]


def test_errors_in_one_sentence():
    def observed_only(x):
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"^The program observed_only has no latent site .*fit_mle\.$"):
        Amortized(observed_only, torch.zeros(2))

    def counts(x):
        with pyro.plate("rows", len(x)):
            k = pyro.sample("k", dist.Poisson(3.0))
            pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"^Site 'k' is a Poisson latent .* cannot parameterise"):
        Amortized(counts, torch.zeros(2))

    def global_label(x):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"^Site 'c' is a Bernoulli latent outside the plate"):
        Amortized(global_label, torch.zeros(2))
    with pytest.raises(ValueError, match=r"^Amortized needs the rows it encodes"):
        Amortized(tensor_model)(n=3)


def test_vae_with_the_automatic_guide_takes_the_untraced_elbo():
    vae = VAE(4, 2, hidden=(8,))
    guide = Amortized(vae, hidden_features=(8,))
    x = torch.ones(3, 4)
    objective = ELBOObjective(vae, guide, "trace", 1, ["*data"], True, (x,), {})
    assert objective.prepare({"*data": x})  # equal to Pyro's ELBO on one draw


def test_labels_given_to_the_guide_are_refused_not_read_as_numbers():
    """fit_svi codes a categorical column by its categories (2, 0, 1: label 2 is code 0); the
    guide, given the column itself, read its labels as codes (label 2 as code 2), or raised."""
    import pandas as pd

    labels = pd.Series(pd.Categorical([0, 2, 1, 2, 0, 1] * 4, categories=[2, 0, 1]))
    data = {"g": labels, "x": torch.randn(24)}
    guide = Amortized(grouped, hidden_features=(8,))
    ppgen.fit_svi(grouped, guide, data, epochs=1, batch_size=12, progress=False)
    with pytest.raises(ValueError, match=r"^Column 'g' holds labels \(a pandas categorical or "
                       r"text column\), which the guide does not code"):  # fmt: skip
        guide.encode(n=24, data=data)
    with pytest.raises(ValueError, match=r"^Column 'g' holds labels"):
        guide.encode(n=24, data={**data, "g": labels.astype(str)})
    codes = {"g": torch.tensor(labels.cat.codes.tolist()), "x": data["x"]}
    assert guide.encode(n=24, data=codes)["z"].shape == (24,)


def test_a_support_whose_bijection_changes_the_event_shape_keeps_the_sites_shape():
    """A Cholesky factor of a correlation matrix is the image of a vector: the guide's Normal has
    one event dimension, not the site's two (it took the rows into the event, or raised)."""

    def rows(x):
        with pyro.plate("rows", len(x)):
            factor = pyro.sample("L", dist.LKJCholesky(2, 1.0))
            pyro.sample("x", dist.Normal(factor[..., 1, 0], 1.0), obs=x)

    def shared(x):
        factor = pyro.sample("L", dist.LKJCholesky(3, 1.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), scale_tril=factor), obs=x)

    for model, x, batch, event in [(rows, torch.randn(5), (5,), (2, 2)),
                                   (shared, torch.randn(5, 3), (), (3, 3))]:  # fmt: skip
        site = poutine.trace(Amortized(model, x)).get_trace(x).nodes["L"]
        assert (site["fn"].batch_shape, site["fn"].event_shape) == (batch, event)
        assert site["value"].shape == (*batch, *event)
        assert torch.isfinite(site["fn"].log_prob(site["value"])).all()


def test_binomial_sites_of_one_total_count_are_categories_and_varying_ones_are_refused():
    """A Binomial's support bound is a tensor (its total count, one per row): an observed count
    or a latent one raised torch's 'only one element tensors can be converted'."""

    def observed(n=1):
        with pyro.plate("rows", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Binomial(10, logits=z))

    data = {"x": torch.tensor([0.0, 3.0, 10.0, 7.0])}
    assert Amortized(observed, n=4, data=data).columns["x"][1] == 11  # one-hot, 0 ... 10

    def latent(x, total):
        with pyro.plate("rows", len(x)):
            k = pyro.sample("k", dist.Binomial(total, 0.5))
            pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    x = torch.randn(4)
    guide = Amortized(latent, x, torch.tensor(4.0))
    assert (guide.sites[0].kind, guide.sites[0].cardinality) == ("categorical", 5)
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        latent, guide, x, torch.tensor(4.0)
    )
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"^Site 'k' is a Binomial latent with a bound that "
                       r"varies by row, which Amortized cannot parameterise"):  # fmt: skip
        Amortized(latent, x, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def two_views(x, y):
    """z ~ N(0, 1), x | z ~ N(z, 1) and y | z ~ N(z, 1), both given as tensors: p(z | x, y) is
    N((x + y) / 3, 1/3)."""
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def test_every_argument_with_rows_is_read_in_the_tensor_convention():
    """The guide read the rows of the first argument alone: q(z | x) missed y, and its mean was
    x / 2-ish wherever y disagreed with x."""
    z = torch.randn(1000)
    x, y = z + torch.randn(1000), z + torch.randn(1000)
    guide = Amortized(two_views, hidden_features=())
    ppgen.fit_svi(two_views, guide, x, y, epochs=30, batch_size=100, lr=0.03, num_particles=4,
                  progress=False)  # fmt: skip
    test_x, test_y = torch.tensor([-2.0, 0.0, 1.0, 2.0]), torch.tensor([2.0, 1.0, -1.0, 2.0])
    # the noise of a constant-lr SVI fit: 0.08 on means whose posterior sd is 0.58
    assert guide.encode(test_x, test_y)["z"] == pytest.approx((test_x + test_y) / 3, abs=0.08)


def test_log_prob_repeats_every_argument_with_rows():
    """log_prob drew `num_samples` copies of x but not of y: torch's 'size of tensor a (12) must
    match the size of tensor b (3)'. With the exact posterior as guide each weight is p(x, y)."""

    def exact(x, y):
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal((x + y) / 3, (1 / 3) ** 0.5))

    x, y = torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([2.0, 1.0, -1.0])
    joint = dist.MultivariateNormal(torch.zeros(2), torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    log_p = ppgen.log_prob(two_views, x, y, guide=exact, num_samples=4)
    assert log_p == pytest.approx(joint.log_prob(torch.stack([x, y], -1)), abs=1e-9)
    keyword = ppgen.log_prob(lambda x, y: two_views(x, y), x, y=y, guide=exact, num_samples=4)
    assert keyword == pytest.approx(log_p, abs=1e-9)


def test_an_input_the_guide_reads_missing_from_a_call_is_named():
    """A call without an input the guide was built on raised a raw KeyError."""
    x, y = torch.randn(5), torch.randn(5)
    guide = Amortized(two_views, x, y)
    for args in [(x,), (x, y[:3])]:
        with pytest.raises(ValueError, match=r"^The guide reads the input '\*args\[1\]', which "
                           r"this call does not give"):  # fmt: skip
            guide.encode(*args)
    data = {"g": torch.tensor([0, 2, 1, 2, 0, 1]), "x": torch.randn(6)}
    guide = Amortized(grouped, n=6, data=data)
    with pytest.raises(ValueError, match=r"^The guide reads the input 'g', which this call"):
        guide.encode(n=6, data={"x": data["x"]})


def test_a_discrete_site_with_event_dimensions_is_drawn_with_a_warning():
    """Pyro cannot enumerate a vector of bits (the product of their values): marked for it, the
    fit raised 'Enumeration over cartesian product is not implemented'."""

    def bits(x):
        with pyro.plate("rows", len(x)):
            b = pyro.sample("b", dist.Bernoulli(torch.full((3,), 0.5)).to_event(1))
            pyro.sample("x", dist.Normal(b.sum(-1), 0.3), obs=x)

    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).repeat(10)
    with pytest.warns(UserWarning, match=r"^Site 'b' is a discrete latent with event dimensions, "
                      r"which Pyro cannot enumerate .* score function"):  # fmt: skip
        guide = Amortized(bits, x, hidden_features=(8,))
    assert "enumerate" not in poutine.trace(guide).get_trace(x).nodes["b"]["infer"]
    fit = ppgen.fit_svi(bits, guide, x, epochs=2, batch_size=20, progress=False)
    assert math.isfinite(fit.history[-1]["train"])


def test_an_observed_site_outside_the_rows_does_not_hide_their_plate():
    """A global pyro.factor (a penalty on a global) is observed outside the plate of the rows:
    the guide found no plate of rows and gave each row's z a parameter of its own position."""

    def penalised(x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.factor("penalty", -s)
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    guide = Amortized(penalised, torch.randn(6))
    assert guide.plate == "rows"
    assert [(s.name, s.axis) for s in guide.sites] == [("s", None), ("z", 0)]
    assert list(guide.nets) == ["z"]


def test_a_support_with_bounds_that_vary_by_row_is_refused():
    """z ~ Uniform(0, t) with t a column: the guide fixed the bijection onto the first call's
    bounds, so later rows drew z outside (0, t), or other batch sizes raised torch's broadcast error."""

    def bounded(x, t):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Uniform(torch.zeros_like(t), t))
            pyro.sample("x", dist.Normal(z, 0.1), obs=x)

    t = torch.tensor([1.0, 2.0, 5.0])
    with pytest.raises(ValueError, match=r"^Site 'z' has a support whose bounds vary by row, "
                       r"which Amortized cannot follow"):  # fmt: skip
        Amortized(bounded, t / 2, t)

    def fixed(x):  # bounds along the event, one for all rows: kept
        with pyro.plate("rows", len(x)):
            v = pyro.sample("v", dist.Uniform(torch.zeros(2), torch.tensor([1.0, 5.0])).to_event(1))
            pyro.sample("x", dist.Normal(v.sum(-1), 1.0), obs=x)

    v = Amortized(fixed, torch.randn(3)).encode(torch.randn(7))["v"]
    assert v.shape == (7, 2) and (v > 0).all() and (v < torch.tensor([1.0, 5.0])).all()
