import json
import subprocess
import sys

import pytest

from ppgen.cli import main

MODEL = """
import pyro, pyro.distributions as dist
import ppgen
from ppgen.nn import Root, Conditional

class Chain(ppgen.Model):
    def __init__(self):
        super().__init__()
        self.a = Root(dist.Normal)
        self.b = Conditional(dist.Bernoulli, in_features=1, hidden=(4,))

    def forward(self, n=1):
        with pyro.plate("rows", n):
            a = pyro.sample("a", self.a())
            pyro.sample("b", self.b(a))
"""


def ppgen_command(*argv: str) -> subprocess.CompletedProcess:
    """Runs the `ppgen` command as a user would, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "ppgen.cli", *argv], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_version_is_printed():
    assert ppgen_command("--version").stdout.startswith("ppgen 0.")


def test_draw_writes_a_png(tmp_path):
    source = tmp_path / "chain.py"
    source.write_text(MODEL)
    target = tmp_path / "chain.png"
    run = ppgen_command("draw", f"{source}:Chain", "-o", str(target), "--arg", "n=3", "--title")
    assert run.returncode == 0, run.stderr
    assert target.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "spec,message",
    [("missing.py:Chain", "missing.py: no such file"), ("{src}:Nope", "defines no object named 'Nope'"),
     ("{src}", "expected path/to/file.py:Name")],
)  # fmt: skip
def test_draw_errors_are_one_line_with_exit_code_2(tmp_path, capsys, spec, message):
    source = tmp_path / "chain.py"
    source.write_text(MODEL)
    assert main(["draw", spec.format(src=source), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_demo_smoke_and_no_silent_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    run = ppgen_command("demo", "--out", str(out), "--scale", "0.02", "--quiet")
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "results.json").read_text(), parse_constant=pytest.fail)  # no inf
    assert set(results) == {"relay", "sprinkler", "digits"}
    assert results["relay"]["factorization"] == "p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)"
    for png in [
        "relay_graph.png",
        "relay_history.png",
        "sprinkler_graph.png",
        "digits_samples.png",
        "vae_history.png",
    ]:
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert "![relay](relay_graph.png)" in (out / "report.md").read_text()
    # the digits' epochs are chosen on held-out training digits, the test digits scored once
    assert "each model keeps the epoch best on 300 held-out" in (out / "report.md").read_text()
    assert all(1 <= row["best_epoch"] <= row["epochs"] for row in results["digits"].values())
    before = (out / "results.json").read_bytes()
    assert main(["demo", "--out", str(out), "--scale", "0.02", "--quiet"]) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    # a failing run with --force leaves the earlier one as it was
    assert main(["demo", "--out", str(out), "--scale", "0", "--force", "--quiet"]) == 2
    assert "The scale must be at least 0.01, not 0.0." in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary folder left


def test_demo_force_touches_no_folder_but_an_earlier_run(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    assert main(["demo", "--out", str(precious), "--force", "--scale", "0.02", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds files that are not a ppgen demo run (such as thesis.txt)" in err
    assert [p.name for p in precious.iterdir()] == ["thesis.txt"]
    assert (precious / "thesis.txt").read_text() == "years of work"


LATENT = """
import pyro, pyro.distributions as dist, torch
import ppgen

class Latent(ppgen.Model):
    def forward(self, n=1):
        with pyro.plate("rows", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0))

def model(n=1):
    with pyro.plate("rows", n):
        pyro.sample("x", dist.Normal(pyro.param("loc", torch.zeros(())), 1.0))

class Plain(pyro.nn.PyroModule):
    def forward(self, n=1):
        model(n)

class ReadsRows(ppgen.Model):
    def forward(self, x=None):
        with pyro.plate("rows", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
"""


@pytest.fixture
def chain_files(tmp_path):
    source = tmp_path / "chain.py"
    source.write_text(MODEL)
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n" + "".join(f"{i / 10},{i % 2}\n" for i in range(40)))
    return source, data


@pytest.mark.parametrize("stem", ["chain", "random"])  # a file named as a standard module
def test_fit_sample_info_round_trip(tmp_path, chain_files, stem):
    source, data = chain_files
    source = source.rename(source.with_stem(stem))
    out = tmp_path / "fit"
    run = ppgen_command("fit", f"{source}:Chain", "--data", str(data), "--epochs", "3",
                        "--out", str(out), "--quiet", "--device", "auto")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (out / "model.safetensors").is_file() and (out / "history.png").is_file()
    samples = tmp_path / "samples.csv"
    run = ppgen_command("sample", str(out), "-n", "25", "-o", str(samples), "--device", "cpu")
    assert run.returncode == 2 and "pass --model path/to/file.py:Chain" in run.stderr
    run = ppgen_command("sample", str(out), "-n", "25", "-o", str(samples), "--device", "cpu",
                        "--model", f"{source}:Chain")  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = samples.read_text().splitlines()
    assert lines[0] == "a,b" and len(lines) == 26
    run = ppgen_command("info", str(out))
    assert run.returncode == 0, run.stderr
    printed = run.stdout
    assert "p(a, b) = p(a) p(b | a)" in printed and "fit: 3 epochs" in printed
    assert "closed form: ['a']" in printed
    assert "a: Normal, observed" in printed and "b: Bernoulli, observed" in printed


@pytest.mark.parametrize(
    "command,message",
    [
        ("fit {src}:Chain --data {tmp}/no.csv --out {tmp}/o", "no.csv: no such file"),
        ("fit {src}:Nope --data {data} --out {tmp}/o", "defines no object named 'Nope'"),
        ("fit {src}:Chain --data {tmp}/bad.csv --out {tmp}/o", "Column 'c' is not a sample site"),
        ("fit {tmp}/latent.py:Latent --data {tmp}/x.csv --out {tmp}/o",
         "Site 'z' is not in the data: it is latent"),
        ("fit {tmp}/latent.py:model --data {tmp}/x.csv --out {tmp}/o",
         "latent.py: model is a function, not a ppgen.Model; `ppgen fit` saves a ppgen.Model"),
        ("fit {tmp}/latent.py:Plain --data {tmp}/x.csv --out {tmp}/o",
         "latent.py: Plain is not a ppgen.Model; `ppgen fit` saves a ppgen.Model"),
        ("sample {tmp}", "holds no model written by `ppgen fit`"),
        ("fit {src}:Chain --data {data} --out {tmp}/o --device gpu",
         "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', not 'gpu'"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_write_nothing(tmp_path, chain_files, command, message):
    source, data = chain_files
    (tmp_path / "bad.csv").write_text("a,b,c\n0.1,1,2\n")
    (tmp_path / "latent.py").write_text(LATENT)
    (tmp_path / "x.csv").write_text("x\n0.5\n1.5\n")
    run = ppgen_command(*command.format(src=source, data=data, tmp=tmp_path).split())
    assert run.returncode == 2
    err = run.stderr
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_an_error_raised_in_the_users_program_is_one_line_naming_its_line(tmp_path):
    (tmp_path / "latent.py").write_text(LATENT)
    (tmp_path / "x.csv").write_text("x\n0.5\n1.5\n")
    run = ppgen_command("fit", f"{tmp_path}/latent.py:ReadsRows", "--data", f"{tmp_path}/x.csv",
                        "--out", f"{tmp_path}/o")  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr == ("ppgen: error: TypeError at latent.py:21: object of type 'NoneType' "
                          "has no len() (--debug shows the traceback)\n")  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command,message",
    [
        ("draw {tmp}/broken.py:Model", "broken.py: running it raised SyntaxError"),
        ("draw {tmp}/needs.py:Needs", "Needs() cannot be built without arguments"),
        ("fit {src}:Chain --data {data} --out {tmp}/taken.txt", "taken.txt: is a file, not a"),
        ("info {tmp}/corrupt", "source.json: is not the JSON `ppgen fit` writes"),
        ("sample {tmp}/corrupt -o {tmp}/no/x.csv", "x.csv: its folder"),
        ("draw {src}:Chain -o {tmp}/no/g.png", "g.png: its folder"),
    ],
)  # fmt: skip
def test_input_errors_are_one_line_in_process(tmp_path, chain_files, capsys, command, message):
    source, data = chain_files
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "needs.py").write_text(MODEL + "\nclass Needs(Chain):\n    def __init__(self, k):\n"
                                       "        super().__init__()\n")  # fmt: skip
    (tmp_path / "taken.txt").write_text("keep me")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "source.json").write_text("{bad")
    assert main(command.format(src=source, data=data, tmp=tmp_path).split()) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert (tmp_path / "taken.txt").read_text() == "keep me" and not (tmp_path / "no").exists()


def test_demo_into_the_current_folder_and_a_folder_of_a_lone_results_file(tmp_path, monkeypatch,
                                                                          capsys):  # fmt: skip
    import ppgen.demo

    def run(out, progress, scale):  # the stages' output, without their minutes
        (out / "results.json").write_text("{}")
        (out / "report.md").write_text("# ppgen demo")
        return {}

    monkeypatch.setattr(ppgen.demo, "_run", run)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ".", "--quiet"]) == 0
    assert main(["demo", "--out", ".", "--force", "--quiet"]) == 0  # replaces the earlier run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json"]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "results.json").write_text("{}")
    assert main(["demo", "--out", str(lone), "--force", "--quiet"]) == 2
    assert "(it lacks results.json or report.md)" in capsys.readouterr().err
