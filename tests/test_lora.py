"""LoRA fine-tuning: adapters through peft on the N-D U-Net (exactness at zero, save/load, merge, refusal of
another base) and ``polyscale finetune`` end to end on a tiny digits model."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polyscale.cli.main import describe_failure
from polyscale.config import to_dict
from polyscale.io import load_pretrained, save_pretrained
from polyscale.nn.unet import UNet
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.sample import MODEL_CLASSES, load_denoiser
from polyscale.pipelines.train import make_denoiser
from polyscale.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterConfig,
    PeftNotInstalledError,
    add_lora,
    apply_adapter,
    base_fingerprint,
    has_lora,
    lora_state_dict,
    lora_targets,
    merge_lora,
    parameter_counts,
    read_adapter,
    save_adapter,
)
from tiny import TINY_DIGITS, run_cli

pytest.importorskip("peft")


def random_unet(dims: int, *, seed: int = 0, base_channels: int = 8, padding_mode: str = "zeros") -> UNet:
    """A tiny U-Net whose every weight is random (none zero, so each layer changes the output)."""
    torch.manual_seed(seed)
    net = UNet(dims=dims, in_channels=1, base_channels=base_channels, channel_mults=(1, 2), num_res_blocks=1,
               attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2, padding_mode=padding_mode)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net.eval()


def inputs(dims: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 1, *[size] * dims, generator=g), torch.randn(2, generator=g)


def train_adapter_weights(net: UNet) -> None:
    """Stand-in for training: random adapter weights (B included), so the adapter changes the output."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_" in name:
                p.normal_(0, 0.1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_a_zero_initialised_adapter_leaves_the_outputs_bit_identical(dims):
    for padding_mode in ("zeros", "circular"):
        net = random_unet(dims, padding_mode=padding_mode)
        x, c = inputs(dims)
        before = net(x, c)
        add_lora(net, AdapterConfig(rank=4), seed=0)
        assert has_lora(net)
        assert torch.equal(net(x, c), before)
        net.train()  # dropout 0: the same in training mode
        assert torch.equal(net(x, c), before)


def test_only_the_adapter_trains_and_its_size_follows_the_rank():
    net = random_unet(2)
    total = parameter_counts(net).total
    add_lora(net, AdapterConfig(rank=2))
    counts = parameter_counts(net)
    lora = sum(p.numel() for n, p in net.named_parameters() if ".lora_" in n)
    assert counts.trainable == lora and counts.total == total + lora
    assert all(p.requires_grad == (".lora_" in n) for n, p in net.named_parameters())
    wider = random_unet(2)
    add_lora(wider, AdapterConfig(rank=4))
    assert parameter_counts(wider).trainable == 2 * counts.trainable


def test_targets_are_found_by_type_and_restricted_by_patterns():
    net = random_unet(2)
    names = lora_targets(net)
    assert {"conv_in", "conv_out", "down.2.1.attn.qkv", "down.2.1.attn.proj", "down.0.0.emb",
            "noise_embed.mlp.0"} <= set(names)  # fmt: skip
    attention = lora_targets(net, ["*.attn.*"])
    assert attention and all(".attn." in n for n in attention)
    add_lora(net, AdapterConfig(rank=2, targets=("*.attn.*",)))
    adapted = {n.split(".lora_")[0] for n in lora_state_dict(net)}
    assert adapted == set(attention)
    with pytest.raises(ValueError, match="'nothing.*' matches no Conv or Linear layer"):
        lora_targets(net, ["nothing.*"])


def test_save_and_apply_round_trip(tmp_path):
    net = random_unet(2)
    base = copy.deepcopy(net)
    add_lora(net, AdapterConfig(rank=3, alpha=6.0, targets=("up.*", "conv_out")), seed=0)
    train_adapter_weights(net)
    x, c = inputs(2)
    adapted = net(x, c)
    assert not torch.allclose(adapted, base(x, c))  # the adapter matters
    save_adapter(net, tmp_path / "adapter", source="tiny")
    weights = load_file(str(tmp_path / "adapter" / ADAPTER_WEIGHTS))
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)  # the adapter alone
    header = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert (header["rank"], header["alpha"], header["target_patterns"]) == (3, 6.0, ["up.*", "conv_out"])
    assert header["base"]["sha256"] == base_fingerprint(base) and header["base"]["config"] == to_dict(
        base.config
    )
    assert read_adapter(tmp_path / "adapter").modules == header["target_modules"]

    loaded = apply_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert torch.equal(loaded(x, c), adapted)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if ".lora_" not in n)


def test_merging_gives_a_plain_unet_with_the_same_outputs(tmp_path):
    for dims in (1, 2, 3):
        net = random_unet(dims, padding_mode="circular" if dims == 2 else "zeros")
        keys = list(net.state_dict())
        add_lora(net, AdapterConfig(rank=4))
        convs = [
            m for m in net.modules() if hasattr(m, "lora_A") and hasattr(m.get_base_layer(), "padding_mode")
        ]
        assert all(m.lora_A["default"].padding_mode == m.get_base_layer().padding_mode for m in convs)
        assert any(
            m.lora_A["default"].padding_mode == net.config.padding_mode for m in convs
        )  # A pads like W
        train_adapter_weights(net)
        x, c = inputs(dims)
        unmerged = net(x, c)
        merged = merge_lora(net)
        assert not has_lora(merged) and list(merged.state_dict()) == keys
        assert torch.allclose(merged(x, c), unmerged, atol=1e-5, rtol=1e-4)
        save_pretrained(merged, tmp_path / f"merged{dims}")
        reloaded = load_pretrained(tmp_path / f"merged{dims}", MODEL_CLASSES).eval()
        assert torch.equal(reloaded(x, c), merged(x, c))


def test_an_adapter_for_another_base_is_refused_naming_both(tmp_path):
    net = random_unet(2)
    add_lora(net, AdapterConfig(rank=2))
    save_adapter(net, tmp_path / "adapter", source="base-a")
    with pytest.raises(ValueError) as err:
        apply_adapter(random_unet(2, seed=5), tmp_path / "adapter")  # same architecture, other weights
    message = str(err.value)
    assert describe_failure(err.value, "sample") == (f"error: {message}", 2)
    assert "base-a" in message and "other weights" in message and "\n" not in message
    assert base_fingerprint(net)[:12] in message and base_fingerprint(random_unet(2, seed=5))[:12] in message
    with pytest.raises(ValueError, match=r"architecture differs .*base_channels 8 vs 16"):
        apply_adapter(random_unet(2, base_channels=16), tmp_path / "adapter")
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        apply_adapter(net, tmp_path / "adapter")


def test_bad_adapter_directories_are_one_line_errors(tmp_path):
    net = random_unet(1)
    with pytest.raises(FileNotFoundError, match="does not exist; expected an adapter directory") as missing:
        apply_adapter(net, tmp_path / "missing")
    line, code = describe_failure(missing.value, "sample")  # what the command line reports
    assert code == 2 and line.startswith("error: adapter directory") and "\n" not in line
    save_pretrained(net, tmp_path / "model")
    with pytest.raises(ValueError, match="is a model directory, not an adapter"):
        apply_adapter(net, tmp_path / "model")
    (tmp_path / "pickled").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "pickled" / "adapter_model.bin")
    with pytest.raises(ValueError, match="refuses to unpickle"):
        apply_adapter(net, tmp_path / "pickled")
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            AdapterConfig(rank=bad)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        AdapterConfig(rank=2, alpha=-1.0)
    assert not has_lora(net)


@pytest.mark.long
def test_peft_is_needed_only_for_lora(monkeypatch):
    code = ("import sys, polyscale, polyscale.cli.main, polyscale.training.lora, polyscale.pipelines.finetune; "
            "assert 'peft' not in sys.modules, 'peft imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(PeftNotInstalledError, match=r"install polyscale\[lora\]") as err:
        add_lora(random_unet(1), AdapterConfig(rank=2))
    assert isinstance(err.value, ImportError) and isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------------ polyscale finetune


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny digits model directory with random (non-zero) weights."""
    cfg = load_experiment("digits2d", TINY_DIGITS)
    denoiser = make_denoiser(cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in denoiser.net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path_factory.mktemp("base") / "base"
    save_pretrained(denoiser.net, path, metadata={"experiment": to_dict(cfg), "sample_shape": [1, 16, 16]})
    return path


FAST = ["--steps", "3", "--set", "train.checkpoint_every=2", "--set", "train.log_every=1",
        "--set", "train.progress=false"]  # fmt: skip


@pytest.mark.long
def test_finetune_writes_a_small_adapter_that_loads_and_merges(base_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "finetune",
        "--checkpoint",
        str(base_dir),
        "--output-dir",
        str(run),
        "--lora-rank",
        "2",
        "--merge",
        *FAST,
    ]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    adapter, model = run / "adapter", run / "model"
    assert (adapter / ADAPTER_CONFIG).is_file() and (adapter / ADAPTER_WEIGHTS).is_file()
    assert (adapter / ADAPTER_WEIGHTS).stat().st_size < (base_dir / "model.safetensors").stat().st_size / 2
    assert all(".lora_" in k for k in load_file(str(adapter / ADAPTER_WEIGHTS)))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["trainable_parameters"] < summary["total_parameters"] / 2

    # the base is unchanged by training; the adapter applied to it computes what the merged model computes
    denoiser, _, _ = load_denoiser(base_dir)
    assert read_adapter(adapter).base["sha256"] == base_fingerprint(denoiser.net)
    base_out = denoiser(*inputs(2, 16))
    apply_adapter(denoiser, adapter)
    adapted_out = denoiser(*inputs(2, 16))
    assert not torch.allclose(adapted_out, base_out)  # three steps moved the adapter
    merged, _, _ = load_denoiser(model)
    assert torch.allclose(merged(*inputs(2, 16)), adapted_out, atol=1e-5, rtol=1e-4)

    # the same command resumes (nothing left to train); another rank is refused, naming the setting
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    code, err = run_cli([*argv[: -len(FAST)], *FAST[2:], "--steps", "3", "--lora-rank", "3"], capsys)
    assert code == 2 and "finetune.rank: 2 -> 3" in err and len(err.strip().splitlines()) == 1


@pytest.mark.long
def test_full_finetuning_on_an_array_file(base_dir, tmp_path, capsys):
    data = np.random.default_rng(0).uniform(-1, 1, size=(16, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    run = tmp_path / "full"
    argv = ["finetune", "--checkpoint", str(base_dir), "--data-dir", str(tmp_path / "data.npy"),
            "--output-dir", str(run), "--full", *FAST]  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (run / "model" / "model.safetensors").is_file() and not (run / "adapter").exists()
    denoiser, cfg, _ = load_denoiser(run)
    assert cfg.data.kind == "array" and not has_lora(denoiser.net)
    assert (
        json.loads((run / "summary.json").read_text())["trainable_parameters"]
        == parameter_counts(denoiser).total
    )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (
            ["--lora-rank", "0"],
            "--lora-rank must be an integer >= 1, got 0 (for full fine-tuning pass --full)",
        ),
        (["--lora-rank", "-1"], "--lora-rank must be an integer >= 1, got -1"),
        ([], "expected --lora-rank R"),
        (["--full", "--lora-rank", "4"], "drop --lora-rank or --full"),
        (["--full", "--merge"], "--merge folds a LoRA adapter"),
        (["--lora-rank", "2", "--lora-alpha", "0"], "alpha must be a finite number > 0"),
        (["--lora-rank", "2", "--lora-targets", "nothing.*"], "'nothing.*' matches no Conv or Linear layer"),
        (["--lora-rank", "2", "--data-dir", "no/such/folder"], "expected a folder of images or a .npy/.npz"),
        (["--lora-rank", "2", "--set", "model.base_channels=4"], "keeps the base model's network"),
        (["--lora-rank", "2", "--set", "train.lr=0.1"], "--set train.lr: use --lr instead"),
    ],
)
def test_bad_finetune_inputs_are_one_line_and_exit_2(base_dir, tmp_path, capsys, extra, fragment):
    argv = ["finetune", "--checkpoint", str(base_dir), "--output-dir", str(tmp_path / "run"), *extra, *FAST]
    code, err = run_cli(argv, capsys)
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "adapter").exists()
