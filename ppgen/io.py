r"""Saving and loading models and checkpoints: safetensors weights plus a JSON description, never pickle.

A saved model is one `.safetensors` file. Its tensors are the model's `state_dict` (buffers such
as MADE masks included); its safetensors metadata holds three strings: `format` (`"ppgen"`),
`ppgen` (the JSON description: format version, ppgen and torch versions, the model's class as
`module:qualname`, its constructor arguments, its graph and its fit history) and `sha256` (a
digest of the tensor index, the description and the tensor bytes, so that any flipped byte is
found). Loading parses the header as JSON, checks the format, version and digest, reads the
tensors with safetensors, rebuilds the model from its class and arguments and loads the weights;
nothing is unpickled, no module is imported but ppgen's own, and no class is built but ppgen's and
those the caller names. Every file is written to a temporary file beside it (created exclusively,
under a random name) and renamed over it, so an interrupted write leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import itertools
import json
import numbers
import os
import re
import secrets
import stat
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ppgen.device import resolve_device
from ppgen.graph import graph
from ppgen.model import Model, Rebuildable, coding, set_coding
from ppgen.version import __version__

if TYPE_CHECKING:
    from ppgen.result import FitResult

__all__ = ["FORMAT_VERSION", "LoadError", "describe", "exclusive", "load", "save"]

FORMAT_VERSION = 1
_MAX_HEADER = 100_000_000  # the limit of safetensors itself


class LoadError(ValueError):
    r"""A file that :func:`load` (or a resumed fit) cannot read: the message names the file.

    Example:
        >>> issubclass(LoadError, ValueError)
        True
    """


def save(model: Model, path: str | os.PathLike[str], *, fit: FitResult | None = None) -> Path:
    r"""Saves a model as one safetensors file: its weights and a JSON description.

    The description holds the model's class, the arguments of its constructor (which must be
    JSON values: numbers, strings, booleans, `None`, lists, tuples and dicts with text keys; or
    modules rebuilt from their class and arguments in turn, as a GAN's players: a
    :class:`ppgen.nn.Rebuildable`, or torch's own built without arguments such as `nn.Sigmoid()`),
    its graph where :func:`ppgen.graph` can draw it without inputs, and `fit`'s history. The
    file is written beside `path` and renamed over it: an interrupted save leaves the old file.

    Arguments:
        model: A :class:`ppgen.Model` (ppgen's models, :func:`ppgen.dag`'s, or a subclass).
        path: The file to write, conventionally ending in `.safetensors`.
        fit: The result of the fit, whose history is kept in the description.

    Returns:
        The path written.

    Raises:
        ValueError: Naming the argument, for a constructor argument that is not a JSON value
            (numpy's numbers are converted), when `model` is not a :class:`ppgen.Model`, or
            naming the folder, when `path`'s folder does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> model = ppgen.dag([("a", "b")], hidden=(8,))
        >>> path = save(model, pathlib.Path(tempfile.mkdtemp()) / "model.safetensors")
        >>> rows = {"a": torch.zeros(2), "b": torch.ones(2)}
        >>> torch.equal(ppgen.log_prob(load(path), rows), ppgen.log_prob(model, rows))
        True
    """
    name = type(model).__name__
    if not isinstance(model, Model):
        raise ValueError(
            f"save needs a ppgen.Model (a subclass records its constructor arguments); got {name}."
        )
    encoded_args, encoded_kwargs = _encode_arguments(model, "")
    try:
        g = graph(model)
        described = {"nodes": list(g.nodes), "edges": [list(e) for e in g.edges]}
    except (TypeError, ValueError, RuntimeError):  # a program that needs inputs to run
        described = None
    description = {
        "kind": "model",
        "format_version": FORMAT_VERSION,
        "ppgen_version": __version__,
        "torch_version": torch.__version__,
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "args": encoded_args,
        "kwargs": encoded_kwargs,
        "graph": described,
        "fit": None if fit is None else _fit_record(fit),
        "categories": {k: [_label(c) for c in v] for k, v in coding(model).items()},
    }
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return _write(Path(path), tensors, description)


def describe(path: str | os.PathLike[str]) -> dict[str, object]:
    r"""Returns the JSON description of a saved model, checked but without building the model.

    Example:
        >>> import tempfile, pathlib
        >>> path = save(ppgen.dag([("a", "b")]), pathlib.Path(tempfile.mkdtemp()) / "m.safetensors")
        >>> info = describe(path)
        >>> graph = info["graph"]
        >>> info["class"], graph["edges"]
        ('ppgen.builder:DAG', [['a', 'b']])
    """
    description, _ = _read(Path(path), "model")
    return description


def load(
    path: str | os.PathLike[str],
    *,
    classes: Iterable[type[nn.Module]] = (),
    device: str | torch.device | None = None,
) -> Model:
    r"""Loads a model saved by :func:`save`: rebuilt from its class and arguments, then its weights.

    Nothing is unpickled and no module is imported but ppgen's own. The file names its class
    (`module:qualname`); load builds only ppgen's own classes and the `classes` given (matched
    by module and name, else by name alone), so a file never chooses code to run. The
    constructor's arguments come from the file: the tensors it builds must be those the file
    holds, and tensors beyond the file's size are never allocated. The rebuilt model's graph
    must be the one the file records (a class edited since the save is refused).

    Arguments:
        path: A file written by :func:`save`.
        classes: The classes of your own (and of module arguments, such as a GAN's players)
            that the file may name.
        device: Where to put the model (default: the CPU).

    Returns:
        The model, with the same parameters, buffers and dtypes as the one saved.

    Raises:
        LoadError: Naming the file, for a file that is missing, not a regular file, truncated,
            corrupt, of another format or of a newer format version, holding tensors of a
            dtype ppgen never saves, naming a class not allowed, or whose class cannot be
            rebuilt into the tensors and graph it records.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "made.safetensors"
        >>> made = ppgen.models.MADE(4, hidden_features=(8,))
        >>> torch.equal(load(save(made, path)).net.layers[0].mask, made.net.layers[0].mask)
        True
    """
    path = Path(path)
    description, tensors = _read(path, "model")
    allowed = tuple(classes)
    cls = _find_class(path, str(description.get("class")), allowed)
    budget = _Budget(2 * path.stat().st_size + _SLACK, 16 * len(tensors) + 4096)
    try:
        with torch.random.fork_rng(), budget:  # constructors draw weights, within the file's size
            model = _build(cls, description, path, allowed)
        _check_tensors(path, model, tensors, budget)
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            saved = tensors.get(name)  # each tensor in its saved dtype (a float64 player too)
            if saved is not None and t.is_floating_point() and saved.dtype != t.dtype:
                t.data = t.data.to(saved.dtype)
        model.load_state_dict(tensors, strict=True)
    except LoadError:  # a module argument's class, already named with the file
        raise
    except Exception as error:  # any failure of a rebuild from a file is the file's fault
        if budget.exceeded:
            _check_tensors(path, None, tensors, budget)
        raise LoadError(
            f"{path} does not rebuild its {cls.__qualname__}: {type(error).__name__}: {error}"
        ) from None
    _check_graph(path, model, description.get("graph"))
    set_coding(model, _coding(description))
    resolve_device(model, device)
    return model


def _coding(description: Mapping[str, object]) -> dict[str, list[object]]:
    """The model's coding of labels in a description (in its fit's record, in older files)."""
    found = description.get("categories")
    if found is None:
        found = (description.get("fit") or {}).get("categories")
    return dict(found or {})


# allocations a rebuild may make beyond twice the file's size (activations of a graph check)
_SLACK = 64 << 20


class _Budget(TorchFunctionMode):
    """Lets torch's factory functions create tensors until `budget` bytes or `calls` tensors
    are allocated; beyond, each call raises, its size measured on the meta device (shapes only,
    no memory), so that arguments chosen by a file never allocate more than it justifies."""

    def __init__(self, budget: int, calls: int) -> None:
        super().__init__()
        self.left, self.calls, self.exceeded = budget, calls, False

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = dict(kwargs or {})
        if func not in _factories() or kwargs.get("device") is not None:
            return func(*args, **kwargs)
        probe = func(*args, **{**kwargs, "device": "meta"})
        size = probe.numel() * probe.element_size() if isinstance(probe, Tensor) else 0
        self.calls -= 1  # many small tensors (a million layers) cost memory beside their bytes
        if self.exceeded or size > self.left or self.calls < 0:
            self.exceeded = True
            raise MemoryError("beyond the file's size")  # its rebuild's end: refused below
        self.left -= size
        return func(*args, **kwargs)


def _factories() -> set[object]:
    """torch's functions that create a tensor of a size their arguments give (not from data)."""
    from torch.utils._device import _device_constructors

    return _device_constructors() - {torch.tensor, torch.as_tensor, torch.asarray}


def _check_tensors(
    path: Path, model: nn.Module | None, tensors: Mapping[str, Tensor], budget: _Budget
) -> None:
    """Refuses a rebuild whose tensors are not the file's: of other names or shapes, or more
    than the file's size allowed to allocate."""
    held = sum(t.numel() * t.element_size() for t in tensors.values())
    if budget.exceeded:
        raise LoadError(
            f"{path} asks its constructor for tensors beyond what the file holds ({held} bytes); "
            "a file of ppgen never does."
        )
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in tensors.items()}
    if built != saved:
        differ = sorted(set(built.items()) ^ set(saved.items()))[0][0]
        raise LoadError(
            f"{path} does not rebuild its {type(model).__qualname__}: tensor {differ!r} is "
            f"{saved.get(differ, 'missing')} in the file but {built.get(differ, 'missing')} "
            "in the model its arguments build."
        )


def _check_graph(path: Path, model: Model, recorded: object) -> None:
    """Refuses a model whose graph is not the one its file records (a class edited since)."""
    if not isinstance(recorded, Mapping):
        return  # none recorded: the program needs inputs to run
    try:
        with torch.random.fork_rng(), torch.no_grad():
            g = graph(model)
    except (TypeError, ValueError, RuntimeError) as error:
        raise LoadError(f"{path} records a graph that its rebuilt model cannot draw: {error}") from None
    edges = sorted(map(list, g.edges))
    if sorted(map(str, g.nodes)) != sorted(map(str, recorded.get("nodes", []))) or edges != sorted(
        recorded.get("edges", [])
    ):
        shown = ", ".join(f"{u}->{v}" for u, v in edges) or "no edges"
        saved = ", ".join(f"{u}->{v}" for u, v in sorted(recorded.get("edges", []))) or "no edges"
        raise LoadError(
            f"{path} records the graph {saved}, but its {type(model).__qualname__} now builds "
            f"{shown}: the class changed since the save, so its weights would sit on other sites."
        )


def _fit_record(fit: FitResult) -> dict[str, object]:
    categories = {k: [_label(c) for c in v] for k, v in fit.categories.items()}
    return {
        "history": fit.history,
        "best_epoch": fit.best_epoch,
        "closed_form": fit.closed_form,
        "seconds": fit.seconds,
        "categories": categories,
    }


def _label(label: object) -> object:
    """A category's label as JSON: a number or a string as it is (numpy's as Python's), so
    that frames of the same labels are coded alike after loading; anything else as text."""
    if isinstance(label, numbers.Number) and not isinstance(label, complex):
        return label.item() if hasattr(label, "item") else label
    return label if isinstance(label, str) else str(label)


def _encode(value: object, where: str) -> object:
    """A constructor argument as JSON: tuples, dicts and modules tagged so that they decode
    exactly (a module by its class and arguments; its weights are in the model's)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where) for k, v in value.items()}}
    name = type(value).__name__
    if isinstance(value, nn.Module):
        if not (isinstance(value, Rebuildable) or _default_torch_module(value)):
            raise ValueError(
                f"The {where} is a {name} module, which ppgen cannot rebuild; make its class a "
                "ppgen.nn.Rebuildable (it then records its constructor's arguments)."
            )
        args, kwargs = _encode_arguments(value, f" ({where})")
        cls = type(value)
        return {"__module__": {"class": f"{cls.__module__}:{cls.__qualname__}", "args": args,
                               "kwargs": kwargs}}  # fmt: skip
    raise ValueError(
        f"The {where} is a {name}, not a JSON value, so the model cannot be saved; give the "
        "constructor numbers, strings, lists, dicts or rebuildable modules instead."
    )


def _encode_arguments(module: nn.Module, within: str) -> tuple[list, dict]:
    """A module's constructor arguments, encoded (none for torch's own, e.g. nn.Sigmoid());
    `within` ends the names of arguments in errors."""
    name = type(module).__name__
    args, kwargs = getattr(module, "init_arguments", None) or ((), {})
    try:  # the names of the positional arguments, for errors
        parameters = list(inspect.signature(type(module).__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in itertools.takewhile(lambda p: p.kind <= p.POSITIONAL_OR_KEYWORD,
                                                  parameters)]  # fmt: skip
    return (
        [
            _encode(v, f"argument {names[i] if i < len(names) else i!r} of {name}{within}")
            for i, v in enumerate(args)
        ],
        {k: _encode(v, f"argument {k!r} of {name}{within}") for k, v in kwargs.items()},
    )


def _build(
    cls: type[nn.Module], spec: Mapping[str, object], path: Path, allowed: tuple[type, ...]
) -> nn.Module:
    """A module rebuilt from its encoded constructor arguments."""
    args = [_decode(v, path, allowed) for v in spec["args"]]
    kwargs = {str(k): _decode(v, path, allowed) for k, v in dict(spec["kwargs"]).items()}
    return cls(*args, **kwargs)


def _default_torch_module(module: nn.Module) -> bool:
    """Whether torch's module class, built without arguments, is this module (nn.Sigmoid()):
    the same settings, compared attribute by attribute (a repr leaves some out)."""
    if not type(module).__module__.startswith("torch.nn."):
        return False

    def settings(m: nn.Module) -> dict[str, object]:
        return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}

    if next(module.children(), None) is not None:  # a container: its class alone is empty
        return False
    try:
        with torch.random.fork_rng():  # a saved model leaves the random state as it was
            return settings(type(module)()) == settings(module)
    except (TypeError, RuntimeError):  # its constructor needs arguments; a tensor setting
        return False


def _decode(value: object, path: Path, allowed: tuple[type, ...]) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(v, path, allowed) for v in value]
    if isinstance(value, dict) and list(value) == ["__tuple__"]:
        return tuple(_decode(v, path, allowed) for v in value["__tuple__"])
    if isinstance(value, dict) and list(value) == ["__dict__"]:
        return {str(k): _decode(v, path, allowed) for k, v in dict(value["__dict__"]).items()}
    if isinstance(value, dict) and list(value) == ["__module__"]:
        spec = dict(value["__module__"])
        cls = _find_class(path, str(spec["class"]), allowed, nn.Module)
        if not (issubclass(cls, Rebuildable) or cls.__module__.startswith("torch.nn.")):
            raise LoadError(f"{path} names {cls.__qualname__}, which save never writes.")
        return _build(cls, spec, path, allowed)
    raise ValueError(f"not an encoded argument: {value!r}")


def _find_class(
    path: Path, name: str, allowed: tuple[type, ...], base: type[nn.Module] = Model
) -> type[nn.Module]:
    """The class a file names: one of `allowed` (by module and name, else by name alone), or
    ppgen's own (or, for module arguments, torch.nn's); no other module's class is built."""
    module_name, _, qualname = name.partition(":")
    if not module_name or not qualname:
        raise LoadError(f"{path} names no model class ({name!r}).")
    given = [c for c in allowed if f"{c.__module__}:{c.__qualname__}" == name] or [
        c for c in allowed if c.__qualname__ == qualname
    ]
    if len(given) == 1:
        cls: object = given[0]
    elif _own(module_name) or (base is not Model and module_name.startswith("torch.nn.")):
        cls = _own_class(module_name, qualname)
    else:
        raise LoadError(
            f"{path} holds a {qualname} from module {module_name!r}, which load builds only when "
            f"named: pass classes=[{qualname}] (a file never chooses the code that runs)."
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        what = "a ppgen.Model" if base is Model else "an nn.Module"
        raise LoadError(f"{path} names {name!r}, which is not {what} class.")
    return cls


def _own(module_name: str) -> bool:
    return module_name == "ppgen" or module_name.startswith("ppgen.")


def _own_class(module_name: str, qualname: str) -> object:
    """A class of ppgen's (or torch.nn's) modules, found without running anything but imports
    of ppgen's own modules."""
    module = sys.modules.get(module_name)
    if module is None and _own(module_name):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
    cls: object = module
    for part in qualname.split("."):  # static: a module's __getattr__ could import others
        cls = inspect.getattr_static(cls, part, None)
    return cls


def _write(path: Path, tensors: Mapping[str, Tensor], description: dict[str, object]) -> Path:
    """Writes tensors and a description as one safetensors file, atomically."""
    if not path.parent.is_dir():
        raise ValueError(
            f"The folder {path.parent} does not exist; create it to write {path.name}."
        )
    text = json.dumps(description, sort_keys=True)
    # independent, contiguous CPU copies: safetensors refuses tensors that share memory
    plain = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    raw = safetensors.torch.save(plain, metadata={"format": "ppgen", "ppgen": text})
    (size,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + size]), raw[8 + size :]
    header["__metadata__"]["sha256"] = _digest(header, text, data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    content = struct.pack("<Q", len(encoded)) + encoded + data
    return _replace(path, content)


def _replace(path: Path, content: bytes) -> Path:
    """Writes `content` to a temporary file beside `path`, created exclusively (never an
    existing file, nor a link planted at its name), and renames it over `path` (a link there
    is replaced, not followed); temporary files of killed writes are removed first."""
    _sweep(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            temporary.unlink()
    return path


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _sweep(path: Path) -> None:
    """Removes the temporary files that killed saves of `path` left beside it: regular files
    named as :func:`_write` names them, of a process that no longer runs."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)(\.[0-9a-f]+)?\.tmp")
    for entry in path.parent.iterdir():
        found = pattern.fullmatch(entry.name)
        if found is None or int(found[1]) == os.getpid() or _running(int(found[1])):
            continue
        with contextlib.suppress(OSError):  # a file another process removes meanwhile
            if stat.S_ISREG(entry.lstat().st_mode):
                entry.unlink()


def _running(pid: int) -> bool:
    """Whether a process of that id runs (one of another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _digest(header: dict[str, object], text: str, data: bytes) -> str:
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    digest = hashlib.sha256(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0" + text.encode() + b"\0")
    digest.update(data)
    return digest.hexdigest()


def _read(path: Path, kind: str) -> tuple[dict[str, object], dict[str, Tensor]]:
    """Reads and checks a file written by :func:`_write`; any problem is a :class:`LoadError`."""
    content = _content(path)
    if len(content) < 8:
        raise LoadError(f"{path} is not a ppgen file: it is {len(content)} bytes long.")
    (size,) = struct.unpack("<Q", content[:8])
    if size > min(_MAX_HEADER, len(content) - 8):
        raise LoadError(f"{path} is not a ppgen file (no safetensors header), or is truncated.")
    try:
        header = json.loads(content[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise LoadError(f"{path} is not a ppgen file: its header is not JSON.") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != "ppgen":
        raise LoadError(f"{path} is not a ppgen file: its header has no ppgen description.")
    text = metadata.get("ppgen")
    try:
        description = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        description = None
    if not isinstance(description, dict):
        raise LoadError(f"{path} is corrupt: its description is not a JSON object.")
    version = description.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LoadError(f"{path} is corrupt: it gives no format version.")
    if version > FORMAT_VERSION:
        raise LoadError(
            f"{path} has format version {version}, newer than this ppgen reads "
            f"({FORMAT_VERSION}); upgrade ppgen to load it."
        )
    if metadata.get("sha256") != _digest(header, text, content[8 + size :]):
        raise LoadError(f"{path} is corrupt or truncated: its checksum does not match.")
    if description.get("kind") != kind:
        raise LoadError(f"{path} is a ppgen {description.get('kind')}, not a {kind}.")
    for name, entry in header.items():
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if name != "__metadata__" and dtype not in _DTYPES:
            raise LoadError(
                f"{path} holds tensor {name!r} of dtype {dtype}, which ppgen never saves (it "
                f"saves {', '.join(sorted(_DTYPES))})."
            )
    try:
        tensors = safetensors.torch.load(content)
    except Exception as error:  # safetensors' own error type is not exported
        raise LoadError(f"{path} is corrupt: {error}.") from None
    return description, tensors


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike[str]) -> Iterator[Path]:
    r"""Holds `folder` for one process: a lock file, created exclusively, holds its id while
    the block runs; a lock left by a process that no longer runs is taken over.

    Raises:
        ValueError: Naming the folder and the process, when a running process holds it.

    Example:
        >>> import tempfile
        >>> with exclusive(tempfile.mkdtemp()) as lock:
        ...     lock.name
        '.ppgen.lock'
    """
    lock = Path(folder) / ".ppgen.lock"
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
            break
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and _running(holder):
                raise ValueError(
                    f"{folder} is in use by another fit (process {holder}); wait for it to end "
                    "or choose another folder."
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # a dead process's lock (unlink removes a link, never its target)
    else:
        raise ValueError(f"{folder} is in use by another fit; choose another folder.")
    with os.fdopen(descriptor, "w") as file:
        file.write(str(os.getpid()))
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _holder(lock: Path) -> int | None:
    """The process id a lock file holds, if it is a small regular file that holds one."""
    try:
        if not stat.S_ISREG(lock.lstat().st_mode) or lock.lstat().st_size > 32:
            return None
        return int(lock.read_text())
    except (OSError, ValueError):
        return None


# the dtypes of the tensors ppgen saves: its models' floats, integer buffers and masks, the RNG
_DTYPES = {"F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}


def _content(path: Path) -> bytes:
    """The bytes of a regular file (not a device, FIFO or folder, which could block or never
    end), read no further than the size it had when opened."""
    try:  # non-blocking: opening a FIFO would wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise LoadError(f"{path} cannot be read: {error.strerror or error}.") from None
    mode = os.fstat(descriptor)
    if not stat.S_ISREG(mode.st_mode):
        os.close(descriptor)
        raise LoadError(f"{path} is not a regular file (a folder, device or FIFO); load reads files.")
    with os.fdopen(descriptor, "rb") as file:
        try:
            return file.read(mode.st_size)
        except OSError as error:
            raise LoadError(f"{path} cannot be read: {error.strerror or error}.") from None


def save_checkpoint(path: Path, tensors: Mapping[str, Tensor], description: dict[str, object]) -> None:
    """Writes a training checkpoint (see :func:`ppgen.loop.train`) atomically: its tensors, and
    its JSON `description` beside the kind and format version."""
    _write(path, tensors, {"kind": "checkpoint", "format_version": FORMAT_VERSION, **description})


def load_checkpoint(path: Path) -> tuple[dict[str, object], dict[str, Tensor]]:
    """Reads a checkpoint written by :func:`save_checkpoint`, checked as :func:`load` checks a
    model's file: its description and tensors; nothing is changed."""
    return _read(path, "checkpoint")
