"""Texture statistics: power spectrum known answers (white noise, a cosine), histogram distances, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from polyscale.metrics.spectrum import (
    grey_level_histogram,
    histogram_error,
    radial_power_spectrum,
    spectrum_error,
    windows,
)


@pytest.mark.parametrize("size", [32, 64])
def test_white_noise_has_a_flat_spectrum_at_its_variance_at_every_size(size: int):
    g = torch.Generator().manual_seed(size)
    std = 0.5
    x = std * torch.randn(64, 1, size, size, generator=g, dtype=torch.float64)
    spectrum = radial_power_spectrum(x)
    assert spectrum.shape == (size // 2 + 1,) and spectrum.dtype == torch.float64
    assert spectrum[0] == pytest.approx(0.0, abs=1e-20)  # the mean is subtracted per image
    # bin 1 averages the fewest values (8 frequencies x 64 images: exponential power, ~4% spread)
    torch.testing.assert_close(spectrum[1:], torch.full_like(spectrum[1:], std**2), rtol=0.15, atol=0)


def test_a_cosine_puts_all_its_power_at_its_frequency():
    h, w, k0 = 32, 32, 5
    cols = torch.arange(w, dtype=torch.float64)
    x = torch.cos(2 * math.pi * k0 * cols / w).expand(3, 2, h, w)  # (N, C, H, W), the same wave everywhere
    spectrum = radial_power_spectrum(x)
    assert int(spectrum.argmax()) == k0
    others = torch.cat([spectrum[:k0], spectrum[k0 + 1 :]])
    assert float(others.abs().max()) < 1e-20 * float(spectrum[k0]) + 1e-24
    # Parseval: the power of a unit cosine (mean square 1/2) spread over the bin's lattice points
    radius = (torch.fft.fftfreq(h)[:, None].pow(2) + torch.fft.fftfreq(w)[None, :].pow(2)).sqrt() * h
    in_bin = int((radius.round() == k0).sum())
    assert float(spectrum[k0]) == pytest.approx(h * w * 0.5 / in_bin, rel=1e-9)


def test_a_rectangular_image_uses_the_shorter_side():
    x = torch.randn(2, 1, 16, 40, generator=torch.Generator().manual_seed(0))
    assert radial_power_spectrum(x).shape == (9,)


def test_identical_sets_have_zero_errors_and_noise_levels_differ_by_their_variance_ratio():
    g = torch.Generator().manual_seed(1)
    a = 0.3 * torch.randn(16, 1, 32, 32, generator=g)
    assert spectrum_error(a, a) == 0.0 and histogram_error(a, a) == 0.0
    # white noise 10x louder: power x100 at every frequency, two decades
    louder = 3.0 * torch.randn(16, 1, 32, 32, generator=g)
    assert spectrum_error(a, louder) == pytest.approx(2.0, abs=0.1)


def test_histogram_of_disjoint_supports_has_total_variation_one():
    dark, light = torch.full((4, 1, 8, 8), -0.8), torch.full((4, 1, 8, 8), 0.8)
    assert histogram_error(dark, light) == pytest.approx(1.0)
    half = torch.cat([dark, light])
    assert histogram_error(dark, half) == pytest.approx(0.5)


def test_histogram_is_a_distribution_and_keeps_out_of_range_values_in_the_edge_bins():
    x = torch.tensor([-3.0, -1.0, 0.01, 0.99, 1.0, 7.0])
    p = grey_level_histogram(x, bins=4)
    assert p.dtype == torch.float64 and float(p.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(p, torch.tensor([2, 0, 1, 3], dtype=torch.float64) / 6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: radial_power_spectrum(torch.zeros(4, 16, 16)), "x must be 2D images \\(N, C, H, W\\)"),
        (lambda: radial_power_spectrum(torch.zeros(2, 1, 1, 16)), "H, W >= 2"),
        (lambda: spectrum_error(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 16, 16)), "same \\(C, H, W\\)"),
        (lambda: spectrum_error(torch.zeros(2, 8, 8), torch.zeros(2, 1, 8, 8)), "a must be 2D images"),
        (lambda: grey_level_histogram(torch.zeros(3), bins=0), "need bins >= 1"),
        (lambda: grey_level_histogram(torch.zeros(3), range=(1.0, -1.0)), "lo < hi"),
        (lambda: grey_level_histogram(torch.zeros(0)), "empty tensor"),
    ],
)
def test_bad_inputs_are_named(call, message: str):
    with pytest.raises(ValueError, match=message):
        call()


def test_windows_tile_the_image_without_overlap():
    x = torch.arange(2 * 1 * 6 * 9, dtype=torch.float64).reshape(2, 1, 6, 9)
    w = windows(x, 3)
    assert w.shape == (2 * 2 * 3, 1, 3, 3)
    torch.testing.assert_close(w[0], x[0, :, :3, :3])
    torch.testing.assert_close(w[1], x[0, :, :3, 3:6])  # row-major over the window grid
    torch.testing.assert_close(w[3], x[0, :, 3:6, :3])
    torch.testing.assert_close(w[6], x[1, :, :3, :3])
    assert windows(x, 4).shape == (2 * 1 * 2, 1, 4, 4)  # the remainder past the last full window is left out
    with pytest.raises(ValueError, match="edge must be in"):
        windows(x, 7)
