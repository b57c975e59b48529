"""Test NLL of the fully visible models on binarised 8x8 digits, beside hand-written torch anchors.

Protocol (every figure, ppgen's and the anchors', in the same run): `digits(val=300)` splits the
1500 training digits into 1200 to fit on and 300 to choose on. Each model is fitted under each of
its settings (`GRID`: the learning rate, FVSBN's L2 penalty) by Adam on the exact NLL, its
validation NLL read every epoch and the best epoch kept; the setting with the best validation NLL
wins; only then are the 297 test digits scored, once. `select` reads `data.train` and `data.val`
alone (tests/test_benchmarks.py fits with the test rows replaced by NaNs and gets the same
choices). The anchors (`ANCHORS`) are plain torch modules trained by a plain loop, with the same
settings, batches, budget and selection.

Run: python benchmarks/density_digits.py --out /tmp/ppgen-bench
(300 epochs, PixelCNN 40; `--models nade made` for some, `--seed 1` for other initial states)

Measured 2026-12-04, one run, seed 0, one thread on a shared 2-core machine (load 2-20):

    model                setting              epoch  val NLL  test NLL  s/epoch med    min
    independent          lr=0.1                 232    24.42     24.49        0.007  0.007
    independent (anchor) lr=0.1                 232    24.42     24.49        0.003  0.003
    fvsbn                weight_decay=0.0003    299    18.11     18.19        0.024  0.023
    fvsbn (anchor)       weight_decay=0.0003    299    18.11     18.19        0.023  0.012
    nade                 lr=0.01                 94    16.98     17.04        0.064  0.052
    nade (anchor)        lr=0.01                 90    16.93     17.03        0.083  0.072
    made                 lr=0.001               208    17.19     17.24        0.079  0.032
    made (anchor)        lr=0.003                64    17.26     17.19        0.076  0.016
    pixelcnn             lr=0.0005               29    16.44     16.40       16.243  7.874

Sampling 0.06-1.4 ms/image, PixelCNN 586 ms (under load 15-20; 95 ms under load 2 before); its
grid shows mostly legible digits. With seed 1, PixelCNN at lr 5e-4 alone (the grid not run)
keeps epoch 36 of 40: val 16.63, test 16.78. The ordering independent > FVSBN > NADE, MADE >
PixelCNN holds; PixelCNN meets issue 5's 16.5 on seed 0, not on seed 1; MADE misses its 16.9
(17.24, its anchor 17.19).
FVSBN with L2 is convex: ppgen and the anchor reach the same optimum to the digit. Without
`position=True` (lr 1e-3 only, the epoch chosen on validation) PixelCNN scores 17.26: its zero
padding looks like blank pixels, so the type-A layer cannot tell where a pixel with blank
pixels before it lies.

Earlier, on the retired protocol (1500 training digits, the epoch chosen on the test digits):
independent 24.49, FVSBN 18.12, NADE 16.87, MADE 16.89, PixelCNN 16.35 (16.44 with seed 1); the
anchors 24.49, 18.14, 16.88. Most of the rise is the 300 digits now held out: that protocol on
the 1200 rows (this run's split, the fixed settings of `MODELS`) gives FVSBN 18.18, NADE 17.07,
MADE 17.22, independent 24.49. There lr 3e-4, dropout 0.5, L2 1e-4, 48 or 128 channels, 8
layers or an average of the weights (EMA) did not help PixelCNN in 35-100 epochs.
"""

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ppgen  # noqa: E402
from ppgen.datasets import Images, digits  # noqa: E402
from ppgen.infer import fit_mle  # noqa: E402
from ppgen.models import FVSBN, MADE, NADE, Independent, PixelCNN  # noqa: E402

# Adam options per model (samples_digits.py fits with these); GRID varies them
MODELS = {
    "independent": (lambda: Independent(64), {"lr": 3e-2}),
    # a little L2 (MAP with a Gaussian prior) and small batches
    "fvsbn": (lambda: FVSBN(64), {"lr": 3e-3, "batch_size": 32, "weight_decay": 3e-4}),
    "nade": (lambda: NADE(64, hidden_features=64), {"lr": 3e-3}),
    "made": (lambda: MADE(64, hidden_features=(512,)), {"lr": 1e-3}),
    # a 15x15 type-A kernel sees every earlier pixel of an 8x8 image (no blind spot), and a
    # channel of ones where each pixel lies; residual blocks with dropout keep the training
    # images from being memorised
    "pixelcnn": (
        lambda: PixelCNN(
            (8, 8),
            channels=96,
            layers=6,
            kernel_size=15,
            residual=True,
            dropout=0.4,
            position=True,
        ),
        {"lr": 1e-3, "batch_size": 50},
    ),
}

# The settings each model (and its anchor) is fitted under; the validation digits choose one
GRID = {
    "independent": [{"lr": 1e-2}, {"lr": 3e-2}, {"lr": 1e-1}],
    "fvsbn": [{"weight_decay": 0.0}, {"weight_decay": 3e-4}, {"weight_decay": 1e-3}],
    "nade": [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-2}],
    "made": [{"lr": 3e-4}, {"lr": 1e-3}, {"lr": 3e-3}],
    "pixelcnn": [{"lr": 5e-4}, {"lr": 1e-3}, {"lr": 2e-3}],
}
EPOCHS = {"pixelcnn": 40}  # its budget (it overfits 1200 images within ~30 epochs)
TARGETS = {"made": 16.9, "pixelcnn": 16.5}  # issue 5's, where no anchor is written here


class IndependentAnchor(nn.Module):
    """Independent Bernoulli pixels, one logit each."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(64))

    def forward(self, x):
        return self.logits.expand(x.shape)


class FVSBNAnchor(nn.Module):
    """A logistic regression of each pixel on the pixels before it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 64)
        self.register_buffer("mask", torch.ones(64, 64).tril(-1))

    def forward(self, x):
        return F.linear(x, self.linear.weight * self.mask, self.linear.bias)


class NADEAnchor(nn.Module):
    """NADE, 64 hidden units, written out: h_i = sigmoid(c + W[:, :i] x[:i])."""

    def __init__(self, hidden=64):
        super().__init__()
        self.w, self.v = nn.Linear(64, hidden), nn.Linear(hidden, 64)

    def forward(self, x):
        terms = x.unsqueeze(1) * self.w.weight  # (N, H, D)
        h = torch.sigmoid(self.w.bias[:, None] + terms.cumsum(-1) - terms)
        return self.v.bias + torch.einsum("nhd,dh->nd", h, self.v.weight)


class MADEAnchor(nn.Module):
    """MADE with one masked hidden layer (degrees 1..63 in turn) and a masked skip layer."""

    def __init__(self, hidden=512):
        super().__init__()
        degree_in, degree_h = torch.arange(1, 65), torch.arange(hidden) % 63 + 1
        self.register_buffer("m1", (degree_h[:, None] >= degree_in[None, :]).float())
        self.register_buffer("m2", (degree_in[:, None] > degree_h[None, :]).float())
        self.register_buffer("skip", torch.ones(64, 64).tril(-1))
        self.fc1, self.fc2 = nn.Linear(64, hidden), nn.Linear(hidden, 64)
        self.direct = nn.Linear(64, 64, bias=False)

    def forward(self, x):
        h = F.relu(F.linear(x, self.fc1.weight * self.m1, self.fc1.bias))
        return F.linear(h, self.fc2.weight * self.m2, self.fc2.bias) + F.linear(
            x, self.direct.weight * self.skip
        )


ANCHORS = {"independent": IndependentAnchor, "fvsbn": FVSBNAnchor, "nade": NADEAnchor,
           "made": MADEAnchor}  # fmt: skip


def nll(model, x):
    """Mean NLL in nats per image: a ppgen model through `ppgen.log_prob`, an anchor by hand."""
    with torch.no_grad():
        if isinstance(model, ppgen.Model):
            return -ppgen.log_prob(model, {"x": x}).mean().item()
        logits = model(x)
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean().item()


def train_anchor(model, train, val, *, epochs, batch_size, lr, weight_decay=0.0):
    """Adam on the NLL, the validation NLL read every epoch and the best epoch's weights kept;
    the validation curve and seconds per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, kept, curve, seconds = math.inf, None, [], []
    for _ in range(epochs):
        tic = time.perf_counter()
        order = torch.randperm(len(train))
        for start in range(0, len(train), batch_size):
            batch = train[order[start : start + batch_size]]
            loss = F.binary_cross_entropy_with_logits(model(batch), batch, reduction="none")
            optimizer.zero_grad(set_to_none=True)
            loss.sum(-1).mean().backward()
            optimizer.step()
        seconds.append(time.perf_counter() - tic)
        curve.append(nll(model, val))
        if curve[-1] < best:
            best, kept = curve[-1], copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    return curve, seconds


@dataclass
class Choice:
    """What the validation digits chose: the fitted model, its setting and epoch, and curves."""

    model: nn.Module
    options: dict
    epoch: int
    val: float
    curves: list  # per setting tried: the validation NLL of every epoch
    seconds: list  # of the chosen setting's epochs


def select(name, data: Images, *, epochs, seed=0, anchor=False, grid=None, batch_size=100):
    """Fits ppgen's `name` (or its anchor) on `data.train` under each setting of its grid, and
    keeps the setting and epoch of the best NLL on `data.val`; `data.test` is never read."""
    make, base = MODELS[name]
    best, curves = None, []
    for change in grid or GRID[name]:
        options = {"batch_size": batch_size, **base, **change}
        torch.manual_seed(seed)
        if anchor:
            model = ANCHORS[name]()
            curve, seconds = train_anchor(model, data.train, data.val, epochs=epochs, **options)
        else:
            model = make()
            fit = fit_mle(model, {"x": data.train}, val={"x": data.val}, epochs=epochs,
                          progress=False, **options)  # fmt: skip
            curve = [-record["val"] for record in fit.history]
            seconds = [record["seconds"] for record in fit.history]
        curves.append(curve)
        epoch = min(range(len(curve)), key=curve.__getitem__) + 1
        if best is None or curve[epoch - 1] < best.val:
            best = Choice(model, options, epoch, curve[epoch - 1], curves, seconds)
    return best


def grid_image(samples, path, title):
    fig, axes = plt.subplots(8, 8, figsize=(6, 6))
    for ax, image in zip(axes.flat, samples, strict=True):
        ax.imshow(image.reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def changed(options, name):
    """The chosen setting, as the keys its grid varies."""
    return " ".join(f"{k}={options[k]:g}" for k in GRID[name][0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=300, help="PixelCNN: EPOCHS")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/ppgen-bench"))
    parser.add_argument("--seed", type=int, default=0, help="of each model's initial state")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = digits(dtype=torch.float32, val=300)
    print(f"binarised digits: {len(data.train)} train, {len(data.val)} validation (chooses "
          f"setting and epoch), {len(data.test)} test (scored once); 1 thread")  # fmt: skip
    print(f"{'model':<20} {'setting':<20} {'epoch':>6} {'val NLL':>8} {'test NLL':>9}"
          f" {'s/epoch med':>12} {'min':>7} {'sample ms/img':>14}")  # fmt: skip
    for name in args.models:
        epochs = EPOCHS.get(name, args.epochs)
        for anchor in (False, True) if name in ANCHORS else (False,):
            choice = select(name, data, epochs=epochs, seed=args.seed, anchor=anchor,
                            batch_size=args.batch_size)  # fmt: skip
            test = nll(choice.model, data.test)  # the one look at the test digits
            label, sample_ms = f"{name} (anchor)" if anchor else name, float("nan")
            if not anchor:
                start = time.perf_counter()
                with torch.no_grad():
                    samples = choice.model.distribution(64).sample()
                sample_ms = 1000 * (time.perf_counter() - start) / 64
                grid_image(samples, args.out / f"{name}.png", f"{name}: test NLL {test:.2f} nats")
            extra = f"  target {TARGETS[name]}" if name in TARGETS and not anchor else ""
            times = choice.seconds
            print(f"{label:<20} {changed(choice.options, name):<20} {choice.epoch:>6}"
                  f" {choice.val:>8.2f} {test:>9.2f} {statistics.median(times):>12.3f}"
                  f" {min(times):>7.3f} {sample_ms:>14.2f}{extra}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
