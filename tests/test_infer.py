import warnings

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

import ppgen
from ppgen.datasets import relay_race, relay_race_program
from ppgen.demo import Relay
from ppgen.infer import ExactLogLikelihood
from ppgen.nn import Root


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_linear_gaussian_mle_is_least_squares():
    n = 500
    a = torch.randn(n)
    c = torch.randint(0, 3, (n,))
    y = 1.5 * a - torch.tensor([0.0, 2.0, -1.0])[c] + 0.3 * torch.randn(n)
    model = ppgen.dag(
        [("a", "y"), ("c", "y")],
        kinds={"y": "linear_gaussian", "c": "categorical"},
        cardinalities={"c": 3},
    )
    fit = ppgen.fit_mle(model, {"a": a, "c": c, "y": y}, progress=False)
    assert fit.closed_form == ["a", "c", "y"]
    design = torch.cat([a[:, None], F.one_hot(c, 3).double(), torch.ones(n, 1)], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution
    fitted = model.conditionals[model.nodes.index("y")]
    prediction = fitted(a, c)
    assert torch.allclose(prediction.loc, (design @ coef).squeeze(-1), atol=1e-9)
    sigma = (y - prediction.loc).pow(2).mean().sqrt()
    assert prediction.scale[0].item() == pytest.approx(sigma.item(), abs=1e-9)
    root = model.conditionals[model.nodes.index("a")]()
    assert root.loc.item() == pytest.approx(a.mean().item(), abs=1e-12)
    assert root.scale.item() == pytest.approx(a.std(unbiased=False).item(), abs=1e-9)


def test_tabular_mle_is_counts():
    n = 400
    a = torch.randint(0, 3, (n,))
    b = torch.bernoulli(torch.full((n,), 0.3))
    x = (a + b.long() + torch.randint(0, 2, (n,))) % 4
    model = ppgen.dag(
        [("a", "x"), ("b", "x")],
        kinds={"a": "tabular", "b": "bernoulli", "x": "tabular"},
        cardinalities={"a": 3, "x": 4},
    )
    fit = ppgen.fit_mle(model, {"a": a, "b": b, "x": x}, progress=False)
    assert fit.closed_form == ["a", "b", "x"] and fit.seconds > 0  # no loop, yet timed
    table = model.conditionals[model.nodes.index("x")].logits.exp()
    for i in range(3):
        for j in range(2):
            rows = (a == i) & (b == j)
            for k in range(4):
                expected = ((x == k) & rows).sum() / rows.sum()
                assert table[i, j, k].item() == pytest.approx(expected.item(), abs=1e-12)
    root = model.conditionals[model.nodes.index("a")].logits.exp()
    assert torch.allclose(root, torch.bincount(a, minlength=3) / n, atol=1e-12)
    assert model.conditionals[model.nodes.index("b")]().probs.item() == pytest.approx(
        b.mean().item(), abs=1e-12
    )


@pytest.mark.parametrize("name", ["asia", "alarm"])
def test_tabular_mle_equals_pgmpy(name):
    """Per row, log p(x_v | parents) from our fitted tables equals pgmpy's MLE CPDs to 1e-9."""
    pytest.importorskip("pgmpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgmpy.estimators import MaximumLikelihoodEstimator
        from pgmpy.utils import get_example_model

        network = get_example_model(name)
        frame = network.simulate(3000, seed=0, show_progress=False)
        cpds = {v: MaximumLikelihoodEstimator(network, frame).estimate_cpd(v) for v in network}
    states = {v: cpds[v].state_names[v] for v in network}
    codes = {v: torch.tensor(frame[v].map(states[v].index).to_numpy()) for v in network}
    model = ppgen.dag(
        network.edges, kinds=dict.fromkeys(network.nodes, "tabular"),
        cardinalities={v: len(states[v]) for v in network},
    )  # fmt: skip
    fit = ppgen.fit_mle(model, codes, progress=False)
    assert sorted(fit.closed_form) == sorted(network.nodes)
    ours = ppgen.log_prob(model, codes, per_node=True)
    total = 0.0
    for v, cpd in cpds.items():
        parents = cpd.variables[1:]
        index = [codes[v]] + [
            torch.tensor(frame[p].map(cpd.state_names[p].index).to_numpy()) for p in parents
        ]
        theirs = (
            torch.tensor(cpd.get_values())
            .reshape([len(states[v])] + [len(cpd.state_names[p]) for p in parents])[tuple(index)]
            .log()
        )
        assert torch.allclose(ours[v], theirs.to(ours[v].dtype), atol=1e-9)
        # the history's training term, computed from the counts, is the mean of the same rows
        assert fit.history[-1][f"train/{v}"] == pytest.approx(ours[v].mean().item(), abs=1e-9)
        total += theirs.sum().item()
    assert ppgen.log_prob(model, codes).sum().item() == pytest.approx(total, abs=1e-6)


@pytest.mark.parametrize("kind", ["relay", "mixed", "tabular"])
def test_log_prob_is_sum_of_terms_and_pyro_trace(relay, kind):
    if kind == "relay":
        model, rows = relay, relay_race(50)
    elif kind == "tabular":  # the fast path taken without its check against the trace
        model = ppgen.dag(
            [("a", "b"), ("b", "c"), ("a", "c")], kinds=dict.fromkeys("abc", "tabular"),
            cardinalities={"a": 3, "b": 2, "c": 4},
        )  # fmt: skip
        with torch.no_grad():
            for table in model.conditionals:
                table.logits.normal_()
        rows = ppgen.sample(model, 50)
    else:
        model = ppgen.dag(
            [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")],
            kinds={"a": "categorical", "b": "bernoulli", "d": "bernoulli"},
            cardinalities={"a": 3}, hidden=(7,),
        )  # fmt: skip
        rows = ppgen.sample(model, 50)
    total = ppgen.log_prob(model, rows)
    terms = ppgen.log_prob(model, rows, per_node=True)
    assert torch.allclose(total, sum(terms.values()), atol=1e-12)
    trace = pyro.poutine.trace(pyro.condition(model, data=rows)).get_trace(n=50)
    assert total.sum().item() == pytest.approx(trace.log_prob_sum().item(), abs=1e-9)


def test_fast_path_found_and_equal_to_generic(relay):
    rows = relay_race(20)
    objective = ExactLogLikelihood(relay, rows)
    assert objective.factors is not None
    fast = objective(rows)
    objective.factors = None
    generic = objective(rows)
    for name in fast:
        assert torch.allclose(fast[name], generic[name], atol=1e-12)


class Plain(pyro.nn.PyroModule):
    """A user's own program with no ppgen conditional: the generic, traced path."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.log_scale = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, n=1):
        with pyro.plate("rows", n):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
            pyro.sample("b", dist.Normal(self.net(a[:, None]).squeeze(-1), self.log_scale.exp()))


def test_generic_program_fits_least_squares():
    a = torch.randn(300)
    b = 2.0 * a - 1.0 + 0.5 * torch.randn(300)
    model = Plain()
    fit = ppgen.fit_mle(
        model, {"a": a, "b": b}, epochs=300, batch_size=300, lr=0.05, progress=False
    )
    assert fit.closed_form == []
    coef = torch.linalg.lstsq(torch.stack([a, torch.ones(300)], 1), b[:, None]).solution
    assert model.net.weight.item() == pytest.approx(coef[0].item(), abs=0.02)
    assert model.net.bias.item() == pytest.approx(coef[1].item(), abs=0.02)


def test_neural_fit_approaches_the_generator():
    train, test = relay_race(3000, seed=1), relay_race(3000, seed=2)
    model = Relay(hidden=(32,))
    ppgen.fit_mle(model, train, epochs=20, batch_size=100, lr=1e-2, progress=False)
    ours = ppgen.log_prob(model, test).mean().item()
    truth = ppgen.log_prob(relay_race_program, test).mean().item()
    # one hidden layer of 32 per node, 3000 rows: within 0.06 nats/row of the true generator
    # (the test rows' own sampling error of the mean is about 0.02 nats)
    assert truth - 0.06 < ours < truth + 0.04


def test_weight_decay_reaches_the_penalised_optimum():
    # full-batch Adam with L2 weight decay λ stops where −∇ mean log p + λ θ = 0 (MAP, not MLE)
    x = (torch.rand(200, 4) < torch.tensor([0.2, 0.5, 0.7, 0.9])).float()
    x[:, 1] = torch.where(torch.rand(200) < 0.8, x[:, 0], x[:, 1])
    model, decay = ppgen.models.FVSBN(4), 0.05
    ppgen.fit_mle(
        model, {"x": x}, epochs=300, batch_size=200, lr=5e-2, weight_decay=decay, progress=False
    )
    loss = -model.distribution(len(x)).log_prob(x).mean()
    weights = [p for p in model.parameters() if p.requires_grad]
    for grad, p in zip(torch.autograd.grad(loss, weights), weights, strict=True):
        torch.testing.assert_close(grad + decay * p, torch.zeros_like(p), atol=1e-4, rtol=0)
    assert min(p.abs().max() for p in weights) > 0.05  # not a trivial optimum at zero


def test_early_stopping_keeps_each_nodes_best_epoch(relay):
    train, val = relay_race(300, seed=1), relay_race(300, seed=2)
    fit = ppgen.fit_mle(relay, train, val=val, epochs=30, batch_size=32, lr=3e-2,
                        patience=3, progress=False)  # fmt: skip
    final = ppgen.log_prob(relay, val, per_node=True)
    for site in ("t1", "t2"):
        best = max(record[f"val/{site}"] for record in fit.history)
        assert final[site].mean().item() == pytest.approx(best, abs=1e-9)
        epoch = fit.best_epoch[site]
        assert fit.history[epoch - 1][f"val/{site}"] == pytest.approx(best, abs=1e-12)


def test_dataframe_categories_round_trip():
    frame = pd.DataFrame(
        {"weather": pd.Categorical(["sun", "rain", "sun", "snow"] * 25), "temp": torch.randn(100)}
    )
    model = ppgen.dag([("weather", "temp")], kinds={"weather": "categorical"},
                      cardinalities={"weather": 3}, hidden=(4,))  # fmt: skip
    fit = ppgen.fit_mle(model, frame, epochs=1, progress=False)
    assert fit.categories == {"weather": ["rain", "snow", "sun"]}
    probs = model.conditionals[0]().probs
    assert torch.allclose(probs, torch.tensor([0.25, 0.25, 0.5]), atol=1e-12)
    out = ppgen.sample(model, 10, as_frame=True, categories=fit.categories)
    assert set(out["weather"]) <= {"rain", "snow", "sun"}


def latent_model(n=1):
    with pyro.plate("rows", n):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0))


@pytest.mark.parametrize(
    "data,message",
    [
        ({"a": [1.0, 2.0]}, "Site 'b' is not in the data: it is latent"),
        ({"a": [1.0], "b": [1], "c": [2.0]}, "Column 'c' is not a sample site"),
        ({"a": [1.0, float("nan")], "b": [1, 0]}, r"Column 'a' holds NaN or inf \(row 1\)"),
        ({"a": [1.0, 2.0], "b": [1, 2]}, "Column 'b' has value 2.0 in row 1, outside the support"),
        ({"a": [[1.0], [2.0]], "b": [1, 0]}, r"Column 'a' has rows of shape \(1,\)"),
        ({"a": [1.0, 2.0, 3.0], "b": [1, 0]}, "Column 'b' has 2 rows but 'a' has 3"),
        ({"a": [], "b": []}, "The data have no rows"),
        ({}, "The data have no columns"),
    ],
)
def test_bad_data_leaves_model_untouched(data, message):
    model = ppgen.dag([("a", "b")], kinds={"b": "bernoulli"}, hidden=(3,))
    before = params(model)
    with pytest.raises(ValueError, match=message):
        ppgen.fit_mle(model, data, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(before, params(model), strict=True))


def test_latent_site_points_to_fit_svi():
    with pytest.raises(ValueError, match=r"fit it with ppgen.fit_svi"):
        ppgen.fit_mle(latent_model, {"x": torch.zeros(3)}, progress=False)


@pytest.mark.parametrize(
    "family,bad,kwargs",
    [(dist.Categorical, -1, {"cardinality": 3}), (dist.Gamma, -0.5, {}), (dist.Bernoulli, 2, {})],
)
def test_support_errors_name_the_family(family, bad, kwargs):
    class One(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.x = Root(family, **kwargs)

        def forward(self, n=1):
            with pyro.plate("rows", n):
                pyro.sample("x", self.x())

    with pytest.raises(ValueError, match=f"outside the support of its {family.__name__}"):
        ppgen.fit_mle(One(), {"x": [1, bad]}, progress=False)


def test_non_finite_loss_names_the_site():
    model = ppgen.dag([("a", "b")], hidden=(3,))
    with pytest.raises(ValueError, match="site 'b' became non-finite"):
        ppgen.fit_mle(model, {"a": [0.0, 1.0], "b": [1.0, 1e300]}, epochs=2, progress=False)


def test_closed_form_terms_leave_the_steps_but_stay_exact_in_the_history(relay):
    """The root is solved once; the steps compute t1 and t2 alone, and the history's t0 is its
    exact mean log-likelihood on the training rows at every epoch."""
    rows = relay_race(300, seed=1)
    objective = ExactLogLikelihood(relay, rows)
    subset = objective(rows, ["t2", "t1"])
    assert list(subset) == ["t2", "t1"]
    for site, t in subset.items():
        assert torch.equal(t, objective(rows)[site])
    fit = ppgen.fit_mle(relay, rows, epochs=3, batch_size=64, progress=False)
    assert fit.closed_form == ["t0"]
    t0 = ppgen.log_prob(relay, rows, per_node=True)["t0"].mean().item()
    for record in fit.history:
        assert record["train/t0"] == pytest.approx(t0, abs=1e-12)
        total = sum(record[f"train/{s}"] for s in ("t0", "t1", "t2"))
        assert record["train"] == pytest.approx(total, abs=1e-12)


def test_non_finite_fixed_term_names_the_site():
    class Sharp(ppgen.Model):  # a root with no free parameter, far too narrow for its data
        def __init__(self):
            super().__init__()
            self.a = Root(dist.Normal, loc=0.0, scale=1e-200)
            self.b = ppgen.nn.Conditional(dist.Normal, 1, hidden=(3,))

        def forward(self, n=1):
            with pyro.plate("rows", n):
                a = pyro.sample("a", self.a())
                pyro.sample("b", self.b(a))

    with pytest.raises(ValueError, match="site 'a' is non-finite on the training rows"):
        ppgen.fit_mle(Sharp(), {"a": [1.0, 2.0], "b": [1.0, 2.0]}, epochs=2, progress=False)
