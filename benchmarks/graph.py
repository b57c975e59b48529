"""Seconds and memory to extract and to draw the DAG of a program: ppgen vs graphviz's `dot`.

A random DAG (each node takes up to `--max-parents` parents among the nodes before it) is built
with `ppgen.dag`, kinds mixed (normal, bernoulli, categorical, linear_gaussian), hidden=(8,),
for each size in `--nodes`. Measured, median and min of the wall clock over `--repeats`,
alternating the order, and the median CPU time (the process's and its children's):

- graph: `ppgen.graph(model)`;
- draw: `ppgen.draw(g)` of that graph and `savefig` to a PNG (matplotlib's Agg backend, 100 dpi);
- draw(model): `ppgen.draw(model)` and `savefig`, the graph included;
- dot: graphviz's `dot -Tpng` on the same DAG (the layout and the picture), where installed;
- render: `pyro.render_model(model, model_kwargs={"n": 1})` and rendering it to a PNG with `dot`
  (the peer a Pyro user has), where the graphviz Python package is installed too.

A `dot` run past `--timeout` seconds is stopped, reported as `inf` and not repeated. The memory
is the rise of the peak resident set during one draw and savefig, in a fresh process (Linux).

Run: python benchmarks/graph.py [--nodes 200 2000 --repeats 5 --out /tmp/ppgen-graph]
"""

import argparse
import math
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
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


def time_graph(model, g, out, timeout):
    tic = time.perf_counter()
    ppgen.graph(model)
    return time.perf_counter() - tic


def _time_drawing(drawn, name):
    """Seconds to draw `drawn` (a graph or a model) and write its PNG."""
    tic = time.perf_counter()
    ax = ppgen.draw(drawn)
    ax.figure.savefig(name, dpi=100)
    seconds = time.perf_counter() - tic
    plt.close(ax.figure)
    return seconds


def time_draw(model, g, out, timeout):
    return _time_drawing(g, out / f"ppgen_draw_{len(g)}.png")


def time_draw_model(model, g, out, timeout):
    return _time_drawing(model, out / f"ppgen_draw_model_{len(g)}.png")


def _dot(source, path, timeout):
    """Seconds of `dot -Tpng` on a graph's source, or inf past the timeout."""
    tic = time.perf_counter()
    try:
        subprocess.run(["dot", "-Tpng", "-o", str(path)], input=source.encode(), check=True,
                       timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.perf_counter() - tic


def time_dot(model, g, out, timeout):
    lines = [f'  "{v}" [style=filled fillcolor=gray80]' for v in g]
    lines += [f'  "{u}" -> "{v}"' for u, v in g.edges]
    source = "digraph {\n" + "\n".join(lines) + "\n}\n"
    return _dot(source, out / f"dot_{len(g)}.png", timeout)


def time_render(model, g, out, timeout):
    tic = time.perf_counter()
    picture = pyro.render_model(model, model_kwargs={"n": 1})
    return time.perf_counter() - tic + _dot(picture.source, out / f"pyro_render_{len(g)}.png",
                                            timeout)  # fmt: skip


def cpu_seconds():
    """CPU seconds of this process and of its finished children (dot): on a shared machine,
    closer to the time alone than the wall clock."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024


def peak_megabytes(args, nodes):
    """The rise of the peak resident set during one `ppgen.draw(g)` and savefig, in MB, measured
    in a fresh process once the model, its graph and matplotlib are loaded (Linux only), and
    that process's peak."""
    code = (
        "import sys; sys.argv = sys.argv[:1]; import graph as b, ppgen, pyro; "
        f"pyro.set_rng_seed({args.seed}); "
        f"g = ppgen.graph(b.random_dag({nodes}, {args.max_parents}, {args.seed})); "
        "before = b._status('VmRSS'); "
        f"b.time_draw(None, g, b.Path({str(args.out)!r}), None); "
        "print(b._status('VmHWM') - before, b._status('VmHWM'))"
    )
    if not Path("/proc/self/status").exists():
        return float("nan"), float("nan")
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)  # fmt: skip
    rise, peak = map(float, done.stdout.split()[-2:])
    return rise, peak


def measure(nodes, args):
    pyro.set_rng_seed(args.seed)
    model = random_dag(nodes, args.max_parents, args.seed)
    g = ppgen.graph(model)
    print(f"\nmodel: {len(model.nodes)} nodes, {len(model.edges)} edges")
    print(f"load average before timing: {os.getloadavg()}")
    rise, peak = peak_megabytes(args, nodes)
    print(f"memory of one draw(g) + savefig: {rise:.0f} MB more at its peak (process: {peak:.0f} MB)")
    time_draw(model, g, args.out, args.timeout)  # warm: imports, fonts
    jobs = {"ppgen.graph": time_graph, "ppgen.draw(g)+png": time_draw,
            "ppgen.draw(model)+png": time_draw_model}  # fmt: skip
    if shutil.which("dot"):
        jobs["dot -Tpng"] = time_dot
    if has_graphviz():
        jobs["pyro.render_model+png"] = time_render
    else:
        print("graphviz (the Python package or dot) not installed: render_model not measured")
    seconds = {name: [] for name in jobs}
    cpu = {name: [] for name in jobs}
    for r in range(args.repeats):
        names = list(jobs) if r % 2 == 0 else list(jobs)[::-1]
        for name in names:
            if math.inf not in seconds[name]:  # a run past the timeout is not repeated
                before = cpu_seconds()
                seconds[name].append(jobs[name](model, g, args.out, args.timeout))
                cpu[name].append(cpu_seconds() - before)
    print(f"{'operation':>22} {'median s':>9} {'min s':>7} {'x draw(g)':>10} {'CPU s':>7}")
    base = statistics.median(seconds["ppgen.draw(g)+png"])
    for name, values in seconds.items():
        med = statistics.median(values)
        used = "" if math.inf in values else f"{statistics.median(cpu[name]):>7.3f}"
        print(f"{name:>22} {med:>9.3f} {min(values):>7.3f} {med / base:>10.2f} {used}")

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--max-parents", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for one dot run")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ppgen-graph"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"flags: {vars(args)}  threads: {torch.get_num_threads()}")
    for nodes in args.nodes:
        measure(nodes, args)
    print(f"pictures in {args.out}; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
