import math
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
from ppgen.density import ExactLogLikelihood
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


def test_new_frames_are_coded_by_the_fits_categories():
    model = ppgen.dag([("color", "y")], kinds={"color": "tabular", "y": "tabular"},
                      cardinalities={"color": 3, "y": 2})  # fmt: skip
    colors = pd.Categorical(["blue", "green", "red"] * 4)
    train = pd.DataFrame({"color": colors, "y": [0, 1, 1] * 4})
    fit = ppgen.fit_mle(model, train, progress=False)
    assert fit.categories == {"color": ["blue", "green", "red"]}
    third = torch.tensor(1 / 3).log()  # p(color) = 1/3 each, and y is determined by the color
    red = pd.DataFrame({"color": pd.Categorical(["red"]), "y": [1]})  # its categories: red alone
    assert ppgen.log_prob(model, red, categories=fit.categories).item() == pytest.approx(third)
    text = pd.DataFrame({"color": ["red", "blue"], "y": [1, 0]})
    assert torch.allclose(ppgen.log_prob(model, text, categories=fit.categories), third)
    drawn = ppgen.sample(model, 6, as_frame=True, categories=fit.categories)
    assert torch.allclose(ppgen.log_prob(model, drawn, categories=fit.categories), third)
    codes = ppgen.data.table(model, red, categories=fit.categories).columns["color"]  # a val
    assert codes.tolist() == [2]
    assert ppgen.log_prob(model, red).item() == pytest.approx(third)  # the model's own coding
    unfitted = ppgen.dag([("color", "y")], kinds={"color": "tabular", "y": "tabular"},
                         cardinalities={"color": 3, "y": 2})  # fmt: skip
    with pytest.raises(ValueError, match="pass categories=fit.categories"):
        ppgen.log_prob(unfitted, red)


@pytest.mark.parametrize("dtype", [None, object, "string"])
def test_text_columns_are_labels(dtype):
    sky = pd.Series(["sun", "rain", "sun", "snow"] * 5, dtype=dtype)
    frame = pd.DataFrame({"sky": sky, "wet": [0, 1, 0, 1] * 5})
    model = ppgen.dag([("sky", "wet")], kinds={"sky": "categorical", "wet": "bernoulli"},
                      cardinalities={"sky": 3}, hidden=(4,))  # fmt: skip
    fit = ppgen.fit_mle(model, frame, epochs=1, progress=False)
    assert fit.categories == {"sky": ["rain", "snow", "sun"]}
    probs = model.conditionals[0]().probs
    assert torch.allclose(probs, torch.tensor([0.25, 0.25, 0.5]), atol=1e-12)
    flags = pd.DataFrame({"sky": sky, "wet": ["no", "yes", "no", "yes"] * 5})
    fit = ppgen.fit_mle(model, flags, epochs=1, progress=False)  # a Bernoulli site of labels
    assert fit.categories["wet"] == ["no", "yes"]
    drawn = ppgen.sample(model, 50, as_frame=True, categories=fit.categories)
    assert set(drawn["wet"]) == {"no", "yes"}


def test_series_in_a_dict_are_read_in_order():
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0, 4.0]})
    part = frame[frame.a > 0]  # its index: 1, 2, 3
    model = ppgen.dag([("a", "b")], hidden=(3,))
    expected = ppgen.log_prob(model, {"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0]})
    assert torch.equal(ppgen.log_prob(model, {"a": part["a"], "b": part["b"]}), expected)
    assert torch.equal(ppgen.log_prob(model, part), expected)


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
        ({"a": [1.0, 2.0], "b": [1, 2]}, "Column 'b' has value 2 in row 1, outside the support"),
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


def test_values_whose_squares_overflow_are_refused_before_any_step():
    model = ppgen.dag([("a", "b")], hidden=(3,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"Column 'b' holds 1e\+300 \(row 1\), too large"):
        ppgen.fit_mle(model, {"a": [0.0, 1.0], "b": [1.0, 1e300]}, epochs=2, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


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


class Pixels(ppgen.Model):
    """One root shared by every pixel of every row: the rows' plate is dim -2, the pixels' -1."""

    def __init__(self, root):
        super().__init__()
        self.x = root

    def forward(self, n=1):
        with pyro.plate("rows", n, dim=-2), pyro.plate("pixels", 4, dim=-1):
            pyro.sample("x", self.x())


SCALES = [1.0, 2.0, 0.5, 3.0]  # one fixed scale a pixel


@pytest.mark.parametrize(
    "family,options,draw",
    [
        (dist.Bernoulli, {}, lambda: torch.bernoulli(torch.full((50, 4), 0.3))),
        (dist.Normal, {}, lambda: 2.0 + 3.0 * torch.randn(50, 4)),
        (dist.Categorical, {"cardinality": 3}, lambda: torch.randint(0, 3, (50, 4))),
        (
            dist.Normal,
            {"event_shape": (2,)},
            lambda: torch.randn(50, 4, 2) + torch.tensor([1, -1]),
        ),
        (dist.Normal, {"scale": SCALES}, lambda: 1.0 + torch.tensor(SCALES) * torch.randn(50, 4)),
        (dist.Poisson, {}, lambda: torch.poisson(torch.full((50, 4), 3.0))),
        (dist.Exponential, {}, lambda: dist.Exponential(2.0).sample((50, 4))),
        (dist.LogNormal, {}, lambda: (0.5 + 0.7 * torch.randn(50, 4)).exp()),
        (dist.Geometric, {}, lambda: dist.Geometric(0.3).sample((50, 4))),
        (dist.Binomial, {"total_count": 10}, lambda: dist.Binomial(10, 0.3).sample((50, 4))),
    ],
    ids=["bernoulli", "normal", "categorical", "event", "fixed-scales", "poisson", "exponential",
         "lognormal", "geometric", "binomial"],  # fmt: skip
)
def test_root_in_nested_plates_is_solved_on_every_value(family, options, draw):
    """The closed form of a root under the pixels' plate uses all 200 values (event dims
    apart): the sample statistics, where the gradient of the exact log-likelihood vanishes."""
    fixed = {k: torch.tensor(v) if k == "scale" else v for k, v in options.items()}
    model, x = Pixels(Root(family, **fixed)), draw()
    fit = ppgen.fit_mle(model, {"x": x}, progress=False)
    assert fit.closed_form == ["x"]
    d = model.x()
    if isinstance(d, dist.Independent):  # the event-shaped root: a loc and scale per position
        d = d.base_dist
        assert torch.allclose(d.loc, x.mean((0, 1)), atol=1e-12)
        assert torch.allclose(d.scale, x.std((0, 1), unbiased=False), atol=1e-12)
    elif isinstance(d, dist.Bernoulli):
        assert d.probs.item() == pytest.approx(x.mean().item(), abs=1e-12)
    elif isinstance(d, dist.Categorical):
        assert torch.allclose(d.probs, torch.bincount(x.reshape(-1)) / x.numel(), atol=1e-12)
    elif isinstance(d, dist.Poisson | dist.Exponential):
        rate = x.mean() if isinstance(d, dist.Poisson) else 1 / x.mean()
        assert d.rate.item() == pytest.approx(rate.item(), abs=1e-12)
    elif isinstance(d, dist.LogNormal):
        assert d.loc.item() == pytest.approx(x.log().mean().item(), abs=1e-12)
        assert d.scale.item() == pytest.approx(x.log().std(unbiased=False).item(), abs=1e-12)
    elif isinstance(d, dist.Geometric):  # failures before the first success: mean (1 - p) / p
        assert d.probs.item() == pytest.approx(1 / (1 + x.mean().item()), abs=1e-12)
    elif isinstance(d, dist.Binomial):
        assert d.probs.item() == pytest.approx(x.mean().item() / 10, abs=1e-12)
    elif "scale" in options:  # each value weighs its precision
        weight = torch.tensor(SCALES).pow(-2).expand_as(x)
        expected = (weight * x).sum() / weight.sum()
        assert torch.allclose(d.loc, expected.expand(4), atol=1e-12)  # a loc the pixels share
    else:
        assert d.loc.item() == pytest.approx(x.mean().item(), abs=1e-12)
        assert d.scale.item() == pytest.approx(x.std(unbiased=False).item(), abs=1e-12)
    total = pyro.poutine.trace(pyro.condition(model, data={"x": x})).get_trace(n=50).log_prob_sum()
    (grad,) = torch.autograd.grad(total, model.x.eta)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-9)


def test_a_poisson_root_of_only_zeros_is_left_to_the_steps():
    """Its maximum-likelihood rate is 0, which no finite parameter gives."""
    model = Pixels(Root(dist.Poisson))
    fit = ppgen.fit_mle(model, {"x": torch.zeros(50, 4)}, epochs=3, progress=False)
    assert fit.closed_form == [] and model.x().rate.item() < Root(dist.Poisson)().rate.item()


def test_roots_certain_or_never_seen_are_exact():
    """Frequencies of 0 and 1 are exact: a categorical root's unseen last category has the
    logit -inf (as a table's), a Bernoulli root always 1 the logit 1000 (certain)."""
    counts = torch.tensor([8, 23, 28, 41, 0])
    c = torch.repeat_interleave(torch.arange(5), counts)
    model = ppgen.dag([("a", "b"), ("c", "b")], kinds={"a": "bernoulli", "c": "categorical",
                      "b": "linear_gaussian"}, cardinalities={"c": 5})  # fmt: skip
    rows = {"a": torch.ones(100), "c": c, "b": torch.randn(100)}
    fit = ppgen.fit_mle(model, rows, progress=False)
    assert sorted(fit.closed_form) == ["a", "b", "c"]
    a, c_root = (model.conditionals[model.nodes.index(v)] for v in "ac")
    assert a().probs.item() == 1.0 and a().sample((1000,)).min().item() == 1.0
    assert a().log_prob(torch.tensor([1.0, 0.0])).tolist() == [0.0, -1000.0]
    assert torch.allclose(c_root().probs, counts / 100, atol=1e-15, rtol=0)
    assert c_root().logits[-1].item() == -math.inf and c_root().probs[-1].item() == 0.0
    terms = ppgen.log_prob(model, rows, per_node=True)
    expected = (counts[:4] * (counts[:4] / 100).log()).sum() / 100  # Σ n log(n / N), per row
    assert fit.history[-1]["train/c"] == pytest.approx(expected.item(), abs=1e-12)
    assert terms["c"].mean().item() == pytest.approx(expected.item(), abs=1e-12)
    assert terms["a"].abs().max().item() == 0.0


def test_plain_function_model_is_fitted():
    """A function without parameters has nothing to fit; one with a pyro.param has it fitted."""

    def fixed(n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    x = torch.tensor([1.0, 2.0])
    fit = ppgen.fit_mle(fixed, {"x": x}, progress=False)
    assert fit.closed_form == [] and len(fit.history) == 1
    expected = dist.Normal(0.0, 1.0).log_prob(x).mean().item()
    assert fit.history[0]["train"] == pytest.approx(expected, abs=1e-12)

    def located(n=1):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(loc, 1.0))

    pyro.clear_param_store()
    x = 3.0 + torch.randn(100)
    ppgen.fit_mle(located, {"x": x}, epochs=300, batch_size=100, lr=0.1, progress=False)
    # full-batch Adam from 0 to the sample mean, about 3: within 1e-5 after 300 steps
    assert pyro.param("loc").item() == pytest.approx(x.mean().item(), abs=1e-5)
    pyro.clear_param_store()


class PoissonRate(ppgen.Model):
    """A rate kept in Pyro's parameter store, not in the module."""

    def forward(self, n=1):
        rate = pyro.param("rate", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Poisson(rate))


def test_pyro_param_is_fitted_to_the_mle():
    pyro.clear_param_store()
    fit = ppgen.fit_mle(PoissonRate(), {"x": [4.0, 5.0, 6.0] * 20}, epochs=500, lr=0.05,
                        progress=False)  # fmt: skip
    # the MLE is the mean, 5; full-batch Adam reaches it within 1e-6 in 500 steps
    assert len(fit.history) == 500
    assert pyro.param("rate").item() == pytest.approx(5.0, abs=1e-6)
    pyro.clear_param_store()


def test_module_shared_by_two_sites_is_fitted_on_both():
    """One coin for two sites: its MLE is the frequency over both columns, 15 / 20."""

    class Tied(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.coin = Root(dist.Bernoulli)

        def forward(self, n=1):
            with pyro.plate("rows", n):
                pyro.sample("x1", self.coin())
                pyro.sample("x2", self.coin())

    model = Tied()
    rows = {"x1": torch.ones(10), "x2": torch.tensor([1.0, 0.0] * 5)}
    fit = ppgen.fit_mle(model, rows, epochs=300, batch_size=10, lr=0.1, progress=False)
    assert fit.closed_form == []
    # full-batch Adam: within 1e-6 of the MLE after 300 steps
    assert model.coin().probs.item() == pytest.approx(0.75, abs=1e-6)


def test_batch_size_and_validation_columns_are_checked():
    model = ppgen.dag([("a", "b")], kinds={"b": "bernoulli"}, hidden=(3,))
    before = params(model)
    rows = {"a": [1.0, 2.0], "b": [1, 0]}
    with pytest.raises(ValueError, match="batch_size must be a positive number of rows, not 0"):
        ppgen.fit_mle(model, rows, batch_size=0, progress=False)
    lacking = "The validation data lack column 'b', which the training data have"
    with pytest.raises(ValueError, match=lacking):
        ppgen.fit_mle(model, rows, val={"a": [1.0]}, progress=False)
    with pytest.raises(ValueError, match=lacking):
        ppgen.fit_mle(model, rows, val=pd.DataFrame({"a": [1.0]}), progress=False)
    assert all(torch.equal(p, q) for p, q in zip(before, params(model), strict=True))


def test_a_table_cell_of_probability_zero_is_exact_and_a_refit_is_solved_again():
    model = ppgen.dag([("a", "b")], kinds={"a": "tabular", "b": "linear_gaussian"},
                      cardinalities={"a": 3})  # fmt: skip
    ppgen.fit_mle(model, {"a": torch.tensor([0, 1] * 50), "b": torch.randn(100)}, progress=False)
    unseen = {"a": torch.tensor([2]), "b": torch.zeros(1)}
    assert ppgen.log_prob(model, unseen, per_node=True)["a"].item() == -math.inf
    rows = {"a": torch.tensor([0] * 64 + [2]), "b": torch.zeros(65)}  # the row behind 64 others
    assert ppgen.log_prob(model, rows)[64].item() == -math.inf == ppgen.log_prob(model, unseen)
    fit = ppgen.fit_mle(model, {"a": torch.tensor([0, 1, 2] * 50), "b": torch.randn(150)},
                  epochs=2, progress=False)  # fmt: skip
    assert fit.closed_form == ["a", "b"]
    assert fit.history[-1]["train/a"] == pytest.approx(-math.log(3), abs=1e-6)


class Pair(ppgen.Model):
    """Two sites from two modules given to it, each of them read by a third: a -> b, a -> c."""

    def __init__(self, a, b, c):
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, n=1):
        with pyro.plate("rows", n):
            a = pyro.sample("a", self.a())
            pyro.sample("b", self.b(a))
            pyro.sample("c", self.c(a))


def test_tables_sharing_their_parameter_are_fitted_on_both_columns():
    """Two Tabular modules tied by one logits tensor (a chain's shared transition table): the
    MLE is the frequency over both columns' pairs, not the last column's own table."""
    b_table, c_table = ppgen.nn.Tabular(2, (2,)), ppgen.nn.Tabular(2, (2,))
    c_table.logits = b_table.logits
    model = Pair(ppgen.nn.Tabular(2), b_table, c_table)
    a = torch.tensor([0, 1] * 10)
    rows = {"a": a, "b": a, "c": 1 - a}  # pooled: b = a in half the pairs, c = 1 - a in the other
    fit = ppgen.fit_mle(model, rows, epochs=400, batch_size=20, lr=0.1, progress=False)
    assert fit.closed_form == ["a"]
    # full-batch Adam on the pooled log-likelihood: within 1e-3 of 1/2 after 400 steps
    assert torch.allclose(b_table.logits.softmax(-1), torch.full((2, 2), 0.5), atol=1e-3)


def test_frozen_parameters_are_not_solved_over():
    """A parameter the user froze (requires_grad=False) keeps its value: its node is left to the
    gradient steps, which train the others to the MLE at that value (least squares for the
    weights of a linear Gaussian whose scale is frozen)."""
    model = Pair(Root(dist.Normal), ppgen.nn.LinearGaussian(1), ppgen.nn.LinearGaussian(1))
    model.a.eta.requires_grad_(False)
    model.b.scale.requires_grad_(False)
    frozen = [model.a.eta.clone(), model.b.scale.clone()]
    a = torch.randn(50)
    rows = {"a": a, "b": 2.0 * a + 1.0 + 0.1 * torch.randn(50), "c": torch.randn(50)}
    with warnings.catch_warnings():  # Pyro's, about the frozen parameters it does not store
        warnings.filterwarnings("ignore", ".* was not registered in the param store", UserWarning)
        fit = ppgen.fit_mle(model, rows, epochs=600, batch_size=50, lr=0.05, progress=False)
        neural = ppgen.dag([("a", "b")], hidden=(3,)).requires_grad_(False)  # all frozen
        before = params(neural)
        fitted_once = ppgen.fit_mle(neural, {"a": a, "b": rows["b"]}, progress=False)
    assert fit.closed_form == ["c"]
    assert torch.equal(model.a.eta, frozen[0]) and torch.equal(model.b.scale, frozen[1])
    design = torch.stack([a, torch.ones(50)], dim=1)
    coef = torch.linalg.lstsq(design, rows["b"][:, None]).solution.squeeze(-1)
    fitted = torch.cat([model.b.linear.weight.reshape(-1), model.b.linear.bias])
    assert torch.allclose(fitted, coef, atol=1e-4)  # full-batch Adam, 600 steps
    assert fitted_once.closed_form == [] and len(fitted_once.history) == 1  # scored as it is
    assert all(torch.equal(p, q) for p, q in zip(before, params(neural), strict=True))


class LaplaceRegression(ppgen.nn.LinearGaussian):
    """A robust regression: a linear mean under Laplace's distribution (least absolute error)."""

    def distribution(self, *parents):
        normal = super().distribution(*parents)
        return dist.Laplace(normal.loc, normal.scale)


def test_a_subclass_with_its_own_distribution_is_not_solved_as_its_base():
    """Least squares is the MLE of a linear Gaussian, not of a subclass's Laplace: the fit of
    the subclass is better than the least squares' solution on its own log-likelihood."""
    model = Pair(Root(dist.Normal), LaplaceRegression(1), ppgen.nn.LinearGaussian(1))
    a = torch.randn(40)
    b = a + 0.1 * torch.randn(40)
    b[:4] += 30.0  # outliers, which pull least squares and not least absolute error
    rows = {"a": a, "b": b, "c": torch.randn(40)}
    fit = ppgen.fit_mle(model, rows, epochs=200, batch_size=40, lr=0.1, progress=False)
    assert fit.closed_form == ["a", "c"]
    assert model.b.linear.weight.item() == pytest.approx(1.0, abs=0.1)
    design = torch.stack([a, torch.ones(40)], dim=1)
    coef = torch.linalg.lstsq(design, b[:, None]).solution.squeeze(-1)  # the old answer
    assert abs(coef[0].item() - 1.0) > 1.0  # pulled by the outliers
    residual = (b - design @ coef).abs()
    least_squares = dist.Laplace(design @ coef, residual.mean()).log_prob(b).sum()
    assert model.b.log_prob(b, a).sum() > least_squares + 10.0  # its MLE scale, no better


def test_linear_gaussian_inside_a_plate_of_the_rows_is_least_squares():
    """A linear Gaussian under an inner plate (rows x 4 values, each read from the value of its
    parent there) is solved on all 4 values of every row, as one regression."""

    class Grid(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = Root(dist.Normal), ppgen.nn.LinearGaussian(1)

        def forward(self, n=1):
            with pyro.plate("rows", n, dim=-2), pyro.plate("cells", 4, dim=-1):
                pyro.sample("b", self.b(pyro.sample("a", self.a())))

    model, a = Grid(), torch.randn(30, 4)
    rows = {"a": a, "b": 2.0 * a - 1.0 + 0.5 * torch.randn(30, 4)}
    fit = ppgen.fit_mle(model, rows, progress=False)
    assert fit.closed_form == ["a", "b"]
    design = torch.stack([a.reshape(-1), torch.ones(120)], dim=1)
    coef = torch.linalg.lstsq(design, rows["b"].reshape(-1, 1)).solution.squeeze(-1)
    fitted = torch.cat([model.b.linear.weight.reshape(-1), model.b.linear.bias])
    assert torch.allclose(fitted, coef, atol=1e-10)
    residual = rows["b"].reshape(-1) - design @ coef
    scale = model.b(a).scale
    assert torch.allclose(scale, residual.pow(2).mean().sqrt().expand_as(scale), atol=1e-10)



def test_a_parent_outside_an_inner_plate_is_broadcast_to_the_values():
    """A table and a linear Gaussian in plates rows x 2 x 5 whose parents are in rows x 2 only:
    each parent's value counts for all 5 values it is read by (counts and least squares)."""

    class Nested(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = ppgen.nn.Tabular(2), ppgen.nn.Tabular(3, (2,))
            self.x, self.y = Root(dist.Normal), ppgen.nn.LinearGaussian(1)

        def forward(self, n=1):
            with pyro.plate("rows", n, dim=-3), pyro.plate("pairs", 2, dim=-2):
                a, x = pyro.sample("a", self.a()), pyro.sample("x", self.x())
                with pyro.plate("cells", 5, dim=-1):
                    pyro.sample("b", self.b(a))
                    pyro.sample("y", self.y(x))

    a, x = torch.randint(0, 2, (40, 2, 1)), torch.randn(40, 2, 1)
    rows = {"a": a, "b": (a + torch.randint(0, 2, (40, 2, 5))) % 3, "x": x,
            "y": 3.0 * x + 1.0 + 0.1 * torch.randn(40, 2, 5)}  # fmt: skip
    model = Nested()
    fit = ppgen.fit_mle(model, rows, progress=False)
    assert sorted(fit.closed_form) == ["a", "b", "x", "y"]
    pairs = torch.stack([a.expand(40, 2, 5).reshape(-1), rows["b"].reshape(-1)])
    counts = torch.zeros(2, 3).index_put_(tuple(pairs), torch.ones(400), accumulate=True)
    assert torch.allclose(model.b.logits.exp(), counts / counts.sum(-1, keepdim=True), atol=1e-12)
    design = torch.stack([x.expand(40, 2, 5).reshape(-1), torch.ones(400)], dim=1)
    coef = torch.linalg.lstsq(design, rows["y"].reshape(-1, 1)).solution.squeeze(-1)
    fitted = torch.cat([model.y.linear.weight.reshape(-1), model.y.linear.bias])
    assert torch.allclose(fitted, coef, atol=1e-10)


@pytest.mark.parametrize("value", [0.1, 1.0])
def test_a_scale_whose_maximum_likelihood_value_is_zero_is_said(value):
    """A constant column, or one fitted exactly by its parents, has no MLE (the likelihood grows
    as the scale shrinks to 0): one warning naming the site, and the same answer whatever the
    rounding of its residuals (a column of 0.1s left 1e-17 and was solved with that scale, one
    of 1.0s left 0 and went to gradient steps, -1.4 nats a row where the other had +37)."""
    model = ppgen.dag([("x", "y")], kinds={"x": "linear_gaussian", "y": "linear_gaussian"})
    constant, x = torch.tensor([value] * 7), torch.randn(7)
    exact = value * x + 1.0  # a line through the parent's values
    for rows, site in (({"x": constant, "y": x}, "x"), ({"x": x, "y": exact}, "y")):
        message = f"Site '{site}' has no maximum-likelihood estimate: its values are constant"
        with pytest.warns(UserWarning, match=message):
            fit = ppgen.fit_mle(model, rows, progress=False)
        assert site in fit.closed_form
        scale = 8 * torch.finfo(torch.float64).eps * rows[site].pow(2).mean().sqrt()
        expected = dist.Normal(rows[site], scale).log_prob(rows[site]).mean()
        # at the floor, the squared residuals (their mean at most the scale's square) take at
        # most 1/2 nat a row from the log-density at the value itself
        assert expected.item() - 0.5 <= fit.history[-1][f"train/{site}"] <= expected.item()
    node = model.conditionals[model.nodes.index("y")]
    assert node.linear.weight.item() == pytest.approx(value, rel=1e-9)


def test_a_parametrized_weight_is_not_solved_into_a_computed_tensor():
    """Under weight_norm the weight is computed from two others at each call: least squares
    written into it was lost (the slope stayed at its initial 0.94, reported as solved), so the
    node is left to the steps, which reach least squares through the parametrization."""
    model = Pair(Root(dist.Normal), ppgen.nn.LinearGaussian(1), ppgen.nn.LinearGaussian(1))
    torch.nn.utils.parametrizations.weight_norm(model.b.linear)
    a = torch.randn(50)
    rows = {"a": a, "b": 2.0 * a + 1.0 + 0.3 * torch.randn(50), "c": torch.randn(50)}
    fit = ppgen.fit_mle(model, rows, epochs=400, batch_size=50, lr=0.05, progress=False)
    assert fit.closed_form == ["a", "c"]
    design = torch.stack([a, torch.ones(50)], dim=1)
    coef = torch.linalg.lstsq(design, rows["b"][:, None]).solution.squeeze(-1)
    fitted = torch.cat([model.b.linear.weight.reshape(-1), model.b.linear.bias]).detach()
    assert torch.allclose(fitted, coef, atol=1e-3)  # full-batch Adam, 400 steps
