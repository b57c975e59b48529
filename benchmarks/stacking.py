"""Per-step stacking of per-node weights vs weights stored stacked, for one group of nodes.

`ppgen.batched` stacks each node's own parameters at every step (`torch.stack`, differentiable):
every node keeps its `nn.Parameter`s, so per-node early stopping, checkpoints and files are as
they were. The alternative stores each layer's weights of the group as one parameter, so that
Adam, `zero_grad` and the backward of the stack see 2 tensors a layer instead of 2 a node and
layer. Both compute the same (batched products, tanh, the Normal head and its log-density);
this times a whole step (forward, backward, fused Adam) of each, interleaved, one thread.

Run: python benchmarks/stacking.py [--nodes 100 500 --hidden 16 --rows 1024 --repeats 7]
"""

import argparse
import statistics
import time

import torch

torch.set_num_threads(1)

import pyro.distributions as dist  # noqa: E402
from torch import nn  # noqa: E402

from ppgen.batched import CACHED, ConditionalGroup  # noqa: E402
from ppgen.nn import Conditional  # noqa: E402


def per_step(nodes, hidden, rows):
    modules = [Conditional(dist.Normal, 2, hidden=hidden) for _ in range(nodes)]
    group = ConditionalGroup(modules, [[2 * i, 2 * i + 1] for i in range(nodes)])
    params = [p for m in modules for p in m.parameters()]
    return params, lambda columns, values: group.distribution(columns).log_prob(values)


def stored(nodes, hidden, rows):
    """Each part's weights (as ppgen.batched cuts a group) stored stacked, one parameter each."""
    modules = [Conditional(dist.Normal, 2, hidden=hidden) for _ in range(nodes)]
    size = max(1, CACHED // (rows * max(hidden)))
    parts = [modules[i : i + size] for i in range(0, nodes, size)]
    layers = [
        [(nn.Parameter(torch.stack([m.net[i].weight.detach() for m in part])),
          nn.Parameter(torch.stack([m.net[i].bias.detach() for m in part])))
         for i in range(0, len(modules[0].net), 2)]
        for part in parts
    ]  # fmt: skip
    head, activation = modules[0].head, modules[0].net[1]
    index = torch.arange(2 * nodes).reshape(nodes, 2)

    def log_prob(columns, values):
        parents, etas = columns[index].transpose(1, 2), []
        for k, part in enumerate(layers):
            h = parents[k * size : (k + 1) * size]
            for i, (w, b) in enumerate(part):
                h = torch.baddbmm(b.unsqueeze(1), activation(h) if i else h, w.transpose(1, 2))
            etas.append(h)
        return head(torch.cat(etas)).log_prob(values)

    return [p for part in layers for layer in part for p in layer], log_prob


def timed(build, nodes, hidden, rows, steps=5):
    params, log_prob = build(nodes, hidden, rows)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    columns, values = torch.randn(2 * nodes, rows), torch.randn(nodes, rows)

    def step():
        loss = -log_prob(columns, values).sum(-1).sum() / rows
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - tic) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--hidden", type=int, nargs="+", default=[16])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for nodes in args.nodes:
        ratios, times = [], {"per_step": [], "stored": []}
        for r in range(args.repeats):
            order = ("per_step", "stored") if r % 2 == 0 else ("stored", "per_step")
            got = {n: timed(globals()[n], nodes, tuple(args.hidden), args.rows) for n in order}
            for n, t in got.items():
                times[n].append(t)
            ratios.append(got["stored"] / got["per_step"])
        print(f"{nodes} nodes, hidden {tuple(args.hidden)}: per-step stack "
              f"{statistics.median(times['per_step']) * 1e3:.1f} ms/step, stored "
              f"{statistics.median(times['stored']) * 1e3:.1f} ms/step; stored / per-step "
              f"median {statistics.median(ratios):.2f}, min {min(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
