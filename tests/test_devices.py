"""Where data and queries run: `device=` on the queries, data kept in host memory and streamed
batch by batch when they do not fit on a GPU, and column checks a chunk of rows at a time."""

import math

import pyro
import pytest
import torch

import ppgen
from ppgen.data import fits, table
from ppgen.models.gan import MLPDiscriminator, MLPGenerator

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _model() -> ppgen.builder.DAG:
    return ppgen.dag(
        [("a", "b"), ("a", "c"), ("b", "c")],
        kinds={"a": "bernoulli", "b": "linear_gaussian", "c": "normal"},
        hidden=(8,),
    )


def _rows(n: int = 600) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.bernoulli(torch.full((n,), 0.3), generator=generator)
    b = 2 * a - 1 + 0.5 * torch.randn(n, generator=generator)
    c = torch.sin(b) * a + 0.3 * torch.randn(n, generator=generator)
    return {"a": a, "b": b, "c": c}


def test_data_may_take_half_of_a_gpus_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    assert fits(500, torch.device("cuda"))
    assert not fits(501, torch.device("cuda"))
    assert fits(10**15, torch.device("cpu"))  # host memory is the user's to manage


def test_support_is_checked_a_chunk_at_a_time_and_names_the_first_bad_row(monkeypatch):
    monkeypatch.setattr(ppgen.data, "_CHECK_ELEMENTS", 1)  # chunks of 1024 rows
    rows = _rows(5000)
    rows["a"][3100] = 2.0  # whole, but outside {0, 1}
    rows["a"][4500] = 3.0
    with pytest.raises(ValueError, match="Column 'a' has value 2.0 in row 3100, outside"):
        table(_model(), rows)


def test_queries_take_a_device():
    model, rows = _model(), _rows()
    ppgen.fit_mle(model, rows, epochs=3, progress=False)
    here = ppgen.log_prob(model, rows)
    assert torch.equal(ppgen.log_prob(model, rows, device="cpu"), here)
    pyro.set_rng_seed(1)
    first = ppgen.sample(model, 5)
    pyro.set_rng_seed(1)
    again = ppgen.sample(model, 5, device="cpu")
    assert all(torch.equal(first[k], again[k]) for k in first)
    on_auto = ppgen.log_prob(model, rows, device="auto")  # moves the model, as the fits do
    assert on_auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    vae = ppgen.models.VAE(4, 2, hidden=(8,))
    x = torch.bernoulli(torch.full((6, 4), 0.5))
    pyro.set_rng_seed(2)
    bound = ppgen.log_prob(vae, x, guide=vae.guide, num_samples=8)
    pyro.set_rng_seed(2)
    assert torch.equal(ppgen.log_prob(vae, x, guide=vae.guide, num_samples=8, device="cpu"), bound)


@cuda
def test_data_that_do_not_fit_a_gpu_stream_from_host_memory(monkeypatch):
    """A fit on CUDA with its rows in host memory (as when they exceed the GPU's memory) takes
    the same steps as one on the CPU: the permutation is drawn where the rows are."""
    rows = _rows()
    pyro.set_rng_seed(0)
    on_cpu = _model()
    pyro.set_rng_seed(0)
    streamed = _model()
    streamed.load_state_dict(on_cpu.state_dict())
    pyro.set_rng_seed(3)
    ppgen.fit_mle(on_cpu, rows, epochs=4, batch_size=64, progress=False)
    monkeypatch.setattr(ppgen.data, "fits", lambda nbytes, device: False)
    held = table(_model(), rows, device="cuda")
    assert held.home.type == "cpu" and held.columns["a"].is_pinned()
    assert held.rows(torch.arange(3))["a"].device.type == "cuda"
    pyro.set_rng_seed(3)
    ppgen.fit_mle(streamed, rows, epochs=4, batch_size=64, device="cuda", progress=False)
    for (name, p), q in zip(on_cpu.named_parameters(), streamed.parameters(), strict=True):
        assert q.device.type == "cuda"
        torch.testing.assert_close(q.cpu(), p, atol=1e-4, rtol=1e-4, msg=name)
    density = ppgen.log_prob(streamed, rows, device="cuda")
    assert density.device.type == "cuda"
    torch.testing.assert_close(density.cpu(), ppgen.log_prob(on_cpu, rows), atol=1e-4, rtol=1e-4)
    vae = ppgen.models.VAE(4, 2, hidden=(8,))
    ppgen.fit_svi(vae, vae.guide, torch.zeros(64, 4), epochs=1, device="cuda", progress=False)
    assert ppgen.sample(vae, 3, device="cuda")["x"].device.type == "cuda"


def _zoo() -> dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """One model of each family with rows it can fit (all fully observed)."""
    generator = torch.Generator().manual_seed(4)
    bits = torch.bernoulli(torch.full((256, 6), 0.4), generator=generator)
    rows = _rows(256)
    rows["d"] = torch.randint(0, 3, (256,), generator=generator).float()
    graph = ppgen.dag(
        [("a", "b"), ("a", "c"), ("b", "c"), ("d", "c")],
        kinds={"a": "bernoulli", "b": "linear_gaussian", "c": "normal", "d": "categorical"},
        cardinalities={"d": 3},
        hidden=(8,),
    )
    return {
        "dag": (graph, rows),
        "fvsbn": (ppgen.models.FVSBN(6), {"x": bits}),
        "nade": (ppgen.models.NADE(6, hidden_features=5), {"x": bits}),
        "made": (ppgen.models.MADE(6, hidden_features=(12,)), {"x": bits}),
        "pixelcnn": (
            ppgen.models.PixelCNN((2, 3), channels=4, layers=1, kernel_size=3, position=True),
            {"x": bits},
        ),
        "rnade": (ppgen.models.RNADE(3, hidden_features=5), {"x": torch.randn(256, 3)}),
    }


@cuda
@pytest.mark.parametrize("name", ["dag", "fvsbn", "nade", "made", "pixelcnn", "rnade"])
def test_every_family_fits_and_answers_on_cuda(name, tmp_path):
    """Fitted with `device="cuda"`, a model's parameters live there, and its density there
    equals that of the same parameters on the CPU; samples and saved files come back."""
    model, rows = _zoo()[name]
    fit = ppgen.fit_mle(model, rows, epochs=2, batch_size=64, device="cuda", progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(math.isfinite(e["train"]) for e in fit.history)
    on_cpu, _ = _zoo()[name]
    on_cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    density = ppgen.log_prob(model, rows, device="cuda")
    assert density.device.type == "cuda"
    torch.testing.assert_close(density.cpu(), ppgen.log_prob(on_cpu, rows), atol=1e-4, rtol=1e-5)
    drawn = ppgen.sample(model, 5, device="cuda")
    assert all(v.device.type == "cuda" and len(v) == 5 for v in drawn.values())
    ppgen.save(model, tmp_path / "model.safetensors", fit=fit)
    loaded = ppgen.load(tmp_path / "model.safetensors", device="cpu")
    torch.testing.assert_close(ppgen.log_prob(loaded, rows), ppgen.log_prob(on_cpu, rows))


@cuda
def test_vae_and_gan_fit_on_cuda(tmp_path):
    x = torch.bernoulli(torch.full((128, 6), 0.4), generator=torch.Generator().manual_seed(5))
    vae = ppgen.models.VAE(6, 2, hidden=(8,))
    ppgen.fit_svi(vae, vae.guide, x, val=x[:32], epochs=2, batch_size=32, device="cuda",
                  progress=False)  # fmt: skip
    assert vae.encode(x.cuda()).device.type == "cuda"
    bound = ppgen.log_prob(vae, x, guide=vae.guide, num_samples=4, device="cuda")
    assert bound.device.type == "cuda" and torch.isfinite(bound).all()
    gan = ppgen.models.GAN(MLPGenerator(2, 6, hidden_features=(8,)),
                           MLPDiscriminator(6, hidden_features=(8,)), 2)  # fmt: skip
    fit = ppgen.fit_gan(gan, x, val=x[:32], val_samples=64, epochs=2, batch_size=32, r1=1.0,
                        average=0.9, device="cuda", progress=False)  # fmt: skip
    assert "val/mmd" in fit.history[-1]
    assert gan.sample(4).device.type == "cuda"
    loaded = ppgen.load(ppgen.save(gan, tmp_path / "gan.safetensors"), device="cuda")
    for (name, p), q in zip(gan.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert q.device.type == "cuda" and torch.equal(p, q), name


@cuda
def test_a_linear_gaussian_with_a_categorical_parent_is_least_squares_on_cuda():
    """One-hot columns beside the intercept make the design rank-deficient: on the GPU too, the
    fit is the minimum-norm least-squares solution (CUDA's own lstsq driver assumes full rank)."""
    n = 300
    c = torch.randint(0, 3, (n,))
    a = torch.randn(n)
    y = 1.5 * a + torch.tensor([0.0, 2.0, -1.0])[c] + 0.3 * torch.randn(n)
    model = ppgen.dag([("a", "y"), ("c", "y")], kinds={"y": "linear_gaussian", "c": "categorical"},
                      cardinalities={"c": 3})  # fmt: skip
    ppgen.fit_mle(model, {"a": a, "c": c, "y": y}, device="cuda", progress=False)
    one_hot = torch.nn.functional.one_hot(c, 3).double()
    design = torch.cat([a[:, None], one_hot, torch.ones(n, 1)], dim=1)
    coef = torch.linalg.lstsq(design, y[:, None], driver="gelsd").solution.squeeze(-1)
    node = model.conditionals[model.nodes.index("y")]
    fitted = torch.cat([node.linear.weight.reshape(-1), node.linear.bias]).cpu()
    assert torch.allclose(fitted, coef, atol=1e-8)  # the minimum-norm solution, not gels' 1e14
