import networkx as nx
import pyro
import pyro.distributions as dist
import torch

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
