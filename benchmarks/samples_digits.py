"""Sample quality of every ppgen model on binarised 8x8 digits: unbiased MMD^2 to the test set.

Each model is trained on the 1500 training digits (fully visible models by `fit_mle`, the VAE by
`fit_svi`, the GAN with each generator loss by `fit_gan`); 1000 samples are compared with the 297
test digits by `ppgen.metrics.mmd` (Gaussian kernel, median-heuristic bandwidth computed on the test
set, so every row uses the same kernel). The floor is 1000 training digits against the test set.
GAN samples are grey levels in [0, 1] (a sigmoid output); the column `binarised` thresholds them at
0.5, as a reading of the same generator on the data's binary support. Sample grids go to `--out`.

Run: python benchmarks/samples_digits.py --epochs 100 --gan-epochs 100 --out /tmp/ppgen-samples
"""

import argparse
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ppgen.datasets import digits  # noqa: E402
from ppgen.infer import fit_gan, fit_mle, fit_svi  # noqa: E402
from ppgen.metrics import linear_probe, median_bandwidth, mmd  # noqa: E402
from ppgen.models import FVSBN, GAN, MADE, NADE, VAE, Independent, PixelCNN  # noqa: E402
from ppgen.models.gan import ConvDiscriminator, ConvGenerator  # noqa: E402
from ppgen.viz import draw_samples  # noqa: E402

EXPLICIT = {
    "independent": (lambda: Independent(64), 1e-2),
    "fvsbn": (lambda: FVSBN(64), 3e-3),
    "nade": (lambda: NADE(64, hidden_features=64), 3e-3),
    "made": (lambda: MADE(64, hidden_features=(512,)), 1e-3),
    "pixelcnn": (lambda: PixelCNN((8, 8), channels=64, layers=4, kernel_size=7), 1e-3),
}
GAN_LOSSES = ("non_saturating", "minimax")


def save_grid(samples, path, title):
    ax = draw_samples(samples[:100], (8, 8))
    ax.set_title(title)
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=200, help="fully visible models and VAE")
    parser.add_argument("--gan-epochs", type=int, default=300)
    parser.add_argument("--gan-lr", type=float, default=2e-4, help="both players")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=[*EXPLICIT, "vae", *GAN_LOSSES])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ppgen-samples"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    data = digits(dtype=torch.float32)
    h = median_bandwidth(data.test)
    floor = mmd(data.train[: args.samples], data.test, bandwidth=h)
    load = os.getloadavg()
    print(
        f"binarised digits, {args.samples} samples vs {len(data.test)} test rows; Gaussian kernel "
        f"exp(-d^2/h), h = {h:.1f} (median on test); epochs {args.epochs}, GAN epochs "
        f"{args.gan_epochs}; torch threads 1; load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f} on {os.cpu_count()} cores (shared with other developers' benchmarks)"
    )
    print(f"{'model':<16} {'MMD^2':>9} {'binarised':>10} {'fit s':>7}")
    print(f"{'train (floor)':<16} {floor:>9.5f} {'':>10} {'':>7}", flush=True)
    save_grid(data.train[:100], args.out / "train.png", "training digits")
    for name in args.models:
        torch.manual_seed(0)
        tic = time.perf_counter()
        binarised = float("nan")
        if name in EXPLICIT:
            make, lr = EXPLICIT[name]
            model = make()
            fit_mle(model, {"x": data.train}, epochs=args.epochs, batch_size=100, lr=lr,
                    progress=False)  # fmt: skip
            with torch.no_grad():
                samples = model.distribution(args.samples).sample()
        elif name == "vae":
            model = VAE(64, 16, hidden=(256,))
            fit_svi(model, model.guide, data.train, epochs=args.epochs, batch_size=100, lr=1e-3,
                    progress=False)  # fmt: skip
            samples = model.sample(args.samples)
            probe = linear_probe(model.encode(data.train), data.train_labels,
                                 model.encode(data.test), data.test_labels)  # fmt: skip
        else:
            model = GAN(ConvGenerator(16, (8, 8)), ConvDiscriminator((8, 8)), 16, loss=name)
            fit_gan(model, data.train, epochs=args.gan_epochs, batch_size=64, lr_g=args.gan_lr,
                    lr_d=args.gan_lr, progress=False)  # fmt: skip
            samples = model.sample(args.samples)
            spread = torch.cdist(samples, samples).pow(2).mean() / torch.cdist(
                data.test, data.test).pow(2).mean()  # fmt: skip
            binarised = mmd((samples > 0.5).float(), data.test, bandwidth=h)
            probe = linear_probe(model.features(data.train), data.train_labels,
                                 model.features(data.test), data.test_labels)  # fmt: skip
        seconds = time.perf_counter() - tic
        value = mmd(samples, data.test, bandwidth=h)
        save_grid(samples, args.out / f"{name}.png", f"{name}: MMD^2 {value:.4f}")
        extra = f"  linear probe {probe:.3f}" if name in ("vae", *GAN_LOSSES) else ""
        if name in GAN_LOSSES:  # mean squared distance between samples / between test rows
            extra += f"  spread {spread:.3f}"
        print(
            f"{name:<16} {value:>9.5f} {binarised:>10.5f} {seconds:>7.0f}{extra}",
            flush=True,
        )
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
