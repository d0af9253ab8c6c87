"""Run directories keep what is in them: one run at a time (a lock), a fresh start that does not delete before
its first checkpoint, foreign files refused, leftovers of killed writes tidied, damaged checkpoints skipped,
usual file permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from polyscale.atomic import atomic_replace_dir, recover_siblings, temp_sibling
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.train import train_experiment
from polyscale.training.checkpoint import (
    PREVIOUS,
    checkpoint_damage,
    checkpoint_dirs,
    latest_intact_checkpoint,
    save_training_state,
)
from polyscale.training.run_dir import open_run
from polyscale.training.run_lock import LOCK_NAME, RunDirectoryLocked, RunLock
from tiny import TINY_DIGITS

TINY = [*TINY_DIGITS, "train.max_steps=4", "train.checkpoint_every=2", "train.progress=false"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the lock -----------------------------------------------------------------------------------------------


def test_a_second_process_is_refused_and_named(tmp_path: Path):
    code = (
        "import sys, time; from polyscale.training.run_lock import RunLock\n"
        f"with RunLock({str(tmp_path)!r}, command='train'):\n"
        "    print('held', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryLocked, match=rf"in use by another run \(pid {holder.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and is taken over, with a notice naming it
    said: list[str] = []
    with RunLock(tmp_path, notify=said.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and "stale lock" in said[0] and f"pid {holder.pid}" in said[0]
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_file_is_named_and_taken_over(tmp_path: Path):
    import socket

    dead = _dead_pid()
    info = {"pid": dead, "host": socket.gethostname(), "command": "train", "started": time.time()}
    (tmp_path / LOCK_NAME).write_text(json.dumps(info))
    said: list[str] = []
    with RunLock(tmp_path, notify=said.append):
        pass
    assert said and f"pid {dead}" in said[0] and "has ended" in said[0]


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path):
    with RunLock(tmp_path), RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_concurrent_cli_runs_on_one_directory_one_is_refused(tmp_path: Path):
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "polyscale.cli.main",
        "train",
        "--preset",
        "digits2d",
        "--output-dir",
        str(run),
    ]
    argv += [a for kv in TINY for a in ("--set", kv)] + ["--set", "train.max_steps=400"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / LOCK_NAME).exists() and time.time() < deadline:
            time.sleep(0.1)
        assert (run / LOCK_NAME).exists()
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.wait()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert "is in use by another run" in lines[0] and f"pid {first.pid}" in lines[0]


# --- fresh starts, foreign files ----------------------------------------------------------------------------


def test_no_resume_keeps_the_earlier_run_until_the_first_new_checkpoint(tmp_path: Path, capsys):
    run = tmp_path / "run"
    train_experiment(load_experiment("digits2d", overrides=TINY), run)
    before = _weights(run)
    (run / "notes.txt").write_text("mine")

    class Stop(Exception):
        pass

    def stop_at_first_step(step, model, metrics):
        raise Stop

    cfg = load_experiment("digits2d", overrides=[*TINY, "train.lr=0.01"])
    with pytest.raises(Stop):  # killed before the new run's first checkpoint
        train_experiment(cfg, run, resume=False, callbacks=[stop_at_first_step])
    assert checkpoint_dirs(run) == [] and not (run / "model").exists()
    assert [p.name for p in checkpoint_dirs(run / PREVIOUS)] == ["step_00000002", "step_00000004"]
    assert _same(load_file(str(run / PREVIOUS / "model" / "model.safetensors")), before)
    capsys.readouterr()

    # a rerun that resumes gets the earlier run back, says so, and refuses the changed settings by name
    with pytest.raises(ValueError, match=r"train.lr: 0.002 -> 0.01"):
        train_experiment(cfg, run)
    assert "restored the earlier run" in capsys.readouterr().err
    assert _same(_weights(run), before) and not (run / PREVIOUS).exists()

    # a fresh start that reaches its first checkpoint drops the earlier run; the user's file stays
    train_experiment(cfg, run, resume=False)
    assert not (run / PREVIOUS).exists() and not _same(_weights(run), before)
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "name, content",
    [("config.yaml", "mine: 1\n"), ("metrics.csv", "a,b\n"), ("checkpoints/other_tool.ckpt", "x")],
)
def test_files_polyscale_did_not_write_are_refused_by_name(tmp_path: Path, name: str, content: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    top = name.split("/")[0]
    with pytest.raises(ValueError, match=rf"already holds {top}, which polyscale did not write"):
        with open_run(tmp_path, {"a": 1}, resume=False):
            pass
    assert path.read_text() == content


def test_an_unrelated_file_is_left_alone(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with open_run(tmp_path, {"a": 1}, resume=False) as run:
        assert run.checkpoint is None
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "config.yaml").is_file()


def test_an_output_directory_that_is_a_file_is_refused_before_work(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file, expected a directory"):
        with open_run(tmp_path / "f", {}, resume=True):
            pass


# --- allow-change -------------------------------------------------------------------------------------------


def test_allow_change_names_unknown_and_unsafe_keys(tmp_path: Path):
    cfg = load_experiment("digits2d", overrides=TINY)
    with pytest.raises(
        ValueError, match=r"--allow-change train.lrr: no such setting; did you mean train.lr\?"
    ):
        train_experiment(cfg, tmp_path / "a", allow_change=("train.lrr",))
    with pytest.raises(ValueError, match=r"--allow-change model.base_channels: this setting cannot change"):
        train_experiment(cfg, tmp_path / "a", allow_change=("model.base_channels",))


def test_a_changed_setting_is_refused_with_the_flag_that_accepts_it(tmp_path: Path):
    run = tmp_path / "run"
    train_experiment(load_experiment("digits2d", overrides=TINY), run)
    bigger = load_experiment("digits2d", overrides=[*TINY, "train.max_steps=6", "train.lr=0.001"])
    with pytest.raises(ValueError, match=r"train.lr: 0.002 -> 0.001.*--allow-change train.lr"):
        train_experiment(bigger, run)
    result = train_experiment(bigger, run, allow_change=("train.lr",))
    assert result.step == 6
    lrs = [float(line.split(",")[2]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    from polyscale.training.lr import warmup_cosine

    def rate(peak: float, step: int) -> float:
        return peak * warmup_cosine(step, warmup_steps=1, max_steps=6, min_lr_ratio=bigger.train.min_lr_ratio)

    assert len(lrs) == 6
    # the new peak rate from the resumed step on
    assert lrs[4:] == pytest.approx([rate(0.001, 4), rate(0.001, 5)], rel=1e-4)
    assert lrs[4] != pytest.approx(rate(0.002, 4), rel=1e-2)


# --- leftovers, damage, permissions -------------------------------------------------------------------------


def test_recover_siblings_restores_a_complete_old_copy_and_removes_dead_temporaries(tmp_path: Path):
    target = tmp_path / "checkpoint"
    old = tmp_path / f".checkpoint.old-{_dead_pid()}-0123abcd"  # killed between the two renames
    old.mkdir()
    (old / "state.json").write_text("{}")
    dead_tmp = tmp_path / f".model.tmp-{_dead_pid()}-89abcdef"
    dead_tmp.mkdir()
    live_tmp = temp_sibling(tmp_path / "other", "tmp")  # this process is alive: left alone
    live_tmp.mkdir()
    said = recover_siblings(tmp_path)
    assert (target / "state.json").is_file() and not old.exists()
    assert not dead_tmp.exists() and live_tmp.exists()
    assert len(said) == 2 and any("restored" in s for s in said)


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path):
    from polyscale.atomic import atomic_write_text

    dead = tmp_path / f".s.png.tmp-{_dead_pid()}-0123abcd"
    dead.write_bytes(b"half a picture")
    other = tmp_path / f".t.png.tmp-{_dead_pid()}-0123abcd"  # another target's: not this write's business
    other.write_bytes(b"x")
    atomic_write_text(tmp_path / "s.png", "picture")
    assert not dead.exists() and other.exists() and (tmp_path / "s.png").read_text() == "picture"


def _save(run: Path, step: int) -> Path:
    return save_training_state(run, step, tensors={"w": torch.full((4,), float(step))}, meta={}, keep=5)


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    newest = checkpoint_dirs(tmp_path)[-1]
    data = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    assert "truncated" in (checkpoint_damage(newest) or "")
    said: list[str] = []
    assert latest_intact_checkpoint(tmp_path, notify=said.append) == checkpoint_dirs(tmp_path)[-1]
    assert checkpoint_dirs(tmp_path)[-1].name == "step_00000002"
    assert (tmp_path / "checkpoints" / "damaged-step_00000003").is_dir()
    assert len(said) == 1 and "resuming from step_00000002" in said[0]
    # one flipped byte is found too
    middle = checkpoint_dirs(tmp_path)[-1] / "state.safetensors"
    raw = bytearray(middle.read_bytes())
    raw[-1] ^= 0xFF
    middle.write_bytes(bytes(raw))
    assert "checksum" in (checkpoint_damage(middle.parent) or "")


def test_a_damaged_newest_diffusion_checkpoint_resumes_to_the_same_weights(tmp_path: Path, capsys):
    cfg = load_experiment("digits2d", overrides=TINY)
    whole = train_experiment(cfg, tmp_path / "whole")
    assert whole.step == 4
    run = tmp_path / "run"
    train_experiment(cfg, run)
    newest = checkpoint_dirs(run)[-1]
    (newest / "model.safetensors").write_bytes(b"\0" * 16)
    capsys.readouterr()
    train_experiment(cfg, run)
    assert "is damaged" in capsys.readouterr().err
    assert _same(_weights(run), _weights(tmp_path / "whole"))


def test_weights_and_configs_follow_the_umask(tmp_path: Path):
    previous = os.umask(0o027)
    try:
        atomic_replace_dir(lambda d: (d / "w.safetensors").write_bytes(b"x") and None, tmp_path / "m")
        _save(tmp_path, 1)
    finally:
        os.umask(previous)
    for path in [tmp_path / "m" / "w.safetensors", *(checkpoint_dirs(tmp_path)[0].iterdir())]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_grow_sparse_resumes_with_an_allowed_learning_rate(tmp_path: Path):
    from polyscale.pipelines.grow import grow_sparse
    from polyscale.pipelines.grow_config import load_grow_sparse_config

    small = ["epochs=1", "hidden_sizes=[32]", "checkpoint_every=1", "progress=false"]
    grow_sparse(load_grow_sparse_config("sparse_mnist1d", small), tmp_path)
    faster = load_grow_sparse_config("sparse_mnist1d", [*small, "epochs=2", "lr=0.05"])
    with pytest.raises(ValueError, match=r"lr: .* -> 0.05.*--allow-change lr"):
        grow_sparse(faster, tmp_path)
    summary = grow_sparse(faster, tmp_path, allow_change=("lr",))
    assert summary["epochs"] == 2
    with pytest.raises(ValueError, match="cannot change when a run resumes"):
        grow_sparse(faster, tmp_path, allow_change=("hidden_sizes",))
