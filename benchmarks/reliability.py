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
  never loaded);
- trust classes (issue 17): the tests of `tests/test_trust.py`, tallied by the class their name
  starts with: `silent` (a wrong number without a word), `code` (code run from a received file
  or folder), `files` (files lost or overwritten), `resources` (memory the input does not
  justify), `messages` (one sentence instead of a traceback); the property test counts in
  `silent`;
- a crafted file: a 1 KB model file whose arguments ask for a 3.2 GB layer is loaded in a child
  process; it must be refused, and the child's peak memory grow by less than the file allows.

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


def _outcomes(tests: str) -> list[tuple[str, set[str]]]:
    """Runs a test file in a fresh pytest; returns each test's name and outcome tags."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}", tests],
            cwd=ROOT, check=False, capture_output=True,
        )  # fmt: skip
        cases = ElementTree.parse(report).getroot().iter("testcase")
        return [(case.get("name"), {child.tag for child in case}) for case in cases]


def _tally(outcomes: list[set[str]]) -> tuple[int, int]:
    """(passed, run), skipped ones left out."""
    run = [o for o in outcomes if "skipped" not in o]
    return sum(not (o & {"failure", "error"}) for o in run), len(run)


def catalogue() -> tuple[int, int]:
    """The tests of tests/test_errors.py: (passed, run)."""
    return _tally([o for _, o in _outcomes("tests/test_errors.py")])


TRUST = ("silent", "code", "files", "resources", "messages")


def trust() -> dict[str, tuple[int, int]]:
    """The tests of tests/test_trust.py by class: {class: (passed, run)}."""
    outcomes = _outcomes("tests/test_trust.py")
    return {c: _tally([o for name, o in outcomes if name.startswith(f"test_{c}_")]) for c in TRUST}


CRAFTED = f"""
import resource, sys, tempfile, pathlib
sys.path.insert(0, {str(ROOT / "tests")!r})
import ppgen
from test_io import _forge
path = ppgen.save(ppgen.dag([("a", "b")], hidden=(3,)), pathlib.Path(tempfile.mkdtemp()) / "m.st")
args = ppgen.io.describe(path)["args"]
_forge(path, {{"args": [*args[:4], {{"__tuple__": [20000, 20000]}}]}})  # a 3.2 GB layer asked
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ppgen.load(path)
    refused = False
except ppgen.io.LoadError:
    refused = True
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(int(refused), grown * 1024, path.stat().st_size)
"""


def crafted() -> tuple[bool, int, int]:
    """Loads a crafted file in a child process: (refused, bytes its peak memory grew, file size)."""
    run = subprocess.run([sys.executable, "-c", CRAFTED], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=600)  # fmt: skip
    refused, grown, size = map(int, run.stdout.split())
    return bool(refused), grown, size


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
    classes = trust()
    refused, grown, size = crafted()
    print(f"catalogue entries passing:               {passed}/{entries}")
    print(f"hypothesis examples run, all properties: {held}/{run}")
    print(f"kill points tried, resumed identically:  {identical}/{tried}")
    print(f"mutated files rejected with LoadError:   {rejected}/{mutated} ({crashed} crashes)")
    for name, (ok, ran) in classes.items():
        print(f"trust class {name + ':':<10}                  {ok}/{ran}")
    print(f"trust classes, all:                      {sum(v[0] for v in classes.values())}/"
          f"{sum(v[1] for v in classes.values())}")  # fmt: skip
    print(f"crafted {size}-byte file asking 3.2 GB:   {'refused' if refused else 'LOADED'}, "
          f"peak memory +{grown / 2**20:.1f} MiB")  # fmt: skip
    print(f"seconds: {time.perf_counter() - tic:.0f}")


if __name__ == "__main__":
    main()
