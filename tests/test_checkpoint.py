import os
import signal
import subprocess
import sys
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import ppgen
from ppgen.io import LoadError

EDGES = [("a", "b"), ("b", "c"), ("a", "c")]
KINDS = {"a": "bernoulli", "c": "categorical"}
CARDS = {"c": 3}

# The fit of the kill-and-resume test, run in a child process that is killed mid-fit.
CHILD = """
import sys, torch, pyro, ppgen
torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
pyro.set_rng_seed(1)
edges, kinds, cards = {edges!r}, {kinds!r}, {cards!r}
data = ppgen.sample(ppgen.dag(edges, kinds=kinds, cardinalities=cards, hidden=(6,)), {rows})
pyro.set_rng_seed(0)
model = ppgen.dag(edges, kinds=kinds, cardinalities=cards, hidden=(6,))
pyro.set_rng_seed(2)
ppgen.fit_mle(model, data, epochs={epochs}, batch_size=16, lr=1e-2, progress=False,
              checkpoint=sys.argv[1], resume=True)
"""


def _setup(rows: int) -> tuple[ppgen.builder.DAG, dict]:
    pyro.set_rng_seed(1)
    data = ppgen.sample(ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS, hidden=(6,)), rows)
    pyro.set_rng_seed(0)
    return ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS, hidden=(6,)), data


def _fit(rows: int, epochs: int, **options) -> tuple[ppgen.builder.DAG, ppgen.FitResult]:
    model, data = _setup(rows)
    pyro.set_rng_seed(2)
    fit = ppgen.fit_mle(
        model, data, epochs=epochs, batch_size=16, lr=1e-2, progress=False, **options
    )
    return model, fit


def _equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_fit_resumes_to_the_uninterrupted_parameters(tmp_path):
    rows, epochs = 200, 12
    code = CHILD.format(edges=EDGES, kinds=KINDS, cards=CARDS, rows=rows, epochs=epochs)
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    file = tmp_path / "checkpoint.safetensors"
    deadline = time.monotonic() + 60
    while not file.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-fit, not finished
    reached = ppgen.io._read(file, "checkpoint")[0]["state"]["epoch"]
    assert 1 <= reached < epochs
    resumed, fit = _fit(rows, epochs, checkpoint=tmp_path, resume=True)
    uninterrupted, reference = _fit(rows, epochs)
    assert _equal(resumed, uninterrupted)
    assert [r["train"] for r in fit.history] == [r["train"] for r in reference.history]


def test_resume_with_validation_and_patience_is_exact(tmp_path):
    model, data = _setup(300)
    val = {k: v[:100] for k, v in data.items()}
    options = dict(val=val, patience=2, batch_size=32, lr=5e-2, progress=False)
    pyro.set_rng_seed(2)
    reference = ppgen.fit_mle(model, data, epochs=12, **options)
    for stop in (3, 7):
        folder = tmp_path / str(stop)
        first, _ = _setup(300)
        pyro.set_rng_seed(2)
        ppgen.fit_mle(first, data, epochs=stop, checkpoint=folder, **options)
        second, _ = _setup(300)
        pyro.set_rng_seed(99)  # the random state comes from the checkpoint
        fit = ppgen.fit_mle(second, data, epochs=12, checkpoint=folder, resume=True, **options)
        assert _equal(second, model)
        assert fit.best_epoch == reference.best_epoch


def test_fit_svi_resume_is_exact(tmp_path):
    vae = ppgen.models.VAE(4, 2, hidden=(3,))
    x = torch.bernoulli(torch.full((64, 4), 0.3))
    options = dict(batch_size=16, progress=False)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    torch.manual_seed(0)
    ppgen.fit_svi(vae, vae.guide, x, epochs=4, **options)
    expected = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.load_state_dict(initial)
    torch.manual_seed(0)
    ppgen.fit_svi(vae, vae.guide, x, epochs=4, **options)  # same seed: same result
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in expected.items())
    vae.load_state_dict(initial)
    torch.manual_seed(0)
    ppgen.fit_svi(vae, vae.guide, x, epochs=2, checkpoint=tmp_path, **options)
    vae.load_state_dict(initial)
    torch.manual_seed(5)
    ppgen.fit_svi(vae, vae.guide, x, epochs=4, checkpoint=tmp_path, resume=True, **options)
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in expected.items())


def test_fit_svi_resume_is_exact_with_one_batch(tmp_path):
    # one batch of every row: with a checkpoint, the steps draw from the loop's saved stream
    vae = ppgen.models.VAE(4, 2, hidden=(3,))
    x = torch.bernoulli(torch.full((64, 4), 0.3))
    options = dict(batch_size=None, progress=False)
    initial = {k: v.clone() for k, v in vae.state_dict().items()}
    torch.manual_seed(0)
    ppgen.fit_svi(vae, vae.guide, x, epochs=4, checkpoint=tmp_path / "whole", **options)
    expected = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.load_state_dict(initial)
    torch.manual_seed(0)
    ppgen.fit_svi(vae, vae.guide, x, epochs=2, checkpoint=tmp_path / "part", **options)
    vae.load_state_dict(initial)
    torch.manual_seed(5)
    ppgen.fit_svi(vae, vae.guide, x, epochs=4, checkpoint=tmp_path / "part", resume=True,
                  **options)  # fmt: skip
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in expected.items())


def test_existing_checkpoint_is_kept_unless_resumed(tmp_path):
    _fit(50, 2, checkpoint=tmp_path)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    model, data = _setup(50)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="already holds a checkpoint; pass resume=True"):
        ppgen.fit_mle(model, data, epochs=2, checkpoint=tmp_path, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    _fit(50, 2, checkpoint=tmp_path)
    model = ppgen.dag([("a", "b")], hidden=(4,))  # 'a' is solved in closed form, then undone
    data = ppgen.sample(model, 20)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoadError, match="checkpoint of another model"):
        ppgen.fit_mle(model, data, epochs=2, checkpoint=tmp_path, resume=True, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_resume_without_checkpoint_starts_afresh(tmp_path):
    resumed, _ = _fit(60, 3, checkpoint=tmp_path / "new", resume=True)
    plain, _ = _fit(60, 3)
    assert _equal(resumed, plain)


def test_ctrl_c_keeps_the_last_epoch_and_warns(monkeypatch):
    calls = {"n": 0}
    original = ppgen.infer.ExactLogLikelihood.forward

    def interrupted(self, batch, *sites):
        calls["n"] += 1
        if calls["n"] == 14:  # two find the structure, one scores root a, then 4 batches an epoch
            raise KeyboardInterrupt
        return original(self, batch, *sites)

    monkeypatch.setattr(ppgen.infer.ExactLogLikelihood, "forward", interrupted)
    model, data = _setup(64)
    pyro.set_rng_seed(2)
    with pytest.warns(UserWarning, match="fit_mle interrupted at epoch 3: the model keeps"):
        fit = ppgen.fit_mle(model, data, epochs=10, batch_size=16, lr=1e-2, progress=False)
    monkeypatch.undo()
    assert fit.interrupted and len(fit.history) == 2
    reference, _ = _fit(64, 2)
    assert _equal(model, reference)


def test_resume_fits_pyro_params_exactly(tmp_path):
    """The pyro.params of a function are trained, checkpointed and resumed as a module's."""

    def located(n=1):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(loc, scale))

    pyro.set_rng_seed(1)
    data = {"x": 3.0 + 2.0 * torch.randn(64)}

    def fit(epochs: int, **options) -> list[float]:
        pyro.clear_param_store()  # each fit starts afresh: a resumed one from its checkpoint
        pyro.set_rng_seed(2)
        ppgen.fit_mle(located, data, epochs=epochs, batch_size=16, lr=0.05, progress=False,
                      **options)  # fmt: skip
        values = [pyro.param(name).item() for name in ("loc", "scale")]
        pyro.clear_param_store()
        return values

    reference = fit(6)
    fit(3, checkpoint=tmp_path)
    assert fit(6, checkpoint=tmp_path, resume=True) == reference
    assert reference[0] > 0.5  # 24 steps of 0.05 from 0 toward 3
