r"""The variational autoencoder: a latent code, a neural decoder and an amortised encoder guide.

The model is the two-node program :math:`z \sim \mathcal{N}(0, I)`,
:math:`x \mid z \sim p(x \mid \eta)` with :math:`\eta = \mathrm{NN}(z)`, and the guide the
reparameterised :math:`q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))`
(Kingma and Welling, 2014). Both take the rows of `x` as their first argument, in the style of
Pyro's tutorials, so that `ppgen.fit_svi(vae, vae.guide, x)` fits them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import Tensor, nn

from ppgen.elbo import svi_table
from ppgen.importance import importance_log_prob
from ppgen.nn import Conditional, Model, Root

__all__ = ["VAE"]

_FAMILIES = {"bernoulli": dist.Bernoulli, "normal": dist.Normal}


class VAE(Model):
    r"""A variational autoencoder with a Bernoulli or Normal decoder.

    Arguments:
        x_shape: The shape of one data point, or its size for vectors.
        z_dim: The size of the latent code :math:`z`.
        hidden: The widths of the hidden layers of the encoder and of the decoder; one layer
            of 512 by default (ReLU; Normal scales through a softplus).
        likelihood: `"bernoulli"` (binary data) or `"normal"` (a mean and scale per feature).

    Example:
        >>> vae = VAE(64, 8, hidden=(32,))
        >>> x = vae.sample(5)
        >>> x.shape, vae.encode(x).shape, vae.log_prob(x, num_samples=10).shape
        (torch.Size([5, 64]), torch.Size([5, 8]), torch.Size([5]))
        >>> sorted(ppgen.graph(vae, x).edges)
        [('z', 'x')]
    """

    def __init__(
        self,
        x_shape: int | Sequence[int],
        z_dim: int,
        *,
        hidden: Sequence[int] = (512,),
        likelihood: str = "bernoulli",
    ) -> None:
        super().__init__()
        if likelihood not in _FAMILIES:
            raise ValueError(f"likelihood must be 'bernoulli' or 'normal', not {likelihood!r}.")
        self.x_shape = (x_shape,) if isinstance(x_shape, int) else tuple(x_shape)
        self.z_dim = z_dim
        x_dim = math.prod(self.x_shape)
        self.z_prior = Root(dist.Normal, event_shape=(z_dim,), loc=0.0, scale=1.0)
        self.encoder = Conditional(
            dist.Normal, x_dim, hidden=hidden, activation=nn.ReLU, event_shape=(z_dim,)
        )
        self.decoder = Conditional(
            _FAMILIES[likelihood], z_dim, hidden=hidden, activation=nn.ReLU,
            event_shape=self.x_shape,
        )  # fmt: skip

    def forward(self, x: Tensor | None = None, *, n: int = 1) -> Tensor:
        r"""The program :math:`p(z)\, p(x \mid z)`, observing `x` of shape :math:`(N, *)`
        where given, else drawing `n` rows."""
        rows = len(x) if x is not None else n
        with pyro.plate("data", rows):
            z = pyro.sample("z", self.prior(rows))
            return pyro.sample("x", self.decode(z), obs=x)

    @pyro_method  # its modules' parameters in Pyro's param store, as forward's: SVI trains them
    def guide(self, x: Tensor, *, n: int | None = None) -> Tensor:
        r"""The encoder :math:`q(z \mid x)`, a guide for :meth:`forward` (`n` is ignored)."""
        with pyro.plate("data", len(x)):
            return pyro.sample("z", self.posterior(x))

    def prior(self, rows: int) -> dist.Distribution:
        r"""The prior :math:`\mathcal{N}(0, I)` of :math:`z`, batched over `rows`."""
        return self.z_prior().expand((rows,))

    def posterior(self, x: Tensor) -> dist.Distribution:
        r"""The encoder's :math:`q(z \mid x)` for rows `x` of shape :math:`(N, *)`."""
        # rows of one entry as scalars (see _vector); others as they are, the objects the
        # fast ELBO recognises as the program's input
        return self.encoder(x if math.prod(self.x_shape) > 1 else x.reshape(len(x)))

    def encode(self, x: Tensor, *, n: int | None = None) -> Tensor:
        r"""The posterior mean of :math:`z`, shape :math:`(N, Z)`, or `n` draws, shape
        :math:`(n, N, Z)`."""
        with torch.no_grad():
            q = self.posterior(x)
            return q.mean if n is None else q.sample((n,))

    def decode(self, z: Tensor) -> dist.Distribution:
        r"""The decoder's :math:`p(x \mid z)` for codes `z` of shape :math:`(N, Z)`; its `mean`
        is the reconstruction."""
        return self.decoder(_vector(z))

    def sample(self, n: int) -> Tensor:
        r"""Draws `n` rows :math:`x \sim p(x)`, of shape :math:`(n, *)`."""
        if n < 1:
            raise ValueError(f"n must be a positive number of rows, not {n}.")
        with torch.no_grad():
            return self(n=n)

    def log_prob(
        self, x: Tensor, *, num_samples: int = 1000, chunk_size: int | None = None
    ) -> Tensor:
        r"""The importance-weighted bound on :math:`\log p(x)` with `num_samples` draws of the
        encoder, per row, of shape :math:`(N,)`; see :func:`ppgen.importance.importance_log_prob`.
        `x` is checked first (its shape, and the support of the decoder's distribution); integer
        images are taken as floats.
        """
        (x,) = svi_table(self, x, (), {}, None).columns.values()  # integer images as floats
        return importance_log_prob(
            self, self.guide, x, num_samples=num_samples, chunk_size=chunk_size
        )


def _vector(v: Tensor) -> Tensor:
    r"""Vectors :math:`(*, F)` as a :class:`~ppgen.nn.Conditional` takes them: of one entry,
    :math:`(*)`, since it reads a last dimension of 1 as a batch dimension, one value each."""
    return v[..., 0] if v.shape[-1] == 1 else v
