"""Checks before any expensive work: a run that cannot fit in memory, an absurd step count, an output file that
cannot be written (or would get the wrong format), an absent device and diverged samples are each one line on
stderr with exit code 2, before anything is sampled or written; `--force` lets a refused run go on."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polyscale.cli.main import main
from polyscale.pipelines import graph_sample, preflight
from polyscale.pipelines.preflight import (
    MAX_STEPS,
    MEMORY_SHARE,
    available_memory,
    check_memory,
    check_steps,
    check_writable,
    human_bytes,
)
from polyscale.pipelines.sample import UNET_OVERHEAD_BYTES, sampling_memory

GiB = 2**30
FAST = ["--num-samples", "2", "--timesteps", "1", "--device", "cpu"]


def _one_stderr_line(capsys) -> str:
    """The single non-empty line written to stderr (fails when there are none or several)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def _error_line(capsys) -> str:
    """The last stderr line of a run that sampled before failing (progress bars come first)."""
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return [line for line in lines if line.strip()][-1]


@pytest.fixture
def eight_gib(monkeypatch):
    """Every memory check sees 8 GiB available, whatever the machine has."""
    monkeypatch.setattr(preflight, "available_memory", lambda device="cpu": 8 * GiB)


# ------------------------------------------------------------------------------------------------ human_bytes


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (int(38.1 * GiB), "38.1 GiB"),
        (5 * 2**50, "5.0 PiB"),
        (2**80 * 3000, "3.0e+03 YiB"),
    ],
)
def test_human_bytes(n: int, text: str):
    assert human_bytes(n) == text


# ------------------------------------------------------------------------------------------- available_memory


def test_available_memory_reads_meminfo_then_falls_back(tmp_path: Path, monkeypatch):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       2000 kB\nMemFree:         100 kB\nMemAvailable:    1500 kB\n")
    assert preflight._meminfo_available(str(info)) == 1500 * 1024
    assert preflight._meminfo_available(str(tmp_path / "missing")) is None
    monkeypatch.setattr(preflight, "_meminfo_available", lambda: None)
    monkeypatch.setattr(preflight, "_sysconf_available", lambda: 12345)
    assert available_memory("cpu") == 12345
    monkeypatch.setattr(preflight, "_sysconf_available", lambda: None)
    assert available_memory("cpu") is None


def test_available_memory_of_this_machine_is_positive():
    found = available_memory("cpu")
    assert found is None or found > 0


# ----------------------------------------------------------------------------------------------- check_memory


def test_check_memory_allows_up_to_the_share_and_names_both_amounts(eight_gib):
    check_memory(MEMORY_SHARE * 8 * GiB, what="x", device="cpu")  # at the limit: allowed
    with pytest.raises(ValueError) as err:
        check_memory(7.5 * GiB, what="16 things", device="cpu", lower="--num-things")
    message = str(err.value)
    assert "\n" not in message
    for fragment in (
        "needs about 7.5 GiB",
        "(16 things)",
        "8.0 GiB is available",
        "lower --num-things",
        "--force",
    ):
        assert fragment in message


def test_check_memory_without_a_flag_does_not_offer_one(eight_gib):
    with pytest.raises(ValueError) as err:
        check_memory(100 * GiB, what="x", flag=None, lower="--num-samples")
    assert "--force" not in str(err.value) and "lower --num-samples" in str(err.value)


def test_check_memory_forced_warns_on_one_line(eight_gib, capsys):
    check_memory(100 * GiB, what="x", force=True)
    line = _one_stderr_line(capsys)
    assert line.startswith("warning: needs about 100.0 GiB") and "--force" in line


def test_check_memory_checks_nothing_when_the_amount_is_unknown(monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda device="cpu": None)
    check_memory(10**30, what="x")


def test_check_steps():
    check_steps(MAX_STEPS)
    with pytest.raises(
        ValueError, match=r"--timesteps asks for 100001 sampler steps; expected at most 100000"
    ):
        check_steps(MAX_STEPS + 1)


# --------------------------------------------------------------------------------------------- check_writable


def test_check_writable_accepts_a_new_nested_folder_and_leaves_nothing(tmp_path: Path):
    target = tmp_path / "a" / "b" / "s.PNG"  # the suffix's case does not matter
    assert check_writable(target, suffixes=(".png",)) == target
    assert list(tmp_path.iterdir()) == []  # the folders made for the test are gone again


@pytest.mark.parametrize(
    "path, suffixes, beside, fragments",
    [
        ("{tmp}", (".png",), (), ["--output-file", "is a directory", "samples.png"]),
        (
            "{tmp}/s.jpg",
            (".png",),
            (),
            ["'{tmp}/s.jpg'", "must end in .png", "found '.jpg'", "'{tmp}/s.png'"],
        ),
        ("{tmp}/s", (".png", ".gif"), (), ["must end in .png or .gif", "found no suffix"]),
        ("{tmp}/file.txt/s.png", None, (), ["needs '{tmp}/file.txt' to be a folder, but it is a file"]),
        ("{tmp}/s.png", (".png",), (".npy",), ["also writes '{tmp}/s.npy'", "is a directory"]),
    ],
)
def test_check_writable_refuses_with_one_line(tmp_path: Path, path, suffixes, beside, fragments):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "s.npy").mkdir()
    with pytest.raises(ValueError) as err:
        check_writable(path.format(tmp=tmp_path), suffixes=suffixes, beside=beside)
    message = str(err.value)
    assert "\n" not in message
    assert [f for f in fragments if f.format(tmp=tmp_path) not in message] == []


def test_check_writable_names_the_folder_that_takes_no_files(tmp_path: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError) as err:
        check_writable(tmp_path / "s.png", flag="--out")
    message = str(err.value)
    assert f"--out '{tmp_path}/s.png' cannot be written" in message
    assert "does not take new files (Permission denied)" in message


# ------------------------------------------------------------------------------------------ memory estimates


def test_sampling_memory_grows_with_what_is_kept_and_in_flight():
    from polyscale.nn.unet import UNetConfig

    unet = UNetConfig(dims=2, in_channels=1, base_channels=32, channel_mults=(1, 2, 2))
    small = sampling_memory(unet, (16, 1, 16, 16), batch_size=16)
    assert small.what == "16 samples of 1x16x16 kept in memory + a batch of 16 in flight"
    many = sampling_memory(unet, (10**6, 1, 16, 16), batch_size=16)
    assert many.host - small.host == (10**6 - 16) * 256 * 4  # one copy of each kept sample
    assert sampling_memory(unet, (10**6, 1, 16, 16), batch_size=16, picture=True).host > 8 * many.host
    wide = sampling_memory(unet, (16, 1, 64, 64), batch_size=16)
    assert wide.device - UNET_OVERHEAD_BYTES > 15 * (small.device - UNET_OVERHEAD_BYTES)  # 16x the positions
    tiled = sampling_memory(unet, (1, 1, 4096, 4096), batch_size=1, tile_size=64)
    assert tiled.device < sampling_memory(unet, (1, 1, 4096, 4096), batch_size=1).device / 8


# ---------------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory) -> Path:
    """A graph features run trained for one step at the smallest size (its weights do not matter here)."""
    from polyscale.pipelines.graph_config import load_graph_experiment
    from polyscale.pipelines.graph_train import train_graph_experiment

    run = tmp_path_factory.mktemp("graph") / "features"
    tiny = ["optimization.max_steps=1", "optimization.batch_size=2", "data.num_graphs=2", "model.hidden=8",
            "model.num_layers=1", "model.num_heads=1", "optimization.checkpoint_every=1",
            "optimization.log_every=1", "optimization.warmup_steps=1"]  # fmt: skip
    train_graph_experiment(load_graph_experiment("graph_features", overrides=tiny), run)
    return run


def _diverged_copy(model_dir: Path, target: Path) -> Path:
    """``model_dir`` copied to ``target`` with every weight (and EMA weight) finite but huge (3e38): loading
    accepts it, its outputs overflow to inf and NaN, as those of a model that was about to diverge."""
    shutil.copytree(model_dir, target)
    for name in ("model.safetensors", "ema.safetensors"):
        path = target / name
        if path.is_file():
            save_file({k: torch.full_like(v, 3e38) if v.is_floating_point() else v
                       for k, v in load_file(path).items()}, path)  # fmt: skip
    return target


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (
            ["sample", "--checkpoint", "digits2d", "--num-samples", "1000000000", "--batch-size", "2"],
            [
                "needs about",
                "(1000000000 samples of 1x16x16 kept in memory + a batch of 2 in flight)",
                "but 8.0 GiB is available",
                "lower --num-samples, --batch-size or --resolution, or pass --force",
            ],
        ),
        (
            ["sample", "--resolution", "1000000000"],
            ["needs about", "1x1000000000x1000000000", "ZiB", "--force"],
        ),
        (
            ["sample", "--timesteps", "1000000000000"],
            ["--timesteps asks for 1000000000000", "at most 100000"],
        ),
        (["sample", "--set", "sampler.steps=1000000000000"], ["sampler.steps", "at most 100000"]),
        (
            ["sample", "--output-file", "{tmp}/s.jpg"],
            ["--output-file", "s.jpg", "must end in .png", "'.jpg'"],
        ),
        (["sample", "--output-file", "{tmp}/file.txt/s.png"], ["file.txt", "to be a folder"]),
        (
            ["sample", "--output-file", "{tmp}/anim.png", "--create-animation"],
            ["also writes", "anim.gif", "is a directory"],
        ),
        (
            ["sample", "--output-file", "{tmp}/vol.png", "--dim", "3"],
            ["also writes", "vol.npy", "is a directory"],
        ),
        (
            ["evaluate", "--checkpoint", "digits2d", "--num-samples", "100000000"],
            ["needs about", "--num-samples"],
        ),
        (["evaluate", "--checkpoint", "digits2d", "--timesteps", "1000000000000"], ["at most 100000"]),
        (["graph", "sample", "--num-nodes", "100000000"], ["needs about", "100000000 nodes", "--num-nodes"]),
        (["graph", "sample", "--output-file", "{tmp}/g.svg"], ["--output-file", "g.svg", "must end in .png"]),
        (["graph", "sample", "--timesteps", "1000000000000"], ["--timesteps asks for", "at most 100000"]),
        (
            ["graph", "sample", "--set", "diffusion.sampler.steps=1000000000"],
            ["diffusion.sampler.steps (or --timesteps) asks for 1000000000"],
        ),
        (["graph", "sample", "--device", "cuda"], ["cuda", "no CUDA device"]),
    ],
)
def test_commands_refuse_before_any_work(
    tmp_path: Path, capsys, monkeypatch, eight_gib, feature_run, argv: list[str], fragments: list[str]
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "anim.gif").mkdir()
    (tmp_path / "vol.npy").mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "graph":
        argv = [*argv, "--checkpoint", str(feature_run)]
    if "--output-file" not in argv and argv[0] != "evaluate":
        argv += ["--output-file", str(tmp_path / "out.png")]
    before = set(tmp_path.iterdir())

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr("polyscale.pipelines.sample.generate", no_sampling)
    monkeypatch.setattr(graph_sample, "generate_graphs", no_sampling)
    assert main(argv) == 2
    line = _one_stderr_line(capsys)
    name = " ".join(argv[:2]) if argv[0] == "graph" else argv[0]
    assert line.startswith(f"polyscale {name}: error: ")
    assert [f for f in fragments if f not in line] == []
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_evaluate_offers_its_force_flag(capsys, eight_gib):
    assert main(["evaluate", "--checkpoint", "digits2d", "--num-samples", "100000000"]) == 2
    assert _one_stderr_line(capsys).endswith("or pass --force")


def test_force_lets_a_refused_sample_run_through_with_a_warning(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda device="cpu": 1024)
    out = tmp_path / "s.png"
    assert main(["sample", *FAST, "--output-file", str(out)]) == 2
    assert "needs about" in _one_stderr_line(capsys) and not out.exists()
    assert main(["sample", *FAST, "--output-file", str(out), "--force"]) == 0
    err = capsys.readouterr().err
    assert "warning: needs about" in err and "is available" in err
    assert out.is_file()


def test_force_lets_a_refused_graph_sample_run_through(tmp_path: Path, capsys, monkeypatch, feature_run):
    monkeypatch.setattr(preflight, "available_memory", lambda device="cpu": 1024)
    out = tmp_path / "g.png"
    argv = ["graph", "sample", "--checkpoint", str(feature_run), "--num-nodes", "12", "--num-graphs", "1",
            "--timesteps", "1", "--device", "cpu", "--output-file", str(out)]  # fmt: skip
    assert main(argv) == 2 and not out.exists()
    capsys.readouterr()
    assert main([*argv, "--force"]) == 0
    assert "warning: needs about" in capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".npz").is_file()


def test_graph_sample_says_up_front_when_a_run_is_long(tmp_path: Path, capsys, monkeypatch, feature_run):
    monkeypatch.setattr(graph_sample, "LONG_RUN_WORK", 0)
    argv = ["graph", "sample", "--checkpoint", str(feature_run), "--num-nodes", "12", "--num-graphs", "1",
            "--timesteps", "1", "--device", "cpu", "--output-file", str(tmp_path / "g.png")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "graph sample: 1 graph(s) of 12 nodes" in err and "this will take a while" in err


def test_evaluate_refuses_samples_of_a_diverged_model(tmp_path: Path, capsys):
    shipped = Path(str(resources.files("polyscale") / "pretrained" / "digits2d"))
    diverged = _diverged_copy(shipped, tmp_path / "diverged")
    assert main(["evaluate", "--checkpoint", str(diverged), *FAST]) == 2
    line = _error_line(capsys)
    assert line.startswith("polyscale evaluate: error: samples contain NaN or infinite values (2 of 2)")
    assert "diverge" in line and str(diverged) in line


def test_graph_evaluate_refuses_features_of_a_diverged_model(tmp_path: Path, capsys, feature_run):
    diverged = _diverged_copy(feature_run / "model", tmp_path / "diverged")
    argv = ["graph", "evaluate", "--checkpoint", str(diverged), "--sizes", "12", "--num-graphs", "1",
            "--timesteps", "1", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("polyscale graph evaluate: error: generated node features contain NaN")
    assert "diverge" in line
