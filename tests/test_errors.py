"""The bad-input catalogue of docs/errors.md: one test per entry, asserting the sentence and that
the model's parameters and the user's files are unchanged."""

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import config_enumerate
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
        re.escape("Column 'd' is not a sample site of the model (its sites: 'a', 'b', 'c')."),
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
            "Column 'a' has value 2 in row 1, outside the support of its Bernoulli",  # as written
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


class PerRowBinomial(ppgen.Model):
    """x_i ~ Binomial(i, 1/2): a support whose bound differs by row."""

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Binomial(torch.arange(1.0, n + 1), 0.5))


def test_value_outside_a_per_row_support():
    model = PerRowBinomial()
    message = "Column 'x' has value 5.0 in row 1, outside the support of its Binomial"
    _unchanged(lambda: ppgen.log_prob(model, {"x": [1, 5, 1]}), message, model)
    _unchanged(_fit(model, {"x": [1, 5, 1]}), message, model)
    expected = dist.Binomial(torch.tensor([1.0, 2.0, 3.0]), 0.5).log_prob(torch.tensor([1, 2, 0]))
    assert torch.allclose(ppgen.log_prob(model, {"x": [1, 2, 0]}), expected, rtol=0, atol=1e-12)


class Trials(ppgen.Model):
    """k ~ Uniform{0, ..., 3}, x | k ~ Binomial(k, 1/2): the bound of x is its parent's value."""

    def forward(self, n=1):
        with pyro.plate("rows", n):
            k = pyro.sample("k", dist.Categorical(torch.ones(4)))
            pyro.sample("x", dist.Binomial(k.to(torch.float64), 0.5))


def test_value_outside_a_support_bounded_by_a_parent(monkeypatch):
    monkeypatch.setattr(ppgen.data, "_TRACE_ROWS", 2)  # the rows are checked two at a time
    model, data = Trials(), {"k": [3, 3, 1, 2, 0], "x": [1, 2, 0, 3, 0]}
    message = "Column 'x' has value 3.0 in row 3, outside the support of its Binomial"
    _unchanged(lambda: ppgen.log_prob(model, data), message, model)


def test_value_beyond_float32_and_complex_values():
    model = _model().float()
    big = np.array([0.5, 1e39, 2.0])  # float64, finite, but inf in float32
    message = "Column 'c' holds a value beyond the range of its site's dtype, float32 (row 1)."
    _unchanged(_fit(model, {**GOOD, "c": big}), re.escape(message), model)
    _unchanged(lambda: ppgen.log_prob(model, {**GOOD, "c": big}), re.escape(message), model)
    complex_values = np.array([0.5, 1.0 + 1.0j, 2.0])
    message = "Column 'c' holds complex numbers; its site takes real ones."
    _unchanged(_fit(model, {**GOOD, "c": complex_values}), message, model)


class GlobalMean(ppgen.Model):
    """mu ~ N(0, 1) once, outside the plate; x_i | mu ~ N(mu, 1)."""

    def __init__(self):
        super().__init__()
        self.mu = Root(dist.Normal)

    def forward(self, n=1):
        mu = pyro.sample("mu", self.mu())
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(mu, 1.0))


def test_site_outside_the_data_plate_and_a_single_value():
    model = GlobalMean()
    message = re.escape("Site 'mu' is outside the data plate (one value for all rows), so it")
    _unchanged(lambda: ppgen.log_prob(model, ppgen.sample(model, 3)), message, model)
    _unchanged(_fit(model, {"mu": 0.5, "x": [0.0, 1.0]}), message, model)
    message = re.escape("Site 'mu' has values of shape (); as_frame needs one number per row")
    _unchanged(lambda: ppgen.sample(model, 3, as_frame=True), message, model)
    model = _model()
    message = "Column 'c' holds a single value, not one per row."
    _unchanged(lambda: ppgen.log_prob(model, {**GOOD, "c": 0.5}), message, model)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            lambda m: ppgen.log_prob(m, GOOD, batch_size=0),
            "batch_size must be a positive number of rows, not 0.",
        ),
        (
            lambda m: ppgen.log_prob(m, GOOD, num_samples=0),
            "num_samples must be a positive number of draws, not 0.",
        ),
        (lambda m: ppgen.sample(m, 0), "n must be a positive number of rows, not 0."),
        (lambda m: ppgen.sample(m, -1), "n must be a positive number of rows, not -1."),
        (lambda m: ppgen.sample(m, 5.0), "n must be a positive number of rows, not 5.0."),
        (lambda m: ppgen.sample(m, True), "n must be a positive number of rows, not True."),
        (
            lambda m: ppgen.log_prob(m, GOOD, batch_size=2.5),
            "batch_size must be a positive number of rows, not 2.5.",
        ),
        (
            lambda m: ppgen.fit_mle(m, GOOD, epochs=0, progress=False),
            "epochs must be a positive number, not 0.",
        ),
        (
            lambda m: ppgen.fit_svi(m, "auto_normal", GOOD, batch_size=0, progress=False),
            "batch_size must be a positive number of rows, not 0.",
        ),
    ],
    ids=["batch_size", "num_samples", "n=0", "n=-1", "n=5.0", "n=True", "batch_size=2.5", "epochs",
         "svi batch_size"],  # fmt: skip
)
def test_sizes_below_one(query, message):
    model = _model()
    _unchanged(lambda: query(model), message, model)


def test_sample_of_a_program_conditioned_on_rows():
    def model(n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Normal(0.0, 1.0)), 1.0))

    x = torch.arange(5.0)
    conditioned = pyro.condition(model, data={"x": x})
    # the observed rows are the data's, whole: drawn at once, not batch by batch
    rows = ppgen.sample(conditioned, 5, batch_size=2)
    assert torch.equal(rows["x"], x) and rows["z"].shape == (5,)
    message = "Site 'x' is observed with 5 values along the plate 'rows', but sample draws 3 rows"
    for n in (3, 1):  # z would get n rows beside the 5 of x
        _unchanged(lambda n=n: ppgen.sample(conditioned, n), re.escape(message.replace("3", str(n))),
                   nn.Linear(1, 1))  # fmt: skip


def test_labels_are_coded_by_the_fits_categories_or_refused():
    model, categories = _model(), {"b": ["x", "y", "z"]}
    frame = pd.DataFrame({**GOOD, "b": ["z", "purple", "x"]})
    message = "Column 'b' has label 'purple' in row 1, which is not among its 3 categories."
    _unchanged(lambda: ppgen.log_prob(model, frame, categories=categories), message, model)
    frame = pd.DataFrame({**GOOD, "b": pd.Categorical(["z", None, "x"])})
    message = re.escape("Column 'b' holds a missing label (row 1).")
    _unchanged(lambda: ppgen.log_prob(model, frame, categories=categories), message, model)
    _unchanged(_fit(model, frame), message, model)
    frame = pd.DataFrame({**GOOD, "b": ["z", "y", "x"]})
    message = "Column 'b' holds labels, and log_prob needs the codes they had in the fit: pass"
    _unchanged(lambda: ppgen.log_prob(model, frame), message, model)
    message = "Column 'b' holds labels, but categories has none for it."
    _unchanged(lambda: ppgen.log_prob(model, frame, categories={}), message, model)


def test_numbers_where_the_model_codes_number_labels_and_labels_a_file_keeps_as_text(tmp_path):
    model = _model()
    ppgen.fit_mle(model, pd.DataFrame({**GOOD, "b": pd.Categorical([2, 0, 1], categories=[2, 0, 1])}),
                  epochs=1, progress=False)  # fmt: skip
    message = re.escape("Column 'b' holds numbers, but the model codes its labels [2, 0, 1], numbers "
                        "too, so they could be labels or codes: give labels as a pandas categorical "
                        "column, codes as an array (column.to_numpy()).")  # fmt: skip
    _unchanged(lambda: ppgen.log_prob(model, pd.DataFrame(GOOD)), message, model)
    _unchanged(_fit(model, pd.DataFrame(GOOD)), message, model)
    days = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"])
    frame = pd.DataFrame({**GOOD, "b": pd.Categorical(days)})
    loaded = ppgen.load(ppgen.save(_fitted(frame), tmp_path / "m.safetensors"))
    message = re.escape("Column 'b' has label Timestamp('2020-01-01 00:00:00') in row 0, which is "
                        "not among its 3 categories: a saved model keeps labels that are neither "
                        "numbers nor text as text, so give '2020-01-01 00:00:00'.")  # fmt: skip
    _unchanged(lambda: ppgen.log_prob(loaded, frame), message, loaded, tmp_path)


def _fitted(frame: pd.DataFrame) -> nn.Module:
    model = _model()
    ppgen.fit_mle(model, frame, epochs=1, progress=False)
    return model


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
        ([], {}, "The graph is empty"),
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
    assert model.w.item() == 0.0  # it failed in epoch 1: the parameters before it are kept


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


def test_relay_race_of_no_rows():
    with pytest.raises(ValueError, match="num_rows must be a positive number of rows, not 0."):
        ppgen.datasets.relay_race(0)


def test_a_table_names_its_family_and_more_labels_than_values():
    model = ppgen.dag([("c", "y")], kinds={"c": "tabular", "y": "tabular"},
                      cardinalities={"c": 3, "y": 2})  # fmt: skip
    with pytest.raises(ValueError, match="outside the support of its Categorical distribution"):
        ppgen.fit_mle(model, {"c": [0, 1], "y": [0, 2]}, progress=False)
    frame = pd.DataFrame({"c": ["red", "green", "blue", "purple"], "y": [0, 1, 0, 1]})
    _unchanged(_fit(model, frame), "Column 'c' has 4 labels, but its site takes 3 values.", model)


class _Regression(pyro.nn.PyroModule):
    """A program in Pyro's style: its data are its arguments, no keyword n."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x, y=None):
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Normal(self.linear(x[:, None]).squeeze(-1), 1.0), obs=y)


def test_pyro_style_program_errors():
    model, x = _Regression(), torch.randn(5)
    latent = "Site 'y' of the program _Regression is latent (neither observed with obs= nor in"
    _unchanged(lambda: ppgen.log_prob(model, x), re.escape(latent), model)
    _unchanged(lambda: ppgen.fit_mle(model, x, progress=False), "fit it with ppgen.fit_svi", model)
    fails = "The program _Regression fails on its data: TypeError: "
    _unchanged(lambda: ppgen.log_prob(model, x, x, x), re.escape(fails), model)
    shape = "Site 'y' has values of shape (5,), but the data give it shape (4,)."
    _unchanged(lambda: ppgen.log_prob(model, {"y": torch.zeros(4)}, x), re.escape(shape), model)
    val = "val needs a program taking the number of rows as its keyword n; "
    _unchanged(lambda: ppgen.fit_mle(model, x, x, val=x, progress=False), val, model)
    guide = "With a guide, a program without the keyword n takes its data tensor as its first"
    _unchanged(lambda: ppgen.log_prob(model, {"y": x}, x, guide=lambda x: None), guide, model)


def test_a_pyro_style_data_column_the_distribution_broadcasts_is_refused():
    # x of shape (5, 1) under a plate of 5 rows: Normal(0, 1).log_prob(x) broadcasts to (5, 5),
    # 25 terms for 5 rows; fit_svi refused it, log_prob and fit_mle summed them without a word
    model, x = _Regression(), torch.randn(5)
    shape = "The data tensor's rows have shape (1,), but site 'y' of the model has rows of shape ()."
    _unchanged(lambda: ppgen.log_prob(model, x, x[:, None]), re.escape(shape), model)
    _unchanged(lambda: ppgen.fit_mle(model, x, x[:, None], progress=False), re.escape(shape), model)
    total = dist.Normal(model.linear(x[:, None]).squeeze(-1), 1.0).log_prob(x).sum()
    assert ppgen.log_prob(model, x, x).item() == pytest.approx(total.item(), abs=1e-5)


def test_log_prob_with_an_auto_guide_by_name_or_no_rows():
    # fit_svi builds "auto_normal" on the model; log_prob takes the guide it fitted, fit.guide
    model, x = _Regression(), torch.randn(5)
    guide = "guide must be a program (fit.guide, the guide fit_svi fitted), not 'auto_normal'."
    _unchanged(lambda: ppgen.log_prob(model, x, guide="auto_normal"), re.escape(guide), model)
    empty = "The program _Regression fails on its data: ZeroDivisionError: "  # a plate of no rows
    _unchanged(lambda: ppgen.log_prob(model, x[:0], x[:0]), re.escape(empty), model)


def test_a_program_wrapped_by_pyros_handlers_is_named_by_its_function():
    @config_enumerate  # the GMM tutorial's model: Pyro's handlers wrap it in a partial
    def mixture(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("x", dist.Normal(z.double(), 1.0), obs=data)

    latent = "Site 'z' of the program mixture is latent (neither observed with obs= nor in"
    for program in (mixture, pyro.poutine.block(mixture, hide=["w"])):
        with pytest.raises(ValueError, match=re.escape(latent)):
            ppgen.log_prob(program, torch.zeros(3, dtype=torch.float64))


def test_labels_or_a_missing_input_given_to_an_amortized_guide():
    def grouped(n=1):
        with pyro.plate("groups", 3):
            mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", n):
            g = pyro.sample("g", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(mu[g], 1.0))

    data = {"g": torch.tensor([0, 2, 1]), "x": torch.zeros(3)}
    guide = ppgen.guides.Amortized(grouped, n=3, data=data)
    labels = {**data, "g": pd.Series(pd.Categorical(["c", "a", "b"]))}
    message = re.escape("Column 'g' holds labels (a pandas categorical or text column), which the "
                        "guide does not code: give it their codes in the fit, as ppgen.fit_svi and "
                        "ppgen.log_prob do (by ppgen.model.coding(model)['g']).")  # fmt: skip
    _unchanged(lambda: guide.encode(n=3, data=labels), message, guide)
    message = re.escape("The guide reads the input 'g', which this call does not give (or not with "
                        "as many rows as the others): call it with the inputs it was built on.")  # fmt: skip
    _unchanged(lambda: guide.encode(n=3, data={"x": data["x"]}), message, guide)


def test_a_latent_whose_support_bounds_vary_by_row_given_to_an_amortized_guide():
    def uniform(x, t):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Uniform(torch.zeros_like(t), t))
            pyro.sample("x", dist.Normal(z, 0.1), obs=x)

    def binomial(x, t):
        with pyro.plate("rows", len(x)):
            k = pyro.sample("k", dist.Binomial(t, 0.5))
            pyro.sample("x", dist.Normal(k, 0.1), obs=x)

    t = torch.tensor([1.0, 2.0, 5.0])
    with pytest.raises(ValueError, match=re.escape(
        "Site 'z' has a support whose bounds vary by row, which Amortized cannot follow (its "
        "bijection is fixed when it is built); write a guide for it."
    )):  # fmt: skip
        ppgen.guides.Amortized(uniform, t / 2, t)
    with pytest.raises(ValueError, match=r"^Site 'k' is a Binomial latent with a bound that varies "
                       r"by row, which Amortized cannot parameterise"):  # fmt: skip
        ppgen.guides.Amortized(binomial, t / 2, t)


def test_an_argument_with_a_value_per_row_is_refused():
    """Per-row weights as an argument of a program with `n` would stay in their order while the
    fit shuffles the rows (a weighted slope of 2.54 where weighted least squares gives 1.85):
    refused, pointing to Pyro's style, which fits them with their rows."""

    class Weighted(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = Root(dist.Normal), ppgen.nn.LinearGaussian(1)

        def forward(self, weights, n=1):
            with pyro.plate("rows", n):
                a = pyro.sample("a", self.a())
                with pyro.poutine.scale(scale=weights):
                    pyro.sample("b", self.b(a))

    model, a = Weighted(), torch.randn(50)
    rows, weights = {"a": a, "b": 2.0 * a + torch.randn(50)}, torch.rand(50)
    message = r"The model's argument 0 has one value per row of the data \(50 rows\), but fit_mle"
    _unchanged(lambda: ppgen.fit_mle(model, rows, weights, progress=False), message, model)
    # log_prob runs it on batches of the rows (and a probe of 2 rows, which raised Pyro's shapes)
    message = r"The model's argument 0 has one value per row of the data \(50 rows\), but log_prob"
    with pytest.raises(ValueError, match=message):
        ppgen.log_prob(model, rows, weights)


def test_a_parent_code_outside_a_childs_table_is_refused():
    """A table given 2 values of a parent that takes 3: the counts carried code 2 into the next
    row of the table without a word (and a look-up raised IndexError); refused, naming both."""

    class Mismatched(ppgen.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = ppgen.nn.Tabular(2), ppgen.nn.Tabular(3)
            self.c = ppgen.nn.Tabular(2, (2, 2))  # b takes 3 values, not 2

        def forward(self, n=1):
            with pyro.plate("rows", n):
                a, b = pyro.sample("a", self.a()), pyro.sample("b", self.b())
                pyro.sample("c", self.c(a, b))

    model = Mismatched()
    with torch.no_grad():
        model.b.logits[2] = -float("inf")  # its draws (the data's checks) never show code 2
    rows = {"a": torch.tensor([0, 1, 0, 0]), "b": torch.tensor([0, 1, 2, 0]),
            "c": torch.tensor([0, 1, 1, 0])}  # fmt: skip
    message = re.escape("Site 'b' has value 2 in row 2, but the Tabular of site 'c' takes 2 "
                        "values of it (0 to 1): give that Tabular the parent's cardinality.")  # fmt: skip
    _unchanged(lambda: ppgen.fit_mle(model, rows, progress=False), message, model)
    _unchanged(lambda: ppgen.log_prob(model, rows), message, model)
