"""Sliced Wasserstein: known answers (identical sets, translations, scalings) and errors."""

from __future__ import annotations

import math

import pytest
import torch

from polyscale.metrics.sliced_wasserstein import sliced_wasserstein


def test_identical_sets_are_at_distance_zero():
    x = torch.randn(100, 3, 4)
    assert sliced_wasserstein(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x[torch.randperm(100)]) == pytest.approx(0.0, abs=1e-12)


def test_translation_gives_norm_over_sqrt_d():
    # every 1D projection is shifted by theta . c, so SW^2 = E[(theta . c)^2] = |c|^2 / d
    d = 8
    x = torch.randn(500, d, generator=torch.Generator().manual_seed(0))
    c = torch.full((d,), 0.5)
    got = sliced_wasserstein(x, x + c, num_projections=4000, generator=torch.Generator().manual_seed(1))
    assert got == pytest.approx(float(c.norm()) / math.sqrt(d), rel=0.03)


def test_scaled_gaussians_and_unequal_sizes():
    # N(0, I) vs N(0, 4 I) in 1D projections: quantiles differ by a factor 2, so SW ~ 1 (the std gap)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 2, generator=g), 2 * torch.randn(3000, 2, generator=g)
    assert sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(2)) == pytest.approx(1.0, rel=0.1)
    assert sliced_wasserstein(x[:2000], x[2000:]) < 0.1


def test_errors():
    with pytest.raises(ValueError, match="same per-sample shape"):
        sliced_wasserstein(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        sliced_wasserstein(torch.randn(1, 2), torch.randn(4, 2))
