r"""Checks data against a model's sample sites: one clear sentence per problem, nothing changed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import constraints

from ppgen.graph import _is_variable, family

__all__ = ["Table", "fits", "place", "table"]

Data = Mapping[str, object]


@dataclass
class Table:
    r"""Data checked against a model: one tensor per site, rows first.

    The columns live on the compute device when they fit there, else in host memory, and
    :meth:`rows` moves each batch to `device` as it is taken: data larger than a GPU's
    memory are streamed batch by batch.

    Attributes:
        columns: Site name to tensor of shape :math:`(N, *)`, in the model's dtypes.
        categories: For columns that came as labels (a DataFrame's categorical or text columns),
            the label of each integer code.
        device: Where batches go (`None`: where the columns are).
    """

    columns: dict[str, Tensor]
    categories: dict[str, list[object]] = field(default_factory=dict)
    device: torch.device | None = None

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def home(self) -> torch.device:
        """Where the columns are: `device`, or host memory when they do not fit there."""
        return next(iter(self.columns.values())).device

    def rows(self, index: Tensor | slice) -> dict[str, Tensor]:
        """The rows at `index` (a slice, or positions on :attr:`home`), on :attr:`device`."""
        return {name: self.column(name, index) for name in self.columns}

    def column(self, name: str, index: Tensor | slice = slice(None)) -> Tensor:
        """One column (the rows at `index`) on :attr:`device`."""
        value = self.columns[name][index]
        return value if self.device is None else value.to(self.device, non_blocking=True)


# the share of a GPU's free memory that data may take there; more is streamed from host memory
_RESIDENT_SHARE = 0.5


def fits(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of data may live on `device`: anywhere on a CPU, up to half of the
    free memory of a GPU (the rest is for the model, its activations and the optimiser).

    Example:
        >>> fits(10**12, torch.device("cpu"))
        True
    """
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= _RESIDENT_SHARE * free


def place(
    columns: dict[str, Tensor], device: torch.device | str | None, model: object = None
) -> tuple[dict[str, Tensor], torch.device | None]:
    """The columns on `device` (by default where the parameters of `model` are, if it has
    any) when they fit there, else in host memory (pinned, for fast copies to a GPU), and the
    device their batches go to.

    Example:
        >>> place({"x": torch.zeros(3)}, "cpu")[0]["x"].device
        device(type='cpu')
    """
    if device is None:
        parameter = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
        if parameter is None:
            return columns, None
        device = parameter.device
    device = torch.device(device)
    moving = [v for v in columns.values() if v.device != device]
    if not moving or fits(sum(v.numel() * v.element_size() for v in moving), device):
        return {name: v.to(device) for name, v in columns.items()}, device
    pin = torch.cuda.is_available()
    host = {name: v.cpu().pin_memory() if pin else v.cpu() for name, v in columns.items()}
    return host, device


def _from_frame(frame: object) -> tuple[dict[str, object], dict[str, list[object]]]:
    import numpy as np
    import pandas as pd

    columns, categories = {}, {}
    for name, series in frame.items():
        labels = series.array
        if series.dtype == object:
            labels = pd.Categorical(series)
        if isinstance(labels, pd.Categorical):  # its codes as they are stored, copied to int64
            categories[str(name)] = list(labels.categories)
            columns[str(name)] = labels.codes.astype(np.int64)
        else:
            columns[str(name)] = series.to_numpy(copy=True)
    return columns, categories


def table(
    model: Callable[..., object],
    data: Data | object,
    *args: object,
    device: torch.device | str | None = None,
    **kwargs: object,
) -> Table:
    r"""Checks `data` against the sample sites of `model` and returns it as a :class:`Table`.

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        data: A dict of site name to array (rows first) or a pandas DataFrame.
        args, kwargs: Other inputs of `model`.
        device: Where batches go; by default where the model's parameters are. The columns
            are put there when they fit (see :func:`fits`), else kept in host memory.

    Raises:
        ValueError: Naming the site or column, for an empty dataset, a column that is no site,
            a site missing from the data, a wrong shape or dtype, NaN or inf, or a value outside
            the support of the site's distribution.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"b": "bernoulli"})
        >>> table(model, {"a": [0.5, 1.5], "b": [1, 0]}).columns["b"]
        tensor([1., 0.])
    """
    categories: dict[str, list[object]] = {}
    if hasattr(data, "columns") and hasattr(data, "iloc"):
        data, categories = _from_frame(data)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"Data must be a dict of site name to array or a DataFrame, not {type(data).__name__}."
        )
    if not data:
        raise ValueError("The data have no columns.")
    with torch.random.fork_rng(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=2, **kwargs)
    sites = {name: site for name, site in trace.nodes.items() if _is_variable(site)}
    for name in data:
        if name not in sites:
            raise ValueError(
                f"Column {name!r} is not a sample site of the model (its sites: {', '.join(sites)})."
            )
    columns: dict[str, Tensor] = {}
    rows = None
    for name, site in sites.items():
        if name not in data:
            raise ValueError(
                f"Site {name!r} is not in the data: it is latent, so exact maximum likelihood does "
                "not apply; fit it with ppgen.fit_svi(model, guide, data)."
            )
        try:
            value = torch.as_tensor(data[name])
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"Column {name!r} cannot be read as numbers: {error}") from None
        expected = site["value"]
        if rows is None:
            rows, first = len(value) if value.dim() else 0, name
        if value.dim() == 0 or len(value) != rows:
            raise ValueError(
                f"Column {name!r} has {len(value) if value.dim() else 0} rows but {first!r} has {rows}."
            )
        if rows == 0:
            raise ValueError("The data have no rows.")
        if value.shape[1:] != expected.shape[1:]:
            raise ValueError(
                f"Column {name!r} has rows of shape {tuple(value.shape[1:])}, but site {name!r} "
                f"has rows of shape {tuple(expected.shape[1:])}."
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            row = int((~torch.isfinite(value)).reshape(rows, -1).any(1).nonzero()[0])
            raise ValueError(f"Column {name!r} holds NaN or inf (row {row}).")
        if not expected.is_floating_point() and value.is_floating_point():
            if not torch.equal(value, value.round()):
                raise ValueError(
                    f"Column {name!r} must hold whole numbers for its {type(site['fn']).__name__} site."
                )
        value = value.to(dtype=expected.dtype)
        fn = site["fn"]
        row = _first_outside(fn.support, value, expected.device)
        if row is not None:
            bad = (
                value[row].reshape(-1)[0].item()
                if value[row].numel() == 1
                else value[row].tolist()
            )
            raise ValueError(
                f"Column {name!r} has value {bad} in row {row}, outside the support of its "
                f"{family(fn)} distribution."
            )
        columns[name] = value
    columns, device = place(columns, device, model)
    return Table(columns, categories, device)


# rows of a column checked at once on the model's device: a column need not fit there whole
_CHECK_ELEMENTS = 1 << 22


def _first_outside(
    support: constraints.Constraint, value: Tensor, device: torch.device
) -> int | None:
    """The first row with a value outside the support, or `None`. The bounds of an integer
    interval (the Categorical's) are checked on the extremes alone, the whole data being integer
    already; other supports on `device`, a chunk of rows at a time."""
    if isinstance(support, constraints.integer_interval) and not value.is_floating_point():
        lower, upper = support.lower_bound, support.upper_bound
        if isinstance(lower, int | float) and isinstance(upper, int | float):
            least, most = torch.aminmax(value)  # one pass over the column
            if bool(least >= lower) and bool(most <= upper):
                return None
    step = max(1024, _CHECK_ELEMENTS // max(1, value[0].numel()))
    for start in range(0, len(value), step):
        chunk = value[start : start + step].to(device)
        try:
            outside = ~support.check(chunk)
        except RuntimeError:  # a support that varies by row cannot be checked from two rows
            return None
        bad = outside.reshape(len(chunk), -1).any(1)
        if bad.any():
            return start + int(bad.nonzero()[0])
    return None
