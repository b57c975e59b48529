r"""Checks data against a model's sample sites: one clear sentence per problem, nothing changed."""

from __future__ import annotations

import numbers
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ppgen.graph import family
from ppgen.model import coding
from ppgen.tracing import is_variable, validates

__all__ = ["Table", "fits", "place", "read_table", "table"]

Data = Mapping[str, object]


@dataclass
class Table:
    r"""Data checked against a model: one tensor per site, rows first.

    The columns live on the compute device when they fit there, else in host memory, and
    :meth:`rows` moves each batch to `device` as it is taken: data larger than a GPU's
    memory are streamed batch by batch.

    Attributes:
        columns: Site name to tensor of shape :math:`(N, *)`, in the model's dtypes, but for
            integers at an integer site (a label column's codes: int8 up to 128 labels, int16
            up to 32768), which keep their own type: :meth:`rows` gives the site's.
        categories: For columns that came as labels (pandas categorical or text columns), the
            label of each integer code: the `categories` given to :func:`table`, else the
            labels of the column itself.
        device: Where batches go (`None`: where the columns are).
    """

    columns: dict[str, Tensor]
    categories: dict[str, list[object]] = field(default_factory=dict)
    device: torch.device | None = None
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # the sites', where they differ

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def home(self) -> torch.device:
        """Where the columns are: `device`, or host memory when they do not fit there."""
        return next(iter(self.columns.values())).device

    def rows(self, index: Tensor | slice) -> dict[str, Tensor]:
        """The rows at `index` (a slice, or positions on :attr:`home`), on :attr:`device`, in
        the sites' dtypes."""
        batch = {name: self.column(name, index) for name in self.columns}
        for name, dtype in self.dtypes.items():  # narrow codes: the site's integers
            batch[name] = batch[name].to(dtype)
        return batch

    def column(self, name: str, index: Tensor | slice = slice(None)) -> Tensor:
        """One column (the rows at `index`) on :attr:`device`, as it is held."""
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


def is_frame(data: object) -> bool:
    """Whether `data` is a DataFrame (pandas', or one that acts like it)."""
    return hasattr(data, "columns") and hasattr(data, "iloc")


def table(
    model: Callable[..., object],
    data: Data | object,
    *args: object,
    categories: Mapping[str, Sequence[object]] | None = None,
    device: torch.device | str | None = None,
    **kwargs: object,
) -> Table:
    r"""Checks `data` against the sample sites of `model` and returns it as a :class:`Table`.

    Columns of labels (a pandas categorical or text column of a DataFrame, or such a pandas
    Series as a value of a dict) are coded as integers: by `categories` where it is given,
    else by the model's own coding (:func:`ppgen.model.coding`, which a fit records), with
    labels it has not seen given the next codes; a column the model has no coding for is coded
    by its own labels, as a fit codes its data (the coding is then :attr:`Table.categories`).

    Arguments:
        model: A Pyro program taking the number of rows as its keyword `n`.
        data: A dict of site name to array (rows first) or a pandas DataFrame.
        args, kwargs: Other inputs of `model`.
        categories: The labels of each label column, in the order of their codes.
        device: Where batches go; by default where the model's parameters are. The columns
            are put there when they fit (see :func:`fits`), else kept in host memory.

    Raises:
        ValueError: Naming the site or column, for an empty dataset, a column that is no site,
            a site missing from the data or outside the data plate, a wrong shape or dtype, NaN
            or inf, or a value outside the support of the site's distribution.

    Example:
        >>> model = ppgen.dag([("a", "b")], kinds={"b": "bernoulli"})
        >>> table(model, {"a": [0.5, 1.5], "b": [1, 0]}).columns["b"]
        tensor([1., 0.])
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"a": [0.5, 1.5], "b": ["yes", "no"]})
        >>> table(model, frame, categories={"b": ["no", "yes"]}).columns["b"]
        tensor([1., 0.])
    """
    return read_table(model, data, args, kwargs, categories=categories, device=device)


def read_table(
    model: Callable[..., object],
    data: Data | object,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    *,
    categories: Mapping[str, Sequence[object]] | None = None,
    device: torch.device | str | None = None,
    latent: bool = False,
    known: bool = False,
) -> Table:
    """:func:`table`, where `latent` lets sites be missing from the data (for a guide), and
    `known` codes labels by the known coding alone (`categories`, else the model's): a query's
    or a validation's rows, where a label the fit never saw has no code and is refused."""
    data = _mapping(data)
    with torch.random.fork_rng(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, n=2, **kwargs)
    sites = {name: site for name, site in trace.nodes.items() if is_variable(site)}
    data = _aligned(data)
    for name in data:
        if name not in sites:
            raise ValueError(
                f"Column {name!r} is not a sample site of the model (its sites: "
                f"{', '.join(map(repr, sites))})."
            )
    coder = _Coder(coding(model) if categories is None else categories, categories is not None,
                   known)  # fmt: skip
    columns: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    labels: dict[str, list[object]] = {}
    varying: list[str] = []  # sites whose support has tensor bounds, checked below
    for name, site in sites.items():
        if name not in data:
            if latent or site["is_observed"]:  # observed by the program: obs=, condition, factor
                continue
            raise ValueError(
                f"Site {name!r} is not in the data: it is latent, so exact maximum likelihood does "
                "not apply; fit it with ppgen.fit_svi(model, guide, data)."
            )
        _check_plate(name, site)
        value, found = _column(name, data[name], coder, site["fn"])
        if found is not None:
            _check_labels(name, site, found)
            labels[name] = found
        _check_rows(name, site, value, columns)
        checked = validates(site["fn"])  # one built not to validate takes any value, as in Pyro
        if checked and varies(site["fn"].support):
            varying.append(name)
        elif checked:  # on the values as given: a cast may round them into the support
            check_support(name, site["fn"], value, site["value"].device)
        dtype = site["value"].dtype
        if _is_integer(value) and _is_integer(site["value"]) and value.dtype.itemsize <= dtype.itemsize:
            columns[name] = value  # held narrow (a label column's codes); batches take the site's
            if value.dtype != dtype:
                dtypes[name] = dtype
        else:
            columns[name] = _cast(name, site["fn"], value, dtype)
    if varying and len(columns) == len(sites):  # bounds drawn from a latent site are unknown
        device_ = next(iter(sites.values()))["value"].device
        _check_varying(model, Table(columns, dtypes=dtypes), varying, args, kwargs, device_)
    columns, device = place(columns, device, model)
    return Table(columns, labels, device, dtypes)


def _check_labels(name: str, site: dict, labels: list[object]) -> None:
    """Raises where a label column has more labels than its site takes values."""
    support = site["fn"].support
    if isinstance(support, constraints.integer_interval) and not varies(support):
        values = int(support.upper_bound) - int(support.lower_bound) + 1
        if len(labels) > values:
            raise ValueError(
                f"Column {name!r} has {len(labels)} labels, but its site takes {values} values."
            )


def _check_plate(name: str, site: dict) -> None:
    """Raises where a site is outside the data plate: one value for all rows is no column."""
    expected = site["value"]
    if expected.dim() == 0 or len(expected) != 2:  # the program was run with n=2
        raise ValueError(
            f"Site {name!r} is outside the data plate (one value for all rows), so it cannot "
            "be a data column: make it a parameter, or leave it latent and give a guide."
        )


def _check_rows(name: str, site: dict, value: Tensor, columns: dict[str, Tensor]) -> None:
    """A column checked against its site and the columns before it: one value per row, as
    many rows, the site's shape of a row, finite values, whole numbers for a discrete site."""
    expected = site["value"]
    if value.dim() == 0:
        raise ValueError(f"Column {name!r} holds a single value, not one per row.")
    first = next(iter(columns), None)
    if first is not None and len(value) != len(columns[first]):
        raise ValueError(
            f"Column {name!r} has {len(value)} rows but {first!r} has {len(columns[first])}."
        )
    if len(value) == 0:
        raise ValueError("The data have no rows.")
    if value.shape[1:] != expected.shape[1:]:
        raise ValueError(
            f"Column {name!r} has rows of shape {tuple(value.shape[1:])}, but site {name!r} "
            f"has rows of shape {tuple(expected.shape[1:])}."
        )
    if value.is_floating_point() and not torch.isfinite(value.sum()):  # one pass, where finite
        row = _first_row(~torch.isfinite(value))
        if row is not None:
            raise ValueError(f"Column {name!r} holds NaN or inf (row {row}).")
    if not expected.is_floating_point() and value.is_floating_point():
        if not torch.equal(value, value.round()):
            raise ValueError(
                f"Column {name!r} must hold whole numbers for its {type(site['fn']).__name__} site."
            )


@dataclass
class _Coder:
    """How label columns get their codes: `categories` (given, or the model's own), and whether
    they alone may code (`known`: a query's rows) or a fit may code new labels."""

    categories: Mapping[str, Sequence[object]]
    given: bool
    known: bool

    def labels(self, name: str, value: object, pd: object) -> list[object]:
        """The labels of a label column, in the order of their codes."""
        if name in self.categories:
            labels = list(self.categories[name])
            if not self.known:  # a fit: labels not coded yet take the next codes
                seen = set(labels)
                labels += [c for c in _categories(value, pd) if c not in seen]
            return labels
        if self.known and self.given:
            raise ValueError(f"Column {name!r} holds labels, but categories has none for it.")
        if self.known:
            raise ValueError(
                f"Column {name!r} holds labels, and log_prob needs the codes they had in the fit: "
                "pass categories=fit.categories, or fit the model on a frame with this column "
                "first (it then keeps them)."
            )
        return list(_categories(value, pd))


def _mapping(data: Data | object) -> Data:
    """The data as a mapping of column name to values: a DataFrame's columns by name (a name
    given twice is refused), a dict as it is."""
    if is_frame(data):
        names = Counter(str(name) for name in data.columns)
        twice = next((name for name, count in names.items() if count > 1), None)
        if twice is not None:
            raise ValueError(f"Column {twice!r} appears twice in the data; give each site one column.")
        data = {str(name): series for name, series in data.items()}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"Data must be a dict of site name to array or a DataFrame, not {type(data).__name__}."
        )
    if not data:
        raise ValueError("The data have no columns.")
    return data


def _aligned(data: Data) -> Data:
    """The columns, pandas Series among them paired by their index as pandas pairs them: an
    index in another order is reordered to the first Series' index; another index is refused."""
    pd = sys.modules.get("pandas")
    if pd is None:
        return data
    series = [(name, v) for name, v in data.items() if isinstance(v, pd.Series)]
    if len(series) < 2:
        return data
    first, index = series[0][0], series[0][1].index
    aligned = dict(data)
    for name, value in series[1:]:
        if value.index.equals(index):
            continue
        same = len(value) == len(index) and index.is_unique and value.index.is_unique
        if not (same and (index.get_indexer(value.index) >= 0).all()):
            raise ValueError(
                f"Columns {first!r} and {name!r} are pandas Series with different indexes, so "
                "their rows cannot be paired: align them (pd.DataFrame(data)) or pass arrays."
            )
        aligned[name] = value.reindex(index)
    return aligned


def _column(
    name: str, value: object, coder: _Coder, fn: Distribution
) -> tuple[Tensor, list[object] | None]:
    """A column as a tensor and, where it came as labels (a pandas categorical or text column
    of a site with a discrete support), its labels: the tensor holds their codes, by `coder`.
    Text for a continuous site is refused, naming its first cell that is not a number."""
    pd = sys.modules.get("pandas")  # data hold pandas objects only where pandas is imported
    labels = None
    if pd is not None and isinstance(value, pd.Series | pd.Index):
        kind = value.dtype
        text = pd.api.types.is_string_dtype(kind) or pd.api.types.is_object_dtype(kind)
        if isinstance(kind, pd.CategoricalDtype) and not fn.support.is_discrete:
            raise ValueError(
                f"Column {name!r} holds labels (a categorical column), but its {family(fn)} "
                "site is continuous: give it numbers."
            )
        if text and not fn.support.is_discrete:
            value = _numbers(name, value.to_numpy(), fn)
        elif text or isinstance(kind, pd.CategoricalDtype):
            value, labels = _codes(name, value, coder, pd)
        else:  # in order: a Series' index plays no part
            _check_numbers(name, coder)
            row = _first_row(torch.tensor(value.isna().to_numpy(dtype=bool)))
            numpy_float = kind.kind == "f" and not hasattr(kind, "numpy_dtype")  # NaN: below
            if row is not None and not numpy_float:
                raise ValueError(f"Column {name!r} holds a missing value (row {row}).")
            numpy_dtype = getattr(kind, "numpy_dtype", None)  # pandas' nullable dtypes
            value = value.to_numpy(dtype=numpy_dtype, copy=True)
    elif isinstance(value, _ndarray()):
        value = _numbers(name, value, fn)
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        if isinstance(value, list | tuple):
            _numbers(name, value, fn)  # names the first cell that is no number
        raise ValueError(f"Column {name!r} cannot be read as numbers: {error}") from None
    if tensor.is_complex():
        raise ValueError(f"Column {name!r} holds complex numbers; its site takes real ones.")
    return tensor, labels


def _check_numbers(name: str, coder: _Coder) -> None:
    """Raises where a column of numbers could be labels or codes: the coding of its column has a
    number label at a code other than its own value (labels 2, 0, 1: is 2 label 2 or code 2?)."""
    labels = coder.categories.get(name, ())
    if any(isinstance(c, numbers.Number) and c != i for i, c in enumerate(labels)):
        raise ValueError(
            f"Column {name!r} holds numbers, but the model codes its labels {list(labels)}, "
            "numbers too, so they could be labels or codes: give labels as a pandas "
            "categorical column, codes as an array (column.to_numpy())."
        )


def _categories(value: object, pd: object) -> object:
    """The labels of a column of labels, sorted as pandas sorts them (a categorical's own)."""
    if isinstance(value.dtype, pd.CategoricalDtype):
        return value.dtype.categories
    return pd.Categorical(value).categories


def _label_codes(value: object, labels: list[object], pd: object) -> object:
    """The code of each label of a column in `labels`, -1 where it has none, in the smallest
    integer type: a categorical column's by its categories (one lookup a row, no search)."""
    dtype = next(t for t, top in (("int8", 2**7), ("int16", 2**15), ("int32", 2**31),
                                  ("int64", 2**63)) if len(labels) <= top)  # fmt: skip
    if isinstance(value.dtype, pd.CategoricalDtype) and _same(value.dtype.categories.tolist(), labels):
        return value.array.codes.astype(dtype)  # its codes are the coding's: a copy
    index = pd.Index(labels)
    if not isinstance(value.dtype, pd.CategoricalDtype):
        return index.get_indexer(value).astype(dtype)
    column = value.array  # a Categorical: codes (-1 for a missing label) and categories
    found = index.get_indexer(column.categories)
    if np.array_equal(found, np.arange(len(found))):  # its codes are the coding's: a copy
        return column.codes.astype(dtype)
    lookup = np.append(found, -1).astype(dtype)
    return lookup[column.codes]


def _same(labels: list[object], others: list[object]) -> bool:
    """Whether two lists of labels are the same labels in the same order, of the same types
    (`1`, `1.0` and `True` are three labels)."""
    return len(labels) == len(others) and all(
        type(a) is type(b) and a == b for a, b in zip(labels, others, strict=True)
    )


def _is_integer(value: Tensor) -> bool:
    return not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool


def check_columns(val: object, data: Table) -> None:
    """Raises, naming it, for a site of the training rows that the validation data (a dict
    or a DataFrame) lack, which :func:`table` would call latent."""
    names = {str(c) for c in val.columns} if hasattr(val, "iloc") else val
    if isinstance(names, Mapping | set):
        for name in data.columns:
            if name not in names:
                raise ValueError(
                    f"The validation data lack column {name!r}, which the training data have."
                )


def _ndarray() -> type:
    np = sys.modules.get("numpy")
    return type(None) if np is None else np.ndarray


def _codes(name: str, value: object, coder: _Coder, pd: object) -> tuple[object, list[object]]:
    """The integer codes of a column of labels, and the labels."""
    labels = coder.labels(name, value, pd)
    codes = _label_codes(value, labels, pd)
    row = _first_row(torch.from_numpy(codes < 0)) if len(codes) and codes.min() < 0 else None
    if row is not None:
        label = value.array[row]  # as the column holds it: a Timestamp, not numpy's datetime
        if pd.isna(label):
            raise ValueError(f"Column {name!r} holds a missing label (row {row}).")
        text = not isinstance(label, str) and str(label) in labels  # as a saved model keeps it
        raise ValueError(
            f"Column {name!r} has label {label!r} in row {row}, which is not among its "
            f"{len(labels)} categories"
            + (": a saved model keeps labels that are neither numbers nor text as text, so "
               f"give {str(label)!r}." if text else ".")
        )  # fmt: skip
    return codes, labels  # a new array, in the smallest integer type


def _numbers(name: str, value: object, fn: Distribution) -> object:
    """A list or numpy array as a contiguous numpy array of numbers (a reversed view copied),
    refusing text or other objects: by the first cell that is no number, else the first text."""
    import numpy as np

    array = np.asarray(value)
    if array.dtype.kind not in "OUSV":
        return np.ascontiguousarray(array)
    cells = [c.item() if isinstance(c, np.generic) else c for c in array.reshape(-1)]
    width = max(1, len(cells) // max(1, len(array))) if array.ndim else 1
    bad = [(i, c) for i, c in enumerate(cells) if not isinstance(c, numbers.Real)]
    if not bad:
        return array.astype("float64")
    i, cell = next(((i, c) for i, c in bad if not _parses(c)), bad[0])
    missing = cell is None or cell is getattr(sys.modules.get("pandas"), "NA", None)
    what = "a missing value" if missing else f"{type(cell).__name__} {cell!r}"
    raise ValueError(
        f"Column {name!r} cannot be read as numbers: it holds {what} in row {i // width}, "
        f"and its {family(fn)} site takes numbers."
    )


def _parses(cell: object) -> bool:
    """Whether text reads as a number (a cell of a CSV column that pandas read as text)."""
    try:
        float(cell)
    except (TypeError, ValueError):
        return False
    return isinstance(cell, str | bytes)


def _cast(name: str, fn: Distribution, value: Tensor, dtype: torch.dtype) -> Tensor:
    """`value` in the site's `dtype`, refusing what the cast would silently change: a value of
    a discrete site that the dtype cannot hold exactly, a value beyond the dtype's range, a
    column whose rounding moves values by more than :data:`_PRECISION` of its standard
    deviation, and values whose squares summed over the rows overflow (a Normal's scale)."""
    cast = value.to(dtype=dtype)
    where = str(dtype).removeprefix("torch.")
    if fn.support.is_discrete or not cast.is_floating_point():
        row = _first_row(cast.to(value.dtype) != value)
        if row is not None:
            bad = value[row].reshape(-1)[0].item()
            raise ValueError(
                f"Column {name!r} has value {bad} in row {row}, which its site's dtype, "
                f"{where}, cannot hold exactly: use whole numbers in range, or a float64 model."
            )
        return cast
    row = _first_row(~torch.isfinite(cast))
    if row is not None:
        raise ValueError(
            f"Column {name!r} holds a value beyond the range of its site's dtype, {where} "
            f"(row {row})."
        )
    bound = (torch.finfo(dtype).max / max(1, len(cast))) ** 0.5
    row = _first_row(cast.abs() > bound)
    if row is not None:
        raise ValueError(
            f"Column {name!r} holds {value[row].reshape(-1)[0].item():g} (row {row}), too large "
            f"for its site's dtype, {where}: the squares of {len(cast)} such values overflow; "
            f"rescale the column{'' if dtype == torch.float64 else ' or use a float64 model'}."
        )
    if value.dtype != dtype and len(value) > 1:
        exact = value.to(torch.float64)
        error = (cast.to(torch.float64) - exact).abs().max()
        spread = exact.std()
        if error > _PRECISION * spread:
            raise ValueError(
                f"Column {name!r} loses precision in {where}: its values spread by "
                f"{spread.item():.3g} but rounding moves them by up to {error.item():.3g}; "
                "subtract an offset (such as the mean) or use a float64 model."
            )
    return cast


# the most that a cast of a column may move its values, as a share of their standard deviation
_PRECISION = 1e-3


# rows of a column checked at once on the model's device: a column need not fit there whole
_CHECK_ELEMENTS = 1 << 22
# rows of the program run at once to find supports that vary by row, as a fit evaluates them
_TRACE_ROWS = 8192


def _first_row(bad: Tensor) -> int | None:
    """The first row where `bad` (rows first) holds `True`, or `None`."""
    rows = bad.flatten(1).any(1) if bad.dim() > 1 else bad
    if not rows.numel() or not rows.view(torch.uint8).max():  # ~15x faster than a bool's any
        return None
    return int(rows.nonzero()[0])


def varies(support: constraints.Constraint) -> bool:
    """Whether a support has tensor bounds (a Binomial's `total_count`), which may vary by row."""
    return any(
        isinstance(v, Tensor) or (isinstance(v, constraints.Constraint) and varies(v))
        for v in vars(support).values()
    )


def check_support(name: str, fn: Distribution, value: Tensor, device: torch.device) -> None:
    """Raises, naming the column, at the first row outside the support of `fn` (whose bounds
    hold for every row): a chunk of rows at a time on `device`; the bounds of an integer
    interval (the Categorical's) on the extremes alone, the whole data being integer already."""
    support = fn.support
    if isinstance(support, constraints.integer_interval) and not value.is_floating_point():
        least, most = torch.aminmax(value)  # one pass over the column
        if bool(least >= support.lower_bound) and bool(most <= support.upper_bound):
            return
    step = max(1024, _CHECK_ELEMENTS // max(1, value[0].numel()))
    for start in range(0, len(value), step):
        row = _first_row(~support.check(value[start : start + step].to(device)))
        if row is not None:
            _outside(name, fn, value, start + row)


def _check_varying(
    model: Callable[..., object],
    data: Table,
    names: list[str],
    args: tuple[object, ...],
    kwargs: dict[str, object],
    device: torch.device,
) -> None:
    """Checks the sites `names`, whose supports have tensor bounds, on the program conditioned
    on the data, where the bounds are known: a chunk of rows at a time on `device`."""
    for start in range(0, len(data), _TRACE_ROWS):
        chunk = {k: v.to(device) for k, v in data.rows(slice(start, start + _TRACE_ROWS)).items()}
        with torch.random.fork_rng(), torch.no_grad():
            conditioned = poutine.condition(model, data=chunk)
            trace = poutine.trace(conditioned).get_trace(*args, n=len(chunk[names[0]]), **kwargs)
        for name in names:
            fn = trace.nodes[name]["fn"]
            row = _first_row(~fn.support.check(chunk[name]))
            if row is not None:
                _outside(name, fn, data.columns[name], start + row)


def _outside(name: str, fn: Distribution, value: Tensor, row: int) -> NoReturn:
    """Raises the error of a value outside the support, naming the column, row and family: the
    row's values, or in a long row (an image's) the first outside, with its position."""
    entries = value[row]
    bad, where = entries.tolist(), ""
    if entries.numel() == 1:
        bad = entries.reshape(-1)[0].item()
    elif entries.numel() > _SHOWN:
        support = fn.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        inside = support.check(entries)
        if inside.shape == entries.shape and not inside.all():
            at = tuple(int(i) for i in (~inside).nonzero()[0])
            bad, where = entries[at].item(), f" at position {at}"
        else:
            bad = f"[{', '.join(map(str, entries.reshape(-1)[:_SHOWN].tolist()))}, ...]"
    raise ValueError(
        f"Column {name!r} has value {bad}{where} in row {row}, outside the support of its "
        f"{family(fn)} distribution."
    )


_SHOWN = 8  # the most values of a row that an error shows
