"""Denoising animations and the sample command's dimension/architecture flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageSequence

from polyscale.cli.main import main
from polyscale.diffusion import append_dims, get_sampler, sigmas_karras
from polyscale.pipelines.sample import sample_checkpoint
from polyscale.viz.animation import DenoisingRecorder, save_denoising_gif


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


@pytest.mark.parametrize("dim, shape", [(1, (2, 1, 40)), (2, (2, 1, 16, 16)), (3, (2, 1, 16, 16, 16))])
def test_sample_by_dim_with_animation(tmp_path: Path, capsys, dim, shape):
    out = tmp_path / "s.png"
    argv = ["sample", "--dim", str(dim), "--num-samples", "2", "--timesteps", "4", "--device", "cpu"]
    assert main([*argv, "--output-file", str(out), "--create-animation", "--animation-interval", "2"]) == 0
    assert out.is_file() and out.with_suffix(".gif").is_file()
    with Image.open(out.with_suffix(".gif")) as im:
        assert im.n_frames == 3  # steps 0 and 2, then the final samples
    assert "s.gif" in capsys.readouterr().out


def test_architecture_flags_that_contradict_the_checkpoint_are_errors(tmp_path: Path, capsys):
    with pytest.raises(ValueError, match="has base_channels=32, but base_channels=64 was requested"):
        sample_checkpoint("digits2d", num_samples=1, steps=2, device="cpu", base_channels=64, progress=False)
    with pytest.raises(ValueError, match="has dims=2, but dims=3 was requested"):
        sample_checkpoint("digits2d", num_samples=1, steps=2, device="cpu", dims=3, progress=False)
    argv = ["sample", "--checkpoint", "digits2d", "--channels", "3", "--output-file", str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert "in_channels=1, but in_channels=3" in capsys.readouterr().err
