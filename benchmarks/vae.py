"""VAE on binarised digits: ppgen (fit_svi) beside Pyro's tutorial loop and a hand-written torch loop.

The three share the nets (z = 8, one hidden layer of 256 in encoder and decoder, ReLU, softplus
scales), the initial weights, Adam (lr 1e-3), batches of 128 and the seeded batch order, and draw
the same normals in the same order. Each is scored by the same estimator, ppgen's IWAE-500 on the
test images, and ppgen's codes by a linear probe.

    python benchmarks/vae.py --epochs 50
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from sklearn.linear_model import LogisticRegression
from torch import nn

import ppgen.infer
from ppgen.datasets import digits
from ppgen.models import VAE

Z, HIDDEN, LR, BATCH = 8, 256, 1e-3, 128


class Encoder(nn.Module):
    """The tutorial's encoder, with the weights of a ppgen VAE's encoder Conditional."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.fc1, self.fc2 = copy.deepcopy(vae.encoder.net[0]), copy.deepcopy(vae.encoder.net[2])

    def forward(self, x):
        loc, scale = self.fc2(F.relu(self.fc1(x))).split(Z, -1)
        return loc, F.softplus(scale)


class Decoder(nn.Module):
    """The tutorial's decoder, with the weights of a ppgen VAE's Conditional."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.fc1, self.fc2 = copy.deepcopy(vae.decoder.net[0]), copy.deepcopy(vae.decoder.net[2])

    def forward(self, z):
        return self.fc2(F.relu(self.fc1(z)))


class PyroVAE(nn.Module):
    """The VAE of Pyro's tutorial: pyro.module, a data plate, SVI with pyro.optim.Adam."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder, self.decoder = Encoder(vae), Decoder(vae)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), Z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train_ppgen(vae, x, epochs):
    torch.manual_seed(1)
    fit = ppgen.infer.fit_svi(
        vae, vae.guide, x, epochs=epochs, batch_size=BATCH, lr=LR, progress=False
    )
    return [record["seconds"] for record in fit.history]


def train_pyro(net, x, epochs):
    pyro.clear_param_store()
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    torch.manual_seed(1)
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            svi.step(x[order[start : start + BATCH]])
        seconds.append(time.perf_counter() - tic)
    return seconds


def train_torch(encoder, decoder, x, epochs):
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    torch.manual_seed(1)
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            batch = x[order[start : start + BATCH]]
            loc, scale = encoder(batch)
            q = torch.distributions.Normal(loc, scale)
            z = q.rsample()
            log_px = -F.binary_cross_entropy_with_logits(decoder(z), batch, reduction="none")
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z)
            elbo = log_px.sum(-1) + (log_pz - q.log_prob(z)).sum(-1)
            loss = -elbo.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - tic)
    return seconds


def as_vae(template, encoder, decoder):
    """A ppgen VAE holding a baseline's weights, to score every method with one estimator."""
    vae = copy.deepcopy(template)
    vae.encoder.net[0].load_state_dict(encoder.fc1.state_dict())
    vae.encoder.net[2].load_state_dict(encoder.fc2.state_dict())
    vae.decoder.net[0].load_state_dict(decoder.fc1.state_dict())
    vae.decoder.net[2].load_state_dict(decoder.fc2.state_dict())
    return vae


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--iwae", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = digits(dtype=torch.float32)
    torch.manual_seed(0)
    vae = VAE(64, Z, hidden=(HIDDEN,))
    pyro_net = PyroVAE(vae)
    encoder, decoder = Encoder(vae), Decoder(vae)
    initial = copy.deepcopy(vae)

    runs = {
        "ppgen": (train_ppgen(vae, data.train, args.epochs), vae),
        "pyro": (
            train_pyro(pyro_net, data.train, args.epochs),
            as_vae(initial, pyro_net.encoder, pyro_net.decoder),
        ),
        "torch": (
            train_torch(encoder, decoder, data.train, args.epochs),
            as_vae(initial, encoder, decoder),
        ),
    }
    reference = statistics.median(runs["torch"][0])
    print(f"VAE, binarised digits (1500 train / 297 test), z={Z}, hidden={HIDDEN}, "
          f"batch {BATCH}, Adam {LR}, {args.epochs} epochs, 1 thread")  # fmt: skip
    print(f"{'':8}{'s/epoch med':>12}{'min':>9}{'ratio':>8}{f'IWAE-{args.iwae}':>12}")
    for name, (seconds, model) in runs.items():
        torch.manual_seed(2)
        nats = -model.log_prob(data.test, num_samples=args.iwae).mean().item()
        median = statistics.median(seconds)
        print(f"{name:8}{median:12.4f}{min(seconds):9.4f}{median / reference:8.2f}{nats:12.2f}")
    probe = LogisticRegression(max_iter=5000).fit(vae.encode(data.train), data.train_labels)
    accuracy = probe.score(vae.encode(data.test), data.test_labels)
    print(f"ppgen linear probe on encode(x): test accuracy {accuracy:.3f}")
    print("(IWAE in nats per image, lower is better; ratio: median s/epoch over torch's)")


if __name__ == "__main__":
    main()
