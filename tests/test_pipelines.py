"""End-to-end wiring: a tiny preset trains for a few steps, saves a model directory, samples from it (the
CLI's error reporting is tested in test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polyscale.cli.main import main
from polyscale.config import ConfigError
from polyscale.pipelines.experiment import load_experiment, preset_names
from polyscale.pipelines.sample import load_denoiser, sample_checkpoint
from polyscale.pipelines.train import train_experiment
from tiny import TINY_DIGITS

TINY = [*TINY_DIGITS, "train.max_steps=3", "train.checkpoint_every=2"]


def test_presets_validate():
    for name in preset_names():
        cfg = load_experiment(name)
        assert cfg.model.dims in (1, 2, 3)
    assert {"digits2d", "mnist1d", "porous3d", "texture2d"} <= set(preset_names())


def test_unknown_override_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_experiment("digits2d", overrides=["model.base_chanels=8"])
    assert "base_chanels" in str(err.value) and "base_channels" in str(err.value)


@pytest.mark.parametrize(
    "preset, extra",
    [
        ("digits2d", []),
        ("mnist1d", ["data.num_samples=64"]),
        ("porous3d", ["data.num_samples=4", "data.size=8", "data.crop_size=4"]),
        ("texture2d", ["data.num_samples=16", "data.crop_size=16"]),
    ],
)
def test_train_then_sample(tmp_path: Path, preset: str, extra: list[str]):
    cfg = load_experiment(preset, overrides=TINY + extra)
    result = train_experiment(cfg, tmp_path / "run")
    assert result.step == 3
    model_dir = tmp_path / "run" / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()

    denoiser, loaded_cfg, shape = load_denoiser(model_dir)
    assert loaded_cfg == cfg or loaded_cfg.model == cfg.model
    out = sample_checkpoint(
        model_dir, num_samples=2, output_file=tmp_path / "s.png", steps=3, device="cpu", progress=False
    )
    assert out.samples.shape == (2, *shape)
    assert torch.isfinite(out.samples).all()
    assert all(p.is_file() for p in out.files)
    if cfg.model.dims == 3:
        assert any(p.suffix == ".npy" for p in out.files)


def test_export_ema_writes_the_ema_weights_alone(tmp_path: Path):
    from polyscale.io import load_weights
    from polyscale.pipelines.export import export_ema

    cfg = load_experiment("digits2d", overrides=TINY)
    train_experiment(cfg, tmp_path / "run")
    src = tmp_path / "run" / "model"
    dest = export_ema(src, tmp_path / "shipped")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    ema, raw, shipped = (
        load_weights(p)
        for p in (src / "ema.safetensors", src / "model.safetensors", dest / "model.safetensors")
    )
    assert all(torch.equal(shipped[k], ema[k]) for k in ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in ema)  # so the check above could fail
    _, loaded_cfg, shape = load_denoiser(dest)
    assert loaded_cfg == cfg and shape == (1, 16, 16)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("digits2d", (1, 16, 16)),
        ("mnist1d", (1, 40)),
        ("porous3d", (1, 32, 32, 32)),
        ("texture2d", (1, 32, 32)),
    ],
)
def test_shipped_model_samples_from_the_cli(tmp_path: Path, capsys, name: str, shape: tuple[int, ...]):
    from polyscale.pipelines.sample import shipped_models

    assert name in shipped_models()
    out = tmp_path / "s.png"
    argv = ["sample", "--checkpoint", name, "--num-samples", "2", "--timesteps", "3"]
    assert main([*argv, "--output-file", str(out), "--device", "cpu", "--save-raw"]) == 0
    assert out.is_file() and out.with_suffix(".npy").is_file()
    samples = np.load(out.with_suffix(".npy"))
    assert samples.shape == (2, *shape) and np.isfinite(samples).all()
    assert samples.std() > 0.1  # a trained model, not an all-zero output
    assert "wrote" in capsys.readouterr().out


def test_init_from_starts_a_run_from_another_models_ema_weights(tmp_path: Path, capsys):
    from polyscale.io import load_weights, read_model_dir
    from polyscale.pipelines.train import make_denoiser

    cfg = load_experiment("digits2d", overrides=TINY)
    train_experiment(cfg, tmp_path / "a")
    source = load_weights(tmp_path / "a" / "model" / "ema.safetensors")
    # fine-tune on other data settings with a vanishing learning rate: the weights stay the source's EMA
    tuned_cfg = load_experiment("digits2d", overrides=[*TINY, "train.max_steps=1", "train.lr=1e-12"])
    train_experiment(tuned_cfg, tmp_path / "b", init_from=tmp_path / "a" / "model")
    tuned = load_weights(tmp_path / "b" / "model" / "model.safetensors")
    fresh = make_denoiser(tuned_cfg).net.state_dict()
    assert all(torch.allclose(tuned[k], source[k], atol=1e-8) for k in source)
    assert any(not torch.allclose(fresh[k], source[k], atol=1e-3) for k in source)  # the check could fail
    assert read_model_dir(tmp_path / "b" / "model").metadata["init_from"] == str(tmp_path / "a" / "model")

    # a different network is refused in one line naming the field and both values
    capsys.readouterr()  # drop the progress bars of the runs above
    code = main(
        [
            "train",
            "--preset",
            "digits2d",
            "--output-dir",
            str(tmp_path / "c"),
            "--init-from",
            str(tmp_path / "a" / "model"),
            *(f"--set={o}" for o in TINY),
            "--set",
            "model.base_channels=16",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "base_channels: checkpoint 8, run 16" in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--preset", "digits2d", "--output-dir", str(tmp_path / "d"), "--init-from", "nope"])
    assert code != 0 and "nope" in capsys.readouterr().err
