r"""The generative adversarial network: an implicit generator program and its discriminator.

The generator is the two-node program :math:`z \sim \mathcal{N}(0, I)`, :math:`x = G(z)`, so that
`ppgen.graph` shows :math:`z \to x`. The site `x` is *implicit*: its distribution is an
:class:`Implicit` point mass at :math:`G(z)`, marked `infer={"implicit": True}`; the GAN has no
density :math:`p(x)`, only samples. The discriminator :math:`D(x) = \sigma(\ell(x))` returns the
logit :math:`\ell`; the two players are trained by :func:`ppgen.fit_gan`, which runs
:class:`ppgen.adversarial.AdversarialStep` (two optimisers, alternating steps) in the one
training loop (Goodfellow et al., 2014).

The generator loss is either the minimax :math:`\log(1 - D(G(z)))` or the non-saturating
:math:`-\log D(G(z))`. Where the discriminator wins, :math:`D(G(z)) \approx 0`, the gradient of
the minimax loss with respect to the logit, :math:`-\sigma(\ell)`, vanishes, while that of the
non-saturating loss, :math:`-\sigma(-\ell)`, is about :math:`-1`. Where it is unsure,
:math:`D(G(z)) \approx 1/2`, both are about :math:`-1/2` and the two losses train alike, however
many rows it classifies right by the sign of :math:`\ell`: `fit_gan`'s history records
:math:`D(G(z))` as `train/d_fake` beside the accuracy.

On binary data (the binarised digits) the generator must emit binary rows: a discriminator tells
a sigmoid's grey levels from 0s and 1s by their values alone, wins, and the generator collapses
onto a few images. :class:`ConvGenerator`
therefore ends by default in :class:`StraightThroughBernoulli`, and :class:`MLPGenerator` takes
it as its `output`; `x = G(z)` then draws its pixels given :math:`z`, still without a density.
Even so a GAN's samples swing from one epoch to the next: the R1 penalty, an average of the
generator's parameters and the epoch chosen on held-out rows (`fit_gan`'s `r1`, `average`,
`val`) steady them (`benchmarks/samples_digits.py` measures them against the explicit models).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.model import Model, Rebuildable
from ppgen.nn import mlp
from ppgen.tracing import LEAN

__all__ = [
    "GAN",
    "ConvDiscriminator",
    "ConvGenerator",
    "Implicit",
    "MLPDiscriminator",
    "MLPGenerator",
    "StraightThroughBernoulli",
]

_LOSSES = ("non_saturating", "minimax")


class Implicit(dist.Delta):
    r"""The distribution of an implicit site: a point mass at a deterministic function of its
    parents, standing for a distribution known only through its samples.

    It is Pyro's `Delta` under its own name, so that graphs and errors say what it is; its
    `log_prob` (0 at the point, :math:`-\infty` elsewhere) exists for Pyro's provenance
    tracking and is no density of the data.

    Example:
        >>> Implicit(torch.zeros(3, 2), event_dim=1).sample().shape
        torch.Size([3, 2])
    """


class StraightThroughBernoulli(Rebuildable, nn.Module):
    r"""The output of a generator of binary data: pixels :math:`x_i \sim
    \mathrm{Bernoulli}(\sigma(\ell_i))` drawn from the logits :math:`\ell`, with the
    straight-through gradient of :math:`\sigma(\ell_i)` (Bengio et al., 2013).

    A generator ending in a sigmoid emits grey levels, which a discriminator tells from binary
    data by their values alone; it wins, and the generator collapses. Drawn this way, generated
    rows lie on the data's support :math:`\{0, 1\}^D`, and the generator still gets gradients.

    Example:
        >>> StraightThroughBernoulli()(torch.tensor([[-100.0, 100.0]], requires_grad=True))
        tensor([[0., 1.]], grad_fn=<AddBackward0>)
    """

    def forward(self, logits: Tensor) -> Tensor:
        r"""Binary samples of the shape of `logits`, differentiable as :math:`\sigma(\ell)`."""
        probs = torch.sigmoid(logits)
        return torch.bernoulli(probs.detach()) + (probs - probs.detach())  # exactly 0 or 1


class MLPGenerator(Rebuildable, nn.Module):
    r"""A multilayer perceptron :math:`G: \mathbb{R}^Z \to \mathbb{R}^D` for vectors.

    Arguments:
        z_dim: The size :math:`Z` of the latent code.
        features: The size :math:`D` of a data point.
        hidden_features: The widths of the hidden layers (ReLU).
        output: A module applied to the output, e.g. :class:`StraightThroughBernoulli` for
            binary data or `nn.Sigmoid()` for data in [0, 1] (`None`: the identity).

    Example:
        >>> MLPGenerator(2, 5)(torch.randn(3, 2)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        z_dim: int,
        features: int,
        *,
        hidden_features: Sequence[int] = (128, 128),
        output: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.net = mlp([z_dim, *hidden_features, features], nn.ReLU)
        self.output = output if output is not None else nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        """Maps codes of shape :math:`(N, Z)` to points of shape :math:`(N, D)`."""
        return self.output(self.net(z))


class MLPDiscriminator(Rebuildable, nn.Module):
    r"""A multilayer perceptron returning the logit :math:`\ell(x)` of "x is real".

    Arguments:
        features: The size :math:`D` of a data point.
        hidden_features: The widths of the hidden layers (LeakyReLU 0.2); the last one is the
            width of :meth:`features`.

    Example:
        >>> d = MLPDiscriminator(5, hidden_features=(16, 8))
        >>> d(torch.randn(3, 5)).shape, d.features(torch.randn(3, 5)).shape
        (torch.Size([3]), torch.Size([3, 8]))
    """

    def __init__(self, features: int, *, hidden_features: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        if not hidden_features:
            raise ValueError("An MLPDiscriminator needs at least one hidden layer: its features.")
        self.body = nn.Sequential(
            mlp([features, *hidden_features], lambda: nn.LeakyReLU(0.2)), nn.LeakyReLU(0.2)
        )
        self.head = nn.Linear(hidden_features[-1], 1)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer, shape :math:`(N, H)`: codes for a linear probe."""
        return self.body(x.reshape(len(x), -1))

    def forward(self, x: Tensor) -> Tensor:
        """The logits, shape :math:`(N,)`."""
        return self.head(self.features(x)).squeeze(-1)


class ConvGenerator(Rebuildable, nn.Module):
    r"""A small transposed-convolution generator of :math:`H \times W` images.

    The code is mapped linearly to `channels` maps of size :math:`H/4 \times W/4`, then doubled
    twice in size by transposed convolutions to one map of logits; the images come flattened, as
    rows of :func:`ppgen.datasets.digits`.

    Arguments:
        z_dim: The size of the latent code.
        shape: The height and width :math:`(H, W)`, both multiples of 4.
        channels: The channels of the first feature maps (halved at each doubling).
        output: A module applied to the logits. By default :class:`StraightThroughBernoulli`,
            binary images like the binarised digits; `nn.Sigmoid()` for grey levels in [0, 1].

    Example:
        >>> ConvGenerator(4, (8, 8))(torch.randn(3, 4)).shape
        torch.Size([3, 64])
    """

    def __init__(
        self,
        z_dim: int,
        shape: tuple[int, int] = (8, 8),
        *,
        channels: int = 64,
        output: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if shape[0] % 4 or shape[1] % 4 or min(shape) < 4:
            raise ValueError(f"The image shape must be multiples of 4, not {shape}.")
        if channels < 2:  # halved once: a map of none
            raise ValueError(f"A ConvGenerator needs channels >= 2, not {channels}.")
        self.shape, self.channels = tuple(shape), channels
        self.linear = nn.Linear(z_dim, channels * (shape[0] // 4) * (shape[1] // 4))
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels // 2, 1, 4, stride=2, padding=1),
        )
        self.output = output if output is not None else StraightThroughBernoulli()

    def forward(self, z: Tensor) -> Tensor:
        """Maps codes of shape :math:`(N, Z)` to flattened images of shape :math:`(N, H W)`."""
        h = self.linear(z).reshape(len(z), self.channels, self.shape[0] // 4, self.shape[1] // 4)
        return self.output(self.net(h).reshape(len(z), -1))


class ConvDiscriminator(Rebuildable, nn.Module):
    r"""A small convolutional discriminator of flattened :math:`H \times W` images.

    Arguments:
        shape: The height and width :math:`(H, W)`.
        channels: The channels of the first convolution (doubled in the second).

    Example:
        >>> d = ConvDiscriminator((8, 8), channels=8)
        >>> d(torch.rand(3, 64)).shape, d.features(torch.rand(3, 64)).shape
        (torch.Size([3]), torch.Size([3, 64]))
    """

    def __init__(self, shape: tuple[int, int] = (8, 8), *, channels: int = 32) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * channels, 1)

    def features(self, x: Tensor) -> Tensor:
        """The pooled last feature maps, shape :math:`(N, 8 C)`: codes for a linear probe."""
        return self.body(x.reshape(len(x), 1, *self.shape))

    def forward(self, x: Tensor) -> Tensor:
        """The logits, shape :math:`(N,)`."""
        return self.head(self.features(x)).squeeze(-1)


class GAN(Model):
    r"""A generative adversarial network: an implicit generator program and a discriminator.

    Train it with :func:`ppgen.infer.fit_gan`. It has no density: `log_prob` raises, and
    `has_density` is `False` for code that asks before calling it.

    Arguments:
        generator: A module mapping codes of shape :math:`(N, Z)` to points of shape
            :math:`(N, *)`, e.g. :class:`MLPGenerator` or :class:`ConvGenerator`.
        discriminator: A module mapping points to logits of shape :math:`(N,)`, e.g.
            :class:`MLPDiscriminator` or :class:`ConvDiscriminator`.
        z_dim: The size :math:`Z` of the latent code.
        loss: The generator's loss, `"non_saturating"` (:math:`-\log D(G(z))`) or `"minimax"`
            (:math:`\log(1 - D(G(z)))`).

    Example:
        >>> gan = GAN(MLPGenerator(2, 3), MLPDiscriminator(3), 2)
        >>> gan.sample(5).shape
        torch.Size([5, 3])
        >>> sorted(ppgen.graph(gan, n=4).edges), ppgen.graph(gan).nodes["x"]["distribution"]
        ([('z', 'x')], 'Implicit')
    """

    has_density = False

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        z_dim: int,
        *,
        loss: str = "non_saturating",
    ) -> None:
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"loss must be 'non_saturating' or 'minimax', not {loss!r}.")
        self.generator, self.discriminator = generator, discriminator
        self.z_dim, self.loss = z_dim, loss

    def prior(self, rows: int) -> dist.Distribution:
        r"""The prior :math:`\mathcal{N}(0, I)` of :math:`z`, batched over `rows`."""
        like = next(self.generator.parameters())
        zeros = like.new_zeros(rows, self.z_dim)
        return dist.Normal(zeros, 1.0, validate_args=LEAN).to_event(1)

    def forward(self, n: int = 1) -> Tensor:
        r"""The program :math:`z \sim \mathcal{N}(0, I)`, :math:`x = G(z)` over `n` rows."""
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior(n))
            x = self.generator(z)
            fn = Implicit(x, event_dim=x.dim() - 1)
            return pyro.sample("x", fn, infer={"implicit": True})

    def sample(self, n: int) -> Tensor:
        r"""Draws `n` rows :math:`x = G(z)`, of shape :math:`(n, *)`."""
        if n < 1:
            raise ValueError(f"n must be a positive number of rows, not {n}.")
        with torch.no_grad():
            return self(n=n)

    def features(self, x: Tensor) -> Tensor:
        r"""The discriminator's features of rows `x` (its `features` method), without gradients."""
        with torch.no_grad():
            return self.discriminator.features(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """Raises: a GAN's generator is implicit and has no density."""
        raise ValueError(
            "GAN has no density: its site 'x' is implicit (x = G(z)), so log p(x) is undefined; "
            "compare its samples with ppgen.metrics.mmd instead."
        )

    def generator_loss(self, logits: Tensor) -> Tensor:
        r"""The generator's loss per row from the discriminator's logits :math:`\ell(G(z))`:
        :math:`\log(1 - \sigma(\ell)) = -\operatorname{softplus}(\ell)` (minimax) or
        :math:`-\log \sigma(\ell) = \operatorname{softplus}(-\ell)` (non-saturating)."""
        return -F.softplus(logits) if self.loss == "minimax" else F.softplus(-logits)

    @staticmethod
    def discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
        r"""The discriminator's loss per row, :math:`-\log D(x) - \log(1 - D(G(z)))`, from the
        logits of real and generated rows."""
        return F.softplus(-real) + F.softplus(fake)
