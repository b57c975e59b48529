import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from ppgen.closed_form import solve_closed_form
from ppgen.nn import Conditional, LinearGaussian, Root, Tabular


@pytest.mark.parametrize(
    "family,kwargs,support",
    [
        (dist.Normal, {}, None),
        (dist.Bernoulli, {}, {0.0, 1.0}),
        (dist.Categorical, {"cardinality": 4}, {0, 1, 2, 3}),
        (dist.Gamma, {}, None),
        (dist.Poisson, {}, None),
        (dist.Binomial, {"total_count": 5}, set(map(float, range(6)))),
    ],
)
def test_conditional_families(family, kwargs, support):
    cond = Conditional(family, in_features=3, hidden=(5,), **kwargs)
    d = cond(torch.randn(7), torch.randn(7, 2))
    assert d.batch_shape == (7,)
    x = d.sample()
    assert torch.isfinite(d.log_prob(x)).all()
    if support is not None:
        assert set(x.tolist()) <= support
    d.log_prob(x).sum().backward()
    assert all(p.grad is not None for p in cond.parameters())


def test_root_defaults_and_counts():
    assert Root(dist.Normal)().scale.item() == pytest.approx(1.0)
    assert Root(dist.Normal).n_params == 2
    assert Root(dist.Bernoulli).n_params == 1
    assert Root(dist.Categorical, cardinality=5).n_params == 4
    assert Root(dist.Normal, scale=2.0).n_params == 1
    assert Root(dist.Normal, event_shape=(3,))().event_shape == (3,)


def test_root_with_every_parameter_fixed():
    root = Root(dist.Normal, event_shape=(3,), loc=0.0, scale=2.0).to(torch.float32)
    d = root()
    assert root.n_params == 0 and root.eta.shape == (0,)
    assert d.event_shape == (3,) and d.batch_shape == () and d.mean.dtype == torch.float32
    assert d.log_prob(torch.zeros(4, 3)).shape == (4,)
    assert solve_closed_form(root, torch.randn(5, 3), [])  # nothing to solve


def test_categorical_logits_of_a_conditional_and_a_root():
    """A net's k - 1 outputs, the last logit fixed at 0; a root's k logits, k - 1 of them free."""
    cond = Conditional(dist.Categorical, in_features=1, hidden=(), cardinality=3)
    with torch.no_grad():
        cond.net[0].weight.zero_()
        cond.net[0].bias.copy_(torch.tensor([1.0, -2.0]))
    expected = F.log_softmax(torch.tensor([1.0, -2.0, 0.0]), -1)
    assert torch.allclose(cond(torch.zeros(1)).logits[0], expected, atol=1e-12)
    root = Root(dist.Categorical, cardinality=3, event_shape=(2,))
    assert root.eta.shape == (6,) and root.n_params == 4
    with torch.no_grad():
        root.eta.copy_(torch.tensor([1.0, -2.0, 0.0, -math.inf, 0.0, 0.0]))
    assert torch.allclose(root().base_dist.logits[0], expected, atol=1e-12)
    assert root().base_dist.probs[1].tolist() == [0.0, 0.5, 0.5]  # a logit of -inf: never
    assert root().log_prob(torch.tensor([[0, 1], [2, 0]])).tolist()[1] == -math.inf


def test_root_loads_the_k_minus_1_logits_of_earlier_files():
    """Earlier ppgen saved k - 1 logits a categorical root, the last one's 0 implied."""
    root = Root(dist.Categorical, cardinality=3, event_shape=(2,))
    root.load_state_dict({"eta": torch.tensor([1.0, -2.0, 0.5, 0.25])})
    assert root.eta.tolist() == [1.0, -2.0, 0.0, 0.5, 0.25, 0.0]
    plain = Root(dist.Normal)
    plain.load_state_dict({"eta": torch.tensor([1.0, 2.0])})
    assert plain.eta.tolist() == [1.0, 2.0]


def test_event_shaped_conditional():
    cond = Conditional(dist.Bernoulli, in_features=2, hidden=(4,), event_shape=(3, 2))
    d = cond(torch.randn(5, 2))
    assert d.batch_shape == (5,) and d.event_shape == (3, 2)
    assert d.log_prob(d.sample()).shape == (5,)


def test_tabular_indexes_its_table():
    cpt = Tabular(3, (2, 4))
    with torch.no_grad():
        cpt.logits.copy_(torch.randn(2, 4, 3))
    d = cpt(torch.tensor([1, 0]), torch.tensor([3.0, 2.0]))
    assert torch.allclose(d.logits[0], F.log_softmax(cpt.logits[1, 3], -1))
    assert torch.allclose(d.logits[1], F.log_softmax(cpt.logits[0, 2], -1))
    assert cpt.n_params == 2 * 2 * 4


def test_linear_gaussian_mean_is_linear():
    lg = LinearGaussian(2)
    a, b = torch.randn(6), torch.randn(6)
    d = lg(a, b)
    expected = lg.linear.weight[0, 0] * a + lg.linear.weight[0, 1] * b + lg.linear.bias
    assert torch.allclose(d.loc, expected)
    assert torch.allclose(d.scale, torch.ones(6))
    assert lg.n_params == 4


@pytest.mark.parametrize(
    "family,kwargs,message",
    [
        (dist.Categorical, {}, "Categorical needs cardinality"),
        (dist.Binomial, {}, "parameter 'total_count' is discrete"),
        (dist.MultivariateNormal, {}, "cannot be learned"),
        (dist.Uniform, {}, "Uniform has no fixed parameter constraints"),
    ],
)
def test_unsupported_families(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Root(family, **kwargs)


def test_softplus_init_is_one():
    assert F.softplus(torch.tensor(math.log(math.expm1(1.0)))).item() == pytest.approx(1.0)


def test_tabular_log_prob_and_inverse_cdf_sampling():
    cpt = Tabular(4, (3,))
    with torch.no_grad():
        cpt.logits.copy_(torch.randn(3, 4) * 2)
    parent = torch.randint(0, 3, (50,))
    value = torch.randint(0, 4, (50,))
    expected = torch.distributions.Categorical(logits=cpt.logits[parent]).log_prob(value)
    assert torch.allclose(cpt.log_prob(value, parent), expected, atol=1e-12)
    assert torch.allclose(cpt(parent).log_prob(value), expected, atol=1e-12)
    n = 200_000
    draws = cpt(torch.ones(n, dtype=torch.long)).sample()
    freq = torch.bincount(draws, minlength=4) / n
    p = cpt.logits[1].softmax(-1)
    # 5 standard errors per category: a false alarm about once in 400,000 runs
    assert ((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt() + 1e-12).all()
    assert cpt(parent).sample((7,)).shape == (7, 50)
