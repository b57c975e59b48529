"""Tabular maximum likelihood and sampling on pgmpy's bundled networks: ppgen vs pgmpy.

For each network (asia, child, insurance, alarm, hailfinder, win95pts) and each number of rows,
rows are drawn with pgmpy's `simulate`, then:

- fit: ppgen (`ppgen.dag(edges, kinds all "tabular", cardinalities from the CPD state names)` and
  `ppgen.fit_mle(model, frame)` on the DataFrame itself: its categorical columns' codes, the
  data checks, the counts and the history's log-likelihoods, all timed; states in the sorted
  order of `simulate`'s categories, a column missing an undrawn state recast first, also timed)
  vs pgmpy (`DiscreteBayesianNetwork(edges).fit(frame, estimator=DiscreteMLE())`: pgmpy 1.1's
  `fit` takes an estimator instance, and `DiscreteMLE` is its maximum-likelihood estimator).
- cpd: the largest absolute difference between the two fits' CPD entries, over the parent
  configurations seen in the data, with pgmpy's state orders mapped onto ppgen's codes.
- sample: `ppgen.sample(model, n)` (integer codes) vs pgmpy's `simulate(n)` (labels).
- memory: the peak RSS that each job (ppgen fit, pgmpy fit, ppgen sample, pgmpy simulate) adds
  on n rows for each n of `--memory-rows` (100k and 1M), one run each, in a fresh process of its
  own (multiprocessing "spawn"; the timing stays in this process). That process loads the rows
  (a pickle), the network and ppgen's fitted tables, runs the job on 1000 rows (lazy imports,
  caches), collects garbage, hands glibc's freed heap back to the kernel (`malloc_trim`), resets
  the high-water mark (`/proc/self/clear_refs`, so VmHWM = VmRSS), runs the job and reports VmHWM
  minus that baseline: what the job itself holds at its peak, its result included, counted alike
  for numpy, pandas and torch memory. Linux, glibc.
- big: a fit of `--big-network` (alarm) on `--big-rows` (10M) rows drawn by ppgen, measured the
  same way, against `--budget-mib` (1536).

ppgen's tables are float64 by default here (`--dtype float32` for torch's usual default: its
tables then agree with pgmpy's only to float32 precision, about 1e-7).

Times are the median and min over `--repeats`, the two libraries alternating; the ratio is
pgmpy / ppgen per repeat, its median and min. One thread.

Run: python benchmarks/mle_tabular.py [--rows 100000 --memory-rows 100000 1000000 --repeats 3]

Measured 4 Dec 2026 on the shared 2-core machine (load average 0.5-3.6), pgmpy 1.1.2, float64,
one thread. Speed, `--repeats 5 --memory-rows --big-rows 0`, ratio pgmpy / ppgen per repeat:

    network      fit 100k rows: ppgen s  pgmpy s  ratio med (min)   cpd diff   sampling 100k: ratio med (min)
    asia                        0.0066   0.0423      6.2 (5.2)      2.2e-16                   19.6 (17.2)
    child                       0.0149   0.1677     10.9 (8.7)      3.3e-16                   24.9 (17.2)
    insurance                   0.0147   0.1787     12.0 (11.7)     3.3e-16                   30.3 (26.9)
    alarm                       0.0222   0.1898      8.5 (8.1)      3.3e-16                   24.2 (20.9)
    hailfinder                  0.0273   0.2751     10.0 (0.8*)     4.4e-16                   22.9 (22.3)
    win95pts                    0.0412   0.3556      8.8 (8.6)      3.3e-16                   27.5 (23.8)

(* one repeat of ppgen's met another process; the same network's next run, below, gives 9.7.)
Earlier the same day, before the fit's fixed costs were cut (pandas Index lookups of label
columns whose categories already are the coding's, a boolean `any` per column, a wide counting
index), asia's fit took 7.0 ms and was 4.7x pgmpy: it is the network where they weigh most.

Memory, the default run (`--repeats 1`: 100k and 1M rows, then the 10M-row fit), peak RSS
added (MiB), ppgen / pgmpy:

    network      n      fit: ppgen  pgmpy  ratio    sample: ppgen   pgmpy  ratio
    asia       100k           0.9    5.7   0.17            12.9    23.2   0.55
    asia         1M           9.5   62.6   0.15            64.8   222.9   0.29
    child      100k           2.1    6.7   0.31            30.6    39.9   0.77
    child        1M          21.0   73.0   0.29           171.1   398.7   0.43
    insurance  100k           2.8    7.4   0.37            35.2    57.8   0.61
    insurance    1M          27.7   79.8   0.35           217.4   565.4   0.38
    alarm      100k           3.7    9.2   0.41            53.0    71.7   0.74
    alarm        1M          37.0   96.9   0.38           312.7   717.0   0.44
    hailfinder 100k           5.9   11.1   0.53            88.9   102.2   0.87
    hailfinder   1M          57.2  115.1   0.50           477.4  1021.3   0.47
    win95pts   100k           7.7   14.9   0.52           101.5   147.3   0.69
    win95pts     1M          84.0  149.3   0.56           627.5  1479.2   0.42

Run again after `ppgen.sample` began to draw a `ppgen.dag` model one topological layer at a
time without tracing it (`--repeats 3 --big-rows 0`, load 2.6-3.1): fit 6.4-11.6x pgmpy (asia
6.4, min 6.2), sampling 22.6-30.9x; peak memory, ppgen / pgmpy, fit 0.17-0.58 and sampling
0.31-0.73 on every network at 100k and 1M rows.

The 10M-row fit of alarm (a 353 MiB DataFrame) adds 355 MiB at its peak, within the 1536 MiB
budget (the whole process: 1218 MiB); with int64 codes, those alone would take 37 x 80 MB =
2.8 GB. Before narrow codes, chunked counting and chunked sampling (1 Dec 2026), ppgen took
1.4-4.0x pgmpy's memory: e.g. a 1M-row fit of child 168.6 MiB against 72.9, sampling 1175.6
against 398.7.
"""

import argparse
import ctypes
import gc
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings

import torch

torch.set_num_threads(1)

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyro  # noqa: E402

import ppgen  # noqa: E402

NETWORKS = ["asia", "child", "insurance", "alarm", "hailfinder", "win95pts"]
JOBS = ["fit ppgen", "fit pgmpy", "sample ppgen", "sample pgmpy"]


def quiet():
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def load(name):
    from pgmpy.utils import get_example_model

    network = get_example_model(name)
    states = {v: sorted(network.get_cpds(v).state_names[v]) for v in network.nodes}
    return network, states


def build(network, states):
    g = nx.DiGraph()
    g.add_nodes_from(network.nodes)
    g.add_edges_from(network.edges)
    return ppgen.dag(
        g, kinds=dict.fromkeys(g.nodes, "tabular"),
        cardinalities={v: len(states[v]) for v in g.nodes},
    )  # fmt: skip


def with_all_states(frame, states):
    """The DataFrame, with every state of each node among its column's categories: `simulate`
    returns categorical columns of the states drawn, in sorted order, so a column whose
    categories lack an undrawn state is recast (its codes would otherwise shift)."""
    short = {v: states[v] for v in states if len(frame[v].cat.categories) < len(states[v])}
    return frame.astype({v: pd.CategoricalDtype(s) for v, s in short.items()}) if short else frame


# ---------------------------------------------------------------- the measured operations


def fit_ppgen(network, states, frame, batch_size=None):
    model = build(network, states)
    budget = {} if batch_size is None else {"batch_size": batch_size}
    tic = time.perf_counter()
    frame = with_all_states(frame, states)
    ppgen.fit_mle(model, frame, progress=False, **budget)
    seconds = time.perf_counter() - tic
    codes = {str(v): torch.from_numpy(frame[v].cat.codes.to_numpy()) for v in states}
    return model, codes, seconds


def fit_pgmpy(network, frame):
    from pgmpy.models import DiscreteBayesianNetwork
    from pgmpy.parameter_estimator import DiscreteMLE

    fitted = DiscreteBayesianNetwork(network.edges)
    fitted.add_nodes_from(network.nodes)
    tic = time.perf_counter()
    fitted.fit(frame, estimator=DiscreteMLE())
    return fitted, time.perf_counter() - tic


def sample_ppgen(model, n):
    tic = time.perf_counter()
    ppgen.sample(model, n)
    return time.perf_counter() - tic


def sample_pgmpy(network, n):
    tic = time.perf_counter()
    network.simulate(n, show_progress=False)
    return time.perf_counter() - tic


# ---------------------------------------------------------------- agreement of the CPDs


def max_cpd_difference(model, fitted, states, codes):
    """Max |ppgen - pgmpy| over CPD entries whose parent configuration occurs in the data."""
    worst = 0.0
    for v, conditional in zip(model.nodes, model.conditionals, strict=True):
        node = next(u for u in states if str(u) == v)
        cpd = fitted.get_cpds(node)
        parents = [next(u for u in states if str(u) == p) for p in model.parents[v]]
        ours = conditional.logits.detach().double().softmax(-1).numpy()
        order = [node, *cpd.variables[1:]]
        shape = [len(cpd.state_names[u]) for u in order]
        values = cpd.get_values().reshape(shape)
        # map pgmpy's state positions onto our codes, then move axes to (parents..., node)
        index = np.ix_(*[[states[u].index(s) for s in cpd.state_names[u]] for u in order])
        full = np.zeros([len(states[u]) for u in order])
        full[index] = values
        theirs = np.transpose(full, [order.index(p) for p in parents] + [0])
        seen = np.zeros(ours.shape[:-1], dtype=bool)
        if parents:
            seen[tuple(codes[str(p)].numpy() for p in parents)] = True
        else:
            seen = np.ones((), dtype=bool)
        worst = max(worst, float(np.abs(ours - theirs)[seen].max()))
    return worst


# ---------------------------------------------------------------- peak memory, a fresh process a job


def _kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _job(job, name, frame_path, state_path, n, batch_size, dtype, queue):
    """In a spawned process: load the inputs, warm up on 1000 rows, release the freed heap,
    reset the RSS high-water mark, run the job, and put the peak it added (MiB) and the
    process's whole peak (MiB) on the queue."""
    quiet()
    torch.set_default_dtype(getattr(torch, dtype))
    network, states = load(name)
    frame = pd.read_pickle(frame_path)
    model = build(network, states)
    model.load_state_dict(torch.load(state_path))
    run = {
        "fit ppgen": lambda rows, n: fit_ppgen(network, states, rows, batch_size),
        "fit pgmpy": lambda rows, n: fit_pgmpy(network, rows),
        "sample ppgen": lambda rows, n: sample_ppgen(model, n),
        "sample pgmpy": lambda rows, n: sample_pgmpy(network, n),
    }[job]
    run(frame.head(1000), 1000)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc: hand freed heap pages back to the kernel
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # Linux: VmHWM := VmRSS
    start = _kib("VmHWM")
    run(frame, n)
    peak = _kib("VmHWM")
    queue.put(((peak - start) / 1024, peak / 1024))


def peak_mib(job, *args):
    """Peak RSS (MiB) that `job` adds over its loaded inputs, and the process's whole peak,
    run once in a spawned process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_job, args=(job, *args, queue))
    process.start()
    extra = queue.get()
    process.join()
    return extra


def bench_memory(name, frame, model, n, batch_size, dtype, jobs=JOBS):
    """Peak RSS added by each fit on `frame` and each sampling of n rows, in MiB (with the
    process's whole peak)."""
    with tempfile.TemporaryDirectory() as folder:
        frame_path, state_path = f"{folder}/frame.pkl", f"{folder}/model.pt"
        frame.to_pickle(frame_path)
        torch.save(model.state_dict(), state_path)
        args = (name, frame_path, state_path, n, batch_size, dtype)
        return {job: peak_mib(job, *args) for job in jobs}


def big_frame(model, states, rows, chunk=1_000_000):
    """`rows` rows drawn from `model`, as `simulate` returns them (categorical columns of the
    states, int8 codes), drawn a million at a time (pgmpy's `simulate` of 10M rows would
    need gigabytes)."""
    parts = []
    for start in range(0, rows, chunk):
        drawn = ppgen.sample(model, min(chunk, rows - start))
        parts.append({v: drawn[str(v)].numpy().astype(np.int8) for v in states})
    return pd.DataFrame(
        {
            v: pd.Categorical.from_codes(np.concatenate([p[v] for p in parts]), states[v])
            for v in states
        }
    )


# ---------------------------------------------------------------- one network


def stats(values):
    return statistics.median(values), min(values)


def bench_fit(network, states, rows, repeats, seed, batch_size):
    frame = network.simulate(rows, seed=seed, show_progress=False)
    fit_ppgen(network, states, frame.head(1000), batch_size)  # each library's first-call costs
    fit_pgmpy(network, frame.head(1000))
    ours, theirs = [], []
    for r in range(repeats):
        pairs = [("ppgen", "pgmpy"), ("pgmpy", "ppgen")][r % 2]
        for who in pairs:
            if who == "ppgen":
                model, codes, seconds = fit_ppgen(network, states, frame, batch_size)
                ours.append(seconds)
            else:
                fitted, seconds = fit_pgmpy(network, frame)
                theirs.append(seconds)
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    diff = max_cpd_difference(model, fitted, states, codes)
    return frame, model, stats(ours), stats(theirs), stats(ratios), diff


def bench_sample(network, model, n, repeats):
    ours, theirs = [], []
    for r in range(repeats):
        for who in [("ppgen", "pgmpy"), ("pgmpy", "ppgen")][r % 2]:
            if who == "ppgen":
                ours.append(sample_ppgen(model, n))
            else:
                theirs.append(sample_pgmpy(network, n))
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    return stats(ours), stats(theirs), stats(ratios)


def row(ours, theirs, ratios):
    return (
        f"{ours[0]:>9.4f} {ours[1]:>7.4f} {theirs[0]:>9.4f} {theirs[1]:>7.4f} "
        f"{ratios[0]:>9.1f} {ratios[1]:>6.1f}"
    )


def ratio(ours, theirs):
    return f"{ours:>9.1f} {theirs:>9.1f} {ours / theirs:>6.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--rows", nargs="+", type=int, default=[100_000])
    parser.add_argument("--sample-rows", type=int, default=100_000)
    parser.add_argument("--memory-rows", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="0: no big fit")
    parser.add_argument("--big-network", default="alarm")
    parser.add_argument("--budget-mib", type=float, default=1536.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="fit_mle's batch_size (its default if unset)"
    )
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = parser.parse_args()
    quiet()
    torch.set_default_dtype(getattr(torch, args.dtype))  # ppgen's tables take the default dtype
    pyro.set_rng_seed(args.seed)
    print(f"flags: {vars(args)}  threads: {torch.get_num_threads()}")
    print(f"load average before timing: {os.getloadavg()}")
    print("fit seconds from the DataFrame (median/min); ratio = pgmpy / ppgen per repeat")
    print("(median/min); cpd = max |difference| on seen configurations.")
    header = f"{'ppgen med':>9} {'min':>7} {'pgmpy med':>9} {'min':>7} {'ratio med':>9} {'min':>6}"
    print(f"{'network':>10} {'rows':>7} {header} {'cpd diff':>9}")
    sampling, models = {}, {}
    for name in args.networks:
        network, states = load(name)
        for rows in args.rows:
            frame, model, *figures, diff = bench_fit(
                network, states, rows, args.repeats, args.seed, args.batch_size
            )
            print(f"{name:>10} {rows:>7} {row(*figures)} {diff:>9.1e}", flush=True)
        models[name] = (network, states, model)
        sampling[name] = row(*bench_sample(network, model, args.sample_rows, args.repeats))
    print(f"\nsampling {args.sample_rows} rows, seconds (median/min); ratio = pgmpy / ppgen")
    print(f"{'network':>10} {header}")
    for name, line in sampling.items():
        print(f"{name:>10} {line}")
    if args.memory_rows:
        print("\npeak RSS added (MiB), one fresh process a job: fit on n rows, sampling n rows;")
        print("ratio = ppgen / pgmpy")
        mib = f"{'ppgen':>9} {'pgmpy':>9} {'ratio':>6}"
        print(f"{'network':>10} {'n':>8} | fit {mib} | sample {mib}")
    for name, (network, _, model) in models.items():
        for n in args.memory_rows:
            frame = network.simulate(n, seed=args.seed, show_progress=False)
            peaks = {
                job: added
                for job, (added, _) in bench_memory(
                    name, frame, model, n, args.batch_size, args.dtype
                ).items()
            }
            fit = ratio(peaks["fit ppgen"], peaks["fit pgmpy"])
            drawn = ratio(peaks["sample ppgen"], peaks["sample pgmpy"])
            print(f"{name:>10} {n:>8} | fit {fit} | sample {drawn}", flush=True)
    if args.big_rows:
        if args.big_network not in models:  # its tables fitted on 100k rows draw the big rows
            network, states = load(args.big_network)
            model = bench_fit(network, states, 100_000, 1, args.seed, args.batch_size)[1]
            models[args.big_network] = (network, states, model)
        network, states, model = models[args.big_network]
        frame = big_frame(model, states, args.big_rows)
        (added, whole), *_ = bench_memory(
            args.big_network, frame, model, args.big_rows, args.batch_size, args.dtype,
            jobs=["fit ppgen"],
        ).values()  # fmt: skip
        data = frame.memory_usage(deep=True).sum() / 2**20
        verdict = "within" if added <= args.budget_mib else "OVER"
        print(
            f"\n{args.big_network}, a fit on {args.big_rows} rows (the DataFrame: {data:.0f} MiB): "
            f"the fit adds {added:.0f} MiB at its peak, {verdict} the budget of "
            f"{args.budget_mib:.0f} MiB; the process's whole peak: {whole:.0f} MiB"
        )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
