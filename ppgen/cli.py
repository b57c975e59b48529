r"""The `ppgen` command: a thin shell over the library's functions."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import io
import json
import re
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import networkx as nx

import ppgen
from ppgen.io import _replace
from ppgen.tracing import error_place

__all__ = ["main"]


class UsageError(Exception):
    """A mistake in the command's input, reported in one line with exit code 2."""


def load_object(spec: str, *, instantiate: bool = True) -> Callable[..., object]:
    r"""Loads `path/to/file.py:Name` and instantiates it when it is a class (and `instantiate`).

    Example:
        >>> load_object("missing.py:Model")
        Traceback (most recent call last):
        ...
        ppgen.cli.UsageError: missing.py: no such file.
    """
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise UsageError(f"{spec}: expected path/to/file.py:Name.")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file.")
    if file.suffix != ".py":
        raise UsageError(f"{path}: expected a Python file (.py) defining {name}.")
    module_spec = importlib.util.spec_from_file_location(_module_name(file), file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # so that ppgen.io.load finds the classes it defines
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's code: one line, the traceback with --debug
        del sys.modules[module_spec.name]
        raise UsageError(f"{path}: running it raised {type(error).__name__}: {error}") from error
    if not hasattr(module, name):
        raise UsageError(f"{path}: defines no object named {name!r}.")
    obj = getattr(module, name)
    if not (isinstance(obj, type) and instantiate):
        return obj
    try:
        return obj()
    except TypeError as error:
        raise UsageError(f"{path}: {name}() cannot be built without arguments: {error}") from error


def _module_name(file: Path) -> str:
    """The module name of a user's file: its stem, unless another module has that name (a file
    `random.py` must not stand in for the standard library's `random`)."""
    name = file.stem
    if name in sys.stdlib_module_names:
        return f"ppgen_model_{name}"
    known = sys.modules.get(name)
    if known is not None:
        origin = getattr(known, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return name  # no other module of that name
        origin = spec.origin
    return name if origin and Path(origin).resolve() == file.resolve() else f"ppgen_model_{name}"


def parse_args(pairs: Sequence[str]) -> dict[str, object]:
    """Parses `--arg key=value` pairs; values are Python literals where they parse as one."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--arg {pair}: expected key=value.")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def read_data(path: str) -> object:
    r"""Reads a data file: `.csv` or `.parquet` as a DataFrame, `.npz` as a dict of arrays.

    Example:
        >>> read_data("rows.txt")
        Traceback (most recent call last):
        ...
        ppgen.cli.UsageError: rows.txt: no such file.
    """
    import numpy as np
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{path}: no such file.")
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(file)
        if suffix == ".parquet":
            return pd.read_parquet(file)
        if suffix == ".npz":
            with open(file, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:
                return {name: arrays[name] for name in arrays.files}
    except ImportError as error:
        raise UsageError(
            f"{path}: reading it needs a package that is missing ({error})."
        ) from None
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path}: cannot be read as {suffix[1:]}: {error}") from None
    raise UsageError(f"{path}: expected a .csv, .parquet or .npz file.")


def _record(folder: str) -> dict[str, object]:
    """The `source.json` that `ppgen fit` wrote in `folder`, checked as data: nothing it names
    is imported or run."""
    source = Path(folder) / "source.json"
    if not source.is_file():
        raise UsageError(f"{folder}: holds no model written by `ppgen fit` (no source.json).")
    if source.stat().st_size > _MAX_RECORD:
        raise UsageError(f"{source}: is {source.stat().st_size} bytes, not the JSON `ppgen fit` writes.")
    try:
        record = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise UsageError(f"{source}: is not the JSON `ppgen fit` writes ({error}).") from None
    kinds = {"target": str, "kwargs": dict, "observed": list, "graph": dict, "parameters": int}
    if not isinstance(record, dict):
        raise UsageError(f"{source}: is not the JSON `ppgen fit` writes (not an object).")
    for key, kind in kinds.items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise UsageError(f"{source}: its {key!r} is not a {kind.__name__}, as `ppgen fit` writes.")
    if "n" in record.get("kwargs", {}):
        raise UsageError(f"{source}: names the number of rows 'n' among the model's inputs; "
                         "`ppgen fit` never writes it.")  # fmt: skip
    return record


_MAX_RECORD = 1 << 20  # bytes of a source.json: a few lines, or the graph of a large model


def _model_file(folder: str) -> Path:
    return Path(folder) / "model.safetensors"


def _fit(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from ppgen import distributed
    from ppgen.io import save

    out = Path(args.out)
    _check_fit_folder(out, args.force)
    model = load_object(args.target)
    _check_savable(model, args.target)
    data, kwargs = read_data(args.data), parse_args(args.arg)
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    options = {k: v for k, v in given.items() if v is not None}  # else the fit's own defaults
    options["progress"], options["device"] = not args.quiet, args.device
    if args.guide is None:
        fit = ppgen.fit_mle(model, data, **options, **kwargs)
    else:
        guide = args.guide if args.guide.startswith("auto_") else load_object(args.guide)
        fit = ppgen.fit_svi(model, guide, data, elbo=args.elbo, **options, **kwargs)
    if not distributed.is_writer():  # under torchrun, rank 0 alone writes
        return
    out.mkdir(parents=True, exist_ok=True)
    _check_fit_folder(out, args.force)  # again: nothing appeared there during the fit
    save(model, out / "model.safetensors", fit=fit)
    path, _, name = args.target.rpartition(":")
    target = f"{Path(path).resolve()}:{name}"
    observed = list(data.columns) if hasattr(data, "columns") else list(data)
    record = {"target": target, "kwargs": kwargs, "observed": observed,
              "graph": _graph_record(model, kwargs), "parameters": ppgen.count_parameters(model)}  # fmt: skip
    _replace(out / "source.json", json.dumps(record).encode())
    figure = ppgen.viz.draw_history(fit).figure
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110, bbox_inches="tight")
    _replace(out / "history.png", png.getvalue())
    last = fit.history[-1] if fit.history else {}
    print(f"fitted in {fit.seconds:.1f} s; train {last.get('train', float('nan')):.4f} nats/row; "
          f"closed form: {', '.join(fit.closed_form) or 'none'}; wrote {out}")  # fmt: skip


def _check_savable(model: object, target: str) -> None:
    """Refuses, before any fit, a target that `ppgen.save` cannot write: not a `ppgen.Model`."""
    if isinstance(model, ppgen.Model):
        return
    path, _, name = target.rpartition(":")
    what = "a function, not" if inspect.isfunction(model) else "not"
    raise UsageError(
        f"{path}: {name} is {what} a ppgen.Model; `ppgen fit` saves a ppgen.Model, which records its "
        "constructor's arguments, so derive it from ppgen.Model (or fit it in Python with "
        "ppgen.fit_mle or ppgen.fit_svi)."
    )


_FIT_WRITES = {"model.safetensors", "source.json", "history.png"}


def _check_fit_folder(out: Path, force: bool) -> None:
    """Refuses a folder that holds anything but an earlier fit (files that `ppgen fit` writes,
    not links), and an earlier fit without `force`; nothing is removed here."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == out else f" {existing}"
        raise UsageError(f"{out}:{where} is a file, not a folder; choose another --out.")
    entries = list(out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    temporary = re.compile(r"\.(model\.safetensors|source\.json|history\.png)\.\d+(\.[0-9a-f]+)?\.tmp")
    other = [e.name for e in entries if e.is_symlink() or not e.is_file()
             or not (e.name in _FIT_WRITES or temporary.fullmatch(e.name))]  # fmt: skip
    if other or "source.json" not in {e.name for e in entries}:
        why = f"such as {other[0]}" if other else "it lacks source.json"
        raise UsageError(f"{out}: holds files that are not a ppgen fit ({why}); choose another --out.")
    if not force:
        raise UsageError(f"{out}: already holds a fit; choose another --out or pass --force.")


def _graph_record(model: Callable[..., object], kwargs: dict[str, object]) -> dict | None:
    """The graph that `ppgen info` prints, recorded at the fit (info runs no model)."""
    try:
        g = ppgen.graph(model, **kwargs)
    except (TypeError, ValueError, RuntimeError):
        return None
    nodes = {str(v): {"distribution": a["distribution"], "n_params": a["n_params"]}
             for v, a in g.nodes(data=True)}  # fmt: skip
    return {"nodes": nodes, "edges": [[str(u), str(v)] for u, v in g.edges]}


def _output_file(path: str) -> Path:
    """The file a command writes, in a folder that exists."""
    file = Path(path)
    if not file.parent.is_dir():
        raise UsageError(f"{path}: its folder {file.parent} does not exist.")
    if file.is_dir():
        raise UsageError(f"{path}: is a folder; name the file to write.")
    return file


def _sample(args: argparse.Namespace) -> None:
    from ppgen.io import describe, load

    output = _output_file(args.output)
    record, path = _record(args.folder), _model_file(args.folder)
    description = describe(path)
    name = str(description.get("class"))
    classes = []
    if not (name.startswith("ppgen.") or args.model):
        qualname = name.partition(":")[2]
        raise UsageError(
            f"{args.folder}: holds a {_printable(qualname)} of your own; pass --model "
            f"path/to/file.py:{_printable(qualname)} to rebuild it (ppgen runs no file a folder names)."
        )
    if args.model:
        classes.append(load_object(args.model, instantiate=False))
    model = load(path, classes=classes)  # it keeps its labels' coding
    try:
        frame = ppgen.sample(model, args.n, as_frame=True, device=args.device,
                             **record.get("kwargs", {}))  # fmt: skip
    except TypeError as error:  # inputs the model does not take
        raise UsageError(f"{args.folder}: its source.json gives inputs the model does not take "
                         f"({error}).") from None  # fmt: skip
    frame.to_csv(output, index=False)
    print(f"wrote {args.n} rows to {args.output}")


def _printable(text: object) -> str:
    """Text from a received file, with what a terminal would act on escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _info(args: argparse.Namespace) -> None:
    from ppgen.io import describe

    record = _record(args.folder)
    description = describe(_model_file(args.folder))  # read and checked, nothing built
    print(f"model: {_printable(str(description.get('class')).partition(':')[2])}")
    g, nodes = _described(record.get("graph") or description.get("graph"), args.folder)
    if nodes:
        print(_printable(ppgen.factorization(g)))
    observed = record.get("observed")  # the fitted columns
    for node, attributes in nodes.items():
        kind = "observed" if observed is None or node in observed else "latent"
        shown = f"{attributes.get('distribution', '?')}, {kind}, n_params={attributes.get('n_params', '?')}"
        print(_printable(f"  {node}: {shown}"))
    if record.get("parameters") is not None:
        print(f"parameters: {record['parameters']}")
    fit = description.get("fit")
    history = fit.get("history") if isinstance(fit, dict) else None
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        last = history[-1]
        shown = ", ".join(f"{k}={v:.4f}" for k, v in last.items()
                          if k in ("train", "val") and isinstance(v, float | int))  # fmt: skip
        print(_printable(f"fit: {len(history)} epochs, {shown}, closed form: {fit.get('closed_form')}"))


def _described(graph: object, folder: str) -> tuple[nx.DiGraph, dict[str, dict]]:
    """The graph a folder describes (its nodes' attributes too, as `ppgen fit` records them),
    checked as data."""
    if graph is None:
        return nx.DiGraph(), {}
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    edges = graph.get("edges") if isinstance(graph, dict) else None
    if isinstance(nodes, list):
        nodes = {v: {} for v in nodes}
    well_formed = (
        isinstance(nodes, dict) and isinstance(edges, list)
        and all(isinstance(v, str) and isinstance(a, dict) for v, a in nodes.items())
        and all(isinstance(e, list) and len(e) == 2 and set(e) <= set(nodes) for e in edges)
    )  # fmt: skip
    if not well_formed:
        raise UsageError(f"{folder}: describes a graph that is not one `ppgen fit` writes.")
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(map(tuple, edges))
    return g, nodes


def _draw(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    output = _output_file(args.output)
    model = load_object(args.target)
    ax = ppgen.draw(model, title=args.title, **parse_args(args.arg))
    ax.figure.savefig(output, dpi=120, bbox_inches="tight")
    print(f"wrote {args.output}")


def _demo(args: argparse.Namespace) -> None:
    from ppgen.demo import run

    run(Path(args.out), force=args.force, progress=not args.quiet, scale=args.scale)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="ppgen", description=ppgen.__doc__)
    parser.add_argument("--version", action="version", version=f"ppgen {ppgen.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="fit and draw the classic models on embedded data")
    demo.add_argument("--out", default="ppgen-out", help="output folder (default: ppgen-out)")
    demo.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--scale", type=float, default=1.0, help="shrink data and epochs, e.g. 0.05")
    demo.set_defaults(run=_demo)

    draw = commands.add_parser("draw", help="draw the DAG of a model in a Python file")
    draw.add_argument("target", help="path/to/file.py:ModelOrFunction")
    draw.add_argument("-o", "--output", default="graph.png", help="the PNG to write")
    draw.add_argument("--arg", action="append", default=[], help="an input: key=value")
    draw.add_argument("--title", action="store_true", help="show the factorisation as title")
    draw.set_defaults(run=_draw)

    fit = commands.add_parser("fit", help="fit a model in a Python file to a data file")
    fit.add_argument("target", help="path/to/file.py:Model")
    fit.add_argument(
        "--data", required=True, help="a .csv, .parquet or .npz file, one column per site"
    )
    fit.add_argument("--guide", help="auto_normal, auto_delta or path/to/file.py:guide (then SVI)")
    fit.add_argument(
        "--elbo",
        choices=["trace", "mean_field", "trace_enum", "trace_graph", "iwae"],
        help="default: trace_enum where a site is enumerated, else trace",
    )
    fit.add_argument("--epochs", type=int, help="default: fit_mle's 100, fit_svi's 200")
    fit.add_argument("--batch-size", type=int, help="default: fit_mle's 256, fit_svi's 64")
    fit.add_argument("--lr", type=float, help="default: 1e-3")
    fit.add_argument("--arg", action="append", default=[], help="a model input: key=value")
    fit.add_argument("--out", required=True, help="the folder for the fitted model")
    fit.add_argument("--force", action="store_true", help="overwrite an existing folder")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--device", help="cpu, cuda or auto (default: cpu)")
    fit.set_defaults(run=_fit)

    sample = commands.add_parser("sample", help="draw rows from a model saved by `ppgen fit`")
    sample.add_argument("folder", help="the folder written by `ppgen fit`")
    sample.add_argument("-n", type=int, default=1000, help="the number of rows")
    sample.add_argument("-o", "--output", default="samples.csv", help="the CSV to write")
    sample.add_argument("--device", help="cpu, cuda or auto (default: cpu)")
    sample.add_argument("--model", help="path/to/file.py:Model, the class of a model of your own")
    sample.set_defaults(run=_sample)

    info = commands.add_parser(
        "info", help="graph, factorisation, counts and fit of a saved model"
    )
    info.add_argument("folder", help="the folder written by `ppgen fit`")
    info.set_defaults(run=_info)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ValueError, OSError) as error:  # a full disk, a denied write too
        if args.debug:
            raise
        print(f"ppgen: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # raised in a user's file (or a bug): one line, then --debug
        if args.debug:
            raise
        place = error_place(error)
        text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
        where = f" at {place}" if place else ""
        print(f"ppgen: error: {type(error).__name__}{where}: {text} (--debug shows the "
              "traceback)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
