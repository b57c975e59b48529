"""Same-shaped conditionals evaluated together (ppgen.batched) against one call a node."""

import copy
import random

import networkx as nx
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import ppgen
import ppgen.density
import ppgen.elbo
import ppgen.guides
from ppgen.batched import Stacked, groups
from ppgen.density import ExactLogLikelihood
from ppgen.nn import Conditional, LinearGaussian, Root
from ppgen.steps import GradientStep

KINDS = ["normal"] * 4 + ["bernoulli", "categorical", "linear_gaussian"]


def random_dag(seed: int, nodes: int = 16, widen: bool = True) -> ppgen.builder.DAG:
    """Mixed families (Normal, Bernoulli, 3-valued Categorical parents one-hot, linear-Gaussian),
    up to two parents among the four before a node, and (`widen`) every third neural conditional
    of other widths."""
    rng = random.Random(seed)
    g = nx.DiGraph()
    kinds, cards = {}, {}
    for i in range(nodes):
        v = f"v{i}"
        g.add_node(v)
        g.add_edges_from((f"v{p}", v) for p in rng.sample(range(max(0, i - 4), i), min(i, 2)))
        kinds[v] = rng.choice(KINDS)
        if kinds[v] == "categorical":
            cards[v] = 3
    model = ppgen.dag(g, kinds=kinds, cardinalities=cards, hidden=(4,))
    for i, c in enumerate(model.conditionals):
        if widen and type(c) is Conditional and i % 3 == 0:
            model.conditionals[i] = Conditional(
                c.head.family, c.net[0].in_features, hidden=(6, 5),
                cardinality=c.head.cardinality, parent_cardinalities=c.parent_cardinalities,
            )  # fmt: skip
    return model


def factors(model: ppgen.builder.DAG) -> dict:
    return {v: (c, model.parents[v]) for v, c in zip(model.nodes, model.conditionals, strict=True)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # the suite's, and users'
@pytest.mark.parametrize("seed", range(4))
def test_log_prob_per_node_equals_one_call_a_node(seed: int, dtype: torch.dtype) -> None:
    model = random_dag(seed).to(dtype)
    rows = ppgen.sample(model, 300)
    fast = ExactLogLikelihood(model, rows)
    slow = ExactLogLikelihood(model, rows, batched=False)
    assert len(fast.groups) >= 2 and not slow.groups  # several groups, some of other widths
    assert {type(m).__name__ for m, _ in fast.factors.values()} >= {"Root", "LinearGaussian"}
    batched, single = fast(rows), slow(rows)
    assert list(batched) == list(single) == model.nodes
    for name in model.nodes:
        torch.testing.assert_close(batched[name], single[name], rtol=0, atol=1e-6)
    names, totals = fast.totals(rows, model.nodes[3:])
    assert sorted(names) == sorted(model.nodes[3:])
    expected = torch.stack([single[n].sum() for n in names])
    torch.testing.assert_close(totals, expected, rtol=0, atol=1e-6)


def _fit(model: ppgen.builder.DAG, rows: dict, val: dict) -> ppgen.FitResult:
    torch.manual_seed(1)  # the same batches
    return ppgen.fit_mle(model, rows, epochs=4, batch_size=50, lr=0.02, val=val, patience=1,
                         progress=False)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_fit_equals_one_call_a_node(
    seed: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adam steps, closed forms, per-node early stopping and history: the same either way."""
    model = random_dag(seed).to(dtype)
    rows, val = ppgen.sample(model, 200), ppgen.sample(model, 100)
    assert ExactLogLikelihood(model, rows).groups  # the fit below takes the batched path
    batched, single = copy.deepcopy(model), copy.deepcopy(model)
    fit = _fit(batched, rows, val)
    monkeypatch.setattr(ppgen.density, "groups", lambda factors, scalar: [])
    reference = _fit(single, rows, val)
    assert fit.closed_form == reference.closed_form and fit.closed_form
    moved = 0
    for (name, a), b, before in zip(batched.named_parameters(), single.parameters(),
                                    model.parameters(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)
        moved += not torch.equal(a, before)
    assert moved > len(list(model.parameters())) // 2
    assert [r.keys() for r in fit.history] == [r.keys() for r in reference.history]
    for mine, theirs in zip(fit.history, reference.history, strict=True):
        for key in mine.keys() - {"seconds"}:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key


def _fit_svi(model: ppgen.builder.DAG, rows: dict) -> tuple[ppgen.FitResult, torch.nn.Module]:
    pyro.clear_param_store()
    pyro.set_rng_seed(2)  # the same guide, draws and batches
    guide = ppgen.guides.Amortized(model)
    fit = ppgen.fit_svi(model, guide, rows, epochs=3, batch_size=40, lr=0.02, progress=False)
    return fit, guide


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_svi_on_a_dag_with_latents_equals_one_call_a_node(
    seed: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ELBO's model terms, same-shaped conditionals at once once the guide has drawn the
    latent sites: the same ELBOs and the same parameters after Adam steps as one call a node."""
    model = random_dag(seed).to(dtype)
    rows = ppgen.sample(model, 120)
    normal = [v for v, c in zip(model.nodes, model.conditionals, strict=True)
              if type(c) is Conditional and c.head.family is dist.Normal]  # fmt: skip
    latent = normal[1::3]
    rows = {k: v for k, v in rows.items() if k not in latent}
    found = []

    def recorded(factors, scalar):
        found.append(groups(factors, scalar))
        return found[-1]

    calls = []
    evaluate = Stacked.__call__
    monkeypatch.setattr(ppgen.elbo, "groups", recorded)
    monkeypatch.setattr(Stacked, "__call__", lambda self, b: calls.append(1) or evaluate(self, b))
    batched, single = copy.deepcopy(model), copy.deepcopy(model)
    fit, guide = _fit_svi(batched, rows)
    assert found and found[-1] and any(set(g) & set(latent) for g in found[-1])
    assert len(calls) > 3 * 3  # the steps of 3 epochs of 3 batches took the batched fast path
    monkeypatch.setattr(ppgen.elbo, "groups", lambda factors, scalar: [])
    reference, reference_guide = _fit_svi(single, rows)
    for mine, theirs in zip(fit.history, reference.history, strict=True):
        assert mine["train"] == pytest.approx(theirs["train"], rel=1e-6)
    pairs = [*zip(batched.named_parameters(), single.parameters(), strict=True),
             *zip(guide.named_parameters(), reference_guide.parameters(), strict=True)]  # fmt: skip
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=name)


def test_frozen_nodes_stay_and_the_others_step_as_one_call_a_node() -> None:
    model = random_dag(3)
    rows = ppgen.sample(model, 64)
    params = {}
    for batched in (True, False):
        copied = copy.deepcopy(model)
        objective = ExactLogLikelihood(copied, rows, batched=batched)
        assert bool(objective.groups) == batched
        neural = [v for v, (m, _) in objective.factors.items() if type(m) is Conditional]
        groups = {v: (list(objective.factors[v][0].parameters()), [v]) for v in neural}
        step = GradientStep(objective, groups, lr=0.05)
        frozen = set(neural[::2])
        for _ in range(5):
            step.step(rows, 64, 1, frozen)
        params[batched] = [p.detach() for p in copied.parameters()]
        for v in frozen:
            for p, before in zip(copied.conditionals[copied.nodes.index(v)].parameters(),
                                 model.conditionals[model.nodes.index(v)].parameters(),
                                 strict=True):  # fmt: skip
                assert torch.equal(p, before)
    assert len(neural) > 4
    moved = 0
    for a, b, before in zip(params[True], params[False], model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        moved += not torch.equal(a, before)
    assert moved >= 2 * (len(neural) // 2)  # the weights and biases of the nodes not frozen


def test_group_distributions_are_each_nodes() -> None:
    model = random_dag(0)
    rows = ppgen.sample(model, 50)
    shapes = groups(factors(model), dict.fromkeys(model.nodes, True))
    stacked = Stacked(factors(model), shapes, model.nodes)
    columns = torch.stack([rows[c].to(torch.float64) for c in stacked.columns])
    for group, names in zip(stacked.groups, stacked.parts, strict=True):
        d = group.distribution(columns)
        for i, name in enumerate(names):
            module, parents = factors(model)[name]
            own = module.distribution(*(rows[p] for p in parents))
            torch.testing.assert_close(d.mean[i], own.mean, rtol=0, atol=1e-12)
            torch.testing.assert_close(d.variance[i], own.variance, rtol=0, atol=1e-12)


def test_sample_of_a_chain_is_the_programs() -> None:
    """One site a layer: the random stream is taken in the program's order, the same values."""
    model = ppgen.dag([("a", "b"), ("b", "c"), ("c", "d")], kinds={"c": "bernoulli"}, hidden=(3,))
    pyro.set_rng_seed(5)
    drawn = ppgen.sample(model, 40)
    pyro.set_rng_seed(5)
    trace = poutine.trace(model).get_trace(n=40)
    for name in model.nodes:
        assert torch.equal(drawn[name], trace.nodes[name]["value"])


def test_sample_has_the_programs_distribution() -> None:
    """Groups are drawn at once, a layer before the next: other values under a seed, the same
    law. Each site's mean against the program's own draws, within 5 standard errors of their
    difference (a false failure about once in 1.7 million a site)."""
    model = random_dag(1)
    assert groups(factors(model), dict.fromkeys(model.nodes, True))
    n = 20_000
    drawn = ppgen.sample(model, n)
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(n=n)
    for name in model.nodes:
        a, b = drawn[name].double(), trace.nodes[name]["value"].double()
        assert a.dtype == b.dtype and a.shape == b.shape
        error = ((a.var() + b.var()) / n).sqrt()
        assert abs(a.mean() - b.mean()) <= 5 * error + 1e-12, name


def test_save_load_after_a_batched_fit(tmp_path) -> None:
    model = random_dag(2, widen=False)  # a file rebuilds dag's own conditionals
    initial = copy.deepcopy(model)
    rows = ppgen.sample(model, 200)
    ppgen.fit_mle(model, rows, epochs=2, batch_size=50, lr=0.02, progress=False)
    assert set(model.state_dict()) == set(initial.state_dict())  # no stacked copies
    neural = [i for i, c in enumerate(model.conditionals) if type(c) is Conditional]
    for i in neural:  # the per-node modules hold the fitted parameters
        weight = model.conditionals[i].net[0].weight
        assert isinstance(weight, torch.nn.Parameter)
        assert not torch.equal(weight, initial.conditionals[i].net[0].weight)
    assert any(isinstance(c, Root | LinearGaussian) for c in model.conditionals)
    loaded = ppgen.load(ppgen.save(model, tmp_path / "m.safetensors"))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(ppgen.log_prob(loaded, rows), ppgen.log_prob(model, rows))
    before = ppgen.load(ppgen.save(initial, tmp_path / "initial.safetensors"))
    before.load_state_dict(model.state_dict())  # a file's weights go into the per-node modules
    assert torch.equal(ppgen.log_prob(before, rows), ppgen.log_prob(model, rows))


class Scaled(torch.nn.Module):
    """A user's activation whose repr does not show its state."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * self.factor


def _nearly_exact(model: ppgen.builder.DAG) -> None:
    """Each non-root conditional's draws within 1e-3 of its mean given the drawn parents (their
    scale is 1e-4)."""
    drawn = ppgen.sample(model, 200)
    for name, c in zip(model.nodes, model.conditionals, strict=True):
        if not model.parents[name]:
            continue
        mean = c.distribution(*(drawn[p] for p in model.parents[name])).mean
        torch.testing.assert_close(drawn[name], mean.expand(200), rtol=0, atol=1e-3, msg=name)


@pytest.mark.parametrize("net", ["custom activation", "trailing activation"])
def test_sample_groups_no_networks_it_would_evaluate_otherwise(net: str) -> None:
    """A user's activation whose repr hides its state, and a network ending in an activation,
    are each their own: drawing them in a group took the first's activation for all (draws of
    mean 0.29 for 1.47), or left the last activation out."""
    model = ppgen.dag([("a", "b"), ("a", "c")], hidden=(4,))
    pyro.set_rng_seed(0)
    for i, factor in ((1, 1.0), (2, 5.0)):
        c = Conditional(pyro.distributions.Normal, 1, hidden=(4,), scale=1e-4)
        c.net[-1].bias.data[0] = 3.0  # a trailing Tanh bends it
        if net == "custom activation":
            c.net[1] = Scaled(factor)
        else:
            c.net = torch.nn.Sequential(*c.net, torch.nn.Tanh())
        model.conditionals[i] = c
    _nearly_exact(model)


def test_sample_runs_the_hooks_of_a_model() -> None:
    """A forward hook on a conditional (here one moving its draws by 100) is part of the
    program: the layered draws left it out (mean 0.4 where the program's is 100.4)."""
    model = ppgen.dag([("a", "b")], hidden=(4,))
    model.conditionals[1] = Conditional(pyro.distributions.Normal, 1, hidden=(4,), scale=1e-4)
    model.conditionals[1].register_forward_hook(
        lambda module, parents, d: pyro.distributions.Normal(d.loc + 100.0, d.scale)
    )
    drawn = ppgen.sample(model, 200)
    torch.testing.assert_close(drawn["b"], model.conditionals[1](drawn["a"]).loc, rtol=0, atol=1e-3)


def test_sample_groups_no_networks_with_hooks() -> None:
    """A layer under a hook (spectral_norm's, which computes its weight at each call) runs
    alone: a group read the weight of its last call, here before new weights were loaded."""
    model = ppgen.dag([("a", "b"), ("a", "c")], hidden=(4,))
    for i in (1, 2):
        c = Conditional(pyro.distributions.Normal, 1, hidden=(4,), scale=1e-4)
        c.net[0] = torch.nn.utils.spectral_norm(c.net[0])
        model.conditionals[i] = c
    model.eval()
    ppgen.sample(model, 2)  # the weights of this call stay on the layers
    with torch.no_grad():
        for i in (1, 2):
            model.conditionals[i].net[0].weight_orig.mul_(-3.0)
            model.conditionals[i].net[-1].bias.add_(2.0)
    _nearly_exact(model)


def test_log_prob_of_a_model_of_mixed_dtypes_keeps_each_nodes_dtype() -> None:
    """A float32 group beside a float64 one: its terms came back in float64 (the columns'
    widest dtype), computed at another precision than its own call's."""
    model = random_dag(0, widen=False).float()
    for i in (3, 5, 7):
        model.conditionals[i].double()
    rows = ppgen.sample(model, 100)
    fast, slow = ExactLogLikelihood(model, rows), ExactLogLikelihood(model, rows, batched=False)
    assert {g.layers[0][0].weight.dtype for g in fast._plan(None).groups} == {
        torch.float32, torch.float64
    }
    batched, single = fast(rows), slow(rows)
    for name in model.nodes:
        assert batched[name].dtype == single[name].dtype, name
        torch.testing.assert_close(batched[name], single[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "activation",
    [lambda: torch.nn.Softmax(dim=1),
     lambda: torch.nn.BatchNorm1d(4, affine=False, track_running_stats=False)],
)  # fmt: skip
def test_sample_groups_no_networks_of_layers_across_rows_or_units(activation) -> None:
    """`Softmax(dim=1)` normalises the hidden units of one node's (N, H) activations but the
    rows of a group's (G, N, H), `BatchNorm1d` (without parameters) each unit over the rows
    but each row over (G, H) in a group (draws 17.8 from their mean, for 1e-4): such a
    network runs alone."""
    model = ppgen.dag([("a", "b"), ("a", "c")], hidden=(4,))
    pyro.set_rng_seed(0)
    for i in (1, 2):
        c = Conditional(pyro.distributions.Normal, 1, hidden=(4,), scale=1e-4,
                        activation=activation)  # fmt: skip
        c.net[-1].weight.data.mul_(10.0)
        model.conditionals[i] = c
    _nearly_exact(model)
