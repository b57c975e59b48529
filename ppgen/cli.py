r"""The `ppgen` command: a thin shell over the library's functions."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import ppgen

__all__ = ["main"]


class UsageError(Exception):
    """A mistake in the command's input, reported in one line with exit code 2."""


def load_object(spec: str) -> Callable[..., object]:
    r"""Loads `path/to/file.py:Name` and instantiates it when it is a class.

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
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise UsageError(f"{path}: defines no object named {name!r}.")
    obj = getattr(module, name)
    return obj() if isinstance(obj, type) else obj


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


def _draw(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    model = load_object(args.target)
    ax = ppgen.draw(model, title=args.title, **parse_args(args.arg))
    ax.figure.savefig(args.output, dpi=120, bbox_inches="tight")
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

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ValueError, FileExistsError) as error:
        if args.debug:
            raise
        print(f"ppgen: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
