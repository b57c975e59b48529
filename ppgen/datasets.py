r"""The embedded data: scikit-learn's bundled 8x8 digits and the relay race; nothing is downloaded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["Images", "digits", "relay_race", "relay_race_program"]


@dataclass(frozen=True)
class Images:
    r"""Images split into train, test and (optionally) validation sets, flattened to rows of
    shape :math:`(N, H W)`; `val` and `val_labels` are `None` where no rows were held out."""

    train: Tensor
    test: Tensor
    train_labels: Tensor
    test_labels: Tensor
    shape: tuple[int, int]
    val: Tensor | None = None
    val_labels: Tensor | None = None


def digits(*, binarize: bool = True, dtype: torch.dtype | None = None, val: int = 0) -> Images:
    r"""The 1797 handwritten 8x8 digits bundled with scikit-learn, with a fixed split.

    The split is the permutation `numpy.random.default_rng(0).permutation(1797)`: its first 1500
    images are the training set, the other 297 the test set. It is the split on which the
    issues' reference figures were measured (an independent Bernoulli model scores 24.50
    nats/image on its test set; a logistic regression on raw binary pixels 0.943 accuracy).
    With `val`, the last `val` of those 1500 training images become a validation set, to choose
    epochs and settings on, and the training set keeps the first `1500 - val`; the test set is
    the same 297 images either way. Intensities run from 0 to 16; binarised, a pixel is 1 when
    its intensity exceeds 8, else it is scaled to [0, 1].

    Arguments:
        binarize: Whether to threshold the intensities at 8.
        dtype: The images' floating dtype (torch's default if `None`).
        val: How many training images to hold out for validation, from 0 to 1499.

    Example:
        >>> data = digits(val=300)
        >>> data.train.shape, data.val.shape, data.test.shape, data.shape
        (torch.Size([1200, 64]), torch.Size([300, 64]), torch.Size([297, 64]), (8, 8))
    """
    from sklearn.datasets import load_digits

    if isinstance(val, bool) or not isinstance(val, int) or not 0 <= val < 1500:
        raise ValueError(
            f"digits(val=...) holds out 0 to 1499 of the 1500 training images, not {val!r}."
        )
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=dtype or torch.get_default_dtype())
    x = (x > 8).to(x.dtype) if binarize else x / 16
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(x)))
    train, held, test = order[: 1500 - val], order[1500 - val : 1500], order[1500:]
    if not val:
        return Images(x[train], x[test], y[train], y[test], (8, 8))
    return Images(x[train], x[test], y[train], y[test], (8, 8), x[held], y[held])


def relay_race_program(n: int = 1) -> dict[str, Tensor]:
    r"""The known generator of the relay race: three finishing times, each shifted nonlinearly.

    :math:`t_0 \sim \mathcal{N}(0, 1)`,
    :math:`t_1 \mid t_0 \sim \mathcal{N}(t_0 + \sin 2 t_0, 0.3 + 0.2 t_0^2)`,
    :math:`t_2 \mid t_1 \sim \mathcal{N}(\tanh(2 t_1) + 0.5 t_1, 0.4)`.

    Example:
        >>> sorted(relay_race_program(3))
        ['t0', 't1', 't2']
    """
    with pyro.plate("race", n):
        t0 = pyro.sample("t0", dist.Normal(0.0, 1.0))
        t1 = pyro.sample("t1", dist.Normal(t0 + torch.sin(2 * t0), 0.3 + 0.2 * t0**2))
        t2 = pyro.sample("t2", dist.Normal(torch.tanh(2 * t1) + 0.5 * t1, 0.4))
    return {"t0": t0, "t1": t1, "t2": t2}


def relay_race(num_rows: int, *, seed: int = 0) -> dict[str, Tensor]:
    r"""Draws `num_rows` rows from :func:`relay_race_program`, seeded, leaving the RNG as it was.

    Example:
        >>> relay_race(5)["t1"].shape
        torch.Size([5])
    """
    if num_rows < 1:
        raise ValueError(f"num_rows must be a positive number of rows, not {num_rows}.")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with torch.no_grad():
            return relay_race_program(num_rows)
