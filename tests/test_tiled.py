"""Tiled (MultiDiffusion) denoising: exact for local denoisers, bounded window size, composes with samplers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polyscale.diffusion import (
    EDMPrecond,
    TiledDenoiser,
    append_dims,
    sample_heun,
    sigmas_karras,
    tile_starts,
)
from polyscale.nn.unet import UNet


class Local(nn.Module):
    """A denoiser whose output depends on a 3-wide neighbourhood per axis (radius 1): a fixed box blur."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.conv = getattr(nn, f"Conv{dims}d")(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / 3**dims)
        self.windows: list[tuple[int, ...]] = []

    def forward(self, x, sigma):
        self.windows.append(tuple(x.shape[2:]))
        return self.conv(x) / (1 + append_dims(sigma, x.ndim) ** 2)


def test_tile_starts_cover_and_end_at_the_border():
    assert tile_starts(10, 4, 3) == [0, 3, 6]
    assert tile_starts(11, 4, 3) == [0, 3, 6, 7]
    assert tile_starts(4, 8, 6) == [0]


@pytest.mark.parametrize("spatial", [(37,), (20, 28), (12, 10, 14)])
def test_pointwise_denoiser_is_unchanged_by_tiling(spatial):
    inner = Local(len(spatial))
    inner.conv.weight.data.zero_()
    inner.conv.weight.data[(0, 0, *([1] * len(spatial)))] = 1.0  # identity kernel: pointwise
    x, sigma = torch.randn(2, 1, *spatial), torch.tensor([0.5, 3.0])
    tiled = TiledDenoiser(inner, tile_size=8, overlap=2)
    torch.testing.assert_close(tiled(x, sigma), inner(x, sigma), rtol=0, atol=1e-6)
    assert all(w == (8,) * len(spatial) for w in inner.windows[:-1])  # every window full size, bounded memory


@pytest.mark.parametrize("spatial", [(40,), (24, 30), (14, 12, 16)])
def test_local_denoiser_is_exact_wherever_no_window_cuts_its_neighbourhood(spatial):
    inner = Local(len(spatial))  # radius 1
    x, sigma = torch.randn(1, 1, *spatial), torch.tensor([1.0])
    tiled = TiledDenoiser(inner, tile_size=8, overlap=4)
    got, want = tiled(x, sigma)[0, 0], inner(x, sigma)[0, 0]
    assert (got - want).abs().max() > 1e-4  # windows do cut the blur somewhere (so the check below can fail)
    cut = torch.zeros(
        spatial, dtype=torch.bool
    )  # positions some window sees without their full neighbourhood
    for window in tiled.windows(spatial):
        for axis, sl in enumerate(window):
            for pos, inner_edge in ((sl.start, sl.start > 0), (sl.stop - 1, sl.stop < spatial[axis])):
                if inner_edge:  # a window edge that is not the image border
                    index = list(window)
                    index[axis] = pos
                    cut[tuple(index)] = True
    assert (~cut).float().mean() > 0.25  # a real share of positions is checked
    torch.testing.assert_close(got[~cut], want[~cut], rtol=0, atol=1e-6)


def test_composes_with_a_sampler_and_a_unet_at_larger_size():
    torch.manual_seed(0)
    net = UNet(
        dims=2,
        in_channels=1,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        attention_kernel_sizes=(3,),
        num_heads=2,
    )
    for p in net.parameters():
        nn.init.normal_(p, std=0.05)
    denoiser = EDMPrecond(net).eval()
    tiled = TiledDenoiser(denoiser, tile_size=16, overlap=4, size_multiple=net.size_multiple)
    sigmas = sigmas_karras(3, 0.01, 10.0)
    x = torch.randn(1, 1, 40, 40) * sigmas[0]
    with torch.no_grad():
        out = sample_heun(tiled, x, sigmas, disable=True)
        big = tiled(x, sigmas[:1])
        whole = TiledDenoiser(denoiser, tile_size=64)(x, sigmas[:1])  # one window = the plain denoiser
        torch.testing.assert_close(whole, denoiser(x, sigmas[:1]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (big - whole).abs().max() > 0  # tiling changed a non-local network's output a little
    assert (big - whole).abs().mean() < 0.5 * whole.abs().mean()


class RingBlur(nn.Module):
    """Periodic local denoiser: a circular 3-wide box blur per axis (radius 1 on the torus)."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[tuple[int, ...]] = []

    def forward(self, x, sigma):
        self.windows.append(tuple(x.shape[2:]))
        for axis in range(2, x.ndim):
            x = (x.roll(1, axis) + x + x.roll(-1, axis)) / 3
        return x / (1 + append_dims(sigma, x.ndim) ** 2)


@pytest.mark.parametrize("spatial", [(40,), (30, 22), (14, 20, 9)])
def test_periodic_tiling_is_exact_for_a_local_periodic_denoiser(spatial):
    """Windows wrap around the borders and keep their core: with a margin (overlap // 2 = 2) at least the
    denoiser's radius (1), the tiled result equals the whole-torus call everywhere, borders included; the
    non-periodic tiling of the same denoiser does not."""
    inner = RingBlur()
    x, sigma = torch.randn(2, 1, *spatial), torch.tensor([0.3, 2.0])
    tiled = TiledDenoiser(inner, tile_size=10, overlap=4, periodic=True)
    torch.testing.assert_close(tiled(x, sigma), inner(x, sigma), rtol=0, atol=1e-6)
    assert all(max(w) <= 10 for w in inner.windows[:-1])  # bounded windows
    plain = TiledDenoiser(inner, tile_size=10, overlap=4)
    assert (plain(x, sigma) - inner(x, sigma)).abs().max() > 1e-3


def test_periodic_tiling_of_a_circular_unet_is_shift_equivariant():
    torch.manual_seed(0)
    net = UNet(dims=2, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
               attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2, padding_mode="circular")  # fmt: skip
    denoiser = EDMPrecond(net, sigma_data=0.5)
    tiled = TiledDenoiser(denoiser, tile_size=16, overlap=4, size_multiple=2, periodic=True)
    x, sigma = torch.randn(1, 1, 28, 28), torch.tensor([1.0])
    with (
        torch.no_grad()
    ):  # cores of 12 tile 28 = 0, 12, 16 (last moved back): a shift by 12 maps windows to windows
        y, shifted = tiled(x, sigma), tiled(x.roll((12, 12), (2, 3)), sigma)
    torch.testing.assert_close(shifted, y.roll((12, 12), (2, 3)), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tile_size=0), "tile_size must be an integer >= 1, got 0"),
        (dict(tile_size=8, overlap=8), r"overlap must be an integer in \[0, tile_size=8\), got 8"),
        (
            dict(tile_size=10, size_multiple=4),
            "tile_size 10 must be divisible by the network's size multiple 4",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TiledDenoiser(nn.Identity(), **kwargs)


@pytest.mark.long
def test_cli_samples_a_stationary_model_larger_than_trained_with_tiles(tmp_path):
    import numpy as np

    from polyscale.cli.main import main

    out = tmp_path / "big.png"
    argv = ["sample", "--dim", "3", "--resolution", "24", "--tile-size", "16", "--tile-overlap", "8"]
    assert (
        main([*argv, "--num-samples", "1", "--timesteps", "3", "--device", "cpu", "--output-file", str(out)])
        == 0
    )
    samples = np.load(out.with_suffix(".npy"))
    assert samples.shape == (1, 1, 24, 24, 24) and np.isfinite(samples).all()
    assert main([*argv[:-2], "--tile-overlap", "16", "--output-file", str(out)]) == 2  # overlap >= tile
