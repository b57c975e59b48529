"""Tables in bounded memory: chunked counting, narrow label codes, chunked sampling."""

import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen import closed_form
from ppgen.nn import Tabular


def chain_model():
    return ppgen.dag(
        [("a", "x"), ("b", "x")],
        kinds={"a": "tabular", "b": "tabular", "x": "tabular"},
        cardinalities={"a": 3, "b": 2, "x": 4},
    )


def chain_rows(n, dtype=torch.int64):
    a = torch.randint(0, 3, (n,))
    b = torch.randint(0, 2, (n,))
    x = (a + b + torch.randint(0, 2, (n,))) % 4
    return {"a": a.to(dtype), "b": b.to(dtype), "x": x.to(dtype)}


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.float64])
def test_chunked_counting_equals_one_count_and_the_frequencies(monkeypatch, dtype):
    """Tables counted 7 rows at a time equal those counted at once (exactly), and both are the
    conditional frequencies to 1e-12; the log-likelihood from the counts is the rows' sum."""
    rows = chain_rows(1000, dtype)
    x, parents = rows["x"], [rows["a"], rows["b"]]
    whole, chunked = Tabular(4, (3, 2)), Tabular(4, (3, 2))
    total = closed_form.solve(whole, x, parents)[1]
    monkeypatch.setattr(closed_form, "COUNT_ROWS", 7)
    assert closed_form.solve(chunked, x, parents)[1] == total  # the same counts, summed alike
    assert torch.equal(whole.logits, chunked.logits)
    a, b, x = (v.long() for v in (rows["a"], rows["b"], x))
    for i in range(3):
        for j in range(2):
            seen = (a == i) & (b == j)
            frequencies = torch.bincount(x[seen], minlength=4) / seen.sum()
            assert torch.allclose(chunked.logits[i, j].exp(), frequencies.double(), atol=1e-12)
    assert total.dtype == torch.float64
    assert total.item() == pytest.approx(chunked.log_prob(x, a, b).sum().item(), abs=1e-9)


def test_a_plate_of_values_is_counted_as_its_cells(monkeypatch):
    """A site with several values a row (and its parent's alike) counts each cell once."""
    x, p = torch.randint(0, 3, (50, 4)), torch.randint(0, 2, (50, 4))
    monkeypatch.setattr(closed_form, "COUNT_ROWS", 8)
    table = Tabular(3, (2,))
    closed_form.solve(table, x, [p])
    counts = torch.stack([torch.bincount(x[p == i], minlength=3) for i in range(2)])
    assert torch.allclose(table.logits.exp(), counts / counts.sum(-1, keepdim=True), atol=1e-12)


@pytest.mark.parametrize("labels,dtype", [(2, torch.int8), (128, torch.int8), (129, torch.int16)])
def test_label_codes_take_the_smallest_integer_type(labels, dtype):
    """Codes of a label column are held narrow; the batches a program sees are int64."""
    model = ppgen.dag([("c", "y")], kinds={"c": "tabular", "y": "tabular"},
                      cardinalities={"c": labels, "y": 2})  # fmt: skip
    names = [f"l{i:03d}" for i in range(labels)]
    frame = pd.DataFrame({
        "c": pd.Categorical([names[-1], names[0], names[-1]], categories=names),
        "y": ["no", "yes", "no"],
    })  # fmt: skip
    data = ppgen.data.table(model, frame)
    assert data.columns["c"].dtype == dtype and data.columns["y"].dtype == torch.int8
    assert data.columns["c"].tolist() == [labels - 1, 0, labels - 1]
    batch = data.rows(slice(None))
    assert batch["c"].dtype == torch.int64 and batch["y"].tolist() == [0, 1, 0]


def test_a_fit_on_labels_equals_a_fit_on_int64_codes():
    rows = chain_rows(500)
    names = {"a": ["p", "q", "r"], "b": ["n", "y"], "x": ["s0", "s1", "s2", "s3"]}
    frame = pd.DataFrame({
        v: pd.Categorical.from_codes(rows[v].numpy(), names[v]) for v in rows
    })  # fmt: skip
    coded, labelled = chain_model(), chain_model()
    first = ppgen.fit_mle(coded, rows, progress=False)
    second = ppgen.fit_mle(labelled, frame, progress=False)
    for p, q in zip(coded.parameters(), labelled.parameters(), strict=True):
        assert torch.equal(p, q)
    assert first.history[-1] == second.history[-1]


def test_a_column_recoded_by_the_fits_labels_keeps_its_codes():
    """A categorical column whose categories differ from the coding in use is mapped through
    its categories: a missing label and an unknown one are still refused by row."""
    model = chain_model()
    frame = pd.DataFrame({
        "a": pd.Categorical(["r", "p"], categories=["r", "q", "p"]),
        "b": ["n", "y"], "x": ["s1", "s0"],
    })  # fmt: skip
    categories = {"a": ["p", "q", "r"], "b": ["n", "y"], "x": ["s0", "s1"]}
    data = ppgen.data.table(model, frame, categories=categories)
    assert data.columns["a"].tolist() == [2, 0]
    frame["a"] = pd.Categorical(["r", None], categories=["r", "p"])
    with pytest.raises(ValueError, match="'a' holds a missing label \\(row 1\\)"):
        ppgen.data.table(model, frame, categories=categories)


def test_chunked_sampling_repeats_the_first_batch_and_fills_every_row():
    model = chain_model()
    pyro.set_rng_seed(3)
    whole = ppgen.sample(model, 10, batch_size=4)
    pyro.set_rng_seed(3)
    first = ppgen.sample(model, 4, batch_size=4)
    for name in whole:
        assert whole[name].shape == (10,) and whole[name].dtype == torch.int64
        assert torch.equal(whole[name][:4], first[name])
    assert not torch.equal(whole["x"][:4], whole["x"][4:8])  # the next batch is new draws


def test_chunked_sampling_has_the_tables_distribution():
    """Joint frequencies of (a, x) drawn 1000 rows at a time match the exact probabilities."""
    model = ppgen.dag([("a", "x")], kinds={"a": "tabular", "x": "tabular"},
                      cardinalities={"a": 2, "x": 3})  # fmt: skip
    with torch.no_grad():
        model.conditionals[0].logits.copy_(torch.tensor([0.3, 0.7]).log())
        model.conditionals[1].logits.copy_(torch.tensor([[0.2, 0.0, 0.8], [0.5, 0.25, 0.25]]).log())
    n = 40_000
    rows = ppgen.sample(model, n, batch_size=1000)
    p = torch.tensor([0.3, 0.7])[:, None] * torch.tensor([[0.2, 0.0, 0.8], [0.5, 0.25, 0.25]])
    freq = torch.bincount(rows["a"] * 3 + rows["x"], minlength=6).reshape(2, 3) / n
    # 5 standard errors per cell: a false alarm about once in 300,000 runs
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all()
    assert freq[0, 1] == 0  # a cell of probability 0 is never drawn


def test_a_site_shared_by_the_rows_is_drawn_once_for_all():
    def model(n=1):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1e-6))

    rows = ppgen.sample(model, 10, batch_size=4)
    assert rows["mu"].shape == () and torch.allclose(rows["x"], rows["mu"], atol=1e-4)
    with pytest.raises(ValueError, match="batch_size must be a positive number of rows, not 0"):
        ppgen.sample(model, 3, batch_size=0)
