"""The bad-input catalogue of docs/errors.md: one test per entry, asserting the sentence and that
the model's parameters and the user's files are unchanged."""

import re
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppgen
from ppgen.io import LoadError
from ppgen.nn import Root


def _model() -> ppgen.builder.DAG:
    return ppgen.dag(
        [("a", "b"), ("b", "c")],
        kinds={"a": "bernoulli", "b": "categorical", "c": "normal"},
        cardinalities={"b": 3},
        hidden=(4,),
    )


GOOD = {"a": [0, 1, 1], "b": [0, 2, 1], "c": [0.5, -1.0, 2.0]}


def _unchanged(call: Callable[[], object], message: str, model: nn.Module, tmp_path=None) -> None:
    """`call` raises one ValueError matching `message`; parameters and files stay as they were."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} if tmp_path else {}
    with pytest.raises(ValueError, match=message) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and text.count(". ") <= 1, text  # one sentence (two at most)
    after = model.state_dict()
    assert list(after) == list(state)
    assert all(torch.equal(after[k], v) and after[k].device == v.device for k, v in state.items())
    if tmp_path:
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def _fit(model, data, **options) -> Callable[[], object]:
    return lambda: ppgen.fit_mle(model, data, epochs=2, progress=False, **options)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf(bad):
    model = _model()
    data = {**GOOD, "c": [0.5, bad, 2.0]}
    _unchanged(_fit(model, data), re.escape("Column 'c' holds NaN or inf (row 1)."), model)


def test_wrong_dtype():
    model = _model()
    _unchanged(
        _fit(model, {**GOOD, "a": ["x", "y", "z"]}), "Column 'a' cannot be read as numbers", model
    )
    _unchanged(
        _fit(model, {**GOOD, "b": [0, 1.5, 1]}),
        "Column 'b' must hold whole numbers for its Categorical site.",
        model,
    )


def test_wrong_shape():
    model = _model()
    _unchanged(
        _fit(model, {**GOOD, "c": torch.zeros(3, 2)}),
        re.escape("Column 'c' has rows of shape (2,), but site 'c' has rows of shape ()."),
        model,
    )
    _unchanged(
        _fit(model, {**GOOD, "c": [0.0, 1.0]}), "Column 'c' has 2 rows but 'a' has 3.", model
    )


def test_missing_site():
    model = _model()
    data = {k: v for k, v in GOOD.items() if k != "c"}
    _unchanged(_fit(model, data), "Site 'c' is not in the data", model)


def test_extra_column():
    model = _model()
    _unchanged(
        _fit(model, {**GOOD, "d": [1, 2, 3]}),
        re.escape("Column 'd' is not a sample site of the model (its sites: a, b, c)."),
        model,
    )


class Positive(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.x = Root(dist.Exponential)

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", self.x())


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (
            "a",
            [0, 2, 1],
            "Column 'a' has value 2.0 in row 1, outside the support of its Bernoulli",
        ),
        (
            "b",
            [0, -1, 1],
            "Column 'b' has value -1 in row 1, outside the support of its Categorical",
        ),
        (
            "b",
            [0, 3, 1],
            "Column 'b' has value 3 in row 1, outside the support of its Categorical",
        ),
    ],
)
def test_value_outside_the_support(column, values, message):
    model = _model()
    _unchanged(_fit(model, {**GOOD, column: values}), message, model)
    _unchanged(lambda: ppgen.log_prob(model, {**GOOD, column: values}), message, model)


def test_negative_value_for_a_positive_distribution():
    model = Positive()
    _unchanged(
        _fit(model, {"x": [1.0, -2.0]}),
        "Column 'x' has value -2.0 in row 1, outside the support of its Exponential distribution.",
        model,
    )


def test_latent_site_given_to_fit_mle():
    vae = ppgen.models.VAE(3, 2, hidden=(4,))
    x = torch.bernoulli(torch.full((5, 3), 0.5))
    _unchanged(
        lambda: ppgen.fit_mle(vae, {"x": x}, progress=False),
        "Site 'z' is not in the data: it is latent.*ppgen.fit_svi",
        vae,
    )


def test_empty_dataset():
    model = _model()
    _unchanged(_fit(model, {"a": [], "b": [], "c": []}), "The data have no rows.", model)
    _unchanged(_fit(model, {}), "The data have no columns.", model)


@pytest.mark.parametrize(
    ("edges", "options", "message"),
    [
        (
            [("a", "b"), ("b", "c"), ("c", "a")],
            {},
            "The graph has a cycle: 'a' -> 'b' -> 'c' -> 'a'",
        ),
        ([("a", "b"), ("b", "b")], {}, "Node 'b' has an edge to itself"),
        (
            [("a", "b")],
            {"kinds": {"z": "normal"}},
            "kinds names node 'z', which is not in the graph",
        ),
        ([("a", "b")], {"cardinalities": {"q": 2}}, "cardinalities names node 'q'"),
        ([], {}, "The edge list is empty"),
    ],
)
def test_bad_edge_list(edges, options, message):
    given = [tuple(e) for e in edges]
    with pytest.raises(ValueError, match=re.escape(message)):
        ppgen.dag(edges, **options)
    assert edges == given  # the user's list is not touched


class Empty(ppgen.Model):
    def forward(self, n=1):
        return torch.zeros(n)


def test_program_without_sample_site():
    model = Empty()
    message = "The program Empty has no pyro.sample site, so it has no graph."
    _unchanged(lambda: ppgen.graph(model), re.escape(message), model)


class Unstable(ppgen.Model):
    """The scale 1 - w turns negative after one large step towards data of tiny spread."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(0.0, 1.0 - self.w, validate_args=False))


def test_non_finite_loss_mid_fit():
    model = Unstable()
    data = {"x": 1e-3 * torch.randn(64)}
    with pytest.raises(ValueError, match="The log-likelihood of site 'x' became non-finite at"):
        ppgen.fit_mle(model, data, epochs=5, lr=2.0, batch_size=16, progress=False)
    assert torch.isfinite(model.w)
    assert model.w.item() != 0.0  # it was fitting; the parameters of the last step are kept


def test_data_follow_the_model_device():
    """Data given on another device than the model go to the model's device (CPU here)."""
    model = _model()
    rows = ppgen.data.table(model, {k: torch.tensor(v) for k, v in GOOD.items()})
    assert all(
        v.device == model.conditionals[1].net[0].weight.device for v in rows.columns.values()
    )
    vae = ppgen.models.VAE(3, 2, hidden=(4,))
    table = ppgen.elbo.svi_table(vae, torch.zeros(4, 3), (), {}, None)
    assert table.columns["*data"].device == vae.decoder.net[0].weight.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_data_on_cpu_model_on_cuda():
    model = _model().cuda()
    data = {k: torch.tensor(v) for k, v in GOOD.items()}
    ppgen.fit_mle(model, data, epochs=2, progress=False)
    assert ppgen.log_prob(model, data).device.type == "cuda"
    vae = ppgen.models.VAE(3, 2, hidden=(4,)).cuda()
    ppgen.fit_svi(vae, vae.guide, torch.zeros(4, 3), epochs=1, progress=False)


@pytest.mark.parametrize("device", ["gpu", "mps:0", 3.5])
def test_an_unknown_device(device):
    model = _model()
    message = r"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not"
    _unchanged(lambda: ppgen.fit_mle(model, GOOD, device=device, progress=False), message, model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_without_a_gpu():
    model, message = _model(), "needs a CUDA GPU, and torch finds none here; use 'cpu' or 'auto'"
    _unchanged(lambda: ppgen.fit_mle(model, GOOD, device="cuda", progress=False), message, model)
    _unchanged(lambda: ppgen.log_prob(model, GOOD, device="cuda:1"), message, model)
    _unchanged(lambda: ppgen.sample(model, 3, device="cuda"), message, model)


def test_corrupt_or_foreign_file(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x04not a model at all")
    with pytest.raises(LoadError, match=f"{re.escape(str(path))} is not a ppgen file"):
        ppgen.io.load(path)
    assert path.read_bytes() == b"\x80\x04not a model at all"
    _unchanged(lambda: ppgen.io.load(path), "is not a ppgen file", model, tmp_path)
