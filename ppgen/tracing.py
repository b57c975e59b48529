r"""Recording a program's calls and telling its sites apart: the predicates every layer shares.

A conditional module (:class:`ppgen.nn.Node`) reports each call it makes to :func:`record_call`;
:func:`trace_calls` runs a program once under a Pyro trace and matches each sample site to the
call that made its distribution. The predicates say whether a trace site is a random variable
or a `pyro.factor` term, whether its log-density counts as it is, and whether a value is the
data tensor itself.
"""

from __future__ import annotations

import functools
import inspect
import os
import sysconfig
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from pyro import poutine
from pyro.distributions import Unit
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import Distribution, Independent

__all__ = [
    "LEAN",
    "Call",
    "error_place",
    "fitted_parameters",
    "is_factor",
    "is_unweighted",
    "is_variable",
    "program_name",
    "program_parameters",
    "plate_of_rows",
    "record_call",
    "signature",
    "recording_calls",
    "trace_calls",
    "unwrapped",
    "warn_shadowed",
    "validates",
]

Call = tuple[nn.Module, tuple[Tensor, ...], Distribution]
"""A conditional's call: `(module, parent values, distribution returned)`."""

_CALLS: ContextVar[list[Call] | None] = ContextVar("ppgen_calls", default=None)


def record_call(module: nn.Module, parents: tuple[Tensor, ...], d: Distribution) -> None:
    """Records one call of a conditional, where :func:`recording_calls` is active."""
    calls = _CALLS.get()
    if calls is not None:
        calls.append((module, parents, d))


@contextmanager
def recording_calls() -> Iterator[list[Call]]:
    """Records every call of a :class:`~ppgen.nn.Node` made inside the block, in order.

    Example:
        >>> with recording_calls() as calls:
        ...     _ = Root(dist.Normal)()
        >>> len(calls)
        1
    """
    calls: list[Call] = []
    token = _CALLS.set(calls)
    try:
        yield calls
    finally:
        _CALLS.reset(token)


class _MatchCalls(Messenger):
    """Matches each sample site to the :class:`~ppgen.nn.Node` call that made its distribution."""

    def __init__(self, calls: list[Call]) -> None:
        super().__init__()
        self.calls, self.seen, self.sites = calls, 0, {}

    def _pyro_sample(self, msg: Message) -> None:
        if site_is_subsample(msg):
            return
        pending, self.seen = self.calls[self.seen :], len(self.calls)
        match = [call for call in pending if _same_distribution(call[2], msg["fn"])]
        if match:
            self.sites[msg["name"]] = match[-1]


def _same_distribution(made: object, used: object) -> bool:
    """Whether the site's distribution is the module's own, or a plate's broadcast of it: the
    same family reading the very same parameter tensors (an `expand` makes views of them), and
    the same components, for families made of other distributions."""
    if made is used:
        return True
    while hasattr(made, "base_dist") and hasattr(used, "base_dist"):
        made, used = made.base_dist, used.base_dist
    if type(made) is not type(used):
        return False
    own, other = vars(made), vars(used)
    checked = False
    for name, value in own.items():
        if isinstance(value, Distribution):
            if not _same_distribution(value, other.get(name)):
                return False
            checked = True
        elif isinstance(value, Tensor) and name in getattr(type(made), "arg_constraints", {}):
            theirs = other.get(name)
            if not isinstance(theirs, Tensor) or theirs.data_ptr() != value.data_ptr():
                return False
            checked = True
    return checked


def trace_calls(
    model: Callable[..., object], *args: object, **kwargs: object
) -> tuple[Trace, dict[str, Call]]:
    r"""Runs `model` once under a trace and tells which conditional module made each site.

    Returns:
        The trace, and for each sample site whose distribution a :class:`~ppgen.nn.Node` returned,
        that call: `(module, parent values, distribution)`.

    Example:
        >>> trace, calls = trace_calls(lambda: pyro.sample("x", Root(dist.Normal)()))
        >>> module, parents, distribution = calls["x"]
        >>> type(module).__name__
        'Root'
    """
    with recording_calls() as calls, _MatchCalls(calls) as matcher:
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return trace, matcher.sites


def is_variable(site: dict) -> bool:
    """Whether a trace site is a random variable: a sample site, not a plate's subsample
    and not a `pyro.deterministic` value.

    Example:
        >>> trace = pyro.poutine.trace(lambda: pyro.sample("x", dist.Normal(0.0, 1.0))).get_trace()
        >>> is_variable(trace.nodes["x"])
        True
    """
    return (
        site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    )


# the wrappers that reshape or mask a distribution without changing what it is
_WRAPPERS = (Independent, ExpandedDistribution, MaskedDistribution)


def unwrapped(fn: Distribution) -> Distribution:
    """The distribution the program wrote, through `to_event`, `expand` and masks (a
    `LogNormal` stays a LogNormal, not the Normal it transforms).

    Example:
        >>> unwrapped(dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        LogNormal()
    """
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn


class _Lean:
    """The `validate_args` of ppgen's own distributions: falsy, so that torch skips its checks
    in the steps, ppgen checking the data instead; a program's `validate_args=False` means
    that the site takes any value. It survives `expand`, which copies `_validate_args`."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "LEAN"


LEAN = _Lean()


def validates(fn: Distribution) -> bool:
    """Whether a distribution checks its values against its support, as its `log_prob` would:
    not one a program built with `validate_args=False` (`examples/vae` scores grey pixels under
    a Bernoulli so), nor any under `pyro.enable_validation(False)`; ppgen's own (:data:`LEAN`) do.

    Example:
        >>> grey = dist.Bernoulli(0.5, validate_args=False)
        >>> validates(dist.Bernoulli(0.5).expand([3])), validates(grey.expand([3]).to_event(1))
        (True, False)
    """
    return unwrapped(fn)._validate_args is not False


def is_factor(site: dict) -> bool:
    """Whether a trace site is a `pyro.factor` term: an observed `Unit` that adds its
    log-factor to the program's log-density, not a random variable of its own.

    Example:
        >>> trace = pyro.poutine.trace(lambda: pyro.factor("f", torch.tensor(-1.0))).get_trace()
        >>> is_factor(trace.nodes["f"])
        True
    """
    return bool(site["infer"].get("is_auxiliary")) and isinstance(unwrapped(site["fn"]), Unit)


def is_unweighted(site: dict) -> bool:
    """Whether a site's log-density counts as it is: no mask, and a scale of 1."""
    return site["mask"] is None and bool(torch.all(torch.as_tensor(site["scale"]) == 1))


def program_parameters(program: object) -> list[Tensor]:
    """The parameters of a program that is a module or a module's bound method; else none.

    Example:
        >>> len(program_parameters(Root(dist.Normal))), program_parameters(print)
        (1, [])
    """
    owner = getattr(program, "__self__", program)
    return list(owner.parameters()) if isinstance(owner, nn.Module) else []


def fitted_parameters(run: Callable[[], object], *programs: object) -> list[Tensor]:
    """The trainable tensors of `programs`, each once: the unconstrained values of the
    `pyro.param`s that `run()` reads (creating them), then the parameters of the programs that
    are modules or a module's bound methods.

    Example:
        >>> model = Root(dist.Normal)
        >>> len(fitted_parameters(lambda: pyro.param("doctest_w", torch.ones(2)), model))
        2
    """
    with torch.random.fork_rng(), poutine.trace(param_only=True) as params:
        run()
    found = [site["value"].unconstrained() for site in params.trace.nodes.values()]
    found += [p for program in programs for p in program_parameters(program)]
    return list({id(p): p for p in found if p.requires_grad}.values())


def signature(program: object) -> inspect.Signature:
    """The signature a program is called with: a module's `forward`, read through decorators
    (a Pyro handler such as `config_enumerate` binds a method as a partial of `(*args,
    **kwargs)`), without `self`. Raises as `inspect.signature` does.

    Example:
        >>> class Model(nn.Module):
        ...     @pyro.infer.config_enumerate
        ...     def forward(self, x, y=None): ...
        >>> signature(Model())
        <Signature (x, y=None)>
    """
    if not isinstance(program, nn.Module) or "forward" in vars(program):
        return inspect.signature(program.forward if isinstance(program, nn.Module) else program)
    parameters = list(inspect.signature(type(program).forward).parameters.values())
    return inspect.Signature(parameters[1:])


def plate_of_rows(trace: Trace, rows: int, data: Mapping | None) -> str | None:
    """The plate of `rows` positions around every observed site of the data (`None`: none): in
    the `model(x)` convention, those with a dimension of `rows` (not a global `pyro.factor`)."""
    common: set[str] | None = None
    for site in trace.nodes.values():
        if not (is_variable(site) and site["is_observed"]):
            continue
        of_data = rows in site["value"].shape if data is None else site["name"] in data
        if of_data:
            names = {f.name for f in site["cond_indep_stack"] if f.size == rows}
            common = names if common is None else common & names
    return min(common) if common else None


def program_name(program: object) -> str:
    """A program's name for messages: a function's (a `functools.partial`'s function's, the
    program a Pyro handler wraps), else its class's.

    Example:
        >>> import functools
        >>> program_name(functools.partial(print, end=""))
        'print'
        >>> program_name(pyro.condition(print, data={}))
        'print'
    """
    while isinstance(program, functools.partial):
        wrapped = program.func  # a handler's program is `partial(_context_wrap, handler, fn)`
        handler = getattr(wrapped, "__name__", "") == "_context_wrap" and len(program.args) == 2
        program = program.args[1] if handler else wrapped
    return getattr(program, "__name__", type(program).__name__)


_LIBRARIES = (
    *{sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")},
    os.path.dirname(__file__) + os.sep,  # ppgen, whether installed or not
)
_PROGRAMS = os.path.join(os.path.dirname(__file__), "models") + os.sep  # ppgen's own programs


def error_place(error: BaseException) -> str:
    """Where a program raised `error`: `file.py:line` of the innermost frame in a user's code
    or in a program of :mod:`ppgen.models`, not in Python's libraries nor ppgen's machinery;
    `""` where there is none.

    Example:
        >>> try:
        ...     int("x")
        ... except ValueError as error:
        ...     error_place(error).startswith("<doctest")
        True
    """
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith(_PROGRAMS) or not frame.filename.startswith(_LIBRARIES):
            return f"{os.path.basename(frame.filename)}:{frame.lineno}"
    return ""


def warn_shadowed(
    function: str, options: Iterable[str], *programs: object, positional: tuple = ()
) -> None:
    """Says where the programs name a parameter as one of `function`'s own keyword `options`,
    neither bound (by a `functools.partial`) nor given by position in `positional` (Pyro's
    examples take `batch_size` to subsample themselves): `function` takes that keyword, and the
    programs get their default.

    Example:
        >>> def model(n, lr=0.1): ...
        >>> with warnings.catch_warnings(record=True) as said:
        ...     warnings.simplefilter("always")
        ...     warn_shadowed("fit_svi", ["lr"], model)
        >>> str(said[0].message)[:50]
        "model takes a parameter 'lr', which fit_svi takes "
    """
    options, names, shadowed = list(options), [], None
    for program in programs:
        try:
            parameters = signature(program).parameters
        except (TypeError, ValueError):  # a string (an auto guide), or a builtin
            continue
        bound = set(getattr(program, "keywords", {}))  # a functools.partial's
        try:  # examples/air's model(data, batch_size), given by position
            bound |= set(signature(program).bind_partial(*positional).arguments)
        except TypeError:  # more than it takes: the program's first run says so
            pass
        found = next((o for o in options if o in parameters and o not in bound), None)
        if found is not None and shadowed in (None, found):
            names.append(program_name(program))
            shadowed = found
    if shadowed is not None:
        who = " and ".join(names)
        warnings.warn(
            f"{who} take{'s' if len(names) == 1 else ''} a parameter {shadowed!r}, which "
            f"{function} takes as its own option, so "
            f"{'it gets its' if len(names) == 1 else 'they get their'} default; to give it a "
            f"value, bind it first: functools.partial({names[0]}, {shadowed}=...).",
            UserWarning,
            stacklevel=3,
        )
