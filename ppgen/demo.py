r"""`ppgen demo`: the classic models of the course notes on the embedded data, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyro
import pyro.distributions as dist

import ppgen
from ppgen.nn import Conditional, Root

__all__ = ["Relay", "run"]


class Relay(ppgen.Model):
    r"""The relay race of the course notes: :math:`p(t_0, t_1, t_2) = p(t_0) p(t_1 \mid t_0) p(t_2 \mid t_1)`.

    Example:
        >>> ppgen.factorization(Relay())
        'p(t0, t1, t2) = p(t0) p(t1 | t0) p(t2 | t1)'
    """

    def __init__(self, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.t0 = Root(dist.Normal)
        self.t1 = Conditional(dist.Normal, in_features=1, hidden=hidden)
        self.t2 = Conditional(dist.Normal, in_features=1, hidden=hidden)

    def forward(self, n: int = 1) -> None:
        with pyro.plate("race", n):
            t0 = pyro.sample("t0", self.t0())
            t1 = pyro.sample("t1", self.t1(t0))
            pyro.sample("t2", self.t2(t1))


def _output_folder(out: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"{out} already holds an earlier run; choose another --out or pass --force."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run(out: Path, *, force: bool = False, progress: bool = True) -> dict[str, object]:
    """Runs the demo, writing pictures, `results.json` and `report.md` to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    out = _output_folder(out, force)
    pyro.set_rng_seed(0)
    results: dict[str, object] = {}
    report = ["# ppgen demo", ""]

    relay = Relay()
    ax = ppgen.draw(relay, title=True)
    ax.figure.savefig(out / "relay_graph.png", dpi=120, bbox_inches="tight")
    results["relay"] = {"factorization": ppgen.factorization(relay)}
    report += ["## The relay race", "", f"`{ppgen.factorization(relay)}`", ""]
    report += ["![relay](relay_graph.png)", ""]

    sprinkler = ppgen.dag(
        [("season", "rain"), ("season", "sprinkler"), ("rain", "wet"), ("sprinkler", "wet"),
         ("wet", "slippery")],
        kinds={"season": "categorical", "rain": "tabular", "sprinkler": "tabular",
               "wet": "tabular", "slippery": "tabular"},
        cardinalities={"season": 4, "rain": 2, "sprinkler": 2, "wet": 2, "slippery": 2},
    )  # fmt: skip
    g = ppgen.graph(sprinkler)
    ax = ppgen.draw(g, title=True)
    ax.figure.savefig(out / "sprinkler_graph.png", dpi=120, bbox_inches="tight")
    params = {v: g.nodes[v]["n_params"] for v in g}
    results["sprinkler"] = {"factorization": ppgen.factorization(g), "n_params": params}
    report += ["## A tabular DAG built from an edge list", "", f"`{ppgen.factorization(g)}`", ""]
    report += [f"Free parameters per node: {params}", "", "![sprinkler](sprinkler_graph.png)", ""]

    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text("\n".join(report))
    if progress:
        print(f"ppgen demo: wrote {len(list(out.iterdir()))} files to {out}")
    return results


