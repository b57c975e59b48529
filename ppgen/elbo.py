r"""The objectives of :func:`ppgen.fit_svi`: Pyro's ELBO modules, or one pass through ppgen's nodes.

Where the guide's and the model's sites are all ppgen conditionals of known inputs, the ELBO is
computed from those modules alone, without tracing the programs each step (checked once against
Pyro's own ELBO on the same draws); otherwise Pyro's `Trace_ELBO` / `TraceMeanField_ELBO` module
is the objective, and the importance-weighted bound comes from :mod:`ppgen.importance`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import Independent, kl_divergence

from ppgen.data import Table, check_support, is_frame, place, read_table, varies
from ppgen.importance import log_weights, reads_rows
from ppgen.nn import Node
from ppgen.result import NONFINITE
from ppgen.tracing import is_unweighted, is_variable, is_view, program_parameters, trace_calls

__all__ = ["ARGUMENT", "ELBOS", "ELBOObjective", "svi_table"]

ARGUMENT = "*data"  # the column of data given as a tensor: the programs' first argument
ELBOS = {"trace": Trace_ELBO, "mean_field": TraceMeanField_ELBO}


class ELBOObjective(nn.Module):
    """The ELBO of a batch as the loop's one term `"elbo"`, a scalar summed over the rows.

    With `rows`, the number of rows of the whole data, the sites outside the plate of the rows
    (global latents, and their guide sites) count in each batch by the batch's share of the
    rows, so that an epoch counts them once, as the ELBO of the whole data does, whatever the
    batch size: :meth:`prepare` finds that plate.

    Example:
        >>> vae = ppgen.models.VAE(4, 2, hidden=(8,))
        >>> objective = ELBOObjective(vae, vae.guide, "trace", 1, ["*data"], True, (), {})
        >>> objective.prepare({"*data": torch.ones(3, 4)})
        True
        >>> objective({"*data": torch.ones(3, 4)})["elbo"].shape
        torch.Size([])
    """

    def __init__(
        self,
        model: Callable[..., object],
        guide: Callable[..., object],
        elbo: str,
        num_particles: int,
        observed: list[str],
        argument: bool,
        args: tuple[object, ...],
        kwargs: dict[str, object],
        rows: int | None = None,
    ) -> None:
        super().__init__()
        self.model, self.args, self.kwargs = model, args, kwargs
        self.rows, self.plate = rows, None  # the plate of the rows, found by prepare
        self.observed, self.argument = observed, argument
        self.num_particles, self.iwae = num_particles, elbo == "iwae"
        self.auto = guide in ("auto_normal", "auto_delta")
        if self.auto:
            prototype = model if self.argument else poutine.block(model, hide=observed)
            guide = (AutoNormal if guide == "auto_normal" else AutoDelta)(prototype)
        self.guide = guide
        self.reads_rows = not argument and reads_rows(guide)  # an amortised guide of columns
        self.mean_field, self.plan = elbo == "mean_field", None
        if not self.iwae:
            self.loss = ELBOS[elbo](num_particles=num_particles)(self._model, self._guide)

    @property
    def fast(self) -> bool:
        """Whether the ELBO is computed from the ppgen modules alone, without tracing."""
        return self.plan is not None

    def prepare(self, probe: dict[str, Tensor]) -> bool:
        """Finds the structure on a probe batch, for the fast path where it is fully known.

        It is known when every site's distribution is returned by a :class:`~ppgen.nn.Node`
        called on the values of other sites or on the programs' inputs, unmasked and unscaled,
        and every guide site is reparameterised. The fast ELBO is then checked against Pyro's,
        on the same draws; on any doubt the objective keeps Pyro's ELBO. It first finds the
        plate of the rows: with `rows`, where latent sites lie outside it, Pyro's ELBO scales
        them (and there is no fast path).

        Raises:
            ValueError: For an auto guide of a latent site inside the plate of the rows: its
                parameters would be those of a position in a batch, not of a row.
        """
        with torch.random.fork_rng(), torch.no_grad():
            self.plate = None
            plate, latent = self._plate_of_rows(probe)
        inside = [
            n for n, s in latent.items() if any(f.name == plate for f in s["cond_indep_stack"])
        ]
        if self.auto and plate is not None and inside:
            raise ValueError(
                f"Site {inside[0]!r} is latent inside the plate of the rows {plate!r}, where an "
                "auto guide learns a value per position in a batch, not per row; write a guide "
                "that maps each row to its site (amortised, as VAE.guide does)."
            )
        if self.rows is not None and plate is not None and len(inside) < len(latent):
            self.plate = plate  # latent sites outside it: scaled by each batch's share
        size = len(next(iter(probe.values())))
        unplated = [
            n for n, s in latent.items() if all(f.size != size for f in s["cond_indep_stack"])
        ]
        if self.rows is not None and plate is None and unplated and self.rows > size:
            warnings.warn(
                f"Latent site {unplated[0]!r} seems global, but no plate of the rows holds every "
                "site of the data (observed as given, not transformed), so it counts once a "
                "batch: the fit depends on batch_size.",
                stacklevel=4,
            )
        if self.iwae or self.plate is not None:
            return False
        with torch.random.fork_rng(), torch.no_grad():
            self.plan = self._structure(probe)
            if self.plan is not None:
                seed = int(torch.randint(2**31, ()))
                torch.manual_seed(seed)
                fast = self._fast_elbo(probe)
                torch.manual_seed(seed)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                    exact = -self.loss(probe)
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

    def _plate_of_rows(self, probe: dict[str, Tensor]) -> tuple[str | None, dict[str, dict]]:
        """The name of the plate of the rows (`None` where none is found) and the model's
        latent sites by name.

        It is the plate of the probe's size around every site that holds the data (a column, or
        the data tensor itself or a view of it; not a `pyro.factor`); a second probe, one row
        shorter, settles a tie with another plate of that size.
        """
        size, found, trace = len(next(iter(probe.values()))), None, None
        for rows in range(size, max(size - 2, 0), -1):
            batch = {k: v[:rows] for k, v in probe.items()}
            trace = poutine.trace(self._model).get_trace(batch)
            sites = [site for site in trace.nodes.values() if is_variable(site)]
            plates = [
                {f.name for f in site["cond_indep_stack"] if f.size == rows}
                for site in sites
                if self._holds_data(site, batch)
            ]
            common = set.intersection(*plates) if plates else set()
            found = common if found is None else found & common
            if len(found) <= 1:
                break
        latent = {site["name"]: site for site in sites if not site["is_observed"]}
        return (found.pop() if found is not None and len(found) == 1 else None), latent

    def _holds_data(self, site: dict, batch: dict[str, Tensor]) -> bool:
        """Whether an observed site's value is a column of the batch, or its data tensor."""
        if not site["is_observed"]:
            return False
        if not self.argument:
            return site["name"] in batch
        return is_view(site["value"], batch[ARGUMENT])

    def _share(self, program: Callable[..., object], batch: dict[str, Tensor]) -> Callable:
        """`program` with its sites outside the plate of the rows scaled by the batch's share."""
        if self.plate is None:
            return program
        share = len(next(iter(batch.values()))) / self.rows
        return _ScaleOutside(self.plate, share)(program)

    def _constants(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The programs' tensor inputs by name: the batch's columns, and `args` and `kwargs`."""
        constants = {f"*args[{i}]": a for i, a in enumerate(self.args) if isinstance(a, Tensor)}
        constants.update((f"*{k}", v) for k, v in self.kwargs.items() if isinstance(v, Tensor))
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
            for name, module, parents, analytic in model:
                p = module(*(values[k] for k in parents))
                if analytic:
                    total = _add(total, kl_divergence(q.pop(name), p).sum(), -1)
                else:
                    total = _add(total, _log_prob_sum(p, values[name]), 1)
            for name, d in q.items():
                total = _add(total, _log_prob_sum(d, values[name]), -1)
        return total if self.num_particles == 1 else total / self.num_particles

    def _inputs(self, batch: dict[str, Tensor]) -> tuple[tuple[object, ...], dict[str, object]]:
        if self.argument:
            return (batch[ARGUMENT], *self.args), self.kwargs
        return self.args, {**self.kwargs, "n": len(next(iter(batch.values())))}

    def _model(self, batch: dict[str, Tensor], *args: object, **kwargs: object) -> object:
        model = self.model if self.argument else poutine.condition(self.model, data=batch)
        args, kwargs = self._inputs(batch)
        return self._share(model, batch)(*args, **kwargs)

    def _guide(self, batch: dict[str, Tensor], *args: object, **kwargs: object) -> object:
        args, kwargs = self._inputs(batch)
        if self.reads_rows:
            kwargs = {**kwargs, "data": batch}
        return self._share(self.guide, batch)(*args, **kwargs)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        state = torch.get_rng_state()
        if self.iwae:
            data = batch[ARGUMENT] if self.argument else batch
            rows, draws = (
                len(data) if self.argument else len(batch[self.observed[0]]),
                self.num_particles,
            )
            log_w = log_weights(self.model, self.guide, data, draws, rows, self.args, self.kwargs)
            elbo = (log_w.logsumexp(0) - math.log(self.num_particles)).sum()
        elif self.plan is not None:
            elbo = self._fast_elbo(batch)
        else:
            with warnings.catch_warnings():  # a non-finite ELBO gets its own error, below
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                elbo = -self.loss(batch)
        if not math.isfinite(elbo.item()):  # one step, where torch.isfinite takes four
            torch.set_rng_state(state)
            raise ValueError(self._nonfinite(batch))
        return {"elbo": elbo}

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


_Plan = tuple[list[tuple[str, Node, list[str]]], list[tuple[str, Node, list[str], bool]]]


class _ScaleOutside(Messenger):
    """Scales the log-density of every sample site outside the plate `plate` by `factor`."""

    def __init__(self, plate: str, factor: float) -> None:
        super().__init__()
        self.plate, self.factor = plate, factor

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and all(f.name != self.plate for f in msg["cond_indep_stack"]):
            msg["scale"] = self.factor * msg["scale"]


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
    """Runs `model(x, ...)` on the data tensor's first rows, and checks each observed site that
    holds those very values (the tensor or a view of it, rows first): the shape of its rows,
    and every row against its support."""
    probe = data[:2]
    try:
        with torch.random.fork_rng(), torch.no_grad():
            trace = poutine.trace(model).get_trace(probe, *args, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"The model fails on the first rows of the data tensor, of shape "
            f"{tuple(data.shape)}: {error}"
        ) from error
    for name, site in trace.nodes.items():
        value = site["value"] if is_variable(site) and site["is_observed"] else None
        if is_view(value, probe, rows=True):
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
                )
            if not varies(fn.support):
                rows = data.reshape(len(data), *value.shape[1:])
                check_support(name, fn, rows, data.device)


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
    `categories` and `known` included) of a model with latent sites, or a tensor: that `model(x, *args,
    **kwargs)` observes (its shape and support checked) unless `observed_by_model` is `False`.

    Example:
        >>> vae = ppgen.models.VAE(4, 2, hidden=(8,))
        >>> list(svi_table(vae, torch.ones(3, 4), (), {}, None).columns)
        ['*data']
    """
    if isinstance(data, Tensor):
        if data.dim() == 0 or len(data) == 0 or not torch.isfinite(data).all():
            raise ValueError("The data tensor must have rows, and no NaN or inf.")
        if not data.is_floating_point():  # integer images: the model's floats, as for a column
            floats = [p for p in program_parameters(model) if p.is_floating_point()]
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
