"""Animations of the denoising process: each frame shows the current ``x`` beside the denoised estimate.

``DenoisingRecorder`` is a sampler callback (the sampler contract's ``callback``) that keeps every K-th step;
``render_denoising_frames`` draws the kept frames (1D line plots, 2D image grids, 3D orthogonal slices);
``save_denoising_gif`` writes them as an animated GIF with Pillow, ``save_denoising_mp4`` as an H.264 (or
MPEG-4 part 2) video through an ffmpeg binary, and ``save_denoising_animation`` writes the GIF plus the MP4
whenever ``find_ffmpeg`` finds ffmpeg (on ``PATH``, or the binary of the optional ``imageio-ffmpeg`` package,
``pip install polyscale[video]``). Tensors passed here are already in display space (see
``polyscale.pipelines.datasets.to_display``): [0, 1] for images and media, raw values for 1D signals.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from polyscale.atomic import atomic_write_bytes
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


def render_denoising_frames(frames: list[tuple[int, float, Tensor, Tensor]]) -> list[np.ndarray]:
    """Draw each ``(step, sigma, x, denoised)`` as one RGB picture: ``x`` (left) beside ``denoised`` (right).

    ``x`` and ``denoised`` are ``(B, C, *spatial)`` in display space. Returns uint8 arrays ``(H, W, 3)``, all
    of one size (the largest drawn; smaller frames are resized to it).
    """
    if not frames:
        raise ValueError("an animation needs at least one frame, got none")
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
    return [np.asarray(p if p.size == size else p.resize(size)) for p in pictures]


def _check_frame_ms(frame_ms: int) -> None:
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int) or frame_ms < 1:
        raise ValueError(f"frame_ms must be an integer >= 1 (milliseconds per frame), got {frame_ms!r}")


def _write_gif(pictures: list[np.ndarray], path: str | Path, *, frame_ms: int) -> Path:
    """Animated GIF of ``pictures`` (``(H, W, 3)`` uint8), the last one held three times as long."""
    _check_frame_ms(frame_ms)
    images = [Image.fromarray(p) for p in pictures]
    durations = [frame_ms] * (len(images) - 1) + [3 * frame_ms]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return atomic_write_bytes(Path(path), buf.getvalue())


def save_denoising_gif(
    frames: list[tuple[int, float, Tensor, Tensor]], path: str | Path, *, frame_ms: int = 200
) -> Path:
    """Write an animated GIF: per frame, ``x`` (left) beside the denoised estimate (right).

    Args:
        frames: ``(step, sigma, x, denoised)`` in display space, ``x`` and ``denoised`` shaped
            ``(B, C, *spatial)``; the last frame is held three times as long.
        path: the ``.gif`` to write (atomically).
    """
    return _write_gif(render_denoising_frames(frames), path, frame_ms=frame_ms)


# ------------------------------------------------------------------------------------------------------ video


def find_ffmpeg() -> str | None:
    """Path of an ffmpeg executable: ``ffmpeg`` on ``PATH``, else the one bundled with the optional
    ``imageio-ffmpeg`` package; ``None`` when neither exists (MP4 output is then skipped)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # optional: the `video` extra
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (RuntimeError, OSError):  # the package is installed but has no binary for this platform
        return None


@functools.lru_cache(maxsize=8)
def _video_codec(ffmpeg: str) -> tuple[str, ...]:
    """Encoder arguments for ``ffmpeg``: H.264 when it was built with libx264, else its native MPEG-4."""
    listing = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    )
    if " libx264 " in listing.stdout:
        return ("-c:v", "libx264", "-crf", "18")
    return ("-c:v", "mpeg4", "-q:v", "2")


def pad_to_even(picture: np.ndarray) -> np.ndarray:
    """Pad ``(H, W, 3)`` with white at the bottom/right to even ``H`` and ``W`` (yuv420p halves both axes)."""
    h, w = picture.shape[:2]
    return np.pad(picture, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


def _write_mp4(pictures: list[np.ndarray], path: str | Path, *, frame_ms: int, ffmpeg: str) -> Path:
    """Pipe ``pictures`` (``(H, W, 3)`` uint8, one size) as raw RGB into ``ffmpeg``; one video frame each."""
    _check_frame_ms(frame_ms)
    path = Path(path)
    frames = [pad_to_even(p) for p in pictures]
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        encoded = Path(tmp) / "video.mp4"  # ffmpeg writes here; the target is then replaced atomically
        command = [
            ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
            # input: raw RGB frames on stdin at 1000 / frame_ms frames per second
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", f"1000/{frame_ms}",
            "-i", "-",
            # output: no audio, yuv420p (what players expect), index up front for streaming
            "-an", *_video_codec(ffmpeg), "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4",
            str(encoded),
        ]  # fmt: skip
        done = subprocess.run(command, input=b"".join(f.tobytes() for f in frames), capture_output=True)
        if done.returncode != 0 or not encoded.is_file():
            reason = " ".join(done.stderr.decode(errors="replace").split()[-40:]) or "no message"
            raise OSError(f"ffmpeg ({ffmpeg}) could not write {path}: exit code {done.returncode}: {reason}")
        return atomic_write_bytes(path, encoded.read_bytes())


def save_denoising_mp4(
    frames: list[tuple[int, float, Tensor, Tensor]],
    path: str | Path,
    *,
    frame_ms: int = 200,
    ffmpeg: str | None = None,
) -> Path:
    """Write an MP4 (yuv420p, padded to even size) with one video frame per ``(step, sigma, x, denoised)``.

    Args:
        frames: as for :func:`save_denoising_gif`.
        path: the ``.mp4`` to write (atomically).
        ffmpeg: the executable to use (default :func:`find_ffmpeg`).

    Raises:
        FileNotFoundError: no ffmpeg was given or found.
        OSError: ffmpeg failed (the message carries its last words).
    """
    ffmpeg = ffmpeg or find_ffmpeg()
    if ffmpeg is None:
        raise FileNotFoundError(
            "writing an MP4 needs ffmpeg: expected it on PATH or `pip install imageio-ffmpeg`, found neither"
        )
    return _write_mp4(render_denoising_frames(frames), path, frame_ms=frame_ms, ffmpeg=ffmpeg)


def save_denoising_animation(
    frames: list[tuple[int, float, Tensor, Tensor]], path: str | Path, *, frame_ms: int = 200
) -> list[Path]:
    """Write ``path`` with suffix ``.gif`` and, when :func:`find_ffmpeg` finds ffmpeg, also ``.mp4``.

    The frames are drawn once for both. The MP4 has one video frame per GIF frame at ``1000 / frame_ms``
    frames per second (the GIF additionally holds its last frame longer). Returns the paths written.
    """
    path = Path(path)
    pictures = render_denoising_frames(frames)
    written = [_write_gif(pictures, path.with_suffix(".gif"), frame_ms=frame_ms)]
    ffmpeg = find_ffmpeg()
    if ffmpeg is not None:
        written.append(_write_mp4(pictures, path.with_suffix(".mp4"), frame_ms=frame_ms, ffmpeg=ffmpeg))
    return written
