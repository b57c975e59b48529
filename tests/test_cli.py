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


def test_version_is_printed():
    out = subprocess.run([sys.executable, "-m", "ppgen.cli", "--version"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.startswith("ppgen 0.")


def test_draw_writes_a_png(tmp_path):
    source = tmp_path / "chain.py"
    source.write_text(MODEL)
    target = tmp_path / "chain.png"
    assert main(["draw", f"{source}:Chain", "-o", str(target), "--arg", "n=3", "--title"]) == 0
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
    assert main(["demo", "--out", str(out), "--scale", "0.02", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"relay", "sprinkler", "digits"}
    assert results["relay"]["factorization"] == "p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)"
    for png in [
        "relay_graph.png",
        "relay_history.png",
        "sprinkler_graph.png",
        "digits_samples.png",
    ]:
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    assert "![relay](relay_graph.png)" in (out / "report.md").read_text()
    before = (out / "results.json").read_bytes()
    assert main(["demo", "--out", str(out), "--scale", "0.02", "--quiet"]) == 2
    assert "already holds an earlier run" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
