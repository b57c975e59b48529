"""The quality benchmarks choose on the validation digits alone: the test digits are scored once."""

import dataclasses
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from ppgen.datasets import digits


def _benchmark(name):
    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("anchor", [False, True], ids=["ppgen", "anchor"])
def test_density_benchmark_selection_never_reads_the_test_rows(anchor):
    bench = _benchmark("density_digits")
    data = digits(val=300)
    small = dataclasses.replace(data, train=data.train[:200], val=data.val[:100])
    blind = dataclasses.replace(small, test=torch.full_like(small.test, math.nan))
    grid = [{"lr": 3e-2}, {"lr": 3.0}]  # the larger diverges: the first, not the last, is chosen
    seen = bench.select("nade", small, epochs=6, grid=grid, anchor=anchor)
    unseen = bench.select("nade", blind, epochs=6, grid=grid, anchor=anchor)
    assert unseen.curves == seen.curves  # every setting's validation NLL, epoch by epoch
    assert (unseen.options, unseen.epoch, unseen.val) == (seen.options, seen.epoch, seen.val)
    assert seen.options["lr"] == 3e-2 and all(math.isfinite(v) for c in seen.curves for v in c)
    assert seen.val == pytest.approx(bench.nll(seen.model, small.val), abs=1e-9)  # epoch kept
    assert math.isfinite(bench.nll(seen.model, small.test))  # the test rows: scored afterwards
