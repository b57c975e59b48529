import json
import pickle
import re
import struct

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.io import FORMAT_VERSION, LoadError, describe, load, save
from ppgen.models import MADE, NADE, VAE
from ppgen.nn import Conditional, Root


class Scaled(ppgen.Model):
    """A user's model with its own constructor arguments."""

    def __init__(self, width: int, *, hidden=(4,), labels=None):
        super().__init__()
        self.labels = labels
        self.x = Root(dist.Normal)
        self.y = Conditional(dist.Normal, in_features=1, hidden=hidden)
        self.width = width

    def forward(self, n=1):
        with pyro.plate("rows", n):
            x = pyro.sample("x", self.x())
            pyro.sample("y", self.y(x))


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def test_dag_round_trip_is_bit_exact(tmp_path):
    model = ppgen.dag(
        [("a", "b"), ("b", "c"), ("a", "d")],
        kinds={"a": "bernoulli", "b": "categorical", "c": "normal", "d": "tabular"},
        cardinalities={"b": 3, "d": 4},
        hidden=(5,),
    )
    rows = ppgen.sample(model, 50)
    fit = ppgen.fit_mle(model, rows, epochs=2, progress=False)
    path = save(model, tmp_path / "m.safetensors", fit=fit)
    loaded = load(path)
    assert type(loaded) is type(model) and _same_state(model, loaded)
    assert torch.equal(ppgen.log_prob(loaded, rows), ppgen.log_prob(model, rows))
    info = describe(path)
    assert info["format_version"] == FORMAT_VERSION
    assert info["class"] == "ppgen.builder:DAG"
    assert sorted(map(tuple, info["graph"]["edges"])) == sorted(ppgen.graph(model).edges)
    assert info["fit"]["history"] == fit.history


def test_made_buffers_round_trip(tmp_path):
    made = MADE(5, hidden_features=(12,), order=[4, 2, 0, 1, 3])
    made.resample()  # masks and order differ from those the constructor makes
    loaded = load(save(made, tmp_path / "made.safetensors"))
    assert _same_state(made, loaded)
    x = torch.bernoulli(torch.full((7, 5), 0.5))
    assert torch.equal(ppgen.log_prob(loaded, {"x": x}), ppgen.log_prob(made, {"x": x}))


def test_vae_nade_and_user_models_round_trip(tmp_path):
    for i, model in enumerate([VAE(6, 2, hidden=(4,)), NADE(4, hidden_features=3)]):
        assert _same_state(model, load(save(model, tmp_path / f"{i}.safetensors")))
    user = Scaled(3, hidden=(2,), labels={"a": [1, (2, 3)]})
    loaded = load(save(user, tmp_path / "user.safetensors"), classes=[Scaled])
    assert isinstance(loaded, Scaled) and _same_state(user, loaded)
    assert loaded.labels == {"a": [1, (2, 3)]} and loaded.width == 3


def test_float32_model_round_trips_in_float32(tmp_path):
    model = ppgen.dag([("a", "b")], hidden=(3,)).float()
    loaded = load(save(model, tmp_path / "m.safetensors"))
    assert loaded.conditionals[1].net[0].weight.dtype == torch.float32
    assert _same_state(model, loaded)


def test_non_json_argument_is_named_and_nothing_written(tmp_path):
    model = Scaled(3, labels=torch.zeros(2))
    with pytest.raises(ValueError, match=r"argument 'labels' of Scaled is a Tensor"):
        save(model, tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


def test_numpy_numbers_are_saved_as_json_numbers(tmp_path):
    model = ppgen.dag([("a", "b")], kinds={"a": "categorical"}, cardinalities={"a": np.int64(3)},
                      hidden=(np.int64(4),))  # fmt: skip
    loaded = load(save(model, tmp_path / "m.safetensors"))
    assert describe(tmp_path / "m.safetensors")["args"][3] == {"__dict__": {"a": 3}}
    assert _same_state(model, loaded) and loaded.cardinalities == {"a": 3}


def test_save_into_a_missing_folder_names_it(tmp_path):
    folder = tmp_path / "missing"
    message = f"The folder {folder} does not exist; create it to write m.safetensors."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        save(ppgen.dag([("a", "b")], hidden=(2,)), folder / "m.safetensors")
    assert not list(tmp_path.iterdir())


def test_save_replaces_atomically_and_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save(ppgen.dag([("a", "b")], hidden=(2,)), path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ppgen.io.os.replace", fail)
    with pytest.raises(KeyboardInterrupt):
        save(ppgen.dag([("a", "c")], hidden=(3,)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _saved(tmp_path) -> bytes:
    return save(ppgen.dag([("a", "b")], hidden=(3,)), tmp_path / "m.safetensors").read_bytes()


def test_truncated_corrupt_foreign_and_newer_files_are_rejected(tmp_path):
    good = _saved(tmp_path)
    path = tmp_path / "bad.safetensors"
    (size,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + size])
    newer = dict(header)
    newer["__metadata__"] = dict(header["__metadata__"])
    description = json.loads(newer["__metadata__"]["ppgen"])
    description["format_version"] = FORMAT_VERSION + 1
    newer["__metadata__"]["ppgen"] = json.dumps(description)
    encoded = json.dumps(newer).encode()
    cases = {
        "truncated": (good[:-5], "corrupt or truncated"),
        "empty": (b"", "0 bytes long"),
        "flipped": (good[:-3] + bytes([good[-3] ^ 1]) + good[-2:], "checksum"),
        "pickle": (pickle.dumps({"w": [1.0]}), "not a ppgen file"),
        "text": (b'{"hello": "world"}' * 3, "not a ppgen file"),
        "newer": (struct.pack("<Q", len(encoded)) + encoded + good[8 + size :], "upgrade ppgen"),
    }
    for name, (content, message) in cases.items():
        path.write_bytes(content)
        with pytest.raises(LoadError, match=message) as info:
            load(path)
        assert str(path) in str(info.value), name
        assert path.read_bytes() == content


def test_torch_save_file_is_rejected_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    torch.save(ppgen.dag([("a", "b")]).state_dict(), path)
    monkeypatch.setattr(pickle, "loads", None)  # any unpickling would fail differently
    with pytest.raises(LoadError, match="not a ppgen file"):
        load(path)


def test_missing_file_and_unimportable_class(tmp_path):
    with pytest.raises(LoadError, match="cannot be read"):
        load(tmp_path / "nothing.safetensors")
    path = save(Scaled(2), tmp_path / "user.safetensors")
    cases = {
        "__main__:Other": r"Other from module '__main__', which load builds only when named",
        "no_such_module:Other": r"pass classes=\[Other\] \(a file never chooses the code",
        "os:path": "builds only when named",
        "ppgen.io:LoadError": "not a ppgen.Model class",
        "nothing": "names no model class",
    }
    for name, message in cases.items():
        _forge(path, {"class": name})
        with pytest.raises(LoadError, match=message):
            load(path, classes=[Scaled])
    _forge(path, {"class": "__main__:Scaled"})  # a class defined in a notebook, named by the caller
    assert isinstance(load(path, classes=[Scaled]), Scaled)


def _forge(path, changes: dict) -> None:
    """Rewrites the description of a saved file with a valid checksum, as a forger would."""
    from ppgen.io import _digest

    content = path.read_bytes()
    (size,) = struct.unpack("<Q", content[:8])
    header = json.loads(content[8 : 8 + size])
    description = {**json.loads(header["__metadata__"]["ppgen"]), **changes}
    text = header["__metadata__"]["ppgen"] = json.dumps(description)
    data = content[8 + size :]
    header["__metadata__"]["sha256"] = _digest(header, text, data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_forged_arguments_are_rejected_cleanly(tmp_path):
    path = save(ppgen.dag([("a", "b")], hidden=(3,)), tmp_path / "m.safetensors")
    for changes in ({"args": [1, 2]}, {"kwargs": {"x": {"__set__": 1}}}, {"args": "no"}):
        _forge(path, changes)
        with pytest.raises(LoadError, match=str(path)):
            load(path)


def test_fuzzed_files_raise_only_load_error(tmp_path):
    good = _saved(tmp_path)
    path = tmp_path / "fuzz.safetensors"
    generator = torch.Generator().manual_seed(0)
    accepted = 0
    for trial in range(200):
        content = bytearray(good)
        kind = trial % 4
        if kind == 0:  # truncate anywhere
            content = content[: int(torch.randint(len(good), (), generator=generator))]
        elif kind == 1:  # flip a few bytes anywhere
            for i in torch.randint(len(good), (3,), generator=generator).tolist():
                content[i] ^= 1 << int(torch.randint(8, (), generator=generator))
        elif kind == 2:  # overwrite part of the header with noise
            i = int(torch.randint(8, 200, (), generator=generator))
            content[i : i + 8] = bytes(torch.randint(256, (8,), generator=generator).tolist())
        else:  # a plausible header length with garbage after it
            content[:8] = struct.pack("<Q", int(torch.randint(len(good), (), generator=generator)))
        path.write_bytes(bytes(content))
        try:
            load(path)
            accepted += 1
        except LoadError:
            pass
    assert accepted == 0


class NoInit(ppgen.Model):
    def forward(self, n=1):
        with pyro.plate("rows", n):
            pyro.sample("x", dist.Normal(0.0, 1.0))


def test_model_without_constructor_and_non_model(tmp_path):
    assert isinstance(load(save(NoInit(), tmp_path / "m.safetensors"), classes=[NoInit]), NoInit)
    with pytest.raises(ValueError, match="save needs a ppgen.Model"):
        save(torch.nn.Linear(2, 3), tmp_path / "l.safetensors")


def test_gan_round_trips_with_its_players(tmp_path):
    """A GAN's players are saved by their classes and arguments, nested (the output module of
    the generator too), and rebuilt with the same weights: the same samples from the same
    codes; a module ppgen cannot rebuild is named, and a forged player class is refused."""
    from ppgen.models.gan import (
        GAN,
        ConvDiscriminator,
        ConvGenerator,
        MLPDiscriminator,
        MLPGenerator,
        StraightThroughBernoulli,
    )

    players = {
        "mlp": (MLPGenerator(3, 5, hidden_features=(7,), output=torch.nn.Sigmoid()),
                MLPDiscriminator(5, hidden_features=(6, 4))),
        "conv": (ConvGenerator(3, channels=8, output=StraightThroughBernoulli()),
                 ConvDiscriminator(channels=8)),
    }  # fmt: skip
    for name, (generator, discriminator) in players.items():
        gan = GAN(generator, discriminator, 3, loss="minimax")
        path = save(gan, tmp_path / f"{name}.safetensors")
        state = torch.get_rng_state()
        loaded = load(path)
        assert torch.equal(torch.get_rng_state(), state)  # the players' inits are forked off
        assert _same_state(loaded, gan) and loaded.loss == "minimax"
        assert type(loaded.generator.output) is type(generator.output)
        pyro.set_rng_seed(0)
        expected = gan.sample(4)
        pyro.set_rng_seed(0)
        assert torch.equal(loaded.sample(4), expected)
    leaky = GAN(MLPGenerator(3, 5, output=torch.nn.LeakyReLU(0.1)), MLPDiscriminator(5), 3)
    message = r"'output' of MLPGenerator \(argument 'generator' of GAN\) is a LeakyReLU module"
    with pytest.raises(ValueError, match=message):
        save(leaky, tmp_path / "leaky.safetensors")
    assert not (tmp_path / "leaky.safetensors").exists()
    _forge(path, {"args": [{"__module__": {"class": "os:system", "args": ["true"],
                                           "kwargs": {}}}]})  # fmt: skip
    with pytest.raises(LoadError, match="system from module 'os', which load builds only when"):
        load(path)
    module = {"class": "torch.utils.data:Dataset", "args": [], "kwargs": {}}  # not a module
    _forge(path, {"args": [{"__module__": module}]})
    with pytest.raises(LoadError, match="which load builds only when named"):
        load(path)
    module["class"] = "ppgen.io:LoadError"
    _forge(path, {"args": [{"__module__": module}]})
    with pytest.raises(LoadError, match="which is not an nn.Module class"):
        load(path)
    module["class"] = "ppgen.models.autoregressive:MaskedConv2d"  # a module save never writes
    _forge(path, {"args": [{"__module__": module}]})
    with pytest.raises(LoadError, match="names MaskedConv2d, which save never writes"):
        load(path)


class _Wrap(ppgen.Model):
    """A model holding any module, to save modules of every kind."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner


class _Lin(ppgen.nn.Rebuildable, torch.nn.Linear):
    """A rebuildable module that inherits its constructor."""


def test_module_arguments_keep_their_settings_classes_and_dtypes(tmp_path):
    """Torch modules whose repr hides a setting are refused rather than saved as the default;
    a Rebuildable that inherits its constructor records its arguments; each tensor comes back
    in its own dtype."""
    for hidden in (torch.nn.CosineSimilarity(dim=0), torch.nn.MSELoss(reduction="sum")):
        with pytest.raises(ValueError, match="which ppgen cannot rebuild"):
            save(_Wrap(hidden), tmp_path / "hidden.safetensors")
    default = load(save(_Wrap(torch.nn.CosineSimilarity()), tmp_path / "c.safetensors"),
                   classes=[_Wrap]).inner
    assert type(default) is torch.nn.CosineSimilarity and default.dim == 1
    linear = _Wrap(_Lin(2, 3))
    assert linear.inner.init_arguments == ((2, 3, True, None, None), {})
    mixed = _Wrap(torch.nn.ModuleList([_Lin(2, 3).double(), _Lin(3, 1)]))
    with pytest.raises(ValueError, match="ModuleList module, which ppgen cannot rebuild"):
        save(mixed, tmp_path / "list.safetensors")
    from ppgen.models.gan import GAN, MLPDiscriminator, MLPGenerator

    generator = MLPGenerator(2, 3, hidden_features=(4,)).float()
    mixed = GAN(generator, MLPDiscriminator(3).double(), 2)
    loaded = load(save(mixed, tmp_path / "mixed.safetensors"))
    assert next(loaded.generator.parameters()).dtype == torch.float32
    assert next(loaded.discriminator.parameters()).dtype == torch.float64
    assert _same_state(loaded, mixed)


def test_a_forged_class_name_imports_nothing(tmp_path):
    """torch's module `__getattr__` imports its lazy submodules (torch.onnx): a class named
    through one is looked up statically, in a fresh process where none is imported yet."""
    import subprocess
    import sys

    path = save(ppgen.dag([("a", "b")], hidden=(3,)), tmp_path / "m.safetensors")
    _forge(path, {"class": "torch:onnx.Nothing"})
    script = (
        "import sys, ppgen\n"
        "assert 'torch.onnx' not in sys.modules\n"
        f"try:\n    ppgen.load({str(path)!r})\nexcept ppgen.io.LoadError as e:\n    print(e)\n"
        "print('torch.onnx' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    message, imported = run.stdout.strip().splitlines()
    assert str(path) in message and imported == "False"


class _Widening(ppgen.Model):
    def __init__(self, widths, options):
        super().__init__()
        widths.append(1)  # the constructor changes the list and the dict it was given
        options["hidden"] = (2,)
        self.net = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in
                                         zip(widths, widths[1:], strict=False)))  # fmt: skip

    def forward(self, n=1):
        pass


def test_arguments_are_recorded_as_given_though_the_constructor_changes_them(tmp_path):
    model = _Widening([3, 4], {})
    assert model.init_arguments == (([3, 4], {}), {})
    loaded = ppgen.load(ppgen.save(model, tmp_path / "w.safetensors"), classes=[_Widening])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))  # fmt: skip


class _Activated(ppgen.Model):
    def __init__(self, width=2, act=torch.nn.Tanh):  # a class as a default: no JSON value
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, width), act())

    def forward(self, n=1):
        pass


def test_a_positional_argument_is_named_in_errors_and_load_takes_auto(tmp_path):
    with pytest.raises(ValueError, match="The argument 'act' of _Activated is a type"):
        ppgen.save(_Activated(), tmp_path / "a.safetensors")
    model = ppgen.dag([("a", "b")], hidden=(3,))
    loaded = ppgen.load(ppgen.save(model, tmp_path / "m.safetensors"), device="auto")
    assert next(loaded.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' needs a CUDA GPU"):
            ppgen.load(tmp_path / "m.safetensors", device="cuda")


def test_saved_categories_code_the_same_labels_after_loading(tmp_path):
    import pandas as pd

    model = ppgen.dag([("a", "b")], kinds={"a": "tabular"}, cardinalities={"a": 3})
    frame = pd.DataFrame({"a": pd.Categorical([10, 20, 20, 10, 30, 10] * 5),
                          "b": torch.randn(30).numpy()})  # fmt: skip
    fit = ppgen.fit_mle(model, frame, progress=False)
    path = ppgen.save(model, tmp_path / "m.safetensors", fit=fit)
    categories = ppgen.io.describe(path)["fit"]["categories"]
    assert categories == {"a": [10, 20, 30]}  # numbers stay numbers
    expected = ppgen.log_prob(model, frame, categories=fit.categories)
    assert torch.equal(ppgen.log_prob(ppgen.load(path), frame, categories=categories), expected)
