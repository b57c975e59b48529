r"""A layered (Sugiyama) layout of a DAG with plates, true by construction.

Nodes sit in layers, top to bottom; an edge that skips layers passes through one thin virtual
slot in each layer between its ends, and the order within layers comes from barycentre sweeps.
Nodes in the same plates (the same *signature*) share a column band that runs through every
layer; bands are ordered so that each plate's bands are contiguous where possible, so a plate is
one rectangle around its bands (a plate whose bands cannot be made contiguous gets one box per
run of bands, each with its label). A box therefore holds exactly the nodes of its plate, and
two crossing plates overlap exactly where the nodes in both lie. Box edges and labels lie in the
gutters between bands and between layers, each label in a row of its own; an edge runs straight
down through node bands (from a port on its node, or through its virtual slot) and curves only
in the gutters between layers, where no node is.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Hashable
from dataclasses import dataclass, field

import networkx as nx

__all__ = ["Box", "Layout", "sugiyama"]

_NODE_GAP = 0.9  # the space between two neighbouring nodes of a layer, in node heights
_SLOT_GAP = 0.35  # between a node and an edge passing through its layer, or two such edges
_PAD = 0.2  # from a node to the innermost box around it
_STEP = 0.22  # between the edges of two boxes that share a side
_ROOM = 0.9  # the least height of a gutter left to the edges' sideways runs
_TRACK = 0.14  # between two sideways runs of edges in a gutter
_CLEAR = 0.1  # how far an edge's straight part reaches out of a layer's band of nodes
_SWEEPS = 8


@dataclass
class Box:
    """One rectangle of a plate, with its label's anchor (the label's bottom-right corner)."""

    plate: str
    x0: float
    y0: float
    x1: float
    y1: float
    label: tuple[float, float]


@dataclass
class Layout:
    """Node centres; each edge as its ports and its legs between layers; boxes.

    An edge `(u, v)` is drawn from `ports[u, v][0]` straight down to the start of its first leg,
    along each leg, straight down between legs, and from the end of the last leg straight down
    to `ports[u, v][1]`. A leg `(start, end, height)` goes down from `start`, sideways at
    `height` (a track no other leg's sideways run overlaps), and down to `end`; a leg with
    height `None` is vertical.
    """

    pos: dict[Hashable, tuple[float, float]]
    ports: dict[tuple[Hashable, Hashable], tuple[tuple[float, float], tuple[float, float]]]
    legs: dict[tuple[Hashable, Hashable], list[tuple[tuple, tuple, float | None]]]
    boxes: list[Box] = field(default_factory=list)


def _levels(g: nx.DiGraph) -> dict[Hashable, int]:
    """Topological generations, with each source just above its highest child."""
    level = {v: i for i, layer in enumerate(nx.topological_generations(g)) for v in layer}
    for v in g:
        if g.in_degree(v) == 0 and g.out_degree(v) > 0:
            level[v] = min(level[c] for c in g.successors(v)) - 1
    return level


def _runs(order: list[frozenset], plate: str) -> list[tuple[int, int]]:
    """The maximal runs of consecutive bands whose signature holds `plate`, as index ranges."""
    runs, start = [], None
    for i, signature in enumerate([*order, frozenset()]):
        if plate in signature and start is None:
            start = i
        elif plate not in signature and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def _band_order(signatures: set[frozenset], plates: list[str]) -> list[frozenset]:
    """Orders signatures along a reflected Gray code over the plates, trying every order of the
    plates (up to 6), so that as few plates as possible fall into several runs of bands."""

    def gray_rank(signature: frozenset, ranking: tuple[str, ...]) -> int:
        code = 0
        for p in ranking:
            code = code << 1 | (p in signature)
        rank, shift = code, code >> 1
        while shift:  # the inverse of the Gray code: rank = code ^ code >> 1 ^ code >> 2 ...
            rank, shift = rank ^ shift, shift >> 1
        return rank

    rankings = itertools.permutations(plates) if len(plates) <= 6 else [tuple(plates)]
    best, fewest = [], None
    for ranking in rankings:
        order = sorted(signatures, key=lambda s, r=ranking: gray_rank(s, r))
        boxes = sum(len(_runs(order, p)) for p in plates)
        if fewest is None or boxes < fewest:
            best, fewest = order, boxes
    return best


def _isotonic(targets: list[float]) -> list[float]:
    """The non-decreasing sequence closest to `targets` in squared distance (pool adjacent
    violators)."""
    means: list[float] = []
    counts: list[int] = []
    for t in targets:
        mean, count = t, 1
        while means and means[-1] > mean:
            count_before = counts.pop()
            mean = (means.pop() * count_before + mean * count) / (count_before + count)
            count += count_before
        means.append(mean)
        counts.append(count)
    return [m for m, c in zip(means, counts, strict=True) for _ in range(c)]


class _Layers:
    """The layered graph: real nodes and virtual slots (indices), their layers, bands and widths."""

    def __init__(self, g: nx.DiGraph, widths: dict, band_of: dict, level: dict) -> None:
        self.nodes = list(g)
        index = {v: i for i, v in enumerate(self.nodes)}
        self.width = [widths[v] for v in self.nodes]
        self.band = [band_of[v] for v in self.nodes]
        self.level = [level[v] for v in self.nodes]
        self.up: list[list[int]] = [[] for _ in self.nodes]
        self.down: list[list[int]] = [[] for _ in self.nodes]
        self.chains: dict[tuple, list[int]] = {}  # each edge's elements, its two ends included
        for u, v in g.edges:
            chain = [index[u]]
            span = level[v] - level[u]
            for k in range(1, span):  # a virtual slot per skipped layer, in bands in between
                self.width.append(0.0)
                self.band.append(round(band_of[u] + (band_of[v] - band_of[u]) * k / span))
                self.level.append(level[u] + k)
                self.up.append([])
                self.down.append([])
                chain.append(len(self.width) - 1)
            chain.append(index[v])
            for a, b in itertools.pairwise(chain):
                self.down[a].append(b)
                self.up[b].append(a)
            self.chains[u, v] = chain
        depth = max(self.level) + 1
        self.layers: list[list[int]] = [[] for _ in range(depth)]
        for i, lv in enumerate(self.level):
            self.layers[lv].append(i)

    def real(self, i: int) -> bool:
        return i < len(self.nodes)

    def gap(self, a: int, b: int) -> float:
        return _NODE_GAP if self.real(a) and self.real(b) else _SLOT_GAP

    def order(self) -> None:
        """Sorts each layer by band, then by the barycentre of its neighbours, a few sweeps."""
        rank = [0.0] * len(self.width)
        for layer in self.layers:
            layer.sort(key=lambda i: self.band[i])
            for r, i in enumerate(layer):
                rank[i] = r
        for sweep in range(_SWEEPS):
            down = sweep % 2 == 0
            near = self.up if down else self.down
            for layer in self.layers[1:] if down else self.layers[-2::-1]:
                for i in layer:
                    if near[i]:
                        rank[i] = sum(rank[j] for j in near[i]) / len(near[i])
                layer.sort(key=lambda i: (self.band[i], rank[i]))
                for r, i in enumerate(layer):
                    rank[i] = r

    def groups(self) -> list[list[int]]:
        """The runs of each layer that fall in one band, in order."""
        return [
            list(run)
            for layer in self.layers
            for _, run in itertools.groupby(layer, key=lambda i: self.band[i])
        ]

    def packed(self, group: list[int]) -> list[float]:
        """The offsets of a group's centres from its first centre, packed as tight as allowed."""
        offsets = [0.0]
        for a, b in itertools.pairwise(group):
            offsets.append(offsets[-1] + (self.width[a] + self.width[b]) / 2 + self.gap(a, b))
        return offsets

    def place(self, left: list[float], span: list[float]) -> list[float]:
        """x of every element: each group inside its band `[left, left + span]`, each element
        as close to the mean x of its neighbours as the order and the gaps allow (a few sweeps
        of isotonic regression per group, up and down)."""
        x = [0.0] * len(self.width)
        groups = self.groups()
        packed = [self.packed(group) for group in groups]
        for group, offsets in zip(groups, packed, strict=True):  # centred in the band to start
            b, first, last = self.band[group[0]], self.width[group[0]], self.width[group[-1]]
            start = left[b] + (span[b] - offsets[-1] - (first + last) / 2) / 2 + first / 2
            for i, offset in zip(group, offsets, strict=True):
                x[i] = start + offset
        by_layer: list[list[tuple]] = [[] for _ in self.layers]
        for group, offsets in zip(groups, packed, strict=True):
            by_layer[self.level[group[0]]].append((group, offsets))
        for sweep in range(_SWEEPS):
            down = sweep % 2 == 0
            near = self.up if down else self.down
            for layer in by_layer[1:] if down else by_layer[-2::-1]:
                for group, offsets in layer:
                    self._fit(group, offsets, near, x, (left, span))
        return x

    def _fit(self, group: list[int], offsets: list[float], near: list[list[int]], x: list[float],
             bands: tuple[list[float], list[float]]) -> None:  # fmt: skip
        left, span = bands
        targets = [
            (sum(x[j] for j in near[i]) / len(near[i]) if near[i] else x[i]) - offset
            for i, offset in zip(group, offsets, strict=True)
        ]
        b = self.band[group[0]]
        low = left[b] + self.width[group[0]] / 2
        high = left[b] + span[b] - self.width[group[-1]] / 2 - offsets[-1]
        for i, offset, y in zip(group, offsets, _isotonic(targets), strict=True):
            x[i] = min(max(y, low), high) + offset


def _boxes(g: nx.DiGraph, order: list[frozenset], band_of: dict, level: dict) -> list[dict]:
    """Each box: its plate, first and last band, top and bottom layer, and the rank of each of its
    sides among the box sides it shares a band side or layer side with (0 innermost)."""
    boxes = []
    for plate in sorted({p for s in order for p in s}, key=str):
        for first, last in _runs(order, plate):
            members = [v for v in g if first <= band_of[v] <= last]
            levels = [level[v] for v in members]
            boxes.append(dict(plate=plate, first=first, last=last, top=min(levels),
                              bottom=max(levels), size=len(members)))  # fmt: skip

    def rank(side: str, key: object) -> None:
        shared: dict[int, list[dict]] = {}
        for box in boxes:
            shared.setdefault(box[side], []).append(box)
        for group in shared.values():
            for r, box in enumerate(sorted(group, key=key)):
                box[f"{side}_rank"] = r

    # a box inside another is inner on every side it shares; among crossing boxes that end at the
    # same layer, the one with more members takes the lower label row, and at a shared right side
    # a box that reaches lower is outer, so that no box edge runs through another box's label
    rank("first", lambda b: (b["size"], str(b["plate"])))
    rank("top", lambda b: (b["size"], str(b["plate"])))
    rank("bottom", lambda b: (b["size"], str(b["plate"])))
    rank("last", lambda b: (b["bottom"], b["bottom_rank"], b["size"], str(b["plate"])))
    return boxes


def _count(boxes: list[dict], side: str, value: int) -> int:
    return max((b[f"{side}_rank"] + 1 for b in boxes if b[side] == value), default=0)


def sugiyama(
    g: nx.DiGraph,
    widths: dict[Hashable, float],
    *,
    labels: dict[str, float] | None = None,
    label_height: float = 0.3,
    factors: Collection[Hashable] = (),
    factor_size: float = 0.16,
) -> Layout:
    r"""Lays out a DAG whose nodes may carry `plates`, in units of the node height.

    Arguments:
        g: A DAG; a node's attribute `plates` names the plates it is in.
        widths: The width of each node.
        labels: The width of each plate's label (0 by default).
        label_height: The height of a plate label.
        factors: The nodes drawn as squares of half-side `factor_size` at the top of their slot
            (edges meet their top and bottom); other nodes are ellipses of height 1.

    Returns:
        The :class:`Layout`: parents above children, each node inside exactly its plates' boxes.

    Example:
        >>> lay = sugiyama(nx.DiGraph([("a", "b")]), {"a": 1.0, "b": 1.0})
        >>> lay.pos["a"][1] > lay.pos["b"][1]
        True
    """
    labels = labels or {}
    level = _levels(g)
    signature = {v: frozenset(g.nodes[v].get("plates", ())) for v in g}
    plates = sorted({p for s in signature.values() for p in s}, key=str)
    order = _band_order(set(signature.values()), plates)
    band_of = {v: order.index(signature[v]) for v in g}
    layers = _Layers(g, widths, band_of, level)
    layers.order()
    boxes = _boxes(g, order, band_of, level)
    # bands: as wide as their widest layer, and as the labels of the boxes ending at them
    span = [0.0] * len(order)
    for group in layers.groups():
        offsets = layers.packed(group)
        width = offsets[-1] + (layers.width[group[0]] + layers.width[group[-1]]) / 2
        span[layers.band[group[0]]] = max(span[layers.band[group[0]]], width)
    for box in boxes:
        span[box["last"]] = max(span[box["last"]], labels.get(box["plate"], 0.0) + 0.1)
    left = [0.0] * len(order)
    for b in range(1, len(order)):
        right_side, left_side = _count(boxes, "last", b - 1), _count(boxes, "first", b)
        gutter = 2 * _PAD + _STEP * (right_side + left_side - 2) + _NODE_GAP
        left[b] = left[b - 1] + span[b - 1] + gutter
    x = layers.place(left, span)
    ports = _ports(layers, x, set(factors), factor_size)
    spans = {
        edge: [ports[edge][0][0], *(x[i] for i in chain[1:-1]), ports[edge][1][0]]
        for edge, chain in layers.chains.items()
    }
    tracks, counts = _tracks(layers, spans)
    row = label_height + 0.12
    y, zones = [0.0], []
    for lv in range(1, len(layers.layers)):
        below, above = _count(boxes, "bottom", lv - 1), _count(boxes, "top", lv)
        below = _PAD + below * row if below else 0.0
        above = _PAD + _STEP * above if above else 0.0
        room = max(_ROOM, _TRACK * (counts[lv - 1] + 1))
        zones.append((y[-1] - 0.5 - below, room))
        y.append(y[-1] - 1.0 - below - room - above)
    pos = {v: (x[i], y[layers.level[i]]) for i, v in enumerate(layers.nodes)}
    drawn = []
    for box in boxes:
        x0 = left[box["first"]] - _PAD - _STEP * box["first_rank"]
        x1 = left[box["last"]] + span[box["last"]] + _PAD + _STEP * box["last_rank"]
        y1 = y[box["top"]] + 0.5 + _PAD + _STEP * box["top_rank"]
        y0 = y[box["bottom"]] - 0.5 - _PAD - row * (box["bottom_rank"] + 1)
        drawn.append(Box(box["plate"], x0, y0, x1, y1, (x1 - 0.1, y0 + 0.06)))
    ends, legs = {}, {}
    for edge, chain in layers.chains.items():
        (xs, ys), (xe, ye) = ports[edge]
        ends[edge] = ((xs, y[layers.level[chain[0]]] + ys), (xe, y[layers.level[chain[-1]]] + ye))
        legs[edge] = []
        for k, (xa, xb) in enumerate(itertools.pairwise(spans[edge])):
            lv, track = layers.level[chain[k]], tracks[edge][k]
            top, room = zones[lv]
            height = None if track is None else top - room * (track + 1) / (counts[lv] + 1)
            legs[edge].append(((xa, y[lv] - 0.5 - _CLEAR), (xb, y[lv + 1] + 0.5 + _CLEAR), height))
    return Layout(pos, ends, legs, drawn)


def _ports(
    layers: _Layers, x: list[float], factors: set, size: float
) -> dict[tuple, tuple[tuple[float, float], tuple[float, float]]]:
    """Each edge's ends on its two nodes, as x and the height from the node's centre: spread
    along the bottom of the parent and the top of the child in the order of where they go."""
    out: dict[int, list[tuple]] = {}
    into: dict[int, list[tuple]] = {}
    for edge, chain in layers.chains.items():
        out.setdefault(chain[0], []).append((x[chain[1]], edge))
        into.setdefault(chain[-1], []).append((x[chain[-2]], edge))
    start, end = {}, {}
    for ends, side, sign in ((out, start, -1), (into, end, 1)):
        for i, edges in ends.items():
            edges.sort(key=lambda e: e[0])
            square = layers.nodes[i] in factors
            w, m = 2 * size if square else layers.width[i], len(edges)
            for k, (_, edge) in enumerate(edges):
                offset = 0.0 if m == 1 else w * 0.3 * (2 * k / (m - 1) - 1)
                rim = 0.5 * (1 - (2 * offset / w) ** 2) ** 0.5
                if square:  # its top is 0.02 below its slot's, its bottom one side lower
                    rim = 0.48 if sign > 0 else 2 * size - 0.48
                side[edge] = (x[i] + offset, sign * rim)
    return {edge: (start[edge], end[edge]) for edge in layers.chains}


def _tracks(layers: _Layers, spans: dict) -> tuple[dict, list[int]]:
    """A track (a height rank in its gutter) for each leg that moves sideways, such that legs
    whose sideways runs overlap have different tracks; and the number of tracks per gutter."""
    runs: list[list[tuple]] = [[] for _ in layers.layers]
    tracks: dict[tuple, list[int | None]] = {}
    for edge, xs in spans.items():
        tracks[edge] = [None] * (len(xs) - 1)
        for k, (xa, xb) in enumerate(itertools.pairwise(xs)):
            if abs(xb - xa) > 1e-6:
                lv = layers.level[layers.chains[edge][k]]
                runs[lv].append((min(xa, xb), max(xa, xb), edge, k))
    counts = []
    for gutter in runs:
        ends: list[float] = []  # the right end of the last run on each track
        for left, right, edge, k in sorted(gutter, key=lambda r: r[:2]):
            free = next((t for t, end in enumerate(ends) if end < left - _SLOT_GAP), len(ends))
            ends[free:free + 1] = [right]
            tracks[edge][k] = free
        counts.append(len(ends))
    return tracks, counts
