"""``polyscale grow sparse`` / ``grow depth`` read like ``train``: ``--preset``, ``--set``, and shortcut flags
that override the preset."""

from __future__ import annotations

import argparse
import json

import pytest

from polyscale.cli.grow import _overrides, _shown
from polyscale.cli.main import build_parser, main
from polyscale.pipelines.grow_config import (
    GrowDepthConfig,
    GrowSparseConfig,
    flag_fields,
    load_grow_depth_config,
    load_grow_sparse_config,
)
from polyscale.training.run_dir import read_settings

TINY = ["--set", "dataset=digits", "--set", "hidden_sizes=[8]", "--set", "progress=false"]


def _one_stderr_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_grow_sparse_runs_a_preset_with_set_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "grow",
        "sparse",
        "--preset",
        "sparse_mnist1d",
        "--set",
        "epochs=1",
        *TINY,
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "digits: test accuracy" in printed
    assert f"wrote {out}/: config.yaml, model/, checkpoints/, history.jsonl, summary.json" in printed
    saved = read_settings(out)
    assert saved["epochs"] == 1 and saved["hidden_sizes"] == [8] and saved["connectivity"] == 1e-4
    for name in (
        "config.yaml",
        "model",
        "checkpoints",
        "history.jsonl",
        "summary.json",
        "snapshots.safetensors",
    ):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_a_flag_overrides_the_preset_and_the_set_of_the_same_key(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["grow", "sparse", "--set", "epochs=5", "--epochs", "1", "--lr", "0.02", "--hidden-sizes", "8", "4",
            "--set", "dataset=digits", "--set", "progress=false", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    saved = read_settings(out)
    assert (saved["epochs"], saved["lr"], saved["hidden_sizes"]) == (1, 0.02, [8, 4])
    assert (
        saved["activation"] == load_grow_sparse_config("sparse_mnist1d").activation
    )  # untouched: the preset's


def test_a_preset_file_is_read(tmp_path, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text("dataset: digits\nepochs: 1\nhidden_sizes: [8]\nprogress: false\n")
    assert (
        main(["grow", "sparse", "--preset", str(preset), "--seed", "3", "--output-dir", str(tmp_path / "r")])
        == 0
    )
    assert read_settings(tmp_path / "r")["seed"] == 3


@pytest.mark.parametrize(
    "command, key, hint", [("sparse", "epoch=1", "'epochs'"), ("depth", "n_layers=2", "'n_layer'")]
)
def test_an_unknown_set_key_is_one_line_with_a_did_you_mean(capsys, command: str, key: str, hint: str):
    assert main(["grow", command, "--set", key]) == 2
    line = _one_stderr_line(capsys)
    assert line.startswith(f"polyscale grow {command}: error:") and "unknown key" in line
    assert f"did you mean {hint}?" in line


def test_a_bad_value_names_the_key(capsys):
    assert main(["grow", "depth", "--n-layer", "5"]) == 2  # above the preset's max_layers 4
    assert "max_layers must be >= n_layer (5)" in _one_stderr_line(capsys)
    assert main(["grow", "sparse", "--preset", "nope"]) == 2
    assert "unknown growth preset 'nope'" in _one_stderr_line(capsys)


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["--n_layer", "3"], "n_layer", 3),
        (["--max_layers=6"], "max_layers", 6),
        (["--pg_threshold", "0.5"], "pg_threshold", 0.5),
        (["--dataset_path", "x.txt"], "dataset_path", "x.txt"),
    ],
)
def test_underscore_flags_work_for_grow_depth(argv: list[str], dest: str, value):
    assert getattr(build_parser().parse_args(["grow", "depth", *argv]), dest) == value


def test_every_depth_setting_is_a_flag_built_from_the_dataclass():
    parser = next(p for name, p in _subparsers() if name == "depth")
    dests = {a.dest for a in parser._actions}
    every = {f.name for f in flag_fields(GrowDepthConfig)} | {"device", "seed"}
    assert len(every) == 27 and every <= dests
    defaults = {a.dest: a.default for a in parser._actions if a.dest in every}
    assert set(defaults.values()) == {None}  # None: the preset's value
    preset = load_grow_depth_config("depth_shakespeare")
    for action in parser._actions:
        if action.dest in every:
            assert f"(preset depth_shakespeare: {_shown(getattr(preset, action.dest))})" in action.help, (
                action.dest
            )


def test_flags_equal_their_preset_value_when_given():
    """Passing every flag at the preset's value builds the preset's config."""
    for name, cls, load, preset in (
        ("sparse", GrowSparseConfig, load_grow_sparse_config, "sparse_mnist1d"),
        ("depth", GrowDepthConfig, load_grow_depth_config, "depth_shakespeare"),
    ):
        cfg = load(preset)
        argv = ["grow", name]
        for f in flag_fields(cls):
            value = getattr(cfg, f.name)
            if value is None:
                continue
            argv += [
                f"--{f.name.replace('_', '-')}",
                *(str(v) for v in (value if isinstance(value, tuple) else [value])),
            ]
        args = build_parser().parse_args(argv)
        assert load(preset, _overrides(args, cls)) == cfg, name


def _subparsers():
    parser = build_parser()
    grow = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["grow"]
    sub = next(a for a in grow._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices.items()
