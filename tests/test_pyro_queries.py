"""The queries and the graph of Pyro programs, checked against Pyro's own trace of the same program."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate

import ppgen
from ppgen.nn import Conditional, LinearGaussian, MixtureOfGaussians, Root


def pyro_sites(model, *args, **kwargs):
    """Pyro's trace of `model`: its sample sites (no plate's subsample site)."""
    trace = poutine.trace(model).get_trace(*args, **kwargs)
    return trace, {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not poutine.util.site_is_subsample(site)
    }


# ---- graph attributes: the distribution written, the plates' full sizes --------------------


def wrappers(n=1):
    a = pyro.sample("a", dist.LogNormal(0.0, 1.0))
    b = pyro.sample("b", dist.HalfCauchy(1.0))
    c = pyro.sample("c", dist.Pareto(1.0, 2.0))
    with pyro.plate("data", 10, subsample_size=5):
        rate = torch.ones(5) * (a + b + c)
        pyro.sample(
            "d", dist.ZeroInflatedNegativeBinomial(rate, logits=rate, gate=0.2 * rate / rate)
        )
        pyro.sample("e", dist.LogNormal(0.0, 1.0).expand([5, 3]).to_event(1).mask(False))


def test_graph_names_the_distribution_written_and_full_plate_sizes():
    g = ppgen.graph(wrappers)
    written = {"a": "LogNormal", "b": "HalfCauchy", "c": "Pareto",
               "d": "ZeroInflatedNegativeBinomial", "e": "LogNormal"}  # fmt: skip
    assert {v: g.nodes[v]["distribution"] for v in g} == written
    _, sites = pyro_sites(wrappers)
    assert list(g.nodes) == list(sites)
    frame = sites["d"]["cond_indep_stack"][0]
    assert (frame.full_size, frame.size) == (10, 5)  # Pyro's own plate
    assert g.graph["plates"] == {"data": 10}
    assert g.graph["subsample_sizes"] == {"data": 5}
    assert [g.nodes[v]["plates"] for v in g] == [(), (), (), ("data",), ("data",)]
    assert g.nodes["e"]["event_shape"] == (3,)


def test_plate_without_size_has_none_and_no_false_global_warning():
    """The SS-VAE / CVAE idiom: `pyro.plate("data")` without a size."""
    pyro.clear_param_store()

    def model(x):
        scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), scale))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data"):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    g = ppgen.graph(model, torch.zeros(3))
    assert g.graph["plates"] == {"data": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning fails here
        ppgen.fit_svi(model, guide, torch.randn(40), epochs=1, batch_size=10, progress=False)


# ---- conditionals broadcast their parents ----------------------------------------------------


@pytest.mark.parametrize(
    "node",
    [
        Conditional(dist.Normal, in_features=2, hidden=(4,)),
        LinearGaussian(2),
        MixtureOfGaussians(2, components=2, hidden=(4,)),
    ],
)
def test_conditionals_broadcast_their_parents_as_torch(node):
    node = node.double()
    a, b = torch.randn(5), torch.tensor([1.5])
    d = node(a, b)
    assert d.batch_shape == (5,)
    expected = node(a, b.expand(5))
    x = torch.randn(5)
    assert torch.allclose(d.log_prob(x), expected.log_prob(x), atol=1e-12)
    assert node(torch.randn(3, 1), a).batch_shape == (3, 5)  # an enumeration dimension


def test_vector_and_one_hot_parents_broadcast_over_their_batch():
    node = Conditional(dist.Normal, in_features=5, parent_cardinalities=[3, None], hidden=(4,))
    y, v = torch.tensor([[0], [2]]), torch.randn(4, 2)  # y enumerated (2, 1); v rows of 2 features
    d = node.double()(y, v)
    assert d.batch_shape == (2, 4)
    one = node(torch.full((4,), 2), v)
    assert torch.allclose(d.loc[1], one.loc, atol=1e-12)


def test_enumeration_through_ppgen_conditionals_is_the_exact_marginal():
    """TraceEnum_ELBO with an empty guide is minus log p(x, w), the label summed out."""
    y_node = Root(dist.Categorical, cardinality=3)
    x_node = Conditional(dist.Normal, in_features=3, parent_cardinalities=[3], hidden=(4,))
    w_node = Conditional(dist.Normal, in_features=4, parent_cardinalities=[3, None], hidden=(4,))
    x, w = torch.randn(6), torch.randn(6)

    @config_enumerate
    def model():
        with pyro.plate("rows", 6):
            y = pyro.sample("y", y_node())
            pyro.sample("w", w_node(y, pyro.sample("x", x_node(y), obs=x)), obs=w)

    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, lambda: None)
    with torch.no_grad():
        joint = [
            y_node().log_prob(torch.tensor(k))
            + x_node(torch.full((6,), k)).log_prob(x)
            + w_node(torch.full((6,), k), x).log_prob(w)
            for k in range(3)
        ]
    assert loss == pytest.approx(-torch.stack(joint).logsumexp(0).sum().item(), abs=1e-6)
