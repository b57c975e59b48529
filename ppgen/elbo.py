r"""The objectives of :func:`ppgen.fit_svi`: Pyro's ELBO modules, or one pass through ppgen's nodes.

Where the guide's and the model's sites are all ppgen conditionals of known inputs, the ELBO is
computed from those modules alone, without tracing the programs each step (checked once against
Pyro's own ELBO on the same draws); otherwise Pyro's `Trace_ELBO` / `TraceMeanField_ELBO` module
is the objective, and the importance-weighted bound comes from :mod:`ppgen.importance`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoGuide, AutoNormal
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Independent, constraints, kl_divergence
from torch.nn.utils.rnn import PackedSequence

from ppgen import distributed
from ppgen.batched import Stacked, groups
from ppgen.data import Table, check_support, is_frame, place, read_table, varies
from ppgen.importance import check_guided, log_weights, reads_rows
from ppgen.nn import Node
from ppgen.result import NONFINITE
from ppgen.tracing import (
    error_place,
    is_unweighted,
    is_variable,
    program_parameters,
    trace_calls,
    validates,
)

__all__ = [
    "ARGUMENT", "ELBOS", "ELBOObjective", "check_observed", "per_row", "set_rng_state", "svi_table"
]

ARGUMENT = "*data"  # the column of the programs' first argument, where it has rows
ELBOS = {
    "trace": Trace_ELBO,
    "mean_field": TraceMeanField_ELBO,
    "trace_enum": TraceEnum_ELBO,
    "trace_graph": TraceGraph_ELBO,
}


class ELBOObjective(nn.Module):
    """The ELBO of a batch as the loop's one term `"elbo"`, a scalar summed over the rows.

    With `rows`, the number of rows of the whole data, the sites outside the plate of the rows
    (global latents, and their guide sites) count in each batch by the batch's share of the
    rows, so that an epoch counts them once, as the ELBO of the whole data does, whatever the
    batch size: :meth:`inspect` finds that plate.

    Example:
        >>> vae = ppgen.models.VAE(4, 2, hidden=(8,))
        >>> x = torch.ones(3, 4)
        >>> objective = ELBOObjective(vae, vae.guide, "trace", 1, ["*data"], True, (x,), {})
        >>> objective.prepare({"*data": x})
        True
        >>> objective({"*data": x})["elbo"].shape
        torch.Size([])
    """

    def __init__(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        elbo: str | None,
        num_particles: int,
        observed: list[str],
        argument: bool,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model, self.args, self.kwargs = model, args, kwargs
        self.rows, self.plate = rows, None  # the plate of the rows, found by inspect
        self.observed, self.argument = observed, argument
        self.num_particles, self.iwae = num_particles, elbo == "iwae"
        self.auto = guide in ("auto_normal", "auto_delta")
        if self.auto:
            prototype = model if self.argument else poutine.block(model, hide=observed)
            guide = (AutoNormal if guide == "auto_normal" else AutoDelta)(prototype)
        self.guide = guide
        self.plan, self.batch_size, self.floats = None, None, set()
        self.stacked: Stacked | None = None  # the fast path's same-shaped model terms at once
        self.drawn = False  # the guide's enumeration marks taken off (a drawing ELBO)
        self.whole: dict[str, Tensor] | None = None  # the full batch, in the data's order
        self.stream: list[Tensor] = []  # the full batch's random state, as SVI's (or none)
        self.inits: dict[str, list[Tensor]] = {}  # the state after each param's drawn init
        self.reads_rows = not argument and reads_rows(guide)  # an amortised guide of columns
        self._use(elbo)

    def _use(self, elbo: str | None) -> None:
        """Makes Pyro's ELBO `elbo` (`None`: `Trace_ELBO`) the objective."""
        self.elbo, self.mean_field = elbo, elbo == "mean_field"
        if not self.iwae:
            self.loss = ELBOS[elbo or "trace"](num_particles=self.num_particles)

    @property
    def fast(self) -> bool:
        """Whether the ELBO is computed from the ppgen modules alone, without tracing."""
        return self.plan is not None

    def inspect(self, whole: dict[str, Tensor], batch_size: int | None) -> None:
        """Runs the guide and the model (replayed) once on all the rows, as `SVI.step` would,
        and settles how the fit batches them; sets :attr:`batch_size` for the loop.

        One batch holds every row where `batch_size` is `None` or at least the rows, where
        the program subsamples itself (a plate with `subsample_size` or `subsample`) or has no
        argument with rows; that batch is then the data in its order, drawing from the random
        stream that the fit started with, so that each step is `SVI.step`'s. Enumerated sites
        choose `TraceEnum_ELBO` where the ELBO was left to choose. The plate of the rows is the
        one that indexes the rows of every site observing a row-view of the data.

        Raises:
            ValueError: For an enumerated site under a non-enumerating ELBO; and with
                minibatches, for a parameter or an auto guide's latent site per row, or an
                argument holding rows ppgen cannot index (a list, a `PackedSequence`).
        """
        if isinstance(self.guide, AutoGuide) and self.guide.prototype_trace is None:
            with _plain_errors():  # its draws for initial values, as SVI's first step has
                self._call(self.guide._setup_prototype, "model", self.model, whole)
        state, inits = _rng_state(whole), _InitDraws(whole)
        with torch.no_grad(), _plain_errors(), inits, _kept():  # validation as the user has it
            guide_trace, model_trace, params = self._traces(whole)
        set_rng_state(state)
        check_guided(guide_trace, model_trace)
        self._choose_elbo(guide_trace, model_trace)
        self._check_data(model_trace, whole)
        self.floats = _float_columns(model_trace, whole)
        subsampled = any(
            site_is_subsample(s) and len(s["value"]) < s["fn"].size
            for t in (guide_trace, model_trace)
            for s in t.nodes.values()
        )
        latent = {n: s for n, s in model_trace.nodes.items() if is_variable(s)}
        latent = {n: s for n, s in latent.items() if not s["is_observed"]}
        plate = None if subsampled else _plate_of_rows(model_trace, whole)
        inside = [
            n for n, s in latent.items() if any(f.name == plate for f in s["cond_indep_stack"])
        ]
        if plate is not None and len(inside) < len(latent):
            self.plate = plate  # latent sites outside it: scaled by each batch's share
        size = self.rows or 0
        if subsampled or batch_size is None or batch_size >= size or self.rows is None:
            self.batch_size = len(next(iter(whole.values())))
            if distributed.active() is None:  # else each rank takes its share of the rows
                self.whole, self.stream, self.inits = whole, state, inits.states
            return
        self.batch_size = batch_size
        if self.auto and plate is not None and inside:
            raise ValueError(
                f"Site {inside[0]!r} is latent inside the plate of the rows {plate!r}, where an "
                "auto guide learns a value per position in a batch, not per row; pass "
                "batch_size=None to fit every row at once, or write a guide that maps each row "
                "to its site (amortised, as VAE.guide does)."
            )
        _refuse_rows_in(params, size)
        if self.plate is not None and self._scales_itself(whole, batch_size):
            self.plate = None  # it weighs a batch's rows by the data's size itself, as Pyro's
        unplated = [n for n, s in latent.items() if n not in inside and not _has_rows(s, size)]
        if plate is None and unplated:
            warnings.warn(
                f"Latent site {unplated[0]!r} seems global, but no plate indexes the rows of "
                "every site of the data (observed as given, not transformed), so it counts "
                "once a batch: the fit depends on batch_size.",
                stacklevel=4,
            )

    def _scales_itself(self, whole: dict[str, Tensor], batch_size: int) -> bool:
        """Whether the model, run on a batch, tells the plate of the rows the data's size
        (`examples/svi_torch`'s `pyro.plate("data", size, len(covariates))`), so that Pyro
        scales the batch's sites to the whole data and the globals need no share."""
        batch = {k: v[:batch_size] for k, v in whole.items()}
        try:
            with torch.random.fork_rng(), torch.no_grad(), _kept():
                _, trace, _ = self._traces(batch)
        except (_ProgramError, RuntimeError, ValueError):  # the steps say what fails, and why
            return False
        return any(
            f.name == self.plate and f.full_size is not None and f.full_size > f.size
            for site in trace.nodes.values()
            if is_variable(site)
            for f in site["cond_indep_stack"]
        )

    def _choose_elbo(self, guide_trace: poutine.Trace, model_trace: poutine.Trace) -> None:
        """`TraceEnum_ELBO` (its plate nesting from the traces, also where it was asked for
        and no site is enumerated: no guessing run drawing from the stream) where a site is
        enumerated; left to choose, `TraceGraph_ELBO` where a guide's site asks for a baseline. Under an ELBO that draws its sites (`"trace"`, `"trace_graph"`), a guide's
        site marked for enumeration is drawn instead, its gradient estimated by the score
        function, as Pyro's SVI would: a warning says so once, and the mark is taken off."""
        enumerated = [
            name
            for trace in (guide_trace, model_trace)
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and site["infer"].get("enumerate") is not None
        ]
        if not enumerated:
            if self.elbo is None and _asks_for_baseline(guide_trace):
                self._use("trace_graph")  # the one ELBO that reads a baseline
            if self.elbo == "trace_enum":
                self.loss.max_plate_nesting = _plate_nesting(guide_trace, model_trace)
            return
        if self.elbo in ("trace", "trace_graph") and all(n in guide_trace for n in enumerated):
            warnings.warn(
                f"Site {enumerated[0]!r} of the guide is marked for enumeration, which "
                f"elbo={self.elbo!r} does not do: it is drawn, its gradient estimated by the "
                "score function (unbiased, noisier); leave elbo unset to sum over it.",
                stacklevel=5,
            )
            self.drawn = True
            return
        if self.elbo not in (None, "trace_enum"):
            raise ValueError(
                f"Site {enumerated[0]!r} is marked for enumeration, which elbo={self.elbo!r} "
                "would sample instead; pass elbo='trace_enum' (or leave elbo unset)."
            )
        self._use("trace_enum")
        self.loss.max_plate_nesting = _plate_nesting(guide_trace, model_trace)

    def _check_data(self, model_trace: poutine.Trace, whole: dict[str, Tensor]) -> None:
        """Checks each observed site holding the rows of an argument: its shape, its support."""
        if self.argument:
            check_observed(model_trace, list(whole.values()))

    def _traces(
        self, batch: dict[str, Tensor]
    ) -> tuple[poutine.Trace, poutine.Trace, dict[str, Tensor]]:
        """The guide's trace, the model's replayed on it, and the `pyro.param`s they read."""
        with poutine.trace(param_only=True) as params:
            guide_trace = poutine.trace(self._guide).get_trace(batch)
            replayed = poutine.replay(self._model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(batch)
        values = {n: s["value"] for n, s in params.trace.nodes.items() if s["type"] == "param"}
        return guide_trace, model_trace, values

    def prepare(self, probe: dict[str, Tensor]) -> bool:
        """Finds the structure on a probe batch, for the fast path where it is fully known.

        It is known when every site's distribution is returned by a :class:`~ppgen.nn.Node`
        called on the values of other sites or on the programs' inputs, unmasked and unscaled,
        and every guide site is reparameterised (`"trace"` and `"mean_field"` ELBOs, no plate
        scaled by :meth:`inspect`). The fast ELBO is then checked against Pyro's, on the same
        draws; on any doubt the objective keeps Pyro's ELBO.
        """
        if self.iwae or self.plate is not None or self.elbo not in (None, "trace", "mean_field"):
            return False
        with torch.random.fork_rng(), torch.no_grad(), _plain_errors(), _kept():
            self.plan, self.stacked = self._structure(probe), None
            if self.plan is not None:
                seed = int(torch.randint(2**31, ()))
                torch.manual_seed(seed)
                fast = self._fast_elbo(probe)
                torch.manual_seed(seed)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                    exact = self._elbo(probe)
                if not torch.isclose(fast, exact, rtol=1e-5, atol=0.0):
                    self.plan = None
        return self.fast

    def _structure(self, probe: dict[str, Tensor]) -> _Plan | None:
        guide_trace, guide_calls = trace_calls(self._guide, probe)
        replayed = poutine.replay(self._model, trace=guide_trace)
        model_trace, model_calls = trace_calls(replayed, probe)
        inputs = self._constants(probe)
        known = {id(value): key for key, value in inputs.items()}
        guide: list[tuple[str, Node, list[str]]] = []
        for name, site in guide_trace.nodes.items():
            if not is_variable(site):
                continue
            call = guide_calls.get(name)
            if (
                call is None
                or site["is_observed"]
                or not _plain(site, call[2])
                or call[2].batch_shape != site["fn"].batch_shape
                or not call[2].has_rsample
            ):
                return None
            parents = [known.get(id(value)) for value in call[1]]
            if None in parents:
                return None
            guide.append((name, call[0], parents))
            known[id(site["value"])] = name
        drawn = {name for name, _, _ in guide}
        model: list[tuple[str, Node, list[str], bool]] = []
        for name, site in model_trace.nodes.items():
            if not is_variable(site):
                continue
            call, key = model_calls.get(name), known.get(id(site["value"]))
            latent = not site["is_observed"]  # its value must be the guide's, else an input's
            if (
                call is None
                or not _plain(site, call[2])
                or (key != name if latent else key is None or key in drawn)
            ):
                return None
            parents = [known.get(id(value)) for value in call[1]]
            d, value = call[2], site["value"]
            rows = value.shape[: value.dim() - len(d.event_shape)]
            if (
                None in parents
                or torch.broadcast_shapes(d.batch_shape, rows) != site["fn"].batch_shape
            ):
                return None
            analytic = latent and self.mean_field and _has_kl(guide_trace.nodes[name]["fn"], d)
            model.append((key, call[0], parents, analytic))
        if not drawn <= {key for key, _, _, _ in model}:  # a guide site the model lacks
            return None
        return guide, model

    def _share(self, program: Callable[..., object], batch: dict[str, Tensor]) -> Callable:
        """`program` with its sites outside the plate of the rows scaled by the batch's share."""
        share = len(next(iter(batch.values()))) / self.rows if self.plate is not None else 1
        if share == 1:
            return program
        return _ScaleOutside(self.plate, share)(program)

    def _constants(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The programs' tensor inputs by name: the batch's columns, and `args` and `kwargs`."""
        constants = {_key(i): a for i, a in enumerate(self.args) if isinstance(a, Tensor)}
        constants.update((_key(k), v) for k, v in self.kwargs.items() if isinstance(v, Tensor))
        return {**constants, **batch}

    def _fast_elbo(self, batch: dict[str, Tensor]) -> Tensor:
        """The ELBO from the modules alone: each particle draws the guide's sites in order, then
        adds the model's log-densities (or minus the analytic KL) and subtracts the guide's."""
        guide, model = self.plan
        constants = self._constants(batch)
        total: Tensor | None = None
        for _ in range(self.num_particles):
            values, q = dict(constants), {}
            for name, module, parents in guide:
                q[name] = module(*(values[p] for p in parents))
                values[name] = q[name].rsample()
            if self.stacked is None:
                self.stacked = self._grouped(values, len(next(iter(batch.values()))))
            for terms in self.stacked(values):
                total = _add(total, terms.sum(), 1)
            for name, module, parents, analytic in model:
                if name in self.stacked.grouped:
                    continue
                p = module(*(values[k] for k in parents))
                if analytic:
                    total = _add(total, kl_divergence(q.pop(name), p).sum(), -1)
                else:
                    total = _add(total, _log_prob_sum(p, values[name]), 1)
            for name, d in q.items():
                total = _add(total, _log_prob_sum(d, values[name]), -1)
        return total if self.num_particles == 1 else total / self.num_particles

    def _grouped(self, values: dict[str, Tensor], rows: int) -> Stacked:
        """The model's terms that :mod:`ppgen.batched` evaluates together, given one particle's
        `values` on a batch of `rows`: same-shaped conditionals of sites whose values, and
        their parents', are one number a row (once the guide has drawn, every parent is known,
        as in a fully observed graph)."""
        _, model = self.plan
        factors = {name: (module, parents) for name, module, parents, analytic in model
                   if not analytic}  # fmt: skip
        scalar = {k: k in factors and v.shape == (rows,) for k, v in values.items()}
        return Stacked(factors, groups(factors, scalar), list(factors))

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[tuple[object, ...], dict[str, object]]:
        """The programs' inputs for a batch: its rows in place of the arguments that have rows
        (and, in the dict convention, the number of rows as `n`)."""
        args = tuple(batch.get(_key(i), a) for i, a in enumerate(self.args))
        kwargs = {k: batch.get(_key(k), v) for k, v in self.kwargs.items()}
        if not self.argument:
            kwargs["n"] = len(batch[self.observed[0]])
        return args, kwargs

    def _model(self, batch: dict[str, Tensor], *args: object, **kwargs: object) -> object:
        model = self.model
        if not self.argument:
            model = poutine.condition(model, data={k: batch[k] for k in self.observed})
        return self._call(model, "model", self.model, batch)

    def _guide(self, batch: dict[str, Tensor], *args: object, **kwargs: object) -> object:
        guide = _Drawn()(self.guide) if self.drawn else self.guide
        if self.reads_rows:  # the batch's columns, for an amortised guide in the dict convention
            guide = functools.partial(guide, data=batch)
        return self._call(guide, "guide", self.guide, batch)

    def _call(
        self, program: Callable, role: str, user: object, batch: dict[str, Tensor]
    ) -> object:
        """Runs a program on a batch; an error inside it is one sentence naming it and the
        line, with the original chained."""
        args, kwargs = self._inputs(batch)
        try:
            return self._share(program, batch)(*args, **kwargs)
        except NonlocalExit:  # Pyro's own control flow (sequential enumeration)
            raise
        except Exception as error:
            size = len(next(iter(batch.values())))
            rows = "all" if size == self.rows else "a batch of"
            rows = "" if self.rows is None else f" on {rows} {size} rows"
            raise _ProgramError(_program_error(role, user, rows, error)) from error

    def _elbo(self, batch: dict[str, Tensor]) -> Tensor:
        """Pyro's ELBO of a batch, differentiable; `TraceGraph_ELBO`'s value with the gradient
        of its surrogate (the score-function terms with their baselines)."""
        try:
            if isinstance(self.loss, TraceGraph_ELBO):
                elbo, surrogate = self.loss._loss_and_surrogate_loss(
                    self._model, self._guide, (batch,), {}
                )
                return elbo.detach() - surrogate + surrogate.detach()
            return -self.loss.differentiable_loss(self._model, self._guide, batch)
        except (RuntimeError, ValueError) as error:  # from the ELBO, outside the programs
            rows = len(next(iter(batch.values())))
            hint = (
                "; the programs may not take a batch of rows (a plate of fixed size?): pass "
                "batch_size=None to train on all rows at once, as SVI.step does"
                if rows != self.rows
                else ""
            )
            text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
            raise ValueError(
                f"{type(self.loss).__name__} raised {type(error).__name__} on a batch of {rows} "
                f"rows: {text}{hint}."
            ) from error

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.whole is not None and torch.is_grad_enabled():  # SVI's step: all rows in order
            batch = self.whole
        whole = batch is self.whole and bool(self.stream)
        if whole:  # on the fit's own random stream, which the loop's permutations leave alone
            outer = _rng_state(batch)
            set_rng_state(self.stream)
        skip = _InitDraws(batch, self.inits if whole else {})
        try:
            with _plain_errors(), skip:
                elbo = self._batch_elbo(batch)
        finally:
            if whole:
                self.stream, self.inits = _rng_state(batch), {}
                set_rng_state(outer)
        rows = len(next(iter(batch.values())))
        if torch.is_grad_enabled() and self.batch_size and rows < self.batch_size:
            if distributed.active() is None:
                # the loop divides by the batch's rows: its gradient is scaled to weigh by its
                # rows beside the full batches (an epoch's steps sum the data's ELBO once),
                # and its value stays the batch's ELBO for the history
                share = rows / self.batch_size
                elbo = share * elbo + (1 - share) * elbo.detach()
        return {"elbo": elbo}

    def _batch_elbo(self, batch: dict[str, Tensor]) -> Tensor:
        state = torch.get_rng_state()
        if self.iwae:
            data = batch[ARGUMENT] if self.argument else batch
            rows, draws = (
                len(data) if self.argument else len(batch[self.observed[0]]),
                self.num_particles,
            )
            args = self.args[1:] if self.argument else self.args
            log_w = log_weights(self.model, self.guide, data, draws, rows, args, self.kwargs)
            elbo = (log_w.logsumexp(0) - math.log(self.num_particles)).sum()
        elif self.plan is not None:
            elbo = self._fast_elbo(batch)
        else:
            with warnings.catch_warnings():  # a non-finite ELBO gets its own error, below
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                elbo = self._elbo(batch)
        if not math.isfinite(elbo.item()):  # one step, where torch.isfinite takes four
            torch.set_rng_state(state)
            raise ValueError(self._nonfinite(batch))
        return elbo

    def _nonfinite(self, batch: dict[str, Tensor]) -> str:
        """Names the first site whose log-probability is non-finite, on the same draw."""
        with torch.no_grad():
            guide_trace = poutine.trace(self._guide).get_trace(batch)
            replayed = poutine.replay(self._model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(batch)
        for program, trace in (("guide", guide_trace), ("model", model_trace)):
            for name, site in trace.nodes.items():
                if is_variable(site) and not (program == "guide" and site["is_observed"]):
                    if not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                        return (
                            f"The log-probability of site {name!r} in the {program} became "
                            f"non-finite; {NONFINITE}. "
                            "Try a smaller lr."
                        )
        return f"The ELBO became non-finite; {NONFINITE}."


class _Drawn(Messenger):
    """Takes the enumeration mark off every sample site (one a drawing ELBO draws)."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and "enumerate" in msg["infer"]:
            msg["infer"] = {k: v for k, v in msg["infer"].items() if k != "enumerate"}


_Plan = tuple[list[tuple[str, Node, list[str]]], list[tuple[str, Node, list[str], bool]]]


class _ScaleOutside(Messenger):
    """Scales the log-density of every sample site outside the plate `plate` by `factor`."""

    def __init__(self, plate: str, factor: float) -> None:
        super().__init__()
        self.plate, self.factor = plate, factor

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and all(f.name != self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = self.factor * msg["scale"]


def _program_error(role: str, program: object, rows: str, error: Exception) -> str:
    """One sentence for an error raised inside a user's program: which, where, what."""
    name = getattr(program, "__qualname__", None) or type(program).__name__
    place = error_place(error)
    place = f" at {place}" if place else ""
    text = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    return (
        f"The {role} {name!r} raised {type(error).__name__}{place}{rows}: {text}"
    )


class _ProgramError(Exception):
    """An error inside a user's program, in one sentence; its cause is the original. Not a
    `ValueError`, which Pyro's trace would extend with the trace's shapes."""


def _asks_for_baseline(guide_trace: poutine.Trace) -> bool:
    """Whether a guide's site asks for a baseline (`infer={"baseline": ...}`, as the SVI
    tutorial part III's does), which only `TraceGraph_ELBO` reads."""
    return any(
        site["type"] == "sample" and site["infer"].get("baseline") is not None
        for site in guide_trace.nodes.values()
    )


def _plate_nesting(*traces: poutine.Trace) -> int:
    """The deepest vectorised plate of the sample sites of `traces`, as `max_plate_nesting`."""
    dims = [
        f.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return -min(dims) if dims else 0


@contextmanager
def _kept() -> Iterator[None]:
    """Leaves the buffers of the modules that run inside as they were (a `BatchNorm`'s running
    statistics): runs that are not `SVI.step`'s must not update them."""
    kept: dict[nn.Module, dict[str, Tensor]] = {}

    def keep(module: nn.Module, _: object) -> None:
        if module not in kept:
            kept[module] = {n: b.clone() for n, b in module.named_buffers(recurse=False)}

    handle = nn.modules.module.register_module_forward_pre_hook(keep)
    try:
        yield
    finally:
        handle.remove()
        with torch.no_grad():
            for module, buffers in kept.items():
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


@contextmanager
def _plain_errors() -> Iterator[None]:
    """Raises an error inside a user's program as a `ValueError`, the original chained."""
    try:
        yield
    except _ProgramError as error:
        raise ValueError(str(error)) from error.__cause__


def _key(where: int | str) -> str:
    """The column of a program's argument: `*data` for the first, `*args[i]`, `*name`."""
    if where == 0:
        return ARGUMENT
    return f"*args[{where}]" if isinstance(where, int) else f"*{where}"


def per_row(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[int | None, dict[str, Tensor], str | None]:
    """The arguments that have rows: the tensors whose leading size is the one most tensor
    arguments share (that of the first, positional then keyword, on a tie).

    Returns:
        The number of rows (`None`: no tensor argument), the arguments with rows by column
        (see :func:`_key`), and the first other argument that holds tensors with rows (a list,
        a tuple, a `PackedSequence`), which no batch can index.

    Example:
        >>> x, y = torch.ones(3, 2), torch.ones(3)
        >>> rows, columns, hidden = per_row((torch.ones(2), x), {"y": y})
        >>> rows, sorted(columns), hidden
        (3, ['*args[1]', '*y'], None)
    """
    named = [(_key(i), a) for i, a in enumerate(args)] + [(_key(k), v) for k, v in kwargs.items()]
    tensors = [(k, v) for k, v in named if isinstance(v, Tensor) and v.dim() > 0]
    if not tensors:
        return None, {}, None
    sizes = [len(v) for _, v in tensors]
    rows = max(sizes, key=sizes.count)  # the most common leading size; the first's on a tie
    columns = {k: v for k, v in tensors if len(v) == rows}
    hidden = next((k for k, v in named if _holds_rows(v, rows)), None)
    return rows, columns, hidden


def _holds_rows(value: object, rows: int) -> bool:
    """Whether a list, tuple or dict holds a tensor of `rows` rows, or a `PackedSequence` packs
    `rows` sequences (`examples/dmm`'s reversed batch)."""
    if isinstance(value, PackedSequence):
        return int(value.batch_sizes[0]) == rows
    return isinstance(value, tuple | list | dict) and any(
        isinstance(t, Tensor) and t.dim() > 0 and len(t) == rows
        for t in (value.values() if isinstance(value, dict) else value)
    )


def _is_row_view(value: object, x: Tensor) -> bool:
    """Whether `value` reads the rows of `x` in place, rows first: `x`, `x[:, k]`, `x[..., :2]`."""
    if not isinstance(value, Tensor) or value.dim() == 0 or x.dim() == 0:
        return False
    start = x.data_ptr()
    return (
        len(value) == len(x)
        and value.stride(0) == x.stride(0)
        and start <= value.data_ptr() < start + max(x.stride(0), 1) * x.element_size()
    )


def _float_columns(trace: poutine.Trace, whole: dict[str, Tensor]) -> set[str]:
    """The integer columns that some site observes in place with a support of floats (a
    Bernoulli's, a Normal's), where torch needs floats; columns used as indices stay integers."""
    columns = set()
    for site in trace.nodes.values():
        value = site["value"] if is_variable(site) and site["is_observed"] else None
        support = site["fn"].support if value is not None else None
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not None and (support is constraints.boolean or not support.is_discrete):
            columns |= {
                k for k, x in whole.items() if not x.is_floating_point() and _is_row_view(value, x)
            }
    return columns


def _plate_of_rows(trace: poutine.Trace, whole: dict[str, Tensor]) -> str | None:
    """The plate that indexes the rows of every observed site reading rows of the data in
    place (its dimension is that of the rows in the site's value), or `None`."""
    found: set[str] | None = None
    for site in trace.nodes.values():
        value = site["value"] if is_variable(site) and site["is_observed"] else None
        if not any(_is_row_view(value, x) for x in whole.values()):
            continue
        dim = len(site["fn"].event_shape) - value.dim()
        names = {f.name for f in site["cond_indep_stack"] if f.vectorized and f.dim == dim}
        found = names if found is None else found & names
    return found.pop() if found is not None and len(found) == 1 else None


def _has_rows(site: dict, rows: int) -> bool:
    """Whether a site is inside a vectorised plate as long as the rows, with or without a size
    (`examples/cvae`'s `pyro.plate("data")`): a local latent, one value per row."""
    shape = site["fn"].batch_shape
    return any(
        f.vectorized and -f.dim <= len(shape) and shape[f.dim] == rows
        for f in site["cond_indep_stack"]
    )


def _refuse_rows_in(params: dict[str, Tensor], rows: int) -> None:
    """Raises for a `pyro.param` with one value per row, which minibatches cannot index."""
    for name, value in params.items():
        if "$$$" not in name and value.dim() > 0 and len(value) == rows:
            raise ValueError(
                f"Parameter {name!r} has as many values as the data have rows (shape "
                f"{tuple(value.shape)}), so it is taken for one value per row, which a minibatch "
                "cannot index (it would read other rows' values); pass batch_size=None to train "
                "on all rows at once (also where the sizes only happen to agree), or index the "
                "rows in the program with a subsample plate (pyro.plate(..., subsample_size=...))."
            )


class _InitDraws(Messenger):
    """Records the random state after each new `pyro.param`'s initialisation, where the stream
    moved since the last sample site or record, by draws outside sample statements
    (`skip=None`), or sets it there (`skip`: the recorded states).

    `SVI.step`'s first step initialises its parameters as it goes, between its draws: a
    param's initial value may draw, and so may a module built lazily before its params are
    read (an `AutoNormalizingFlow`'s transform, built by the guide's first call). The fit's
    first step, whose parameters :meth:`ELBOObjective.inspect` initialised on the same
    stream, takes the same draws by skipping the stream past each initialisation.
    """

    def __init__(
        self, batch: dict[str, Tensor], skip: dict[str, list[Tensor]] | None = None
    ) -> None:
        super().__init__()
        self.batch, self.record, self.new = batch, skip is None, False
        self.states = {} if skip is None else skip
        self.last = _rng_state(batch) if self.record else None  # the stream at the start

    def _pyro_param(self, msg: dict) -> None:
        self.new = self.record and msg["args"][0] not in pyro.get_param_store()

    def _pyro_post_sample(self, msg: dict) -> None:
        if self.record:  # a site's own draw (none where the ELBO enumerates it) is no init's
            self.last = _rng_state(self.batch)

    def _pyro_post_param(self, msg: dict) -> None:
        name = msg["args"][0]
        if self.new:
            now = _rng_state(self.batch)
            if not all(map(torch.equal, self.last, now)):
                self.states[name], self.last = now, now
            self.new = False
        elif not self.record and name in self.states:
            set_rng_state(self.states.pop(name))


def _rng_state(batch: dict[str, Tensor]) -> list[Tensor]:
    """The random states that draws for `batch` use: the CPU's, and its GPU's if any."""
    devices = {v.device for v in batch.values() if v.device.type == "cuda"}
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]


def set_rng_state(state: list[Tensor]) -> None:
    torch.set_rng_state(state[0])
    if len(state) > 1:
        torch.cuda.set_rng_state(state[1])


def _add(total: Tensor | None, term: Tensor, sign: int) -> Tensor:
    """`total + sign * term`, where a missing total counts as zero."""
    if total is None:
        return term if sign > 0 else -term
    return total + term if sign > 0 else total - term


def _log_prob_sum(d: dist.Distribution, value: Tensor) -> Tensor:
    """The log-density of `value` summed over all its entries; `Independent` wrappers, which
    only sum over dimensions, are skipped (fewer steps in the autograd graph)."""
    while isinstance(d, Independent):
        d = d.base_dist
    return d.log_prob(value).sum()


def _plain(site: dict, d: dist.Distribution) -> bool:
    """Whether a site is unmasked and unscaled, and its distribution is `d`, maybe expanded."""
    fn = site["fn"]
    return is_unweighted(site) and type(fn) is type(d) and fn.event_shape == d.event_shape


def _has_kl(q: dist.Distribution, p: dist.Distribution) -> bool:
    """Whether torch knows the KL divergence of `q` from `p` in closed form."""
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def _check_argument(
    model: Callable[..., object], data: Tensor, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """Runs `model(x, ...)` once on the data tensor, and checks the sites observing its rows."""
    try:
        with torch.random.fork_rng(), torch.no_grad():
            trace = poutine.trace(model).get_trace(data, *args, **kwargs)
    except Exception as error:
        raise ValueError(_program_error("model", model, f" on all {len(data)} rows", error)) from (
            error.__cause__ or error  # Pyro's trace re-raises it with the trace's shapes
        )
    check_observed(trace, [data])


def check_observed(trace: poutine.Trace, columns: Sequence[Tensor]) -> None:
    """Checks each observed site that reads the rows of one of `columns` in place: the shape
    of its rows, and every row against its support."""
    for name, site in trace.nodes.items():
        value = site["value"] if is_variable(site) and site["is_observed"] else None
        if not any(_is_row_view(value, x) for x in columns):
            continue
        fn = site["fn"]
        shape = tuple(fn.batch_shape + fn.event_shape)
        try:
            fits = torch.broadcast_shapes(shape, value.shape) == value.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"The data tensor's rows have shape {tuple(value.shape[1:])}, but site "
                f"{name!r} of the model has rows of shape {shape[1:]}."
                if tuple(value.shape[1:]) != shape[1:]
                else f"The data tensor has {len(value)} rows at site {name!r}, but the "
                f"model's distribution there has shape {shape}."
            )
        if validates(fn) and not varies(fn.support):
            check_support(name, fn, value, value.device)


def _takes_integers(
    model: Callable[..., object], data: Tensor, args: tuple[object, ...], kwargs: dict[str, object]
) -> bool:
    """Whether `model(x, ...)` takes integer rows as they are: it runs on them, and no site
    reads them as floats (:func:`_float_columns`: a Bernoulli's pixels need the model's floats,
    a Categorical's words or an HMM's states stay integers)."""
    try:
        with torch.random.fork_rng(), torch.no_grad():
            trace = poutine.trace(model).get_trace(data, *args, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError):
        return False  # the model's floats, and the checks below say what fails
    return not _float_columns(trace, {ARGUMENT: data})


def svi_table(
    model: Callable[..., object],
    data: Mapping[str, object] | Tensor | object,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    device: torch.device | None,
    *,
    categories: Mapping[str, Sequence[object]] | None = None,
    observed_by_model: bool = True,
    known: bool = False,
) -> Table:
    """Checks the observed columns (a dict or a DataFrame, as :func:`ppgen.data.table` does,
    `categories` and `known` included) of a model with latent sites, or a tensor: that
    `model(x, *args, **kwargs)` observes (its shape and support checked) unless
    `observed_by_model` is `False`; integer rows stay integers where the sites observing them
    draw integers (words, states), else take the model's floats (images).

    Example:
        >>> vae = ppgen.models.VAE(4, 2, hidden=(8,))
        >>> list(svi_table(vae, torch.ones(3, 4), (), {}, None).columns)
        ['*data']
    """
    if isinstance(data, Tensor):
        if data.dim() == 0 or len(data) == 0 or not torch.isfinite(data).all():
            raise ValueError("The data tensor must have rows, and no NaN or inf.")
        if not data.is_floating_point() and not _takes_integers(model, data, args, kwargs):
            floats = [p for p in program_parameters(model) if p.is_floating_point()]  # images
            data = data.to(floats[0].dtype if floats else torch.get_default_dtype())
        columns, device = place({ARGUMENT: data}, device, model)
        if observed_by_model:  # `model(x)` observes the tensor (not a GAN, which draws rows)
            _check_argument(model, columns[ARGUMENT], args, kwargs)
        return Table(columns, device=device)
    if not isinstance(data, Mapping) and not is_frame(data):
        raise ValueError(
            "Data must be a tensor, a dict of site name to array or a DataFrame, not "
            f"{type(data).__name__}."
        )
    return read_table(
        model, data, args, kwargs, categories=categories, device=device, latent=True, known=known
    )
