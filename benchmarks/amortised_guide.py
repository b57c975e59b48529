"""The automatic amortised guide (ppgen.guides.Amortized) beside hand-written amortised guides.

Five custom latent DAGs, each fitted by `ppgen.fit_svi` (elbo left unset: Trace_ELBO, one particle;
TraceEnum_ELBO in (v), where both guides mark the label for enumeration) twice from the same
initial model weights and the same seed, once with `Amortized(model)` and once with a guide
written for it, with the same budget (epochs, batch size, lr) and hidden widths of the same size;
one thread:

  (i)   confounder: z -> x1, z -> x2, x1 -> x2 (neural conditionals), synthetic rows;
  (ii)  hierarchical, in the dict convention: group means mu_g (global, a plate of groups), each
        row's group g_i (an observed code) and per-row z_i ~ N(mu_{g_i}, 1), x_i | z_i neural;
  (iii) deep Markov model, T = 10: z_t | z_{t-1} and x_t | z_t neural (z in R^2, x in R^4); the
        hand-written guide is Krishnan et al.'s: a GRU run backwards over x and a combiner of
        z_{t-1} and its state;
  (iv)  the VAE on the embedded digits (ppgen.models.VAE(64, 8, hidden=(256,)), its own encoder
        as the hand-written guide);
  (v)   the semi-supervised VAE (Kingma et al.'s M2) on the digits, 10 % of the training rows
        labelled: y ~ Cat(1/10), z ~ N(0, I_8), x | y, z a network; each row packs the image,
        its label one-hot (zeros where unlabelled) and a flag, the label observed where flagged
        (`obs_mask`, so the latent site is `y_unobserved`). The hand-written guide is M2's: a
        classifier q(y | x), masked where the row is labelled, whose label is summed by
        enumeration, and an encoder q(z | x, y) of the true label where there is one.

Held-out score: the importance-weighted log-likelihood (`--draws` draws a row) of the test rows,
nats per row, under each fitted model with its own guide; a global latent (ii) is fixed at its
guide's location; the test rows of (v) are all unlabelled, and its accuracy is the guide's most
probable label of them. s/epoch: the median and the min of the fit's epoch times. AutoNormal
cannot run on any of them: each has per-row latents, which fit_svi refuses for auto guides, and
it has no parameters for held-out rows.

    python benchmarks/amortised_guide.py            # the sizes below, ~3 min on 2 shared cores
    python benchmarks/amortised_guide.py --quick    # a smoke run

Measured 2026-12-04 on 2 shared cores (a red-team helper running beside it), one thread; 2000
training rows and 500 test rows ((i)-(iii); digits 1500/297), 60 epochs, batches of 64, lr 3e-3,
IW-200, one run (97 s):

    | case           | auto IW  | hand IW  | auto - hand | s/epoch auto / hand (median, min) |
    |----------------|----------|----------|-------------|-----------------------------------|
    | confounder     |   -1.532 |   -1.573 |      +0.040 | 1.19, 1.14                        |
    | hierarchical   |   -1.400 |   -1.366 |      -0.034 | 1.10, 1.09                        |
    | dmm (T=10)     |   -5.170 |   -5.487 |      +0.317 | 1.15, 1.09                        |
    | digits         |  -17.260 |  -17.376 |      +0.116 | 0.98, 0.98                        |
    | semisupervised |  -16.949 |  -16.740 |      -0.209 | 0.97, 0.94                        |

    semi-supervised test accuracy (297 unlabelled digits): auto 0.626, hand 0.781.

The scores repeat exactly from run to run; the epoch times swing with the machine's load (the
confounder's epochs take 0.05-0.08 s). On the DMM the automatic guide had a network a step, each
learning from one step's gradient, and stayed 1.15 nats/row behind (-6.651 against -5.503 in an
earlier run); it now finds the chain (z_t's only latent inverse parent is z_{t-1}, its observed
ones x_t, ..., x_T, one fewer a step) and, as Krishnan et al.'s guide, runs one GRU backwards over
x_0..x_T and one network of its state and z_{t-1} for every step: 0.32 nats/row ahead of the
hand-written guide (its head also has a linear path), a step 1.02-1.03x the hand guide's when
timed alone (23.4 ms against 23.0 ms, 64 rows, loss and gradient). On (v) both guides sum over
the label; the automatic guide reads the packed row (flag and one-hot label too) and does not
mask y_unobserved where the row is labelled (it warns: it knows no mask of the model's), so on
those rows its ELBO also counts the entropy of q(y | row), which it can spend there since it sees
the flag; its classifier of unlabelled rows is the weaker (0.63 against 0.78; neither guide adds
M2's classification loss). On the hierarchical model the automatic guide read the row's one-hot
code and the whole vector of group means, and had to learn mu[g] from them while the nine other
means' draws added noise to z's location: -1.583 (-0.217 behind) in an earlier run, closing only
by 180 epochs. It now finds, by the gradient of the model's row terms, that each row reads mu only
at its code, and reads mu[g] in mu's place, as the hand-written guide does: -1.400 (-0.034). A
first try that kept mu beside mu[g] gave -1.527, and mu's weights started at zero -1.461.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import site_is_subsample
from torch import nn

import ppgen
from ppgen.datasets import digits
from ppgen.guides import Amortized
from ppgen.models import VAE
from ppgen.nn import mlp

H = 64  # hidden width of every network, model's and guide's


class Confounder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x1 = mlp([1, H, 2], nn.ReLU)
        self.x2 = mlp([2, H, 2], nn.ReLU)
        self.enc = mlp([2, H, 2], nn.ReLU)

    def model(self, x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc, scale = self.x1(z[:, None]).unbind(-1)
            x1 = pyro.sample("x1", dist.Normal(loc, F.softplus(scale)), obs=x[:, 0])
            loc, scale = self.x2(torch.stack([z, x1], -1)).unbind(-1)
            pyro.sample("x2", dist.Normal(loc, F.softplus(scale)), obs=x[:, 1])

    def guide(self, x):
        loc, scale = self.enc(x).unbind(-1)
        with pyro.plate("rows", len(x)):
            pyro.sample("z", dist.Normal(loc, F.softplus(scale)))

    @staticmethod
    def data(n: int) -> torch.Tensor:
        z = torch.randn(n)
        x1 = torch.sin(2 * z) + 0.2 * torch.randn(n)
        x2 = z * x1 + 0.5 * z + 0.2 * torch.randn(n)
        return torch.stack([x1, x2], -1)


G, D = 10, 4  # groups, features


class Hierarchical(nn.Module):
    """In the dict convention: each row's group `g` (a code) and features `x` are columns."""

    def __init__(self) -> None:
        super().__init__()
        self.dec = mlp([1, H, 2 * D], nn.ReLU)
        self.enc = mlp([D + 1, H, 2], nn.ReLU)
        self.mu_loc = nn.Parameter(torch.zeros(G))
        self.mu_scale = nn.Parameter(torch.full((G,), -2.0))

    def model(self, n=1):
        with pyro.plate("groups", G):
            mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("rows", n):
            g = pyro.sample("g", dist.Categorical(logits=torch.zeros(G)))
            z = pyro.sample("z", dist.Normal(mu[g], 1.0))
            loc, scale = self.dec(z[:, None]).chunk(2, -1)
            pyro.sample("x", dist.Normal(loc, F.softplus(scale)).to_event(1))

    def guide(self, n=1, data=None):  # a guide that names `data` gets the batch's columns
        with pyro.plate("groups", G):
            mu = pyro.sample("mu", dist.Normal(self.mu_loc, F.softplus(self.mu_scale)))
        loc, scale = self.enc(torch.cat([data["x"], mu[data["g"], None]], -1)).unbind(-1)
        with pyro.plate("rows", n):
            pyro.sample("z", dist.Normal(loc, F.softplus(scale)))

    def globals(self, guide: object, rows: dict) -> dict[str, torch.Tensor]:
        if isinstance(guide, Amortized):
            return {"mu": guide.encode(n=len(rows["x"]), data=rows)["mu"]}
        return {"mu": self.mu_loc.detach()}

    @staticmethod
    def data(n: int) -> dict[str, torch.Tensor]:
        means = torch.linspace(-3, 3, G)
        group = torch.randint(G, (n,))
        z = means[group] + torch.randn(n)
        w = torch.tensor([1.0, -0.5, 0.8, 0.3])
        x = torch.tanh(z[:, None] * w) + 0.5 * z[:, None] * w + 0.1 * torch.randn(n, D)
        return {"g": group, "x": x}


T, ZD, XD = 10, 2, 4


class DMM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trans = mlp([ZD, H, 2 * ZD], nn.ReLU)
        self.emit = mlp([ZD, H, 2 * XD], nn.ReLU)
        self.rnn = nn.GRU(XD, H, batch_first=True)
        self.combine = mlp([ZD + H, H, 2 * ZD], nn.ReLU)

    def model(self, x):
        with pyro.plate("rows", len(x)):
            z = x.new_zeros(len(x), ZD)
            for t in range(T):
                loc, scale = self.trans(z).chunk(2, -1)
                z = pyro.sample(f"z{t}", dist.Normal(loc, F.softplus(scale)).to_event(1))
                loc, scale = self.emit(z).chunk(2, -1)
                pyro.sample(f"x{t}", dist.Normal(loc, F.softplus(scale)).to_event(1), obs=x[:, t])

    def guide(self, x):
        states, _ = self.rnn(x.flip(1))
        states = states.flip(1)
        with pyro.plate("rows", len(x)):
            z = x.new_zeros(len(x), ZD)
            for t in range(T):
                loc, scale = self.combine(torch.cat([z, states[:, t]], -1)).chunk(2, -1)
                z = pyro.sample(f"z{t}", dist.Normal(loc, F.softplus(scale)).to_event(1))

    @staticmethod
    def data(n: int) -> torch.Tensor:
        z, rows = torch.zeros(n, ZD), []
        a = torch.tensor([[0.9, -0.3], [0.3, 0.9]])
        w = torch.randn(ZD, XD)
        for _ in range(T):
            z = torch.tanh(z @ a.T) + 0.4 * torch.randn(n, ZD)
            rows.append(torch.sin(z @ w) + 0.1 * torch.randn(n, XD))
        return torch.stack(rows, 1)


class Digits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vae = VAE(64, 8, hidden=(256,))
        self.model, self.guide = self.vae, self.vae.guide


K, ZS, PIXELS = 10, 8, 64  # classes, latent size, pixels


class SemiSupervised(nn.Module):
    """Kingma et al.'s M2 on the digits, some rows labelled: each row packs the image, its label
    one-hot (zeros where unlabelled) and a flag (1: labelled), the label observed where flagged
    (`obs_mask`) and latent, as the site `y_unobserved`, elsewhere. The hand-written guide is
    M2's: a classifier q(y | x) whose label is summed by enumeration where the row has none,
    and an encoder q(z | x, y)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = mlp([ZS + K, 256, PIXELS], nn.ReLU)
        self.classifier = mlp([PIXELS, H, K], nn.ReLU)
        self.encode_x = nn.Linear(PIXELS, H)  # the encoder's first layer, on x and y apart
        self.encode_y = nn.Linear(K, H, bias=False)
        self.encode_h = nn.Linear(H, 2 * ZS)

    @staticmethod
    def unpack(row):
        return row[:, :PIXELS], row[:, PIXELS : PIXELS + K].argmax(-1), row[:, -1] > 0

    def model(self, row):
        x, label, labelled = self.unpack(row)
        with pyro.plate("rows", len(row)):
            y = pyro.sample("y", dist.Categorical(logits=row.new_zeros(K)), obs=label,
                            obs_mask=labelled)  # fmt: skip
            z = pyro.sample("z", dist.Normal(row.new_zeros(ZS), 1.0).to_event(1))
            y = F.one_hot(y, K).to(z.dtype)  # enumerated: (K, rows) values, z given each
            shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
            logits = self.decoder(torch.cat([z.expand(*shape, -1), y.expand(*shape, -1)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, row):
        x, label, labelled = self.unpack(row)
        with pyro.plate("rows", len(row)):
            with poutine.mask(mask=~labelled):
                guess = pyro.sample("y_unobserved", dist.Categorical(logits=self.classifier(x)),
                                    infer={"enumerate": "parallel"})  # fmt: skip
            y = F.one_hot(torch.where(labelled, label, guess), K).to(x.dtype)
            h = F.relu(self.encode_x(x) + self.encode_y(y))
            loc, scale = self.encode_h(h).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(scale)).to_event(1))

    def accuracy(self, guide, rows, labels) -> float:
        with torch.no_grad():
            if isinstance(guide, Amortized):
                guess = guide.encode(rows)["y_unobserved"]
            else:
                guess = self.classifier(rows[:, :PIXELS]).argmax(-1)
        return (guess == labels).double().mean().item()

    @staticmethod
    def rows(images, labels, share: float):
        labelled = torch.rand(len(images)) < share
        onehot = F.one_hot(labels, K).to(images.dtype) * labelled[:, None]
        return torch.cat([images, onehot, labelled[:, None].to(images.dtype)], -1)


def heldout(model, guide, rows, draws: int, fixed: dict) -> float:
    """The importance-weighted log-likelihood per row, `draws` draws a row, of rows in either
    convention; the global sites `fixed` are held at the given values, in the model and guide."""
    n = len(rows) if isinstance(rows, torch.Tensor) else len(rows["x"])
    chunks, per = [], max(1, 20000 // n)
    with torch.no_grad():
        for start in range(0, draws, per):
            k = min(per, draws - start)
            if isinstance(rows, torch.Tensor):
                args, kwargs, extra = (rows.repeat(k, *[1] * (rows.dim() - 1)),), {}, {}
                guide_kwargs = {}
            else:
                repeated = {c: v.repeat(k, *[1] * (v.dim() - 1)) for c, v in rows.items()}
                args, kwargs, extra = (), {"n": k * n}, repeated
                guide_kwargs = {"data": repeated}
            q = poutine.trace(poutine.condition(guide, data=fixed))
            q = q.get_trace(*args, **kwargs, **guide_kwargs)
            p = poutine.condition(model, data={**fixed, **extra})
            p = poutine.trace(poutine.replay(p, trace=q)).get_trace(*args, **kwargs)
            log_w = 0.0
            for sign, trace in ((1, p), (-1, q)):
                trace.compute_log_prob()
                for name, site in trace.nodes.items():
                    if site["type"] != "sample" or site_is_subsample(site) or name in fixed:
                        continue
                    if sign < 0 and site["is_observed"]:
                        continue
                    log_w = log_w + sign * site["log_prob"].reshape(k, n, -1).sum(-1)
            chunks.append(log_w)
    log_w = torch.cat(chunks)
    return (log_w.logsumexp(0) - math.log(draws)).mean().item()


def run(case: str, make, train, test, args, labels=None) -> dict[str, dict[str, float]]:
    results = {}
    for name in ("auto", "hand"):
        torch.manual_seed(1)
        pyro.set_rng_seed(1)
        pyro.clear_param_store()
        bench = make()
        guide = Amortized(bench.model, hidden_features=(H,)) if name == "auto" else bench.guide
        fit = ppgen.fit_svi(
            bench.model, guide, train, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, progress=False,
        )  # fmt: skip
        seconds = [r["seconds"] for r in fit.history]
        fixed = bench.globals(guide, test) if hasattr(bench, "globals") else {}
        pyro.set_rng_seed(2)
        score = heldout(bench.model, guide, test, args.draws, fixed)
        results[name] = {"iw": score, "median": statistics.median(seconds), "min": min(seconds)}
        if hasattr(bench, "accuracy"):
            results[name]["accuracy"] = bench.accuracy(guide, test, labels)
        print(f"{case:13s} {name:5s} held-out IW-{args.draws} {score:9.3f} nats/row   "
              f"s/epoch median {results[name]['median']:.4f} min {results[name]['min']:.4f}",
              flush=True)  # fmt: skip
        if "accuracy" in results[name]:
            print(f"{case:13s} {name:5s} test accuracy {results[name]['accuracy']:.3f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--labelled", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default="confounder,hierarchical,dmm,digits,semisupervised")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rows, args.draws = 2, 256, 10
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {
        "confounder": (Confounder, Confounder.data),
        "hierarchical": (Hierarchical, Hierarchical.data),
        "dmm": (DMM, DMM.data),
    }
    table = {}
    start = time.perf_counter()
    for case in args.cases.split(","):
        if case == "digits":
            images = digits()
            train, test = images.train, images.test
            table[case] = run(case, Digits, train, test, args)
            continue
        if case == "semisupervised":
            images = digits()
            torch.manual_seed(0)
            train = SemiSupervised.rows(images.train, images.train_labels, args.labelled)
            test = SemiSupervised.rows(images.test, images.test_labels, 0.0)
            table[case] = run(case, SemiSupervised, train, test, args, images.test_labels)
            continue
        make, data = cases[case]
        torch.manual_seed(0)
        rows = data(args.rows + args.rows // 4)
        if isinstance(rows, dict):
            train = {c: v[: args.rows] for c, v in rows.items()}
            test = {c: v[args.rows :] for c, v in rows.items()}
        else:
            train, test = rows[: args.rows], rows[args.rows :]
        table[case] = run(case, make, train, test, args)
    print(f"\n{args.epochs} epochs, batches of {args.batch_size}, lr {args.lr}, "
          f"{time.perf_counter() - start:.0f} s in all")  # fmt: skip
    print("| case | auto IW | hand IW | auto - hand | s/epoch auto / hand (median, min) |")
    print("|---|---|---|---|---|")
    for case, r in table.items():
        a, h = r["auto"], r["hand"]
        print(f"| {case} | {a['iw']:.3f} | {h['iw']:.3f} | {a['iw'] - h['iw']:+.3f} | "
              f"{a['median'] / h['median']:.2f}, {a['min'] / h['min']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
