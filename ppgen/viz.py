r"""Drawings with matplotlib alone: a program's DAG in the textbook convention, fits, samples."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch import Tensor

from ppgen.graph import _graph, check_dag, factorization
from ppgen.layout import Layout, sugiyama
from ppgen.tracing import warn_shadowed

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.path import Path

    from ppgen.result import FitResult

__all__ = ["draw", "draw_history", "draw_sample_grids", "draw_samples", "layout"]

_UNIT = 0.4  # inches per node height, in a figure of its own
_FONT = 10.0  # points, for node names at that size; plate labels are 0.8 of it
_FACTOR = 0.16  # half the side of a factor's square, in node heights
_MAX_INCHES = 40.0  # the largest side of a figure of its own; larger graphs shrink
_MAX_AREA = 250.0  # square inches: a larger drawing shrinks (its raster's memory and time)
_LABELLED = 500  # nodes: larger graphs are drawn as collections, without names
_NOTE = 0.7  # the size of node annotations, relative to node names
_HEAD = (0.24, 0.09)  # an arrowhead's length and half-width, in node heights
_CHARS: dict[str, float] = {}


def _text_width(text: str, points: float = _FONT) -> float:
    """The width of `text` in matplotlib's default font, in node heights at full size."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    for c in set(text) - _CHARS.keys():
        prop = FontProperties(size=_FONT)
        _CHARS[c] = text_to_path.get_text_width_height_descent(c, prop, ismath=False)[0]
    return sum(_CHARS[c] for c in text) * points / _FONT / 72 / _UNIT


def _is_factor(data: dict) -> bool:
    return data.get("distribution") == "Unit"  # what pyro.factor samples


def _captions(g: nx.DiGraph, names: bool, annotate: bool) -> dict[Hashable, tuple[str, str]]:
    """Each node's name (or "") and annotation: its distribution and parameter count (or "")."""
    captions = {}
    for v, data in g.nodes(data=True):
        note = ""
        if annotate and not _is_factor(data):
            note = data.get("distribution") or ""
            count = data.get("n_params")
            note += f", {count} params" if count else ""
        captions[v] = (str(v) if names else "", note)
    return captions


def _widths(g: nx.DiGraph, captions: dict) -> dict:
    widths = {}
    for v, data in g.nodes(data=True):
        name, note = captions[v]
        if _is_factor(data):
            widths[v] = max(2 * _FACTOR, _text_width(name, 0.8 * _FONT))
        else:
            text = max(_text_width(name), _text_width(note, _NOTE * _FONT))
            widths[v] = max(1.0, (1.3 if note else 1.12) * text + 0.4)  # the text in the ellipse
    return widths


def _plate_labels(g: nx.DiGraph) -> dict[str, str]:
    sizes = g.graph.get("plates", {})
    used = {p for _, data in g.nodes(data=True) for p in data.get("plates", ())}
    return {p: f"{p} ({sizes[p]})" if sizes.get(p, 1) not in (None, 1) else str(p) for p in used}


def _lay_out(g: nx.DiGraph, captions: dict) -> Layout:
    plates = _plate_labels(g)
    return sugiyama(
        g,
        _widths(g, captions),
        labels={p: _text_width(text, 0.8 * _FONT) for p, text in plates.items()},
        label_height=0.8 * _FONT * 1.2 / 72 / _UNIT,
        factors={v for v, data in g.nodes(data=True) if _is_factor(data)},
        factor_size=_FACTOR,
    )


def _checked(g: object) -> nx.DiGraph:
    """`g` where it is a DAG whose nodes' `plates` are sequences of names (a multigraph's
    repeated edges made one), else a `ValueError`."""
    g = nx.DiGraph(g) if check_dag(g).is_multigraph() else g
    for v, plates in g.nodes(data="plates", default=()):
        if isinstance(plates, str | bytes) or not isinstance(plates, Iterable):
            raise ValueError(
                f"Node {v!r} has plates {plates!r}; give a tuple of plate names, e.g. ('rows',)."
            )
    return g


def layout(g: nx.DiGraph) -> dict[Hashable, tuple[float, float]]:
    r"""The centres of the nodes of a DAG as :func:`draw` places them, in node heights.

    Example:
        >>> pos = layout(nx.DiGraph([("a", "b")]))
        >>> (_, top), (_, bottom) = pos["a"], pos["b"]
        >>> top > bottom
        True
    """
    return _lay_out(_checked(g), _captions(g, True, False)).pos


def _edge_path(lay: Layout, edge: tuple) -> Path:
    """An edge's path: down through node bands, sideways on its tracks between layers, with
    rounded corners."""
    from matplotlib.path import Path

    (start, end), legs = lay.ports[edge], lay.legs[edge]
    vertices, codes = [start], [Path.MOVETO]
    for (xa, ya), (xb, yb), height in legs:
        if height is None:  # straight down
            continue
        turn = math.copysign(min(0.2, abs(xb - xa) / 2, (ya - yb) / 2), xb - xa)
        bend = abs(turn)
        vertices += [(xa, height + bend), (xa, height), (xa + turn, height), (xb - turn, height),
                     (xb, height), (xb, height - bend), (xb, yb)]  # fmt: skip
        codes += [Path.LINETO, Path.CURVE3, Path.CURVE3, Path.LINETO,
                  Path.CURVE3, Path.CURVE3, Path.LINETO]  # fmt: skip
    vertices.append((end[0], end[1] + _HEAD[0]))  # the arrowhead ends it
    codes.append(Path.LINETO)
    return Path(vertices, codes)


def _extent(lay: Layout, widths: dict) -> tuple[float, float, float, float]:
    xs = [x + s * widths[v] / 2 for v, (x, _) in lay.pos.items() for s in (-1, 1)]
    ys = [y + s / 2 for _, y in lay.pos.values() for s in (-1, 1)]
    xs += [x for box in lay.boxes for x in (box.x0, box.x1)]
    ys += [y for box in lay.boxes for y in (box.y0, box.y1)]
    return min(xs) - 0.3, max(xs) + 0.3, min(ys) - 0.3, max(ys) + 0.3


def _figure(extent: tuple, title: str | None) -> tuple[Axes, float]:
    """A figure sized to a drawing (shrunk past a size) with room for a wrapped title; the axes,
    and the drawing's scale (1 at full size)."""
    import matplotlib.pyplot as plt

    width, height = (extent[1] - extent[0]) * _UNIT, (extent[3] - extent[2]) * _UNIT
    scale = min(1.0, _MAX_INCHES / width, _MAX_INCHES / height, (_MAX_AREA / width / height) ** 0.5)
    width, height = width * scale, height * scale
    lines = []
    if title is not None:
        width = max(width, 3.0)
        lines = _wrap(title, width, _FONT)
    top = (len(lines) * 1.3 * _FONT / 72 + 0.15) if lines else 0.0
    figure = plt.figure(figsize=(width, height + top))
    ax = figure.add_axes((0.0, 0.0, 1.0, height / (height + top)))
    return ax, scale


def _wrap(text: str, inches: float, font: float) -> list[str]:
    """`text` wrapped to lines no wider than `inches` at `font` points, each line measured (a
    word wider than a line is cut)."""
    limit = 0.95 * inches / _UNIT  # in node heights, as _text_width measures
    lines, line = [], ""
    for word in text.split():
        while _text_width(word, font) > limit and len(word) > 1:  # cut where it still fits
            cut = next(k for k in range(len(word) - 1, 0, -1)
                       if k == 1 or _text_width(word[:k], font) <= limit)  # fmt: skip
            if line:
                lines.append(line)
            lines.append(word[:cut])
            line, word = "", word[cut:]
        joined = f"{line} {word}" if line else word
        if line and _text_width(joined, font) > limit:
            lines.append(line)
            joined = word
        line = joined
    return [*lines, line] if line else lines


def draw(
    model: Callable[..., object] | nx.DiGraph,
    *args: object,
    ax: Axes | None = None,
    title: bool = False,
    names: bool = True,
    annotate: bool = False,
    deterministic: bool = False,
    **kwargs: object,
) -> Axes:
    r"""Draws the DAG of a Pyro program: observed nodes shaded, latent nodes white, factors
    (`pyro.factor`) as small black squares, plates boxed.

    The layout is layered (see :mod:`ppgen.layout`): no edge passes over a node other than its
    ends, and each node lies inside exactly the boxes of its plates, crossing plates included
    (a plate that cannot be one rectangle is drawn as several boxes with the same label). In a
    figure of its own the drawing is sized to its content, up to 40 inches a side; a larger
    graph shrinks.

    Arguments:
        model: A Pyro program, or a graph returned by :func:`ppgen.graph`.
        args, kwargs: Inputs of `model`.
        ax: The axes to draw on; a new figure sized to the graph by default.
        title: Whether to show the factorisation as the title (wrapped to the figure's width).
        names: Whether to write node names. Past 500 nodes, nodes and edges are drawn as
            two matplotlib collections (gids `nodes` and `edges`), without names.
        annotate: Whether to write each node's distribution and parameter count (where ppgen's
            conditional made it) under its name.
        deterministic: Whether to draw the program's `pyro.deterministic` sites, dashed, with
            the edges into and out of them (see :func:`ppgen.graph`). A program's own parameter
            named as one of these options never gets it (a warning says so): bind it first
            with `functools.partial`.

    Returns:
        The `Axes`, whose patches have gids `"node:NAME"`, `"edge:U->V"` and `"plate:NAME"`.

    Example:
        >>> ax = draw(nx.DiGraph([("t0", "t1"), ("t1", "t2")]))
        >>> sorted(p.get_gid() for p in ax.patches if p.get_gid().startswith("node"))
        ['node:t0', 'node:t1', 'node:t2']
    """
    from matplotlib.transforms import TransformedPatchPath

    if isinstance(model, nx.Graph):
        g = _checked(model)
    else:
        warn_shadowed("draw", ["ax", "title", "names", "annotate", "deterministic"], model)
        g = _graph(model, args, kwargs, deterministic=deterministic)
    names = names and len(g) <= _LABELLED
    captions = _captions(g, names, annotate)
    lay = _lay_out(g, captions)
    widths = _widths(g, captions)
    extent = _extent(lay, widths)
    text = factorization(g) if title else None
    if ax is None:
        ax, scale = _figure(extent, text)
    else:
        box = ax.get_window_extent()
        inches = min(box.width / (extent[1] - extent[0]), box.height / (extent[3] - extent[2]))
        scale = inches / ax.figure.dpi / _UNIT
    style = {"scale": scale, "clip_path": TransformedPatchPath(ax.patch)}  # one clip for all
    if len(g) > _LABELLED:
        _draw_collections(ax, g, lay, widths, scale)
    else:
        _draw_nodes(ax, g, lay, widths, captions, style)
        _draw_edges(ax, g, lay, style)
    _draw_plates(ax, g, lay, style)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.axis("off")
    if text is not None:
        inches = ax.get_window_extent().width / ax.figure.dpi  # the figure's, in a figure of its own
        ax.set_title("\n".join(_wrap(text, max(inches, 3.0), _FONT)), fontsize=_FONT)
    return ax


def _draw_nodes(
    ax: Axes, g: nx.DiGraph, lay: Layout, widths: dict, captions: dict, style: dict
) -> None:
    """Each node as a patch (gid `node:NAME`): an ellipse, or a square for a factor."""
    from matplotlib.patches import Ellipse, Rectangle

    scale, clip = style["scale"], style["clip_path"]
    text = {"ha": "center", "zorder": 4, "clip_path": clip}
    for v, (x, y) in lay.pos.items():
        data, (name, note) = g.nodes[v], captions[v]
        if _is_factor(data):
            node = Rectangle((x - _FACTOR, y + 0.48 - 2 * _FACTOR), 2 * _FACTOR, 2 * _FACTOR,
                             facecolor="black", zorder=3, gid=f"node:{v}", clip_path=clip)  # fmt: skip
            if name:
                ax.text(x, y + 0.38 - 2 * _FACTOR, name, va="top", fontsize=0.8 * _FONT * scale,
                        **text)  # fmt: skip
        else:
            shade = "0.78" if data.get("observed", True) else "white"
            node = Ellipse((x, y), widths[v], 1.0, facecolor=shade, edgecolor="black",
                           linewidth=1.2 * min(scale, 1.0), zorder=3, gid=f"node:{v}",
                           clip_path=clip,
                           linestyle="--" if data.get("deterministic") else "-")  # fmt: skip
            if name:
                ax.text(x, y + 0.12 * bool(note), name, va="center", fontsize=_FONT * scale,
                        **text)  # fmt: skip
            if note:
                ax.text(x, y - 0.2 * bool(name), note, va="center", color="0.25",
                        fontsize=_NOTE * _FONT * scale, **text)  # fmt: skip
        ax.add_artist(node)  # (add_patch would compute limits, set once at the end, each time)


def _heads(lay: Layout) -> list[list[tuple[float, float]]]:
    """The arrowheads, as triangles pointing down at the edges' ends."""
    (length, half) = _HEAD
    return [
        [(x - half, y + length), (x + half, y + length), (x, y)] for _, (x, y) in lay.ports.values()
    ]


def _draw_edges(ax: Axes, g: nx.DiGraph, lay: Layout, style: dict) -> None:
    """Each edge as a patch (gid `edge:U->V`), and their arrowheads as one collection."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import PathPatch

    scale, clip = style["scale"], style["clip_path"]
    for u, v in g.edges:
        line = PathPatch(_edge_path(lay, (u, v)), facecolor="none", edgecolor="0.15",
                         linewidth=0.9 * min(scale, 1.0), zorder=2, gid=f"edge:{u}->{v}",
                         clip_path=clip)  # fmt: skip
        ax.add_artist(line)
    heads = PolyCollection(_heads(lay), facecolor="0.15", edgecolor="none", zorder=2,
                           gid="arrowheads")  # fmt: skip
    ax.add_collection(heads, autolim=False)


def _draw_collections(ax: Axes, g: nx.DiGraph, lay: Layout, widths: dict, scale: float) -> None:
    """Nodes, edges and arrowheads as three collections (gids `nodes`, `edges`, `arrowheads`),
    for large graphs: a patch each would cost a second per thousand; names left out."""
    from matplotlib.collections import EllipseCollection, PathCollection, PolyCollection

    nodes = list(lay.pos)
    factor = [_is_factor(g.nodes[v]) for v in nodes]
    shades = ["black" if f else "0.78" if g.nodes[v].get("observed", True) else "white"
              for v, f in zip(nodes, factor, strict=True)]  # fmt: skip
    heights = [2 * _FACTOR if f else 1.0 for f in factor]  # a factor as a small black disc
    centres = [(x, y + (0.48 - _FACTOR) * f) for (x, y), f in zip(lay.pos.values(), factor,
                                                                  strict=True)]  # fmt: skip
    ax.add_collection(EllipseCollection(
        [widths[v] for v in nodes], heights, [0.0] * len(nodes), units="xy", offsets=centres,
        offset_transform=ax.transData, facecolors=shades, edgecolors="black",
        linewidths=0.8 * scale, zorder=3, gid="nodes",
    ), autolim=False)  # fmt: skip
    paths = [_edge_path(lay, edge) for edge in g.edges]
    ax.add_collection(PathCollection(paths, facecolors="none", edgecolors="0.15",
                                     linewidths=0.6 * scale, zorder=2, gid="edges"),
                      autolim=False)  # fmt: skip
    ax.add_collection(PolyCollection(_heads(lay), facecolor="0.15", edgecolor="none", zorder=2,
                                     gid="arrowheads"), autolim=False)  # fmt: skip


def _draw_plates(ax: Axes, g: nx.DiGraph, lay: Layout, style: dict) -> None:
    """Each box of a plate as a patch (gid `plate:NAME`) with its label (a text of that gid)."""
    from matplotlib.patches import FancyBboxPatch

    scale, clip = style["scale"], style["clip_path"]
    labels = _plate_labels(g)
    for box in lay.boxes:
        patch = FancyBboxPatch(
            (box.x0, box.y0), box.x1 - box.x0, box.y1 - box.y0,
            boxstyle="round,pad=0,rounding_size=0.12", facecolor="none", edgecolor="0.3",
            linewidth=min(scale, 1.0), zorder=1, gid=f"plate:{box.plate}", clip_path=clip,
        )  # fmt: skip
        ax.add_artist(patch)
        ax.text(*box.label, labels[box.plate], ha="right", va="bottom", clip_path=clip,
                fontsize=0.8 * _FONT * scale, gid=f"plate:{box.plate}")  # fmt: skip


def draw_history(fit: FitResult, *, ax: Axes | None = None) -> Axes:
    r"""Plots a fit's history per epoch: the training and validation log-likelihood (or ELBO),
    or, for a fit whose terms are no one objective (a GAN's losses, its discriminator's
    judgement and its validation MMD²), each term.

    Example:
        >>> fit = ppgen.FitResult(history=[{"epoch": 1, "train": -2.0}, {"epoch": 2, "train": -1.5}])
        >>> draw_history(fit).get_ylabel()
        'nats per row'
        >>> gan = ppgen.FitResult(history=[{"epoch": 1, "train/loss_d": 1.3, "val/mmd": 0.1}])
        >>> [line.get_label() for line in draw_history(gan).lines]
        ['train/loss_d', 'val/mmd']
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [record["epoch"] for record in fit.history]
    summed = any(split in record for record in fit.history for split in ("train", "val"))
    if summed:
        curves = ["train", "val"]
    else:  # each term of each split, in the order first recorded
        curves = list(dict.fromkeys(k for r in fit.history for k in r if "/" in k))
    for curve in curves:
        values = [record.get(curve) for record in fit.history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, label=curve)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per row" if summed else "mean per row")
    ax.legend()
    return ax


def draw_samples(
    images: Tensor, shape: tuple[int, int], *, ax: Axes | None = None, columns: int = 10
) -> Axes:
    r"""Shows rows of flattened images as a grid.

    Arguments:
        images: Images of shape :math:`(N, H W)`.
        shape: The height and width :math:`(H, W)` of one image.
        ax: The axes to draw on.
        columns: Images per row of the grid.

    Example:
        >>> ax = draw_samples(torch.rand(20, 64), (8, 8))
        >>> ax.images[0].get_array().shape
        (17, 89)
    """
    import matplotlib.pyplot as plt

    height, width = shape
    count = len(images)
    rows = -(-count // columns)
    grid = torch.full((rows * (height + 1) - 1, columns * (width + 1) - 1), 0.25)  # light rules
    for i, image in enumerate(images.detach().cpu().reshape(count, height, width)):
        r, c = divmod(i, columns)
        grid[
            r * (height + 1) : r * (height + 1) + height, c * (width + 1) : c * (width + 1) + width
        ] = image
    if ax is None:
        _, ax = plt.subplots(figsize=(columns * 0.6, rows * 0.6))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    return ax


def draw_sample_grids(
    grids: dict[str, Tensor], shape: tuple[int, int], *, columns: int = 10, width: float = 6.0
) -> Figure:
    r"""Stacks titled grids of samples (:func:`draw_samples`) in one figure, each panel as tall
    as its rows of images, with no empty band between panels.

    Arguments:
        grids: Images of shape :math:`(N, H W)` by title.
        shape: The height and width :math:`(H, W)` of one image.
        columns: Images per row of each grid.
        width: The figure's width in inches.

    Example:
        >>> figure = draw_sample_grids({"a": torch.rand(20, 64), "b": torch.rand(5, 64)}, (8, 8))
        >>> [ax.get_title() for ax in figure.axes]
        ['a', 'b']
    """
    import matplotlib.pyplot as plt

    height, image_width = shape
    title = 0.3  # inches above each panel for its title
    per_row = width * (height + 1) / (columns * (image_width + 1) - 1)  # inches per row of images
    heights = [-(-len(images) // columns) * per_row for images in grids.values()]
    total = sum(heights) + title * len(grids)
    figure = plt.figure(figsize=(width, total))
    top = total
    for (name, images), panel in zip(grids.items(), heights, strict=True):
        top -= title + panel
        ax = figure.add_axes((0.0, top / total, 1.0, panel / total))
        draw_samples(images, shape, ax=ax, columns=columns)
        ax.set_title(name, fontsize=9)
    return figure
