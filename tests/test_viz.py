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
