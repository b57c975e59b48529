r"""Fully visible autoregressive models of binary vectors: independent, FVSBN, NADE, MADE, PixelCNN.

Each model factorises :math:`p(x) = \prod_i p(x_i \mid x_{<i})` with Bernoulli conditionals whose
logits come from one network applied to the whole vector: the log-density takes one parallel pass,
sampling takes :math:`D` sequential passes. With `sites="joint"` (the default) the program has one
site `x` of event shape :math:`(D,)`; with `sites="pixels"` it has one site per pixel, each reading
exactly the pixels its conditional depends on, so that :func:`ppgen.graph` shows the DAG.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from numbers import Integral
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from pyro.nn.auto_reg_nn import AutoRegressiveNN, MaskedLinear, create_mask
from torch import Size, Tensor, nn
from torch.distributions import constraints
from torch.nn.modules.utils import _pair

from ppgen.nn import Model, gaussian_mixture
from ppgen.tracing import LEAN

BINARY = constraints.independent(constraints.boolean, 1)

__all__ = [
    "FVSBN",
    "MADE",
    "NADE",
    "RNADE",
    "Autoregressive",
    "Independent",
    "MaskedConv2d",
    "PixelCNN",
]


class Autoregressive(TorchDistribution):
    r"""Vectors with :math:`p(x) = \prod_i p(x_i \mid f(x)_i)`, where :math:`f(x)_i` reads only :math:`x_{<i}`.

    `conditionals(x)` returns the distribution of every entry given the others, batched over
    :math:`(*, D)`; the network behind it must be autoregressive in `order`. Then the
    log-density is one call of `conditionals` and sampling is :math:`D` sequential calls.

    Arguments:
        conditionals: Maps vectors :math:`(*, D)` to a distribution of batch shape :math:`(*, D)`.
        order: The order in which entries are sampled, a permutation of :math:`0, \dots, D-1`.
        batch_shape: The batch shape of the distribution.
        template: A tensor whose dtype and device the samples take.
        support: The support of one vector.

    Example:
        >>> coins = lambda x: dist.Bernoulli(logits=torch.zeros_like(x))
        >>> Autoregressive(coins, torch.arange(3), (2,)).log_prob(torch.ones(2, 3))
        tensor([-2.0794, -2.0794])
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = False

    def __init__(
        self,
        conditionals: Callable[[Tensor], dist.Distribution],
        order: Tensor,
        batch_shape: tuple[int, ...] = (),
        template: Tensor | None = None,
        support: constraints.Constraint = BINARY,
    ) -> None:
        self.conditionals, self.order, self._support = conditionals, order, support
        self.template = torch.zeros(()) if template is None else template
        super().__init__(Size(batch_shape), Size([len(order)]))  # validated as Pyro's are

    @property
    def support(self) -> constraints.Constraint:
        return self._support

    def expand(self, batch_shape: tuple[int, ...], _instance: object = None) -> Autoregressive:
        return Autoregressive(
            self.conditionals, self.order, batch_shape, self.template, self._support
        )

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:  # a shape or a value off the support: an error, not a number
            self._validate_sample(value)
        value = value.to(self.template.dtype)
        return self.conditionals(value).log_prob(value).sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        x = self.template.new_zeros(self._extended_shape(Size(sample_shape)))
        for i in self.order.tolist():
            x[..., i] = self.conditionals(x).sample()[..., i]
        return x


def _in_param_store(module: PyroModule) -> None:
    """Puts a PyroModule's parameters in Pyro's param store, as reading them inside its call
    does, for a distribution that reads them later (its `log_prob`, run by Pyro's ELBO after
    the program returns), so that Pyro's own SVI trains them."""
    for name in [*module._parameters, *module._modules]:
        child = getattr(module, name)  # PyroModule's attribute: pyro.param / pyro.module
        if isinstance(child, PyroModule):
            _in_param_store(child)


class _Autoregressive(Model):
    """The program shared by the models; subclasses define the conditionals and `connectivity`."""

    support: constraints.Constraint = BINARY

    def __init__(self, features: int, sites: str) -> None:
        super().__init__()
        if sites not in ("joint", "pixels"):
            raise ValueError(f"sites must be 'joint' or 'pixels', got '{sites}'.")
        if isinstance(features, bool) or not isinstance(features, Integral) or features < 1:
            raise ValueError(f"{type(self).__name__} needs features >= 1, not {features!r}.")
        self.features, self.sites = features, sites
        self.register_buffer("order", torch.arange(features))

    def conditionals(self, x: Tensor) -> dist.Distribution:
        r"""Every conditional :math:`p(x_i \mid x_{<i})`, batched over :math:`(*, D)`."""
        raise NotImplementedError

    def conditional(self, x: Tensor, i: int) -> dist.Distribution:
        r"""The conditional :math:`p(x_i \mid x_{<i})` alone, batched over :math:`*`."""
        raise NotImplementedError

    def connectivity(self) -> Tensor:
        r"""A boolean :math:`(D, D)` matrix whose entry :math:`(i, j)` says :math:`p(x_i \mid x_{<i})` reads :math:`x_j`."""
        raise NotImplementedError

    def distribution(self, n: int = 1) -> Autoregressive:
        """The joint distribution of `n` rows, as one :class:`Autoregressive`."""
        template = next(self.parameters())
        return Autoregressive(self.conditionals, self.order, (n,), template, self.support)

    def forward(self, n: int = 1) -> Tensor:
        _in_param_store(self)  # the joint's log_prob reads the weights after this call returns
        with pyro.plate("data", n):
            if self.sites == "joint":
                return pyro.sample("x", self.distribution(n))
            parents = self.connectivity()
            zero = next(self.parameters()).new_zeros(n)
            values: dict[int, Tensor] = {}
            for i in self.order.tolist():
                x = torch.stack(
                    [values[j] if parents[i, j] else zero for j in range(self.features)], -1
                )
                values[i] = pyro.sample(f"x_{i}", self.conditional(x, i))
            return torch.stack([values[j] for j in range(self.features)], -1)


class _Binary(_Autoregressive):
    """A model of binary vectors with Bernoulli conditionals; subclasses define `logits`."""

    def logits(self, x: Tensor) -> Tensor:
        r"""The logits of every conditional :math:`p(x_i \mid x_{<i})`, shape :math:`(*, D)`."""
        raise NotImplementedError

    def conditionals(self, x: Tensor) -> dist.Bernoulli:
        return dist.Bernoulli(logits=self.logits(x), validate_args=LEAN)

    def conditional(self, x: Tensor, i: int) -> dist.Bernoulli:
        return dist.Bernoulli(logits=self.logits(x)[..., i])  # a pixel site's: validated


def _nade_hidden(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    r"""NADE's hidden units :math:`h_i = \sigma(c + W_{:, <i} x_{<i})` of every :math:`i`, shape :math:`(*, H, D)`."""
    terms = x.unsqueeze(-2) * weight  # (*, H, D): W_{:, j} x_j
    before = terms.cumsum(-1) - terms  # exclusive: the sum over j < i
    return torch.sigmoid(bias.unsqueeze(-1) + before)


def _permutation(order: Sequence[int], features: int) -> Tensor:
    """`order` as a tensor, checked to be a permutation of 0 .. features - 1."""
    tensor = torch.as_tensor(order, dtype=torch.long)
    if tensor.shape != (features,) or not torch.equal(
        tensor.sort().values, torch.arange(features)
    ):
        raise ValueError(
            f"order must be a permutation of 0..{features - 1}, not {tensor.tolist()}."
        )
    return tensor


def _before(order: Tensor) -> Tensor:
    """The boolean matrix whose entry (i, j) says j comes strictly before i in `order`."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank[None, :] < rank[:, None]


class Independent(_Binary):
    r"""Independent Bernoulli pixels, :math:`p(x) = \prod_i \mathrm{Bernoulli}(x_i \mid \sigma(b_i))`.

    Arguments:
        features: The number of pixels :math:`D`.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per pixel.

    Example:
        >>> from ppgen.counting import count_parameters
        >>> model = Independent(4)
        >>> model(n=2).shape, count_parameters(model)
        (torch.Size([2, 4]), 4)
    """

    def __init__(self, features: int, *, sites: str = "joint") -> None:
        super().__init__(features, sites)
        self.bias = nn.Parameter(torch.zeros(features))

    def logits(self, x: Tensor) -> Tensor:
        return self.bias.expand(x.shape)

    def connectivity(self) -> Tensor:
        return torch.zeros(self.features, self.features, dtype=torch.bool)


class FVSBN(_Binary):
    r"""The fully visible sigmoid belief net: :math:`p(x_i \mid x_{<i}) = \sigma(b_i + w_i^\top x_{<i})`.

    It has :math:`D (D + 1) / 2` free parameters: one logistic regression per pixel.

    Arguments:
        features: The number of pixels :math:`D`.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per pixel.

    Example:
        >>> from ppgen.counting import count_parameters
        >>> model = FVSBN(4)
        >>> count_parameters(model)
        10
        >>> sorted(ppgen.graph(FVSBN(3, sites="pixels")).edges)
        [('x_0', 'x_1'), ('x_0', 'x_2'), ('x_1', 'x_2')]
    """

    def __init__(self, features: int, *, sites: str = "joint") -> None:
        super().__init__(features, sites)
        mask = torch.ones(features, features).tril(-1)
        self.linear = MaskedLinear(features, features, mask)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def logits(self, x: Tensor) -> Tensor:
        return self.linear(x)

    def connectivity(self) -> Tensor:
        return self.linear.mask.bool()


class NADE(_Binary):
    r"""The neural autoregressive density estimator of Larochelle and Murray (2011).

    One hidden layer shared by every conditional:
    :math:`h_i = \sigma(c + W_{:, <i}\, x_{<i})`, :math:`p(x_i \mid x_{<i}) = \sigma(b_i + V_i^\top h_i)`.
    The pre-activations are cumulative sums, so the density costs :math:`O(D H)`.

    Arguments:
        features: The number of pixels :math:`D`.
        hidden_features: The width :math:`H` of the shared hidden layer.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per pixel.

    Example:
        >>> from ppgen.counting import count_parameters
        >>> model = NADE(4, hidden_features=3)
        >>> count_parameters(model)  # W, c, V, b
        31
    """

    def __init__(self, features: int, *, hidden_features: int = 64, sites: str = "joint") -> None:
        super().__init__(features, sites)
        scale = features**-0.5
        self.weight = nn.Parameter(torch.randn(hidden_features, features) * scale)
        self.hidden_bias = nn.Parameter(torch.zeros(hidden_features))
        self.out_weight = nn.Parameter(torch.randn(features, hidden_features) * scale)
        self.bias = nn.Parameter(torch.zeros(features))

    def logits(self, x: Tensor) -> Tensor:
        h = _nade_hidden(x, self.weight, self.hidden_bias)
        return self.bias + (h * self.out_weight.T).sum(-2)

    def connectivity(self) -> Tensor:
        return _before(self.order)


class MADE(_Binary):
    r"""The masked autoencoder for distribution estimation of Germain et al. (2015).

    An MLP whose weights are masked (Pyro's `AutoRegressiveNN`) so that logit :math:`i` reads
    only the pixels before :math:`i` in `order`. :meth:`resample` draws a new order and the
    connectivity that goes with it (order-agnostic training calls it between steps).

    Arguments:
        features: The number of pixels :math:`D`.
        hidden_features: The widths of the hidden layers, each at least :math:`D`.
        order: The sampling order; the natural order when `None`.
        skip_connections: Whether a masked linear map adds the inputs to the logits directly.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per pixel.

    Example:
        >>> model = MADE(3, hidden_features=(8,), order=[2, 0, 1], sites="pixels")
        >>> sorted(ppgen.graph(model).edges)
        [('x_0', 'x_1'), ('x_2', 'x_0'), ('x_2', 'x_1')]
    """

    def __init__(
        self,
        features: int,
        *,
        hidden_features: Sequence[int] = (256,),
        order: Sequence[int] | None = None,
        skip_connections: bool = True,
        sites: str = "joint",
    ) -> None:
        super().__init__(features, sites)
        if not hidden_features:
            raise ValueError("MADE needs at least one hidden layer (hidden_features).")
        if min(hidden_features) < features:
            raise ValueError(
                f"MADE's hidden layers need at least D = {features} units each (Pyro's "
                f"AutoRegressiveNN), not {list(hidden_features)}."
            )
        if order is not None:
            self.order = _permutation(order, features)
        with warnings.catch_warnings():  # Pyro's advice for flows of one dimension
            warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
            self.net = AutoRegressiveNN(
                features,
                list(hidden_features),
                param_dims=[1],
                permutation=self.order,
                skip_connections=skip_connections,
            )

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x)

    def connectivity(self) -> Tensor:
        layers = [layer.mask for layer in self.net.layers]
        reach = layers[0]
        for mask in layers[1:]:
            reach = mask @ reach
        if self.net.skip_layer is not None:
            reach = reach + self.net.skip_layer.mask
        return reach > 0

    def resample(self, order: Sequence[int] | None = None) -> None:
        """Sets a new order (a random one when `None`) and the masks that go with it."""
        order = (
            torch.randperm(self.features) if order is None else _permutation(order, self.features)
        )
        self.order.copy_(order)
        self.net.permutation.copy_(order)
        masks, skip = create_mask(self.features, 0, self.net.hidden_dims, self.order, 1)
        for layer, mask in zip(self.net.layers, masks, strict=True):
            layer.mask.copy_(mask)
        if self.net.skip_layer is not None:
            self.net.skip_layer.mask.copy_(skip)


class MaskedConv2d(nn.Conv2d):
    r"""A convolution that sees only the pixels above and to the left (PixelCNN masks).

    Type `"A"` masks the centre pixel too (the first layer: the output at a pixel must not read
    it); type `"B"` keeps it (later layers: the centre holds features of earlier pixels only).

    Arguments:
        mask_type: `"A"` or `"B"`.
        args, kwargs: As for `torch.nn.Conv2d`; the kernel must have odd sides.

    Example:
        >>> conv = MaskedConv2d("A", 1, 1, 3, padding=1)
        >>> conv.mask[0, 0]
        tensor([[1., 1., 1.],
                [1., 0., 0.],
                [0., 0., 0.]])
    """

    def __init__(self, mask_type: str, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got '{mask_type}'.")
        kh, kw = self.kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"The kernel must have odd sides, not {kh}x{kw}.")
        if self.padding_mode != "zeros":  # the others copy pixels below or right into the border
            raise ValueError(
                f"A masked convolution pads with zeros only: padding_mode={self.padding_mode!r} "
                "would let a pixel read itself or the pixels after it."
            )
        mask = torch.ones(kh, kw)
        mask[kh // 2, kw // 2 + (mask_type == "B") :] = 0
        mask[kh // 2 + 1 :] = 0
        self.mask_type = mask_type
        self.register_buffer("mask", mask.expand_as(self.weight).clone())

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{self.mask_type!r}, {super().extra_repr()}"


class _TrainingDropout(nn.Dropout):
    """Dropout in training steps only: training mode with gradients recorded."""

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0 or not (self.training and torch.is_grad_enabled()):
            return x
        return super().forward(x)


class _PixelBlock(nn.Module):
    r"""A residual type-B layer, :math:`h + \mathrm{dropout}(\mathrm{conv}(\mathrm{ReLU}(h)))`."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = MaskedConv2d("B", channels, channels, 3, padding=1)
        self.dropout = _TrainingDropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.dropout(self.conv(self.relu(h)))


class PixelCNN(_Binary):
    r"""A PixelCNN (van den Oord et al., 2016) for binary images of a given shape, in raster order.

    A type-A masked convolution, then type-B masked convolutions with ReLUs, then two
    :math:`1 \times 1` convolutions to one logit per pixel. Rows of data are flattened images.

    Stacked masked convolutions have a blind spot (pixels up and to the right that no layer
    reaches); a type-A kernel of side :math:`2 \max(H, W) - 1` sees every earlier pixel at once,
    which on small images removes it for a few thousand weights.

    Arguments:
        shape: The image shape :math:`(H, W)`; rows have :math:`D = H W` entries.
        channels: The number of feature maps.
        layers: The number of type-B layers.
        kernel_size: The side of the type-A kernel, or its (height, width) (type-B kernels are 3).
        residual: Whether each type-B layer is a residual block, :math:`h + \mathrm{conv}(\mathrm{ReLU}(h))`.
        dropout: The dropout rate after each :math:`3 \times 3` type-B convolution. It acts only in
            training steps (training mode with gradients recorded): scoring and sampling, under
            `torch.no_grad`, use the whole network.
        position: Whether the type-A layer also reads a channel of ones (zero in its padding).
            Zero padding alone looks like blank pixels, so that layer cannot tell where a pixel
            with blank pixels before it lies; the ones tell it, for one more input channel.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per pixel.

    Example:
        >>> model = PixelCNN((3, 3), channels=4, layers=0, kernel_size=3, sites="pixels")
        >>> sorted(p for p, c in ppgen.graph(model).edges if c == "x_4")
        ['x_0', 'x_1', 'x_2', 'x_3']
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        channels: int = 64,
        layers: int = 4,
        kernel_size: int | tuple[int, int] = 7,
        residual: bool = False,
        dropout: float = 0.0,
        position: bool = False,
        sites: str = "joint",
    ) -> None:
        if len(shape) != 2 or min(shape) < 1 or channels < 1 or layers < 0:
            raise ValueError(
                f"PixelCNN needs an image shape (H, W) of sides >= 1, channels >= 1 and layers "
                f">= 0, not shape={tuple(shape)}, channels={channels}, layers={layers}."
            )
        super().__init__(shape[0] * shape[1], sites)
        self.shape, self.position = tuple(shape), position
        padding = tuple(side // 2 for side in _pair(kernel_size))
        convs: list[nn.Module] = [
            MaskedConv2d("A", 1 + position, channels, kernel_size, padding=padding)
        ]
        for _ in range(layers):
            block = _PixelBlock(channels, dropout)
            plain = [block.relu, block.conv] + ([block.dropout] if dropout else [])
            convs += [block] if residual else plain
        convs += [
            nn.ReLU(),
            MaskedConv2d("B", channels, channels, 1),
            nn.ReLU(),
            MaskedConv2d("B", channels, 1, 1),
        ]
        self.net = nn.Sequential(*convs)

    def logits(self, x: Tensor) -> Tensor:
        batch = x.shape[:-1]
        images = x.reshape(-1, 1, *self.shape)
        if self.position:
            images = torch.cat([images, torch.ones_like(images)], 1)
        return self.net(images).reshape(*batch, self.features)

    def connectivity(self) -> Tensor:
        # reach[j] is the set of positions whose features read pixel j, layer after layer
        reach = torch.eye(self.features).reshape(self.features, 1, *self.shape)
        for conv in self.net.modules():  # in order; a residual block's reach includes its input
            if isinstance(conv, MaskedConv2d):
                kernel = conv.mask[:1, :1].to(reach.dtype)
                reach = (F.conv2d(reach, kernel, padding=conv.padding) > 0).to(reach.dtype)
        return reach.reshape(self.features, self.features).T > 0


class RNADE(_Autoregressive):
    r"""A real-valued NADE (Uria et al., 2013): mixture-of-Gaussians conditionals, shared hidden layer.

    :math:`h_i = \sigma(c + W_{:, <i}\, x_{<i})` as in :class:`NADE`, and
    :math:`p(x_i \mid x_{<i}) = \sum_k \pi_{ik} \mathcal{N}(\mu_{ik}, \sigma_{ik}^2)` with
    :math:`(\pi_i, \mu_i, \sigma_i)` a linear map of :math:`h_i` through
    :func:`ppgen.nn.gaussian_mixture`. The density is exact, in one pass.

    Arguments:
        features: The dimension :math:`D`.
        components: The number of Gaussians :math:`K` of each conditional.
        hidden_features: The width :math:`H` of the shared hidden layer.
        sites: `"joint"` for one site `x`, `"pixels"` for one site per entry.

    Example:
        >>> model = RNADE(3, components=2, hidden_features=4)
        >>> model(n=5).shape, model.distribution(5).log_prob(torch.zeros(5, 3)).shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    support = constraints.independent(constraints.real, 1)

    def __init__(
        self,
        features: int,
        *,
        components: int = 5,
        hidden_features: int = 64,
        sites: str = "joint",
    ) -> None:
        super().__init__(features, sites)
        scale = features**-0.5
        self.weight = nn.Parameter(torch.randn(hidden_features, features) * scale)
        self.hidden_bias = nn.Parameter(torch.zeros(hidden_features))
        self.out_weight = nn.Parameter(
            torch.randn(features, hidden_features, 3 * components) * hidden_features**-0.5
        )
        self.bias = nn.Parameter(torch.zeros(features, 3 * components))

    def eta(self, x: Tensor) -> Tensor:
        r"""The unconstrained mixture parameters of every conditional, shape :math:`(*, D, 3K)`."""
        h = _nade_hidden(x, self.weight, self.hidden_bias)
        return torch.einsum("...hd,dhk->...dk", h, self.out_weight) + self.bias

    def conditionals(self, x: Tensor) -> dist.MixtureSameFamily:
        return gaussian_mixture(self.eta(x))

    def conditional(self, x: Tensor, i: int) -> dist.MixtureSameFamily:
        return gaussian_mixture(self.eta(x)[..., i, :])

    def connectivity(self) -> Tensor:
        return _before(self.order)
