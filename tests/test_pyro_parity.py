"""fit_svi against pyro.infer.SVI on programs in the idioms of Pyro's examples.

A full batch takes SVI's steps: the same parameters after k Adam steps from the same seed
(1e-6). With minibatches, one epoch's gradients, each batch weighed by its rows, sum to the
gradient of the whole data's ELBO (deterministic guides, so the gradient is exact).
"""

import argparse
import copy
import functools
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.distributions.testing.fakes import NonreparameterizedBeta
from pyro.infer import (
    SVI,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.infer.autoguide import AutoDelta, AutoIAFNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from pyro.ops.indexing import Vindex
from torch import nn
from torch.distributions import constraints
from torch.nn.functional import softplus

import ppgen.guides
import ppgen.infer
import ppgen.models
from ppgen.infer import fit_svi

STEPS, LR = 8, 0.05


@pytest.fixture(autouse=True)
def param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _store() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _modules(*programs) -> list[nn.Module]:
    return [
        getattr(p, "__self__", p)
        for p in programs
        if isinstance(getattr(p, "__self__", p), nn.Module)
    ]


def _parity(make, args, kwargs=None, svi_elbo=None, **options):
    """Runs SVI and fit_svi (full batch) from the same seed and fresh programs; returns both
    fits' parameters (the param store's and the modules')."""
    kwargs = kwargs or {}
    results = []
    for run in ("svi", "ppgen"):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        model, guide = make()
        if run == "svi":
            svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), svi_elbo or Trace_ELBO())
            for _ in range(STEPS):
                svi.step(*args, **kwargs)
        else:
            options = {"batch_size": None, **options}
            fit_svi(model, guide, *args, epochs=STEPS, lr=LR, progress=False, **options, **kwargs)
        after = torch.rand(())  # the random stream continues alike
        modules = {
            f"{i}.{k}": v.detach().clone()
            for i, m in enumerate(_modules(model, guide))
            for k, v in m.state_dict().items()
        }
        results.append(({**_store(), **modules}, after))
    (ours_params, ours_after), (svi_params, svi_after) = results[1], results[0]
    assert set(ours_params) == set(svi_params) and ours_params
    for name, value in svi_params.items():
        assert torch.allclose(ours_params[name], value, rtol=0, atol=1e-6), (
            name,
            (ours_params[name] - value).abs().max(),
        )
    assert ours_after == svi_after
    return ours_params


# --- the programs --------------------------------------------------------------------------

N = 24


def regression():  # model(x, y): two arguments with rows
    def model(x, y):
        a = pyro.sample("a", dist.Normal(0.0, 10.0))
        b = pyro.sample("b", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(a + b * x, 1.0), obs=y)

    def guide(x, y):
        for name in ("a", "b"):
            loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
            scale = pyro.param(
                f"{name}_scale", torch.tensor(1.0), constraint=dist.constraints.positive
            )
            pyro.sample(name, dist.Normal(loc, scale))

    return model, guide


def masked():  # model(x, mask): a mask with rows
    def model(x, mask):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(x)), poutine_mask(mask):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model, AutoNormal(model)


def poutine_mask(mask):
    return pyro.poutine.mask(mask=mask)


def subsampled():  # the program subsamples itself
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(x), subsample_size=6) as index:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x[index])

    return model, AutoNormal(model)


def fixed_plate():  # a plate of fixed size, as some of Pyro's examples write it
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", N):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model, AutoNormal(model)


def mixture():  # a 2-component mixture, its assignments enumerated in the model
    @config_enumerate
    def model(x):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([2]).to_event(1))
        with pyro.plate("data", len(x)):
            k = pyro.sample("k", dist.Categorical(weights))
            pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)

    def guide(x):
        w = pyro.param("w", torch.ones(2), constraint=dist.constraints.positive)
        pyro.sample("weights", dist.Dirichlet(w))
        loc = pyro.param("locs_loc", torch.tensor([-1.0, 1.0]))
        pyro.sample("locs", dist.Normal(loc, 0.5).to_event(1))

    return model, guide


def hmm():  # a pyro.markov chain of enumerated states, sequences as rows
    def model(seqs):
        trans = pyro.param(
            "trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=dist.constraints.simplex
        )
        locs = pyro.param("hmm_locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("seqs", len(seqs), dim=-1):
            state = 0
            for t in pyro.markov(range(seqs.shape[1])):
                state = pyro.sample(f"s_{t}", dist.Categorical(trans[state]),
                                    infer={"enumerate": "parallel"})  # fmt: skip
                pyro.sample(f"y_{t}", dist.Normal(locs[state], 1.0), obs=seqs[:, t])

    return model, lambda seqs: None


class BayesianRegression(PyroModule):  # Pyro's tutorial: PyroModule[nn.Linear] with PyroSample
    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](3, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def bayesian_regression():
    model = BayesianRegression()
    return model, AutoNormal(model)


def eight_schools():  # local pyro.params, one per school: model(J, sigma, y)
    def model(J, sigma, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", J):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    def guide(J, sigma, y):
        pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(0.0)), 1.0))
        tau = pyro.param("tau_loc", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("tau", dist.Delta(tau))
        loc = pyro.param("theta_loc", torch.zeros(J))
        with pyro.plate("schools", J):
            pyro.sample("theta", dist.Normal(loc, 0.5))

    return model, guide


def factor():  # pyro.factor on a global
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        pyro.factor("penalty", -0.5 * mu**2)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model, AutoNormal(model)


def counts():  # integer data that the program indexes with (LDA's words)
    def model(words):
        topic = pyro.param("topic", torch.ones(5) / 5, constraint=dist.constraints.simplex)
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("words", len(words)):
            pyro.sample("w", dist.Categorical(topic), obs=words)
            pyro.sample("c", dist.Poisson(rate * topic[words]), obs=words.double())

    return model, AutoNormal(model)


def columns():  # model(x) observing columns obs=x[:, k]
    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x[:, 0], 1.0), obs=x[:, 1])

    return model, AutoNormal(model)


def keyword():  # model(x, y=None), the rows of y given by name
    def model(x, y=None):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(b * x, 0.5), obs=y)

    return model, AutoNormal(model)


def score_function():  # a discrete latent per row, trained by TraceGraph_ELBO
    def model(x):
        p = pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(3.0 * z, 1.0), obs=x)

    def guide(x):
        q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(q))

    return model, guide


@config_enumerate
def toy_model(prior, obs, num_obs):  # examples/toy_mixture_model_discrete_enumeration, verbatim
    p_A = pyro.sample("p_A", dist.Beta(1, 1))
    p_B = pyro.sample("p_B", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    p_C = pyro.sample("p_C", dist.Beta(torch.ones(2), torch.ones(2)).to_event(1))
    with pyro.plate("data_plate", num_obs):
        A = pyro.sample("A", dist.Bernoulli(p_A.expand(num_obs)), obs=obs["A"])
        # Vindex used to ensure proper indexing into the enumerated sample sites
        B = pyro.sample(
            "B",
            dist.Bernoulli(Vindex(p_B)[A.type(torch.long)]),
            infer={"enumerate": "parallel"},
        )
        pyro.sample("C", dist.Bernoulli(Vindex(p_C)[B.type(torch.long)]), obs=obs["C"])


def toy_guide(prior, obs, num_obs):
    a = pyro.param("a", prior["A"], constraint=constraints.positive)
    pyro.sample("p_A", dist.Beta(a[0], a[1]))
    b = pyro.param("b", prior["B"], constraint=constraints.positive)
    pyro.sample("p_B", dist.Beta(b[:, 0], b[:, 1]).to_event(1))
    c = pyro.param("c", prior["C"], constraint=constraints.positive)
    pyro.sample("p_C", dist.Beta(c[:, 0], c[:, 1]).to_event(1))


def toy_mixture():  # a dict as the first argument (its keys name sites): SVI.step's argument
    return toy_model, toy_guide


def rand_tensor(shape, mean, sigma):
    return mean * torch.ones(shape) + sigma * torch.randn(shape)


class SparseGammaDEF:  # examples/sparse_gamma_def, verbatim but for the sizes
    def __init__(self):
        self.top_width, self.mid_width, self.bottom_width, self.image_size = 3, 2, 2, 4
        self.alpha_z, self.beta_z = torch.tensor(0.1), torch.tensor(0.1)
        self.alpha_w, self.beta_w = torch.tensor(0.1), torch.tensor(0.3)
        self.alpha_init, self.mean_init, self.sigma_init = 0.5, 0.0, 0.1

    def model(self, x):
        x_size = x.size(0)
        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            w_top = pyro.sample("w_top", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            w_mid = pyro.sample("w_mid", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            w_bottom = pyro.sample("w_bottom", dist.Gamma(self.alpha_w, self.beta_w))
        with pyro.plate("data", x_size):
            z_top = pyro.sample(
                "z_top",
                dist.Gamma(self.alpha_z, self.beta_z).expand([self.top_width]).to_event(1),
            )
            w_top = (
                w_top.reshape(self.top_width, self.mid_width)
                if w_top.dim() == 1
                else w_top.reshape(-1, self.top_width, self.mid_width)
            )
            mean_mid = torch.matmul(z_top, w_top)
            z_mid = pyro.sample("z_mid", dist.Gamma(self.alpha_z, self.beta_z / mean_mid).to_event(1))
            w_mid = (
                w_mid.reshape(self.mid_width, self.bottom_width)
                if w_mid.dim() == 1
                else w_mid.reshape(-1, self.mid_width, self.bottom_width)
            )
            mean_bottom = torch.matmul(z_mid, w_mid)
            z_bottom = pyro.sample(
                "z_bottom", dist.Gamma(self.alpha_z, self.beta_z / mean_bottom).to_event(1)
            )
            w_bottom = (
                w_bottom.reshape(self.bottom_width, self.image_size)
                if w_bottom.dim() == 1
                else w_bottom.reshape(-1, self.bottom_width, self.image_size)
            )
            mean_obs = torch.matmul(z_bottom, w_bottom)
            pyro.sample("obs", dist.Poisson(mean_obs).to_event(1), obs=x)

    def guide(self, x):
        x_size = x.size(0)

        def sample_zs(name, width):
            alpha_z_q = pyro.param(
                f"alpha_z_q_{name}",
                lambda: rand_tensor((x_size, width), self.alpha_init, self.sigma_init),
            )
            mean_z_q = pyro.param(
                f"mean_z_q_{name}",
                lambda: rand_tensor((x_size, width), self.mean_init, self.sigma_init),
            )
            alpha_z_q, mean_z_q = softplus(alpha_z_q), softplus(mean_z_q)
            pyro.sample(f"z_{name}", dist.Gamma(alpha_z_q, alpha_z_q / mean_z_q).to_event(1))

        def sample_ws(name, width):
            alpha_w_q = pyro.param(
                f"alpha_w_q_{name}",
                lambda: rand_tensor((width), self.alpha_init, self.sigma_init),
            )
            mean_w_q = pyro.param(
                f"mean_w_q_{name}",
                lambda: rand_tensor((width), self.mean_init, self.sigma_init),
            )
            alpha_w_q, mean_w_q = softplus(alpha_w_q), softplus(mean_w_q)
            pyro.sample(f"w_{name}", dist.Gamma(alpha_w_q, alpha_w_q / mean_w_q))

        with pyro.plate("w_top_plate", self.top_width * self.mid_width):
            sample_ws("top", self.top_width * self.mid_width)
        with pyro.plate("w_mid_plate", self.mid_width * self.bottom_width):
            sample_ws("mid", self.mid_width * self.bottom_width)
        with pyro.plate("w_bottom_plate", self.bottom_width * self.image_size):
            sample_ws("bottom", self.bottom_width * self.image_size)
        with pyro.plate("data", x_size):
            sample_zs("top", self.top_width)
            sample_zs("mid", self.mid_width)
            sample_zs("bottom", self.bottom_width)


def sparse_gamma_def():  # pyro.params whose initial values draw, between the guide's draws
    gamma_def = SparseGammaDEF()
    return gamma_def.model, gamma_def.guide


def lda_model(data=None, args=None, batch_size=None):  # examples/lda, verbatim
    with pyro.plate("topics", args.num_topics):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / args.num_topics, 1.0))
        topic_words = pyro.sample(
            "topic_words", dist.Dirichlet(torch.ones(args.num_words) / args.num_words)
        )
    with pyro.plate("documents", args.num_docs) as ind:
        if data is not None:
            with pyro.util.ignore_jit_warnings():
                assert data.shape == (args.num_words_per_doc, args.num_docs)
            data = data[:, ind]
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", args.num_words_per_doc):
            word_topics = pyro.sample(
                "word_topics", dist.Categorical(doc_topics), infer={"enumerate": "parallel"}
            )
            data = pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)
    return topic_weights, topic_words, data


def make_predictor(args):
    layer_sizes = [args.num_words] + [int(s) for s in args.layer_sizes.split("-")] + [args.num_topics]
    layers = []
    for in_size, out_size in zip(layer_sizes, layer_sizes[1:], strict=False):
        layer = nn.Linear(in_size, out_size)
        layer.weight.data.normal_(0, 0.001)
        layer.bias.data.normal_(0, 0.001)
        layers.append(layer)
        layers.append(nn.Sigmoid())
    layers.append(nn.Softmax(dim=-1))
    return nn.Sequential(*layers)


def parametrized_guide(predictor, data, args, batch_size=None):
    topic_weights_posterior = pyro.param(
        "topic_weights_posterior",
        lambda: torch.ones(args.num_topics),
        constraint=constraints.positive,
    )
    topic_words_posterior = pyro.param(
        "topic_words_posterior",
        lambda: torch.ones(args.num_topics, args.num_words),
        constraint=constraints.greater_than(0.5),
    )
    with pyro.plate("topics", args.num_topics):
        pyro.sample("topic_weights", dist.Gamma(topic_weights_posterior, 1.0))
        pyro.sample("topic_words", dist.Dirichlet(topic_words_posterior))
    pyro.module("predictor", predictor)
    with pyro.plate("documents", args.num_docs, batch_size) as ind:
        data = data[:, ind]
        counts = torch.zeros(args.num_words, ind.size(0)).scatter_add(
            0, data, torch.ones(data.shape)
        )
        doc_topics = predictor(counts.transpose(0, 1))
        pyro.sample("doc_topics", dist.Delta(doc_topics, event_dim=1))


LDA = argparse.Namespace(num_topics=2, num_words=5, num_docs=6, num_words_per_doc=4, layer_sizes="3")


def lda():  # gradients far below Adam's eps of 1e-8 times the rows
    return lda_model, functools.partial(parametrized_guide, make_predictor(LDA))


class PyroVAE(nn.Module):  # Pyro's examples/vae idiom: pyro.module in model and guide
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(4, 4), nn.Linear(2, 4)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            logits = self.decoder(z)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class GreyVAE(PyroVAE):  # examples/vae: grey pixels under a Bernoulli built not to validate
    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            probs = torch.sigmoid(self.decoder(z))
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)


def grey():
    model = GreyVAE()
    return model.model, model.guide


class BatchNormVAE(PyroVAE):  # examples/scanvi's BatchNorm1d (not after a bias: its
    def __init__(self):  # gradient is zero but for rounding, which Adam's steps enlarge)
        super().__init__()
        self.encoder = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 4))


def batch_norm():  # running statistics: updated by SVI's steps alone
    model = BatchNormVAE()
    return model.model, model.guide


def labelled():  # examples/scanvi's labelled rows: y observed, a factor in the guide
    def model(x, y):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("batch", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=z * torch.ones(len(x))), obs=y)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y):
        loc = pyro.param("loc", torch.tensor(0.0))
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        with pyro.plate("batch", len(x)):
            classification_loss = dist.Bernoulli(logits=loc * x).log_prob(y)
            pyro.factor("classification_loss", -0.1 * classification_loss, has_rsample=False)
        return z

    return model, config_enumerate(guide, "parallel", expand=True)


def no_arguments():  # the tensor-shapes tutorial's model3, its own guide: SVI.step() alone
    def model3():
        p = pyro.param("p", torch.arange(6.0) / 6)
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        a = pyro.sample("a", dist.Categorical(torch.ones(6) / 6))
        pyro.sample("b", dist.Bernoulli(p[a]))
        with pyro.plate("c_plate", 4):
            pyro.sample("c", dist.Bernoulli(0.3))
            with pyro.plate("d_plate", 5):
                d = pyro.sample("d", dist.Bernoulli(0.4))
                e_loc = locs[d.long()].unsqueeze(-1)
                pyro.sample("e", dist.Normal(e_loc, torch.arange(1.0, 8.0)).to_event(1))

    return config_enumerate(model3, "parallel"), config_enumerate(model3, "parallel")


class BernoulliBetaExample:  # the SVI tutorial part III, verbatim but for the steps
    def __init__(self):
        self.alpha0, self.beta0 = 10.0, 10.0
        self.data = torch.zeros(10)
        self.data[0:6] = torch.ones(6)
        self.alpha_q_0, self.beta_q_0 = 15.0, 15.0

    def model(self, use_decaying_avg_baseline):
        f = pyro.sample("latent_fairness", dist.Beta(self.alpha0, self.beta0))
        with pyro.plate("data_plate"):
            pyro.sample("obs", dist.Bernoulli(f), obs=self.data)

    def guide(self, use_decaying_avg_baseline):
        alpha_q = pyro.param("alpha_q", torch.tensor(self.alpha_q_0),
                             constraint=constraints.positive)  # fmt: skip
        beta_q = pyro.param("beta_q", torch.tensor(self.beta_q_0), constraint=constraints.positive)
        baseline_dict = {"use_decaying_avg_baseline": use_decaying_avg_baseline,
                         "baseline_beta": 0.90}  # fmt: skip
        pyro.sample("latent_fairness", NonreparameterizedBeta(alpha_q, beta_q),
                    infer=dict(baseline=baseline_dict))  # fmt: skip


def baseline():  # a baseline asked for: TraceGraph_ELBO, the one ELBO that reads it, is chosen
    example = BernoulliBetaExample()
    return example.model, example.guide


def flow():  # examples/neutra's guide: its transform is built, drawing, by its first call
    def model(a, b):
        x = pyro.sample("x", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(a * x[0] + b * x[1] ** 2, 1.0), obs=torch.tensor(1.0))

    return model, AutoIAFNormal(model, hidden_dim=[4], num_transforms=2)


def vae():  # an amortised guide
    model = PyroVAE()
    return model.model, model.guide


def ppgen_vae():  # ppgen's own VAE, its guide a method of the module: SVI trains the encoder
    model = ppgen.models.VAE(PIXELS.shape[1], 2, hidden=(5,))
    return model, model.guide


def amortized():  # ppgen's automatic guide, built on its first inputs: SVI trains its networks
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x)

    return model, ppgen.guides.Amortized(model, X, hidden_features=(4,))


RNG = torch.Generator().manual_seed(0)
X = torch.randn(N, generator=RNG, dtype=torch.float64)
Y = 1.0 + 2.0 * X + 0.5 * torch.randn(N, generator=RNG, dtype=torch.float64)
MASK = torch.rand(N, generator=RNG) > 0.3
SEQS = torch.randn(N, 4, generator=RNG, dtype=torch.float64)
XS = torch.randn(N, 3, generator=RNG, dtype=torch.float64)
WORDS = torch.randint(5, (N,), generator=RNG)
PIXELS = torch.rand(N, 4, generator=RNG, dtype=torch.float64).round()
SIGMA = torch.tensor(dtype=torch.float64, data=[15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
SCHOOLS = torch.tensor(dtype=torch.float64, data=[28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])

PROGRAMS = {
    "regression": (regression, (X, Y), {}, None, {}),
    "masked": (masked, (X, MASK), {}, None, {}),
    "fixed_plate": (fixed_plate, (X,), {}, None, {}),
    "subsampled": (subsampled, (X,), {}, None, {"batch_size": 5}),  # left to subsample itself
    "mixture": (
        mixture,
        (X + 3 * (torch.rand(N, generator=RNG) > 0.5),),
        {},
        TraceEnum_ELBO(max_plate_nesting=1),
        {},
    ),
    "hmm": (hmm, (SEQS,), {}, TraceEnum_ELBO(max_plate_nesting=1), {}),
    "bayesian_regression": (bayesian_regression, (XS, XS.sum(-1)), {}, None, {}),
    "eight_schools": (eight_schools, (8, SIGMA, SCHOOLS), {}, None, {}),
    "factor": (factor, (X,), {}, None, {}),
    "counts": (counts, (WORDS,), {}, None, {}),
    "columns": (columns, (torch.stack([X, Y], -1),), {}, None, {}),
    "keyword": (keyword, (X,), {"y": Y}, None, {}),
    "score_function": (score_function, (X,), {}, TraceGraph_ELBO(), {"elbo": "trace_graph"}),
    "vae": (vae, (PIXELS,), {}, None, {}),
    "baseline": (baseline, (True,), {}, TraceGraph_ELBO(), {}),
    "flow": (flow, (1.15, 1.0), {}, None, {}),
    "no_arguments": (no_arguments, (), {}, TraceEnum_ELBO(max_plate_nesting=2), {}),
    "sparse_gamma_def": (
        sparse_gamma_def,
        (torch.poisson(torch.full((5, 4), 2.0, dtype=torch.float64), generator=RNG),),
        {},
        TraceMeanField_ELBO(),
        {"elbo": "mean_field"},
    ),
    "lda": (
        lda,
        (torch.randint(5, (4, 6), generator=RNG), LDA),
        {},
        TraceEnum_ELBO(max_plate_nesting=2),
        {},
    ),
    "batch_norm": (batch_norm, (PIXELS,), {}, None, {}),
    "ppgen_vae": (ppgen_vae, (PIXELS,), {}, None, {}),
    "amortized": (amortized, (X,), {}, None, {}),
    "grey": (grey, (PIXELS / 3 + 0.25,), {}, None, {}),
    "labelled": (  # TraceEnum_ELBO asked for, with no site to enumerate
        labelled,
        (X, (X > 0).double()),
        {},
        TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
        {"elbo": "trace_enum"},
    ),
    "toy_mixture": (
        toy_mixture,
        (
            {"A": torch.tensor([1.0, 10.0], dtype=torch.float64),
             "B": torch.tensor([[10.0, 1.0], [1.0, 10.0]], dtype=torch.float64),
             "C": torch.tensor([[10.0, 1.0], [1.0, 10.0]], dtype=torch.float64)},  # fmt: skip
            {"A": PIXELS[:, 0], "C": PIXELS[:, 1]},
            N,
        ),
        {},
        TraceEnum_ELBO(max_plate_nesting=1),
        {},
    ),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_a_full_batch_takes_svis_steps(name):
    make, args, kwargs, elbo, options = PROGRAMS[name]
    if name == "lda":  # examples/lda's programs name batch_size, which fit_svi takes: it says so
        with pytest.warns(UserWarning, match="^lda_model and parametrized_guide take a parameter 'b"):
            _parity(make, args, kwargs, svi_elbo=elbo, **options)
        return
    _parity(make, args, kwargs, svi_elbo=elbo, **options)


def test_a_programs_parameter_named_as_a_fit_option_is_said_to_get_its_default():
    def model(x, lr=0.5):  # fit_svi's lr is Adam's: the program's keeps its default
        m = pyro.param("m", torch.tensor(lr))
        pyro.sample("x", dist.Normal(m, 1.0).expand([len(x)]).to_event(1), obs=x)

    with pytest.warns(UserWarning, match=r"^model takes a parameter 'lr', which fit_svi takes as "
                      r"its own option, so it gets its default; to give it a value, bind it "
                      r"first: functools.partial\(model, lr=...\)\.$"):  # fmt: skip
        fit_svi(model, lambda x: None, X, epochs=1, progress=False)
    with warnings.catch_warnings():  # bound, as the sentence says: no word
        warnings.simplefilter("error")
        fit_svi(functools.partial(model, lr=0.1), lambda x: None, X, epochs=1, progress=False)
        # given by position (examples/air: model(data, batch_size)): it has the value given
        pyro.clear_param_store()
        fit_svi(model, lambda x, lr: None, X, 0.1, epochs=1, progress=False)
    assert pyro.param("m").item() == pytest.approx(0.1, abs=2e-3)  # one step of lr 1e-3


def test_the_enumerating_elbo_is_chosen_or_asked_for():
    model, guide = mixture()
    with pytest.raises(
        ValueError, match="^Site 'k' is marked for enumeration, which elbo='trace'"
    ):
        fit_svi(model, guide, X, elbo="trace", epochs=1, progress=False)


def test_an_elbo_object_ported_from_svi_is_told_its_name():
    model, guide = mixture()
    with pytest.raises(ValueError, match=r"^elbo takes the name of Pyro's ELBO, "
                       r"elbo='trace_enum' for TraceEnum_ELBO \(its max_plate_nesting"):  # fmt: skip
        fit_svi(model, guide, X, elbo=TraceEnum_ELBO(max_plate_nesting=1), progress=False)


def test_per_row_parameters_are_refused_with_minibatches():
    model, guide = eight_schools()
    with pytest.raises(ValueError, match=r"^Parameter 'theta_loc' has as many values as the data "
                       r"have rows \(shape \(8,\)\), so it is taken for one value per row"):
        fit_svi(model, guide, 8, SIGMA, SCHOOLS, batch_size=4, epochs=1, progress=False)


def test_an_auto_guide_of_latents_per_row_is_refused_where_sites_observe_columns():
    def model(x):  # obs=x[:, k]: the plate of the rows is found all the same
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z * x[:, 0], 1.0), obs=x[:, 1])

    with pytest.raises(ValueError, match="^Site 'z' is latent inside the plate of the rows"):
        fit_svi(model, "auto_normal", XS, batch_size=10, epochs=1, progress=False)


def test_an_error_in_the_program_names_it_and_its_line():
    def model(x):
        assert x.shape[1] == 3, "three features"

    message = (
        r"^The model 'test_an_error.*model' raised AssertionError at test_pyro_parity.py:\d+ "
        "on all 24 rows: three features$"
    )
    with pytest.raises(ValueError, match=message) as error:
        fit_svi(model, AutoNormal(model), XS[:, :2], progress=False)
    assert isinstance(error.value.__cause__, AssertionError)


def test_a_program_that_cannot_take_a_batch_says_what_to_do():
    model, guide = fixed_plate()
    message = (
        r"^Trace_ELBO raised RuntimeError on a batch of 5 rows: .*; the programs may not take a "
        r"batch of rows \(a plate of fixed size\?\): pass batch_size=None"
    )
    with pytest.raises(ValueError, match=message):
        fit_svi(model, guide, X, batch_size=5, epochs=1, progress=False)


def test_rows_packed_in_a_sequence_are_refused_where_they_would_be_batched_or_repeated():
    # examples/dmm: the reversed sequences come packed (pack_padded_sequence) for the guide's RNN
    def model(x, packed):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x, packed):
        first = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True)[0][:, 0, 0]
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(pyro.param("w", torch.tensor(0.5)) * first, 1.0))

    x = torch.randn(6, 3)
    packed = nn.utils.rnn.pack_padded_sequence(x[..., None], torch.tensor([3, 3, 2, 2, 1, 1]),
                                               batch_first=True)  # fmt: skip
    message = r"^Argument 'args\[1\]' holds tensors with rows inside a container that "
    with pytest.raises(ValueError, match=message + "no minibatch can index; pass batch_size=None"):
        fit_svi(model, guide, x, packed, batch_size=2, epochs=1, progress=False)
    with pytest.raises(ValueError, match=message + "log_prob cannot repeat once per draw"):
        ppgen.log_prob(model, x, packed, guide=guide, num_samples=10)
    one = ppgen.log_prob(model, x, packed, guide=guide, num_samples=1)  # one draw: no repeat
    assert one.shape == (6,)


def _epoch_gradient(make, args, kwargs, batch_size):
    """The gradient of one epoch's summed batch losses, as the loop weighs them, times the
    batch size: the gradient of minus the whole data's ELBO where each batch weighs by its
    rows (an epoch in order, each batch a slice)."""
    captured = {}

    def spy(step, data, *rest, **options):
        captured.update(objective=step.objective, parameters=step.groups["all"][0], data=data)
        return ppgen.FitResult()

    model, guide = make()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppgen.infer, "train", spy)
        fit_svi(model, guide, *args, batch_size=batch_size, progress=False, **kwargs)
    objective, parameters, data = captured.values()
    loss = 0.0
    for start in range(0, len(data), batch_size):
        batch = data.rows(slice(start, start + batch_size))
        loss = loss - objective(batch)["elbo"] / len(next(iter(batch.values())))
    grads = torch.autograd.grad(loss * batch_size, parameters)
    return model, guide, dict(zip(map(id, parameters), grads, strict=True))


@pytest.mark.parametrize("batch_size", [5, 7, 24])
@pytest.mark.parametrize("name", ["regression", "columns", "keyword", "factor"])
def test_minibatches_sum_to_the_whole_datas_gradient(name, batch_size):
    # AutoDelta guides: the ELBO has no draw, so each epoch's gradient is exact; the loss of
    # the whole data is Pyro's (the globals counted once, the last short batch by its rows)
    make, args, kwargs, _, _ = PROGRAMS[name]

    def delta():
        model, _ = make()
        return model, AutoDelta(model)

    model, guide, ours = _epoch_gradient(delta, args, kwargs, batch_size)
    loss = Trace_ELBO().differentiable_loss(model, guide, *args, **kwargs)
    store = pyro.get_param_store()
    params = [store[name].unconstrained() for name in store.keys()]
    for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
        assert torch.allclose(ours[id(p)], g, rtol=1e-10, atol=1e-10), (ours[id(p)], g)


@settings(max_examples=6, deadline=None)
@given(
    features=st.integers(1, 3),
    constant_at=st.integers(0, 3),
    masked=st.booleans(),
    by_name=st.booleans(),
)
def test_random_programs_of_the_idioms_take_svis_steps(features, constant_at, masked, by_name):
    """model(*args, **kwargs): `features` arguments with rows, a constant without rows at any
    position, maybe a mask, the observed rows maybe by keyword; full batch, as SVI; and one
    epoch of minibatches of 7 has the whole data's gradient."""
    rows = [XS[:, i] for i in range(features)]
    args = [*rows[:constant_at], torch.tensor([0.5, 1.5]), *rows[constant_at:]]
    kwargs = {"y": Y, "mask": MASK} if by_name else {}
    args += [] if by_name else [Y, MASK]

    def make(guide=AutoNormal):
        def model(*args, **kwargs):
            *inputs, y, mask = [*args, *kwargs.values()]
            xs = [a for a in inputs if len(a) == len(y)]
            scale = next(a for a in inputs if len(a) != len(y)).sum()
            w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([len(xs)]).to_event(1))
            with pyro.plate("data", len(y)), pyro.poutine.mask(mask=mask if masked else True):
                mean = sum(w[i] * x for i, x in enumerate(xs))
                pyro.sample("y", dist.Normal(mean, scale), obs=y)

        return model, guide(model)

    pyro.clear_param_store()
    _parity(make, tuple(args), kwargs)
    pyro.clear_param_store()
    model, guide, ours = _epoch_gradient(lambda: make(AutoDelta), args, kwargs, 7)
    loss = Trace_ELBO().differentiable_loss(model, guide, *args, **kwargs)
    (p,) = [pyro.get_param_store()[name].unconstrained() for name in pyro.get_param_store()]
    assert torch.allclose(ours[id(p)], torch.autograd.grad(loss, p)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ppgen.models.FVSBN(4),
        lambda: ppgen.models.NADE(4),
        lambda: ppgen.models.MADE(4),
        lambda: ppgen.models.PixelCNN((2, 2)),
        lambda: ppgen.models.RNADE(4),
    ],
    ids=["FVSBN", "NADE", "MADE", "PixelCNN", "RNADE"],
)
def test_pyros_svi_trains_the_autoregressive_models_as_adam_on_their_log_likelihood(make):
    """Their joint's log_prob reads the weights after the program returns: they are put in
    Pyro's param store all the same, so SVI with an empty guide is maximum likelihood."""
    torch.manual_seed(0)
    model = make()
    reference = copy.deepcopy(model)
    rows = PIXELS if type(model).__name__ != "RNADE" else SEQS
    conditioned = poutine.condition(model, data={"x": rows})
    svi = SVI(conditioned, lambda n: None, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(STEPS):
        svi.step(n=N)
    adam = torch.optim.Adam(reference.parameters(), lr=LR)
    for _ in range(STEPS):
        program = poutine.condition(reference, data={"x": rows})
        loss = -poutine.trace(program).get_trace(n=N).log_prob_sum()
        adam.zero_grad()
        loss.backward()
        adam.step()
    for a, b, initial in zip(model.parameters(), reference.parameters(), before, strict=True):
        assert not torch.equal(a, initial)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


class CVAE(nn.Module):  # examples/cvae: a plate without a size, y observed where x is masked
    def __init__(self):
        super().__init__()
        self.prior_net, self.recognition_net = nn.Linear(4, 2), nn.Linear(4, 2)
        self.generation_net = nn.Linear(1, 4)

    def model(self, xs, ys):
        pyro.module("generation_net", self)
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(self.prior_net(xs), 1.0).to_event(1))
            loc = torch.sigmoid(self.generation_net(z[..., :1]))
            mask_loc = loc[xs == -1].view(len(xs), -1)
            mask_ys = ys[xs == -1].view(len(xs), -1)
            pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1),
                        obs=mask_ys)  # fmt: skip

    def guide(self, xs, ys):
        with pyro.plate("data"):
            loc = self.recognition_net(torch.where(xs == -1, ys, xs))
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))


def test_minibatches_of_latents_per_row_take_svis_steps_without_a_word():
    # every latent site is in the plate of the rows' size (no global one): no scaling, and no
    # warning that the fit depends on batch_size (pytest turns warnings into errors)
    xs = torch.rand(N, 4, generator=RNG).round()
    xs[:, :2] = -1
    ys = torch.where(xs == -1, torch.rand(N, 4, generator=RNG), -1.0)
    fits = []
    for run in ("svi", "ppgen"):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        cvae = CVAE()
        if run == "svi":
            svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
            for _ in range(2):
                order = torch.randperm(N)
                for start in range(0, N, 8):
                    svi.step(xs[order[start : start + 8]], ys[order[start : start + 8]])
        else:
            fit_svi(cvae.model, cvae.guide, xs, ys, epochs=2, batch_size=8, lr=LR, progress=False)
        fits.append(cvae.state_dict())
    for name, value in fits[0].items():
        assert torch.allclose(fits[1][name], value, rtol=0, atol=1e-6), name


class SelfScaled(PyroModule):  # examples/svi_torch, verbatim: its plate scales a batch itself
    def __init__(self, size):
        super().__init__()
        self.size = size
        self.register_buffer("zero", torch.tensor(0.0, dtype=torch.float64))

    def forward(self, covariates, data=None):
        coeff = pyro.sample("coeff", dist.Normal(self.zero, 1))
        bias = pyro.sample("bias", dist.Normal(self.zero, 1))
        scale = pyro.sample("scale", dist.LogNormal(self.zero, 1))
        with pyro.plate("data", self.size, len(covariates)):
            loc = bias + coeff * covariates
            return pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def test_a_program_that_scales_its_batches_itself_is_not_scaled_again():
    # pyro.plate("data", size, len(batch)) weighs the batch's rows by size / len(batch): each
    # batch's ELBO is then the program's own, as SVI.step takes it from a DataLoader
    model = SelfScaled(N)
    guide = AutoDelta(model)
    captured = {}

    def spy(step, data, *rest, **options):
        captured.update(objective=step.objective)
        return ppgen.FitResult()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppgen.infer, "train", spy)
        fit_svi(model, guide, X, Y, batch_size=6, progress=False)
    batch = {"*data": X[:6], "*args[1]": Y[:6]}
    expected = -Trace_ELBO().loss(model, guide, X[:6], Y[:6])
    assert captured["objective"](batch)["elbo"].item() == pytest.approx(expected, rel=1e-12)
