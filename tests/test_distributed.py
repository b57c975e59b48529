"""Fits on two processes (gloo, loopback) equal fits in one process with the same global batch."""

import socket
import subprocess
import sys

import pyro
import pytest
import torch
import torch.distributed

import ppgen
from ppgen.elbo import ELBOObjective
from ppgen.models import VAE

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is unavailable"
)

WORLD, BATCH = 2, 16  # per process: the global batch is 32
NEURAL = dict(edges=[("a", "b"), ("b", "c"), ("a", "c")], kinds={"a": "bernoulli",
              "c": "categorical"}, cardinalities={"c": 3}, hidden=(6,))  # fmt: skip
CLOSED = dict(edges=[("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")],
              kinds={"a": "tabular", "b": "tabular", "c": "tabular", "d": "linear_gaussian"},
              cardinalities={"a": 2, "b": 3, "c": 3})  # fmt: skip

# One rank of the two: three fits under one gloo process group, their parameters saved by the
# test's own code (the checkpoint folder is per rank, to see which rank wrote one).
CHILD = """
import sys, torch, pyro, ppgen
import torch.distributed as dist
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank,
                        world_size={world})
sys.path.insert(0, {tests!r})
from test_distributed import _neural, _closed, _vae
results = {{}}
model, fit = _neural(batch_size={batch}, checkpoint=f"{{out}}/checkpoint{{rank}}")
results["neural"], results["history"] = model.state_dict(), fit.history
results["closed"] = _closed()[0].state_dict()
results["vae"] = _vae(batch_size={batch}, seed=10 + rank).state_dict()  # its own codes
torch.save(results, f"{{out}}/rank{{rank}}.pt")
dist.destroy_process_group()
"""


def _data(spec: dict, rows: int) -> dict:
    pyro.set_rng_seed(1)
    return ppgen.sample(ppgen.dag(**spec), rows)


def _neural(**options):
    data = _data(NEURAL, 256)
    pyro.set_rng_seed(0)
    model = ppgen.dag(**NEURAL)
    pyro.set_rng_seed(2)
    val = {k: v[:64] for k, v in data.items()}
    fit = ppgen.fit_mle(model, data, epochs=3, lr=1e-2, val=val, progress=False, **options)
    return model, fit


def _closed():
    data = _data(CLOSED, 101)  # shards of 51 and 50 rows
    pyro.set_rng_seed(0)
    model = ppgen.dag(**CLOSED)
    return model, ppgen.fit_mle(model, data, progress=False)


def _vae_setup():
    pyro.set_rng_seed(3)
    x = torch.bernoulli(torch.full((2 * BATCH, 8), 0.3))
    pyro.set_rng_seed(0)
    return VAE(8, 2, hidden=(8,)), x


def _vae(batch_size: int, seed: int) -> VAE:
    vae, x = _vae_setup()
    pyro.set_rng_seed(seed)
    ppgen.fit_svi(vae, vae.guide, x, epochs=1, batch_size=batch_size, lr=1e-2, progress=False)
    return vae


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The results of each of the two ranks, and their output folder."""
    out = tmp_path_factory.mktemp("distributed")
    code = CHILD.format(world=WORLD, batch=BATCH, tests=str(__import__("pathlib").Path(
        __file__).parent))  # fmt: skip
    port = str(_free_port())
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(rank), port, str(out)])
        for rank in range(WORLD)
    ]
    for child in children:
        assert child.wait(timeout=120) == 0
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], out


def _close(a: dict, b: dict, **tolerance) -> bool:
    return list(a) == list(b) and all(torch.allclose(a[k], b[k], **tolerance) for k in a)


def test_neural_mle_matches_one_process_with_the_global_batch(ranks):
    results, _ = ranks
    model, fit = _neural(batch_size=WORLD * BATCH)
    assert _close(results[0]["neural"], model.state_dict(), rtol=1e-9, atol=1e-10)
    assert _close(results[1]["neural"], results[0]["neural"], rtol=0, atol=0)  # in sync
    for mine, theirs in zip(results[0]["history"], fit.history, strict=True):
        assert mine["train"] == pytest.approx(theirs["train"], rel=1e-9)
        assert mine["val"] == pytest.approx(theirs["val"], rel=1e-9)


def test_closed_form_fit_is_exact(ranks):
    results, _ = ranks
    model, fit = _closed()
    assert fit.closed_form == ["a", "b", "c", "d"]
    expected = model.state_dict()
    for name, value in results[0]["closed"].items():
        if name.startswith("conditionals.3."):  # d, by least squares: the normal equations
            assert torch.allclose(value, expected[name], rtol=1e-9, atol=1e-10), name
        else:  # counts summed over the ranks: the very same tables
            assert torch.equal(value, expected[name]), name


def test_vae_step_averages_the_ranks_gradients(ranks):
    """One step on two ranks is one Adam step on the mean ELBO of the global batch, each
    rank's rows with its own draws of the codes."""
    results, _ = ranks
    vae, x = _vae_setup()
    objective = ELBOObjective(vae, vae.guide, "trace", 1, ["*data"], True, (), {})
    objective.prepare({"*data": x[:BATCH]})
    pyro.set_rng_seed(10)
    order = torch.randperm(len(x))  # rank 0's permutation, broadcast to the other
    loss = 0.0
    for rank in range(WORLD):
        pyro.set_rng_seed(10 + rank)
        torch.randperm(len(x))  # each rank draws its own permutation first
        elbo = objective({"*data": x[order[rank::WORLD]]})["elbo"]
        loss = loss - elbo / len(x)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    loss.backward()
    optimizer.step()
    assert _close(results[0]["vae"], vae.state_dict(), rtol=1e-9, atol=1e-10)
    assert _close(results[1]["vae"], results[0]["vae"], rtol=0, atol=0)


def test_rank_zero_alone_writes_checkpoints(ranks):
    _, out = ranks
    assert (out / "checkpoint0" / "checkpoint.safetensors").exists()
    assert not (out / "checkpoint1").exists()
