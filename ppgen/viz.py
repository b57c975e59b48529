r"""Drawings with matplotlib alone: a program's DAG in the textbook convention, fits, samples."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch import Tensor

from ppgen.graph import check_dag, factorization, graph

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ppgen.result import FitResult

__all__ = ["draw", "draw_history", "draw_samples", "layout"]

_GAP = 1.6  # distance between the centres of neighbouring nodes, in node heights


def layout(g: nx.DiGraph, *, sweeps: int = 4) -> dict[str, tuple[float, float]]:
    r"""Places nodes in layers by topological generation, top to bottom.

    Within a layer, nodes are ordered by the mean position of their neighbours (a few sweeps of
    the barycentre heuristic) to reduce crossings, and spaced by their label widths.

    Example:
        >>> pos = layout(nx.DiGraph([("a", "b")]))
        >>> (_, top), (_, bottom) = pos["a"], pos["b"]
        >>> top > bottom
        True
    """
    level = {v: i for i, layer in enumerate(nx.topological_generations(g)) for v in layer}
    for v in g:  # a source sits just above its highest child, not at the top of the page
        if g.in_degree(v) == 0 and g.out_degree(v) > 0:
            level[v] = min(level[c] for c in g.successors(v)) - 1
    layers = [[v for v in g if level[v] == i] for i in range(max(level.values()) + 1)]
    rank = {v: i for layer in layers for i, v in enumerate(layer)}

    def barycentre(v: str, neighbours: list[str]) -> float:
        return sum(rank[u] for u in neighbours) / len(neighbours) if neighbours else rank[v]

    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for layer in layers[1:] if down else layers[-2::-1]:
            near = g.predecessors if down else g.successors
            layer.sort(key=lambda v, near=near: barycentre(v, list(near(v))))
            rank.update((v, i) for i, v in enumerate(layer))
    pos = {}
    rise = _GAP * max(1.0, max(map(len, layers)) / 8)  # wide layers get room for their edges
    for depth, layer in enumerate(layers):
        widths = [_width(v) for v in layer]
        x = -(sum(widths) + _GAP * (len(layer) - 1)) / 2
        for v, w in zip(layer, widths, strict=True):
            pos[v] = (x + w / 2, -depth * rise)
            x += w + _GAP
    _clear_plates(g, layers, pos)
    return pos


def _clear_plates(
    g: nx.DiGraph, layers: list[list[str]], pos: dict[str, tuple[float, float]]
) -> None:
    """Moves each node that would fall inside the box of a plate it is not in to the right of
    that box, with the nodes after it in its layer; inner plates first, so that an outer box,
    drawn around its members wherever they end up, is cleared last."""
    inner: dict[str, int] = {}  # a plate's most plates inside it among its members, plus 1
    for _, data in g.nodes(data=True):
        nested = data.get("plates", ())
        for i, name in enumerate(nested):
            inner[name] = max(inner.get(name, 0), len(nested) - i)
    for name in sorted(inner, key=inner.__getitem__):
        members = [v for v in g if name in g.nodes[v].get("plates", ())]
        right = max(pos[v][0] + _width(v) / 2 for v in members) + _GAP  # room for the box's pad
        left = min(pos[v][0] - _width(v) / 2 for v in members) - _GAP
        top, bottom = max(pos[v][1] for v in members), min(pos[v][1] for v in members)
        for layer in layers:
            row = sorted(layer, key=lambda v: pos[v][0])
            if not row or not bottom <= pos[row[0]][1] <= top:
                continue
            free = right  # the left edge of the next node placed to the right of the box
            for v in row:
                x, y, half = *pos[v], _width(v) / 2
                if v not in members and left < x + half and x - half < right:  # in the box
                    pos[v], free = (free + half, y), free + 2 * half + _GAP
                elif x - half >= right:  # right of the box: pushed along where needed
                    x = max(x, free + half)
                    pos[v], free = (x, y), x + half + _GAP


def _width(label: str) -> float:
    return max(1.0, 0.22 * len(str(label)) + 0.3)


def _rim(
    centre: tuple[float, float], width: float, toward: tuple[float, float]
) -> tuple[float, float]:
    """The point where a node's ellipse (height 1) meets the ray from its centre `toward` a point."""
    dx, dy = toward[0] - centre[0], toward[1] - centre[1]
    t = 1 / math.hypot(dx / (width / 2), dy / 0.5)
    return centre[0] + t * dx, centre[1] + t * dy


def draw(
    model: Callable[..., object] | nx.DiGraph,
    *args: object,
    ax: Axes | None = None,
    title: bool = False,
    **kwargs: object,
) -> Axes:
    r"""Draws the DAG of a Pyro program: observed nodes shaded, latent nodes white, plates boxed.

    Arguments:
        model: A Pyro program, or a graph returned by :func:`ppgen.graph`.
        args, kwargs: Inputs of `model`.
        ax: The axes to draw on; a new figure sized to the graph by default.
        title: Whether to show the factorisation as the title.

    Returns:
        The `Axes`, whose patches have gids `"node:NAME"`, `"edge:U->V"` and `"plate:NAME"`.

    Example:
        >>> ax = draw(nx.DiGraph([("t0", "t1"), ("t1", "t2")]))
        >>> sorted(p.get_gid() for p in ax.patches if p.get_gid().startswith("node"))
        ['node:t0', 'node:t1', 'node:t2']
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse, FancyArrowPatch, FancyBboxPatch

    g = check_dag(model) if isinstance(model, nx.Graph) else graph(model, *args, **kwargs)
    pos = layout(g)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    span_x = max(xs) - min(xs) + max(_width(v) for v in g) + 2
    span_y = max(ys) - min(ys) + 3
    scale = min(1.0, 40 / span_x)  # a wide graph shrinks, in width, height and type alike
    if ax is None:
        inches = (max(3.0, span_x * 0.7 * scale), max(2.5, span_y * 0.7 * scale))
        _, ax = plt.subplots(figsize=inches)
    font = max(5.0, 11 * scale)
    for v, (x, y) in pos.items():
        observed = g.nodes[v].get("observed", True)
        ellipse = Ellipse(
            (x, y), _width(v), 1.0, facecolor="0.78" if observed else "white",
            edgecolor="black", linewidth=1.2 * scale, zorder=3, gid=f"node:{v}",
        )  # fmt: skip
        ax.add_patch(ellipse)
        ax.text(x, y, str(v), ha="center", va="center", fontsize=font, zorder=4)
    levels = sorted(set(ys))
    step = levels[1] - levels[0] if len(levels) > 1 else _GAP
    skips = 0
    for u, v in g.edges:
        # an edge that skips layers bends around the nodes in between, alternately left and
        # right, by about one node width whatever its length
        (x1, y1), (x2, y2) = pos[u], pos[v]
        length = math.hypot(x2 - x1, y2 - y1)
        bend = 0.0
        if y1 - y2 > step * 1.5:
            bend = min(0.5, 1.6 / length) * (1 if skips % 2 else -1)
            skips += 1
        control = ((x1 + x2) / 2 + bend * (y2 - y1), (y1 + y2) / 2 - bend * (x2 - x1))
        arrow = FancyArrowPatch(
            _rim(pos[u], _width(u), control), _rim(pos[v], _width(v), control),
            arrowstyle="-|>", mutation_scale=12 * scale, linewidth=scale, color="0.15",
            shrinkA=0, shrinkB=0, zorder=2, gid=f"edge:{u}->{v}",
            connectionstyle=f"arc3,rad={bend}",
        )  # fmt: skip
        ax.add_patch(arrow)
    sizes = g.graph.get("plates", {})
    depth = {}
    for name in sizes:  # inner plates are drawn tighter than the plates around them
        members = [v for v in g if name in g.nodes[v].get("plates", ())]
        depth[name] = min(g.nodes[v]["plates"].index(name) for v in members) if members else 0
    for name in sorted(sizes, key=depth.__getitem__):
        members = [v for v in g if name in g.nodes[v].get("plates", ())]
        if not members:
            continue
        inner = max(len(g.nodes[v]["plates"]) for v in members) - depth[name] - 1
        pad = 0.35 + 0.3 * inner
        x0 = min(pos[v][0] - _width(v) / 2 for v in members) - pad
        x1 = max(pos[v][0] + _width(v) / 2 for v in members) + pad
        y0 = min(pos[v][1] for v in members) - 0.5 - pad - 0.25
        y1 = max(pos[v][1] for v in members) + 0.5 + pad
        box = FancyBboxPatch(
            (x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0,rounding_size=0.15",
            facecolor="none", edgecolor="0.3", linewidth=1.0, zorder=1, gid=f"plate:{name}",
        )  # fmt: skip
        ax.add_patch(box)
        size = sizes[name]
        label = f"{name} ({size})" if size is not None and size > 1 else name
        ax.text(x1 - 0.12, y0 + 0.12, label, ha="right", va="bottom", fontsize=font * 0.8)
    margin = 1.0 + 0.3 * max(map(len, (d.get("plates", ()) for _, d in g.nodes(data=True))))
    ax.set_xlim(
        min(xs) - max(_width(v) for v in g) / 2 - margin,
        max(xs) + max(_width(v) for v in g) / 2 + margin,
    )
    ax.set_ylim(min(ys) - 0.5 - margin, max(ys) + 0.5 + margin)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        text = textwrap.fill(factorization(g), width=max(60, int(ax.bbox.width / font * 1.6)))
        ax.set_title(text, fontsize=font)
    return ax


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
