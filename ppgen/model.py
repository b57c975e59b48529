r"""The model: a Pyro program as a module that records how to rebuild it and owns its data coding.

A :class:`Model` is a `PyroModule` whose `forward` is a plain Pyro program. It records its
constructor's arguments (:class:`Rebuildable`), so that :func:`ppgen.save` can rebuild it, and
it keeps what a fit learned about the data's labels (:func:`coding`), so that every later call
(`log_prob`, `sample(as_frame=True)`, a saved and loaded copy, the CLI) codes them alike.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

from pyro.nn import PyroModule

__all__ = ["Model", "Rebuildable", "coding", "set_coding"]


def _containers_copied(value: object) -> object:
    """`value` with its lists, tuples and dicts copied, nested ones too; anything else (a
    tensor, a module) is the same object."""
    if type(value) in (list, tuple):
        return type(value)(_containers_copied(v) for v in value)
    if type(value) is dict:
        return {k: _containers_copied(v) for k, v in value.items()}
    return value


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wraps a subclass's `__init__` so that the outermost call records its arguments."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Rebuildable, *args: object, **kwargs: object) -> None:
        outermost = "_ppgen_init_arguments" not in self.__dict__
        if outermost:
            self.__dict__["_ppgen_init_arguments"] = None
            given = _containers_copied((args, kwargs))  # as given, whatever __init__ changes
        init(self, *args, **kwargs)
        if outermost:
            bound = signature.bind(self, *given[0], **given[1])
            bound.apply_defaults()
            self.__dict__["_ppgen_init_arguments"] = (bound.args[1:], dict(bound.kwargs))

    wrapper._ppgen_recording = True  # type: ignore[attr-defined]
    return wrapper


class Rebuildable:
    r"""A module that :func:`ppgen.save` can rebuild: it records its constructor's arguments.

    Every subclass records the arguments its outermost `__init__` was called with, as
    `init_arguments` (positional, keyword), as they were given: lists, tuples and dicts are
    copied (a constructor may change them), anything else is kept as it is, not checked here.
    A module argument that is itself `Rebuildable` is saved by its arguments in turn (a GAN's
    players), and the weights of both come from the `state_dict`.

    Example:
        >>> class Affine(Rebuildable, torch.nn.Linear):
        ...     def __init__(self, features: int) -> None:
        ...         super().__init__(features, features)
        >>> Affine(3).init_arguments
        ((3,), {})
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__", cls.__init__)  # its own, or one it inherits
        if not getattr(init, "_ppgen_recording", False):
            cls.__init__ = _recording(init)

    @property
    def init_arguments(self) -> tuple[tuple[object, ...], dict[str, object]] | None:
        """The positional and keyword arguments of the outermost `__init__` call, or `None`."""
        return self.__dict__.get("_ppgen_init_arguments")


class Model(Rebuildable, PyroModule):
    r"""A generative model: a `PyroModule` whose `forward` is a plain Pyro program.

    After a fit on data with label columns, `model.categories_` holds their labels in the
    order of their codes (see :func:`coding`); it is saved and loaded with the model.

    By convention the number of rows reaches the program as its keyword argument `n`, and the
    rows are the outermost `pyro.plate`; data enter by conditioning (`pyro.condition` or
    `obs=`), so that each child reads the value its parents' `pyro.sample` returned.

    Example:
        >>> class Coin(Model):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.x = Root(dist.Bernoulli)
        ...     def forward(self, n=1):
        ...         with pyro.plate("flips", n):
        ...             return pyro.sample("x", self.x())
        >>> Coin()(n=3).shape
        torch.Size([3])

    Every subclass records the arguments its outermost `__init__` was called with, as
    `model.init_arguments` (see :class:`Rebuildable`), so that :func:`ppgen.save` can rebuild it.

        >>> ppgen.dag([("a", "b")], hidden=(8,)).init_arguments[0][-1]
        (8,)
    """


_CODING = "categories_"  # the attribute that holds a program's coding, as scikit-learn names it


def _owner(model: object) -> object:
    """The object that keeps a program's state: a bound method's module, else the program."""
    return getattr(model, "__self__", model)


def coding(model: object) -> dict[str, list[object]]:
    """The labels of each label column a fit saw, in the order of their codes (empty where
    the program was never fitted on labels).

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"a": "categorical"}, cardinalities={"a": 2})
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"a": ["no", "yes", "yes"], "b": [0.1, 0.2, 0.3]})
        >>> _ = ppgen.fit_mle(model, frame, epochs=1, progress=False)
        >>> coding(model)
        {'a': ['no', 'yes']}
    """
    return {k: list(v) for k, v in (getattr(_owner(model), _CODING, None) or {}).items()}


def set_coding(model: object, categories: Mapping[str, Sequence[object]]) -> bool:
    """Records `categories` as the program's coding, beside what it holds for other columns;
    returns whether the program can keep it (a module or a function can; a wrapper may not)."""
    merged = {**coding(model), **{k: list(v) for k, v in categories.items()}}
    try:
        setattr(_owner(model), _CODING, merged)
    except (AttributeError, TypeError):
        return False
    return True
