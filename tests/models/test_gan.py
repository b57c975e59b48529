import math

import pytest
import torch

import ppgen
from ppgen.adversarial import AdversarialStep
from ppgen.infer import fit_gan
from ppgen.metrics import mmd
from ppgen.models import GAN
from ppgen.models.gan import (
    ConvDiscriminator,
    ConvGenerator,
    MLPDiscriminator,
    MLPGenerator,
    StraightThroughBernoulli,
)


def small_gan(loss: str = "non_saturating") -> GAN:
    generator = MLPGenerator(2, 1, hidden_features=(32, 32))
    return GAN(generator, MLPDiscriminator(1, hidden_features=(32, 32)), 2, loss=loss)


def two_modes(n: int) -> torch.Tensor:
    return torch.where(torch.rand(n, 1) < 0.5, -2.0, 2.0) + 0.25 * torch.randn(n, 1)


@pytest.mark.parametrize(("loss", "saturates"), [("minimax", True), ("non_saturating", False)])
def test_generator_gradient_saturates_only_for_minimax(loss, saturates):
    # A discriminator sure that G(z) is fake: logit -10, D(G(z)) = sigmoid(-10) ~ 4.5e-5.
    gan = small_gan(loss)
    with torch.no_grad():
        for p in gan.discriminator.parameters():
            p.zero_()
        gan.discriminator.head.bias.fill_(-10.0)
    fake = gan.generator(torch.randn(16, 2))
    logits = gan.discriminator(fake)
    logits.retain_grad()
    gan.generator_loss(logits).sum().backward()
    expected = -torch.sigmoid(logits) if loss == "minimax" else -torch.sigmoid(-logits)
    torch.testing.assert_close(logits.grad, expected.detach())  # d loss / d logit, by autograd
    if saturates:
        assert logits.grad.abs().max() < 1e-4
    else:
        assert logits.grad.abs().min() > 0.99


@pytest.mark.parametrize("loss", ["minimax", "non_saturating"])
def test_terms_hold_the_discriminators_probabilities_of_real_and_generated_rows(loss):
    gan, x = small_gan(loss), two_modes(8)
    objective = AdversarialStep(gan)
    torch.manual_seed(3)
    terms = objective({"x": x})
    torch.manual_seed(3)
    with torch.no_grad():
        fake_logits = gan.discriminator(gan.generator(gan.prior(8).sample()))
    torch.testing.assert_close(terms["d_fake"], torch.sigmoid(fake_logits))
    torch.testing.assert_close(terms["d_real"], torch.sigmoid(gan.discriminator(x).detach()))
    hits = (terms["d_real"] > 0.5).to(x.dtype) + (terms["d_fake"] < 0.5).to(x.dtype)
    torch.testing.assert_close(terms["accuracy"], hits / 2)
    # in a step, D(G(z)) is that of the generator's step: its loss is -log D or log(1 - D)
    stepped = objective.train_on({"x": x})
    d_fake = 1 - stepped["loss_g"].exp() if loss == "minimax" else (-stepped["loss_g"]).exp()
    torch.testing.assert_close(stepped["d_fake"], d_fake)
    assert ((stepped["d_real"] > 0) & (stepped["d_real"] < 1)).all()


def test_gan_places_samples_on_both_modes():
    data = two_modes(1000)
    gan = small_gan()
    fit = fit_gan(gan, data, epochs=100, batch_size=100, lr_g=1e-3, lr_d=1e-3, progress=False)
    samples = gan.sample(1000)
    # A generator collapsed on one mode has MMD^2 ~ 0.44 at this bandwidth; the data's own
    # second sample ~ 0 (|.| < 0.005).
    assert mmd(samples, data, bandwidth=1.0) < 0.05
    assert 0.3 < (samples > 0).double().mean() < 0.7
    assert len(fit.history) == 100
    assert {"train/loss_d", "train/loss_g", "train/d_real", "train/d_fake"} <= set(fit.history[-1])


def test_val_keeps_the_epoch_of_lowest_mmd_without_changing_the_trajectory():
    data = two_modes(150)
    fits, gans = {}, {}
    for epochs, val in [(6, two_modes(100)), (None, None)]:
        torch.manual_seed(0)
        gans[val is None] = gan = small_gan()
        if val is None:  # the same fit without val, stopped at the epoch the first one kept
            epochs = fits[False].best_epoch["gan"]
        fits[val is None] = fit_gan(gan, data, val=val, val_samples=200, epochs=epochs,
                                    batch_size=50, progress=False)  # fmt: skip
    scored, plain = fits[False], fits[True]
    mmds = [r["val/mmd"] for r in scored.history]
    best = min(range(6), key=mmds.__getitem__) + 1
    assert scored.best_epoch == {"gan": best} and best < 6  # not the last epoch, in this case
    # the val draws leave the random state alone: the same steps, and the kept parameters are
    # exactly those after epoch `best`, both players
    for a, b in zip(scored.history, plain.history, strict=False):
        assert a["train/loss_d"] == b["train/loss_d"] and a["train/loss_g"] == b["train/loss_g"]
    for p, q in zip(gans[False].parameters(), gans[True].parameters(), strict=True):
        assert torch.equal(p, q)


def test_average_is_the_exponential_moving_average_of_the_generator_steps():
    torch.manual_seed(0)
    gan, x = small_gan(), two_modes(32)
    objective = AdversarialStep(gan, average=0.9)
    objective.train_on({"x": x})
    expected = [p.detach().clone() for p in gan.generator.parameters()]  # the first step's
    for _ in range(3):
        objective.train_on({"x": x})
        now = gan.generator.parameters()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, now, strict=True)]
    for e, p in zip(expected, objective.averaged.module.parameters(), strict=True):
        torch.testing.assert_close(p, e)
    # in fit_gan the average changes no step (the same discriminator), and the GAN's generator
    # ends as the average, not as the last parameters
    gans = []
    for average in (None, 0.9):
        torch.manual_seed(0)
        gans.append(small_gan())
        fit_gan(gans[-1], x, average=average, epochs=2, batch_size=16, progress=False)
    pairs = zip(*(g.discriminator.parameters() for g in gans), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    assert not torch.equal(*(g.generator.net[0].weight for g in gans))


def test_r1_penalty_of_a_linear_discriminator_is_half_gamma_times_its_squared_weights():
    class Linear(torch.nn.Linear):  # logit w.x + b: its gradient in x is w at every row
        def forward(self, x):
            return super().forward(x).squeeze(-1)

    gan = GAN(MLPGenerator(2, 3, hidden_features=(4,)), Linear(3, 1), 2)
    x = torch.randn(10, 3)
    losses = []
    for r1 in (0.0, 0.7):
        torch.manual_seed(1)  # the same generated rows
        loss, (terms, _) = AdversarialStep(gan, r1=r1).critic(x, 4.0)
        losses.append(loss)
        fake = _fake_logits(gan, 1)  # the recorded terms leave the penalty out
        assert torch.equal(terms, GAN.discriminator_loss(gan.discriminator(x), fake))
    penalty = 0.7 / 2 * gan.discriminator.weight.pow(2).sum() * 10 / 4.0  # 10 rows, over rows=4
    torch.testing.assert_close(losses[1] - losses[0], penalty.detach())


def _fake_logits(gan: GAN, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return gan.discriminator(gan.generator(gan.prior(10).sample()))


def test_program_graph_and_sample_shapes():
    gan = GAN(ConvGenerator(4, (8, 8), channels=16), ConvDiscriminator((8, 8), channels=8), 4)
    x = gan.sample(5)
    assert x.shape == (5, 64) and set(x.unique().tolist()) <= {0.0, 1.0}  # binary by default
    grey = ConvGenerator(4, (8, 8), channels=16, output=torch.nn.Sigmoid())(torch.randn(5, 4))
    assert ((grey > 0) & (grey < 1)).all() and not set(grey.unique().tolist()) <= {0.0, 1.0}
    g = ppgen.graph(gan, n=3)
    assert sorted(g.edges) == [("z", "x")]
    assert g.nodes["x"]["distribution"] == "Implicit"
    assert not g.nodes["x"]["observed"]
    fit = fit_gan(gan, torch.rand(32, 64).round(), epochs=1, batch_size=16, progress=False)
    assert 0 <= fit.history[0]["train/accuracy"] <= 1
    assert all(torch.isfinite(p).all() for p in gan.parameters())


def test_straight_through_bernoulli_is_binary_with_the_gradient_of_the_mean():
    logits = torch.tensor([-2.0, 0.0, 1.0], dtype=torch.float64).expand(20000, 3).requires_grad_()
    x = StraightThroughBernoulli()(logits)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # frequencies of 20000 draws: standard error <= 0.0036, so 5 of them fail about 1 run in 10^6
    p = torch.sigmoid(logits[0]).detach()
    assert (x.mean(0).detach() - p).abs().max() < 5 * 0.5 / 20000**0.5
    x.sum().backward()  # d x / d logit = sigma'(logit) = p (1 - p), by autograd
    torch.testing.assert_close(logits.grad, (p * (1 - p)).expand(20000, 3))


def test_no_rows_to_draw_is_an_error():
    with pytest.raises(ValueError, match="n must be a positive number of rows, not 0"):
        small_gan().sample(0)  # was Pyro's ZeroDivisionError from an empty plate


def test_gan_has_no_density():
    gan = small_gan()
    assert gan.has_density is False
    with pytest.raises(ValueError, match="GAN has no density"):
        gan.log_prob(torch.zeros(3, 1))


def test_bad_arguments_and_nonfinite_loss():
    with pytest.raises(ValueError, match="loss must be"):
        small_gan("wasserstein")
    with pytest.raises(ValueError, match="r1 must be at least 0"):
        AdversarialStep(small_gan(), r1=-1.0)
    with pytest.raises(ValueError, match="average must be in"):
        AdversarialStep(small_gan(), average=1.0)
    with pytest.raises(ValueError, match="NaN"):
        fit_gan(small_gan(), torch.tensor([[0.0], [float("nan")]]), epochs=1, progress=False)
    gan = small_gan()
    with torch.no_grad():
        gan.discriminator.head.bias.fill_(float("inf"))  # D(x) = 1 everywhere: log(1 - D) = -inf
    before = [p.detach().clone() for p in gan.parameters()]
    with pytest.raises(ValueError, match="discriminator's loss became non-finite"):
        fit_gan(gan, torch.zeros(8, 1), epochs=1, progress=False)
    for p, q in zip(gan.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_rows_of_the_wrong_shape_and_a_one_row_val_are_refused_before_any_step():
    gan = small_gan()  # rows of shape (1,)
    before = [p.detach().clone() for p in gan.parameters()]
    cases = [
        (torch.randn(8, 2), None, r"The data rows have shape \(2,\), but the generator makes"),
        (torch.randn(8, 1), torch.randn(4, 3), r"The val rows have shape \(3,\)"),
        (torch.randn(8, 1), torch.randn(1, 1), "val must have at least 2 rows"),
    ]
    for data, val, message in cases:
        with pytest.raises(ValueError, match=message):
            fit_gan(gan, data, val=val, epochs=1, batch_size=4, progress=False)
    for p, q in zip(gan.parameters(), before, strict=True):
        assert torch.equal(p, q)
    wide = GAN(gan.generator, gan.discriminator, 5)  # codes the generator cannot take
    with pytest.raises(ValueError, match=r"cannot take the GAN's codes of z_dim=5: mat1"):
        fit_gan(wide, torch.randn(8, 1), epochs=1, progress=False)  # was torch's RuntimeError


class Shift(torch.nn.Module):
    """x = z + b: with b = 1, p_g = N(1, 1)."""

    def __init__(self, b):
        super().__init__()
        self.b = torch.nn.Parameter(torch.tensor(b))

    def forward(self, z):
        return z + self.b


class Logistic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


@pytest.mark.parametrize("loss", ["minimax", "non_saturating"])
def test_the_discriminator_learns_the_optimal_one_and_rows_take_the_generators_floats(loss):
    # the generator fixed (lr_g = 0) at p_g = N(1, 1), p_data = N(0, 1): the optimal
    # D*(x) = p_data / (p_data + p_g) has the logit log p_data(x) - log p_g(x) = 1/2 - x
    gan = GAN(Shift(1.0), Logistic(), 1, loss=loss).float()  # float64 data: once a RuntimeError
    fit_gan(gan, torch.randn(4000, 1), epochs=30, batch_size=200, lr_g=0.0, lr_d=0.02,
            progress=False)  # fmt: skip
    # sd of the logistic regression's slope with 8000 rows is about 0.02; 0.1 is > 4 sd
    assert gan.discriminator.linear.weight.item() == pytest.approx(-1.0, abs=0.1)
    assert gan.discriminator.linear.bias.item() == pytest.approx(0.5, abs=0.1)
    assert gan.generator.b.item() == 1.0
    fit = fit_gan(gan, torch.randn(8, 1), val=torch.randn(4, 1), epochs=1, progress=False)
    assert math.isfinite(fit.history[-1]["val/mmd"])  # held-out rows of float64 too


def test_at_p_g_equal_p_data_and_d_one_half_the_minimax_value_is_minus_log_4():
    gan = GAN(Shift(0.0), Logistic(), 1, loss="minimax")
    torch.nn.init.zeros_(gan.discriminator.linear.weight)
    torch.nn.init.zeros_(gan.discriminator.linear.bias)
    fit = fit_gan(gan, torch.randn(64, 1), epochs=1, batch_size=64, lr_g=0.0, lr_d=0.0,
                  progress=False)  # fmt: skip
    last = fit.history[-1]  # V(D, G) = E log D(x) + E log(1 - D(G(z))) = -loss_d
    assert -last["train/loss_d"] == pytest.approx(-math.log(4), abs=1e-12)
    assert last["train/loss_g"] == pytest.approx(math.log(0.5), abs=1e-12)
    assert last["train/d_real"] == last["train/d_fake"] == 0.5


def test_ppgen_log_prob_of_a_gan_says_it_has_no_density():
    gan = GAN(MLPGenerator(2, 3, hidden_features=(4, 4)),
              MLPDiscriminator(3, hidden_features=(4, 4)), 2)  # fmt: skip
    with pytest.raises(ValueError, match="GAN has no density"):
        ppgen.log_prob(gan, {"x": torch.zeros(2, 3)})


def test_players_with_one_layer_or_none():
    """A generator with no hidden layer is linear; a discriminator's last hidden layer is its
    features, so it needs one, and says so."""
    linear = MLPGenerator(2, 3, hidden_features=())
    z = torch.randn(4, 2)
    assert torch.allclose(linear(z), z @ linear.net[0].weight.T + linear.net[0].bias)
    d = MLPDiscriminator(3, hidden_features=(5,))
    assert d(torch.randn(4, 3)).shape == (4,) and d.features(torch.randn(4, 3)).shape == (4, 5)
    with pytest.raises(ValueError, match="needs at least one hidden layer"):
        MLPDiscriminator(3, hidden_features=())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 1}, "needs channels >= 2, not 1"),  # was torch's RuntimeError at a call
        ({"shape": (0, 8)}, r"multiples of 4, not \(0, 8\)"),  # was a reshape's RuntimeError
    ],
)
def test_conv_generator_sizes_that_make_no_images(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvGenerator(2, **kwargs)
