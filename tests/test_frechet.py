"""Fréchet distance: known answers (identical, translated, Gaussian closed form) and a scipy sqrtm oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from polyscale.metrics.frechet import frechet_distance


def _gaussian(n: int, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(n, D)`` samples of independent normals with the given means and standard deviations, float64."""
    return mean + std * torch.randn(n, mean.shape[0], generator=generator, dtype=torch.float64)


def test_a_set_is_at_distance_zero_from_itself():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated features
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_translating_one_set_adds_the_squared_shift():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(200, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16)
    shift = torch.randn(16, generator=g, dtype=torch.float64)
    expected = float(shift.pow(2).sum())
    assert frechet_distance(feats + shift, feats) == pytest.approx(expected, rel=1e-9)


def test_gaussian_samples_match_the_closed_form_for_diagonal_covariances():
    # d^2 = |mu1 - mu2|^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i)) for variances s1, s2
    g = torch.Generator().manual_seed(2)
    d = 4
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64)
    std1 = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    std2 = torch.tensor([1.0, 0.5, 0.5, 3.0], dtype=torch.float64)
    s1, s2 = std1**2, std2**2
    expected = float(
        (mu1 - mu2).pow(2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    )  # 5.25 + 2.25 + 4 = 11.5
    a, b = _gaussian(40_000, mu1, std1, g), _gaussian(30_000, mu2, std2, g)
    # the estimate's spread is dominated by the mean term: std 2 sqrt(sum dmu^2 (s1/n1 + s2/n2)) ~ 0.075 (0.65%)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_matches_a_scipy_sqrtm_reference_for_full_covariances():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(120, 10, generator=g, dtype=torch.float64) @ torch.randn(
        10, 10, generator=g, dtype=torch.float64
    )
    b = torch.randn(90, 10, generator=g, dtype=torch.float64) @ torch.randn(
        10, 10, generator=g, dtype=torch.float64
    )
    a_np, b_np = a.numpy(), b.numpy()
    s_a, s_b = np.cov(a_np, rowvar=False), np.cov(b_np, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real  # the general (non-symmetric) matrix square root
    diff = a_np.mean(0) - b_np.mean(0)
    expected = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_rank_deficient_sets_give_a_finite_distance():
    # fewer samples than dimensions: singular covariances, as with a handful of samples in 128 features
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(8, 128, generator=g), torch.randn(8, 128, generator=g) + 1
    value = frechet_distance(a, b)
    assert math.isfinite(value) and value > 128 * 0.5  # the mean shift alone is |1|^2 per dimension


@pytest.mark.parametrize(
    "a_shape, b_shape, message",
    [
        ((10, 4), (10, 5), "same dimension D"),
        ((10, 4, 1), (10, 4), "feats_a must be \\(N, D\\)"),
        ((10, 4), (1, 4), "feats_b must be \\(N, D\\) features with N >= 2"),
    ],
)
def test_bad_shapes_are_named(a_shape, b_shape, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(torch.zeros(a_shape), torch.zeros(b_shape))
