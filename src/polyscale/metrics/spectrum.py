"""Texture statistics of 2D images: radially averaged power spectrum and grey-level histogram, with errors.

Both compare *sets* of images ``(N, C, H, W)`` (model space, images in [-1, 1]); neither needs aligned pairs,
so they judge a texture generator by what it makes, not by which crop it would have copied.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_images(x: Tensor, name: str = "x") -> None:
    if x.ndim != 4 or x.shape[0] < 1 or min(x.shape[2:]) < 2:
        raise ValueError(
            f"{name} must be 2D images (N, C, H, W) with N >= 1 and H, W >= 2, got shape {tuple(x.shape)}"
        )


def _radius_bins(h: int, w: int) -> Tensor:
    """Rounded radial frequency of each FFT position ``(H, W)``, int64, in units of ``1 / min(H, W)`` cycles/px.

    ``fftfreq`` gives cycles per pixel; scaling by ``min(H, W)`` makes the radius the integer wavenumber along
    the shorter axis (exact for square images), so bin ``k`` is the frequency ``k / min(H, W)`` cycles/px.
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]  # (H, 1)
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]  # (1, W)
    return (min(h, w) * (fy.pow(2) + fx.pow(2)).sqrt()).round().long()  # (H, W)


def windows(x: Tensor, edge: int) -> Tensor:
    """Non-overlapping ``edge x edge`` windows of images ``(N, C, H, W)``, shape ``(N * h' * w', C, edge, edge)``
    with ``h' = H // edge`` and ``w' = W // edge``.

    Statistics of images larger than the available real ones are compared window by window with real images of
    size ``edge`` (the local statistics a stationary model must reproduce); a remainder past the last full window
    is left out.
    """
    _check_images(x)
    if not 2 <= edge <= min(x.shape[2:]):
        raise ValueError(
            f"edge must be in [2, {min(x.shape[2:])}] for images of shape {tuple(x.shape)}, got {edge}"
        )
    n, c, h, w = x.shape
    x = x[:, :, : h - h % edge, : w - w % edge]
    x = x.reshape(n, c, h // edge, edge, w // edge, edge).permute(0, 2, 4, 1, 3, 5)  # (N, h', w', C, e, e)
    return x.reshape(-1, c, edge, edge)


def radial_power_spectrum(x: Tensor) -> Tensor:
    """Radially averaged power spectrum of images ``(N, C, H, W)``, shape ``(min(H, W) // 2 + 1,)`` float64.

    Each image channel has its mean subtracted (so bin 0 is 0 and a brightness offset does not swamp the
    rest), then ``P(k) = |FFT(x)(k)|^2 / (H * W)`` is averaged over samples, channels and every frequency whose
    rounded radius is ``k`` (see :func:`_radius_bins`; corners beyond ``min(H, W) // 2`` are left out).

    Normalisation: dividing by ``H * W`` makes the spectrum a power per frequency independent of size: white
    noise of variance ``s^2`` has ``P(k) = s^2`` at every ``k >= 1`` and every image size (Parseval:
    ``sum_k |FFT|^2 = H W sum_x x^2``). Spectra of two sizes agree at equal *physical* frequency, which is bin
    ``k`` at one size and bin ``k * min(H', W') / min(H, W)`` at the other.
    """
    _check_images(x)
    _, _, h, w = x.shape
    v = x.detach().to(device="cpu", dtype=torch.float64)
    v = v - v.mean(dim=(2, 3), keepdim=True)  # (N, C, H, W) mean-free per image and channel
    power = torch.fft.fft2(v).abs().pow(2).mean(dim=(0, 1)) / (h * w)  # (H, W)
    radius = _radius_bins(h, w).flatten()  # (H * W,)
    num_bins = min(h, w) // 2 + 1
    keep = radius < num_bins
    sums = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, radius[keep], power.flatten()[keep])
    return sums / torch.bincount(radius[keep], minlength=num_bins)  # every bin holds >= 1 frequency


def spectrum_error(a: Tensor, b: Tensor, *, eps: float = 1e-12) -> float:
    """RMS over ``k >= 1`` of ``log10 P_a(k) - log10 P_b(k)`` for image sets ``(N, C, H, W)`` and ``(M, C, H, W)``.

    In decades: 1.0 means the spectra differ by a factor 10 on average (log scale, so the faint high
    frequencies count as much as the strong low ones). Bin 0 is skipped (it is 0 after mean subtraction).

    Args:
        eps: added to both spectra before the log, so a flat (constant) image gives a large finite error.
    """
    _check_images(a, "a")
    _check_images(b, "b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"image sets must have the same (C, H, W), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    pa, pb = radial_power_spectrum(a)[1:], radial_power_spectrum(b)[1:]  # (R - 1,)
    return float(((pa + eps).log10() - (pb + eps).log10()).pow(2).mean().sqrt())


def grey_level_histogram(x: Tensor, *, bins: int = 32, range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Share of all values of ``x`` (any shape; channels pooled) in each of ``bins`` equal bins, ``(bins,)`` float64.

    Values outside ``range`` count in the first or last bin: that is where they end up once the images are
    clipped for display, and a histogram that dropped them would hide a generator's overshoot.
    """
    lo, hi = range
    if bins < 1 or not lo < hi:
        raise ValueError(f"need bins >= 1 and range (lo, hi) with lo < hi, got bins={bins}, range={range}")
    if x.numel() == 0:
        raise ValueError(f"cannot take the histogram of an empty tensor of shape {tuple(x.shape)}")
    v = x.detach().to(device="cpu", dtype=torch.float64).flatten().clamp(lo, hi)
    counts = torch.histc(v, bins=bins, min=lo, max=hi)  # (bins,) the top edge falls in the last bin
    return counts / counts.sum()


def histogram_error(
    a: Tensor, b: Tensor, *, bins: int = 32, range: tuple[float, float] = (-1.0, 1.0)
) -> float:
    """Total variation ``0.5 * sum |p - q|`` between the grey-level histograms of ``a`` and ``b``, in [0, 1].

    0 for identical histograms, 1 for disjoint ones (no value of ``a`` shares a bin with a value of ``b``).
    """
    p = grey_level_histogram(a, bins=bins, range=range)
    q = grey_level_histogram(b, bins=bins, range=range)
    return float(0.5 * (p - q).abs().sum())
