"""Draws the pictures kept in this folder; look at each after a change to ppgen's drawing.

Run: PYTHONPATH=. python tests/images/make.py
"""

import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import networkx as nx  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import ppgen  # noqa: E402


def lda(docs=4, words_per_doc=6, topics=3, vocabulary=10):
    """Pyro's LDA example (examples/lda.py), model only."""
    with pyro.plate("topics", topics):
        topic_weights = pyro.sample("topic_weights", dist.Gamma(1.0 / topics, 1.0))
        topic_words = pyro.sample("topic_words", dist.Dirichlet(torch.ones(vocabulary) / vocabulary))
    with pyro.plate("documents", docs):
        doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights))
        with pyro.plate("words", words_per_doc, dim=-2):
            word_topics = pyro.sample("word_topics", dist.Categorical(doc_topics))
            pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]),
                        obs=torch.zeros(words_per_doc, docs, dtype=torch.long))


def mace_like(annotators=3, items=5, positions=2, classes=4):
    """Three crossing plates, after MACE: annotators label items at positions."""
    annotator = pyro.plate("annotator", annotators, dim=-2)
    item = pyro.plate("item", items, dim=-1)
    position = pyro.plate("position", positions, dim=-3)
    with annotator:
        epsilon = pyro.sample("epsilon", dist.Dirichlet(torch.ones(classes)))
        theta = pyro.sample("theta", dist.Beta(0.5, 0.5))
    with item:
        c = pyro.sample("c", dist.Categorical(torch.ones(classes) / classes))
    with annotator, item:
        s = pyro.sample("s", dist.Bernoulli(1 - theta))
    with position, annotator:
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
        with item:
            one_hot = torch.nn.functional.one_hot(c, classes).double()
            probs = torch.where(s[..., None] == 0, one_hot, epsilon) + bias[..., None].exp()
            pyro.sample("y", dist.Categorical(probs / probs.sum(-1, keepdim=True)),
                        obs=torch.zeros(positions, annotators, items, dtype=torch.long))
            pyro.factor("agreement", -bias.abs().expand(positions, annotators, items))


def commute():
    """A 6-edge DAG where weekend -> late skips two layers."""
    return nx.DiGraph([("weekend", "traffic"), ("rain", "traffic"), ("traffic", "delay"),
                       ("rain", "delay"), ("delay", "late"), ("weekend", "late")])


def random_dag(nodes=200, max_parents=3, seed=0):
    """The benchmark's random DAG: each node takes 1 to 3 parents among the nodes before it."""
    rng = random.Random(seed)
    g = nx.DiGraph()
    g.add_nodes_from(f"x{i}" for i in range(nodes))
    g.add_edges_from((f"x{j}", f"x{i}") for i in range(1, nodes)
                     for j in rng.sample(range(i), min(i, rng.randint(1, max_parents))))
    return g


def main():
    torch.set_default_dtype(torch.float64)
    here = Path(__file__).parent
    pictures = {"lda": lda, "mace": mace_like, "commute": commute(), "dag200": random_dag()}
    for name, model in pictures.items():
        ax = ppgen.draw(model, title=name != "dag200")
        ax.figure.savefig(here / f"{name}.png", dpi=72 if name == "dag200" else 100)
        matplotlib.pyplot.close(ax.figure)


if __name__ == "__main__":
    main()
