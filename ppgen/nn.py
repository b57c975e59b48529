r"""Conditional modules: each maps the values of a node's parents to a Pyro distribution.

A node :math:`x` of a directed graphical model has a conditional :math:`p(x \mid \eta)` whose
parameters :math:`\eta` are computed from its parents, :math:`\eta = f(\mathrm{Pa}(x))`. The modules
below are that :math:`f`, together with the map from unconstrained :math:`\eta` to valid
distribution parameters (softplus for scales, logits for probabilities). Parents are passed as
tensors with rows first, :math:`(N, *)`; the returned distribution is batched over the rows.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints, transform_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    SoftplusTransform,
    Transform,
)
from torch.distributions.utils import lazy_property

from ppgen.model import Model, Rebuildable  # their home; imported from here before
from ppgen.tracing import LEAN, record_call, recording_calls

__all__ = [
    "Conditional",
    "LinearGaussian",
    "MixtureOfGaussians",
    "Model",
    "Node",
    "Rebuildable",
    "Root",
    "Tabular",
    "check_table",
    "gaussian_mixture",
    "mlp",
    "recording_calls",
]

class Node(nn.Module):
    r"""Base class of the conditionals: `forward(*parents)` returns a distribution.

    Subclasses implement `distribution(*parents)`. While :func:`recording_calls` is active,
    every call is recorded with its inputs, so that ppgen can tell which module and which
    parent values produced a sample site's distribution.
    """

    def distribution(self, *parents: Tensor) -> dist.Distribution:
        raise NotImplementedError

    def log_prob(self, value: Tensor, *parents: Tensor) -> Tensor:
        r"""The log-density :math:`\log p(x \mid \mathrm{Pa}(x))` of `value` given its parents."""
        return self.distribution(*parents).log_prob(value)

    def forward(self, *parents: Tensor) -> dist.Distribution:
        d = self.distribution(*parents)
        record_call(self, parents, d)
        return d

    @property
    def n_params(self) -> int:
        """The number of free parameters of this conditional."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class _Head:
    """Maps a flat unconstrained vector η of shape (*, size) to a distribution of a family.

    A vector of logits has k - 1 entries in η, the last category's logit fixed at 0 (a
    network's outputs); with `reference=False`, all k (a root's: see :class:`Root`).
    """

    def __init__(
        self,
        family: type[dist.Distribution],
        cardinality: int | None,
        event_shape: Sequence[int],
        fixed: dict[str, object],
        reference: bool = True,
    ) -> None:
        self.family, self.cardinality, self.fixed = family, cardinality, fixed
        self.reference = reference
        self.event_shape = tuple(event_shape)
        # a property, not a dict, where the constraints depend on the values (e.g. Uniform)
        arg_constraints = vars(family).get("arg_constraints", family.arg_constraints)
        if not hasattr(arg_constraints, "items"):
            raise ValueError(f"{family.__name__} has no fixed parameter constraints to learn.")
        names = [n for n in arg_constraints if n not in fixed]
        if "logits" in names and "probs" in names:
            names.remove("probs")
        self.params: list[tuple[str, tuple[int, ...], Transform, bool]] = []
        for name in names:
            constraint = arg_constraints[name]
            if constraint.is_discrete:
                raise ValueError(
                    f"{family.__name__}'s parameter '{name}' is discrete: give it as a fixed "
                    f"keyword, e.g. {name}=..."
                )
            vector = constraint.event_dim == 1
            if vector and name != "logits":
                raise ValueError(f"{family.__name__}'s parameter '{name}' cannot be learned here.")
            if vector and (cardinality is None or cardinality < 2):
                raise ValueError(f"{family.__name__} needs cardinality=k (k >= 2).")
            logits = (cardinality - 1 if reference else cardinality,) if vector else ()
            shape = self.event_shape + logits
            self.params.append((name, shape, _transform(constraint), vector))
        self.sizes = [math.prod(shape) for _, shape, _, _ in self.params]
        self.size = sum(self.sizes)
        # the free entries: without a reference, one logit a vector is redundant
        self.free = [
            size - (math.prod(shape[:-1]) if vector and not reference else 0)
            for (_, shape, _, vector), size in zip(self.params, self.sizes, strict=True)
        ]
        self.scalar = all(shape == () for _, shape, _, _ in self.params)  # one column each
        self._constant = not any(isinstance(value, Tensor) for value in fixed.values())
        self._cache: dict[tuple[torch.dtype, torch.device, torch.Size], dist.Distribution] = {}

    def initial(self) -> Tensor:
        """An η whose parameters are the family's plain defaults (0 for reals, 1 for scales)."""
        parts = [
            torch.full((size,), _INV_SOFTPLUS_ONE if isinstance(t, SoftplusTransform) else 0.0)
            for (_, _, t, _), size in zip(self.params, self.sizes, strict=True)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)

    def __call__(self, eta: Tensor) -> dist.Distribution:
        batch = eta.shape[:-1]
        if not self.params:  # fixed numbers: a constant, built once per dtype, device and batch
            key = (eta.dtype, eta.device, batch)
            d = self._cache.get(key)
            if d is None:
                d = self.family(**self._fixed(eta), validate_args=LEAN)
                d = d.expand(batch + self.event_shape)
                d = d.to_event(len(self.event_shape)) if self.event_shape else d
                if self._constant and not torch.is_inference_mode_enabled():
                    self._cache[key] = d  # (inference tensors, autograd may not save)
            return d
        kwargs = self._fixed(eta)
        if self.scalar:  # one view per parameter, without a split and reshapes to undo
            parts = eta.unbind(-1)
        else:  # one parameter needs no split, and a part of its shape no reshape
            parts = (eta,) if len(self.params) == 1 else eta.split(self.sizes, dim=-1)
            parts = [
                part if part.shape == batch + shape else part.reshape(batch + shape)
                for part, (_, shape, _, _) in zip(parts, self.params, strict=True)
            ]
        for (name, _, transform, vector), part in zip(self.params, parts, strict=True):
            value = transform(part)
            if vector and self.reference:  # the last category's logit is fixed at 0
                value = F.pad(value, (0, 1))
            kwargs[name] = value
        d = self.family(**kwargs, validate_args=LEAN)
        return d.to_event(len(self.event_shape)) if self.event_shape else d

    def _fixed(self, eta: Tensor) -> dict[str, object]:
        """The fixed parameters, numbers made tensors of η's dtype and device."""
        return {
            name: torch.as_tensor(value, dtype=eta.dtype, device=eta.device)
            if isinstance(value, float)
            else value
            for name, value in self.fixed.items()
        }


_INV_SOFTPLUS_ONE = math.log(math.expm1(1.0))


def _transform(constraint: constraints.Constraint) -> Transform:
    """Softplus for positive parameters (gentler than exp for networks), else torch's own."""
    if isinstance(constraint, constraints.greater_than | constraints.greater_than_eq):
        lower = constraint.lower_bound
        if lower == 0:
            return SoftplusTransform()
        return ComposeTransform([SoftplusTransform(), AffineTransform(lower, 1.0)])
    return transform_to(constraint)


def features(
    parents: Sequence[Tensor],
    cardinalities: Sequence[int | None],
    dtype: torch.dtype,
    width: int | None = None,
) -> Tensor:
    r"""Concatenates parent values into features of shape :math:`(*, F)`.

    A parent with a cardinality is one-hot encoded; any other is cast to float. With `width`
    (:math:`F`, the network's input width), the parents broadcast against each other as torch
    broadcasts, so that a parent with extra leading dimensions (an enumerated one) or a size-1
    dimension meets the others: each parent is one value per element where that makes
    :math:`F` features, else the last dimension of a parent whose last dimension is larger
    than 1 holds its features. Otherwise (and without `width`) the rows are the first
    dimension, :math:`(N, *)`, and each parent's other dimensions are flattened into features.

    Example:
        >>> features([torch.tensor([0, 2]), torch.ones(2, 3)], [3, None], torch.float).shape
        torch.Size([2, 6])
        >>> features([torch.zeros(2, 1), torch.ones(5)], [None, None], torch.float, 2).shape
        torch.Size([2, 5, 2])
    """
    cards = list(cardinalities)
    if width == len(parents) and all(k is None for k in cards):  # scalar parents: one op
        if any(p.shape != parents[0].shape for p in parents):
            parents = torch.broadcast_tensors(*parents)
        return torch.stack(parents, dim=-1).to(dtype)
    vector = _vector_parents(parents, cards, width)
    if vector is not None:
        return _broadcast_features(parents, cards, dtype, vector)
    if len(parents) == 1 and cards == [None] and parents[0].dim() == 2:
        return parents[0].to(dtype)  # already (N, F): no copy, no step in the autograd graph
    columns = []
    for value, k in zip(parents, cards, strict=True):
        value = value.reshape(-1) if value.dim() == 0 else value
        if k is not None:
            value = F.one_hot(value.long(), k)
        columns.append(value.reshape(value.shape[0], -1))
    return torch.cat([c.to(dtype) for c in columns], dim=-1)


def _vector_parents(
    parents: Sequence[Tensor], cards: list[int | None], width: int | None
) -> list[bool] | None:
    """Which parents hold their features in their last dimension, where the parents broadcast
    to `width` features one way or the other (see :func:`features`); `None` where not."""
    if width is None or not parents:
        return None
    if sum(1 if k is None else k for k in cards) == width:  # one value per element each
        return [False] * len(parents)
    pairs = list(zip(parents, cards, strict=True))
    vector = [k is None and p.dim() >= 2 and p.shape[-1] > 1 for p, k in pairs]
    widths = [p.shape[-1] if v else k or 1 for (p, k), v in zip(pairs, vector, strict=True)]
    return vector if any(vector) and sum(widths) == width else None


def _broadcast_features(
    parents: Sequence[Tensor], cards: list[int | None], dtype: torch.dtype, vector: list[bool]
) -> Tensor:
    """The parents' features over their broadcast batch shape (vector parents' last dimension
    being their features), concatenated."""
    batches = [p.shape[:-1] if v else p.shape for p, v in zip(parents, vector, strict=True)]
    if len(parents) == 1 and vector[0]:
        return parents[0].to(dtype)  # already (*, F): no copy, no step in the autograd graph
    same = all(b == batches[0] for b in batches)
    batch = batches[0] if same else torch.broadcast_shapes(*batches)
    columns = []
    for value, k, v in zip(parents, cards, vector, strict=True):
        column = F.one_hot(value.long(), k) if k is not None else value if v else value[..., None]
        columns.append(column if same else column.expand(*batch, column.shape[-1]))
    return torch.cat([c.to(dtype) for c in columns], dim=-1)


def mlp(widths: Sequence[int], activation: Callable[[], nn.Module] = nn.Tanh) -> nn.Sequential:
    r"""Linear layers of the given widths, `activation` between them (none after the last).

    Unlike Pyro's `DenseNN`, it takes no hidden layer too (`widths` of length 2: one linear map).

    Example:
        >>> mlp([3, 8, 2], nn.ReLU)
        Sequential(
          (0): Linear(in_features=3, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=2, bias=True)
        )
    """
    widths = list(widths)
    if any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in widths):
        raise ValueError(f"Layer widths must be positive whole numbers, not {widths}.")
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


class Root(Node):
    r"""A node without parents: its parameters :math:`\eta` are learned directly.

    A categorical root keeps a logit for each of its :math:`k` categories (:math:`k - 1` are
    free: adding a constant to all changes nothing), so that, as in a :class:`Tabular`, a
    category of probability 0 has the logit :math:`-\infty`: the maximum-likelihood logits
    of :func:`ppgen.fit_mle` are the log-frequencies, :math:`-\infty` for a category the data
    never show. A Bernoulli root's probability of 0 or 1 has the logit :math:`\mp 1000`
    instead: torch's Bernoulli has no log-density at an infinite logit, and at :math:`\pm 1000`
    it is certain in every float dtype (the impossible value's log-density is -1000).

    Arguments:
        family: A Pyro distribution class, e.g. `dist.Normal`, `dist.Bernoulli`.
        cardinality: The number of categories, for `dist.Categorical`.
        event_shape: The shape of one value, for vector-valued sites.
        fixed: Parameters held fixed rather than learned, e.g. `scale=1.0`.

    Example:
        >>> Root(dist.Normal)()
        Normal(loc: 0.0, scale: 1.0)
        >>> Root(dist.Categorical, cardinality=3).n_params
        2
        >>> Root(dist.Normal, event_shape=(2,), loc=0.0, scale=1.0)().event_shape
        torch.Size([2])
    """

    def __init__(
        self,
        family: type[dist.Distribution],
        *,
        cardinality: int | None = None,
        event_shape: Sequence[int] = (),
        **fixed: object,
    ) -> None:
        super().__init__()
        self.head = _Head(family, cardinality, event_shape, fixed, reference=False)
        self.eta = nn.Parameter(self.head.initial())

    def distribution(self) -> dist.Distribution:
        return self.head(self.eta)

    @property
    def n_params(self) -> int:
        return sum(self.head.free) if self.eta.requires_grad else 0

    def _load_from_state_dict(
        self, state_dict: dict[str, Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        # files saved by earlier ppgen hold k - 1 logits a vector, the last category's 0 implied
        eta = state_dict.get(f"{prefix}eta")
        if eta is not None and eta.shape == (sum(self.head.free),) != self.eta.shape:
            saved = zip(eta.split(self.head.free), self.head.params, strict=True)
            parts = [
                F.pad(part.reshape(*shape[:-1], -1), (0, 1)).reshape(-1) if vector else part
                for part, (_, shape, _, vector) in saved
            ]
            state_dict[f"{prefix}eta"] = torch.cat(parts)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.head.family.__name__}, n_params={self.n_params}"


class Conditional(Node):
    r"""A node whose parameters are a neural network of its parents: :math:`\eta = \mathrm{MLP}(\mathrm{Pa}(x))`.

    Arguments:
        family: A Pyro distribution class, e.g. `dist.Normal`, `dist.Bernoulli`.
        in_features: The width of the concatenated parent features (one-hot widths included).
        hidden: The widths of the hidden layers.
        activation: The hidden non-linearity.
        cardinality: The number of categories, for `dist.Categorical`.
        event_shape: The shape of one value, for vector-valued sites.
        parent_cardinalities: One entry per parent: an int one-hot encodes that parent.
        fixed: Parameters held fixed rather than learned.

    Example:
        >>> cond = Conditional(dist.Normal, in_features=2, hidden=(8,))
        >>> cond(torch.randn(5), torch.randn(5)).batch_shape
        torch.Size([5])
    """

    def __init__(
        self,
        family: type[dist.Distribution],
        in_features: int,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.Tanh,
        cardinality: int | None = None,
        event_shape: Sequence[int] = (),
        parent_cardinalities: Sequence[int | None] | None = None,
        **fixed: object,
    ) -> None:
        super().__init__()
        self.head = _Head(family, cardinality, event_shape, fixed)
        self.parent_cardinalities = parent_cardinalities
        self.net = mlp([in_features, *hidden, self.head.size], activation)

    def distribution(self, *parents: Tensor) -> dist.Distribution:
        cards = self.parent_cardinalities or [None] * len(parents)
        weight = self.net[0].weight
        return self.head(self.net(features(parents, cards, weight.dtype, weight.shape[1])))

    def extra_repr(self) -> str:
        return f"{self.head.family.__name__}, n_params={self.n_params}"


class Tabular(Node):
    r"""A conditional probability table :math:`p(x = j \mid \mathrm{Pa}(x) = i) = \theta_{ij}`.

    The table is stored as log-probabilities of shape :math:`(k_{pa_1}, \dots, k)`; it has
    :math:`(k - 1) \prod_{pa} k_{pa}` free parameters. Parents are integer-valued (or 0/1 floats).

    Arguments:
        cardinality: The number of values :math:`k` of the node.
        parent_cardinalities: The numbers of values of its parents, in call order.

    Example:
        >>> cpt = Tabular(3, (2, 2))
        >>> cpt.n_params
        8
        >>> cpt(torch.tensor([0, 1]), torch.tensor([1, 1])).probs.shape
        torch.Size([2, 3])
    """

    def __init__(self, cardinality: int, parent_cardinalities: Sequence[int] = ()) -> None:
        super().__init__()
        if cardinality < 2:
            raise ValueError(f"Tabular needs cardinality >= 2, got {cardinality}.")
        check_table("Tabular", cardinality, parent_cardinalities)  # before allocating it
        self.cardinality = cardinality
        self.parent_cardinalities = tuple(parent_cardinalities)
        self.logits = nn.Parameter(torch.zeros(*self.parent_cardinalities, cardinality))

    def distribution(self, *parents: Tensor) -> dist.Distribution:
        if len(parents) != len(self.parent_cardinalities):
            raise ValueError(
                f"Tabular expects {len(self.parent_cardinalities)} parents, got {len(parents)}."
            )
        index = tuple(p.long() for p in parents)
        log_probs = self.logits.log_softmax(-1)  # normalised once, over the table, not the rows
        return _TableCategorical(log_probs, index)

    def log_prob(self, value: Tensor, *parents: Tensor) -> Tensor:
        index = (*(p.long() for p in parents), value.long())
        return self.logits.log_softmax(-1)[index]

    @property
    def n_params(self) -> int:
        return (self.cardinality - 1) * math.prod(self.parent_cardinalities)

    def extra_repr(self) -> str:
        return f"cardinality={self.cardinality}, parents={self.parent_cardinalities}"


# the most entries a table may hold: 128 MiB in float64, and its log-softmax as much again
MAX_TABLE_ENTRIES = 1 << 24


def check_table(who: str, cardinality: int, parent_cardinalities: Sequence[int]) -> None:
    """Refuses, naming `who`, a table of more than :data:`MAX_TABLE_ENTRIES` entries.

    Example:
        >>> check_table("Node 'x'", 2, [2] * 30)
        Traceback (most recent call last):
        ...
        ValueError: Node 'x' would hold a table of 2,147,483,648 entries (2 values for each of 1,073,741,824 parent configurations), more than the 16,777,216 a table may hold: give it fewer parents or values, or make it 'categorical' (a network of its parents).
    """
    configurations = math.prod(int(k) for k in parent_cardinalities)
    entries = configurations * int(cardinality)
    if entries > MAX_TABLE_ENTRIES:
        raise ValueError(
            f"{who} would hold a table of {entries:,} entries ({cardinality} values for each of "
            f"{configurations:,} parent configurations), more than the {MAX_TABLE_ENTRIES:,} a "
            "table may hold: give it fewer parents or values, or make it 'categorical' (a "
            "network of its parents)."
        )


class _TableCategorical(dist.Categorical):
    r"""The Categorical of a table's rows at the parents' values `index`, batched over them.

    Nothing of the size of rows times categories is made unless asked for (`probs`, `logits`):
    `log_prob` gathers one entry of the table a value (exact, :math:`-\infty` at 0), and `sample`
    inverts the CDF, summed once over the table, with one uniform a draw.
    """

    # the table is its parameter: a plate's `expand` shares it, as tracing's matching expects
    arg_constraints = {**dist.Categorical.arg_constraints, "log_table": constraints.real}

    def __init__(
        self, log_table: Tensor, index: tuple[Tensor, ...], batch_shape: torch.Size | None = None
    ) -> None:
        self.log_table, self.index = log_table, index
        self._num_events = log_table.shape[-1]
        if batch_shape is None:
            batch_shape = torch.broadcast_shapes(*(i.shape for i in index))
        torch.distributions.Distribution.__init__(self, batch_shape, validate_args=LEAN)

    def _rows(self, table: Tensor) -> Tensor:
        """The rows of `table` (of the table's shape) at `index`, of shape batch + (k,)."""
        return table[self.index].expand(*self.batch_shape, self._num_events)

    @lazy_property
    def logits(self) -> Tensor:
        return self._rows(self.log_table)

    @lazy_property
    def probs(self) -> Tensor:
        return self._rows(self.log_table.exp())

    @property
    def _param(self) -> Tensor:
        return self.logits

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> _TableCategorical:
        return _TableCategorical(self.log_table, self.index, torch.Size(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        if getattr(value, "_pyro_categorical_support", None) == id(self):  # enumerated
            return super().log_prob(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        return self.log_table[(*self.index, value.long())].expand(shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)
        cdf = self.log_table.exp().cumsum(-1)
        u = torch.rand((*shape, 1), dtype=cdf.dtype, device=cdf.device)
        index = (u > self._rows(cdf)).sum(-1)
        return index.clamp_(max=self._num_events - 1)


class LinearGaussian(Node):
    r"""A Normal whose mean is linear in the parents: :math:`x \sim \mathcal{N}(w^\top \mathrm{Pa}(x) + b, \sigma^2)`.

    Arguments:
        in_features: The width of the concatenated parent features.
        parent_cardinalities: One entry per parent: an int one-hot encodes that parent.

    Example:
        >>> lg = LinearGaussian(2)
        >>> lg.n_params
        4
        >>> lg(torch.zeros(3), torch.ones(3)).batch_shape
        torch.Size([3])
    """

    def __init__(
        self, in_features: int, *, parent_cardinalities: Sequence[int | None] | None = None
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)
        self.parent_cardinalities = parent_cardinalities
        self.scale = nn.Parameter(torch.tensor(_INV_SOFTPLUS_ONE))

    def distribution(self, *parents: Tensor) -> dist.Distribution:
        cards = self.parent_cardinalities or [None] * len(parents)
        width = self.linear.in_features
        loc = self.linear(features(parents, cards, self.scale.dtype, width)).squeeze(-1)
        return dist.Normal(loc, F.softplus(self.scale), validate_args=LEAN)

    def extra_repr(self) -> str:
        return f"in_features={self.linear.in_features}"


def gaussian_mixture(eta: Tensor) -> dist.MixtureSameFamily:
    r"""Maps unconstrained :math:`\eta` of shape :math:`(*, 3K)` to a mixture of :math:`K` Gaussians.

    The three blocks of :math:`\eta` are the mixture logits, the means and the scales before a
    softplus; the mixture is batched over :math:`*`.

    Example:
        >>> gaussian_mixture(torch.zeros(5, 6)).batch_shape
        torch.Size([5])
    """
    if not eta.shape[-1] or eta.shape[-1] % 3:
        raise ValueError(
            f"gaussian_mixture takes 3K numbers a mixture (K logits, means and scales), not "
            f"{eta.shape[-1]}."
        )
    logits, loc, scale = eta.chunk(3, dim=-1)
    return dist.MixtureSameFamily(
        dist.Categorical(logits=logits, validate_args=LEAN),
        dist.Normal(loc, F.softplus(scale), validate_args=LEAN),
        validate_args=LEAN,
    )


class MixtureOfGaussians(Node):
    r"""A real node with :math:`p(x \mid \mathrm{Pa}(x)) = \sum_k \pi_k \mathcal{N}(x \mid \mu_k, \sigma_k^2)`.

    The weights, means and scales are an MLP of the parents (:func:`mlp`), or learned
    directly when the node has no parents. Log-density and sampling are exact. Of the
    :math:`K` logits one is redundant (the weights are their softmax), so a root has
    :math:`3K - 1` free parameters, and a network one output fewer than it computes.

    Arguments:
        in_features: The width of the concatenated parent features; 0 for a root node.
        components: The number of Gaussians :math:`K`.
        hidden: The widths of the hidden layers (none: a linear map).
        activation: The hidden non-linearity.
        parent_cardinalities: One entry per parent: an int one-hot encodes that parent.

    Example:
        >>> root = MixtureOfGaussians(components=3)
        >>> root().sample((4,)).shape, root.n_params
        (torch.Size([4]), 8)
        >>> MixtureOfGaussians(2, components=3, hidden=(8,))(torch.randn(5, 2)).batch_shape
        torch.Size([5])
    """

    def __init__(
        self,
        in_features: int = 0,
        components: int = 2,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[], nn.Module] = nn.Tanh,
        parent_cardinalities: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"A MixtureOfGaussians needs components >= 1, not {components}.")
        self.in_features, self.components = in_features, components
        self.parent_cardinalities = parent_cardinalities
        if in_features == 0:
            # means drawn apart, so that the components differ from the first step
            loc = torch.randn(components)
            self.eta = nn.Parameter(
                torch.cat([torch.zeros(components), loc, loc.new_zeros(components)])
            )
        else:
            self.net = mlp([in_features, *hidden, 3 * components], activation)

    def _load_from_state_dict(
        self, state_dict: dict[str, Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        # files saved by earlier ppgen hold Pyro's DenseNN keys: net.layers.i is net.(2i) here
        old = re.compile(rf"^{re.escape(prefix)}net\.layers\.(\d+)\.")
        for key in [k for k in state_dict if old.match(k)]:
            layer = int(old.match(key).group(1))
            state_dict[old.sub(f"{prefix}net.{2 * layer}.", key)] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def n_params(self) -> int:
        """The free parameters: one logit's output (a row of the last layer) is redundant."""
        last = self.net[-1] if self.in_features else None
        redundant = [(self.eta, 1)] if last is None else [(last.weight, last.in_features), (last.bias, 1)]
        return super().n_params - sum(n for p, n in redundant if p.requires_grad)

    def distribution(self, *parents: Tensor) -> dist.MixtureSameFamily:
        if self.in_features == 0:
            if parents:
                raise ValueError(
                    f"This MixtureOfGaussians has in_features=0 (a root), but was called on "
                    f"{len(parents)} parent(s); give it in_features, the parents' width."
                )
            return gaussian_mixture(self.eta)
        cards = self.parent_cardinalities or [None] * len(parents)
        weight = self.net[0].weight
        return gaussian_mixture(self.net(features(parents, cards, weight.dtype, weight.shape[1])))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, components={self.components}"
