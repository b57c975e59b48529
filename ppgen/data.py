r"""Checks data against a model's sample sites: one clear sentence per problem, nothing changed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import constraints

from ppgen.graph import _is_variable, family

__all__ = ["Table", "table"]

Data = Mapping[str, object]


@dataclass
class Table:
    r"""Data checked against a model: one tensor per site, rows first, on one device.

    Attributes:
        columns: Site name to tensor of shape :math:`(N, *)`, in the model's dtypes.
        categories: For columns that came as labels (a DataFrame's categorical or text columns),
            the label of each integer code.
    """

    columns: dict[str, Tensor]
    categories: dict[str, list[object]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def rows(self, index: Tensor | slice) -> dict[str, Tensor]:
        """The rows at `index`, as a dict of tensors."""
        return {name: value[index] for name, value in self.columns.items()}


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
        device: Where to put the tensors; by default where the model's parameters are.

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
    if device is None:
        parameter = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
        device = parameter.device if parameter is not None else None
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
        value = value.to(dtype=expected.dtype, device=device)
        fn = site["fn"]
        if not _inside(fn.support, value.to(expected.device)):
            inside = fn.support.check(value.to(expected.device))
            row = int((~inside).reshape(rows, -1).any(1).nonzero()[0])
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
    return Table(columns, categories)


def _inside(support: constraints.Constraint, value: Tensor) -> bool:
    """Whether every value lies in the support: the bounds of an integer interval (the
    Categorical's) are checked on the extremes alone, the whole data being integer already."""
    if isinstance(support, constraints.integer_interval) and not value.is_floating_point():
        lower, upper = support.lower_bound, support.upper_bound
        if isinstance(lower, int | float) and isinstance(upper, int | float):
            least, most = torch.aminmax(value)  # one pass over the column
            return bool(least >= lower) and bool(most <= upper)
    try:
        return bool(support.check(value).all())
    except RuntimeError:  # a support that varies by row cannot be checked from two rows
        return True
