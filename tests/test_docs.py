"""The built site shows what it documents: rendered docstrings, tutorials with their outputs,
images and scripts served from the site itself (math renders offline)."""

import base64
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ROLE = re.compile(r":(?:math|func|class|meth|attr|mod|data|obj|exc):`|\.\. math::")
# a cell whose code draws or prints: its outputs are what the reader comes for
SHOWS = re.compile(r"\bprint\(|\bdraw\w*\(|\bplt\.|\bax\.(?:hist|scatter|plot|boxplot)\(")


def _script(path):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_become_math_cross_references_and_code_blocks():
    griffe = pytest.importorskip("griffe")
    roles = _script("docs/hooks/roles.py")
    code = 'def f():\n    """Doc."""\n\n\ndef g():\n    """Doc."""\n'
    text = ":func:`g`, :class:`~a.b.C`, :math:`x^2`\n\n.. math::\n    y = 1\n\nExample:\n    >>> 1"
    with griffe.temporary_visited_module(code) as module:
        assert roles.rewrite(text, module["f"]) == (
            '<autoref identifier="module.g" optional><code>g</code></autoref>, '
            '<autoref identifier="a.b.C" optional><code>C</code></autoref>, $x^2$'
            "\n\n\n$$\ny = 1\n$$\n\n\nExamples:\n    >>> 1"
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for package in ("mkdocs", "mkdocs_jupyter", "mkdocstrings", "jupyter_server_mathjax"):
        pytest.importorskip(package)  # the docs extra
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
                   cwd=ROOT, env=env, check=True)  # fmt: skip
    return out


def _pages(site):
    return {path: path.read_text() for path in site.rglob("*.html")}


def _text(page):
    """The visible text of a page outside code, without its scripts and styles."""
    page = re.sub(r"<(script|style|pre|code)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_docstrings_render_without_raw_roles_or_run_on_examples(site):
    pages = _pages(site)
    api = {path: page for path, page in pages.items() if "api" in path.parts}
    assert len(api) >= 8
    for path, page in pages.items():
        text = _text(page)
        assert not ROLE.search(text), f"{path}: {ROLE.search(text)[0]!r} left raw"
        assert ">>>" not in text, f"{path}: a >>> example outside a code block"
    # roles became math and links: the importance bound is typeset, fit_mle's Returns links
    assert 'class="arithmatex"' in pages[site / "api" / "density" / "index.html"]
    assert re.search(r'<a[^>]+href="[^"]*#ppgen\.result\.FitResult"', api[site / "api" / "infer" / "index.html"])


def test_every_image_and_script_is_served_by_the_site(site):
    assert (site / "javascripts" / "mathjax" / "MathJax.js").is_file()
    for path, page in _pages(site).items():
        for tag, url in re.findall(r'<(img|script)\b[^>]*?\bsrc="([^"]*)"', page):
            if url.startswith("data:") or not url:
                continue
            assert not re.match(r"[a-z]+://|//", url), f"{path}: {tag} from {url}, not the site"
            base = site if url.startswith("/") else path.parent  # 404.html links from the root
            assert (base / url.split("?")[0].lstrip("/")).is_file(), f"{path}: {url} missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_pages_show_the_outputs_of_their_code(path, site):
    nbformat = pytest.importorskip("nbformat")
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)  # a stored notebook that Jupyter and ruff can read
    stored = book.metadata.get("ppgen", {})
    assert stored.get("code_sha256") == _script("docs/execute_notebooks.py").code_sha256(book), (
        f"{path.name} changed since its outputs were stored: run docs/execute_notebooks.py")
    notes = [cell for cell in book.cells if cell.metadata.get("ppgen_size_note")]
    assert len(notes) == (stored["size"] == "smoke"), f"{path.name}: its size note is wrong"
    page = (site / "tutorials" / path.stem / "index.html").read_text()
    for cell in book.cells:
        if cell.cell_type != "code" or not SHOWS.search(cell.source):
            continue
        assert cell.outputs, f"{path.name}: no output stored for\n{cell.source}"
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name}: an error in\n{cell.source}"
            data = output.get("data", {})
            if "image/png" in data:  # the picture itself is in the page
                png = data["image/png"].replace("\n", "")
                assert base64.b64decode(png[:64])[:4] == b"\x89PNG"
                assert png[:200] in page, f"{path.name}: a figure missing from the page"
            text = output.get("text") or data.get("text/plain", "")
            line = next((s.strip() for s in text.splitlines() if s.strip()), "")
            if line and "image/png" not in data:
                assert html.escape(line, quote=False)[:60] in page, f"{path.name}: {line!r}"
