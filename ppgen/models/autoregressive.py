r"""Fully visible autoregressive models of binary vectors: independent, FVSBN, NADE, MADE, PixelCNN.

Each model factorises :math:`p(x) = \prod_i p(x_i \mid x_{<i})` with Bernoulli conditionals whose
logits come from one network applied to the whole vector: the log-density takes one parallel pass,
sampling takes :math:`D` sequential passes. With `sites="joint"` (the default) the program has one
site `x` of event shape :math:`(D,)`; with `sites="pixels"` it has one site per pixel, each reading
exactly the pixels its conditional depends on, so that :func:`ppgen.graph` shows the DAG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn.auto_reg_nn import AutoRegressiveNN, MaskedLinear, create_mask
from torch import Size, Tensor, nn
from torch.distributions import constraints

from ppgen.nn import Model

__all__ = [
    "FVSBN",
    "MADE",
    "NADE",
    "AutoregressiveBernoulli",
    "Independent",
    "MaskedConv2d",
    "PixelCNN",
]


class AutoregressiveBernoulli(TorchDistribution):
    r"""Binary vectors with :math:`p(x) = \prod_i \mathrm{Bernoulli}(x_i \mid \sigma(f(x)_i))`.

    The network :math:`f` maps vectors :math:`(*, D)` to logits :math:`(*, D)`, and its logit
    :math:`i` reads only the entries that come before :math:`i` in `order`.

    Arguments:
        logits: The autoregressive network :math:`f`.
        order: The order in which entries are sampled, a permutation of :math:`0, \dots, D-1`.
        batch_shape: The batch shape of the distribution.
        template: A tensor whose dtype and device the samples take.

    Example:
        >>> d = AutoregressiveBernoulli(torch.zeros_like, torch.arange(3), torch.Size([2]))
        >>> d.log_prob(torch.ones(2, 3))
        tensor([-2.0794, -2.0794])
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.independent(constraints.boolean, 1)
    has_rsample = False

    def __init__(
        self,
        logits: Callable[[Tensor], Tensor],
        order: Tensor,
        batch_shape: tuple[int, ...] = (),
        template: Tensor | None = None,
    ) -> None:
        self.logits, self.order = logits, order
        self.template = torch.zeros(()) if template is None else template
        super().__init__(Size(batch_shape), Size([len(order)]), validate_args=False)

    def expand(
        self, batch_shape: tuple[int, ...], _instance: object = None
    ) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(self.logits, self.order, Size(batch_shape), self.template)

    def log_prob(self, value: Tensor) -> Tensor:
        value = value.to(self.template.dtype)
        logits = self.logits(value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(Size(sample_shape))
        x = self.template.new_zeros(shape)
        for i in self.order.tolist():
            x[..., i] = torch.bernoulli(torch.sigmoid(self.logits(x)[..., i]))
        return x


class _Autoregressive(Model):
    """The program shared by the binary models; subclasses define `logits` and `connectivity`."""

    def __init__(self, features: int, sites: str) -> None:
        super().__init__()
        if sites not in ("joint", "pixels"):
            raise ValueError(f"sites must be 'joint' or 'pixels', got '{sites}'.")
        self.features, self.sites = features, sites
        self.register_buffer("order", torch.arange(features))

    def logits(self, x: Tensor) -> Tensor:
        r"""The logits of every conditional :math:`p(x_i \mid x_{<i})`, shape :math:`(*, D)`."""
        raise NotImplementedError

    def connectivity(self) -> Tensor:
        r"""A boolean :math:`(D, D)` matrix whose entry :math:`(i, j)` says logit :math:`i` reads :math:`x_j`."""
        raise NotImplementedError

    def distribution(self, n: int = 1) -> AutoregressiveBernoulli:
        """The joint distribution of `n` rows, as one `AutoregressiveBernoulli`."""
        template = next(self.parameters())
        return AutoregressiveBernoulli(self.logits, self.order, Size([n]), template)

    def forward(self, n: int = 1) -> Tensor:
        with pyro.plate("data", n):
            if self.sites == "joint":
                return pyro.sample("x", self.distribution(n))
            parents = self.connectivity()
            template = next(self.parameters())
            zero = template.new_zeros(n)
            values: dict[int, Tensor] = {}
            for i in self.order.tolist():
                x = torch.stack(
                    [values[j] if parents[i, j] else zero for j in range(self.features)], -1
                )
                logit = self.logits(x)[..., i]
                values[i] = pyro.sample(f"x_{i}", dist.Bernoulli(logits=logit))
            return torch.stack([values[j] for j in range(self.features)], -1)


def _before(order: Tensor) -> Tensor:
    """The boolean matrix whose entry (i, j) says j comes strictly before i in `order`."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    return rank[None, :] < rank[:, None]


class Independent(_Autoregressive):
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


class FVSBN(_Autoregressive):
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


class NADE(_Autoregressive):
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
        terms = x.unsqueeze(-2) * self.weight  # (*, H, D): W_{:, j} x_j
        before = terms.cumsum(-1) - terms  # exclusive: sum over j < i
        h = torch.sigmoid(self.hidden_bias.unsqueeze(-1) + before)
        return self.bias + (h * self.out_weight.T).sum(-2)

    def connectivity(self) -> Tensor:
        return _before(self.order)


class MADE(_Autoregressive):
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
        if order is not None:
            self.order = torch.as_tensor(order, dtype=torch.long)
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
        order = torch.randperm(self.features) if order is None else torch.as_tensor(order)
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
        mask = torch.ones(kh, kw)
        mask[kh // 2, kw // 2 + (mask_type == "B") :] = 0
        mask[kh // 2 + 1 :] = 0
        self.mask_type = mask_type
        self.register_buffer("mask", mask.expand_as(self.weight).clone())

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{self.mask_type!r}, {super().extra_repr()}"


class PixelCNN(_Autoregressive):
    r"""A PixelCNN (van den Oord et al., 2016) for binary images of a given shape, in raster order.

    A type-A masked convolution, then type-B masked convolutions with ReLUs, then two
    :math:`1 \times 1` convolutions to one logit per pixel. Rows of data are flattened images.

    Arguments:
        shape: The image shape :math:`(H, W)`; rows have :math:`D = H W` entries.
        channels: The number of feature maps.
        layers: The number of type-B layers.
        kernel_size: The side of the type-A kernel (type-B kernels are 3).
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
        kernel_size: int = 7,
        sites: str = "joint",
    ) -> None:
        super().__init__(shape[0] * shape[1], sites)
        self.shape = tuple(shape)
        convs: list[nn.Module] = [
            MaskedConv2d("A", 1, channels, kernel_size, padding=kernel_size // 2)
        ]
        for _ in range(layers):
            convs += [nn.ReLU(), MaskedConv2d("B", channels, channels, 3, padding=1)]
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
        return self.net(images).reshape(*batch, self.features)

    def connectivity(self) -> Tensor:
        # reach[j] is the set of positions whose features read pixel j, layer after layer
        reach = torch.eye(self.features).reshape(self.features, 1, *self.shape)
        for conv in self.net:
            if isinstance(conv, MaskedConv2d):
                kernel = conv.mask[:1, :1].to(reach.dtype)
                reach = (F.conv2d(reach, kernel, padding=conv.padding) > 0).to(reach.dtype)
        return reach.reshape(self.features, self.features).T > 0
