"""Seconds per epoch and test log-likelihood of neural DAG fits: ppgen vs hand torch vs Pyro SVI.

Two fully observed models, each conditional an MLP in -> 64 -> 64 -> out (tanh), fitted on rows
drawn from a known nonlinear generator written as a plain Pyro program:

- relay: t0 -> t1 -> t2, data from `ppgen.datasets.relay_race_program`;
- mixed: a 6-node DAG, a, c, e, f Normal and b, d Bernoulli, data from `mixed_program` below.

Three fitters start from identical weights and see the same batches (`torch.manual_seed` before
each, so each epoch's `torch.randperm(N)` is the same), Adam with the same lr and batch size:

- ppgen: `ppgen.fit_mle` (root nodes solved in closed form, scored once and left out of the
  steps; one fused Adam kernel for all parameters);
- hand: a torch loop over `torch.distributions` with `nn.Sequential` MLPs whose weights are
  copied from the ppgen model, the roots' parameters trained by gradient, and
  `torch.optim.Adam(parameters, lr=lr)` as a user writes it (torch's per-parameter loop on CPU);
- pyro: an `ELBOModule` (`Trace_ELBO()(conditioned model, empty guide)`) on a deep copy of the
  ppgen model, stepped by `torch.optim.Adam` (as Pyro's examples/svi_torch.py).

Timing: in each of `--repeats` repeats every fitter fits a fresh copy for `--timing-epochs`
epochs, the three in turn with the first one rotating, and its seconds per epoch are divided by
the hand loop's in the same repeat; the table gives the median and the min of these ratios. Two
clocks: wall seconds of the step loop (ppgen's from its history), and CPU seconds of the whole
call per epoch (set-up included, which counts against ppgen; robust to other processes on a
shared machine). Then each fitter fits once for `--epochs` epochs, in turn, for the test
log-likelihood. One thread.

Measured (2 shared cores, load average 8-10, so wall times are ~5x the CPU times; relay and
mixed run as two processes side by side; `--repeats 6`, timing on 5 epochs, test after 200):

    x hand loop, median (min)   wall s/epoch   CPU s/epoch   CPU, 200-epoch fits (ppgen vs hand)
    relay  ppgen                0.76 (0.73)    0.79 (0.73)   0.82 (0.215 s vs 0.261 s)
           pyro                 1.40 (1.16)    1.43 (1.37)   1.53
    mixed  ppgen                0.81 (0.62)    0.88 (0.80)   0.83 (0.447 s vs 0.539 s)
           pyro                 1.20 (1.06)    1.40 (1.21)   1.30

    test nats/row after 200 epochs: relay -2.5434 for all three (generator -2.5310), mixed
    -4.2406 for all three (generator -4.2050); ppgen - hand = +0.0000 on both.

The compute (tanh, matmuls, their backward) is the same in all three; ppgen saves Adam's
per-parameter loop, the roots' terms in every step and a few ops per node. Since issue 22,
same-shaped conditionals run together (`ppgen.batched`: one batched product a layer, the
weights stacked from the nodes at each step): the relay's t1 and t2, the mixed DAG's c and f.
After it, same run (quieter machine, load 2-3; `--repeats 6`, timing on 5 epochs):

    x hand loop, median (min)   wall s/epoch   CPU s/epoch
    relay  ppgen                0.82 (0.81)    0.83 (0.83)
           pyro                 1.45 (1.45)    1.44 (1.41)
    mixed  ppgen                0.84 (0.75)    0.87 (0.82)
           pyro                 1.39 (1.20)    1.40 (1.22)

    test nats/row after 200 epochs: relay -2.5434, mixed -4.2406 for all three.

Main's code before issue 22, relay, load 4: 0.84 (0.83) wall, 0.85 (0.84) CPU; this code in
the run after it, load 4 and rising: 0.88 (0.77), 0.88 (0.82). Training steps alone
(GradientStep on 512 rows, 30 interleaved rounds of 10 steps), grouped over one call a node:
0.97x (min 0.86) on the relay, 0.95x (min 0.82) on the mixed DAG.

Many nodes (`--models 100:16 500:16 100:64,64 500:64,64`): `ppgen.dag` graphs of Normal nodes,
node i with up to two parents among the five before it (as benchmarks/scaling.py), hidden (16,)
or (64, 64); data from the same graph with other weights (`many_program`); 10k rows, batches of
1,024, ppgen against the hand loop alone, both with the roots solved in closed form (the hand
loop's are left out of its steps). Measured after issue 22 (2 shared cores, load 1.5-4.4;
`--repeats 5 --timing-epochs 1 --epochs 3 --arithmetic`, 11 minutes in all, 3 for the two (16,) cases):

    x hand loop, median (min)   wall s/epoch   CPU s/epoch (set-up included)
    100 nodes, hidden (16,)     0.44 (0.44)    0.65 (0.63)
    500 nodes, hidden (16,)     0.42 (0.32)    0.62 (0.59)
    100 nodes, hidden (64, 64)  0.76 (0.71)    0.84 (0.36)
    500 nodes, hidden (64, 64)  0.74 (0.70)    0.82 (0.80)

    test nats/row after 3 epochs, ppgen - hand: +0.0000 at 100 nodes and at 500 nodes with
    (64, 64); +0.0001 at 500 nodes with (16,) (-1596.2312 vs -1596.2313: one float32 rounding
    step of a total of that size is 1.2e-4; relative 7.6e-8).

Before issue 22 an epoch of 500 nodes (16,) took about 2.4x its time now (4.16-4.42 s against
1.60-1.99 s, benchmarks/scaling.py; docs/scaling.md). With hidden (64, 64), 0.5x is out of
reach on a CPU because the arithmetic itself is most of the hand loop's step: products, tanh, softplus and their backward take 66% (100 nodes) and 63% (500
nodes) of its profiled time (`--arithmetic`: 2.65 and 13.3 GFLOP of products a step; tanh alone
costs 2.6 ns an element on this CPU), against 32-33% with hidden (16,) (0.04 and 0.20 GFLOP).
A fast path that keeps this arithmetic can remove only the rest: its floor is ~0.65x. Groups run
in parts of about 2^18 activations (`ppgen.batched.CACHED`, a core's L2 cache): in one part, the
100-node (64, 64) step took 1.2x the per-node path's (tanh's backward and the bias broadcast on
25 MB tensors wait on memory), in parts 0.87x.

Weights stored stacked instead of stacked at each step (`benchmarks/stacking.py`, a step of one
group, the same parts): 0.72x the time of the per-step stack at 100 and 500 nodes with hidden
(16,) (min 0.51, 0.67): Adam, `zero_grad` and the stack's backward then see 2 tensors a part and
layer instead of 2 a node and layer. Left out: each node would no longer hold its parameters
(`model.t1.net` would need views of the stacks, which are not `nn.Parameter`s), and per-node
early stopping, checkpoints and files would need copies back and forth.

Run: python benchmarks/mle_neural.py --repeats 6 --models relay   (and --models mixed)
     [--epochs 200 --timing-epochs 5 --train 20000 --test 10000 --batch-size 512]
     python benchmarks/mle_neural.py --models 100:16 500:16 100:64,64 500:64,64 --arithmetic
     --train 10000 --batch-size 1024 --repeats 5 --timing-epochs 1 --epochs 3
"""

import argparse
import copy
import os
import random
import statistics
import time
import warnings

import torch

torch.set_num_threads(1)

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ppgen  # noqa: E402
from ppgen.closed_form import solve  # noqa: E402
from ppgen.datasets import relay_race_program  # noqa: E402
from ppgen.nn import Root  # noqa: E402

RELAY_EDGES = [("t0", "t1"), ("t1", "t2")]
MIXED_EDGES = [
    ("a", "b"), ("a", "c"), ("b", "c"), ("a", "d"), ("c", "d"),
    ("b", "e"), ("c", "e"), ("d", "e"), ("a", "f"), ("e", "f"),
]  # fmt: skip
MIXED_KINDS = {"b": "bernoulli", "d": "bernoulli"}


def mixed_program(n=1):
    """The known nonlinear generator of the mixed DAG."""
    with pyro.plate("rows", n):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Bernoulli(logits=2 * torch.sin(2 * a)))
        c = pyro.sample("c", dist.Normal(torch.tanh(2 * a) + b * a - 0.5 * b, 0.3 + 0.2 * a**2))
        d = pyro.sample("d", dist.Bernoulli(logits=2 * a * c - 0.5))
        e = pyro.sample("e", dist.Normal(torch.sin(2 * c) + b * d - 0.5 * d, 0.5))
        f = pyro.sample("f", dist.Normal(torch.tanh(e) * a + 0.3 * e, 0.3 + 0.1 * e**2))
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "f": f}


def draw_rows(program, n, seed):
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        return program(n)


# ---------------------------------------------------------------- the hand-written torch loop


class HandNode(nn.Module):
    """One node of the hand loop: an MLP (or free parameters) to a torch distribution."""

    def __init__(self, conditional, kind, parents):
        super().__init__()
        self.kind, self.parents = kind, parents
        if isinstance(conditional, Root):
            self.eta = nn.Parameter(conditional.eta.detach().clone())
        else:
            self.net = copy.deepcopy(nn.Sequential(*conditional.net))

    def distribution(self, batch):
        if not self.parents:
            eta = self.eta
        else:
            x = torch.stack([batch[p].float() for p in self.parents], dim=-1)
            eta = self.net(x)
        if self.kind == "bernoulli":
            return torch.distributions.Bernoulli(logits=eta[..., 0], validate_args=False)
        loc, scale = eta[..., 0], F.softplus(eta[..., 1])
        return torch.distributions.Normal(loc, scale, validate_args=False)


def hand_copy(model):
    """Hand-written nodes with the ppgen model's initial weights."""
    return nn.ModuleDict(
        {
            v: HandNode(cond, model.kinds[v], model.parents[v])
            for v, cond in zip(model.nodes, model.conditionals, strict=True)
        }
    )


def hand_log_prob(nodes, batch):
    return sum(node.distribution(batch).log_prob(batch[v]) for v, node in nodes.items())


def fit_hand(nodes, data, epochs, batch_size, lr):
    optimizer = torch.optim.Adam([p for p in nodes.parameters() if p.requires_grad], lr=lr)
    trained = nn.ModuleDict({v: node for v, node in nodes.items() if node.parents or
                             node.eta.requires_grad})  # fmt: skip
    n = len(next(iter(data.values())))
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            batch = {k: v[index] for k, v in data.items()}
            loss = -hand_log_prob(trained, batch).sum() / len(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - tic)
    return seconds


# ---------------------------------------------------------------- Pyro SVI, empty guide


def fit_pyro(model, data, epochs, batch_size, lr):
    def conditioned(batch):
        return pyro.condition(model, data=batch)(n=len(next(iter(batch.values()))))

    def guide(batch):
        pass

    loss_fn = pyro.infer.Trace_ELBO()(conditioned, guide)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(next(iter(data.values())))
    seconds = []
    for _ in range(epochs):
        tic = time.perf_counter()
        order = torch.randperm(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            loss = loss_fn({k: v[index] for k, v in data.items()}) / len(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - tic)
    return seconds


# ---------------------------------------------------------------- many nodes


def many_dag(nodes, hidden, seed=0):
    """Normal nodes, node i with up to two parents among the five before it (as scaling.py)."""
    rng = random.Random(seed)
    names = [f"x{i}" for i in range(nodes)]
    edges = [(names[p], names[i]) for i in range(1, nodes)
             for p in rng.sample(range(max(0, i - 5), i), min(i, 2))]  # fmt: skip
    return ppgen.dag(edges, hidden=hidden)


def many_program(nodes):
    """The generator of the many-node case: its own DAG with other (seeded) weights, whose
    nonlinear conditionals a fit must learn."""
    pyro.set_rng_seed(1000 + nodes)
    generator = many_dag(nodes, (16,), seed=0)
    with torch.no_grad():
        for p in generator.parameters():
            p.normal_(0.0, 0.5)
    return generator


def hand_roots(nodes, data):
    """The hand loop's roots, solved in closed form as ppgen solves them (they are left out of
    its steps): the comparison is of the steps of the neural nodes."""
    for name, node in nodes.items():
        if not node.parents:
            root = Root(dist.Normal)
            with torch.no_grad():
                solve(root, data[name], [])
            node.eta = nn.Parameter(root.eta.detach().clone(), requires_grad=False)


ARITHMETIC = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::tanh",
              "aten::tanh_backward", "aten::softplus", "aten::softplus_backward")  # fmt: skip


def arithmetic(initial, program, args):
    """The share of a hand-loop step spent in products, tanh and softplus (forward and
    backward; torch.profiler's self CPU time over 5 steps), beside the products' FLOPs: the
    floor of any per-node fast path that keeps the same arithmetic."""
    from torch.profiler import profile

    data = draw_rows(program, args.batch_size, args.seed + 1)
    nodes = hand_copy(initial)
    hand_roots(nodes, data)
    trained = nn.ModuleDict({v: node for v, node in nodes.items() if node.parents})
    optimizer = torch.optim.Adam(trained.parameters(), lr=args.lr)

    def step():
        loss = -hand_log_prob(trained, data).sum() / args.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    with profile() as prof:
        tic = time.perf_counter()
        for _ in range(5):
            step()
        seconds = (time.perf_counter() - tic) / 5
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sum(e.self_cpu_time_total for e in events if e.key in ARITHMETIC)
    macs = sum(m.in_features * m.out_features for node in trained.values()
               for m in node.net if isinstance(m, nn.Linear))  # fmt: skip
    print(f"hand loop step on {args.batch_size} rows: {seconds * 1e3:.1f} ms (unprofiled "
          f"share of arithmetic: products, tanh, softplus and their backward "
          f"{ops / total:.0%} of the profiled time); products "
          f"{6 * macs * args.batch_size / 1e9:.2f} GFLOP a step (forward and backward)")


# ---------------------------------------------------------------- one comparison


def fit_ppgen(model, data, epochs, batch_size, lr):
    fit = ppgen.fit_mle(model, data, epochs=epochs, batch_size=batch_size, lr=lr, progress=False)
    return [record["seconds"] for record in fit.history]


def run_fitter(name, initial, data, test, epochs, args):
    """Fits a fresh copy of `initial` with one fitter.

    Returns the wall seconds of each epoch (the step loop alone), the CPU seconds per epoch of
    the whole call (set-up included; robust to other processes' load) and the test nats/row.
    """
    budget = (epochs, args.batch_size, args.lr)
    torch.manual_seed(args.seed)
    cpu = time.process_time()
    if name == "hand":
        nodes = hand_copy(initial)
        if args.roots_solved:
            hand_roots(nodes, data)
        seconds = fit_hand(nodes, data, *budget)
        cpu = (time.process_time() - cpu) / epochs
        with torch.no_grad():
            return seconds, cpu, hand_log_prob(nodes, test).mean().item()
    model = copy.deepcopy(initial)
    seconds = (fit_ppgen if name == "ppgen" else fit_pyro)(model, data, *budget)
    cpu = (time.process_time() - cpu) / epochs
    return seconds, cpu, ppgen.log_prob(model, test).mean().item()


def compare(initial, program, fitters, args):
    """Interleaved timing repeats, then one full fit per fitter for the test log-likelihood."""
    data = draw_rows(program, args.train, args.seed + 1)
    test = draw_rows(program, args.test, args.seed + 2)
    truth = ppgen.log_prob(program, test).mean().item()
    for name in fitters:  # warm-up: first calls pay one-off costs
        run_fitter(name, initial, data, test, 1, args)
    repeats = []  # per repeat: fitter -> (median wall s/epoch, CPU s/epoch)
    for r in range(args.repeats):
        k = r % len(fitters)  # each fitter first, second, ... in turn
        for name in fitters[k:] + fitters[:k]:
            wall, cpu, _ = run_fitter(name, initial, data, test, args.timing_epochs, args)
            repeats.append((r, name, statistics.median(wall), cpu))
    full = {n: run_fitter(n, initial, data, test, args.epochs, args) for n in fitters}
    return truth, repeats, full


def report(label, truth, repeats, full, args):
    fitters = list(full)
    print(f"\n{label}: test log-likelihood of the generator itself {truth:.4f} nats/row")
    print(f"{args.repeats} interleaved repeats of {args.timing_epochs} epochs per fitter:")
    head = f"{'fitter':>6} {'wall s/epoch':>12} {'x hand med':>10} {'min':>6}"
    print(head + f" {'CPU s/epoch':>12} {'x hand med':>10} {'min':>6}")
    for name in fitters:
        mine = [(w, c) for _, n, w, c in repeats if n == name]
        hand = [(w, c) for _, n, w, c in repeats if n == "hand"]
        row = f"{name:>6}"
        for k in (0, 1):
            ratios = [m[k] / h[k] for m, h in zip(mine, hand, strict=True)]
            row += f" {statistics.median(m[k] for m in mine):>12.4f}"
            row += f" {statistics.median(ratios):>10.2f} {min(ratios):>6.2f}"
        print(row)
    print(f"one fit of {args.epochs} epochs per fitter (in turn, not interleaved):")
    head = f"{'fitter':>6} {'wall s/epoch':>12} {'CPU s/epoch':>12}"
    print(head + f" {'test nats/row':>13} {'- hand':>8}")
    for name in fitters:
        wall, cpu, ll = full[name]
        print(
            f"{name:>6} {statistics.median(wall):>12.4f} {cpu:>12.4f} {ll:>13.4f} "
            f"{ll - full['hand'][2]:>+8.4f} (relative {(ll - full['hand'][2]) / abs(ll):+.1e})"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="of the full fits")
    parser.add_argument("--timing-epochs", type=int, default=5, help="per fitter and repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arithmetic", action="store_true",
                        help="many-node cases: also the hand loop's share of arithmetic")
    parser.add_argument("--models", nargs="+", default=["relay", "mixed"],
                        help="relay, mixed, and many-node cases NODES:HIDDEN, e.g. 100:16 "
                        "500:64,64 (ppgen vs hand only; roots solved by both)")  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    print(f"flags: {vars(args)}  threads: {torch.get_num_threads()}")
    print(f"load average before timing: {os.getloadavg()}")
    print("ppgen solves root nodes in closed form; hand and pyro train them by gradient.")
    print("Ratios: ppgen or pyro over hand within each repeat; median and min over repeats.")
    specs = {
        "relay": (RELAY_EDGES, None, relay_race_program),
        "mixed": (MIXED_EDGES, MIXED_KINDS, mixed_program),
    }
    for label in args.models:
        pyro.set_rng_seed(args.seed)
        if label in specs:
            edges, kinds, program = specs[label]
            args.roots_solved, fitters = False, ("ppgen", "hand", "pyro")
            initial = ppgen.dag(edges, kinds=kinds, hidden=(64, 64))
        else:
            nodes, hidden = label.split(":")
            hidden = tuple(int(w) for w in hidden.split(","))
            program = many_program(int(nodes))
            pyro.set_rng_seed(args.seed)
            args.roots_solved, fitters = True, ("ppgen", "hand")
            initial = many_dag(int(nodes), hidden)
            if args.arithmetic:
                arithmetic(initial, program, args)
        report(label, *compare(initial, program, fitters, args), args)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
