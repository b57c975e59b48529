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
    original = ppgen.density.ExactLogLikelihood.totals

    def interrupted(self, batch, *sites):
        calls["n"] += 1
        if calls["n"] == 9:  # a step's terms, 4 batches an epoch: the first batch of epoch 3
            raise KeyboardInterrupt
        return original(self, batch, *sites)

    monkeypatch.setattr(ppgen.density.ExactLogLikelihood, "totals", interrupted)
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


def _gan_fit(epochs: int, **options):
    from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator

    pyro.set_rng_seed(0)
    x, val = torch.randn(40, 2) * 0.5 + 1.0, torch.randn(12, 2) * 0.5 + 1.0
    gan = GAN(MLPGenerator(2, 2, hidden_features=(8,)), MLPDiscriminator(2, hidden_features=(8,)), 2)
    pyro.set_rng_seed(1)
    fit = ppgen.fit_gan(gan, x, epochs=epochs, batch_size=16, lr_g=1e-2, lr_d=1e-2, r1=0.5,
                        average=0.9, val=val, val_samples=16, progress=False, **options)  # fmt: skip
    return gan, fit


def _without_seconds(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_killed_gan_fit_resumes_to_the_uninterrupted_fit(tmp_path, monkeypatch):
    """Both players, both optimisers, the average and the epoch kept on val come back."""
    from ppgen.adversarial import AdversarialStep

    expected, full = _gan_fit(6)
    original = AdversarialStep.step

    def killed(self, batch, rows, epoch, frozen):
        if epoch == 4:
            raise RuntimeError("killed")
        return original(self, batch, rows, epoch, frozen)

    monkeypatch.setattr(AdversarialStep, "step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        _gan_fit(6, checkpoint=tmp_path, resume=True)
    monkeypatch.setattr(AdversarialStep, "step", original)
    resumed, fit = _gan_fit(6, checkpoint=tmp_path, resume=True)
    assert _equal(expected, resumed)
    assert _without_seconds(fit.history) == _without_seconds(full.history)
    assert fit.best_epoch == full.best_epoch


def test_a_gan_checkpoint_is_refused_by_another_fit(tmp_path):
    _gan_fit(2, checkpoint=tmp_path)
    with pytest.raises(LoadError, match="holds the checkpoint of another model or fit"):
        _, _ = _fit(50, 3, checkpoint=tmp_path, resume=True)


def test_resume_is_refused_onto_other_data_another_graph_or_other_settings(tmp_path):
    model, data = _setup(60)
    ppgen.fit_mle(model, data, epochs=2, batch_size=16, checkpoint=tmp_path, progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = {k: v.flip(0) for k, v in data.items()}  # the same rows in another order
    with pytest.raises(LoadError, match="another model or fit: its data differ"):
        ppgen.fit_mle(model, other, epochs=4, batch_size=16, checkpoint=tmp_path, resume=True,
                      progress=False)  # fmt: skip
    with pytest.raises(LoadError, match="its settings differ"):
        ppgen.fit_mle(model, data, epochs=4, batch_size=8, checkpoint=tmp_path, resume=True,
                      progress=False)  # fmt: skip
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # b -> a resumed from a -> b: the parameters have the same shapes, the graph differs
    rows = {"a": torch.randn(40), "b": torch.randn(40)}
    forward = ppgen.dag([("a", "b")], kinds={"a": "normal", "b": "normal"}, hidden=(4,))
    ppgen.fit_mle(forward, rows, epochs=1, checkpoint=tmp_path / "ab", progress=False)
    backward = ppgen.dag([("b", "a")], kinds={"a": "normal", "b": "normal"}, hidden=(4,))
    with pytest.raises(LoadError, match="its structure differ"):
        ppgen.fit_mle(backward, rows, epochs=2, checkpoint=tmp_path / "ab", resume=True,
                      progress=False)  # fmt: skip


def test_two_fits_cannot_share_a_checkpoint_folder(tmp_path):
    model, data = _setup(40)
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / ".ppgen.lock"
    lock.write_text("1")  # process 1 is alive: another fit writes here
    with pytest.raises(ValueError, match="is in use by another fit \\(process 1\\)"):
        ppgen.fit_mle(model, data, epochs=1, checkpoint=tmp_path, progress=False)
    lock.write_text(str(2**22 + 12345))  # no such process: a lock left by a dead fit
    ppgen.fit_mle(model, data, epochs=1, checkpoint=tmp_path, progress=False)
    assert not lock.exists()  # released at the end of the fit


def test_a_non_finite_loss_leaves_the_parameters_of_the_last_epoch(monkeypatch):
    """The second batch of epoch 2 turns NaN, after a finite step in that epoch: the model
    is left as after epoch 1, as the message says."""
    model, data = _setup(64)
    pyro.set_rng_seed(2)
    reference, _ = _setup(64)
    pyro.set_rng_seed(2)
    ppgen.fit_mle(reference, data, epochs=1, batch_size=16, lr=1e-2, progress=False)
    totals, epoch_of = ppgen.density.ExactLogLikelihood.totals, ppgen.loop._epoch
    steps = {"epoch": 0, "calls": 0}

    def epoch(step, data, val, number, *args):
        steps["epoch"], steps["calls"] = number, 0
        return epoch_of(step, data, val, number, *args)

    def blow_up(self, batch, sites=None):
        names, sums = totals(self, batch, sites)
        if torch.is_grad_enabled() and steps["epoch"] == 2:
            steps["calls"] += 1
            if steps["calls"] == 2:
                sums = sums * float("nan")
        return names, sums

    monkeypatch.setattr(ppgen.loop, "_epoch", epoch)
    monkeypatch.setattr(ppgen.density.ExactLogLikelihood, "totals", blow_up)
    pyro.set_rng_seed(2)
    with pytest.raises(ValueError, match="became non-finite at epoch 2; the model keeps the "
                       "parameters of the last epoch that ended"):  # fmt: skip
        ppgen.fit_mle(model, data, epochs=3, batch_size=16, lr=1e-2, progress=False)
    assert _equal(model, reference)


def test_a_checkpoint_missing_a_field_is_refused_and_changes_nothing(tmp_path, monkeypatch):
    from ppgen import io

    write = io.save_checkpoint

    def without_best(path, tensors, description):
        description["state"].pop("best")
        write(path, tensors, description)

    monkeypatch.setattr(ppgen.loop, "save_checkpoint", without_best)
    _fit(50, 2, checkpoint=tmp_path)
    monkeypatch.setattr(ppgen.loop, "save_checkpoint", write)
    model, data = _setup(50)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LoadError, match="holds the checkpoint of another model or fit"):
        ppgen.fit_mle(model, data, epochs=3, batch_size=16, lr=1e-2, checkpoint=tmp_path,
                      resume=True, progress=False)  # fmt: skip
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
