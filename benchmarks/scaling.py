"""How the cost of `ppgen.fit_mle` grows with rows, with nodes, and with processes.

Models are `ppgen.dag` graphs whose node `i` has up to two parents drawn among the five nodes
before it (in-degree bounded, so that the work per row is linear in the nodes). "neural":
Normal nodes (`Conditional`, one hidden layer of 16; roots in closed form), trained one epoch by
Adam with 1024 rows a step; "tabular": 3-valued tables, solved in closed form (the whole fit is
one counting pass, reported as its epoch). Data are drawn from the model itself.

- rows: 10 nodes, 10k → 1M rows; nodes: 10k rows, 10 → 500 nodes. Each point is fitted in a
  forked child process: the time of the epoch (`fit.history[0]["seconds"]`, the optimisation
  alone) or of the whole closed-form fit (checks and structure included), and the peak RSS the
  fit adds over the child's RSS at its start (after `malloc_trim`; RSS polled every 2 ms from
  `/proc/self/statm`, so a peak shorter than that can be missed). The slope is the
  least-squares slope of log time on log size, over all points and between neighbours; the
  memory's growth is the peak's increase per added row or node, from the first to the last.
- vae: the throughput (rows a second, warm epochs) of `fit_svi` on `ppgen.models.VAE`
  (z = 8, one hidden layer of 256, batches of 128) on the 1500 training digits.
- processes: a neural epoch (10 nodes, 100k rows, global batch 1024) in one process and under
  `torchrun --nproc_per_node 2` (gloo on the loopback, 512 rows a process), alternating.

Times are medians over `--repeats`. One thread a process.

Run: python benchmarks/scaling.py [--rows 10000 ... --nodes 10 ... --repeats 2]

Measured with the defaults (572 s in all) on the shared 2-core machine, load average 7-11
from other jobs (figures ±40 %; docs/scaling.md has the tables and their reading):

    neural  rows 10k→1M (10 nodes):   0.505 → 57.4 s/epoch, slope 1.04; peak +10 B/row
    tabular rows 10k→1M (10 nodes):   0.098 → 1.17 s/fit, slope 0.52 (1.01 from 300k: a fixed
                                      ~0.1 s of checks and tracing dominates below); +52 B/row
    neural  nodes 10→500 (10k rows):  0.453 → 24.5 s/epoch, slope 1.05; +275 KB/node
            after issue 22 (same-shaped conditionals together; `--kinds neural --rows 10000
            --processes-rows 0`, load 2-4, two runs each, alternating with main's):
            before 0.053-0.065 → 4.16-4.42 s/epoch, slope 1.08-1.11; after 0.042-0.060 →
            1.60-1.99 s/epoch, slope 0.92-0.95 (0.38-0.47x the time from 100 nodes on)
    tabular nodes 10→500 (10k rows):  0.090 → 0.947 s/fit, slope 0.62 (the same fixed cost)
    vae     1500 digits, cpu:         0.205 s/epoch, 7,321 rows/s (run on its own)
    neural  100k rows, 1 vs 2 processes: 3.65 vs 6.15 s/epoch, 0.59x (min 0.48x, max 0.69x):
                                      no speed-up on 2 cores shared with other jobs

CUDA (one H200, each figure beside one CPU thread of the same host in the same call; the
table and its reading are in docs/scaling.md): a neural epoch of 1M rows is 0.61x the CPU's
speed with 1,024 rows a step, 2.2x with 16,384 and 16x with 131,072 (`--batch-size`); the VAE
0.57x at 128 rows a step, 2.4x at 16,384 (`--vae-batch-size`). Small steps are launch-bound on
a GPU. `--device cuda --stream` keeps the rows in pinned host memory (as for data larger than
the GPU): 8.59 against 8.51 s/epoch resident.
"""

import argparse
import ctypes
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

import torch

torch.set_num_threads(1)

import numpy as np  # noqa: E402
import pyro  # noqa: E402

import ppgen  # noqa: E402

HIDDEN = (16,)


def build(nodes: int, kind: str, seed: int = 0) -> ppgen.builder.DAG:
    """A DAG whose node i has up to two parents among the five nodes before it."""
    rng = random.Random(seed)
    names = [f"x{i}" for i in range(nodes)]
    edges = [(names[p], names[i]) for i in range(1, nodes)
             for p in rng.sample(range(max(0, i - 5), i), min(i, 2))]  # fmt: skip
    return ppgen.dag(edges, hidden=HIDDEN, default="normal" if kind == "neural" else "tabular",
                     cardinalities={} if kind == "neural" else dict.fromkeys(names, 3))  # fmt: skip


def data(nodes: int, kind: str, rows: int) -> dict:
    pyro.set_rng_seed(1)
    with torch.no_grad():
        return ppgen.sample(build(nodes, kind), rows)


def fit(nodes: int, kind: str, rows: dict, device: str | None, batch: int) -> float:
    """Seconds of the fit's epoch (neural) or of the whole closed-form fit (tabular)."""
    pyro.set_rng_seed(0)
    model = build(nodes, kind)
    start = time.perf_counter()
    result = ppgen.fit_mle(model, rows, epochs=1, batch_size=batch, progress=False,
                           device=device)  # fmt: skip
    return result.history[0]["seconds"] if kind == "neural" else time.perf_counter() - start


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(queue, job):
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # pages the parent freed go back to the system
    base, peak, done = _rss(), [0], threading.Event()

    def poll():
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    poller = threading.Thread(target=poll)
    poller.start()
    seconds = job()
    done.set()
    poller.join()
    queue.put((seconds, (max(peak[0], _rss()) - base) / 2**20))


def forked(job) -> tuple[float, float]:
    """`job()`'s seconds and the peak RSS (MiB) it adds, run in a forked child process."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, job))
    process.start()
    result = queue.get()
    process.join()
    return result


def slopes(sizes: list[int], seconds: list[float]) -> tuple[float, list[float]]:
    x, y = np.log(sizes), np.log(seconds)
    return float(np.polyfit(x, y, 1)[0]), list(np.diff(y) / np.diff(x))


def sweep(
    axis: str, kind: str, points: list[int], repeats: int, device: str | None, batch: int
) -> None:
    seconds, peaks = [], []
    for size in points:
        nodes, rows = (10, size) if axis == "rows" else (size, 10_000)
        table = data(nodes, kind, rows)
        runs = [forked(lambda t=table, n=nodes: fit(n, kind, t, device, batch))
                for _ in range(repeats)]  # fmt: skip
        seconds.append(statistics.median(s for s, _ in runs))
        peaks.append(max(m for _, m in runs))
        mib = sum(v.numel() * v.element_size() for v in table.values()) / 2**20
        print(f"{kind:8s} {axis:5s} {size:>9,d}  {seconds[-1]:8.3f} s  "
              f"{seconds[-1] / rows * 1e6:7.2f} us/row  peak +{peaks[-1]:7.1f} MiB  "
              f"(data {mib:6.1f} MiB)", flush=True)  # fmt: skip
    if len(points) < 2:
        return
    overall, local = slopes(points, seconds)
    memory = (peaks[-1] - peaks[0]) * 2**20 / (points[-1] - points[0])
    print(
        f"{kind:8s} {axis:5s} slope of time {overall:.2f} (between neighbours: "
        f"{', '.join(f'{s:.2f}' for s in local)}); peak memory +{memory:,.0f} bytes per {axis[:-1]}",
        flush=True,
    )


def vae(device: str | None, batch: int, epochs: int = 3) -> None:
    """The throughput of `fit_svi` on a VAE (z = 8, hidden 256) on the digits."""
    from ppgen.datasets import digits
    from ppgen.models import VAE

    x = digits().train
    pyro.set_rng_seed(0)
    model = VAE(64, 8, hidden=(256,))
    fit = ppgen.fit_svi(model, model.guide, x, epochs=epochs, batch_size=batch, progress=False,
                        device=device)  # fmt: skip
    seconds = statistics.median(r["seconds"] for r in fit.history[1:])  # warm epochs
    print(f"vae      {len(x):,d} rows on {device or 'cpu'}, batches of {batch}: "
          f"{seconds:.3f} s/epoch, "
          f"{len(x) / seconds:,.0f} rows/s", flush=True)  # fmt: skip


def worker(rows: int, batch: int, epochs: int) -> None:
    """One process of the processes comparison (under torchrun or alone): prints its epochs."""
    table = data(10, "neural", rows)
    pyro.set_rng_seed(0)
    model = build(10, "neural")
    result = ppgen.fit_mle(model, table, epochs=epochs, batch_size=batch, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps([r["seconds"] for r in result.history]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(rows: int, repeats: int, batch: int, epochs: int = 2) -> None:
    script = os.path.abspath(__file__)
    one = [sys.executable, script, "--worker", str(rows), str(batch), str(epochs)]
    two = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
           "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script, "--worker",
           str(rows), str(batch // 2), str(epochs)]  # fmt: skip
    times = {"1 process": [], "2 processes": []}
    for r in range(repeats):
        for name in [("1 process", "2 processes"), ("2 processes", "1 process")][r % 2]:
            command = one if name == "1 process" else two
            run = subprocess.run(command, capture_output=True, text=True, check=True)
            times[name] += json.loads(run.stdout.strip().splitlines()[-1])[1:]  # warm epochs
    ratios = [a / b for a, b in zip(times["1 process"], times["2 processes"], strict=True)]
    for name, values in times.items():
        print(f"neural   {rows:,d} rows, {name:11s}: {statistics.median(values):.3f} s/epoch "
              f"(min {min(values):.3f})")  # fmt: skip
    print(
        f"speed-up of 2 processes: median {statistics.median(ratios):.2f}x, "
        f"min {min(ratios):.2f}x, max {max(ratios):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=int,
                        default=[10_000, 30_000, 100_000, 300_000, 1_000_000])  # fmt: skip
    parser.add_argument("--nodes", nargs="+", type=int, default=[10, 30, 100, 300, 500])
    parser.add_argument("--kinds", nargs="+", default=["neural", "tabular"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes-rows", type=int, default=100_000)
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows a step, neural")
    parser.add_argument("--vae-batch-size", type=int, default=128)
    parser.add_argument("--stream", action="store_true",
                        help="keep the rows in host memory and copy each batch to --device, as "
                        "for data larger than the GPU")  # fmt: skip
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.stream:  # the forked fits inherit it
        ppgen.data.fits = lambda nbytes, device: False
    start = time.perf_counter()
    for kind in args.kinds:
        sweep("rows", kind, args.rows, args.repeats, args.device, args.batch_size)
    for kind in args.kinds:
        sweep("nodes", kind, args.nodes, args.repeats, args.device, args.batch_size)
    vae(args.device, args.vae_batch_size)
    if args.device in (None, "cpu") and args.processes_rows:
        processes(args.processes_rows, args.repeats, args.batch_size)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
