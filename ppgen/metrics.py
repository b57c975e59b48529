r"""Sample-based measures for any generative model: kernel MMD and the linear probe of codes.

They need only samples and codes, so they apply where no density exists (a GAN) as well as
where one does: compare `model.sample(n)` with the data by :func:`mmd`, and judge codes (a
VAE's `encode`, a GAN discriminator's `features`) by how well a linear classifier reads labels
from them (:func:`linear_probe`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["gaussian_kernel", "linear_probe", "median_bandwidth", "mmd"]


def median_bandwidth(data: Tensor) -> float:
    r"""The median heuristic: the median of the squared Euclidean distances
    :math:`\lVert y_i - y_j \rVert^2` between distinct rows :math:`i < j` of `data`.

    Arguments:
        data: Rows of shape :math:`(N, *)`, :math:`N \ge 2`; at most 2000 rows are used (the
            first ones).

    Returns:
        The bandwidth :math:`h` of :func:`gaussian_kernel` (1.0 if all rows are equal).

    Example:
        >>> median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]]))
        4.0
    """
    y = data[:2000].reshape(len(data[:2000]), -1)
    i, j = torch.triu_indices(len(y), len(y), offset=1)
    squared = torch.cdist(y, y).pow(2)[i, j]
    h = float(squared.median()) if len(squared) else 0.0
    return h if h > 0 else 1.0


def gaussian_kernel(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    r"""The Gram matrix :math:`k(x_i, y_j) = \exp(-\lVert x_i - y_j \rVert^2 / h)` with
    bandwidth :math:`h`, of shape :math:`(M, N)`, for rows of shape :math:`(M, *)` and
    :math:`(N, *)`. (With :math:`h = 2 \sigma^2` it is the usual :math:`\exp(-d^2 / 2\sigma^2)`.)

    Example:
        >>> gaussian_kernel(torch.zeros(1, 2), torch.ones(1, 2), 2.0)
        tensor([[0.3679]])
    """
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    return torch.exp(-torch.cdist(x, y).pow(2) / bandwidth)


def mmd(
    samples: Tensor,
    data: Tensor,
    *,
    kernel: Callable[[Tensor, Tensor], Tensor] | None = None,
    bandwidth: float | None = None,
) -> float:
    r"""The unbiased estimate of the squared maximum mean discrepancy between two samples.

    .. math::
        \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
        + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j) - \frac{2}{mn} \sum_{i, j} k(x_i, y_j)

    (Gretton et al., 2012, Lemma 6): its expectation is the population :math:`\mathrm{MMD}^2`,
    0 when both samples come from one distribution, so that it can be slightly negative.

    Arguments:
        samples: The rows :math:`x`, of shape :math:`(M, *)`, e.g. `model.sample(1000)`.
        data: The rows :math:`y`, of shape :math:`(N, *)`; :math:`M, N \ge 2`.
        kernel: A function of two row tensors returning their Gram matrix. By default the
            Gaussian kernel :func:`gaussian_kernel` with `bandwidth`.
        bandwidth: The :math:`h` of the Gaussian kernel. By default the median heuristic
            :func:`median_bandwidth` computed on `data` alone, so that several models compared
            with the same data are measured with the same kernel.

    Returns:
        The estimate, a float.

    Example:
        >>> x, y = torch.randn(500, 2), torch.randn(500, 2) + 1.0
        >>> mmd(x, y) > 0.1 > abs(mmd(x, torch.randn(500, 2)))
        True
    """
    if len(samples) < 2 or len(data) < 2:
        raise ValueError("mmd needs at least two rows in each sample.")
    if samples.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"The samples' rows have shape {tuple(samples.shape[1:])} and the data's "
            f"{tuple(data.shape[1:])}: mmd compares rows of one shape."
        )
    if kernel is None:
        h = bandwidth if bandwidth is not None else median_bandwidth(data)
        if not h > 0:  # NaN too
            raise ValueError(f"The bandwidth must be positive, not {h}.")

        def kernel(a: Tensor, b: Tensor) -> Tensor:
            return gaussian_kernel(a, b, h)

    samples = samples.to(data.dtype)
    m, n = len(samples), len(data)
    k_xx, k_yy, k_xy = kernel(samples, samples), kernel(data, data), kernel(samples, data)
    xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def linear_probe(
    codes_train: Tensor,
    y_train: Tensor | Sequence[object],
    codes_test: Tensor,
    y_test: Tensor | Sequence[object],
    *,
    max_iter: int = 2000,
) -> float:
    r"""The test accuracy of a logistic regression reading labels from codes.

    The codes are standardised with the training codes' mean and deviation, then scikit-learn's
    `LogisticRegression(max_iter=max_iter)` (L2, :math:`C = 1`, multinomial) is fitted on the
    training codes.

    Arguments:
        codes_train, codes_test: Codes of shape :math:`(N, *)`, e.g. `vae.encode(x)` or
            `gan.features(x)`.
        y_train, y_test: Labels of shape :math:`(N,)`: a tensor, or any sequence of labels
            (strings too); the training labels must hold at least two classes.
        max_iter: The iterations of the solver.

    Returns:
        The fraction of test rows classified correctly.

    Example:
        >>> codes = torch.stack([torch.linspace(-1, 1, 200), torch.linspace(0, 1, 200) ** 2], 1)
        >>> labels = (codes[:, 0] > 0).long()
        >>> linear_probe(codes[::2], labels[::2], codes[1::2], labels[1::2])
        1.0
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def numpy(t: Tensor) -> object:
        return t.detach().cpu().reshape(len(t), -1).numpy()

    def labels(y: Tensor | Sequence[object], codes: Tensor, name: str) -> object:
        y = numpy(y).reshape(-1) if isinstance(y, Tensor) else np.asarray(y)
        if len(y) != len(codes):
            raise ValueError(f"{name} has {len(y)} labels for {len(codes)} rows of codes.")
        return y

    train, test = labels(y_train, codes_train, "y_train"), labels(y_test, codes_test, "y_test")
    if len(np.unique(train)) < 2:
        raise ValueError("y_train holds one class: a probe needs at least two to tell apart.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(numpy(codes_train), train)
    return float(probe.score(numpy(codes_test), test))
