"""Fits on two processes (gloo, loopback) equal fits in one process with the same global batch."""

import os
import socket
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
from test_infer import Pixels
from torch.distributions import constraints

import ppgen
from ppgen.adversarial import AdversarialStep
from ppgen.elbo import ELBOObjective
from ppgen.io import describe
from ppgen.models import GAN, VAE
from ppgen.models.gan import MLPDiscriminator, MLPGenerator
from ppgen.nn import Root

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is unavailable"
)

WORLD, BATCH = 2, 16  # per process: the global batch is 32
NEURAL = dict(edges=[("a", "b"), ("b", "c"), ("a", "c")], kinds={"a": "bernoulli",
              "c": "categorical"}, cardinalities={"c": 3}, hidden=(6,))  # fmt: skip
CLOSED = dict(edges=[("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")],
              kinds={"a": "tabular", "b": "tabular", "c": "tabular", "d": "linear_gaussian"},
              cardinalities={"a": 2, "b": 3, "c": 3})  # fmt: skip

GAN_ROWS = 4 * BATCH - 1  # shares of 32 and 31 rows: two steps, the second one row short
GAN_OPTIONS = dict(r1=1.0, average=0.5)  # R1's double backward through DDP, and the EMA

# One rank of the two: the fits under one gloo process group, their parameters saved by the
# test's own code (the checkpoint folder is per rank, to see which rank wrote one). A hang
# (a rank waiting for another) ends in the group's timeout, and the test's own below.
CHILD = """
import datetime, sys, torch, pyro, ppgen
import torch.distributed as dist
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank,
                        world_size={world}, timeout=datetime.timedelta(seconds=60))
sys.path.insert(0, {tests!r})
from test_distributed import _neural, _closed, _vae, _gan, _nonfinite, _gan_nonfinite
from test_distributed import _located, _pixels
results = {{}}
results["located"] = _located(batch_size={batch})
results["pixels"] = _pixels().state_dict()
model, fit = _neural(batch_size={batch}, checkpoint=f"{{out}}/checkpoint{{rank}}")
results["neural"], results["history"] = model.state_dict(), fit.history
results["closed"] = _closed()[0].state_dict()
results["vae"] = _vae(batch_size={batch}, seed=10 + rank).state_dict()  # its own codes
gan, fit = _gan(batch_size={batch}, seed=20 + rank)
results["gan"], results["gan_history"] = gan.state_dict(), fit.history
model = ppgen.dag(**_nonfinite.spec)
try:
    _nonfinite(model, batch_size={batch})
except ValueError as error:
    results["nonfinite"], results["nonfinite_model"] = str(error), model.state_dict()
try:
    _gan_nonfinite(batch_size={batch})
except ValueError as error:
    results["gan_nonfinite"] = str(error)
torch.save(results, f"{{out}}/rank{{rank}}.pt")
dist.destroy_process_group()
"""


def _data(spec: dict, rows: int) -> dict:
    pyro.set_rng_seed(1)
    return ppgen.sample(ppgen.dag(**spec), rows)


def _neural(**options):
    data = _data(NEURAL, 255)  # shares of 128 and 127 rows
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


def _program(n=1):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("rows", n):
        pyro.sample("x", dist.Normal(loc, scale))


def _located(batch_size: int) -> dict:
    """The pyro.params of a function, fitted on 255 rows (shares of 128 and 127)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    x = 3.0 + 2.0 * torch.randn(255)
    pyro.set_rng_seed(2)
    ppgen.fit_mle(_program, {"x": x}, epochs=2, batch_size=batch_size, lr=0.05, progress=False)
    return {name: pyro.param(name).detach().clone() for name in ("loc", "scale")}


def _pixels():
    """A root shared by the 4 pixels of 101 rows, solved from the values of every rank."""
    pyro.set_rng_seed(6)
    x = 1.0 + 2.0 * torch.randn(101, 4)
    model = Pixels(Root(dist.Normal))
    ppgen.fit_mle(model, {"x": x}, progress=False)
    return model


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


def _gan_setup():
    pyro.set_rng_seed(4)
    x = torch.randn(GAN_ROWS, 2)
    pyro.set_rng_seed(0)
    gan = GAN(MLPGenerator(2, 2, hidden_features=(8,)),
              MLPDiscriminator(2, hidden_features=(8, 8)), 2)  # fmt: skip
    return gan, x


def _gan(batch_size: int, seed: int):
    gan, x = _gan_setup()
    pyro.set_rng_seed(seed)
    options = dict(lr_g=1e-2, lr_d=1e-2, progress=False, **GAN_OPTIONS)
    return gan, ppgen.fit_gan(gan, x, epochs=1, batch_size=batch_size, **options)


def _nonfinite(model, batch_size: int):
    """A fit whose row 200 makes the log-likelihood of site b non-finite (on one rank only)."""
    data = _data(NEURAL, 255)
    data["b"][200] = 99.0  # a marker that passes the data checks: b's term is NaN there
    module = model.conditionals[model.nodes.index("b")]
    log_prob = module.log_prob
    module.log_prob = lambda value, *parents: torch.where(
        value == 99.0, float("nan"), log_prob(value, *parents)
    )
    pyro.set_rng_seed(0)
    ppgen.fit_mle(model, data, epochs=2, batch_size=batch_size, progress=False)


_nonfinite.spec = NEURAL


class _Fragile(MLPDiscriminator):
    """A discriminator whose logit is NaN on rows whose first value is 99."""

    def forward(self, x):
        return torch.where(x[:, 0] == 99.0, float("nan"), super().forward(x))


def _gan_nonfinite(batch_size: int):
    gan, x = _gan_setup()
    gan.discriminator = _Fragile(2, hidden_features=(8, 8))
    x[5, 0] = 99.0
    ppgen.fit_gan(gan, x, epochs=1, batch_size=batch_size, progress=False)


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
    try:
        for child in children:
            assert child.wait(timeout=120) == 0
    finally:
        for child in children:
            child.kill()
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)], out


def _close(a: dict, b: dict, **tolerance) -> bool:
    return list(a) == list(b) and all(torch.allclose(a[k], b[k], **tolerance) for k in a)


def test_neural_mle_matches_one_process_with_the_global_batch(ranks):
    """255 rows: the shares differ by one row, and each row counts once, as in one process."""
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


def test_pyro_params_match_one_process_with_the_global_batch(ranks):
    results, _ = ranks
    expected = _located(batch_size=WORLD * BATCH)
    pyro.clear_param_store()
    assert _close(results[0]["located"], expected, rtol=1e-9, atol=1e-10)
    assert _close(results[1]["located"], results[0]["located"], rtol=0, atol=0)


def test_root_in_nested_plates_is_solved_on_the_values_of_every_rank(ranks):
    results, _ = ranks
    assert _close(results[0]["pixels"], _pixels().state_dict(), rtol=1e-12, atol=1e-12)
    assert _close(results[1]["pixels"], results[0]["pixels"], rtol=0, atol=0)


def test_vae_step_averages_the_ranks_gradients(ranks):
    """One step on two ranks is one Adam step on the mean ELBO of the global batch, each
    rank's rows with its own draws of the codes."""
    results, _ = ranks
    vae, x = _vae_setup()
    objective = ELBOObjective(vae, vae.guide, "trace", 1, ["*data"], True, (x,), {})
    objective.prepare({"*data": x[:BATCH]})
    pyro.set_rng_seed(10)
    order = torch.randperm(len(x))  # rank 0's permutation, broadcast to the other
    loss = 0.0
    for rank in range(WORLD):
        pyro.set_rng_seed(10 + rank)
        torch.randperm(len(x))  # each rank draws its own permutation first
        elbo = objective({"*data": x[order[rank::WORLD]]})["elbo"]
        loss = loss - elbo / len(x)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2, eps=1e-8 / len(x))  # SVI's, on the sum
    loss.backward()
    optimizer.step()
    assert _close(results[0]["vae"], vae.state_dict(), rtol=1e-9, atol=1e-10)
    assert _close(results[1]["vae"], results[0]["vae"], rtol=0, atol=0)


def test_rank_zero_alone_writes_checkpoints(ranks):
    _, out = ranks
    assert (out / "checkpoint0" / "checkpoint.safetensors").exists()
    assert not (out / "checkpoint1").exists()


def test_gan_matches_one_process_with_the_global_batch(ranks):
    """Both players' steps on two ranks are those of one process on the global batch, each
    rank's rows with its own codes; the reported terms are the means over the 63 rows."""
    results, _ = ranks
    gan, x = _gan_setup()
    objective = AdversarialStep(gan, lr_g=1e-2, lr_d=1e-2, **GAN_OPTIONS)
    states, drawn = [], []
    for rank in range(WORLD):
        pyro.set_rng_seed(20 + rank)
        drawn.append(torch.randperm(len(x)))  # each rank draws its own; rank 0's is broadcast
        states.append(torch.get_rng_state())
    order = drawn[0]

    def each_rank(loss, inputs):  # each rank's loss, on its own random stream
        total, outputs = 0.0, []
        for rank, arguments in enumerate(inputs):
            torch.set_rng_state(states[rank])
            value, extra = loss(*arguments)
            states[rank] = torch.get_rng_state()
            total, outputs = total + value, [*outputs, extra]
        return total, outputs

    sums = dict.fromkeys(["loss_d", "loss_g", "accuracy", "d_real", "d_fake"], 0.0)
    for start in range(0, -(-GAN_ROWS // WORLD), BATCH):
        batches = [x[order[rank::WORLD][start : start + BATCH]] for rank in range(WORLD)]
        rows = sum(len(b) for b in batches)
        loss_d, out_d = each_rank(objective._discriminator_loss, [(b, rows) for b in batches])
        objective.optimizer_d.zero_grad()
        loss_d.backward()
        objective.optimizer_d.step()
        loss_g, out_g = each_rank(objective._generator_loss, [(len(b), rows) for b in batches])
        objective.optimizer_g.zero_grad()
        loss_g.backward()
        objective.optimizer_g.step()
        objective.averaged.update_parameters(gan.generator)
        for (terms_d, real), (terms_g, fake) in zip(out_d, out_g, strict=True):
            sums["loss_d"] += terms_d.sum()
            sums["loss_g"] += terms_g.sum()
            sums["accuracy"] += (((real > 0).double() + (fake < 0).double()) / 2).sum()
            sums["d_real"] += real.sigmoid().sum()
            sums["d_fake"] += fake.sigmoid().sum()
    gan.generator.load_state_dict(objective.averaged.module.state_dict())  # what fit_gan keeps
    assert _close(results[0]["gan"], gan.state_dict(), rtol=1e-9, atol=1e-10)
    assert _close(results[1]["gan"], results[0]["gan"], rtol=0, atol=0)
    for name, total in sums.items():
        assert results[0]["gan_history"][0][f"train/{name}"] == pytest.approx(
            float(total) / GAN_ROWS, rel=1e-9
        )


def test_nonfinite_loss_on_one_rank_stops_every_rank_with_its_error(ranks):
    """The bad row is in one rank's share; both ranks raise one process's error (the other
    learns of it from DDP's gradient all-reduce) and keep the same last finite parameters.
    A rank left waiting would fail the fixture's timeouts instead of blocking."""
    results, _ = ranks
    model = ppgen.dag(**NEURAL)
    with pytest.raises(ValueError) as error:
        _nonfinite(model, batch_size=WORLD * BATCH)
    assert "site 'b' became non-finite at epoch 1" in str(error.value)
    assert results[0]["nonfinite"] == results[1]["nonfinite"] == str(error.value)
    assert _close(results[1]["nonfinite_model"], results[0]["nonfinite_model"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="discriminator's loss became non-finite") as error:
        _gan_nonfinite(batch_size=WORLD * BATCH)
    assert results[0]["gan_nonfinite"] == results[1]["gan_nonfinite"] == str(error.value)


def test_cli_fit_under_torchrun_writes_once(tmp_path):
    """`ppgen fit` under torchrun (2 processes, gloo on the loopback): rank 0 alone writes."""
    from test_cli import MODEL

    (tmp_path / "chain.py").write_text(MODEL)
    (tmp_path / "rows.csv").write_text("a,b\n" + "".join(f"{i / 10},{i % 2}\n" for i in range(41)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1", "--master_port",
               str(_free_port()), "-m", "ppgen.cli", "fit", "chain.py:Chain", "--data",
               "rows.csv", "--epochs", "2", "--batch-size", "8", "--out", "out", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=180)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("wrote out") == 1  # one rank printed, and wrote
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "history.png", "model.safetensors", "source.json"]  # fmt: skip
    assert len(describe(tmp_path / "out" / "model.safetensors")["fit"]["history"]) == 2
