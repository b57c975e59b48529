"""The model owns its data coding: a fit on labels records it, and every later call uses it."""

import json
import subprocess
import sys

import pandas as pd
import pyro
import pytest
import torch

import ppgen
from ppgen.model import coding

EDGES = [("weather", "mood"), ("weather", "temp"), ("mood", "temp")]
KINDS = {"weather": "tabular", "mood": "tabular", "temp": "linear_gaussian"}
CARDS = {"weather": 3, "mood": 2}

# loads the saved model in a fresh process and writes its log_prob and samples, as JSON
CHILD = """
import json, sys, pandas as pd, pyro, torch, ppgen
torch.set_default_dtype(torch.float64)
model = ppgen.load(sys.argv[1])
frame = pd.read_json(sys.argv[2], orient="split", precise_float=True)
pyro.set_rng_seed(7)
drawn = ppgen.sample(model, 20, as_frame=True)
print(json.dumps({"log_prob": ppgen.log_prob(model, frame).tolist(),
                  "sample": drawn.astype({"weather": str, "mood": str}).to_dict("list")}))
"""


def _frame() -> pd.DataFrame:
    weather = ["sun", "rain", "sun", "snow", "sun", "rain"] * 10
    mood = ["glad" if w == "sun" else "sad" for w in weather]
    temp = torch.randn(len(weather)).tolist()
    return pd.DataFrame({"weather": weather, "mood": pd.Categorical(mood), "temp": temp})


def test_a_fit_on_labels_is_used_by_every_later_call_and_survives_a_fresh_process(tmp_path):
    frame = _frame()
    model = ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS)
    fit = ppgen.fit_mle(model, frame, progress=False)
    assert coding(model) == fit.categories == {
        "weather": ["rain", "snow", "sun"], "mood": ["glad", "sad"]
    }  # fmt: skip
    exact = ppgen.log_prob(model, frame)  # no categories=: the model's own
    explicit = ppgen.log_prob(model, frame, categories=fit.categories)
    assert torch.equal(exact, explicit)
    pyro.set_rng_seed(7)
    drawn = ppgen.sample(model, 20, as_frame=True)
    assert set(drawn["weather"]) <= {"rain", "snow", "sun"} and set(drawn["mood"]) <= {"glad", "sad"}
    torch.testing.assert_close(ppgen.log_prob(model, drawn), ppgen.log_prob(model, drawn,
                               categories=fit.categories), rtol=0, atol=1e-12)  # fmt: skip

    path = ppgen.save(model, tmp_path / "model.safetensors")
    frame_file = tmp_path / "frame.json"
    frame.to_json(frame_file, orient="split", double_precision=15)
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(frame_file)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    child = json.loads(out.stdout)
    torch.testing.assert_close(torch.tensor(child["log_prob"]), exact, rtol=0, atol=1e-12)
    assert child["sample"]["weather"] == [str(v) for v in drawn["weather"]]
    assert child["sample"]["mood"] == [str(v) for v in drawn["mood"]]
    torch.testing.assert_close(torch.tensor(child["sample"]["temp"]),
                               torch.tensor(drawn["temp"].to_numpy()), rtol=0, atol=1e-12)  # fmt: skip
    loaded = ppgen.load(path)
    assert coding(loaded) == coding(model)
    assert torch.equal(ppgen.log_prob(loaded, frame), exact)


def test_a_label_the_model_never_saw_is_named():
    frame = _frame()
    model = ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS)
    ppgen.fit_mle(model, frame, progress=False)
    fog = frame.assign(weather=["fog"] + list(frame["weather"][1:]))
    with pytest.raises(ValueError, match="Column 'weather' has label 'fog' in row 0, which is not"):
        ppgen.log_prob(model, fog)


def test_a_refit_keeps_the_codes_of_the_labels_it_knows():
    frame = _frame()
    model = ppgen.dag(EDGES, kinds=KINDS, cardinalities=CARDS)
    ppgen.fit_mle(model, frame, progress=False)
    rainy = frame[frame["weather"] != "sun"].reset_index(drop=True)  # two labels of three
    fit = ppgen.fit_mle(model, rainy, progress=False)
    assert fit.categories["weather"] == ["rain", "snow", "sun"]  # "rain" keeps code 0
    assert ppgen.data.table(model, rainy).columns["weather"].tolist()[:2] == [0, 1]


def test_validation_frames_use_the_training_coding():
    frame = _frame()
    model = ppgen.dag(EDGES, kinds={**KINDS, "temp": "normal"}, cardinalities=CARDS, hidden=(4,))
    val = frame.iloc[:3].reset_index(drop=True)  # labels in another order: sun, rain, sun
    fit = ppgen.fit_mle(model, frame, val=val, epochs=2, progress=False)
    assert fit.history[-1]["val/weather"] == pytest.approx(
        ppgen.log_prob(model, val, per_node=True)["weather"].mean().item(), abs=1e-12
    )


def test_numbers_at_a_column_coded_by_number_labels_are_refused_not_read_as_codes():
    """After a fit on a categorical of ints in another order, a plain int column could hold the
    labels or their codes; read as codes, label 2 (code 0) would count as label 1 (code 2)."""
    model = ppgen.dag([("a", "b")], kinds={"a": "tabular", "b": "tabular"},
                      cardinalities={"a": 3, "b": 2})  # fmt: skip
    a, b = [2, 2, 2, 0, 1, 2, 0], [0, 1, 0, 1, 1, 0, 0]
    frame = pd.DataFrame({"a": pd.Categorical(a, categories=[2, 0, 1]), "b": b})
    ppgen.fit_mle(model, frame, progress=False)
    plain = pd.DataFrame({"a": a, "b": b})
    with pytest.raises(ValueError, match=r"^Column 'a' holds numbers, but the model codes its "
                       r"labels \[2, 0, 1\], numbers too"):  # fmt: skip
        ppgen.log_prob(model, plain)
    codes = {"a": torch.tensor([0, 0, 0, 1, 2, 0, 1]), "b": torch.tensor(b)}  # as tensors: codes
    assert torch.equal(ppgen.log_prob(model, codes), ppgen.log_prob(model, frame))
    bools = ppgen.dag([("c", "b")], kinds={"c": "tabular", "b": "tabular"},
                      cardinalities={"c": 2, "b": 2})  # fmt: skip
    ppgen.fit_mle(bools, pd.DataFrame({"c": pd.Categorical([True, False, True]), "b": [0, 1, 1]}),
                  progress=False)  # fmt: skip
    numbers = pd.DataFrame({"c": [1, 0, 1], "b": [0, 1, 1]})  # labels False, True: codes 0, 1
    assert torch.isfinite(ppgen.log_prob(bools, numbers)).all()


def test_a_label_a_file_keeps_as_text_is_named_with_its_text(tmp_path):
    """A file keeps labels that are neither numbers nor text as text: after loading, a frame of
    the dates the fit saw was refused as if a date were no category."""
    import datetime

    model = ppgen.dag([("a", "b")], kinds={"a": "tabular", "b": "tabular"},
                      cardinalities={"a": 3, "b": 2})  # fmt: skip
    days = [datetime.date(2020, 1, d) for d in (1, 2, 3, 3, 2)]
    frame = pd.DataFrame({"a": pd.Categorical(days), "b": [0, 1, 0, 1, 1]})
    ppgen.fit_mle(model, frame, progress=False)
    loaded = ppgen.load(ppgen.save(model, tmp_path / "days.safetensors"))
    assert coding(loaded)["a"] == ["2020-01-01", "2020-01-02", "2020-01-03"]
    with pytest.raises(ValueError, match=r"^Column 'a' has label datetime.date\(2020, 1, 1\) in "
                       r"row 0, which is not among its 3 categories: a saved model keeps labels "
                       r"that are neither numbers nor text as text, so give '2020-01-01'\.$"):  # fmt: skip
        ppgen.log_prob(loaded, frame)
    text = frame.assign(a=frame["a"].astype(str))
    assert torch.equal(ppgen.log_prob(loaded, text), ppgen.log_prob(model, frame))
