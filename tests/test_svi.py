import math
import re

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

import ppgen.infer
from ppgen.elbo import ELBOObjective, svi_table
from ppgen.importance import importance_log_prob, log_weights
from ppgen.infer import fit_svi
from ppgen.models import VAE
from ppgen.nn import Conditional, Model, Root
from ppgen.nn import LinearGaussian as LinearNode
from ppgen.result import FitResult


@pytest.fixture(autouse=True)
def param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


class LinearGaussian(nn.Module):
    """z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3), with an amortised linear guide."""

    def __init__(self):
        super().__init__()
        self.w = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]])
        self.b = torch.tensor([0.1, -0.2, 0.3])
        self.s = 0.5
        self.enc = nn.Linear(3, 4)

    def model(self, x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.b, self.s).to_event(1), obs=x)

    def guide(self, x):
        loc, log_scale = self.enc(x).chunk(2, -1)
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def rough_guide(self, x):
        """The exact posterior, shifted by 0.3 and widened by 1.3 per coordinate."""
        cov = torch.linalg.inv(torch.eye(2) + self.w.T @ self.w / self.s**2)
        loc = (x - self.b) @ self.w @ cov / self.s**2
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(loc + 0.3, 1.3 * cov.diagonal().sqrt()).to_event(1))

    def marginal(self):
        cov = self.w @ self.w.T + self.s**2 * torch.eye(3)
        return dist.MultivariateNormal(self.b, cov)


def test_k1_bound_is_the_single_sample_elbo():
    lg = LinearGaussian()
    x = lg.marginal().sample((5,))
    pyro.set_rng_seed(1)
    bound = importance_log_prob(lg.model, lg.guide, x, num_samples=1)
    pyro.set_rng_seed(1)
    elbo = -Trace_ELBO().loss(lg.model, lg.guide, x)
    assert bound.shape == (5,)
    assert bound.sum().item() == pytest.approx(elbo, abs=1e-10)


def test_bound_grows_with_k_in_expectation():
    lg = LinearGaussian()
    x = lg.marginal().sample((4,))
    means = [
        torch.stack(
            [importance_log_prob(lg.model, lg.guide, x, num_samples=k) for _ in range(200)]
        )
        .mean()
        .item()
        for k in (1, 10, 100)
    ]
    exact = lg.marginal().log_prob(x).mean().item()
    assert means[0] < means[1] < means[2] <= exact + 0.01


def test_large_k_matches_the_linear_gaussian_marginal():
    lg = LinearGaussian()
    x = lg.marginal().sample((6,))
    estimate = importance_log_prob(lg.model, lg.rough_guide, x, num_samples=5000, chunk_size=1000)
    # weights of a widened, shifted posterior have a relative sd near 1: 5000 draws, ~0.015 nats
    torch.testing.assert_close(estimate, lg.marginal().log_prob(x), atol=0.08, rtol=0)


def test_a_latent_site_the_guide_leaves_out_is_proposed_by_its_prior():
    # z1, z2 ~ N(0, 1), x | z ~ N(z1 + z2, 1): p(x) = N(x; 0, 3). The guide draws z1 from its
    # prior too, so every weight is p(x | z): relative sd ~0.6, 20000 draws, ~0.005 nats
    def model(x):
        with pyro.plate("rows", len(x)):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z1 + z2, 1.0), obs=x)

    def guide(x):
        with pyro.plate("rows", len(x)):
            pyro.sample("z1", dist.Normal(0.0, 1.0))

    x = torch.tensor([0.0, 1.5])
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning, match="^Site 'z2' is latent in the model, but neither the data "
                      "give it nor the guide draws it, so it is drawn from the model's prior"):  # fmt: skip
        estimate = importance_log_prob(model, guide, x, num_samples=20000)
    torch.testing.assert_close(estimate, dist.Normal(0.0, 3**0.5).log_prob(x), atol=0.03, rtol=0)
    def fitted(x):  # fit_svi says it too
        with pyro.plate("rows", len(x)):
            pyro.sample("z1", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    with pytest.warns(UserWarning, match="^Site 'z2' is latent in the model"):
        ppgen.infer.fit_svi(model, fitted, x, epochs=1, progress=False)


def _pyro_normal_normal(x):
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_a_guide_with_a_parameter_per_row_draws_once_a_pass():
    # AutoNormal of a latent per row holds N locations: it cannot follow rows repeated K times,
    # so each draw is a pass of its own. At the exact posterior N(x/2, 1/2) every weight is p(x)
    x = torch.tensor([0.0, 1.0, -2.0])
    exact = dist.Normal(0.0, 2**0.5).log_prob(x)
    init = pyro.infer.autoguide.init_to_value(values={"z": x / 2})
    guide = pyro.infer.autoguide.AutoNormal(_pyro_normal_normal, init_loc_fn=init, init_scale=0.5**0.5)
    guide(x)  # built on the rows, as a fit builds it
    estimate = ppgen.log_prob(_pyro_normal_normal, x, guide=guide, num_samples=10)
    torch.testing.assert_close(estimate, exact, atol=1e-5, rtol=0)
    fit = fit_svi(_pyro_normal_normal, guide, x, elbo="iwae", num_particles=4, epochs=1,
                  batch_size=None, progress=False)  # fmt: skip
    assert fit.history[0]["train"] == pytest.approx(exact.mean().item(), abs=1e-5)


def test_a_program_reading_a_tensor_per_row_from_outside_its_arguments_draws_once_a_pass():
    # x_i | z_i ~ N(z_i, s_i^2) with s read from the closure: it cannot follow the rows repeated
    # K times. At the exact posterior N(x / (1 + s^2), s^2 / (1 + s^2)) every weight is p(x)
    x, s = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 2.0, 0.5])

    def model(x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, s), obs=x)

    def guide(x):
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(x / (1 + s**2), s / (1 + s**2).sqrt()))

    estimate = ppgen.log_prob(model, x, guide=guide, num_samples=10)
    exact = dist.Normal(0.0, (1 + s**2).sqrt()).log_prob(x)
    torch.testing.assert_close(estimate, exact, atol=1e-5, rtol=0)


def test_a_delta_guide_has_no_importance_weights():
    # q = Delta(z*) gives log p(x, z*) whatever K: a density at a point, no estimate of log p(x)
    x = torch.tensor([0.0, 1.0, -2.0])
    guide = pyro.infer.autoguide.AutoDelta(_pyro_normal_normal)
    guide(x)
    message = "Site 'z' of the guide is a Delta (a point), which has no importance weights"
    with pytest.raises(ValueError, match=re.escape(message)):
        ppgen.log_prob(_pyro_normal_normal, x, guide=guide, num_samples=10)

    def model(x):
        with pyro.plate("rows", len(x)):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z + w, 1.0), obs=x)

    guide = pyro.infer.autoguide.AutoGuideList(model)  # AutoNormal's Deltas are draws, AutoDelta's not
    guide.append(pyro.infer.autoguide.AutoNormal(pyro.poutine.block(model, expose=["z"])))
    guide.append(pyro.infer.autoguide.AutoDelta(pyro.poutine.block(model, expose=["w"])))
    guide(x)
    with pytest.raises(ValueError, match=re.escape(message.replace("'z'", "'w'"))):
        ppgen.log_prob(model, x, guide=guide, num_samples=10)


def test_a_guide_drawing_a_site_the_model_observes_is_refused():
    # z in the data (or obs= in the program) is observed, yet the guide draws it: its draw is
    # never used and its -log q(z) counts, so the figure is neither log p(x, z) nor log p(x)
    x, z = torch.tensor([0.0, 1.0]), torch.tensor([0.5, -0.5])

    def guide(n=1):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("rows", n):
            pyro.sample("z", dist.Normal(loc, 1.0))

    message = "Site 'z' is observed by the model (by obs= or in the data), yet the guide draws it"
    for query in (
        lambda: ppgen.log_prob(normal_normal, {"x": x, "z": z}, guide=guide, num_samples=5),
        lambda: fit_svi(normal_normal, guide, {"x": x, "z": z}, epochs=1, progress=False),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            query()

    def observing(x):
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Normal(0.0, 1.0), obs=z), 1.0), obs=x)

    def guide_of(x):
        guide(len(x))

    for elbo in ("trace", "iwae"):
        with pytest.raises(ValueError, match=re.escape(message)):
            fit_svi(observing, guide_of, x, elbo=elbo, epochs=1, progress=False)
    exact = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x)
    assert torch.allclose(ppgen.log_prob(normal_normal, {"x": x, "z": z}), exact, atol=1e-6)


def test_mean_field_and_sampled_kl_agree_in_expectation():
    lg = LinearGaussian()
    x = lg.marginal().sample((4,))
    n = 4000
    sampled = log_weights(lg.model, lg.rough_guide, x, n, len(x), (), {}).sum(1)
    analytic = -TraceMeanField_ELBO(num_particles=n, vectorize_particles=True).loss(
        lg.model, lg.rough_guide, x
    )
    # both are means of n draws; the analytic one varies less: 5 sd of the sampled mean, doubled
    assert abs(sampled.mean().item() - analytic) < 2 * 5 * sampled.std().item() / n**0.5


class NormalGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(0.0))
        self.scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, n=1):
        pyro.sample("mu", dist.Normal(self.loc, nn.functional.softplus(self.scale)))


@pytest.mark.parametrize("batch_size", [40, 10])
def test_fit_svi_reaches_the_normal_normal_posterior(batch_size):
    # mu ~ N(0, 1), x_i | mu ~ N(mu, 1): posterior N(sum x / (n + 1), 1 / (n + 1)), whatever
    # the batch: the prior counts once an epoch
    x = 1.0 + torch.randn(40)

    def model(n=1):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(mu, 1.0))

    guide = NormalGuide()
    fit = fit_svi(model, guide, {"x": x}, epochs=500, batch_size=batch_size, lr=0.03,
                  num_particles=4, progress=False, elbo="mean_field")  # fmt: skip
    assert isinstance(fit, FitResult) and fit.best_epoch == {"all": 500}
    loc, scale = guide.loc.item(), nn.functional.softplus(guide.scale).item()
    assert loc == pytest.approx(x.sum().item() / 41, abs=0.03)
    assert scale == pytest.approx(1 / math.sqrt(41), abs=0.03)


def test_iwae_objective_is_renyi_elbo_alpha_0_on_the_same_draws():
    lg = LinearGaussian()
    x = lg.marginal().sample((8,))
    objective = ELBOObjective(lg.model, lg.guide, "iwae", 5, ["*data"], True, (x,), {})
    pyro.set_rng_seed(3)
    ours = objective({"*data": x})["elbo"]
    pyro.set_rng_seed(3)
    # all sites lie in the data plate, so RenyiELBO keeps it outside its log-sum-exp
    assert -ours.item() == pytest.approx(
        RenyiELBO(alpha=0, num_particles=5).loss(lg.model, lg.guide, x)
    )
    assert ours.requires_grad


def test_fit_svi_tensor_convention_iwae_and_validation():
    lg = LinearGaussian()
    x = lg.marginal().sample((64,))
    before = importance_log_prob(lg.model, lg.guide, x, num_samples=200).mean()
    fit = fit_svi(lg.model, lg.guide, x, elbo="iwae", num_particles=5, epochs=30,
                  batch_size=32, lr=0.02, val=x[:16], patience=5, progress=False)  # fmt: skip
    after = importance_log_prob(lg.model, lg.guide, x, num_samples=200).mean()
    assert after > before and fit.history[-1]["val"] < 0
    assert set(fit.history[0]) >= {"epoch", "train", "val", "train/elbo", "val/elbo", "seconds"}


def test_auto_guides_fit_global_latents():
    x = 1.0 + torch.randn(40)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    fit_svi(model, "auto_delta", x, epochs=300, batch_size=40, lr=0.02, progress=False)
    # the MAP of mu is its posterior mean
    assert pyro.param("AutoDelta.mu").item() == pytest.approx(x.sum().item() / 41, abs=0.03)


@pytest.mark.parametrize("batch_size", [40, 10, 7])
def test_global_latents_count_once_an_epoch_whatever_the_batch(batch_size):
    # with lr 0 AutoDelta's mu stays put, and the epoch's ELBO per row is that of the whole
    # data: (sum_i log N(x_i | mu, 1) + log N(mu | 0, 1)) / n
    x, held_out = 1.0 + torch.randn(40), torch.randn(9)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    fit = fit_svi(model, "auto_delta", x, val=held_out, epochs=1, batch_size=batch_size,
                  lr=0.0, progress=False)  # fmt: skip
    mu = pyro.param("AutoDelta.mu").detach()
    prior = dist.Normal(0.0, 1.0).log_prob(mu)
    expected = (dist.Normal(mu, 1.0).log_prob(x).sum() + prior) / 40
    assert fit.history[0]["train"] == pytest.approx(expected.item(), rel=1e-5)
    # held-out rows: their own terms per row, the prior as in training (per training row)
    expected = dist.Normal(mu, 1.0).log_prob(held_out).mean() + prior / 40
    assert fit.history[0]["val"] == pytest.approx(expected.item(), rel=1e-5)


def test_the_plate_of_the_rows_is_told_from_another_of_the_batch_size():
    def model(x):  # rows of 5 columns, a latent w per column: outside the rows
        with pyro.plate("columns", 5, dim=-1):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            with pyro.plate("rows", len(x), dim=-2):
                pyro.sample("x", dist.Normal(w, 1.0), obs=x)

    x = torch.randn(20, 5)
    fit = fit_svi(model, "auto_delta", x, epochs=1, batch_size=5, lr=0.0, progress=False)
    w = pyro.param("AutoDelta.w").detach()
    total = dist.Normal(w, 1.0).log_prob(x).sum() + dist.Normal(0.0, 1.0).log_prob(w).sum()
    assert fit.history[0]["train"] == pytest.approx(total.item() / 20, rel=1e-5)


def test_an_auto_guide_of_a_latent_site_per_row_is_refused_with_minibatches():
    # its parameters would follow positions in a shuffled batch, not rows (where one batch
    # holds every row, it is SVI's fit: tests/test_pyro_parity.py)
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="Site 'z' is latent inside the plate of the rows 'rows'"):
        fit_svi(model, "auto_normal", torch.randn(100), epochs=1, batch_size=64, progress=False)


def test_wrong_column_name_is_named():
    def model(n=1):
        with pyro.plate("rows", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0))

    with pytest.raises(ValueError, match="'y' is not a sample site.*'z', 'x'"):
        fit_svi(model, "auto_normal", {"y": torch.zeros(3)}, progress=False)


def normal_normal(n=1):
    with pyro.plate("rows", n):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0))


def test_svi_data_may_be_a_dataframe_and_errors_never_print_the_data():
    def model(n=1):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(mu, 1.0))

    frame = pd.DataFrame({"x": [0.5, -1.0, 2.0]})
    rows = svi_table(model, frame, (), {}, None)
    assert torch.equal(rows.columns["x"], torch.tensor([0.5, -1.0, 2.0]))
    fit = fit_svi(model, "auto_delta", frame, epochs=1, progress=False)
    assert len(fit.history) == 1
    # anything else is the program's first argument, as SVI.step takes it: here a wrong one
    with pytest.raises(ValueError, match=r"^The model '.*model' raised TypeError at test_svi.py:") as error:
        fit_svi(model, "auto_delta", [[0.5], [-1.0]], progress=False)
    assert isinstance(error.value.__cause__, TypeError)


def test_log_prob_with_a_guide_checks_its_data():
    x = torch.tensor([0.0, 1.0])

    def guide(n=1):  # the exact posterior of each row; the rows come once per draw
        with pyro.plate("rows", n):
            pyro.sample("z", dist.Normal(x.repeat(n // 2) / 2, 0.5**0.5))

    exact = dist.Normal(0.0, 2**0.5).log_prob(x)  # every weight is p(x)
    for data in (
        {"x": x.numpy()},
        pd.DataFrame({"x": [0.0, 1.0]}),
        {"x": pd.Series([0.0, 1.0], index=[3, 4])},
    ):
        estimate = ppgen.log_prob(normal_normal, data, guide=guide, num_samples=10)
        assert torch.allclose(estimate, exact, rtol=0, atol=1e-12)
    for data, message in [
        ({"x": x, "q": x}, "Column 'q' is not a sample site of the model (its sites: 'z', 'x')."),
        ({"x": torch.tensor([0.0, float("nan")])}, "Column 'x' holds NaN or inf (row 1)."),
        (pd.DataFrame({"x": ["a", "b"]}), "Column 'x' cannot be read as numbers: it holds str 'a' "
         "in row 0, and its Normal site takes numbers."),  # text is no label of a real site
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ppgen.log_prob(normal_normal, data, guide=guide)


def test_non_finite_loss_names_the_site():
    def model(x):
        scale = pyro.param("scale", torch.tensor(0.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(0.0, scale, validate_args=False), obs=x)

    def guide(x):
        pass

    with pytest.raises(ValueError, match="site 'x' in the model"):
        fit_svi(model, guide, torch.ones(4), epochs=2, progress=False)


class Chain(Model):
    """Two latent codes in ppgen nodes: z1 -> z2 -> x, z1 -> x; the guide reads x, then z1."""

    def __init__(self):
        super().__init__()
        self.z1 = Root(dist.Normal, event_shape=(2,), loc=0.0, scale=1.0)
        self.z2 = Conditional(dist.Normal, 2, hidden=(4,))
        self.x = Conditional(dist.Normal, 3, hidden=(4,), event_shape=(3,))
        self.q1 = Conditional(dist.Normal, 3, hidden=(4,), event_shape=(2,))
        self.q2 = Conditional(dist.Normal, 5, hidden=(4,))

    def forward(self, x):
        with pyro.plate("rows", len(x)):
            z1 = pyro.sample("z1", self.z1())
            z2 = pyro.sample("z2", self.z2(z1))
            pyro.sample("x", self.x(z1, z2), obs=x)

    def guide(self, x):
        with pyro.plate("rows", len(x)):
            z1 = pyro.sample("z1", self.q1(x))
            pyro.sample("z2", self.q2(x, z1))


class GlobalMean(Model):
    """mu ~ N(0, 1), x_i | mu ~ N(w mu + b, s^2), in the dict convention with a global guide."""

    def __init__(self):
        super().__init__()
        self.mu, self.x, self.q = (
            Root(dist.Normal, loc=0.0, scale=1.0),
            LinearNode(1),
            Root(dist.Normal),
        )

    def forward(self, n=1):
        mu = pyro.sample("mu", self.mu())
        with pyro.plate("rows", n):
            pyro.sample("x", self.x(mu))

    def guide(self, n=1):
        pyro.sample("mu", self.q())


@pytest.mark.parametrize("elbo", ["trace", "mean_field"])
@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("program", ["vae", "chain", "global"])
def test_fast_elbo_is_pyros_on_the_same_draws(program, elbo, num_particles):
    if program == "global":
        model = GlobalMean()
        batch, guide, argument, observed = {"x": torch.randn(7)}, model.guide, False, ["x"]
    else:
        model = VAE(6, 2, hidden=(5,)) if program == "vae" else Chain()
        x = torch.randn(7, 6).gt(0).double() if program == "vae" else torch.randn(7, 3)
        batch, guide, argument, observed = {"*data": x}, model.guide, True, ["*data"]
    args = (batch["*data"],) if argument else ()
    objective = ELBOObjective(model, guide, elbo, num_particles, observed, argument, args, {})
    assert objective.prepare(batch) and objective.fast
    pyro.set_rng_seed(4)
    fast = objective(batch)["elbo"]
    pyro.set_rng_seed(4)
    exact = -(Trace_ELBO if elbo == "trace" else TraceMeanField_ELBO)(
        num_particles=num_particles
    ).differentiable_loss(objective._model, objective._guide, batch)
    assert fast.item() == pytest.approx(exact.item(), rel=1e-10, abs=1e-10)
    grads = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_fit_svi_takes_the_fast_path_only_where_the_structure_is_known(monkeypatch):
    objectives = []

    def spy(step, *args, **kwargs):
        objectives.append(step.objective)
        return train(step, *args, **kwargs)

    train = ppgen.infer.train
    monkeypatch.setattr(ppgen.infer, "train", spy)
    vae = VAE(6, 2, hidden=(5,))
    fit_svi(vae, vae.guide, torch.randn(20, 6).gt(0).double(), epochs=2, batch_size=8,
            progress=False)  # fmt: skip
    lg = LinearGaussian()
    fit_svi(lg.model, lg.guide, lg.marginal().sample((20,)), epochs=2, batch_size=8,
            progress=False)  # fmt: skip
    assert [o.fast for o in objectives] == [True, False]


def test_fast_path_falls_back_when_the_check_fails():
    vae = VAE(6, 2, hidden=(5,))
    x = torch.ones(4, 6)
    objective = ELBOObjective(vae, vae.guide, "trace", 1, ["*data"], True, (x,), {})
    objective._fast_elbo = lambda batch: torch.tensor(0.0)  # a wrong fast ELBO
    assert not objective.prepare({"*data": x})


def test_a_data_tensor_is_checked_against_the_model():
    vae = VAE(4, 2, hidden=(8,))  # Bernoulli pixels
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    cases = [
        (torch.full((8, 4), 2.0), r"Column 'x' has value \[2.0, 2.0, 2.0, 2.0\] in row 0, outside"),
        (torch.ones(8, 5), r"The guide 'VAE.guide' raised RuntimeError at \w+.py:\d+ on all 8 rows: mat1"),
    ]  # fmt: skip
    for x, message in cases:
        with pytest.raises(ValueError, match=message):
            fit_svi(vae, vae.guide, x, epochs=1, progress=False)
    x = torch.ones(3, 4)
    x[2, 1] = 0.5
    with pytest.raises(ValueError, match="in row 2, outside the support of its Bernoulli"):
        vae.log_prob(x)
    images = torch.ones(3, 12)  # a long row: the first value outside, not all of them
    images[1, 5:] = 0.5
    wide = VAE(12, 2, hidden=(3,))
    with pytest.raises(ValueError, match=r"^Column 'x' has value 0.5 at position \(5,\) in row 1, "):
        fit_svi(wide, wide.guide, images, epochs=1, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())


def test_a_factor_outside_the_rows_leaves_the_plate_of_the_rows_found():
    # the plate comes from the sites of the data alone: the factor is scaled with the prior
    x = 1.0 + torch.randn(40)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -0.5 * mu**2)
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    fit = fit_svi(model, "auto_delta", x, epochs=1, batch_size=10, lr=0.0, progress=False)
    mu = pyro.param("AutoDelta.mu").detach()
    total = dist.Normal(mu, 1.0).log_prob(x).sum() + dist.Normal(0.0, 1.0).log_prob(mu) - mu**2 / 2
    assert fit.history[0]["train"] == pytest.approx(total.item() / 40, rel=1e-5)


def test_an_unguided_global_latent_has_no_weight_per_row():
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    message = (r"^Site 'mu' is not inside the data plate \(its log-probability has shape \(\), "
               r"not one value per row first: 2 rows, repeated for 10 draws\), so")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        importance_log_prob(model, lambda x: None, torch.tensor([0.3, -1.0]), num_samples=10)


def test_an_error_inside_a_program_of_log_prob_with_a_guide_is_one_sentence():
    def model(x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):  # a weight of the wrong size, as in a port with a typo
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal((torch.ones(3, 3) @ x[:, None]).squeeze(-1), 1.0))

    message = (r"^The guide guide raised RuntimeError on 5 rows, repeated for 4 draws: mat1 and "
               r"mat2 shapes cannot be multiplied \(3x3 and 20x1\)$")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        ppgen.log_prob(model, torch.randn(5), guide=guide, num_samples=4)


def test_svi_validation_columns_and_parameters_are_checked():
    def model(n=1):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(mu, 1.0))

    data = {"x": torch.randn(20), "y": torch.randn(20)}
    with pytest.raises(ValueError, match="The validation data lack column 'y'"):
        fit_svi(model, "auto_delta", data, val={"x": torch.randn(5)}, epochs=1, progress=False)

    def guide(n=1):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="Neither the model nor the guide has parameters"):
        fit_svi(model, guide, data, epochs=1, progress=False)


def test_integer_images_are_taken_as_floats():
    x = torch.bernoulli(torch.rand(20, 6))
    vae = VAE(6, 2, hidden=(8,))
    pyro.set_rng_seed(0)
    as_floats = vae.log_prob(x, num_samples=5)
    for integers in (x.long(), x.to(torch.uint8)):
        pyro.set_rng_seed(0)
        assert torch.equal(vae.log_prob(integers, num_samples=5), as_floats)
    fit = fit_svi(vae, vae.guide, x.long(), epochs=1, progress=False)
    assert math.isfinite(fit.history[0]["train"])
