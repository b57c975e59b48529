import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.nn import MixtureOfGaussians, gaussian_mixture


@pytest.mark.parametrize("in_features", [0, 2])
def test_density_integrates_to_one(in_features):
    node = MixtureOfGaussians(in_features, components=3, hidden=(8,))
    parents = (torch.randn(1, in_features),) if in_features else ()
    d = node(*parents)
    grid = torch.linspace(-30.0, 30.0, 200_001).unsqueeze(-1)  # (G, 1) against batch (1,)
    density = d.log_prob(grid).exp().squeeze(-1)
    assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-9)
    x = d.sample((5,))
    assert x.shape == (5, *d.batch_shape) and torch.isfinite(d.log_prob(x)).all()


def test_mle_recovers_two_components():
    truth = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.3, 0.7])),
        dist.Normal(torch.tensor([-2.0, 1.5]), torch.tensor([0.5, 0.8])),
    )
    x = truth.sample((4000,))
    node = MixtureOfGaussians(components=2)
    optimizer = torch.optim.Adam(node.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        (-node().log_prob(x).mean()).backward()
        optimizer.step()
    fitted = node()
    order = fitted.component_distribution.loc.argsort()
    # standard errors at n = 4000 are below 0.03 for every parameter: 0.1 is over 3 of them
    weights = fitted.mixture_distribution.probs[order]
    assert torch.allclose(weights, torch.tensor([0.3, 0.7]), atol=0.1)
    loc = fitted.component_distribution.loc[order]
    assert torch.allclose(loc, torch.tensor([-2.0, 1.5]), atol=0.1)
    scale = fitted.component_distribution.scale[order]
    assert torch.allclose(scale, torch.tensor([0.5, 0.8]), atol=0.1)


class Pair(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.x0 = MixtureOfGaussians(components=2)
        self.x1 = MixtureOfGaussians(1, components=2, hidden=(8,))

    def forward(self, n=1):
        with pyro.plate("data", n):
            x0 = pyro.sample("x0", self.x0())
            pyro.sample("x1", self.x1(x0))


def test_node_in_a_program():
    model = Pair()
    g = ppgen.graph(model, n=3)
    assert list(g.edges) == [("x0", "x1")]
    # one of the 2 logits is redundant: its row of the last layer (8 weights and a bias) is free
    assert model.x1.n_params == (1 * 8 + 8) + (8 * 6 + 6) - (8 + 1)
    assert model.x0.n_params == ppgen.count_parameters(model.x0) == 3 * 2 - 1
    assert g.nodes["x0"]["distribution"] == "MixtureSameFamily"


def test_free_parameters_and_bad_sizes():
    # K - 1 weights, K means, K scales (the notes' count of a categorical: k - 1)
    assert [MixtureOfGaussians(components=k).n_params for k in (1, 2, 5)] == [2, 5, 14]
    linear = MixtureOfGaussians(2, components=3, hidden=())
    assert ppgen.count_parameters(linear) == (2 * 9 + 9) - (2 + 1)
    linear.net[0].weight.requires_grad_(False)
    assert linear.n_params == 9 - 1  # the biases alone, one of the 3 logits' redundant
    with pytest.raises(ValueError, match="needs components >= 1, not 0"):
        MixtureOfGaussians(components=0)  # a mixture of none: log p = -inf everywhere, before
    with pytest.raises(ValueError, match="takes 3K numbers a mixture .* not 7"):
        gaussian_mixture(torch.zeros(5, 7))  # chunked as 3 + 3 + 1, a shared scale, before


def test_no_hidden_layer_and_files_of_pyros_densenn_load():
    """`hidden=()` is a linear map of the parents; weights saved under the keys of Pyro's
    `DenseNN` (earlier ppgen) load into the same node."""
    linear = MixtureOfGaussians(2, components=3, hidden=())
    parents = torch.randn(5, 2)
    assert linear(parents).batch_shape == (5,) and len(linear.net) == 1
    node = MixtureOfGaussians(2, components=3, hidden=(8, 4))
    old = {f"net.layers.{int(k.split('.')[1]) // 2}.{k.split('.')[2]}": v
           for k, v in node.state_dict().items()}  # fmt: skip
    assert sorted(old)[0] == "net.layers.0.bias"
    clone = MixtureOfGaussians(2, components=3, hidden=(8, 4))
    clone.load_state_dict(old)
    x = torch.randn(5)
    assert torch.equal(clone(parents).log_prob(x), node(parents).log_prob(x))


def test_a_root_mixture_called_on_a_parent_says_so():
    mixture = MixtureOfGaussians(components=3)
    with pytest.raises(ValueError, match=r"in_features=0 \(a root\), but was called on 1 parent"):
        mixture(torch.zeros(4))
