"""An MkDocs hook: the site serves MathJax itself, so that its math renders offline.

MathJax comes from the `jupyter-server-mathjax` package (Jupyter's own offline copy, a
dependency of the `docs` extra); it is copied into the built site, never committed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig

TARGET = "javascripts/mathjax"


def on_post_build(config: MkDocsConfig, **kwargs: object) -> None:
    """Copies MathJax's scripts and fonts into `site_dir/javascripts/mathjax`."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    skip = shutil.ignore_patterns("*.md")
    shutil.copytree(source, Path(config.site_dir) / TARGET, ignore=skip, dirs_exist_ok=True)
