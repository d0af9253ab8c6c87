"""The command line: every failure is one line on stderr with a non-zero exit, `--help` works everywhere, and
raw samples can be saved as .npy or .pt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from polyscale.cli.main import main
from polyscale.pipelines.sample import check_sampling_args, sample_checkpoint, save_samples

FAST = ["--num-samples", "1", "--timesteps", "2", "--device", "cpu"]


def _one_stderr_line(capsys) -> str:
    """The single non-empty line written to stderr (fails when there are none or several)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# ----------------------------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command", [[], ["presets"], ["train"], ["sample"], ["evaluate"]])
def test_help_works_for_the_top_level_and_every_subcommand(capsys, command: list[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['polyscale', *command])}")
    if not command:
        assert all(name in out for name in ("presets", "train", "sample", "evaluate"))


def test_sample_help_lists_every_flag_of_the_issue(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at the terminal width; keep each flag on one line
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = capsys.readouterr().out
    expected = [
        "--dim {1,2,3}",
        "--resolution",
        "--channels",
        "--base-channels",
        "--timesteps",
        "--num-samples",
        "--device {auto,cpu,cuda}",
        "--create-animation",
        "--animation-interval",
        "--output-file",
        "--checkpoint",
        "--sampler {ddpm,ddim,euler,heun,dpmpp2m,pc,ode",
        "--seed",
        "--batch-size",
        "--save-raw [{npy,pt}]",
    ]
    assert [flag for flag in expected if flag not in out] == []


# ------------------------------------------------------------------------------------ flags that do not parse


@pytest.mark.parametrize(
    "argv, named",
    [
        (["sample", "--dim", "4"], ["--dim", "4"]),
        (["sample", "--num-samples", "abc"], ["--num-samples", "abc"]),
        (["sample", "--num-samples", "0"], ["--num-samples", "0"]),
        (["sample", "--timesteps", "-3"], ["--timesteps", "-3"]),
        (["sample", "--animation-interval", "0"], ["--animation-interval", "0"]),
        (["sample", "--batch-size", "0"], ["--batch-size", "0"]),
        (["sample", "--resolution", "0"], ["--resolution", "0"]),
        (["sample", "--tile-overlap", "-1"], ["--tile-overlap", "-1"]),
        (["sample", "--channels", "x"], ["--channels", "x"]),
        (["sample", "--seed", "1.5"], ["--seed", "1.5"]),
        (["sample", "--sampler", "foo"], ["--sampler", "foo", "heun"]),
        (["sample", "--device", "tpu"], ["--device", "tpu"]),
        (["sample", "--save-raw", "h5"], ["--save-raw", "h5"]),
        (["sample", "--no-such-flag"], ["unrecognized", "--no-such-flag"]),
        (["evaluate", "--num-samples", "-1"], ["--num-samples", "-1"]),
        (["evaluate", "--checkpoint", "digits2d", "--sampler", "foo"], ["--sampler", "foo"]),
        (["evaluate"], ["--checkpoint", "required"]),
        (["train", "--output-dir", "x"], ["--preset", "required"]),
        (["frobnicate"], ["frobnicate", "sample"]),
        ([], ["command"]),
    ],
)
def test_flag_errors_are_one_line_naming_the_flag(capsys, argv: list[str], named: list[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _one_stderr_line(capsys)
    prog = " ".join(["polyscale", *argv[:1]]) if argv and argv[0] != "frobnicate" else "polyscale"
    assert line.startswith(f"{prog}: error: ") and line.endswith(f"(see {prog} --help)")
    assert [word for word in named if word not in line] == []


# -------------------------------------------------------------------------------- errors the pipelines report


@pytest.fixture
def corrupt_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return folder


@pytest.mark.parametrize(
    "argv, named",
    [
        (["sample", "--checkpoint", "/no/such/dir"], ["/no/such/dir", "digits2d"]),
        (["evaluate", "--checkpoint", "/no/such/dir"], ["/no/such/dir"]),
        (
            ["train", "--preset", "/no/such.yaml", "--output-dir", "{tmp}/r"],
            ["/no/such.yaml", "does not exist"],
        ),
        (["train", "--preset", "nope", "--output-dir", "{tmp}/r"], ["unknown preset", "nope", "digits2d"]),
        (
            ["train", "--preset", "digits2d", "--output-dir", "{tmp}/r", "--set", "train.nope=1"],
            ["train.nope"],
        ),
        (["train", "--preset", "digits2d", "--output-dir", "{tmp}/r", "--set", "train.lr=abc"], ["train.lr"]),
        (["train", "--preset", "digits2d", "--output-dir", "{tmp}/r", "--set", "lr"], ["'lr'", "key=value"]),
        (["sample", "--checkpoint", "digits2d", "--dim", "3"], ["dims=2", "dims=3"]),
        (["sample", "--checkpoint", "digits2d", "--channels", "3"], ["in_channels=1", "in_channels=3"]),
        (
            ["sample", "--checkpoint", "digits2d", "--base-channels", "7"],
            ["base_channels=32", "base_channels=7"],
        ),
        (["sample", "--checkpoint", "{corrupt}"], ["config.json", "not valid JSON"]),
        (["sample", "--resolution", "30"], ["resolution 30", "size multiple 4", "28 or 32"]),
        (["sample", "--tile-size", "8", "--tile-overlap", "8"], ["tile_overlap", "tile_size=8", "got 8"]),
        (["sample", "--tile-size", "6"], ["tile_size 6", "size multiple 4"]),
        (["sample", "--tile-overlap", "2"], ["tile_overlap=2", "without tile_size"]),
        (["sample", "--output-file", "{tmp}"], ["is a directory"]),
        (["evaluate", "--checkpoint", "digits2d", "--num-samples", "1"], ["num_samples", ">= 2", "got 1"]),
    ],
)
def test_pipeline_errors_are_one_line_naming_the_cause(
    tmp_path: Path, capsys, corrupt_checkpoint: Path, argv: list[str], named: list[str]
):
    argv = [a.format(tmp=tmp_path, corrupt=corrupt_checkpoint) for a in argv]
    if argv[0] == "sample":
        argv = (
            [*argv, *FAST]
            if "--output-file" in argv
            else [*argv, *FAST, "--output-file", f"{tmp_path}/s.png"]
        )
    assert main(argv) == 2
    line = _one_stderr_line(capsys)
    assert line.startswith(f"polyscale {argv[0]}: error: ")
    assert [word for word in named if word not in line] == []
    assert not (tmp_path / "s.png").exists()  # every check ran before anything was written


def test_cuda_without_cuda_is_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["sample", "--num-samples", "1", "--timesteps", "2", "--output-file", str(tmp_path / "s.png")]
    assert main([*argv, "--device", "cuda"]) == 2
    line = _one_stderr_line(capsys)
    assert "cuda" in line and "no CUDA device" in line


def test_a_real_process_exits_non_zero_with_one_stderr_line(tmp_path: Path):
    """``python -m polyscale``: an argparse error (exit 2) and a pipeline error (exit 2), one line each."""
    cases = [
        (["sample", "--num-samples", "0"], "--num-samples"),
        (
            ["sample", "--checkpoint", str(tmp_path / "missing"), "--output-file", str(tmp_path / "s.png")],
            "missing",
        ),
    ]
    for argv, named in cases:
        done = subprocess.run(
            [sys.executable, "-m", "polyscale", *argv], capture_output=True, text=True, timeout=120
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("polyscale sample: error: ") and named in lines[0]
        assert done.stdout == ""


# ------------------------------------------------------------------------------- the library rejects them too


@pytest.mark.parametrize(
    "bad, named",
    [
        (dict(num_samples=0), "num_samples must be an integer >= 1, got 0"),
        (dict(num_samples=2.0), "num_samples must be an integer >= 1, got 2.0"),
        (dict(steps=0), "steps must be an integer >= 1 or None, got 0"),
        (dict(steps=-3), "steps must be an integer >= 1 or None, got -3"),
        (dict(batch_size=0), "batch_size must be an integer >= 1 or None, got 0"),
        (dict(resolution=-8), "resolution must be an integer >= 1 or None, got -8"),
        (dict(animation_interval=0), "animation_interval must be an integer >= 1, got 0"),
        (dict(sampler="foo"), "unknown sampler 'foo'; expected one of"),
        (dict(seed="1"), "seed must be an integer"),
        (dict(tile_size=8, tile_overlap=9), "tile_overlap must be smaller than tile_size=8"),
        (dict(tile_overlap=2), "tile_overlap=2 was given without tile_size"),
        (dict(save_raw="h5"), "save_raw must be a bool or one of \\['npy', 'pt'\\], got 'h5'"),
        (dict(device="tpu"), "device must be 'auto', 'cpu' or 'cuda', got 'tpu'"),
    ],
)
def test_sample_checkpoint_rejects_bad_arguments_before_loading(monkeypatch, bad: dict, named: str):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("polyscale.pipelines.sample.load_denoiser", no_loading)
    kwargs = dict(num_samples=1, steps=2, device="cpu", progress=False) | bad
    with pytest.raises(ValueError, match=named):
        sample_checkpoint("digits2d", **kwargs)


def test_check_sampling_args_accepts_good_values():
    check_sampling_args(
        num_samples=1, sampler="heun", steps=1, seed=0, resolution=None, batch_size=None,
        animation_interval=1, tile_size=8, tile_overlap=0,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ raw samples


def test_save_raw_pt_matches_npy_and_loads_with_weights_only(tmp_path: Path, capsys):
    argv = ["sample", "--checkpoint", "digits2d", "--num-samples", "2", "--timesteps", "2", "--device", "cpu"]
    assert main([*argv, "--output-file", str(tmp_path / "a.png"), "--save-raw", "pt"]) == 0
    assert main([*argv, "--output-file", str(tmp_path / "b.png"), "--save-raw"]) == 0  # alone: .npy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.pt", "b.npy", "b.png"]  # no temp files
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert type(loaded) is torch.Tensor and loaded.shape == (2, 1, 16, 16) and loaded.dtype == torch.float32
    assert torch.equal(loaded, torch.from_numpy(np.load(tmp_path / "b.npy")))  # same seed, same samples
    assert "a.pt" in capsys.readouterr().out


def test_volumes_always_get_raw_samples_in_the_format_asked(tmp_path: Path):
    volumes = torch.rand(2, 1, 4, 4, 4) * 2 - 1
    files = save_samples(volumes, tmp_path / "v.png", data_kind="porous")
    assert [p.name for p in files] == ["v.png", "v.npy"]
    files = save_samples(volumes, tmp_path / "w.png", data_kind="porous", save_raw="pt")
    assert [p.name for p in files] == ["w.png", "w.pt"]
    assert torch.equal(torch.load(files[1], weights_only=True), volumes)
    images = save_samples(volumes[..., 0], tmp_path / "i.png", data_kind="porous")  # 2D: raw only when asked
    assert [p.name for p in images] == ["i.png"]


# ------------------------------------------------------------------------------------ first-hour conveniences


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"polyscale {version('polyscale')}"


def test_presets_lists_grid_and_graph_presets_and_shipped_models(capsys):
    from polyscale.pipelines.experiment import preset_names
    from polyscale.pipelines.graph_config import graph_preset_names

    assert main(["presets"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert (
        lines["presets"].split() == preset_names() and lines["graph presets"].split() == graph_preset_names()
    )
    assert "digits2d" in lines["shipped models"].split()


def _parsers():
    """``(command, parser)`` for the top level and every subcommand."""
    from argparse import _SubParsersAction

    from polyscale.cli.main import build_parser

    todo = [("polyscale", build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, _SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]


HIDDEN = {("polyscale grow sparse", "--sparsity")}  # deprecated spellings kept working, out of --help


def test_every_flag_of_every_command_has_help_text():
    import argparse

    missing = []
    for name, parser in _parsers():
        for action in parser._actions:
            if not action.option_strings or action.option_strings == ["-h", "--help"]:
                continue
            flag = action.option_strings[-1]
            if action.help == argparse.SUPPRESS:
                assert (name, flag) in HIDDEN, f"{name} {flag} is hidden from --help"
            elif not (action.help or "").strip():
                missing.append(f"{name} {flag}")
    assert missing == []


def test_connectivity_is_the_flag_and_sparsity_its_hidden_former_name(capsys, monkeypatch):
    from polyscale.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["grow", "sparse"]).connectivity is None  # None: the preset's value
    assert parse(["grow", "sparse", "--connectivity", "0.01"]).connectivity == 0.01
    assert parse(["grow", "sparse", "--sparsity", "0.02"]).connectivity == 0.02
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["grow", "sparse", "--help"])
    out = capsys.readouterr().out
    assert "--connectivity" in out and "--sparsity" not in out


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["grow", "depth", "--n_layer", "3"], "n_layer", 3),
        (["grow", "depth", "--n_embd=64"], "n_embd", 64),
        (["grow", "depth", "--learning_rate", "0.5"], "lr", 0.5),  # nanoGPT / diffusers
        (["grow", "depth", "--learning-rate", "0.5"], "lr", 0.5),
        (["grow", "depth", "--n_embed", "32"], "n_embd", 32),
        (["grow", "depth", "--max_iters", "7"], "max_steps", 7),
        (["grow", "depth", "--out_dir", "run"], "output_dir", "run"),
        (["grow", "sparse", "--hidden_sizes", "4", "5"], "hidden_sizes", [4, 5]),
        (["sample", "--num_inference_steps", "9"], "timesteps", 9),  # diffusers
        (["sample", "--num_samples", "3"], "num_samples", 3),
        (
            ["train", "--preset", "p", "--output_dir", "o", "--set", "model.hidden_dim=3"],
            "set",
            ["model.hidden_dim=3"],
        ),
    ],
)
def test_underscore_flags_and_other_systems_names_reach_our_flag(argv: list[str], dest: str, value):
    from polyscale.cli.main import build_parser

    assert getattr(build_parser().parse_args(argv), dest) == value


def test_an_option_value_after_a_bare_double_dash_is_left_alone():
    from polyscale.cli.args import OneLineParser

    parser = OneLineParser(prog="t")
    parser.add_argument("--lr")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(["--learning_rate", "1", "--", "--max_iters"])
    assert args.lr == "1" and args.rest == ["--max_iters"]


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["grow", "sparse", "--learning-rat", "1"], "did you mean --lr?"),
        (["grow", "depth", "--n-layr", "2"], "did you mean --n-layer?"),
        (["sample", "--resoluton", "8"], "did you mean --resolution?"),
        # a flag that names a key of the command's configuration: its --set spelling
        (["train", "--preset", "digits2d", "--output-dir", "x", "--learning_rate", "1"],
         "did you mean --set train.lr=VALUE?"),
        (["train", "--preset", "digits2d", "--output-dir", "x", "--channel-mult", "1"],
         "did you mean --set model.channel_mults=VALUE?"),
        (["graph", "train", "--preset", "graph_planar", "--output-dir", "x", "--hidden_dim", "8"],
         "did you mean --set model.hidden=VALUE?"),
    ],
)  # fmt: skip
def test_an_unknown_flag_gets_a_did_you_mean_on_its_one_line(capsys, argv: list[str], hint: str):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = _one_stderr_line(capsys)
    assert f"unrecognized arguments: {argv[-2].replace('_', '-')}" in line and hint in line


def test_an_unknown_flag_like_nothing_of_ours_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--zzzzzz"])
    assert "did you mean" not in _one_stderr_line(capsys)
