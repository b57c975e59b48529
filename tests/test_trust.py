"""Data, files and folders a user can trust (issue 17): each class of defect, at the check where
data, files or folders enter. Test names start with the class that `benchmarks/reliability.py`
tallies: `silent` (a wrong number without a word), `code` (code run from a received file or
folder), `files` (files lost or overwritten), `resources` (memory or time the input does not
justify) and `messages` (one clear sentence instead of a traceback)."""

import pathlib
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
    with pytest.warns(UserWarning, match="Site 'b' has no maximum-likelihood estimate"):  # exact
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


def test_messages_sampling_labels_the_fit_never_saw_names_the_column():
    model = ppgen.dag([("a", "b")], kinds={"a": "categorical", "b": "normal"},
                      cardinalities={"a": 3})  # fmt: skip
    _refused(lambda: ppgen.sample(model, 200, as_frame=True, categories={"a": ["x", "y"]}),
             "Site 'a' drew code 2, but categories has 2 labels for column 'a'")  # fmt: skip
    frame = ppgen.sample(model, 200, as_frame=True, categories={"a": ["x", "y", "z"]})
    assert set(frame["a"]) == {"x", "y", "z"}


def test_messages_half_and_complex_tensors_are_refused_by_load(tmp_path):
    path = ppgen.save(ppgen.dag([("a", "b")], hidden=(3,)).half(), tmp_path / "h.safetensors")
    _refused(lambda: ppgen.load(path), "holds tensor .* of dtype F16, which ppgen never saves")
    model = Mean()
    model.register_buffer("z", torch.zeros(2, dtype=torch.complex64))
    path = ppgen.save(model, tmp_path / "c.safetensors")
    _refused(lambda: ppgen.load(path, classes=[Mean]), "of dtype C64, which ppgen never saves")


def test_messages_chain_counts_are_exact_for_many_variables():
    assert ppgen.count_parameters([2] * 16_000, "chain") == 2**16_000 - 1
    assert ppgen.count_parameters([3, 4, 5], "chain") == 2 + 3 * 3 + 4 * 12


CHAIN = """
import ppgen
class Chain(ppgen.builder.DAG):
    def __init__(self):
        super().__init__([("a", "b")], ["a", "b"], {"a": "normal", "b": "normal"}, {}, (3,))
"""

# -- code run from received files and folders ---------------------------------------------------

PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
import ppgen
class Chain(ppgen.Model):
    pass
"""


def _folder(tmp_path, model, target: str, **record) -> "pathlib.Path":
    """A folder as `ppgen fit` writes it (or as a stranger forges it)."""
    import json

    folder = tmp_path / "received"
    folder.mkdir()
    ppgen.save(model, folder / "model.safetensors")
    (folder / "source.json").write_text(json.dumps({"target": target, "kwargs": {},
                                                    "observed": ["a", "b"], **record}))  # fmt: skip
    return folder


def test_code_info_and_sample_run_no_file_the_folder_names(tmp_path, capsys):
    from ppgen.cli import main

    marker = tmp_path / "marker"
    (tmp_path / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    folder = _folder(tmp_path, ppgen.dag([("a", "b")], hidden=(3,)), f"{tmp_path}/planted.py:Chain")
    assert main(["info", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "p(a, b) = p(a) p(b | a)" in printed and "model: DAG" in printed
    assert main(["sample", str(folder), "-n", "5", "-o", str(tmp_path / "s.csv")]) == 0
    assert not marker.exists()  # the planted file never ran
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 6


class Writer(ppgen.Model):
    """A user's class whose constructor writes where its argument says."""

    def __init__(self, path=None):
        super().__init__()
        self.x = Root(dist.Normal)
        if path is not None:
            pathlib.Path(path).write_text("written")

    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", self.x())


def test_code_load_builds_only_classes_the_caller_names(tmp_path):
    from test_io import _forge

    path = ppgen.save(Writer(), tmp_path / "w.safetensors")
    victim = tmp_path / "victim"
    _forge(path, {"args": [str(victim)]})
    _refused(lambda: ppgen.load(path), "holds a Writer from module 'test_trust', which load "
             r"builds only when named: pass classes=\[Writer\]")  # fmt: skip
    assert not victim.exists()
    assert isinstance(ppgen.load(path, classes=[Writer]), Writer)  # the caller trusts it
    assert victim.read_text() == "written"


SWAPPED = {"on": False}


class Relay(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.first = Root(dist.Normal)
        self.second = ppgen.nn.Conditional(dist.Normal, in_features=1)

    def forward(self, n=1):
        names = ("t1", "t0") if SWAPPED["on"] else ("t0", "t1")  # a class edited after a save
        with pyro.plate("rows", n):
            t = pyro.sample(names[0], self.first())
            pyro.sample(names[1], self.second(t))


def test_code_load_checks_the_rebuilt_graph_against_the_recorded_one(tmp_path):
    path = ppgen.save(Relay(), tmp_path / "r.safetensors")
    assert isinstance(ppgen.load(path, classes=[Relay]), Relay)
    SWAPPED["on"] = True
    try:
        _refused(lambda: ppgen.load(path, classes=[Relay]), "records the graph t0->t1, but its "
                 "Relay now builds t1->t0: the class changed since the save")  # fmt: skip
    finally:
        SWAPPED["on"] = False


# -- files lost or overwritten --------------------------------------------------------------------


def test_files_a_link_planted_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    import os

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "m.safetensors"
    (tmp_path / f".m.safetensors.{os.getpid()}.tmp").symlink_to(victim)  # the old fixed name
    model = ppgen.dag([("a", "b")], hidden=(3,))
    ppgen.save(model, path)
    assert victim.read_text() == "keep me" and ppgen.load(path) is not None
    monkeypatch.setattr("secrets.token_hex", lambda n: "0" * 2 * n)  # a name guessed right
    (tmp_path / f".m.safetensors.{os.getpid()}.{'0' * 16}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        ppgen.save(model, path)
    assert victim.read_text() == "keep me"


def test_files_temporaries_of_killed_saves_are_swept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    left = tmp_path / f".m.safetensors.{dead}.0123456789abcdef.tmp"
    left.write_bytes(b"x" * 1000)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / f".m.safetensors.{dead}.tmp"
    link.symlink_to(victim)
    other = tmp_path / f".other.safetensors.{dead}.tmp"  # another file's: not ours to remove
    other.write_bytes(b"y")
    ppgen.save(ppgen.dag([("a", "b")]), tmp_path / "m.safetensors")
    assert not left.exists() and link.is_symlink() and victim.read_text() == "keep me"
    assert other.exists()


def test_files_fit_force_touches_no_folder_but_an_earlier_fit(tmp_path, capsys):
    from ppgen.cli import main

    source = tmp_path / "chain.py"
    source.write_text(CHAIN)
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n0.5,1.0\n1.5,2.0\n")
    project = tmp_path / "project"
    project.mkdir()
    for name, text in {"source.json": "{}", "thesis.txt": "years of work"}.items():
        (project / name).write_text(text)
    argv = ["fit", f"{source}:Chain", "--data", str(data), "--epochs", "1", "--quiet"]
    assert main([*argv, "--out", str(project), "--force"]) == 2
    assert "holds files that are not a ppgen fit (such as thesis.txt)" in capsys.readouterr().err
    assert (project / "source.json").read_text() == "{}"
    fitted = tmp_path / "fitted"
    assert main([*argv, "--out", str(fitted)]) == 0
    assert main([*argv, "--out", str(fitted)]) == 2  # an earlier fit, without --force
    assert main([*argv, "--out", str(fitted), "--force"]) == 0
    assert sorted(p.name for p in fitted.iterdir()) == ["history.png", "model.safetensors",
                                                        "source.json"]  # fmt: skip


# -- resources the input does not justify ---------------------------------------------------------


def test_resources_a_crafted_file_allocates_nothing_beyond_its_size(tmp_path):
    from test_io import _forge

    path = ppgen.save(ppgen.dag([("a", "b")], hidden=(3,)), tmp_path / "m.safetensors")
    args = ppgen.io.describe(path)["args"]  # edges, nodes, kinds, cardinalities, hidden
    _forge(path, {"args": [*args[:4], {"__tuple__": [7000, 7000]}]})  # 400 MB asked
    _refused(lambda: ppgen.load(path), "asks its constructor for tensors beyond what the file "
             r"holds \(\d+ bytes\)")  # fmt: skip


def test_resources_only_regular_files_are_read(tmp_path):
    import os

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    _refused(lambda: ppgen.load(fifo), "is not a regular file")  # opened without blocking
    endless = tmp_path / "zero.safetensors"
    endless.symlink_to("/dev/zero")
    _refused(lambda: ppgen.load(endless), "is not a regular file")
    _refused(lambda: ppgen.load(tmp_path), "is not a regular file")


def test_resources_a_huge_table_is_refused_naming_its_node():
    parents = [(f"p{i}", "x") for i in range(27)]
    kinds = {**{f"p{i}": "bernoulli" for i in range(27)}, "x": "tabular"}
    _refused(lambda: ppgen.dag(parents, kinds=kinds, cardinalities={"x": 2}),
             "Node 'x' would hold a table of 268,435,456 entries .2 values for each of "
             "134,217,728 parent configurations.")  # fmt: skip
    _refused(lambda: ppgen.nn.Tabular(3, [4096] * 2), "Tabular would hold a table of 50,331,648")


def test_resources_source_json_cannot_ask_for_rows(tmp_path, capsys):
    from ppgen.cli import main

    folder = _folder(tmp_path, ppgen.dag([("a", "b")]), "", kwargs={"n": 3e9})
    assert main(["sample", str(folder), "-o", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "names the number of rows 'n'" in err and err.count("\n") == 1


# -- one line, exit 2, for malformed command-line inputs ------------------------------------------


@pytest.mark.parametrize(
    "command,message",
    [
        ("sample {folder} -o {tmp}", "is a folder; name the file to write"),
        ("sample {folder} -o /dev/full", "No space left on device"),
        ("draw {tmp}/rows.csv:Chain", "expected a Python file (.py)"),
        ("info {tmp}/listed", "source.json: is not the JSON `ppgen fit` writes (not an object)"),
        ("info {tmp}/kwargs", "its 'kwargs' is not a dict"),
        ("info {tmp}/binary", "source.json: is not the JSON `ppgen fit` writes"),
        ("sample {tmp}/nomodel", "model.safetensors cannot be read"),
        ("fit {src}:Chain --data {tmp}/bad.npz --out {tmp}/o", "bad.npz: cannot be read as npz"),
        ("fit {src}:Chain --data {tmp}/rows.csv --out {tmp}/rows.csv/o", "is a file, not a folder"),
        ("sample {user} -o {tmp}/s.csv", "pass --model path/to/file.py:Writer"),
    ],
)  # fmt: skip
def test_messages_malformed_cli_inputs_are_one_line(tmp_path, capsys, command, message):
    from ppgen.cli import main

    folder = _folder(tmp_path, ppgen.dag([("a", "b")]), "")
    user = tmp_path / "user"
    user.mkdir()
    ppgen.save(Writer(), user / "model.safetensors")
    (user / "source.json").write_text("{}")
    source = tmp_path / "chain.py"
    source.write_text(CHAIN)
    (tmp_path / "rows.csv").write_text("a,b\n0.5,1.0\n")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    for name, text in {"listed": "[]", "kwargs": '{"kwargs": [1]}', "binary": "\udcff",
                       "nomodel": "{}"}.items():  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "source.json").write_text(text, errors="surrogateescape")
    argv = command.format(folder=folder, tmp=tmp_path, src=source, user=user).split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


# -- the property: the clean frame's answer, or one sentence naming the column ---------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LABELS = ["lo", "mid", "hi"]
DTYPES = {"a": ["float64", "int64", "bool", "boolean", "Int64"], "b": ["category", "object", "string"],
          "c": ["float64", "float32", "object"], "d": ["float64", "float32"]}  # fmt: skip
BAD = {"a": [2, 0.5, "yes", None, float("nan")], "b": ["purple", None],
       "c": ["61,5", float("nan"), float("inf"), None], "d": ["x", float("nan")]}  # fmt: skip


def _mixed_model() -> ppgen.builder.DAG:
    pyro.set_rng_seed(0)
    return ppgen.dag([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], cardinalities={"b": 3},
                     kinds={"a": "bernoulli", "b": "categorical", "c": "normal",
                            "d": "linear_gaussian"}, hidden=(3,))  # fmt: skip


def _clean(model, rows: int, seed: int) -> pd.DataFrame:
    pyro.set_rng_seed(seed)
    drawn = ppgen.sample(model, rows)
    return pd.DataFrame({
        "a": drawn["a"].numpy(),
        "b": pd.Categorical.from_codes(drawn["b"].long().numpy(), LABELS),
        "c": drawn["c"].float().double().numpy(),  # values float32 holds exactly
        "d": drawn["d"].float().double().numpy(),
    })  # fmt: skip


def _typed(column: pd.Series, dtype: str) -> pd.Series:
    if dtype == "object":
        return pd.Series(column.to_numpy(dtype=object), index=column.index, dtype=object)
    if dtype in ("int64", "Int64", "bool", "boolean"):
        return column.astype("int64").astype(dtype)
    return column.astype(dtype)


def _plant(column: pd.Series, row: int, bad: object) -> pd.Series:
    values = column.to_numpy(dtype=object, copy=True)
    values[row] = bad
    if isinstance(bad, float) and column.dtype.kind == "f":
        return pd.Series(values.astype(float), index=column.index)
    return pd.Series(values, index=column.index, dtype=object)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(st.data())
def test_silent_property_frames_answer_as_the_clean_frame_or_name_the_column(data):
    """Random frames (columns permuted, rows reordered and relabelled, mixed dtypes, as a
    DataFrame or a dict of Series each in its own order) with a few planted bad cells: the
    answer equals the clean frame's, row by row, or is one ValueError sentence naming a
    column holding a bad cell; never a third thing."""
    model = _mixed_model()
    rows = data.draw(st.integers(2, 12), "rows")
    clean = _clean(model, rows, data.draw(st.integers(0, 2**16), "seed"))
    expected = ppgen.log_prob(model, clean, categories={"b": LABELS})
    order = data.draw(st.permutations(range(rows)), "order")
    frame = clean.iloc[order]
    labels = data.draw(st.sampled_from(["range", "text", "shuffled"]), "index")
    index = {"range": range(rows), "text": [f"r{i}" for i in range(rows)],
             "shuffled": data.draw(st.permutations(range(100, 100 + rows)))}[labels]  # fmt: skip
    frame = frame.set_axis(list(index), axis=0)
    columns = data.draw(st.permutations(list("abcd")), "columns")
    frame = pd.DataFrame({c: _typed(frame[c], data.draw(st.sampled_from(DTYPES[c]), c))
                          for c in columns})  # fmt: skip
    planted = data.draw(st.lists(st.tuples(st.sampled_from(list("abcd")), st.integers(0, rows - 1)),
                                 max_size=2), "planted")  # fmt: skip
    for column, row in planted:
        frame[column] = _plant(frame[column], row, data.draw(st.sampled_from(BAD[column])))
    given_as = frame
    first = order
    if data.draw(st.booleans(), "dict of Series"):
        shuffles = {c: data.draw(st.permutations(range(rows))) for c in columns}
        given_as = {c: frame[c].iloc[shuffles[c]] for c in columns}
        first = [order[i] for i in shuffles[columns[0]]]
    try:
        answer = ppgen.log_prob(model, given_as, categories={"b": LABELS})
    except ValueError as error:
        text = str(error)
        named = set(re.findall(r"Columns? '(\w)'", text))
        assert planted and named & {c for c, _ in planted}, text
        assert "\n" not in text and "Traceback" not in text
        return
    assert not planted, f"bad cells {planted} were accepted"
    assert torch.equal(answer, expected[first])


def test_files_a_folder_is_held_by_one_process(tmp_path):
    import subprocess
    import sys

    from ppgen.io import exclusive

    with exclusive(tmp_path):
        _refused(lambda: exclusive(tmp_path).__enter__(), "is in use by another fit .process \\d+")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / ".ppgen.lock").write_text(dead)  # a killed fit's lock
    with exclusive(tmp_path) as lock:
        assert lock.read_text() != dead
    assert not (tmp_path / ".ppgen.lock").exists()
    # the checkpoint's identity is compared by the loop: tests/test_checkpoint.py


def test_resources_many_small_layers_are_refused_as_one_large_one(tmp_path):
    from test_io import _forge

    path = ppgen.save(ppgen.dag([("a", "b")], hidden=(3,)), tmp_path / "m.safetensors")
    args = ppgen.io.describe(path)["args"]
    _forge(path, {"args": [*args[:4], {"__tuple__": [2] * 20_000}]})  # 20,000 tiny layers
    _refused(lambda: ppgen.load(path), "asks its constructor for tensors beyond what the file")


def test_messages_forged_folder_descriptions_are_one_line(tmp_path, capsys):
    from ppgen.cli import main

    for i, graph in enumerate([{"nodes": {"a": 5}, "edges": []}, {"nodes": ["a"], "edges": [[1]]},
                               {"nodes": {"a": {}}, "edges": [["a", "z"]]}, [1, 2]]):  # fmt: skip
        folder = tmp_path / str(i)
        folder.mkdir()
        ppgen.save(ppgen.dag([("a", "b")]), folder / "model.safetensors")
        (folder / "source.json").write_text(__import__("json").dumps({"graph": graph}))
        assert main(["info", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("not one `ppgen fit` writes" in err
                                         or "is not a dict" in err), err  # fmt: skip
    folder = _folder(tmp_path, ppgen.dag([("a", "b")]), "", kwargs={"hidden": 3})
    assert main(["sample", str(folder), "-o", str(tmp_path / "s.csv")]) == 2
    assert "gives inputs the model does not take" in capsys.readouterr().err
