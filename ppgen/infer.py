r"""The three fits: thin assemblies of a step (:mod:`ppgen.steps`) and the one loop (:mod:`ppgen.loop`).

:func:`fit_mle` solves the closed-form nodes (:mod:`ppgen.closed_form`) and trains the others by
gradient ascent on the exact log-likelihood (:class:`ppgen.density.ExactLogLikelihood`);
:func:`fit_svi` trains a model and its guide on an ELBO (:mod:`ppgen.elbo`); :func:`fit_gan`
plays a GAN's game (:mod:`ppgen.adversarial`). Each checks its data first, records what the fit
learned about the data's labels on the model, and returns a :class:`~ppgen.result.FitResult`.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping

import pyro
import torch
from torch import Tensor, nn

from ppgen import distributed
from ppgen.adversarial import AdversarialStep
from ppgen.closed_form import solve
from ppgen.data import Table, check_columns, is_frame, place, read_table
from ppgen.density import (
    ExactLogLikelihood,
    ProgramLogLikelihood,
    check_codes,
    refuse_row_arguments,
    takes_rows,
)
from ppgen.device import resolve_device
from ppgen.elbo import ARGUMENT, ELBOS, ELBOObjective, per_row, set_rng_state, svi_table
from ppgen.io import LoadError
from ppgen.loop import check_budget, checkpoint_file, train
from ppgen.model import set_coding
from ppgen.result import FitResult
from ppgen.steps import EVALUATION_ROWS, GradientStep, Group
from ppgen.tracing import (
    fitted_parameters,
    program_parameters,
    warn_shadowed,
)

__all__ = ["FitResult", "fit_gan", "fit_mle", "fit_svi"]


def fit_mle(
    model: Callable[..., object],
    data: Mapping[str, object] | object | None = None,
    *args: object,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val: Mapping[str, object] | object | None = None,
    patience: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    **kwargs: object,
) -> FitResult:
    r"""Fits a fully observed program by exact maximum likelihood.

    Tabular, linear-Gaussian and root (Normal, LogNormal, Bernoulli, Binomial, Categorical,
    Geometric, Poisson, Exponential) nodes are solved in closed form (see
    :func:`ppgen.closed_form.solve_closed_form`: not a subclass with its own distribution, nor
    a node with a frozen or parametrized tensor); the other parameters by minibatch Adam on the
    exact log-likelihood. Each node's parameters enter only its own term, so early stopping on
    `val` is per node, and each node keeps its best validation epoch; a module that makes
    several sites, or a parameter that several modules share, is fitted by steps on all their
    terms together. The data are checked first; on bad data the model is left
    untouched.

    A program in Pyro's style, without the keyword `n`, takes its data as arguments, as for
    :func:`ppgen.log_prob`: each step runs it on all of its data (no batches, no closed forms),
    on the sum of its sites' log-densities as in Pyro's trace, `pyro.factor` terms included;
    the history holds that sum per row of the data tensor (the total, without one).

    Arguments:
        model: A Pyro program: a `ppgen.Model`, any `PyroModule` or a function. Its module
            parameters and the `pyro.param`s it reads are fitted.
        data: With `n`: a dict of site name to array (rows first) or a pandas DataFrame.
            Without `n`: a dict of site name to value that conditions `model`, `None`, or else
            (a tensor) its first argument.
        args, kwargs: Other inputs of `model`.
        epochs, batch_size, lr: The Adam budget for neural nodes.
        weight_decay: Adam's L2 penalty on the neural nodes' parameters (a Gaussian prior:
            the fit is then the maximum a posteriori); closed-form nodes stay exact.
        val: Validation data, in the same form as `data`.
        patience: Epochs without validation improvement before a node stops.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.
        checkpoint, checkpoint_every, resume: A folder for checkpoints of the whole fit, the
            epochs between them, and whether to continue from the one there (see :func:`ppgen.loop.train`:
            a resumed fit ends where an uninterrupted one would). Ctrl-C returns the best
            parameters so far, with a warning.

    Returns:
        A :class:`FitResult`; the model holds the fitted parameters.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "bernoulli", "b": "linear_gaussian"})
        >>> fit = fit_mle(model, {"a": [0, 1, 1, 0], "b": [0.0, 2.0, 2.2, 0.1]}, progress=False)
        >>> fit.closed_form
        ['a', 'b']
    """
    start = time.perf_counter()
    check_budget(epochs, batch_size)
    path = checkpoint_file(checkpoint, resume)  # before anything changes
    device = resolve_device(None, device)  # where to go, once the data have passed their checks
    distributed.init_from_env(device)
    if not takes_rows(model):  # Pyro's style: the data are the program's arguments
        options = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "progress": progress,
                   "checkpoint": checkpoint, "every": checkpoint_every, "resume": resume}  # fmt: skip
        return _fit_program(model, data, args, kwargs, val, device, start, options)
    data = read_table(model, data, args, kwargs, device=device)
    refuse_row_arguments(args, kwargs, len(data), "fit_mle")
    if val is not None:
        check_columns(val, data)
        val = read_table(model, val, args, kwargs, categories=data.categories, device=device,
                         known=True)  # fmt: skip
    resolve_device(model, device)
    probe = data.rows(slice(0, 64))
    objective = ExactLogLikelihood(model, probe, *args, data_rows=len(data), **kwargs)
    resuming = path is not None and path.exists()  # a checkpoint that may yet be refused
    modules = [m for m, _ in (objective.factors or {}).values()] if resuming else []
    before = [(p, p.detach().clone()) for m in modules for p in m.parameters()]
    for rows in (data, val) if val is not None else (data,):  # before anything changes
        check_codes(objective.factors or {}, rows.columns)
    closed, counted = _solve_closed_forms(objective, data)
    groups = _groups(objective, model, probe, closed)
    step = GradientStep(objective, groups, lr=lr, weight_decay=weight_decay,
                        constant=_constant(objective, groups, counted, data, batch_size))  # fmt: skip
    trainable = {p for ps, _ in groups.values() for p in ps}
    exact = [objective.factors[name][0] for name in closed]
    fixed = [p for m in exact for p in m.parameters() if p.requires_grad and p not in trainable]
    for p in fixed:  # closed-form nodes still count in the history, but take no gradients
        p.requires_grad_(False)
    identity = None
    if path is not None:
        structure = {n: [type(m).__name__, ps] for n, (m, ps) in (objective.factors or {}).items()}
        settings = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                    "patience": patience}  # fmt: skip
        identity = _identity("fit_mle", [model], data, val, settings, structure or None)
    try:
        result = train(
            step, data, val, epochs=epochs, batch_size=batch_size, patience=patience,
            progress=progress, description="fit_mle", checkpoint=checkpoint,
            every=checkpoint_every, resume=resume, identity=identity,
        )  # fmt: skip
    except LoadError:  # the checkpoint refused: the closed forms are undone
        with torch.no_grad():
            for p, value in before:
                p.copy_(value)
        raise
    finally:
        for p in fixed:
            p.requires_grad_(True)
    result.closed_form = closed
    _keep_coding(model, data, result)
    result.seconds = time.perf_counter() - start  # the checks and closed forms included
    return result


def _fit_program(
    model: Callable[..., object],
    data: object,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    val: object,
    device: torch.device | None,
    start: float,
    options: dict[str, object],
) -> FitResult:
    """:func:`fit_mle` of a program in Pyro's style: every step runs it on all of its data."""
    if val is not None:
        raise ValueError(
            "val needs a program taking the number of rows as its keyword n; for one that "
            "takes its data as arguments, compare ppgen.log_prob on held-out data after it."
        )
    objective = ProgramLogLikelihood(model, data, args, kwargs, purpose="fit_mle")
    resolve_device(model, device)
    groups = {"all": (fitted_parameters(objective, model), list(objective()))}
    lr, weight_decay = options.pop("lr"), options.pop("weight_decay")
    step = GradientStep(objective, groups, lr=lr, weight_decay=weight_decay)
    rows = objective.table
    result = train(step, rows, None, batch_size=len(rows), patience=None, description="fit_mle",
                   **options)  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def _solve_closed_forms(
    objective: ExactLogLikelihood, data: Table
) -> tuple[list[str], dict[str, Tensor]]:
    """Solves every site whose conditional has a closed form, one node's columns at a time;
    returns those sites, and the log-likelihood sums the solvers counted for free."""
    closed: list[str] = []
    counted: dict[str, Tensor] = {}
    if objective.factors is None:
        return closed, counted
    group = distributed.active()  # each rank counts its own rows, and the counts are summed
    own = slice(None) if group is None else slice(group[0], None, group[1])
    # a parameter of several sites (one module's, or tied between modules): steps fit it on
    # all their terms
    uses = Counter(id(p) for m, _ in objective.factors.values() for p in m.parameters())
    for name, (module, parents) in objective.factors.items():
        if any(uses[id(p)] > 1 for p in module.parameters()):
            continue
        value, parent_values = data.column(name, own), [data.column(p, own) for p in parents]
        solved, total = solve(module, value, parent_values, name)
        if solved:
            closed.append(name)
        if total is not None:
            counted[name] = total
    return closed, counted


def _groups(
    objective: ExactLogLikelihood,
    model: Callable[..., object],
    probe: dict[str, Tensor],
    closed: list[str],
) -> dict[str, Group]:
    """The groups trained by gradient steps: one a neural node (its parameters enter its term
    alone), or all together where a parameter is shared or the structure is unknown."""
    if objective.factors is None:  # the model's parameters, and the pyro.params it reads
        terms = list(objective(probe))  # the columns, and the sites the program observes itself
        groups = {"all": (fitted_parameters(lambda: objective(probe), model), terms)}
    else:
        neural = {  # the parameters a step may change: not the frozen ones
            n: [p for p in m.parameters() if p.requires_grad]
            for n, (m, _) in objective.factors.items()
            if n not in closed
        }
        unique = {id(p): p for ps in neural.values() for p in ps}
        if len(unique) == sum(map(len, neural.values())):
            groups = {n: (ps, [n]) for n, ps in neural.items()}
        else:  # a parameter shared by several sites: their terms are trained together
            groups = {"all": (list(unique.values()), list(neural))}
    return {n: (ps, terms) for n, (ps, terms) in groups.items() if ps}


def _constant(
    objective: ExactLogLikelihood,
    groups: Mapping[str, Group],
    counted: dict[str, Tensor],
    data: Table,
    batch_size: int,
) -> dict[str, Tensor]:
    """The sums over the training rows of the terms no step changes: counted by the solvers
    where they all were, else evaluated once."""
    trained = {t for _, terms in groups.values() for t in terms}
    untrained = [s for s in objective.factors or () if s not in trained]
    if not untrained:
        return {}
    if not groups and len(counted) == len(data.columns):
        return counted
    terms = objective.terms(data, max(batch_size, EVALUATION_ROWS), untrained)
    for name, t in terms.items():
        if groups and not torch.isfinite(t).all():
            raise ValueError(
                f"The log-likelihood of site {name!r} is non-finite on the training rows, and "
                "no step can change it: it has no parameters to train."
            )
    return {name: t.sum() for name, t in terms.items()}


def _identity(
    fit: str,
    programs: list[object],
    data: Table,
    val: Table | None,
    settings: dict[str, object],
    structure: object = None,
) -> dict[str, object]:
    """What a checkpoint belongs to: the fit, its programs (their classes and the names and
    shapes of their parameters, and each site's conditional and parents where known), a
    fingerprint of the training and validation rows, and the settings that shape the steps."""
    described = []
    for program in programs:
        owner = getattr(program, "__self__", program)
        shapes = [[n, list(p.shape)] for n, p in getattr(owner, "named_parameters", list)()]
        described.append([f"{type(owner).__module__}:{type(owner).__qualname__}", shapes])
    return {
        "fit": fit,
        "model": described,
        "structure": structure,
        "data": [_fingerprint(data), None if val is None else _fingerprint(val)],
        "settings": settings,
    }


def _fingerprint(data: Table) -> str:
    """A digest of the rows: each column's name, dtype, shape and values."""
    digest = hashlib.blake2b(digest_size=16)
    for name, column in sorted(data.columns.items()):
        digest.update(f"{name}|{column.dtype}|{tuple(column.shape)}".encode())
        digest.update(column.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _keep_coding(model: Callable[..., object], data: Table, result: FitResult) -> None:
    """Records the labels' coding of a fit on the model (and on the result)."""
    if data.categories:
        set_coding(model, data.categories)
    result.categories = dict(data.categories)


def fit_svi(
    model: Callable[..., object],
    guide: Callable[..., object] | str,
    data: Mapping[str, object] | Tensor | None = None,
    *args: object,
    elbo: str | None = None,
    num_particles: int = 1,
    epochs: int = 200,
    batch_size: int | None = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val: Mapping[str, object] | Tensor | None = None,
    patience: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    **kwargs: object,
) -> FitResult:
    r"""Fits a model with latent sites and its guide by minibatch stochastic variational inference.

    Pyro's ELBO is the objective of the loop of :func:`fit_mle` (:func:`ppgen.loop.train`): Adam on the
    parameters of `model` and `guide`, early stopping on the validation ELBO, and the
    parameters of the best validation epoch kept. The guide and the model run once on all the
    rows first, as `SVI.step` would, for the checks (Pyro's validation, the data against the
    sites that observe them); the steps run without validation. An error inside either
    program is one sentence naming it and the line, the original chained. Where every site
    of the model and the guide comes from a ppgen :class:`~ppgen.nn.Node` called on other
    sites' values or on the inputs (reparameterised guide sites, no masks or scales), the
    `"trace"` and `"mean_field"` ELBOs are computed from those modules alone, without tracing,
    after a check against Pyro's on the same draws. The data come in one of two conventions:

    - a dict of observed site name to array (rows first), as for :func:`fit_mle`: each batch
      conditions `model(*args, n=N, **kwargs)`, and the guide is called as `guide(*args, n=N,
      **kwargs)`, plus `data=` the batch's columns where its signature names `data`
      (amortised guides, :class:`ppgen.guides.Amortized` among them);
    - anything else (a dict too, where `model` takes no keyword `n`) is the programs' first
      argument, as `SVI.step(data, *args, **kwargs)` calls them: every argument with rows (a
      tensor whose leading size is the one most tensor arguments share, at any position or
      keyword) is indexed with the same rows in each batch, and the others pass unchanged.

    With `batch_size=None` (or at least the rows), where the program subsamples itself (a
    plate with `subsample_size`) or no argument has rows, one batch holds the data in its
    order and each epoch is `SVI.step`'s, on the random stream the fit started with: the same
    parameters as SVI's with Adam after as many steps (with `checkpoint`, the steps draw from
    the loop's random state instead, which a checkpoint saves, so that a resumed fit ends where
    an uninterrupted one would). With minibatches, the model's plate of
    the rows has the batch's size. Latent sites outside it (global ones, such as a prior's
    mean) and their guide sites count in each batch by the batch's share of the rows, as
    Pyro's subsampling plates scale the local ones, and a short last batch weighs by its rows:
    an epoch sums the ELBO of the whole data once, and the fit does not depend on
    `batch_size`. (The validation ELBO per row counts them per training row.) A program
    whose plate of the rows is told the data's size (`pyro.plate("data", size,
    len(covariates))`, as in Pyro's `examples/svi_torch`) scales each batch itself: its
    ELBO is taken as it is.

    Arguments:
        model: A Pyro program.
        guide: A Pyro program sampling the latent sites of `model`, or `"auto_normal"` /
            `"auto_delta"` for Pyro's `AutoNormal` / `AutoDelta` built on `model`.
        data: The observed rows as a dict or a DataFrame, the programs' first argument, or
            `None` for programs whose data are inside them (`SVI.step(*args)`, as in Pyro's
            tensor-shapes tutorial).
        args, kwargs: Other inputs of `model` and `guide`.
        elbo: `"trace"` (`Trace_ELBO`), `"mean_field"` (`TraceMeanField_ELBO`, analytic KL
            where known), `"trace_enum"` (`TraceEnum_ELBO`, its `max_plate_nesting` read from
            the programs), `"trace_graph"` (`TraceGraph_ELBO`) or `"iwae"` (the
            importance-weighted bound with `num_particles` draws, per row: the value of
            `RenyiELBO(alpha=0)`, whose log-sum-exp runs inside the data plate, computed
            differentiably by :mod:`ppgen.importance` since `RenyiELBO` has no differentiable
            loss; every site in the data plate, reparameterised guides with a density only (no
            `AutoDelta`), the rows in the
            first argument alone). `None`: `"trace_enum"` where a site is marked for
            enumeration, `"trace_graph"` where a guide's site asks for a baseline
            (`infer={"baseline": ...}`), else `"trace"`. Under `"trace"` or `"trace_graph"`, a guide's
            site marked for enumeration is drawn, its gradient estimated by the score
            function, as Pyro's SVI would, with a warning.
        num_particles: The draws per row of the ELBO's estimate.
        epochs, batch_size, lr: The Adam budget (`batch_size=None`: every row in one batch).
            The defaults (200 epochs of batches of 64,
            lr 1e-3) take more and smaller steps than :func:`fit_mle`'s (100, 256): the ELBO's
            gradients are noisy whatever the batch, so steps count more than rows per step
            (they were chosen on a validation split of the digits: `benchmarks/vae.py`).
        weight_decay: Adam's L2 penalty on the parameters (a Gaussian prior on them).
        val: Validation data, in the same form as `data`.
        patience: Epochs without validation improvement before the fit stops.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.
        checkpoint, checkpoint_every, resume: As for :func:`fit_mle`.

    Returns:
        A :class:`FitResult` whose history holds the ELBO per row; the model and guide hold
        the fitted parameters.

    Raises:
        ValueError: For bad data (naming the column), an error inside a program, an
            enumerated site under a non-enumerating `elbo` (but a guide's, drawn under
            `"trace"` or `"trace_graph"`), with minibatches a parameter per
            row (pass `batch_size=None`, or subsample in the program), and when the ELBO
            becomes non-finite (naming the site; the model keeps the parameters of the last
            epoch that ended).

    Example:
        >>> def model(x):  # the mean of x, with a N(0, 1) prior
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("rows", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> fit = fit_svi(model, "auto_delta", torch.ones(8), epochs=3, progress=False)
        >>> len(fit.history)
        3
    """
    if elbo is not None and elbo not in (*ELBOS, "iwae"):
        name = next((k for k, v in ELBOS.items() if type(elbo) is v), None)  # SVI's loss, ported
        if name is not None:
            raise ValueError(
                f"elbo takes the name of Pyro's ELBO, elbo={name!r} for {type(elbo).__name__} "
                "(its max_plate_nesting is read from the programs, and num_particles is "
                "fit_svi's own option)."
            )
        raise ValueError(
            f"elbo must be one of {', '.join(map(repr, [*ELBOS, 'iwae']))}, not {elbo!r}."
        )
    if isinstance(guide, str) and guide not in ("auto_normal", "auto_delta"):
        raise ValueError(f"guide must be a program, 'auto_normal' or 'auto_delta', not {guide!r}.")
    check_budget(epochs, 1 if batch_size is None else batch_size)
    # model(data, *args, **kwargs), as SVI.step calls it: a dict too, where no keyword n takes rows
    argument = not takes_rows(model) or not (isinstance(data, Mapping) or is_frame(data))
    positional = (data, *args) if argument and data is not None else args
    warn_shadowed("fit_svi", _OPTIONS, model, guide, positional=positional)
    checkpoint_file(checkpoint, resume)  # before anything changes
    device = resolve_device(None, device)  # where to go, once the data have passed their checks
    distributed.init_from_env(device)
    if argument:
        args = args if data is None else (data, *args)  # None: programs without data
        data, val = _argument_rows(model, args, kwargs, val, device, batch_size, elbo)
    else:
        data = svi_table(model, data, args, kwargs, device)
        if val is not None:
            check_columns(val, data)
            val = svi_table(model, val, args, kwargs, device, categories=data.categories,
                            known=True)  # fmt: skip
    resolve_device(model, device)
    rows = None if argument and _NO_ROWS in data.columns else len(data)
    objective = ELBOObjective(
        model, guide, elbo, num_particles, list(data.columns), argument, args, kwargs, rows=rows
    )
    resolve_device(objective.guide, device)
    unique = fitted_parameters(  # the structure, from the programs run once on all rows
        lambda: objective.inspect(data.rows(slice(None)), batch_size), model, objective.guide
    )
    if not unique:
        raise ValueError(
            "Neither the model nor the guide has parameters to fit (no nn.Parameter or pyro.param)."
        )
    _as_floats(objective, data, val, program_parameters(model))
    if checkpoint is not None:  # the loop's random state alone is saved: the steps draw from it
        objective.stream = []
    batch_size = objective.batch_size
    _warn_short_batches(len(data), batch_size)
    objective.prepare(data.rows(slice(0, batch_size)))
    # Adam's eps of SVI's step on the (global) batch's sum, the loop's loss being its mean per row
    world = (distributed.active() or (0, 1))[1]
    step = GradientStep(objective, {"all": (unique, ["elbo"])}, lr=lr, weight_decay=weight_decay,
                        eps=1e-8 / (world * batch_size))  # fmt: skip
    identity = None
    if checkpoint is not None:
        settings = {"elbo": elbo, "num_particles": num_particles, "batch_size": batch_size,
                    "lr": lr, "weight_decay": weight_decay, "patience": patience}  # fmt: skip
        identity = _identity("fit_svi", [model, objective.guide], data, val, settings)
    with pyro.validation_enabled(False):  # checked on all rows above; lean steps here
        result = train(
            step, data, val, epochs=epochs, batch_size=batch_size, patience=patience,
            progress=progress, description="fit_svi", checkpoint=checkpoint,
            every=checkpoint_every, resume=resume, identity=identity,
        )  # fmt: skip
    if objective.stream:  # the random stream continues as after SVI's steps
        set_rng_state(objective.stream)
    _keep_coding(model, data, result)
    result.guide = objective.guide
    return result


# fit_svi's own keywords, which a program's parameter of the same name never receives
_OPTIONS = ("elbo", "num_particles", "epochs", "batch_size", "lr", "weight_decay", "val",
            "patience", "device", "progress", "checkpoint", "checkpoint_every", "resume")  # fmt: skip


def _warn_short_batches(rows: int, batch_size: int) -> None:
    """Says where the loop cannot weigh a short last batch by its rows: under a process group,
    each rank's step is a mean over the global batch, whatever its size."""
    group = distributed.active()
    if group is not None and batch_size and rows % (batch_size * group[1]):
        warnings.warn(
            f"Under torchrun the last batch of each epoch ({rows % (batch_size * group[1])} of "
            f"{rows} rows) takes a step as large as a full one, where pyro.infer.SVI would weigh "
            "it by its rows; choose batch_size so that batch_size x world size divides the "
            "rows, or batch_size=None.",
            UserWarning,
            stacklevel=3,
        )


_NO_ROWS = "*none"  # the one empty row of a program whose arguments have none


def _argument_rows(
    model: Callable[..., object],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    val: Tensor | tuple[Tensor, ...] | None,
    device: torch.device | None,
    batch_size: int | None,
    elbo: str | None,
) -> tuple[Table, Table | None]:
    """The arguments of `model(*args, **kwargs)` that have rows (:func:`~ppgen.elbo.per_row`),
    checked and placed, and `val` (their held-out rows: a tensor for one, else a tuple)."""
    size, columns, hidden = per_row(args, kwargs)
    if hidden is not None and batch_size is not None and size is not None and batch_size < size:
        raise ValueError(
            f"Argument {hidden[1:]!r} holds tensors with rows inside a container that no "
            "minibatch can index; pass batch_size=None to train on all rows at once, or pass "
            "them as tensors."
        )
    if elbo == "iwae" and list(columns) != [ARGUMENT]:
        raise ValueError("elbo='iwae' needs the rows in the program's first argument alone.")
    if not columns:
        columns = {_NO_ROWS: torch.zeros(1, 0)}
    for key, value in columns.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(
                "The data tensor must have rows, and no NaN or inf."
                if key == ARGUMENT
                else f"Argument {key[1:]!r} holds NaN or inf."
            )
    placed, device = place(columns, device, model)
    data = Table(placed, device=device)
    if val is None:
        return data, None
    held = (val,) if isinstance(val, Tensor) else tuple(val)
    if len(held) != len(columns) or not all(isinstance(v, Tensor) for v in held):
        raise ValueError(
            f"val must hold the held-out rows of the {len(columns)} arguments with rows "
            f"({', '.join(k[1:] for k in columns)}): a tensor for one, else a tuple."
        )
    placed, _ = place(dict(zip(columns, held, strict=True)), device, model)
    return data, Table(placed, device=device)


def _as_floats(
    objective: ELBOObjective, data: Table, val: Table | None, parameters: list[Tensor]
) -> None:
    """Integer columns that a site reads as floats (images under a Bernoulli) become the
    model's floats; those a program uses as integers (indices) stay integers."""
    floats = [p.dtype for p in parameters if p.is_floating_point()]
    dtype = floats[0] if floats else torch.get_default_dtype()
    for rows in (data, val):
        for key in objective.floats & set(rows.columns if rows is not None else ()):
            rows.columns[key] = rows.columns[key].to(dtype)
    if objective.floats and objective.whole is not None:
        objective.whole = data.rows(slice(None))


def _check_gan_rows(gan: nn.Module, data: Table, val: Table | None) -> None:
    """Checks, before any step, that the generator's rows, the data and `val` agree in shape
    and that `val` has the two rows an MMD² needs; rows of other floats take the generator's."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        try:
            fake = gan.generator(gan.prior(2).sample())
        except RuntimeError as error:
            raise ValueError(
                f"The generator cannot take the GAN's codes of z_dim={gan.z_dim}: {error}"
            ) from None
    made = tuple(fake.shape[1:])
    for table in (data, val) if val is not None else (data,):
        for key, column in table.columns.items():
            if column.is_floating_point() and fake.is_floating_point():
                table.columns[key] = column.to(fake.dtype)
    shapes = {
        name: next(iter(t.columns.values())).shape
        for name, t in [("data", data), ("val", val)]
        if t is not None
    }
    if "val" in shapes and shapes["val"][0] < 2:
        raise ValueError("val must have at least 2 rows to compare with the samples, not 1.")
    for name, shape in shapes.items():
        if tuple(shape[1:]) != made:
            raise ValueError(
                f"The {name} rows have shape {tuple(shape[1:])}, but the generator makes rows of "
                f"shape {made}."
            )


def fit_gan(
    gan: nn.Module,
    data: Tensor,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    lr_g: float = 1e-3,
    lr_d: float = 1e-3,
    d_steps: int = 1,
    betas: tuple[float, float] = (0.5, 0.999),
    r1: float = 0.0,
    average: float | None = None,
    val: Tensor | None = None,
    val_samples: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
) -> FitResult:
    r"""Fits a :class:`ppgen.models.GAN` by alternating Adam steps of its two players.

    The loop is that of :func:`fit_mle` and :func:`fit_svi` (:func:`ppgen.loop.train`), with the
    step :class:`ppgen.adversarial.AdversarialStep`: on each batch of real rows, `d_steps` steps of the
    discriminator (each on fresh codes), then one step of the generator with the GAN's loss.
    There is no likelihood. Without `val`, the last epoch's parameters are kept. With `val`,
    each epoch's generator is scored by the MMD² (:func:`ppgen.metrics.mmd`) of `val_samples`
    of its rows against the held-out rows `val`, and the GAN keeps both players' parameters of
    the epoch with the lowest: its quality swings from one epoch to the next, and the last one
    is a poor pick. Under `torchrun`, both players run in `DistributedDataParallel` and the
    rows are shared as for :func:`fit_mle` (`docs/scaling.md`).

    Arguments:
        gan: The GAN.
        data: The real rows, of shape :math:`(N, *)`.
        epochs, batch_size: The budget.
        lr_g, lr_d: The learning rates of the generator and the discriminator.
        d_steps: Discriminator steps per generator step.
        betas: Adam's betas, for both players.
        r1: The weight of the R1 penalty on the discriminator's gradient at real rows (see
            :class:`~ppgen.adversarial.AdversarialStep`; 0: none).
        average: The decay of an exponential moving average of the generator's parameters
            over its steps, e.g. 0.999 (`None`: none). The average is what is scored against
            `val`, and what the GAN's generator holds at the end: it swings far less than the
            trained parameters.
        val: Held-out real rows, of the shape of `data`, that choose the epoch (never the
            test rows); `None`: the last epoch.
        val_samples: The generated rows scored against `val` each epoch.
        device: `"cpu"`, `"cuda"`, `"auto"` or `None` (where the model is).
        progress: Whether to show a progress bar.
        checkpoint, checkpoint_every, resume: As for :func:`fit_mle`: both players, their
            optimisers and the average are written, and a resumed fit ends where an
            uninterrupted one would.

    Returns:
        A :class:`FitResult` whose history holds, per epoch, the mean per row of the
        discriminator's loss `train/loss_d`, the generator's `train/loss_g`, the
        discriminator's accuracy `train/accuracy` on real and generated rows and its mean
        probabilities that they are real, `train/d_real` (:math:`D(x)`) and `train/d_fake`
        (:math:`D(G(z))`), as measured during the steps, and with `val` the MMD² `val/mmd`.
        `best_epoch["gan"]` is then the epoch kept (without `val`, `best_epoch` names the last
        for each player).

    Raises:
        ValueError: For data with NaN or inf, and when a player's loss becomes non-finite
            (naming it; the model keeps the parameters of the last epoch that ended).

    Example:
        >>> from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator
        >>> gan = GAN(MLPGenerator(2, 1), MLPDiscriminator(1), 2)
        >>> fit = fit_gan(gan, torch.randn(64, 1), epochs=2, batch_size=32, progress=False)
        >>> sorted(fit.history[-1])  # doctest: +NORMALIZE_WHITESPACE
        ['epoch', 'seconds', 'train/accuracy', 'train/d_fake', 'train/d_real',
         'train/loss_d', 'train/loss_g']
    """
    check_budget(epochs, batch_size)
    checkpoint_file(checkpoint, resume)  # before anything changes
    device = resolve_device(gan, device)
    distributed.init_from_env(device)
    rows = svi_table(gan, data, (), {}, device, observed_by_model=False)
    if val is not None:
        val = svi_table(gan, val, (), {}, device, observed_by_model=False)
    _check_gan_rows(gan, rows, val)
    step = AdversarialStep(
        gan, lr_g=lr_g, lr_d=lr_d, d_steps=d_steps, betas=betas, r1=r1, samples=val_samples,
        average=average, validated=val is not None,
    )  # fmt: skip
    identity = None
    if checkpoint is not None:
        settings = {"batch_size": batch_size, "lr_g": lr_g, "lr_d": lr_d, "d_steps": d_steps,
                    "betas": list(betas), "r1": r1, "average": average,
                    "val_samples": val_samples}  # fmt: skip
        identity = _identity("fit_gan", [gan.generator, gan.discriminator], rows, val, settings)
    result = train(
        step, rows, val, epochs=epochs, batch_size=batch_size, patience=None, progress=progress,
        description="fit_gan", checkpoint=checkpoint, every=checkpoint_every, resume=resume,
        identity=identity,
    )  # fmt: skip
    if step.averaged is not None:  # the GAN's generator becomes the average (of the epoch kept)
        with torch.no_grad():
            for p, q in zip(gan.generator.parameters(), step.averaged.module.parameters(),
                            strict=True):  # fmt: skip
                p.copy_(q)
    return result
