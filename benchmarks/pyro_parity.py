"""Seconds per epoch of `ppgen.fit_svi` against `pyro.infer.SVI` on the same programs.

Four programs in the idioms of Pyro's examples: a VAE, a deep Markov model (a latent chain
under `pyro.markov`, masks for the sequence lengths), the semi-supervised VAE (M2, its label
enumerated under `TraceEnum_ELBO`) and a hierarchical model (per-group latents, one batch).
Each epoch is the same batches of the same rows; the two are interleaved, one thread, and the
median and min over the repeats are reported, with the ratio ppgen / Pyro.

    python benchmarks/pyro_parity.py [--repeats 5]
"""

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal
from torch import nn

import ppgen
from ppgen.datasets import digits


class VAE(nn.Module):  # examples/vae/vae.py
    def __init__(self, x_dim=64, z_dim=8, hidden=128):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.dec = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Bernoulli(logits=self.dec(z), validate_args=False).to_event(1), obs=x
            )

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class DMM(nn.Module):  # examples/dmm.py, with masks and a guide reading each step
    def __init__(self, x_dim=8, z_dim=4, hidden=32):
        super().__init__()
        self.trans = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim)
        )
        self.emit = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, x_dim))
        self.comb = nn.Sequential(
            nn.Linear(z_dim + x_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim)
        )
        self.z_dim = z_dim

    def model(self, seqs, mask):
        pyro.module("dmm", self)
        with pyro.plate("seqs", len(seqs)):
            z = seqs.new_zeros(len(seqs), self.z_dim)
            for t in pyro.markov(range(seqs.shape[1])):
                loc, log_scale = self.trans(z).chunk(2, -1)
                z = pyro.sample(
                    f"z_{t}", dist.Normal(loc, log_scale.exp()).to_event(1).mask(mask[:, t])
                )
                pyro.sample(f"x_{t}", dist.Normal(self.emit(z), 1.0).to_event(1).mask(mask[:, t]),
                            obs=seqs[:, t])  # fmt: skip

    def guide(self, seqs, mask):
        pyro.module("dmm", self)
        with pyro.plate("seqs", len(seqs)):
            z = seqs.new_zeros(len(seqs), self.z_dim)
            for t in pyro.markov(range(seqs.shape[1])):
                loc, log_scale = self.comb(torch.cat([z, seqs[:, t]], -1)).chunk(2, -1)
                z = pyro.sample(
                    f"z_{t}", dist.Normal(loc, log_scale.exp()).to_event(1).mask(mask[:, t])
                )


class SSVAE(nn.Module):  # examples/vae/ss_vae_M2.py: the label enumerated where unobserved
    def __init__(self, x_dim=64, y_dim=10, z_dim=8, hidden=128):
        super().__init__()
        self.enc_y = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, y_dim)
        )
        self.enc_z = nn.Sequential(
            nn.Linear(x_dim + y_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.dec = nn.Sequential(
            nn.Linear(z_dim + y_dim, hidden), nn.Softplus(), nn.Linear(hidden, x_dim)
        )
        self.y_dim, self.z_dim = y_dim, z_dim

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(xs.new_zeros(self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(logits=xs.new_zeros(self.y_dim)), obs=ys)
            z, ys = _broadcast(z, ys)
            logits = self.dec(torch.cat([z, ys], -1))
            pyro.sample(
                "x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=xs
            )

    @config_enumerate
    def guide(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.enc_y(xs)))
            x, ys = _broadcast(xs, ys)
            loc, log_scale = self.enc_z(torch.cat([x, ys], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _broadcast(a, b):
    """`a` and `b` broadcast in all but their last dimension (an enumerated label's)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])


def hierarchical(group, y):  # per-group latents, a global mean and scale
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("groups", int(group.max()) + 1):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta[group], 1.0), obs=y)


def programs():
    x = digits(dtype=torch.float32).train
    n = (len(x) // 128) * 128
    x = x[:n]
    seqs = torch.randn(512, 12, 8)
    mask = torch.arange(12) < torch.randint(6, 13, (512, 1))
    group = torch.randint(100, (5000,))
    y = torch.randn(100)[group] + torch.randn(5000)
    vae, dmm, ssvae = VAE(), DMM(), SSVAE()
    return {  # name: (model, guide, args, batch_size, Pyro's ELBO)
        "VAE": (vae.model, vae.guide, (x,), 128, Trace_ELBO()),
        "DMM": (dmm.model, dmm.guide, (seqs, mask), 64, Trace_ELBO()),
        "SS-VAE": (ssvae.model, ssvae.guide, (x,), 128, TraceEnum_ELBO(max_plate_nesting=1)),
        "hierarchical": (hierarchical, AutoNormal(hierarchical), (group, y), None, Trace_ELBO()),
    }


def pyro_epoch(svi, args, batch_size):
    rows = len(args[0])
    tic = time.perf_counter()
    if batch_size is None:
        svi.step(*args)
    else:
        order = torch.randperm(rows)
        for start in range(0, rows, batch_size):
            index = order[start : start + batch_size]
            svi.step(*(a[index] for a in args))
    return time.perf_counter() - tic


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    torch.set_num_threads(1)
    print(
        "| program | Pyro s/epoch (median, min) | ppgen s/epoch (median, min) | ratio (median) |"
    )
    print("| --- | --- | --- | --- |")
    for name, (model, guide, args, batch_size, elbo) in programs().items():
        pyro.clear_param_store()
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        pyro_epoch(svi, args, batch_size)  # warm-up: parameters made
        ours, theirs = [], []
        for _ in range(repeats):
            theirs.append(pyro_epoch(svi, args, batch_size))
            fit = ppgen.fit_svi(model, guide, *args, epochs=1, batch_size=batch_size, lr=1e-3,
                                progress=False)  # fmt: skip
            ours.append(fit.history[0]["seconds"])
        m_p, m_o = statistics.median(theirs), statistics.median(ours)
        print(f"| {name} | {m_p:.4f}, {min(theirs):.4f} | {m_o:.4f}, {min(ours):.4f} | "
              f"{m_o / m_p:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
