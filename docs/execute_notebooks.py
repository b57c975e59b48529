"""Executes the tutorials in place, so that the site shows their outputs (tables, graphs, curves).

    python docs/execute_notebooks.py                 # every notebook, at its full size
    python docs/execute_notebooks.py --smoke 03_*    # small sizes (the notebooks' `smoke_test`)

The site is built from the stored outputs (`execute: false`): building it runs no model. Each
executed notebook records the hash of its code in its metadata (`ppgen.code_sha256`) and the size it
ran at (a note under the title says when it is the small one); `tests/test_docs.py` fails when a code cell changed since, or when a cell that draws or
prints has no output.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTE = ("> The outputs on this page were stored at the notebook's small `smoke_test` size; run the "
        "notebook for the full-size results.")  # fmt: skip


def code_sha256(book: nbformat.NotebookNode) -> str:
    """The hash of the notebook's code cells, in order: what its stored outputs came from."""
    code = "\n\0".join(cell.source for cell in book.cells if cell.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def execute(path: Path, *, smoke: bool) -> float:
    """Runs `path` top to bottom in a fresh kernel and stores its outputs; returns the seconds."""
    book = nbformat.read(path, as_version=4)
    env = os.environ.copy()
    env.pop("MPLBACKEND", None)  # the kernel's inline backend stores the figures as PNGs
    env.pop("CI", None)
    if smoke:
        env["PPGEN_SMOKE"] = "1"
    else:
        env.pop("PPGEN_SMOKE", None)
    start = time.perf_counter()
    client = nbclient.NotebookClient(book, timeout=3600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    for cell in book.cells:  # tqdm's notice that this kernel has no widgets says nothing of ppgen
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if "IProgress not found" not in o.get("text", "")]
    book.metadata["ppgen"] = {"code_sha256": code_sha256(book), "size": "smoke" if smoke else "full"}
    book.cells = [cell for cell in book.cells if not cell.metadata.get("ppgen_size_note")]
    if smoke:  # the reader is told, under the title
        note = nbformat.v4.new_markdown_cell(NOTE, metadata={"ppgen_size_note": True})
        book.cells.insert(1, note)
    nbformat.write(book, path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", default=["*"], help="notebook names, globs allowed")
    parser.add_argument("--smoke", action="store_true", help="the notebooks' small sizes")
    options = parser.parse_args()
    paths = sorted({p for pattern in options.patterns for p in NOTEBOOKS.glob(pattern + ".ipynb")})
    for path in paths:
        print(f"{path.name}: {execute(path, smoke=options.smoke):.0f} s", flush=True)


if __name__ == "__main__":
    main()
