"""Animations of the denoising process: each frame shows the current ``x`` beside the denoised estimate.

``DenoisingRecorder`` is a sampler callback (the sampler contract's ``callback``) that keeps every K-th step;
``save_denoising_gif`` renders the kept frames (1D line plots, 2D image grids, 3D orthogonal slices) and
writes an animated GIF with Pillow. Tensors passed here are already in display space (see
``polyscale.pipelines.datasets.to_display``): [0, 1] for images and media, raw values for 1D signals.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from polyscale.io import atomic_write_bytes
from polyscale.viz.grids import line_plots_figure, make_grid, volume_slice_tiles


@dataclass
class DenoisingRecorder:
    """Sampler callback keeping ``(step, sigma, x, denoised)`` of the first ``max_samples`` samples every
    ``interval`` steps (the last report of a step wins, e.g. after a corrector). It records one sampling run:
    after the step that reaches ``sigma_next = 0`` it ignores further reports (later batches)."""

    interval: int = 1  # keep steps 0, K, 2K, ...
    max_samples: int = 16  # samples shown per frame
    frames: dict[int, tuple[float, Tensor, Tensor]] = field(default_factory=dict)
    finished: bool = False  # set once the recorded run reached sigma = 0

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"animation interval must be an integer >= 1, got {self.interval!r}")

    def __call__(self, info: dict[str, Any]) -> None:
        if self.finished:
            return
        i = int(info["i"])
        self.finished = float(info["sigma_next"]) == 0.0
        if i % self.interval == 0:
            keep = slice(0, self.max_samples)
            x, denoised = info["x"][keep].detach().cpu(), info["denoised"][keep].detach().cpu()
            self.frames[i] = (float(info["sigma"]), x, denoised)

    def ordered(self) -> list[tuple[int, float, Tensor, Tensor]]:
        return [(i, *self.frames[i]) for i in sorted(self.frames)]


def _figure_array(fig) -> np.ndarray:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def render_panel(
    shown: Tensor, *, upscale: int = 4, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """One picture ``(H, W, 3)`` uint8 of a batch in display space, by rank: 1D plots, 2D grid, 3D slices.

    ``value_range`` fixes the y-axis of 1D plots (so frames of an animation can share it).
    """
    dims = shown.ndim - 2
    if dims == 1:
        fig = line_plots_figure(shown)
        if value_range is not None:
            for ax in fig.axes:
                ax.set_ylim(*value_range)
        return _figure_array(fig)
    if dims == 2:
        images = shown if shown.shape[1] in (1, 3) else shown[:, :1]
        grid = make_grid(images.clamp(0, 1))
    elif dims == 3:
        grid = make_grid(volume_slice_tiles(shown.clamp(0, 1)), nrow=3)
    else:
        raise ValueError(f"expected (B, C, *spatial) with 1-3 spatial axes, got shape {tuple(shown.shape)}")
    array = (grid * 255).round().to(torch.uint8).numpy()  # (C, H, W)
    array = np.repeat(array, 3, axis=0) if array.shape[0] == 1 else array
    array = array.transpose(1, 2, 0)
    return np.kron(array, np.ones((upscale, upscale, 1), dtype=np.uint8)) if upscale > 1 else array


def _side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def save_denoising_gif(
    frames: list[tuple[int, float, Tensor, Tensor]], path: str | Path, *, frame_ms: int = 200
) -> Path:
    """Write an animated GIF: per frame, ``x`` (left) beside the denoised estimate (right).

    Args:
        frames: ``(step, sigma, x, denoised)`` in display space, ``x`` and ``denoised`` shaped
            ``(B, C, *spatial)``; the last frame is held three times as long.
        path: the ``.gif`` to write (atomically).
    """
    if not frames:
        raise ValueError("save_denoising_gif needs at least one frame, got none")
    value_range = None
    if frames[0][2].ndim == 3:  # 1D: the estimates share one y-range (from the last); noisy x scales itself
        final = frames[-1][3]
        pad = 0.1 * float(final.max() - final.min()) + 1e-6
        value_range = (float(final.min()) - pad, float(final.max()) + pad)
    pictures = []
    for _, _, x, denoised in frames:
        left = render_panel(x)
        right = render_panel(denoised, value_range=value_range)
        pictures.append(Image.fromarray(_side_by_side(left, right)))
    size = (max(p.width for p in pictures), max(p.height for p in pictures))
    pictures = [p if p.size == size else p.resize(size) for p in pictures]
    durations = [frame_ms] * (len(pictures) - 1) + [3 * frame_ms]
    buf = io.BytesIO()
    pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return atomic_write_bytes(Path(path), buf.getvalue())
