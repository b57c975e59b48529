r"""`ppgen demo`: the classic models of the course notes on the embedded data, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyro
import pyro.distributions as dist
import torch

import ppgen
from ppgen.datasets import digits, relay_race, relay_race_program
from ppgen.models import FVSBN, MADE, NADE, VAE, Independent
from ppgen.nn import Conditional, Root
from ppgen.viz import draw_history, draw_sample_grids

if TYPE_CHECKING:
    from matplotlib.axes import Axes

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


_WRITES = {".png", ".json", ".md"}  # what a run writes, results.json and report.md among them


def _check_output_folder(out: Path, force: bool) -> None:
    """Refuses a folder that holds anything but an earlier run, and an earlier run without
    `force`; nothing is removed here."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose another --out.")
    entries = list(out.iterdir()) if out.exists() else []
    if not entries:
        return
    earlier = {"results.json", "report.md"} <= {e.name for e in entries} and all(
        e.is_file() and e.suffix in _WRITES for e in entries
    )
    if not earlier:
        other = [e.name for e in entries if not e.is_file() or e.suffix not in _WRITES]
        why = f"such as {other[0]}" if other else "it lacks results.json or report.md"
        raise FileExistsError(
            f"{out} holds files that are not a ppgen demo run ({why}); choose another --out."
        )
    if not force:
        raise FileExistsError(
            f"{out} already holds an earlier run; choose another --out or pass --force."
        )


def _save(ax: Axes, path: Path) -> str:
    import matplotlib.pyplot as plt

    ax.figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(ax.figure)
    return path.name


def _relay(out: Path, scale: float, progress: bool) -> tuple[dict[str, object], list[str]]:
    """Exact MLE of the relay race on draws from its known generator."""
    train, val = relay_race(int(5000 * scale), seed=1), relay_race(int(2000 * scale), seed=2)
    test = relay_race(int(5000 * scale), seed=3)
    model = Relay(hidden=(32, 32))
    fit = ppgen.fit_mle(model, train, val=val, epochs=int(40 * scale) or 1, batch_size=128,
                        lr=3e-3, patience=8, progress=progress)  # fmt: skip
    ours = ppgen.log_prob(model, test).mean().item()
    truth = ppgen.log_prob(relay_race_program, test).mean().item()
    graph = _save(ppgen.draw(pyro.condition(model, data=test), n=len(test["t0"]), title=True),
                  out / "relay_graph.png")  # fmt: skip
    curve = _save(draw_history(fit), out / "relay_history.png")
    results = {"factorization": ppgen.factorization(model), "test_log_likelihood": ours,
               "generator_log_likelihood": truth, "closed_form": fit.closed_form,
               "epochs": len(fit.history), "seconds": fit.seconds}  # fmt: skip
    report = [
        "## The relay race: exact maximum likelihood", "",
        f"`{results['factorization']}`; t0 solved in closed form, t1 and t2 by Adam on the exact "
        f"log-likelihood ({len(fit.history)} epochs, {fit.seconds:.1f} s).", "",
        f"Test log-likelihood {ours:.3f} nats/row; the true generator's {truth:.3f}.", "",
        f"![relay]({graph}) ![history]({curve})", "",
    ]  # fmt: skip
    return results, report


def _sprinkler(out: Path) -> tuple[dict[str, object], list[str]]:
    """Closed-form MLE of a tabular DAG built from an edge list, on draws from a known one."""
    edges = [("season", "rain"), ("season", "sprinkler"), ("rain", "wet"), ("sprinkler", "wet"),
             ("wet", "slippery")]  # fmt: skip
    kinds = dict.fromkeys(["season", "rain", "sprinkler", "wet", "slippery"], "tabular")
    cards = {"season": 4, "rain": 2, "sprinkler": 2, "wet": 2, "slippery": 2}
    truth, model = (
        ppgen.dag(edges, kinds=kinds, cardinalities=cards),
        ppgen.dag(edges, kinds=kinds, cardinalities=cards),
    )
    with torch.no_grad():
        for table in truth.conditionals:
            table.logits.normal_(0.0, 1.5)
    data, test = ppgen.sample(truth, 20000), ppgen.sample(truth, 5000)  # counting: unscaled
    fit = ppgen.fit_mle(model, data, progress=False)
    ours = ppgen.log_prob(model, test).mean().item()
    exact = ppgen.log_prob(truth, test).mean().item()
    g = ppgen.graph(pyro.condition(model, data=test), n=5000)
    picture = _save(ppgen.draw(g, title=True), out / "sprinkler_graph.png")
    counts = {v: g.nodes[v]["n_params"] for v in g}
    results = {"factorization": ppgen.factorization(g), "n_params": counts,
               "closed_form": fit.closed_form, "test_log_likelihood": ours,
               "generator_log_likelihood": exact}  # fmt: skip
    report = [
        "## A tabular DAG from an edge list: closed-form MLE", "",
        f"`{results['factorization']}`", "",
        f"Free parameters per node {counts} (the full joint table would need "
        f"{4 * 2**4 - 1}). Every node solved by counting; test log-likelihood {ours:.4f} "
        f"nats/row, the generating tables' {exact:.4f}.", "",
        f"![sprinkler]({picture})", "",
    ]  # fmt: skip
    return results, report


def _digits_models(out: Path, scale: float, progress: bool) -> tuple[dict[str, object], list[str]]:
    """The ladder of the notes on binarised digits: fully visible models and a VAE, each
    keeping its best epoch on 300 held-out training digits; the test digits scored once."""
    data = digits(val=300)
    epochs = max(1, int(60 * scale))
    rows, report = {}, ["## Binarised digits: the ladder of the notes", "",
                        f"Fitted on {len(data.train)} training digits; each model keeps the epoch "
                        f"best on {len(data.val)} held-out ones; then the {len(data.test)} test "
                        "digits are scored once.", "",
                        "| model | test NLL (nats/image) | epoch kept | epochs | seconds |",
                        "|---|---|---|---|---|"]  # fmt: skip
    grids = []
    visible = {"Independent": Independent(64), "FVSBN": FVSBN(64), "NADE": NADE(64),
               "MADE": MADE(64)}  # fmt: skip
    for name, model in visible.items():
        pyro.set_rng_seed(0)
        fit = ppgen.fit_mle(model, {"x": data.train}, val={"x": data.val}, epochs=epochs,
                            batch_size=100, lr=1e-2, progress=progress)  # fmt: skip
        nll = -ppgen.log_prob(model, {"x": data.test}).mean().item()
        samples = ppgen.sample(model, 30)["x"]
        rows[name] = {"test_nll": nll, "best_epoch": fit.best_epoch["all"],
                      "epochs": len(fit.history), "seconds": fit.seconds}  # fmt: skip
        grids.append((name, samples))
    pyro.set_rng_seed(0)
    vae = VAE(64, 8, hidden=(256,))
    fit = ppgen.fit_svi(vae, vae.guide, data.train, val=data.val, epochs=epochs * 2,
                        batch_size=100, lr=3e-3, progress=progress)  # fmt: skip
    curve = _save(draw_history(fit), out / "vae_history.png")
    nll = -vae.log_prob(data.test, num_samples=200).mean().item()
    rows["VAE (IWAE-200)"] = {"test_nll": nll, "best_epoch": fit.best_epoch["all"],
                              "epochs": len(fit.history), "seconds": fit.seconds}  # fmt: skip
    grids.append(("VAE", vae.decode(torch.randn(30, 8)).mean))
    for name, row in rows.items():
        report.append(
            f"| {name} | {row['test_nll']:.2f} | {row['best_epoch']} | {row['epochs']} "
            f"| {row['seconds']:.1f} |"
        )
    grid = _save(draw_sample_grids(dict(grids), data.shape, columns=15).axes[0],
                 out / "digits_samples.png")  # fmt: skip
    codes = vae.encode(data.test)
    report += ["", f"![samples]({grid})", "", f"The VAE's ELBO per image: ![VAE ELBO]({curve})", "",
               f"The VAE's 8-dim codes of the test images have shape {tuple(codes.shape)}.", ""]  # fmt: skip
    return rows, report


def run(
    out: Path, *, force: bool = False, progress: bool = True, scale: float = 1.0
) -> dict[str, object]:
    """Runs the demo, writing pictures, `results.json` and `report.md` to `out`.

    Arguments:
        out: The output folder: new, empty, or (with `force`) an earlier run's, which is
            replaced once the new run has finished. A folder holding other files is refused.
        force: Whether to replace an earlier run.
        progress: Whether to show progress bars and the results table.
        scale: Shrinks the data and epochs, at least 0.01 (e.g. 0.05 for a smoke test).

    Raises:
        ValueError: For a scale below 0.01.
        FileExistsError: For an output folder that is not new, empty or an earlier run (with
            `force`); nothing in it is touched.
    """
    import matplotlib

    if not scale >= 0.01:
        raise ValueError(f"The scale must be at least 0.01, not {scale}.")
    out = out.resolve()  # `.` has no name to put the new run beside
    _check_output_folder(out, force)
    matplotlib.use("Agg")
    final, out = out, out.parent / f".{out.name}.ppgen-demo-tmp"
    shutil.rmtree(out, ignore_errors=True)  # a crashed run's leftovers
    out.mkdir(parents=True)
    try:
        results = _run(out, progress, scale)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    final.mkdir(parents=True, exist_ok=True)  # kept, if there: it may be the working folder
    for entry in final.iterdir():  # an earlier run's files (checked above)
        entry.unlink()
    for entry in out.iterdir():
        entry.rename(final / entry.name)
    out.rmdir()
    if progress:
        print(f"ppgen demo: wrote {len(list(final.iterdir()))} files to {final}")
    return results


def _run(out: Path, progress: bool, scale: float) -> dict[str, object]:
    """The three stages, writing into `out`; their results."""
    pyro.set_rng_seed(0)
    results, report = {}, ["# ppgen demo", ""]
    for name, stage in [
        ("relay", lambda: _relay(out, scale, progress)),
        ("sprinkler", lambda: _sprinkler(out)),
        ("digits", lambda: _digits_models(out, scale, progress)),
    ]:
        results[name], lines = stage()
        report += lines
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text("\n".join(report))
    if progress:
        print(
            "\n".join(line for line in report if line.startswith("|") or line.startswith("Test"))
        )
    return results
