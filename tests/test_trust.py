"""Data, files and folders a user can trust (issue 17): each class of defect, at the check where
data, files or folders enter. Test names start with the class that `benchmarks/reliability.py`
tallies: `silent` (a wrong number without a word), `code` (code run from a received file or
folder), `files` (files lost or overwritten), `resources` (memory or time the input does not
justify) and `messages` (one clear sentence instead of a traceback)."""

import re
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.nn import Root


@contextmanager
def float32():
    """Models built and fitted in float32, torch's default dtype, where rounding bites."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


def _refused(call, message: str, model=None) -> None:
    """`call` raises one ValueError sentence matching `message`; the model is unchanged."""
    state = {k: v.clone() for k, v in model.state_dict().items()} if model is not None else {}
    with pytest.raises(ValueError, match=message) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text, text
    if model is not None:
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def _fit(model, data):
    return lambda: ppgen.fit_mle(model, data, epochs=1, progress=False)


class Mean(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.x = Root(dist.Normal)

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", self.x())


# -- silent wrong numbers ------------------------------------------------------------------------


def test_silent_text_for_a_continuous_site_is_refused_naming_the_cell():
    model = Mean()
    frame = pd.DataFrame({"x": ["220", "61,5", "230"]})  # as pandas reads a CSV with "61,5"
    _refused(_fit(model, frame), re.escape("Column 'x' cannot be read as numbers: it holds str "
                                           "'61,5' in row 1, and its Normal site takes numbers."),
             model)  # fmt: skip
    labels = pd.DataFrame({"x": pd.Categorical([220.0, 230.0, 220.0])})
    _refused(_fit(model, labels), "Column 'x' holds labels .a categorical column., but its Normal "
             "site is continuous", model)  # fmt: skip
    _refused(_fit(model, {"x": np.array([1.5, "a"], dtype=object)}), "holds str 'a' in row 1", model)
    numbers = pd.DataFrame({"x": pd.Series([220.0, 230.0], dtype=object)})  # numbers as objects
    ppgen.fit_mle(model, numbers, epochs=1, progress=False)
    assert model.x().mean.item() == pytest.approx(225.0, abs=1e-9)  # not the codes 0, 1


def test_silent_labels_still_code_a_discrete_site():
    model = ppgen.dag([("a", "b")], kinds={"a": "categorical", "b": "normal"},
                      cardinalities={"a": 3})  # fmt: skip
    fit = ppgen.fit_mle(model, pd.DataFrame({"a": ["x", "y", "z", "x"], "b": [0.0, 1, 2, 3]}),
                        epochs=1, progress=False)  # fmt: skip
    assert fit.categories == {"a": ["x", "y", "z"]}


def test_silent_series_pair_by_index_or_are_refused():
    model = ppgen.dag([("a", "b")], kinds={"b": "linear_gaussian"})
    a = pd.Series(np.arange(8.0), index=np.arange(8))
    b = pd.Series(2.0 * np.arange(8.0) + 1, index=np.arange(8))
    clean = ppgen.log_prob(model, {"a": a, "b": b})
    shuffled = b.iloc[np.random.default_rng(0).permutation(8)]  # the same rows, in another order
    assert torch.equal(ppgen.log_prob(model, {"a": a, "b": shuffled}), clean)
    ppgen.fit_mle(model, {"a": a, "b": shuffled}, epochs=1, progress=False)
    assert model.conditionals[1].linear.weight.item() == pytest.approx(2.0, abs=1e-9)
    other = pd.Series(b.to_numpy(), index=np.arange(1, 9))
    _refused(lambda: ppgen.log_prob(model, {"a": a, "b": other}),
             "Columns 'a' and 'b' are pandas Series with different indexes", model)  # fmt: skip


def test_silent_a_column_named_twice_is_refused():
    model = Mean()
    frame = pd.DataFrame([[1.0, 200.0], [2.0, 300.0]], columns=["x", "x"])
    _refused(_fit(model, frame), re.escape("Column 'x' appears twice in the data"), model)
    numbered = pd.DataFrame([[1.0, 200.0]], columns=["x", "y"]).rename(columns={"y": "x"})
    _refused(lambda: ppgen.log_prob(model, numbered), "appears twice", model)


def test_silent_values_whose_squares_overflow_are_refused_before_a_closed_form():
    with float32():
        model = ppgen.dag([("a", "b")], kinds={"a": "normal", "b": "linear_gaussian"})
        data = {"a": np.array([1e30, -1e30, 2e30]), "b": np.array([1.0, 2.0, 3.0])}
        _refused(_fit(model, data), re.escape("Column 'a' holds 1e+30 (row 0), too large for its "
                                              "site's dtype, float32"), model)  # fmt: skip
        ppgen.fit_mle(model, {"a": data["a"] * 1e-20, "b": data["b"]}, epochs=1, progress=False)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_silent_float32_cannot_tell_timestamps_apart():
    seconds = 1.7e9 + np.random.default_rng(0).normal(0.0, 28.5, 200)
    with float32():
        model = Mean()
        _refused(_fit(model, {"x": seconds}), "Column 'x' loses precision in float32: its values "
                 "spread by 2.*; subtract an offset", model)  # fmt: skip
        _refused(_fit(model, {"x": seconds.astype("int64")}), "loses precision in float32", model)
        ppgen.fit_mle(model, {"x": seconds - 1.7e9}, epochs=1, progress=False)  # centred: fine
    model = Mean()  # float64 keeps them
    ppgen.fit_mle(model, {"x": seconds}, epochs=1, progress=False)
    assert model.x().stddev.item() == pytest.approx(seconds.std(), rel=1e-6)


class Count(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(3))

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("k", dist.Categorical(logits=self.logits))  # long values


def test_silent_support_is_checked_before_any_cast():
    with float32():
        model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "normal"})
        for bad in (0.99999999, 1e-50):
            data = {"a": np.array([1.0, bad]), "b": np.array([0.0, 1.0])}
            _refused(_fit(model, data), f"Column 'a' has value {bad} in row 1, outside the "
                     "support of its Bernoulli", model)  # fmt: skip
    _refused(lambda: ppgen.log_prob(Count(), {"k": np.array([1.0, 1e20])}),
             re.escape("Column 'k' has value 1e+20 in row 1, outside the support"))  # fmt: skip


class Trials(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.probs = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("k", dist.Binomial(torch.full((n,), 4.0), self.probs))  # a per-row bound


def test_silent_a_value_the_dtype_rounds_is_refused_where_the_support_varies():
    with float32():
        model = Trials()
        _refused(lambda: ppgen.log_prob(model, {"k": np.array([1.0, 1e-50])}),
                 re.escape("Column 'k' has value 1e-50 in row 1, which its site's dtype, float32, "
                           "cannot hold exactly"), model)  # fmt: skip


# -- clear messages ------------------------------------------------------------------------------


def test_messages_a_reversed_view_and_nullable_columns():
    model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "normal"})
    a, b = np.array([0.0, 1.0, 1.0]), np.array([0.5, -1.0, 2.0])
    clean = ppgen.log_prob(model, {"a": a, "b": b})
    reversed_rows = ppgen.log_prob(model, {"a": a[::-1], "b": b[::-1]})  # negative strides
    assert torch.equal(reversed_rows, clean.flip(0))
    nullable = pd.DataFrame({"a": pd.array([False, True, True], dtype="boolean"), "b": b})
    assert torch.equal(ppgen.log_prob(model, nullable), clean)
    missing = nullable.astype({"a": "boolean"})
    missing.loc[1, "a"] = pd.NA
    _refused(lambda: ppgen.log_prob(model, missing), re.escape("Column 'a' holds a missing value "
                                                               "(row 1)."))  # fmt: skip
    integers = pd.DataFrame({"a": pd.array([0, None, 1], dtype="Int64"), "b": b})
    _refused(lambda: ppgen.log_prob(model, integers), re.escape("Column 'a' holds a missing"))
