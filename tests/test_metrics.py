import math

import pytest
import torch

from ppgen.metrics import linear_probe, median_bandwidth, mmd


def gaussian_mmd2(mu1, s1, mu2, s2, h):
    """Population MMD^2 of N(mu1, s1^2) and N(mu2, s2^2) under k = exp(-d^2 / h)."""

    def expected_k(delta, variance):  # E exp(-D^2 / h), D ~ N(delta, variance)
        return math.sqrt(h / (h + 2 * variance)) * math.exp(-(delta**2) / (h + 2 * variance))

    return (
        expected_k(0.0, 2 * s1**2)
        + expected_k(0.0, 2 * s2**2)
        - 2 * expected_k(mu1 - mu2, s1**2 + s2**2)
    )


def test_mmd_of_a_sample_with_itself_is_about_zero():
    x = torch.randn(400, 3)
    # exactly 2 (mean off-diagonal k - 1) / m, in [-2/m, 0]
    assert -2 / 400 <= mmd(x, x) <= 0
    assert abs(mmd(x, torch.randn(400, 3))) < 0.01


def test_mmd_of_different_distributions_is_positive():
    assert mmd(torch.randn(300, 2), torch.randn(300, 2) + 1.0) > 0.1


def test_mmd_is_unbiased_for_gaussians():
    # Many small samples (m = n = 8): the V-statistic would be off by O(1/m); the U-statistic's
    # mean must match the closed form within 5 standard errors (failure rate ~ 6e-7).
    h, reps = 2.0, 4000
    values = torch.tensor(
        [mmd(torch.randn(8, 1), 0.5 + 1.5 * torch.randn(8, 1), bandwidth=h) for _ in range(reps)]
    )
    exact = gaussian_mmd2(0.0, 1.0, 0.5, 1.5, h)
    assert abs(values.mean() - exact) < 5 * values.std() / reps**0.5
    biased = values.mean() + (1 / 8) * 2  # what including the diagonal k(x, x) = 1 adds, at most
    assert abs(biased - exact) > 5 * values.std() / reps**0.5


def test_median_bandwidth_and_custom_kernel():
    assert median_bandwidth(torch.tensor([[0.0], [2.0], [4.0]])) == 4.0
    x = torch.randn(50, 2)
    constant = mmd(x, x + 1.0, kernel=lambda a, b: torch.ones(len(a), len(b)))
    assert constant == pytest.approx(0.0, abs=1e-12)  # a kernel blind to the data
    with pytest.raises(ValueError, match="two rows"):
        mmd(x[:1], x)


def test_linear_probe_reads_separable_labels():
    codes = torch.randn(400, 4)
    labels = (codes[:, 1] - codes[:, 2] > 0).long()
    assert linear_probe(codes[:300], labels[:300], codes[300:], labels[300:]) > 0.9
    noise = torch.randint(0, 2, (400,))
    assert linear_probe(codes[:300], noise[:300], codes[300:], noise[300:]) < 0.7


def test_string_labels_and_bad_input_to_the_metrics():
    codes = torch.randn(200, 3)
    names = ["left" if c < 0 else "right" for c in codes[:, 0].tolist()]
    assert linear_probe(codes[:150], names[:150], codes[150:], names[150:]) > 0.9
    with pytest.raises(ValueError, match="y_train holds one class"):
        linear_probe(codes[:150], ["left"] * 150, codes[150:], names[150:])
    with pytest.raises(ValueError, match="y_test has 150 labels for 50 rows"):
        linear_probe(codes[:150], names[:150], codes[150:], names[:150])
    with pytest.raises(ValueError, match=r"rows have shape \(3,\) and the data's \(4,\)"):
        mmd(codes, torch.randn(10, 4))
    with pytest.raises(ValueError, match="bandwidth must be positive, not nan"):
        mmd(codes, codes, bandwidth=float("nan"))
