import importlib.util
import itertools
import re
from pathlib import Path

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.patches import Ellipse

import ppgen


def gids(ax, kind):
    return sorted(p.get_gid()[len(kind) + 1 :] for p in ax.patches if p.get_gid().startswith(kind))


def test_draw_relay_structure(relay):
    ax = ppgen.draw(relay, title=True)
    assert gids(ax, "node") == ["t0", "t1", "t2"]
    assert gids(ax, "plate") == ["race"]
    assert gids(ax, "edge") == ["t0->t1", "t1->t2"]
    assert ax.get_title().startswith("p(t0, t1, t2)")


def test_draw_vae_shades_observed_only():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True)).to_event(1), obs=x)

    ax = ppgen.draw(model, torch.zeros(4, 1))
    faces = {p.get_gid(): p.get_facecolor() for p in ax.patches}
    assert faces["node:z"][:3] == (1.0, 1.0, 1.0)
    assert faces["node:x"][:3] != (1.0, 1.0, 1.0)
    assert gids(ax, "plate") == ["data"]


def test_draw_30_nodes_do_not_overlap():
    random = nx.gnp_random_graph(30, 0.1, seed=4, directed=True)
    g = nx.DiGraph((str(u), str(v)) for u, v in random.edges if u < v)
    g.add_nodes_from(str(v) for v in range(30))
    ax = ppgen.draw(g)
    boxes = [p.get_window_extent() for p in ax.patches if p.get_gid().startswith("node")]
    assert len(boxes) == 30
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)


def test_layout_puts_parents_above_children():
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("a", "c"), ("d", "c")])
    pos = ppgen.viz.layout(g)
    for u, v in g.edges:
        assert pos[u][1] > pos[v][1]


def test_a_node_outside_a_plate_is_drawn_outside_its_box():
    """Random DAGs of 7 nodes, each in no plate, in `rows`, or in `pixels` inside `rows`."""
    import random

    import matplotlib.pyplot as plt

    rng = random.Random(0)
    for _ in range(60):
        g = nx.DiGraph()
        g.graph["plates"] = {"rows": 5, "pixels": 4}
        for i in range(7):
            plates = rng.choice([(), ("rows",), ("rows", "pixels")])
            g.add_node(f"n{i}", plates=plates, observed=True)
        g.add_edges_from((f"n{i}", f"n{j}") for i in range(7) for j in range(i + 1, 7)
                         if rng.random() < 0.3)  # fmt: skip
        ax = ppgen.draw(g)
        patches = {p.get_gid(): p for p in ax.patches}
        for name in ("rows", "pixels"):
            box = patches.get(f"plate:{name}")
            for v, data in g.nodes(data=True):
                if box is None or name in data["plates"]:
                    continue
                (x, y), x0, y0 = patches[f"node:{v}"].center, box.get_x(), box.get_y()
                assert not (x0 < x < x0 + box.get_width() and y0 < y < y0 + box.get_height()), v
        plt.close(ax.figure)


def test_draw_history_of_a_gan_fit_draws_its_curves():
    from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator

    gan = GAN(MLPGenerator(2, 1, hidden_features=(4,)), MLPDiscriminator(1, hidden_features=(4,)), 2)
    fit = ppgen.fit_gan(gan, torch.randn(32, 1), epochs=3, batch_size=16, val=torch.randn(8, 1),
                        val_samples=8, progress=False)  # fmt: skip
    ax = ppgen.viz.draw_history(fit)
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["train/loss_d", "train/loss_g", "train/accuracy", "train/d_real",
                      "train/d_fake", "val/mmd"]  # fmt: skip
    mmd = [record["val/mmd"] for record in fit.history]
    assert list(ax.lines[-1].get_ydata()) == mmd


# Geometric properties of drawings of random DAGs with random nested and crossing plates, read
# from the drawn artists (not from the layout's own numbers).


@st.composite
def plated_dags(draw, max_nodes=60):
    """A DAG of up to `max_nodes` nodes with names of random lengths, each node in a random set
    of up to 4 plates (nested, crossing or apart), some observed, some factors."""
    n = draw(st.integers(1, max_nodes))
    plates = [f"plate{k}" for k in range(draw(st.integers(0, 4)))]
    g = nx.DiGraph(plates={p: draw(st.sampled_from([None, 1, 3, 100])) for p in plates})
    for i in range(n):
        name = f"v{i}" + "q" * draw(st.integers(0, 9))
        kind = draw(st.sampled_from(["Normal", "Normal", "Categorical", "Unit"]))
        inside = tuple(p for p in plates if draw(st.booleans()))
        g.add_node(name, plates=inside, observed=draw(st.booleans()) or kind == "Unit",
                   distribution=kind, n_params=draw(st.sampled_from([None, 2, 12345])))  # fmt: skip
        earlier = list(g)[:-1]
        if earlier:
            parents = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))
            g.add_edges_from((p, name) for p in parents)
    return g


def _nodes(ax):
    """Each node's name: its patch."""
    return {p.get_gid()[5:]: p for p in ax.patches if p.get_gid().startswith("node:")}


def _outlines(ax, grow=1.05):
    """Each node's name, and arrays of the centres, half sizes (grown by `grow`) and whether the
    outline is an ellipse (else a rectangle) of all nodes."""
    names, centres, halves, round_ = [], [], [], []
    for name, patch in _nodes(ax).items():
        names.append(name)
        centres.append(_centre(patch))
        halves.append((grow * patch.get_width() / 2, grow * patch.get_height() / 2))
        round_.append(isinstance(patch, Ellipse))
    return names, np.array(centres), np.array(halves), np.array(round_)


def _points(path, step=0.02):
    """Points every `step` along a path's flattened segments."""
    out = []
    for poly in path.to_polygons(closed_only=False):
        for a, b in zip(poly[:-1], poly[1:], strict=True):
            k = max(2, int(np.hypot(*(b - a)) / step) + 2)
            out.append(a + np.linspace(0, 1, k)[:, None] * (b - a))
    return np.concatenate(out)


def _centre(patch):
    if isinstance(patch, Ellipse):
        return patch.center
    return patch.get_x() + patch.get_width() / 2, patch.get_y() + patch.get_height() / 2


def _contains(box, x, y):
    x0, y0 = box.get_x(), box.get_y()
    return x0 < x < x0 + box.get_width() and y0 < y < y0 + box.get_height()


def check_edges_avoid_nodes(ax):
    names, centres, halves, round_ = _outlines(ax)
    for patch in ax.patches:
        if not patch.get_gid().startswith("edge:"):
            continue
        u, v = patch.get_gid()[5:].split("->")
        scaled = np.abs(_points(patch.get_path())[:, None, :] - centres) / halves  # (k, n, 2)
        norm = np.where(round_, (scaled**2).sum(-1), scaled.max(-1) ** 2)  # <= 1: inside
        for w in np.flatnonzero((norm <= 1).any(0)):
            assert names[w] in (u, v), f"{u}->{v} crosses {names[w]}"


def check_boxes_hold_exactly_their_nodes(ax, g):
    boxes = [p for p in ax.patches if p.get_gid().startswith("plate:")]
    for v, node in _nodes(ax).items():
        x, y = _centre(node)
        inside = {box.get_gid()[6:] for box in boxes if _contains(box, x, y)}
        assert inside == set(g.nodes[v].get("plates", ())), v
        ends = node.get_extents().transformed(ax.transData.inverted())
        for name in inside:  # the whole node, not only its centre, is in its plates' boxes
            assert any(_contains(b, ends.x0, ends.y0) and _contains(b, ends.x1, ends.y1)
                       for b in boxes if b.get_gid() == f"plate:{name}"), (v, name)  # fmt: skip


def check_labels(ax):
    """No two texts overlap, a plate's label lies in one of its boxes and crosses no box's
    outline, and the title lies inside the figure."""
    renderer = ax.figure.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text()] + [ax.title] * bool(ax.get_title())
    extents = [t.get_window_extent(renderer) for t in texts]
    for i, a in enumerate(extents):
        for j in range(i + 1, len(extents)):
            assert not a.overlaps(extents[j]), (texts[i].get_text(), texts[j].get_text())
    to_data = ax.transData.inverted()
    boxes = [p for p in ax.patches if p.get_gid().startswith("plate:")]
    for text in ax.texts:
        if not (text.get_gid() or "").startswith("plate:"):
            continue
        e = text.get_window_extent(renderer).transformed(to_data)
        corners = [(e.x0, e.y0), (e.x0, e.y1), (e.x1, e.y0), (e.x1, e.y1)]
        own = [b for b in boxes if b.get_gid() == text.get_gid()]
        assert any(all(_contains(b, *c) for c in corners) for b in own), text.get_text()
        for box in boxes:  # all four corners in, or all out: no outline through the label
            assert len({_contains(box, *c) for c in corners}) == 1, (text.get_text(), box.get_gid())
    figure = ax.figure.bbox
    title = ax.title.get_window_extent(renderer)
    assert figure.x0 <= title.x0 and title.x1 <= figure.x1, ax.get_title()
    assert figure.y0 <= title.y0 and title.y1 <= figure.y1, ax.get_title()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(plated_dags(), st.booleans())
def test_drawings_of_random_plated_dags_are_true(g, annotate):
    ax = ppgen.draw(g, title=True, annotate=annotate)
    try:
        check_edges_avoid_nodes(ax)
        check_boxes_hold_exactly_their_nodes(ax, g)
        check_labels(ax)
    finally:
        plt.close(ax.figure)


def test_sample_grids_leave_no_empty_band_between_panels():
    grids = {"NADE": torch.rand(30, 64), "MADE": torch.rand(30, 64), "VAE": torch.rand(12, 64)}
    figure = ppgen.viz.draw_sample_grids(grids, (8, 8), columns=15)
    figure.canvas.draw()
    images = [ax.images[0].get_window_extent() for ax in figure.axes]
    for ax, image in zip(figure.axes, images, strict=True):  # each image fills its panel
        assert image.height >= 0.97 * ax.get_window_extent().height
    for above, below in itertools.pairwise(images):  # panels apart by their titles alone
        assert above.y0 - below.y1 <= 0.36 * figure.dpi  # 2.2-in panels left 1.4 in
    assert [ax.get_title() for ax in figure.axes] == ["NADE", "MADE", "VAE"]


def test_draw_annotates_distributions_and_parameter_counts(relay):
    ax = ppgen.draw(relay, annotate=True)
    notes = sorted(t.get_text() for t in ax.texts if t.get_text().startswith("Normal"))
    counts = [ppgen.graph(relay).nodes[v]["n_params"] for v in ("t0", "t1", "t2")]
    assert notes == sorted(f"Normal, {n} params" for n in counts)


def test_draw_shows_a_factor_as_a_square():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -(a**2))

    ax = ppgen.draw(model)
    shapes = {p.get_gid(): type(p).__name__ for p in ax.patches}
    assert shapes["node:penalty"] == "Rectangle"
    assert shapes["node:a"] == "Ellipse"
    assert ax.patches[[p.get_gid() for p in ax.patches].index("node:penalty")].get_width() < 0.5


def _pictures():
    """The programs drawn in tests/images (make.py): LDA, three crossing plates, a 6-edge DAG
    whose long edge crossed two nodes, and the benchmark's 200-node DAG."""
    path = Path(__file__).parent / "images" / "make.py"
    spec = importlib.util.spec_from_file_location("pictures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"lda": module.lda, "mace": module.mace_like, "commute": module.commute(),
            "dag200": module.random_dag()}  # fmt: skip


@pytest.mark.parametrize("name", ["lda", "mace", "commute", "dag200"])
def test_drawings_of_the_pictured_programs_are_true(name):
    program = _pictures()[name]
    g = program if isinstance(program, nx.DiGraph) else ppgen.graph(program)
    ax = ppgen.draw(program, title=True)
    check_edges_avoid_nodes(ax)
    check_boxes_hold_exactly_their_nodes(ax, g)
    check_labels(ax)
    if name == "mace":  # the crossing plates: one box each, overlapping
        assert gids(ax, "plate") == ["annotator", "item", "position"]


def test_deterministic_sites_are_drawn_dashed_on_request():
    def program():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        d = pyro.deterministic("d", 2 * a)
        pyro.sample("b", dist.Normal(d, 1.0), obs=torch.tensor(0.5))

    plain = ppgen.graph(program)
    assert list(plain.edges) == [("a", "b")] and "d" not in plain
    g = ppgen.graph(program, deterministic=True)
    assert sorted(g.edges) == [("a", "d"), ("d", "b")]
    assert g.nodes["d"]["deterministic"] and not g.nodes["d"]["observed"]
    assert not g.nodes["a"]["deterministic"]
    ax = ppgen.draw(program, deterministic=True)
    nodes = {p.get_gid(): p for p in ax.patches if p.get_gid().startswith("node:")}
    assert nodes["node:d"].get_linestyle() == "--" and nodes["node:a"].get_linestyle() == "-"
    assert "node:d" not in {p.get_gid() for p in ppgen.draw(program).patches}


@pytest.mark.parametrize("plates", ["rows", None, 3])
def test_a_nodes_plates_that_are_not_a_sequence_of_names_are_refused(plates):
    g = nx.DiGraph([("a", "b")])
    g.nodes["b"]["plates"] = plates  # "rows" was drawn as four plates r, o, w and s
    message = f"Node 'b' has plates {plates!r}; give a tuple of plate names, e.g. ('rows',)."
    for query in (ppgen.draw, ppgen.viz.layout):
        with pytest.raises(ValueError, match=re.escape(message)):
            query(g)


def test_a_title_of_wide_and_narrow_names_stays_inside_the_figure():
    # the wrap once counted characters at the title's mean width: lines of wide letters overran
    names = [f"i{k}" for k in range(30)] + ["WWWWWWWW", "MMMMMMMM", "WMWMWMWM", "MWMWMWMW"]
    g = nx.DiGraph(list(itertools.pairwise(names)))  # a chain: a narrow figure
    ax = ppgen.draw(g, title=True)
    try:
        figure, title = ax.figure.bbox, ax.title.get_window_extent(ax.figure.canvas.get_renderer())
        assert figure.x0 <= title.x0 and title.x1 <= figure.x1
    finally:
        plt.close(ax.figure)


def test_a_multigraphs_repeated_edge_is_drawn_once():
    g = nx.MultiDiGraph([("a", "b"), ("a", "b"), ("b", "c")])  # a raw ValueError before
    ax = ppgen.draw(g)
    assert gids(ax, "edge") == ["a->b", "b->c"]
    assert ppgen.viz.layout(g).keys() == {"a", "b", "c"}
    plt.close(ax.figure)
