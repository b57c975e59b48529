"""VAE on binarised digits: ppgen (fit_svi) beside Pyro's tutorial loop and a hand-written torch loop.

The three share the nets (z = 8, one hidden layer of 256 in encoder and decoder, ReLU, softplus
scales), the initial weights, Adam (lr 1e-3), batches of 128 and the seeded batch order, and draw
the same normals in the same order. Speed: `--rounds` rounds in which each peer trains
`--round-epochs` epochs from the initial weights, the peers in turn and the order rotated between
rounds, so that each ratio compares runs seconds apart on a loaded machine; s/epoch is a run's
whole time over its epochs (ppgen's set-up included), by the wall clock and by this thread's CPU
time (less disturbed by other processes); ratios are over the hand-written loop's in the same
round, median and min over the rounds. Quality: each peer trained once for `--epochs` on 1200 of
the training digits (`digits(val=300)`), the ELBO of the other 300 read every epoch (one draw a
row) and the best epoch kept (ppgen: `fit_svi(val=...)`; the others by the same rule written
out); then the test digits are scored once, by the same estimator for all, ppgen's IWAE-500, and
the codes (`encode(x)`, posterior means) by `ppgen.metrics.linear_probe`. Last, `VAE(64, 8)`
fitted with every default of `fit_svi` (one hidden layer of 512; 200 epochs, batches of 64, lr
1e-3) but `val=`, the same 300 digits; `--defaults` runs only that.

    python benchmarks/vae.py

Measured 2026-12-04 on 2 shared cores, one thread, load average 6-8 (1200 training digits,
the epoch kept on the 300 held out, the test digits scored once):

    ppgen    s/epoch 0.148 (wall), 0.023 (cpu); ratio median 1.08 (wall), 1.00 (cpu);
             min 0.85 (wall), 0.91 (cpu); IWAE-500 17.38; probe 0.879
    pyro     ratio median 2.18 (wall), 2.00 (cpu); min 1.76, 1.90; IWAE-500 17.36; probe 0.865
    torch    s/epoch 0.137 (wall), 0.023 (cpu); IWAE-500 17.38; probe 0.879
    ppgen defaults: 200 epochs in 45 s, epoch 166 kept; test IWAE-500 17.01; linear probe 0.865

Earlier (2026-11-23), on the 1500 training digits and scored after the last of 200 epochs (no
epoch chosen; two runs, load average 9-11, then 1-3):

    ppgen    s/epoch 0.174, 0.093 (wall), 0.056, 0.061 (cpu); ratio median 0.99, 1.03 (wall),
             1.00, 1.00 (cpu); min 0.76, 0.89 (wall), 0.91, 0.89 (cpu); IWAE-500 17.18; probe 0.872
    pyro     ratio median 1.87, 1.86 (wall), 1.89, 1.85 (cpu); IWAE-500 17.18; probe 0.875
    torch    s/epoch 0.176, 0.094 (wall), 0.058, 0.064 (cpu); IWAE-500 17.19; probe 0.872
    ppgen defaults: 200 epochs in 79 s, 29 s; test IWAE-500 16.74 nats/image; linear probe 0.872
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
from torch import nn

import ppgen.infer
from ppgen.datasets import digits
from ppgen.metrics import linear_probe
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


def train_ppgen(vae, x, epochs, val=None):
    torch.manual_seed(1)
    ppgen.infer.fit_svi(vae, vae.guide, x, val=val, epochs=epochs, batch_size=BATCH, lr=LR,
                        progress=False)  # fmt: skip


def elbo(encoder, decoder, x):
    """The single-draw ELBO of each row of `x`, written out."""
    loc, scale = encoder(x)
    q = torch.distributions.Normal(loc, scale)
    z = q.rsample()
    log_px = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none")
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    return log_px.sum(-1) + (log_pz - q.log_prob(z)).sum(-1)


class KeepBest:
    """After each epoch, the validation ELBO of `modules`; keeps the weights of the best epoch."""

    def __init__(self, val, *modules):
        self.val, self.modules, self.best, self.kept = val, modules, -float("inf"), None

    def __call__(self, encoder, decoder):
        if self.val is None:
            return
        with torch.no_grad():
            score = elbo(encoder, decoder, self.val).mean().item()
        if score > self.best:
            self.best, self.kept = score, [copy.deepcopy(m.state_dict()) for m in self.modules]

    def restore(self):
        for module, state in zip(self.modules, self.kept or [], strict=False):
            module.load_state_dict(state)


def train_pyro(net, x, epochs, val=None):
    pyro.clear_param_store()
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    keep = KeepBest(val, net)
    torch.manual_seed(1)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            svi.step(x[order[start : start + BATCH]])
        keep(net.encoder, net.decoder)
    keep.restore()


def train_torch(encoder, decoder, x, epochs, val=None):
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    keep = KeepBest(val, encoder, decoder)
    torch.manual_seed(1)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            loss = -elbo(encoder, decoder, x[order[start : start + BATCH]]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        keep(encoder, decoder)
    keep.restore()


def as_vae(template, encoder, decoder):
    """A ppgen VAE holding a baseline's weights, to score every method with one estimator."""
    vae = copy.deepcopy(template)
    vae.encoder.net[0].load_state_dict(encoder.fc1.state_dict())
    vae.encoder.net[2].load_state_dict(encoder.fc2.state_dict())
    vae.decoder.net[0].load_state_dict(decoder.fc1.state_dict())
    vae.decoder.net[2].load_state_dict(decoder.fc2.state_dict())
    return vae


def peers(template):
    """Fresh copies of the three peers, all holding the weights of `template`; each entry is
    (train(x, epochs, val=None), the trained model as a ppgen VAE for scoring)."""
    vae, pyro_net = copy.deepcopy(template), PyroVAE(template)
    encoder, decoder = Encoder(template), Decoder(template)
    return {
        "ppgen": (lambda x, e, val=None: train_ppgen(vae, x, e, val), lambda: vae),
        "pyro": (
            lambda x, e, val=None: train_pyro(pyro_net, x, e, val),
            lambda: as_vae(template, pyro_net.encoder, pyro_net.decoder),
        ),
        "torch": (
            lambda x, e, val=None: train_torch(encoder, decoder, x, e, val),
            lambda: as_vae(template, encoder, decoder),
        ),
    }


def timed(train, x, epochs):
    """Seconds per epoch of one run, (wall clock, this thread's CPU time)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    train(x, epochs)
    return (time.perf_counter() - wall) / epochs, (time.thread_time() - cpu) / epochs


def scores(vae, data, iwae):
    """The test NLL (IWAE bound, nats per image) and the linear probe of the codes."""
    torch.manual_seed(2)
    nats = -vae.log_prob(data.test, num_samples=iwae).mean().item()
    codes = vae.encode(data.train), vae.encode(data.test)
    return nats, linear_probe(codes[0], data.train_labels, codes[1], data.test_labels)


def defaults(data, iwae):
    """ppgen's own defaults: VAE(64, 8) and fit_svi(vae, vae.guide, x, val=v), nothing else set."""
    torch.manual_seed(0)
    vae = VAE(64, Z)
    wall = time.perf_counter()
    fit = ppgen.infer.fit_svi(vae, vae.guide, data.train, val=data.val, progress=False)
    wall = time.perf_counter() - wall
    nats, probe = scores(vae, data, iwae)
    print(f"ppgen defaults: VAE(64, {Z}), fit_svi(vae, vae.guide, x, val=v): {len(fit.history)} "
          f"epochs in {wall:.0f} s, epoch {fit.best_epoch['all']} kept; test IWAE-{iwae} "
          f"{nats:.2f} nats/image; linear probe {probe:.3f}")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="the budget scored for quality")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--round-epochs", type=int, default=50, help="epochs of a timing round")
    parser.add_argument("--iwae", type=int, default=500)
    parser.add_argument("--defaults", action="store_true", help="only the run with defaults")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = digits(dtype=torch.float32, val=300)
    if args.defaults:
        defaults(data, args.iwae)
        return
    torch.manual_seed(0)
    template = VAE(64, Z, hidden=(HIDDEN,))
    names = ["ppgen", "pyro", "torch"]
    times = {name: [] for name in names}  # per round: (wall, cpu) seconds per epoch
    for r in range(args.rounds):
        runs = peers(template)
        for name in names[r % 3 :] + names[: r % 3]:  # the order rotates between rounds
            times[name].append(timed(runs[name][0], data.train, args.round_epochs))
    quality = {}
    for name, (train, trained) in peers(template).items():
        train(data.train, args.epochs, data.val)
        quality[name] = scores(trained(), data, args.iwae)
    print(f"VAE, binarised digits (1200 train / 300 validation / 297 test), z={Z}, hidden={HIDDEN}, "
          f"batch {BATCH}, Adam {LR}, 1 thread")  # fmt: skip
    print(
        f"speed: {args.rounds} rounds of {args.round_epochs} epochs, the peers in turn; "
        "ratio: s/epoch over torch's in the same round, median and min over the rounds"
    )
    print(f"quality: the best validation epoch of {args.epochs}; test IWAE-{args.iwae} in "
          "nats/image (lower is better), linear probe of encode(x) (test accuracy)")  # fmt: skip
    head = f"{'':7}{'s/epoch':>9}{'ratio med':>10}{'min':>6}{'cpu s/ep':>10}{'ratio med':>10}"
    print(head + f"{'min':>6}{f'IWAE-{args.iwae}':>11}{'probe':>7}")
    for name in names:
        row = f"{name:7}"
        for kind in (0, 1):
            ours = [t[kind] for t in times[name]]
            ratios = [a[kind] / b[kind] for a, b in zip(times[name], times["torch"], strict=True)]
            median = statistics.median(ours)
            row += f"{median:9.4f}{statistics.median(ratios):10.2f}{min(ratios):6.2f}"
        nats, probe = quality[name]
        print(f"{row}{nats:11.2f}{probe:7.3f}")
    defaults(data, args.iwae)


if __name__ == "__main__":
    main()
