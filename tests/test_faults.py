"""Faults during a run: kill -9 at random points (resume ends bit-identical), a full disk during a save (the
previous checkpoint survives, one-line error)."""

from __future__ import annotations

import errno
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polyscale.cli.main import main
from polyscale.training import checkpoint as checkpoint_module
from polyscale.training.checkpoint import checkpoint_damage, checkpoint_dirs
from tiny import TINY_DIGITS, sets

TINY = [*TINY_DIGITS, "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.progress=false"]


def _argv(run: Path, steps: int) -> list[str]:
    return [
        "train",
        "--preset",
        "digits2d",
        "--output-dir",
        str(run),
        *sets(*TINY, f"train.max_steps={steps}"),
    ]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.long
def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path: Path):
    steps = 16
    assert main(_argv(tmp_path / "whole", steps)) == 0
    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "polyscale.cli.main", *_argv(run, steps)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        # wait for this attempt's first new checkpoint, then kill at a random moment (often mid-save)
        seen = checkpoint_dirs(run)[-1:]
        deadline = time.time() + 60
        while proc.poll() is None and time.time() < deadline:
            if checkpoint_dirs(run)[-1:] not in ([], seen):
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        for ckpt in checkpoint_dirs(run):
            assert checkpoint_damage(ckpt) is None  # a kill never leaves a damaged checkpoint in the list
    assert kills >= 3
    assert main(_argv(run, steps)) == 0
    whole, resumed = _weights(tmp_path / "whole"), _weights(run)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(_argv(run, 2)) == 0
    before = checkpoint_dirs(run)
    assert [p.name for p in before] == ["step_00000002"]
    real_save = checkpoint_module.save_file

    def full_disk(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)  # part of the file reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    capsys.readouterr()
    assert main(_argv(run, 4)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0].lower(), err
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000002"]
    assert checkpoint_damage(checkpoint_dirs(run)[0]) is None
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the half-written checkpoint was removed
    monkeypatch.undo()
    assert main(_argv(run, 4)) == 0  # the run resumes from the kept checkpoint


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_really_full_disk_gives_one_line(tmp_path: Path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code = main(_argv(mount / "run", 2))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "no space left on device" in err[-1].lower(), err
        assert "Traceback" not in "".join(err)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
