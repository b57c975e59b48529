import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import ppgen
from ppgen.datasets import digits
from ppgen.infer import fit_svi
from ppgen.models import VAE


@pytest.fixture(autouse=True)
def param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_graph_shows_latent_code_and_observed_pixels():
    vae = VAE(64, 4, hidden=(16,))
    graph = ppgen.graph(vae, torch.ones(3, 64))
    assert list(graph.edges) == [("z", "x")]
    assert graph.nodes["z"]["observed"] is False and graph.nodes["x"]["observed"] is True
    assert graph.nodes["z"]["plates"] == graph.nodes["x"]["plates"] == ("data",)
    assert graph.nodes["x"]["n_params"] == vae.decoder.n_params == (4 * 16 + 16) + (16 * 64 + 64)
    assert ppgen.draw(vae, torch.ones(3, 64)) is not None


@pytest.mark.parametrize("likelihood", ["bernoulli", "normal"])
@pytest.mark.parametrize("x_shape", [6, (2, 3)])
def test_shapes(likelihood, x_shape):
    vae = VAE(x_shape, 2, hidden=(8,), likelihood=likelihood)
    x = vae.sample(5)
    shape = (x_shape,) if isinstance(x_shape, int) else x_shape
    assert x.shape == (5, *shape)
    assert vae.encode(x).shape == (5, 2) and vae.encode(x, n=3).shape == (3, 5, 2)
    assert vae.decode(torch.zeros(5, 2)).event_shape == shape
    log_p = vae.log_prob(x, num_samples=7, chunk_size=3)
    assert log_p.shape == (5,) and torch.isfinite(log_p).all()


def test_log_prob_per_row_matches_a_manual_importance_sum():
    vae = VAE(10, 3, hidden=(8,))
    x = vae.sample(4)
    k = 6
    pyro.set_rng_seed(1)
    estimate = vae.log_prob(x, num_samples=k)
    pyro.set_rng_seed(1)
    with torch.no_grad():
        q = vae.posterior(x.repeat(k, 1))
        z = q.sample()
        log_w = vae.prior(k * 4).log_prob(z) + vae.decode(z).log_prob(x.repeat(k, 1))
        log_w = (log_w - q.log_prob(z)).reshape(k, 4)
    torch.testing.assert_close(estimate, log_w.logsumexp(0) - math.log(k))


def test_k1_log_prob_is_the_elbo_of_the_same_draw():
    vae = VAE(10, 3, hidden=(8,))
    x = vae.sample(4)
    pyro.set_rng_seed(2)
    bound = vae.log_prob(x, num_samples=1)
    pyro.set_rng_seed(2)
    assert bound.sum().item() == pytest.approx(-Trace_ELBO().loss(vae, vae.guide, x), abs=1e-9)


def test_large_k_runs_in_chunks_and_tightens_the_bound():
    vae = VAE(64, 4, hidden=(16,))
    x = digits().test[:20]
    elbo = torch.stack([vae.log_prob(x, num_samples=1) for _ in range(50)]).mean(0)
    iwae = vae.log_prob(x, num_samples=5000, chunk_size=500)
    assert (iwae > elbo).all()


def test_fit_svi_improves_the_bound_on_digits():
    data = digits()
    vae = VAE(64, 4, hidden=(32,))
    before = vae.log_prob(data.test[:50], num_samples=50).mean()
    fit = fit_svi(vae, vae.guide, data.train[:400], epochs=10, batch_size=64, lr=3e-3,
                  val=data.test[:50], progress=False)  # fmt: skip
    after = vae.log_prob(data.test[:50], num_samples=50).mean()
    assert after > before + 5 and fit.history[-1]["val"] > fit.history[0]["val"]


def test_the_bound_grows_with_k_in_expectation_and_stays_below_the_exact_log_p():
    vae = VAE(4, 1, hidden=(6,))
    with torch.no_grad():
        for p in vae.parameters():
            p.mul_(3.0)  # an encoder far from the posterior: gaps of nats, not hundredths
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
    z = torch.linspace(-12.0, 12.0, 24001)
    with torch.no_grad():
        joint = vae.decode(z[:, None]).log_prob(x[:, None, :]) + vae.prior(1).log_prob(z[:, None])
    exact = (joint.logsumexp(1) + math.log(z[1] - z[0])).mean()
    means, errors = [], []
    for k in (1, 10, 100):
        bounds = torch.stack([vae.log_prob(x, num_samples=k).mean() for _ in range(20)])
        means.append(bounds.mean().item())
        errors.append(bounds.std().item() / 20**0.5)
    # gaps of 4.2, 2.1, 1.2 nats with standard errors 0.16, 0.11, 0.07: each step > 5 se of the two
    assert means[0] < means[1] < means[2] < exact.item()
    steps = zip(means, means[1:], errors, errors[1:], strict=False)
    assert all(b - a > 3 * (ea + eb) for a, b, ea, eb in steps)


def test_no_rows_to_draw_is_an_error_and_no_rows_to_encode_are_none():
    vae = VAE(3, 2, hidden=(4,))
    with pytest.raises(ValueError, match="n must be a positive number of rows, not 0"):
        vae.sample(0)  # was Pyro's ZeroDivisionError from an empty plate
    assert vae.encode(torch.ones(0, 3)).shape == (0, 2)


def test_unknown_likelihood_is_an_error():
    with pytest.raises(ValueError, match="likelihood"):
        VAE(4, 2, likelihood="poisson")


@pytest.mark.parametrize("x_dim", [1, 3])
def test_codes_and_rows_of_one_entry_stay_vectors_and_the_bound_meets_the_exact_log_p(x_dim):
    # z_dim = 1: the decoder once read codes (N, 1) as N x 1 scalars, drawing (N, N, D) rows;
    # x_dim = 1: the encoder did so with the rows, and q(z | x) had N x N draws
    vae = VAE(x_dim, 1, hidden=(6,))
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=x_dim)))
    assert vae.sample(5).shape == (5, x_dim) and vae.encode(x).shape == (len(x), 1)
    assert vae.posterior(x).batch_shape == vae.decode(vae.encode(x)).batch_shape == (len(x),)
    # the exact log p(x) by quadrature over the one-dimensional code: a normalised density
    z = torch.linspace(-12.0, 12.0, 24001)
    with torch.no_grad():
        joint = vae.decode(z[:, None]).log_prob(x[:, None, :]) + vae.prior(1).log_prob(z[:, None])
    exact = joint.logsumexp(1) + math.log(z[1] - z[0])
    assert exact.logsumexp(0).item() == pytest.approx(0.0, abs=1e-9)
    # the rows' mean gap of the K = 4000 bound is 0.00 +- 0.03 over seeds 0-5; 0.1 is > 3 sd
    gap = exact - vae.log_prob(x, num_samples=4000)
    assert gap.mean().abs().item() < 0.1
