"""Seconds to extract and to draw the DAG of a 200-node program: ppgen vs `pyro.render_model`.

A random DAG (each node takes up to `--max-parents` parents among the nodes before it) is built
with `ppgen.dag`, kinds mixed (normal, bernoulli, categorical, linear_gaussian), hidden=(8,).
Measured, median and min over `--repeats`, alternating the order of the three:

- graph: `ppgen.graph(model)`;
- draw: `ppgen.draw(model)` and `savefig` to a PNG (matplotlib's Agg backend);
- render: `pyro.render_model(model, model_kwargs={"n": 1})` and rendering it to a PNG, where the
  graphviz Python package and its `dot` binary are installed.

Run: python benchmarks/graph.py [--nodes 200 --repeats 5 --out /tmp/ppgen-graph]
"""

import argparse
import os
import random
import shutil
import statistics
import time
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402

import ppgen  # noqa: E402

KINDS = ["normal", "bernoulli", "categorical", "linear_gaussian"]


def random_dag(nodes, max_parents, seed):
    rng = random.Random(seed)
    names = [f"x{i}" for i in range(nodes)]
    edges = [
        (names[j], names[i])
        for i in range(1, nodes)
        for j in rng.sample(range(i), min(i, rng.randint(1, max_parents)))
    ]
    kinds = {v: rng.choice(KINDS) for v in names}
    cards = {v: 3 for v, k in kinds.items() if k == "categorical"}
    return ppgen.dag(edges, kinds=kinds, cardinalities=cards, hidden=(8,))


def has_graphviz():
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return False
    return shutil.which("dot") is not None


def time_graph(model, out):
    tic = time.perf_counter()
    ppgen.graph(model)
    return time.perf_counter() - tic


def time_draw(model, out):
    tic = time.perf_counter()
    ax = ppgen.draw(model)
    ax.figure.savefig(out / "ppgen_draw.png", dpi=100)
    seconds = time.perf_counter() - tic
    plt.close(ax.figure)
    return seconds


def time_render(model, out):
    tic = time.perf_counter()
    picture = pyro.render_model(model, model_kwargs={"n": 1})
    picture.render(out / "pyro_render", format="png", cleanup=True)
    return time.perf_counter() - tic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--max-parents", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ppgen-graph"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    pyro.set_rng_seed(args.seed)
    model = random_dag(args.nodes, args.max_parents, args.seed)
    print(f"flags: {vars(args)}  threads: {torch.get_num_threads()}")
    print(f"model: {len(model.nodes)} nodes, {len(model.edges)} edges")
    print(f"load average before timing: {os.getloadavg()}")
    jobs = {"ppgen.graph": time_graph, "ppgen.draw+savefig": time_draw}
    if has_graphviz():
        jobs["pyro.render_model+png"] = time_render
    else:
        print("graphviz not installed: render_model not measured")
    seconds = {name: [] for name in jobs}
    for r in range(args.repeats):
        names = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
        for name in names:
            seconds[name].append(jobs[name](model, args.out))
    print(f"{'operation':>22} {'median s':>9} {'min s':>7} {'x graph':>8}")
    base = statistics.median(seconds["ppgen.graph"])
    for name, values in seconds.items():
        med = statistics.median(values)
        print(f"{name:>22} {med:>9.3f} {min(values):>7.3f} {med / base:>8.1f}")
    print(f"pictures in {args.out}; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
