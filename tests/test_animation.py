"""Denoising animations (GIF, and MP4 when ffmpeg exists) and the sample command's dimension/architecture
flags."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from polyscale.cli.main import main
from polyscale.diffusion import append_dims, get_sampler, sigmas_karras
from polyscale.pipelines.sample import sample_checkpoint
from polyscale.viz import animation
from polyscale.viz.animation import (
    DenoisingRecorder,
    find_ffmpeg,
    pad_to_even,
    render_denoising_frames,
    save_denoising_animation,
    save_denoising_gif,
    save_denoising_mp4,
)


def _shrink(x, sigma):  # a stand-in denoiser with a closed form: the optimum for N(0, 0.25) data
    return x * 0.25 / (0.25 + append_dims(sigma, x.ndim) ** 2)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp2m", "ddim", "ddpm", "pc", "ode", "ode_adaptive"])
def test_recorder_keeps_every_kth_step_of_the_first_run_only(name):
    sigmas = sigmas_karras(9, 0.01, 10.0)
    rec = DenoisingRecorder(interval=3, max_samples=2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # a second batch must not overwrite the first one's frames
        x = torch.randn(4, 1, 8, 8, generator=gen) * sigmas[0]
        get_sampler(name)(_shrink, x, sigmas, generator=gen, callback=rec, disable=True)
        if not rec.frames:
            pytest.fail("no frame recorded")
        first = {i: f[1].clone() for i, f in rec.frames.items()}
    assert sorted(rec.frames) == [0, 3, 6]
    assert all(torch.equal(rec.frames[i][1], first[i]) for i in first)
    assert rec.frames[0][1].shape == (2, 1, 8, 8) and rec.frames[0][0] == pytest.approx(10.0)


def test_recorder_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval must be an integer >= 1, got 0"):
        DenoisingRecorder(interval=0)


@pytest.mark.parametrize("shape", [(3, 1, 20), (3, 1, 8, 8), (3, 1, 4, 4, 4)])
def test_gif_has_one_frame_per_recorded_step(tmp_path: Path, shape):
    frames = [(i, 1.0 / (i + 1), torch.rand(shape), torch.rand(shape)) for i in range(4)]
    path = save_denoising_gif(frames, tmp_path / "a.gif")
    with Image.open(path) as im:
        assert im.format == "GIF"
        pictures = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    assert len(pictures) == 4 and len({p.size for p in pictures}) == 1
    assert pictures[0].tobytes() != pictures[-1].tobytes()
    with pytest.raises(ValueError, match="at least one frame"):
        save_denoising_gif([], tmp_path / "b.gif")


@pytest.mark.parametrize("dim, shape", [(1, (2, 1, 40)), (2, (2, 1, 16, 16)), (3, (2, 1, 32, 32, 32))])
def test_sample_by_dim_with_animation(tmp_path: Path, capsys, dim, shape):
    out = tmp_path / "s.png"
    argv = ["sample", "--dim", str(dim), "--num-samples", "2", "--timesteps", "4", "--device", "cpu"]
    assert main([*argv, "--output-file", str(out), "--create-animation", "--animation-interval", "2"]) == 0
    assert out.is_file() and out.with_suffix(".gif").is_file()
    with Image.open(out.with_suffix(".gif")) as im:
        assert im.n_frames == 3  # steps 0 and 2, then the final samples
    printed = capsys.readouterr().out
    assert "s.gif" in printed
    assert out.with_suffix(".mp4").is_file() == (find_ffmpeg() is not None) == ("s.mp4" in printed)


def test_architecture_flags_that_contradict_the_checkpoint_are_errors(tmp_path: Path, capsys):
    with pytest.raises(ValueError, match="has base_channels=32, but base_channels=64 was requested"):
        sample_checkpoint("digits2d", num_samples=1, steps=2, device="cpu", base_channels=64, progress=False)
    with pytest.raises(ValueError, match="has dims=2, but dims=3 was requested"):
        sample_checkpoint("digits2d", num_samples=1, steps=2, device="cpu", dims=3, progress=False)
    argv = ["sample", "--checkpoint", "digits2d", "--channels", "3", "--output-file", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert "in_channels=1, but in_channels=3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ MP4


def _frames(shape: tuple[int, ...], n: int = 4) -> list:
    gen = torch.Generator().manual_seed(0)
    return [
        (i, 1.0 / (i + 1), torch.rand(shape, generator=gen), torch.rand(shape, generator=gen))
        for i in range(n)
    ]


@pytest.mark.parametrize("shape", [(3, 1, 20), (3, 1, 8, 8)])
def test_mp4_has_the_gifs_frames(tmp_path: Path, shape):
    if find_ffmpeg() is None:
        pytest.skip("no ffmpeg on PATH and no imageio-ffmpeg")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # the reader used to check the file
    frames = _frames(shape)
    written = save_denoising_animation(frames, tmp_path / "a.png")
    assert [p.name for p in written] == ["a.gif", "a.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no temporary files left
    with Image.open(written[0]) as im:
        gif_frames = im.n_frames
    assert written[1].stat().st_size > 0
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(written[1]))
    assert n_frames == gif_frames == len(frames)
    reader = imageio_ffmpeg.read_frames(str(written[1]))
    meta = next(reader)
    expected = [pad_to_even(p) for p in render_denoising_frames(frames)]
    h, w = expected[0].shape[:2]
    assert tuple(meta["size"]) == (w, h) and h % 2 == 0 and w % 2 == 0
    decoded = [np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3) for raw in reader]
    assert len(decoded) == len(frames)
    errors = [
        np.abs(d.astype(float) - e.astype(float)).mean() for d, e in zip(decoded, expected, strict=True)
    ]
    assert max(errors) < 6  # lossy, but each video frame is its own picture ...
    swapped = np.abs(decoded[0].astype(float) - expected[-1].astype(float)).mean()
    assert swapped > max(errors)  # ... and not another one


def test_mp4_of_odd_sized_pictures_is_padded_to_even(tmp_path: Path, monkeypatch):
    if find_ffmpeg() is None:
        pytest.skip("no ffmpeg on PATH and no imageio-ffmpeg")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    ramp = np.linspace(0, 255, 51).astype(np.uint8)  # (W,) a horizontal gradient, 37 x 51 pixels
    pictures = [np.broadcast_to(ramp[None, :, None], (37, 51, 3)).copy() for _ in range(3)]
    monkeypatch.setattr(animation, "render_denoising_frames", lambda frames: pictures)
    path = save_denoising_mp4(_frames((1, 1, 8, 8), n=3), tmp_path / "odd.mp4")
    reader = imageio_ffmpeg.read_frames(str(path))
    assert tuple(next(reader)["size"]) == (52, 38)
    first = np.frombuffer(next(reader), dtype=np.uint8).reshape(38, 52, 3)
    assert np.abs(first[:37, :51].astype(float) - pictures[0]).mean() < 6
    assert len(list(reader)) == 2


def test_without_ffmpeg_only_the_gif_is_written(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(animation, "find_ffmpeg", lambda: None)
    written = save_denoising_animation(_frames((2, 1, 8, 8)), tmp_path / "a.png")
    assert [p.name for p in written] == ["a.gif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]
    with pytest.raises(FileNotFoundError, match="needs ffmpeg"):
        save_denoising_mp4(_frames((2, 1, 8, 8)), tmp_path / "a.mp4")


def test_sample_without_ffmpeg_writes_the_gif_alone(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(animation, "find_ffmpeg", lambda: None)
    out = tmp_path / "s.png"
    argv = ["sample", "--num-samples", "1", "--timesteps", "2", "--device", "cpu", "--output-file", str(out)]
    assert main([*argv, "--create-animation"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.gif", "s.png"]
    assert capsys.readouterr().err.count("error") == 0


def test_find_ffmpeg_prefers_path_then_imageio_ffmpeg_then_none(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert find_ffmpeg() == "/opt/bin/ffmpeg"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails: the package is absent
    assert find_ffmpeg() is None


def test_ffmpeg_failure_is_an_error_naming_the_file(tmp_path: Path):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable")
    with pytest.raises(OSError, match="could not write .*a.mp4: exit code 1"):
        save_denoising_mp4(_frames((2, 1, 8, 8), n=2), tmp_path / "a.mp4", ffmpeg=false)
    assert list(tmp_path.iterdir()) == []


def test_pad_to_even_pads_odd_sides_only():
    picture = np.zeros((5, 6, 3), dtype=np.uint8)
    padded = pad_to_even(picture)
    assert padded.shape == (6, 6, 3) and (padded[5] == 255).all() and (padded[:5] == 0).all()
    assert np.array_equal(pad_to_even(padded), padded)  # already even: unchanged
