"""SVI on a many-node DAG with latent nodes: ppgen's fit_svi beside Pyro's own SVI loop.

The model is the many-node `ppgen.dag` of benchmarks/mle_neural.py (Normal nodes, node i with up
to two parents among the five before it, hidden (16,) or (64, 64)); every tenth node from the
tenth is latent (its column left out of the data), and the guide is `ppgen.guides.Amortized`
of the model. Three fitters take the same model, guide, batches and Adam:

- ppgen: `fit_svi`, whose fast ELBO evaluates the model's same-shaped conditionals together
  once the guide has drawn (`ppgen.batched`);
- ppgen per node: the same with one call a node (`ppgen.elbo.groups` returning none);
- Pyro: `SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step` on each batch, the model
  conditioned on it with `poutine.condition`, the guide given its columns.

Wall seconds of each epoch after the first (the fit's own record for ppgen, the loop of steps
for Pyro), median and minimum over epochs, interleaved repeats; one thread; the ratios are
to Pyro's SVI in the same run. The ELBO per row after the last epoch is printed beside them.

Measured on the shared 2-core machine, load about 1 (ratios from one run each; 10k rows,
batches of 1,024, 3 repeats of 3 epochs), x Pyro's SVI, median (min):

    100 nodes (9 latent), hidden (16,)     ppgen 0.33 (0.33)   ppgen per node 0.50 (0.54)
    100 nodes (9 latent), hidden (64, 64)  ppgen 0.61 (0.62)   ppgen per node 0.68 (0.71)

    Grouped / per node: 0.66 and 0.89 (as fit_mle's, where tanh and the products are most of
    a (64, 64) step). Under load 4-7 the same runs gave 0.27 and 0.30 (per node 0.54, 0.71).

    ELBO nats/row after 3 epochs: -349.58 ppgen (both), -354.50 Pyro; -145.28 and -144.75.
    They differ by the guide's initial draws (built on the first batch under SVI, on all rows
    by fit_svi) and the batches' order: on one full batch, fit_svi takes SVI's steps (tests/
    test_pyro_parity.py; 6e-8 here), and over 8 epochs the two curves meet (-53.16, -53.08).

Run: python benchmarks/svi_dag.py [--nodes 100 --hidden 16 --rows 10000 --batch-size 1024
     --epochs 3 --repeats 3]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

import ppgen  # noqa: E402
import ppgen.elbo  # noqa: E402
from ppgen.guides import Amortized  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from mle_neural import draw_rows, many_dag, many_program  # noqa: E402


def fit_ppgen(model, guide, rows, args, grouped):
    """`fit_svi`'s epochs; `grouped=False`: one call a node in the fast ELBO."""
    groups = ppgen.elbo.groups
    if not grouped:
        ppgen.elbo.groups = lambda factors, scalar: []
    try:
        fit = ppgen.fit_svi(model, guide, rows, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, progress=False)  # fmt: skip
    finally:
        ppgen.elbo.groups = groups
    return [r["seconds"] for r in fit.history[1:]], fit.history[-1]["train"]


def fit_pyro(model, guide, rows, args):
    """Pyro's SVI loop over the same batches (a random permutation an epoch)."""
    n = len(next(iter(rows.values())))

    def conditioned(batch):
        return poutine.condition(model, data=batch)(n=len(next(iter(batch.values()))))

    def guided(batch):
        return guide(n=len(next(iter(batch.values()))), data=batch)

    svi = SVI(conditioned, guided, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())
    seconds, elbo = [], 0.0
    for _ in range(args.epochs):
        tic, elbo = time.perf_counter(), 0.0
        for index in torch.randperm(n).split(args.batch_size):
            elbo -= svi.step({k: v[index] for k, v in rows.items()})
        seconds.append(time.perf_counter() - tic)
    return seconds[1:], elbo / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--hidden", default="16", help="widths, e.g. 64,64")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    hidden = tuple(int(w) for w in args.hidden.split(","))
    data = draw_rows(many_program(args.nodes), args.rows, 1)
    latent = [f"x{i}" for i in range(10, args.nodes, 10)]
    rows = {k: v for k, v in data.items() if k not in latent}
    seconds = {"ppgen": [], "ppgen per node": [], "Pyro SVI": []}
    elbos = {}
    for _ in range(args.repeats):
        for name in seconds:
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            model = many_dag(args.nodes, hidden)
            guide = Amortized(model)
            if name == "Pyro SVI":
                times, elbos[name] = fit_pyro(model, guide, rows, args)
            else:
                times, elbos[name] = fit_ppgen(model, guide, rows, args, name == "ppgen")
            seconds[name] += times
    peer = seconds["Pyro SVI"]
    print(f"{args.nodes} nodes ({len(latent)} latent), hidden {hidden}, {args.rows} rows, "
          f"batches of {args.batch_size}; s/epoch median (min), x Pyro SVI; ELBO nats/row")  # fmt: skip
    for name, times in seconds.items():
        ratio = statistics.median(times) / statistics.median(peer)
        print(f"  {name:15s} {statistics.median(times):7.3f} ({min(times):.3f})  "
              f"{ratio:5.2f}x ({min(times) / min(peer):.2f}x)  {elbos[name]:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
