"""Pictures of samples: image grids (2D), line plots (1D) and orthogonal-slice montages (3D).

All functions take channel-first tensors already mapped to the display range [0, 1] (call the dataset's
``denormalize`` first) and write a PNG. They return the path written.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from polyscale.atomic import atomic_write_bytes


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def make_grid(images: Tensor, *, nrow: int | None = None, padding: int = 1) -> Tensor:
    """Tile images ``(B, C, H, W)`` into one image ``(C, H', W')`` with ``nrow`` images per row."""
    if images.ndim != 4:
        raise ValueError(f"make_grid expects (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = images.new_ones(c, ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    for k in range(b):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def _save_png(array: np.ndarray, path: str | Path, *, upscale: int = 1) -> Path:
    img = Image.fromarray(array)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def save_image_grid(images: Tensor, path: str | Path, *, nrow: int | None = None, upscale: int = 4) -> Path:
    """Save ``(B, C, H, W)`` images in [0, 1] (C = 1 or 3) as one PNG grid."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_image_grid expects (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
    grid = _to_uint8(make_grid(images, nrow=nrow))  # (C, H', W')
    array = grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0)
    return _save_png(array, path, upscale=upscale)


def _figure_to_png(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def line_plots_figure(signals: Tensor, *, ncols: int | None = None):
    """A matplotlib figure of 1D signals ``(B, C, L)``: one panel per sample, a line per channel."""
    if signals.ndim != 3:
        raise ValueError(f"expected 1D signals (B, C, L), got shape {tuple(signals.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = signals.shape[0]
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 1.2 * nrows), squeeze=False)
    data = signals.detach().float().cpu().numpy()
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < b:
            for ch in data[k]:
                ax.plot(ch, linewidth=1.0)
    return fig


def save_line_plots(signals: Tensor, path: str | Path, *, ncols: int | None = None) -> Path:
    """Save 1D signals ``(B, C, L)`` as a grid of small line plots (one panel per sample, a line per channel)."""
    return _figure_to_png(line_plots_figure(signals, ncols=ncols), path)


def volume_slice_tiles(volumes: Tensor) -> Tensor:
    """The three central orthogonal slices (D-, H-, W-normal) of each volume ``(B, C, D, H, W)`` (first channel),
    padded to a common square: ``(3B, 1, S, S)``, three tiles per sample in a row."""
    if volumes.ndim != 5:
        raise ValueError(f"expected volumes (B, C, D, H, W), got shape {tuple(volumes.shape)}")
    v = volumes[:, 0]  # (B, D, H, W)
    _, d, h, w = v.shape
    size = max(d, h, w)
    rows = []
    for vol in v:
        panels = [vol[d // 2], vol[:, h // 2], vol[:, :, w // 2]]  # (H, W), (D, W), (D, H)
        padded = [
            torch.nn.functional.pad(p, (0, size - p.shape[1], 0, size - p.shape[0]), value=1.0)
            for p in panels
        ]
        rows.append(torch.stack(padded)[:, None])  # (3, 1, size, size)
    return torch.cat(rows)  # (3B, 1, size, size)


def save_volume_slices(volumes: Tensor, path: str | Path, *, upscale: int = 2) -> Path:
    """Save volumes ``(B, C, D, H, W)`` in [0, 1] as a montage: one row per sample, the three central orthogonal
    slices side by side (first channel only)."""
    return save_image_grid(volume_slice_tiles(volumes), path, nrow=3, upscale=upscale)
