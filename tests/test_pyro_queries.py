"""The queries and the graph of Pyro programs, checked against Pyro's own trace of the same program."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# ---- sites observed through pyro.condition, and pyro.factor ---------------------------------


def penalised(n=1):
    """A global latent observed through pyro.condition, a factor per row and a global one."""
    m = pyro.param("m", torch.tensor(0.0))
    mu = pyro.sample("mu", dist.Normal(m, 1.0))
    with pyro.plate("rows", n):
        x = pyro.sample("x", dist.Normal(mu, 1.0))
        pyro.factor("row_penalty", -0.1 * x.abs())
    pyro.factor("prior_on_m", -((m - 2.0) ** 2))


def test_condition_and_factor_count_in_log_prob_as_in_pyros_trace():
    pyro.clear_param_store()
    conditioned = pyro.condition(penalised, data={"mu": torch.tensor(0.5)})
    x = torch.randn(7)
    trace = poutine.trace(pyro.condition(conditioned, data={"x": x})).get_trace(n=7)
    for batch_size in (7, 3):  # the global terms count once over the data, whatever the batches
        terms = ppgen.log_prob(conditioned, {"x": x}, per_node=True, batch_size=batch_size)
        assert sorted(terms) == ["mu", "prior_on_m", "row_penalty", "x"]
        total = sum(terms.values()).sum()
        assert total.item() == pytest.approx(trace.log_prob_sum().item(), abs=1e-10)
        assert terms["row_penalty"] == pytest.approx(-0.1 * x.abs(), abs=1e-12)


def test_a_global_plate_the_size_of_a_batch_is_not_the_plate_of_the_rows():
    # w in a plate of 3, outside the rows': a batch of 3 rows took w's 3 terms for its rows,
    # so each batch counted all of w's prior again (-28.03 for 6 rows, not Pyro's -22.65)
    def model(n=1):
        with pyro.plate("features", 3):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(w.sum(), 1.0))

    conditioned = pyro.condition(model, data={"w": torch.tensor([0.5, -1.0, 2.0])})
    x = torch.arange(6.0)
    trace = poutine.trace(pyro.condition(conditioned, data={"x": x})).get_trace(n=6)
    for batch_size in (6, 3):
        terms = ppgen.log_prob(conditioned, {"x": x}, per_node=True, batch_size=batch_size)
        assert sum(terms.values()).sum().item() == pytest.approx(trace.log_prob_sum().item(), abs=1e-5)
        assert torch.allclose(terms["w"], terms["w"][0].expand(6))  # a share of w in each row
    # sample: w in its plate of 2 is global too, drawn once for all rows, not once a batch
    pyro.set_rng_seed(0)
    rows = ppgen.sample(model, 10, batch_size=2)
    assert rows["w"].shape == (3,) and rows["x"].shape == (10,)

    def pair(n=1):
        with pyro.plate("features", 2):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(w.sum(), 1e-3))

    rows = ppgen.sample(pair, 10, batch_size=4)  # a batch of 2 rows took the plate of 2 for theirs
    assert rows["w"].shape == (2,)
    torch.testing.assert_close(rows["x"], rows["w"].sum().expand(10), atol=0.01, rtol=0)


def test_fit_mle_maximises_the_terms_pyro_counts():
    """log p = log N(0.5 | m, 1) - (m - 2)² + const in m: the maximum is m = 1.5, exactly."""
    pyro.clear_param_store()
    conditioned = pyro.condition(penalised, data={"mu": torch.tensor(0.5)})
    fit = ppgen.fit_mle(
        conditioned, {"x": torch.randn(40)}, epochs=100, batch_size=20, lr=0.1, progress=False
    )
    assert pyro.param("m").item() == pytest.approx(1.5, abs=1e-3)
    assert {"train/mu", "train/prior_on_m", "train/row_penalty"} <= set(fit.history[-1])


def test_graph_and_factorization_show_a_factor_as_a_factor():
    g = ppgen.graph(pyro.condition(penalised, data={"mu": torch.tensor(0.5)}), n=3)
    _, sites = pyro_sites(pyro.condition(penalised, data={"mu": torch.tensor(0.5)}), n=3)
    assert list(g.nodes) == list(sites)
    assert {v: g.nodes[v]["observed"] for v in g} == {
        v: s["is_observed"] for v, s in sites.items()
    }
    assert {v for v in g if g.nodes[v]["factor"]} == {"row_penalty", "prior_on_m"}
    assert ppgen.factorization(penalised) == (
        "p(mu, x) ∝ p(mu) p(x | mu) exp(row_penalty(x)) exp(prior_on_m)"
    )


# ---- programs in Pyro's style: the data as arguments ------------------------------------------


def regression(x, y=None):
    w, b = pyro.param("w", torch.tensor(0.0)), pyro.param("b", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal(w * x + b, scale), obs=y)


def test_log_prob_of_a_pyro_style_program_is_pyros_log_prob_sum():
    pyro.clear_param_store()
    x = torch.randn(30)
    y = 3 * x + 1 + 0.5 * torch.randn(30)
    expected = poutine.trace(regression).get_trace(x, y).log_prob_sum().item()
    assert ppgen.log_prob(regression, x, y).item() == pytest.approx(expected, abs=1e-10)
    assert ppgen.log_prob(regression, None, x, y=y).item() == pytest.approx(expected, abs=1e-10)
    assert list(ppgen.log_prob(regression, x, y, per_node=True)) == ["y"]


def test_a_site_built_not_to_validate_takes_values_outside_its_support_as_pyro_does():
    def grey(x):  # examples/vae's Bernoulli(..., validate_args=False) on grey pixels
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(torch.full((3,), 0.2), validate_args=False)
                        .to_event(1), obs=x)  # fmt: skip

    def grey_rows(n=1):  # ppgen's convention: the rows condition the site
        with pyro.plate("data", n):
            pyro.sample("x", dist.Bernoulli(torch.full((3,), 0.2), validate_args=False)
                        .to_event(1))  # fmt: skip

    x = torch.tensor([[0.5, 0.25, 1.0], [0.0, 0.75, 0.5]])
    expected = (x * math.log(0.2) + (1 - x) * math.log(0.8)).sum(-1)  # each row's
    assert ppgen.log_prob(grey, x).item() == pytest.approx(expected.sum().item(), abs=1e-5)
    assert torch.allclose(ppgen.log_prob(grey_rows, {"x": x}), expected, atol=1e-5)
    with pytest.raises(ValueError, match="outside the support"):  # validated: refused
        ppgen.log_prob(lambda x: pyro.sample("x", dist.Bernoulli(0.2).expand([2, 3]), obs=x), x)


def test_fit_mle_of_a_pyro_style_program_is_least_squares():
    pyro.clear_param_store()
    x = torch.randn(50)
    y = 3 * x + 1 + 0.5 * torch.randn(50)
    fit = ppgen.fit_mle(regression, x, y, epochs=500, lr=0.1, progress=False)
    design = torch.stack([x, torch.ones(50)], 1)
    coef = torch.linalg.lstsq(design, y[:, None]).solution.squeeze(1)
    sigma = (y - design @ coef).pow(2).mean().sqrt()
    fitted = [pyro.param(name).item() for name in ("w", "b", "scale")]
    assert fitted == pytest.approx([*coef.tolist(), sigma.item()], abs=1e-3)
    log_lik = poutine.trace(regression).get_trace(x, y).log_prob_sum().item()
    assert fit.history[-1]["train"] == pytest.approx(log_lik / 50, abs=1e-6)


def test_sample_of_a_pyro_style_program_stacks_its_runs():
    pyro.clear_param_store()
    rows = ppgen.sample(regression, 4, torch.randn(6))
    assert list(rows) == ["y"] and rows["y"].shape == (4, 6)
    assert not torch.equal(rows["y"][0], rows["y"][1])


def test_sample_of_a_pyro_style_program_against_predictive():
    def model(x=None):  # mu ~ N(0, 1), x_i | mu ~ N(mu, 1): var x_i = 2, cov(x_i, x_j) = 1
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 3):
            pyro.deterministic("twice", 2 * mu)
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    pyro.set_rng_seed(0)
    rows = ppgen.sample(model, 500)
    assert {k: v.shape for k, v in rows.items()} == {"mu": (500, 1), "x": (500, 3),
                                                     "twice": (500,)}  # fmt: skip
    cov = torch.cov(rows["x"].T)  # standard errors ~0.13 on the variances, 0.1 on covariances
    torch.testing.assert_close(cov, torch.ones(3, 3) + torch.eye(3), atol=0.4, rtol=0)
    torch.testing.assert_close(rows["twice"], 2 * rows["mu"][:, 0])
    pyro.set_rng_seed(1)  # Predictive's own draws: its shapes, sites and values
    draws = pyro.infer.Predictive(model, num_samples=5)()
    pyro.set_rng_seed(1)
    rows = ppgen.sample(model, 5)
    assert list(rows) == list(draws) and all(torch.equal(rows[k], draws[k]) for k in draws)
    x = torch.tensor([0.5, -1.0, 2.0])  # observed: returned as given, once a run
    assert torch.equal(ppgen.sample(model, 2, x)["x"], x.expand(2, 3))

    def one(x=None):  # a global site, (n, 1) as Predictive pads it, is one number a row
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("prior", -(mu**2))  # no values: not a column
        with pyro.plate("rows", 1):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    pyro.set_rng_seed(2)
    frame = ppgen.sample(one, 4, as_frame=True)
    pyro.set_rng_seed(2)
    draws = pyro.infer.Predictive(one, num_samples=4)()
    assert list(frame.columns) == ["mu", "x"] and draws["prior"].shape == (4, 1, 0)
    assert frame["mu"].tolist() == draws["mu"].reshape(4).tolist()
    with pytest.raises(ValueError, match=r"^Site 'x' has values of shape \(4, 3\); as_frame"):
        ppgen.sample(model, 4, as_frame=True)


def test_a_forward_decorated_by_a_pyro_handler_keeps_its_signature():
    # config_enumerate binds forward as a partial of (*args, **kwargs): read through to (x)
    class Regression(pyro.nn.PyroModule):
        @pyro.infer.config_enumerate
        def forward(self, x):
            with pyro.plate("rows", len(x)):
                pyro.sample("y", dist.Normal(0.5 * x, 1.0), obs=x)

    model, x = Regression(), torch.tensor([0.5, -1.0, 2.0])
    assert not ppgen.density.takes_rows(model)
    expected = poutine.trace(model).get_trace(x).log_prob_sum()
    assert ppgen.log_prob(model, x).item() == pytest.approx(expected.item(), abs=1e-6)
    assert ppgen.sample(model, 2, x)["y"].shape == (2, 3)


def test_subsampling_plate_scales_as_in_pyros_trace():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.3))
        with pyro.plate("data", len(x), subsample_size=4) as index:
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x[index])

    pyro.clear_param_store()
    x = torch.randn(10)
    pyro.set_rng_seed(3)
    ours = ppgen.log_prob(model, x)
    pyro.set_rng_seed(3)
    assert ours.item() == pytest.approx(
        poutine.trace(model).get_trace(x).log_prob_sum().item(), abs=1e-10
    )
    assert ppgen.graph(model, x).graph["plates"] == {"data": 10}


# ---- integer data: the program indexes with them ---------------------------------------------


def lda(words):
    """Pyro's LDA idiom, its topic of each document observed: words index nothing but their
    Categorical, the topics index the word table."""
    table = pyro.param("table", torch.ones(3, 6) / 6, constraint=dist.constraints.simplex)
    with pyro.plate("documents", words.shape[0], dim=-2):
        topic = pyro.sample("topic", dist.Categorical(torch.ones(3) / 3), obs=words[:, :1] % 3)
        with pyro.plate("words", words.shape[1], dim=-1):
            pyro.sample("word", dist.Categorical(table[topic]), obs=words)


def test_integer_data_index_the_program_in_graph_log_prob_and_fit_mle():
    pyro.clear_param_store()
    words = torch.randint(0, 6, (8, 5))
    expected = poutine.trace(lda).get_trace(words).log_prob_sum().item()
    assert ppgen.log_prob(lda, words).item() == pytest.approx(expected, abs=1e-10)
    g = ppgen.graph(lda, words)
    assert [g.nodes[v]["distribution"] for v in g] == ["Categorical", "Categorical"]
    assert g.graph["plates"] == {"documents": 8, "words": 5}
    ppgen.fit_mle(lda, words, epochs=400, lr=0.05, progress=False)
    topic = (words[:, 0] % 3)[:, None].expand(-1, 5)  # the word frequencies of each topic
    counts = torch.zeros(3, 6).index_put_(
        (topic.reshape(-1), words.reshape(-1)), torch.ones(40), accumulate=True
    )
    seen = counts.sum(1) > 0
    frequencies = counts[seen] / counts[seen].sum(1, keepdim=True)
    assert torch.allclose(pyro.param("table")[seen], frequencies, atol=2e-3)


def test_integer_rows_stay_integers_in_fit_svi_and_log_prob_with_a_guide():
    """An HMM-like mixture whose observed states index its tables; the guide is the exact
    posterior, so every importance weight is log p(x) of the row."""
    prior = torch.tensor([0.2, 0.3, 0.5])
    emit = torch.softmax(torch.randn(3, 5), -1)

    def model(states):
        with pyro.plate("sequences", len(states)):
            z = pyro.sample("z", dist.Categorical(prior))
            pyro.sample("first", dist.Categorical(emit[z]), obs=states[:, 0])
            pyro.sample("second", dist.Categorical(emit[states[:, 0] % 3]), obs=states[:, 1])

    def guide(states):
        posterior = prior[:, None] * emit  # p(z, first), a column per first state
        with pyro.plate("sequences", len(states)):
            pyro.sample("z", dist.Categorical((posterior / posterior.sum(0)).T[states[:, 0]]))

    states = torch.randint(0, 5, (12, 2))
    exact = (prior @ emit)[states[:, 0]].log() + emit[states[:, 0] % 3, states[:, 1]].log()
    ours = ppgen.log_prob(model, states, guide=guide, num_samples=3)
    assert torch.allclose(ours, exact, atol=1e-10)
    pyro.clear_param_store()

    def learned(states):
        bias = pyro.param("bias", torch.zeros(5))
        with pyro.plate("sequences", len(states)):
            pyro.sample("first", dist.Categorical(logits=bias), obs=states[:, 0])
            pyro.sample("second", dist.Categorical(logits=bias), obs=states[:, 1])

    fit = ppgen.fit_svi(
        learned, lambda states: None, states, epochs=2, batch_size=12, progress=False
    )
    assert len(fit.history) == 2


# ---- FitResult.guide: the posterior predictive ---------------------------------------------


def test_fit_guide_is_the_fitted_auto_guide_for_predictive():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    pyro.clear_param_store()
    x = torch.randn(20) + 1.0
    state = torch.get_rng_state()
    fit = ppgen.fit_svi(
        model, "auto_normal", x, epochs=200, batch_size=20, lr=0.05, progress=False
    )
    assert isinstance(fit.guide, pyro.infer.autoguide.AutoNormal)
    fitted = fit.guide.locs.mu.item()
    pyro.clear_param_store()  # the same steps by Pyro's SVI, on the same random stream
    torch.set_rng_state(state)
    svi_guide = pyro.infer.autoguide.AutoNormal(model)
    svi = pyro.infer.SVI(model, svi_guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    for _ in range(200):
        svi.step(x)
    assert fitted == pytest.approx(svi_guide.locs.mu.item(), abs=1e-6)
    predictive = pyro.infer.Predictive(model, guide=fit.guide, num_samples=4000, parallel=True)
    draws = predictive(x)
    assert draws["x"].shape == (4000, 20)
    loc, scale = fit.guide.locs.mu.item(), fit.guide.scales.mu.item()
    assert loc == pytest.approx(x.sum().item() / 21, abs=0.3)  # the posterior mean, noisily
    # 5 standard errors: fails once in about 1.7 million runs
    assert draws["mu"].mean().item() == pytest.approx(loc, abs=5 * scale / 4000**0.5)


# ---- programs in the idioms of Pyro's examples: graph and log_prob against Pyro's trace --------


def eight_schools(sigma):  # examples/eight_schools: no plate, conditioned from outside
    eta = pyro.sample("eta", dist.Normal(torch.zeros(8), torch.ones(8)))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
    tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))
    return pyro.sample("obs", dist.Normal(mu + tau * eta, sigma))


def coin(data):  # the SVI tutorial, part I: a site per flip, in a Python loop
    fairness = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    for i in range(len(data)):
        pyro.sample(f"obs_{i}", dist.Bernoulli(fairness), obs=data[i])


def baseball(at_bats, hits):  # examples/baseball: partial pooling
    phi = pyro.sample("phi", dist.Uniform(0.0, 1.0))
    kappa = pyro.sample("kappa", dist.Pareto(1.0, 1.5))
    with pyro.plate("num_players", len(at_bats)):
        theta = pyro.sample("theta", dist.Beta(phi * kappa, (1 - phi) * kappa))
        return pyro.sample("obs", dist.Binomial(at_bats, probs=theta), obs=hits)


def rendering(data):  # the model-rendering tutorial
    m = pyro.sample("m", dist.Normal(0.0, 1.0))
    sd = pyro.sample("sd", dist.LogNormal(m, 1.0))
    with pyro.plate("N", len(data)):
        pyro.sample("obs", dist.Normal(m, sd), obs=data)


def markov_chain(states):  # an HMM's states observed: pyro.markov, integer data as indices
    transition = pyro.param("transition", torch.eye(3) * 0.5 + 1 / 6)
    with pyro.plate("sequences", len(states)):
        state = states[:, 0]
        pyro.sample("state_0", dist.Categorical(torch.ones(3) / 3), obs=state)
        for t in pyro.markov(range(1, states.shape[1])):
            state = pyro.sample(
                f"state_{t}", dist.Categorical(transition[state]), obs=states[:, t]
            )


class BayesianRegression(pyro.nn.PyroModule):  # the Bayesian regression tutorial
    def __init__(self):
        super().__init__()
        self.linear = pyro.nn.PyroModule[torch.nn.Linear](2, 1)
        self.linear.weight = pyro.nn.PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
        self.linear.bias = pyro.nn.PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, sigma), obs=y)


def zero_inflated(counts):  # a ZeroInflatedNegativeBinomial in a subsampled plate
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    with pyro.plate("cells", len(counts), subsample_size=3) as index:
        gate = pyro.sample("gate", dist.Beta(1.0, 3.0))
        likelihood = dist.ZeroInflatedNegativeBinomial(rate, logits=torch.zeros(3), gate=gate)
        pyro.sample("count", likelihood, obs=counts[index])


def idioms() -> dict:
    """Each program, its arguments, values of its latent sites and the families it writes
    (built in the tests' float64)."""
    return {
        "eight_schools": (
            poutine.condition(
                eight_schools, data={"obs": torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])}
            ),
            (torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18]),),
            {
                "eta": torch.linspace(-1, 1, 8),
                "mu": torch.tensor([4.0]),
                "tau": torch.tensor([3.0]),
            },
            {"eta": "Normal", "mu": "Normal", "tau": "HalfCauchy", "obs": "Normal"},
        ),
        "coin": (
            coin,
            (torch.tensor([1.0, 0.0, 1.0, 1.0]),),
            {"latent_fairness": torch.tensor(0.6)},
            {"latent_fairness": "Beta", **{f"obs_{i}": "Bernoulli" for i in range(4)}},
        ),
        "baseball": (
            baseball,
            (torch.tensor([45.0, 40, 50]), torch.tensor([18.0, 9, 14])),
            {
                "phi": torch.tensor(0.3),
                "kappa": torch.tensor(4.0),
                "theta": torch.tensor([0.3, 0.2, 0.25]),
            },
            {"phi": "Uniform", "kappa": "Pareto", "theta": "Beta", "obs": "Binomial"},
        ),
        "rendering": (
            rendering,
            (torch.tensor([0.1, -0.4, 1.2]),),
            {"m": torch.tensor(0.2), "sd": torch.tensor(0.8)},
            {"m": "Normal", "sd": "LogNormal", "obs": "Normal"},
        ),
        "markov_chain": (
            markov_chain,
            (torch.tensor([[0, 1, 1, 2], [2, 2, 0, 1]]),),
            {},
            {f"state_{t}": "Categorical" for t in range(4)},
        ),
        "bayesian_regression": (
            BayesianRegression(),
            (torch.randn(5, 2), torch.randn(5)),
            {
                "sigma": torch.tensor(1.3),
                "linear.weight": torch.tensor([[0.5, -1.0]]),
                "linear.bias": torch.tensor([0.2]),
            },  # fmt: skip
            {
                "linear.weight": "Normal",
                "linear.bias": "Normal",
                "sigma": "Uniform",
                "obs": "Normal",
            },
        ),
        "zero_inflated": (
            zero_inflated,
            (torch.tensor([0.0, 3, 0, 1, 5, 2]),),
            {"rate": torch.tensor(1.5), "gate": torch.tensor([0.2, 0.5, 0.1])},
            {"rate": "Gamma", "gate": "Beta", "count": "ZeroInflatedNegativeBinomial"},
        ),
    }


IDIOMS = list(idioms())


@pytest.mark.parametrize("name", IDIOMS)
def test_graph_of_pyro_idioms_agrees_with_pyros_trace(name):
    model, args, _, families = idioms()[name]
    g = ppgen.graph(model, *args)
    _, sites = pyro_sites(model, *args)
    assert list(g.nodes) == list(sites)
    assert {v: g.nodes[v]["observed"] for v in g} == {
        v: s["is_observed"] for v, s in sites.items()
    }
    assert {v: g.nodes[v]["distribution"] for v in g} == families
    frames = {f for s in sites.values() for f in s["cond_indep_stack"]}
    assert g.graph["plates"] == {f.name: f.full_size for f in frames}
    for v, site in sites.items():
        assert g.nodes[v]["plates"] == tuple(f.name for f in site["cond_indep_stack"])


@pytest.mark.parametrize("name", IDIOMS)
def test_log_prob_of_pyro_idioms_is_pyros_log_prob_sum(name):
    model, args, latent, _ = idioms()[name]
    pyro.set_rng_seed(1)  # the same subsample, where the program draws one
    ours = ppgen.log_prob(model, latent, *args)
    pyro.set_rng_seed(1)
    trace = poutine.trace(poutine.condition(model, data=latent)).get_trace(*args)
    assert ours.item() == pytest.approx(trace.log_prob_sum().item(), abs=1e-9)


# ---- random programs built from these idioms: ppgen.log_prob against Pyro's trace --------------

FAMILIES = {  # a family, from a real number h per row (a parent's, or a global's)
    "Normal": lambda h: dist.Normal(h, 1.5),
    "LogNormal": lambda h: dist.LogNormal(h, 0.7),
    "Bernoulli": lambda h: dist.Bernoulli(logits=h),
    "Categorical": lambda h: dist.Categorical(logits=torch.stack([h, -h, 0.3 * h], -1)),
    "Poisson": lambda h: dist.Poisson(torch.exp(h / 2)),
    "Gamma": lambda h: dist.Gamma(torch.nn.functional.softplus(h) + 0.5, 1.0),
}
EMBEDDING = torch.tensor([0.4, -1.1, 2.0])  # a Categorical parent indexes it (integer data)


def random_program(families, chain, factor, vector):
    """`model(n)`: a conditioned global `g`, then a site per family in the plate of the rows,
    each reading `g` and (with `chain`) the previous site's value; a factor per row or global."""

    def model(n=1):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n, dim=-2 if vector else -1):
            previous = None
            for i, family in enumerate(families):
                h = g.expand(n, 1) if vector else g.expand(n)
                if chain and previous is not None:
                    if previous.is_floating_point():
                        h = h + 0.3 * previous.clamp(-3, 3)
                    else:
                        h = h + EMBEDDING[previous]
                d = FAMILIES[family](h)
                previous = pyro.sample(f"x{i}", d)
            if factor == "row":
                pyro.factor("row_factor", -0.1 * previous.double().abs())
        if factor == "global":
            pyro.factor("global_factor", -(g**2))

    return model


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    families=st.lists(st.sampled_from(sorted(FAMILIES)), min_size=1, max_size=3),
    chain=st.booleans(),
    factor=st.sampled_from([None, "row", "global"]),
    vector=st.booleans(),
    rows=st.integers(1, 6),
    batch_size=st.integers(1, 6),
    pyro_style=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_log_prob_of_random_idiom_programs_is_pyros_log_prob_sum(
    families, chain, factor, vector, rows, batch_size, pyro_style, seed
):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = random_program(families, chain, factor, vector)
        trace = poutine.trace(model).get_trace(n=rows)
        data = {f"x{i}": trace.nodes[f"x{i}"]["value"] for i in range(len(families))}
        g = {"g": trace.nodes["g"]["value"]}  # observed through pyro.condition
        expected = poutine.trace(poutine.condition(model, data={**g, **data})).get_trace(n=rows)
        if pyro_style:  # the same program, its data as arguments (the global among them)

            def program(*values):
                observed = dict(zip(["g", *data], values, strict=True))
                return poutine.condition(model, data=observed)(n=rows)

            ours = ppgen.log_prob(program, g["g"], *data.values())
        else:
            conditioned = pyro.condition(model, data=g)
            ours = ppgen.log_prob(conditioned, data, batch_size=batch_size).sum()
    assert ours.item() == pytest.approx(expected.log_prob_sum().item(), rel=1e-9, abs=1e-9)
