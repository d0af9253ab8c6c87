"""Model directories: bit-identical round trips, atomic saves, and every refusal with its message."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import polyscale.atomic as patomic
import polyscale.io as pio
from polyscale.atomic import atomic_write_bytes, atomic_write_text
from polyscale.config import ConfigError, to_dict
from polyscale.io import (
    ModelDir,
    load_pretrained,
    load_weights,
    read_model_dir,
    save_pretrained,
)
from polyscale.nn.unet import UNet


@dataclass
class TinyConfig:
    in_dim: int = 3
    hidden: int = 5
    out_dim: int = 2
    act: Literal["tanh", "relu"] = "tanh"
    tie: bool = False  # share mid's weight with mid2 (tied parameters)


class TinyNet(nn.Module):
    """MLP with a tied weight option, a non-contiguous buffer and a buffer of special float values."""

    config_class = TinyConfig

    def __init__(
        self, *, in_dim: int = 3, hidden: int = 5, out_dim: int = 2, act: str = "tanh", tie: bool = False
    ):
        super().__init__()
        self.config = TinyConfig(in_dim=in_dim, hidden=hidden, out_dim=out_dim, act=act, tie=tie)
        if hidden <= 0:
            raise ValueError(f"hidden must be positive, got {hidden}")
        self.inp = nn.Linear(in_dim, hidden)
        self.mid = nn.Linear(hidden, hidden, bias=False)
        self.mid2 = nn.Linear(hidden, hidden, bias=False)
        if tie:
            self.mid2.weight = self.mid.weight
        self.out = nn.Linear(hidden, out_dim)
        self.register_buffer("special", torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]))
        self.register_buffer("transposed", torch.zeros(in_dim, hidden).t())  # non-contiguous view
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.tanh if self.config.act == "tanh" else torch.relu
        h = act(self.inp(x)) + x @ self.transposed.t()
        return self.out(act(self.mid2(act(self.mid(h)))))


class NoConfigClass(nn.Module):
    def __init__(self, *, in_dim: int = 3) -> None:
        super().__init__()
        self.config = TinyConfig(in_dim=in_dim)


CLASSES = {"TinyNet": TinyNet}


def make_tiny(seed: int = 0, **kwargs) -> TinyNet:
    model = TinyNet(**kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied weights appear once here
            p.copy_(torch.randn(p.shape, generator=g))
        model.transposed.copy_(torch.randn(model.transposed.shape, generator=g))
    return model


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().flatten().view(torch.uint8)


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert torch.equal(bits(a[key]), bits(b[key])), key


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("ema_as", ["module", "dict"])
def test_round_trip_is_bit_identical_for_model_and_ema(tmp_path: Path, tie: bool, ema_as: str):
    model, ema = make_tiny(0, tie=tie, act="relu"), make_tiny(1, tie=tie, act="relu")
    target = save_pretrained(model, tmp_path / "m", ema=ema if ema_as == "module" else ema.state_dict())
    assert target == tmp_path / "m" and siblings(target) == ["m"]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "ema.safetensors", "model.safetensors"]

    loaded = load_pretrained(target, CLASSES)
    loaded_ema = load_pretrained(target, CLASSES, ema=True)
    assert type(loaded) is TinyNet and loaded.config == model.config
    assert_bit_identical(model.state_dict(), loaded.state_dict())
    assert_bit_identical(ema.state_dict(), loaded_ema.state_dict())
    assert not torch.equal(loaded.inp.weight, loaded_ema.inp.weight)
    assert (loaded.mid2.weight is loaded.mid.weight) == tie  # the class rebuilds the tie; the file holds both
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(model(x), loaded(x)) and torch.equal(ema(x), loaded_ema(x))


def test_real_unet_round_trip(tmp_path: Path):
    kwargs = dict(dims=1, in_channels=2, base_channels=8, channel_mults=(1,), attention_levels=(),
                  attention_kernel_sizes=(), norm_groups=4, num_res_blocks=1)  # fmt: skip
    net = UNet(**kwargs)
    loaded = load_pretrained(save_pretrained(net, tmp_path / "unet"), {"UNet": UNet})
    assert loaded.config == net.config
    assert_bit_identical(net.state_dict(), loaded.state_dict())


def test_config_json_contents_metadata_and_read_model_dir(tmp_path: Path):
    model = make_tiny(hidden=4)
    metadata = {"experiment": {"lr": 0.002, "mults": (1, 2)}, "sample_shape": [1, 8, 8], "note": "é"}
    target = save_pretrained(model, tmp_path / "m", metadata=metadata)
    header = json.loads((target / "config.json").read_text(encoding="utf-8"))
    assert header == {
        "format": "polyscale-model",
        "format_version": 1,
        "class": "TinyNet",
        "config": {"in_dim": 3, "hidden": 4, "out_dim": 2, "act": "tanh", "tie": False},
        "metadata": {"experiment": {"lr": 0.002, "mults": [1, 2]}, "sample_shape": [1, 8, 8], "note": "é"},
    }
    info = read_model_dir(target)
    assert info == ModelDir(target, "TinyNet", header["config"], header["metadata"], 1)
    assert info.config_path == target / "config.json" and info.model_path == target / "model.safetensors"
    assert info.ema_path == target / "ema.safetensors" and not info.has_ema
    assert set(load_file(str(info.model_path))) == set(model.state_dict())  # non-persistent buffer excluded


def test_map_location_and_strict_false(tmp_path: Path):
    model = make_tiny()
    target = save_pretrained(model, tmp_path / "m")
    assert load_pretrained(target, CLASSES, map_location=torch.device("cpu")).inp.weight.device.type == "cpu"
    state = load_file(str(target / "model.safetensors"))
    del state["out.bias"]
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"does not fit the TinyNet described by .*config\.json: missing keys \['out.bias'\]"
    ):
        load_pretrained(target, CLASSES)
    partial = load_pretrained(target, CLASSES, strict=False)
    assert torch.equal(partial.inp.weight, model.inp.weight) and torch.equal(
        partial.out.weight, model.out.weight
    )
    state["extra"] = torch.zeros(1)
    state["out.bias"] = model.out.bias.detach()
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        load_pretrained(target, CLASSES)


# ------------------------------------------------------------------------------------------------- atomicity


def test_save_replaces_existing_model_dir_without_leftovers(tmp_path: Path):
    target = save_pretrained(make_tiny(0), tmp_path / "m", ema=make_tiny(1))
    newer = make_tiny(3)
    save_pretrained(newer, target)
    assert siblings(target) == ["m"] and not (target / "ema.safetensors").exists()
    assert_bit_identical(newer.state_dict(), load_pretrained(target, CLASSES).state_dict())


@pytest.mark.parametrize("fail_on_call", [1, 2])
def test_crash_while_writing_keeps_previous_model(tmp_path: Path, monkeypatch, fail_on_call: int):
    old = make_tiny(0)
    target = save_pretrained(old, tmp_path / "m", ema=make_tiny(1), metadata={"v": 1})
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    calls = []

    def crashing_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == fail_on_call:
            Path(filename).write_bytes(b"\x00" * 10)  # half-written file, then the "crash"
            raise OSError("disk full")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(pio, "save_file", crashing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(make_tiny(5), target, ema=make_tiny(6), metadata={"v": 2})
    assert len(calls) == fail_on_call
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert siblings(target) == ["m"]  # the temporary directory was removed
    monkeypatch.undo()
    assert_bit_identical(old.state_dict(), load_pretrained(target, CLASSES).state_dict())


def test_crash_on_fresh_target_leaves_nothing(tmp_path: Path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pio, "save_file", failing)
    with pytest.raises(RuntimeError, match="boom"):
        save_pretrained(make_tiny(), tmp_path / "sub" / "m")
    assert list((tmp_path / "sub").iterdir()) == []


def test_failed_rename_restores_previous_directory(tmp_path: Path, monkeypatch):
    target = save_pretrained(make_tiny(0), tmp_path / "m")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_replace = os.replace

    def replace(src, dst):
        if ".m.tmp-" in str(src) and Path(dst) == target:  # moving the new directory in
            raise PermissionError("rename refused")
        real_replace(src, dst)

    monkeypatch.setattr(patomic.os, "replace", replace)
    with pytest.raises(PermissionError):
        save_pretrained(make_tiny(1), target)
    monkeypatch.undo()
    assert siblings(target) == ["m"]
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


_KILL_SCRIPT = """
import os, sys
import polyscale.io as pio
import polyscale.atomic as patomic
sys.path.insert(0, {tests!r})
from test_io import make_tiny
stage = sys.argv[1]
if stage == "write":
    real = pio.save_file
    def save_file(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        os._exit(7)
    pio.save_file = save_file
else:
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            os._exit(7)  # killed between moving the old model aside and moving the new one in
    patomic.os.replace = replace
pio.save_pretrained(make_tiny(9), sys.argv[2])
"""


@pytest.mark.long
def test_killed_process_never_leaves_half_written_model(tmp_path: Path):
    old = make_tiny(0)
    target = save_pretrained(old, tmp_path / "m")
    script = textwrap.dedent(_KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    run = [sys.executable, "-c", script]
    assert subprocess.run([*run, "write", str(target)], timeout=120).returncode == 7
    # the target is the old model; the partial build is a hidden sibling (documented), safe to delete
    assert_bit_identical(old.state_dict(), load_pretrained(target, CLASSES).state_dict())
    assert [n for n in siblings(target) if n != "m"][0].startswith(".m.tmp-")

    assert subprocess.run([*run, "rename", str(target)], timeout=120).returncode == 7
    leftovers = [n for n in siblings(target) if n.startswith(".m.old-")]
    assert not target.exists() and len(leftovers) == 1  # nothing half-written at the target
    with pytest.raises(FileNotFoundError, match=rf"{leftovers[0]} next to it is the previous version"):
        read_model_dir(target)
    os.replace(target.parent / leftovers[0], target)  # the documented manual recovery
    assert_bit_identical(old.state_dict(), load_pretrained(target, CLASSES).state_dict())


def test_refuses_to_replace_foreign_directory_or_file(tmp_path: Path):
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(
        ValueError, match=r"results exists and is not a polyscale model directory .*notes\.txt"
    ):
        save_pretrained(make_tiny(), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    model_dir = save_pretrained(make_tiny(), tmp_path / "m")
    (model_dir / "README.md").write_text("mine")
    with pytest.raises(ValueError, match="README.md"):
        save_pretrained(make_tiny(), model_dir)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        save_pretrained(make_tiny(), a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert save_pretrained(make_tiny(), empty) == empty and (empty / "config.json").is_file()


def test_atomic_write_bytes_and_text(tmp_path: Path, monkeypatch):
    path = tmp_path / "deep" / "er" / "out.txt"
    assert atomic_write_text(path, "héllo") == path and path.read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and siblings(path) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    def failing_fsync(fd):
        raise OSError("io error")

    monkeypatch.setattr(patomic.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="io error"):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"\x00\x01" and siblings(path) == ["out.txt"]


# ------------------------------------------------------------------------------------------- save refusals


@dataclass
class BadIntConfig:
    hidden: int = 5


@dataclass
class BytesConfig:
    blob: bytes = b"x"


class WithConfig(nn.Module):
    config_class = None

    def __init__(self, config=None, **kwargs) -> None:
        super().__init__()
        self.config = config
        self.lin = nn.Linear(2, 2)


def test_save_refusals(tmp_path: Path):
    target = tmp_path / "m"
    with pytest.raises(ValueError, match=r"Linear has no `config` attribute holding a dataclass instance"):
        save_pretrained(nn.Linear(2, 2), target)
    with pytest.raises(ValueError, match=r"WithConfig has no `config` attribute .* \(got type\)"):
        save_pretrained(WithConfig(TinyConfig), target)
    bad = make_tiny()
    bad.config = BadIntConfig()
    with pytest.raises(ValueError, match=r"TinyNet.config is a BadIntConfig, expected TinyNet.config_class"):
        save_pretrained(bad, target)
    with pytest.raises(
        ValueError, match=r"WithConfig.config would not load back: hidden: expected int, got 2.5"
    ):
        save_pretrained(WithConfig(BadIntConfig(hidden=2.5)), target)
    with pytest.raises(ValueError, match=r"constructor does not accept the fields of TinyConfig"):
        save_pretrained(NoConfigClass(), target)
    with pytest.raises(ValueError, match=r"JSON-serialisable"):
        save_pretrained(WithConfig(BytesConfig()), target)
    with pytest.raises(ValueError, match=r"JSON-serialisable"):
        save_pretrained(make_tiny(), target, metadata={"t": torch.zeros(1)})
    ema = make_tiny().state_dict()
    del ema["out.bias"]
    with pytest.raises(
        ValueError, match=r"ema weights must have the model's keys and shapes.*missing \['out.bias'\]"
    ):
        save_pretrained(make_tiny(), target, ema=ema)
    with pytest.raises(ValueError, match=r"shape mismatches \[.*'inp.weight: \(5, 3\) vs \(6, 3\)'"):
        save_pretrained(make_tiny(), target, ema=make_tiny(hidden=6))
    assert not target.exists() and siblings(target) == []


# ------------------------------------------------------------------------------------------- load refusals


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(make_tiny(), tmp_path / "m")


def edit_header(directory: Path, **changes) -> None:
    header = json.loads((directory / "config.json").read_text())
    header.update(changes)
    (directory / "config.json").write_text(json.dumps(header))


def test_missing_directory_file_and_config(tmp_path: Path, saved: Path):
    missing = tmp_path / "nope"
    with pytest.raises(
        FileNotFoundError, match=rf"model directory '{re.escape(str(missing))}' does not exist$"
    ):
        load_pretrained(missing, CLASSES)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(
        ValueError, match=r"notes\.txt is a file; expected a model directory with config\.json"
    ):
        load_pretrained(text, CLASSES)
    with pytest.raises(ValueError, match=r"did you mean its folder"):
        read_model_dir(saved / "model.safetensors")
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m has no config\.json; .* found \['model\.safetensors'\]"):
        load_pretrained(saved, CLASSES)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"config\.json is not valid JSON \(Expecting property name.*line 1 column 2"),
        ("[1, 2]", r"expected \"format\": 'polyscale-model', found 'a JSON list'"),
        ('{"_class_name": "UNet2DModel"}', r"expected \"format\": 'polyscale-model', found None"),
        ('{"format": "polyscale-model", "format_version": 2}', r"format_version 2 is not supported"),
        ('{"format": "polyscale-model", "format_version": 1, "config": {}}', r"missing key 'class'"),
        ('{"format": "polyscale-model", "format_version": 1, "class": "TinyNet", "config": [1]}',
         r"'config' must be a JSON dict, found \[1\]"),
    ],
)  # fmt: skip
def test_bad_config_json(saved: Path, content: str, message: str):
    (saved / "config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_pretrained(saved, CLASSES)
    assert str(saved / "config.json") in str(err.value)


def test_class_resolution_and_config_validation(saved: Path):
    with pytest.raises(ValueError, match=r"unknown model class 'TinyNet'; known: \['Other', 'UNet'\]"):
        load_pretrained(saved, {"UNet": UNet, "Other": TinyNet})
    with pytest.raises(ValueError, match=r"NoConfigClass has no `config_class` dataclass attribute"):
        load_pretrained(saved, {"TinyNet": NoConfigClass})
    edit_header(saved, config={"in_dim": 3, "hiden": 5})
    with pytest.raises(
        ConfigError, match=r"config\.json: unknown key config\.hiden in TinyConfig; allowed keys"
    ):
        load_pretrained(saved, CLASSES)
    edit_header(saved, config={"act": "gelu"})
    with pytest.raises(ConfigError, match=r"config\.act: expected one of \['tanh', 'relu'\], got 'gelu'"):
        load_pretrained(saved, CLASSES)
    edit_header(saved, config={"hidden": 0})
    with pytest.raises(ValueError, match=r"could not build TinyNet from its config: hidden must be positive"):
        load_pretrained(saved, CLASSES)


def test_shape_mismatch_between_config_and_weights(saved: Path):
    edit_header(saved, config=to_dict(TinyConfig(hidden=6)))
    with pytest.raises(ValueError) as err:
        load_pretrained(saved, CLASSES)
    msg = str(err.value)
    assert "model.safetensors does not fit the TinyNet described by" in msg and "shape mismatch" in msg
    assert "inp.weight: config builds (6, 3), file has (5, 3)" in msg


def test_missing_and_corrupt_weights(saved: Path):
    with pytest.raises(FileNotFoundError, match=r"has no ema\.safetensors; it was saved without EMA weights"):
        load_pretrained(saved, CLASSES, ema=True)
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ValueError, match=r"model\.safetensors is not a readable safetensors file \(corrupt or trunc"
    ):
        load_pretrained(saved, CLASSES)
    weights.write_bytes(b"garbage bytes that are no header")
    with pytest.raises(ValueError, match=r"corrupt or truncated"):
        load_weights(weights)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"m has no model\.safetensors$"):
        load_pretrained(saved, CLASSES)


class _Evil:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def _assert_pickle_refused(call, path_hint: str) -> None:
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert path_hint in msg and "pickle checkpoint" in msg and "refuses to unpickle" in msg
    assert "safetensors.torch.save_file(torch.load(" in msg and "weights_only=True" in msg


def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path: Path, saved: Path):
    sentinel = tmp_path / "unpickled"
    evil = pickle.dumps(_Evil(sentinel), protocol=2)
    state = make_tiny().state_dict()

    pt = tmp_path / "ckpt.pt"
    torch.save(state, pt)
    _assert_pickle_refused(lambda: load_pretrained(pt, CLASSES), "ckpt.pt")
    only = tmp_path / "only_pickles"
    only.mkdir()
    (only / "model.pth").write_bytes(evil)
    _assert_pickle_refused(lambda: load_pretrained(only, CLASSES), "model.pth")
    zipped = tmp_path / "weights"  # no suffix: recognised by torch's zip container signature
    torch.save(state, zipped)
    _assert_pickle_refused(lambda: read_model_dir(zipped), "weights")
    legacy = tmp_path / "legacy"  # torch's pre-1.6 format starts with a pickle header
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    _assert_pickle_refused(lambda: read_model_dir(legacy), "legacy")
    raw = tmp_path / "raw"
    raw.write_bytes(evil)
    _assert_pickle_refused(lambda: read_model_dir(raw), "raw")
    (saved / "model.safetensors").write_bytes(evil)  # a pickle under a safetensors name
    _assert_pickle_refused(lambda: load_pretrained(saved, CLASSES), "model.safetensors")
    bin_file = tmp_path / "pytorch_model.bin"
    bin_file.write_bytes(evil)
    _assert_pickle_refused(lambda: load_weights(bin_file), "pytorch_model.bin")
    assert not sentinel.exists()


def test_npz_is_not_mistaken_for_a_pickle(tmp_path: Path):
    arrays = tmp_path / "arrays"
    with open(arrays, "wb") as f:
        np.savez(f, a=np.zeros(3))
    assert arrays.read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(ValueError, match=r"is a file; expected a model directory"):
        read_model_dir(arrays)
