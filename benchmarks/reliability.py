"""Reliability counts: the bad-input catalogue, property examples, kill-and-resume, fuzzed files.

Four counts, each with its target of "all, nothing lost":

- catalogue: the tests of `tests/test_errors.py` (one per entry of docs/errors.md: the message,
  and parameters and files unchanged) that pass, out of those run (CUDA-only ones skipped);
- properties: hypothesis examples of random DAGs (up to 30 nodes, mixed kinds) run, and those
  where `graph` equals the declared edges, `log_prob` equals the sum of per-node terms, samples
  lie in the supports, and save -> load gives bit-identical parameters and `log_prob`;
- kill points: a child process fits a DAG with `checkpoint=DIR` and is killed with SIGKILL at a
  random moment (before or after checkpoints); the fit is resumed here and compared, parameter
  by parameter (`torch.equal`), with an uninterrupted fit from the same seed;
- mutated files: a saved model truncated, bit-flipped, overwritten with noise or given a wrong
  header length; each must be rejected by `ppgen.io.LoadError` (never another exception,
  never loaded).

Run: python benchmarks/reliability.py [--examples 100 --kills 5 --mutations 1000]
"""

import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from xml.etree import ElementTree

import torch

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

import pyro  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ppgen  # noqa: E402
from ppgen.io import LoadError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_properties import dags  # noqa: E402

EDGES = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")]
KINDS = {"a": "bernoulli", "c": "categorical", "d": "linear_gaussian"}
CARDS = {"c": 3}
ROWS, EPOCHS = 300, 30
CHILD = f"""
import sys, torch, pyro, ppgen
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from reliability import fit
fit(sys.argv[1])
"""


def setup() -> tuple[ppgen.builder.DAG, dict]:
    pyro.set_rng_seed(1)
    data = ppgen.sample(ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS, hidden=(6,)), ROWS)
    pyro.set_rng_seed(0)
    return ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS, hidden=(6,)), data


def fit(checkpoint: str | None = None) -> ppgen.builder.DAG:
    model, data = setup()
    pyro.set_rng_seed(2)
    ppgen.fit_mle(
        model, data, epochs=EPOCHS, batch_size=16, lr=1e-2, progress=False,
        checkpoint=checkpoint, resume=checkpoint is not None,
    )  # fmt: skip
    return model


def catalogue() -> tuple[int, int]:
    """Runs tests/test_errors.py in a fresh pytest; returns (passed, run), skipped ones left out."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", "tests/test_errors.py"],
            cwd=ROOT, check=False, capture_output=True,
        )  # fmt: skip
        cases = ElementTree.parse(report).getroot().iter("testcase")
        outcomes = [{child.tag for child in case} for case in cases]
    run = [o for o in outcomes if "skipped" not in o]
    return sum(not (o & {"failure", "error"}) for o in run), len(run)


def properties(examples: int) -> tuple[int, int]:
    counts = {"run": 0, "held": 0}

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    @given(dags(), st.integers(1, 20))
    def check(spec: tuple, rows: int) -> None:
        counts["run"] += 1
        g, kinds, cardinalities = spec
        pyro.set_rng_seed(0)
        model = ppgen.dag(g, kinds=kinds, cardinalities=cardinalities, hidden=(3,))
        data = ppgen.sample(model, rows)
        ok = set(ppgen.graph(model).edges) == set(g.edges)
        terms = [
            c(*(data[p] for p in model.parents[v])).log_prob(data[v])
            for v, c in zip(model.nodes, model.conditionals, strict=True)
        ]
        total = ppgen.log_prob(model, data)
        ok &= bool(torch.allclose(total, sum(terms), rtol=0, atol=1e-10))
        for v, c in zip(model.nodes, model.conditionals, strict=True):
            ok &= bool(c(*(data[p] for p in model.parents[v])).support.check(data[v]).all())
        with tempfile.TemporaryDirectory() as folder:
            loaded = ppgen.io.load(ppgen.io.save(model, Path(folder) / "m.safetensors"))
        ok &= all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
        )
        ok &= bool(torch.equal(ppgen.log_prob(loaded, data), total))
        counts["held"] += ok

    check()
    return counts["held"], counts["run"]


def kills(tries: int, seed: int) -> tuple[int, int]:
    reference = fit()
    rng = random.Random(seed)
    identical = 0
    for _ in range(tries):
        with tempfile.TemporaryDirectory() as folder:
            child = subprocess.Popen([sys.executable, "-c", CHILD, folder])
            file = Path(folder) / "checkpoint.safetensors"
            deadline = time.monotonic() + 120
            while not file.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the fit, mid-epoch or mid-write
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            resumed = fit(folder)
            identical += all(
                torch.equal(a, b)
                for a, b in zip(
                    resumed.state_dict().values(), reference.state_dict().values(), strict=True
                )
            )
    return identical, tries


def mutations(count: int, seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        model = ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS, hidden=(6,))
        good = ppgen.io.save(model, path).read_bytes()
        rejected = crashed = 0
        for trial in range(count):
            content = bytearray(good)
            kind = trial % 5
            if kind == 0:
                content = content[: rng.randrange(len(good))]
            elif kind == 1:
                for _ in range(rng.randint(1, 4)):
                    content[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
            elif kind == 2:
                i = rng.randrange(8, len(good) - 16)
                content[i : i + 16] = bytes(rng.randrange(256) for _ in range(16))
            elif kind == 3:
                content[:8] = struct.pack("<Q", rng.randrange(2**20))
            else:
                content = bytearray(rng.randbytes(rng.randrange(1, 4096)))
            path.write_bytes(bytes(content))
            try:
                ppgen.io.load(path)
            except LoadError:
                rejected += 1
            except Exception:  # noqa: BLE001 - anything else is a crash, counted
                crashed += 1
    return rejected, count, crashed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--mutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tic = time.perf_counter()
    passed, entries = catalogue()
    held, run = properties(args.examples)
    identical, tried = kills(args.kills, args.seed)
    rejected, mutated, crashed = mutations(args.mutations, args.seed)
    print(f"catalogue entries passing:               {passed}/{entries}")
    print(f"hypothesis examples run, all properties: {held}/{run}")
    print(f"kill points tried, resumed identically:  {identical}/{tried}")
    print(f"mutated files rejected with LoadError:   {rejected}/{mutated} ({crashed} crashes)")
    print(f"seconds: {time.perf_counter() - tic:.0f}")


if __name__ == "__main__":
    main()
