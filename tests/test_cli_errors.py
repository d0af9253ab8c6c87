"""Every failure of the ``polyscale`` command is one line on stderr and a known exit code.

Failures that are cheap to cause are caused for real; those that are not (a full disk, running out of memory, a
permission refusal, Ctrl-C, an unexpected exception) are raised from a stand-in for the pipeline function the
command calls: what these tests check is how :func:`polyscale.cli.main.main` reports them.
"""

from __future__ import annotations

import argparse
import errno
import json

import pytest
import torch

from polyscale.cli import args as cli_args
from polyscale.cli.main import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    build_parser,
    describe_failure,
    main,
)


def run(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``polyscale argv`` run in-process (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in err
    return err.strip()


def _raiser(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


# ---------------------------------------------------------------------------------- flags that do not parse


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["sample", "--num-samples", "1.5"], "argument --num-samples: expected an integer >= 1, got '1.5'"),
        (["sample", "--num-samples", "1e30"], "beyond the 64-bit integer range"),
        (["sample", "--num-samples", "9" * 5000], "beyond the 64-bit integer range"),
        (["sample", "--num-samples", "nan"], "expected an integer >= 1, got 'nan'"),
        (
            ["sample", "--seed", "1e-3"],
            "argument --seed: expected an integer, got '1e-3' (not a whole number)",
        ),
        (["grow", "sparse", "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
        (["grow", "sparse", "--lr=-inf"], "NaN and infinities are refused"),
        (
            ["grow", "sparse", "--connectivity", "inf"],
            "argument --connectivity: expected a finite number, got 'inf'",
        ),
        (["grow", "sparse", "--sparsity", "nan"], "expected a number in (0.0, 1.0], got 'nan'"),
    ],
)
def test_a_flag_that_does_not_parse_is_one_line_and_exit_2(argv, fragment, capsys):
    code, err = run(argv, capsys)
    line = assert_one_line(err)
    assert code == EXIT_ERROR
    assert fragment in line and line.startswith(
        f"polyscale {' '.join(argv[: 2 if argv[0] == 'grow' else 1])}:"
    )


@pytest.mark.parametrize(
    "text, value", [("1000000000", 10**9), ("1e9", 10**9), ("2.0e3", 2000), ("1_000", 1000), ("7", 7)]
)
def test_integer_flags_read_whole_numbers_in_any_notation(text, value):
    assert build_parser().parse_args(["sample", "--num-samples", text]).num_samples == value
    assert cli_args.any_int(text) == value


def test_float_types_refuse_nan_and_infinities():
    for parse in (
        cli_args.finite_float,
        cli_args.positive_float,
        cli_args.non_negative_float,
        cli_args.float_in(0.0, float("inf")),
    ):
        for text in ("nan", "inf", "-inf", "NaN", "1e999"):
            with pytest.raises(argparse.ArgumentTypeError, match="NaN and infinities are refused"):
                parse(text)
    assert cli_args.finite_float("-2.5") == -2.5 and cli_args.float_in(0.0, float("inf"))("3") == 3.0
    with pytest.raises(argparse.ArgumentTypeError, match="> 0, got 0"):
        cli_args.positive_float("0")
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0, got -1"):
        cli_args.non_negative_float("-1")
    assert cli_args.non_negative_float("0") == 0.0


# ------------------------------------------------------------------------------ failures caused for real


def test_a_directory_given_as_an_array_file(tmp_path, capsys):
    argv = ["train", "--preset", "digits2d", "--output-dir", str(tmp_path / "run"),
            "--set", "data.kind=array", "--set", f"data.path={tmp_path}"]  # fmt: skip
    code, err = run(argv, capsys)
    assert code == EXIT_ERROR
    assert "is a directory, expected a .npy or .npz file" in assert_one_line(err)


def test_an_image_over_pillows_pixel_limit_names_the_file_and_the_limit(tmp_path, capsys, monkeypatch):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.new("L", (20, 20)).save(tmp_path / "images" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels: over twice the limit, refused
    argv = ["train", "--preset", "digits2d", "--output-dir", str(tmp_path / "run"),
            "--set", "data.kind=image_folder", "--set", f"data.path={tmp_path / 'images'}"]  # fmt: skip
    code, err = run(argv, capsys)
    line = assert_one_line(err)
    assert code == EXIT_ERROR
    assert "big.png' has 400 pixels, more than the 200 that Pillow reads" in line
    assert "PIL.Image.MAX_IMAGE_PIXELS" in line


def test_a_tensor_too_large_to_allocate_is_out_of_memory(tmp_path, capsys):
    # 10^9 x 10^9 pixels per sample: the allocation fails at once on any machine
    argv = [
        "sample",
        "--resolution",
        "1000000000",
        "--timesteps",
        "1",
        "--output-file",
        str(tmp_path / "s.png"),
        "--force",  # past the up-front estimate (which then warns), to the allocation itself
    ]
    code, err = run(argv, capsys)
    assert err.startswith("warning: needs about ")
    err = err.split("\n", 1)[1]
    line = assert_one_line(err)
    assert code == EXIT_ERROR
    # each sample's noise is drawn alone (its own generator): one 10^9 x 10^9 float32 image is 3.5 EiB
    assert line.startswith("polyscale sample: error: out of memory: tried to allocate 3.5 EiB ")
    assert line.endswith("(try fewer --num-samples or --timesteps, a smaller --batch-size or --resolution, "
                         "or --tile-size)")  # fmt: skip


def test_a_truncated_safetensors_file_is_named(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "state.safetensors"
    save_file({"w": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:20])
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", lambda *a, **k: load_file(str(path)))
    code, err = run(["sample"], capsys)
    line = assert_one_line(err)
    assert code == EXIT_ERROR
    assert line.startswith(f"polyscale sample: error: {path}: corrupt or truncated safetensors file (")


def test_corrupt_json_is_an_error_not_an_internal_error(capsys, monkeypatch):
    monkeypatch.setattr(
        "polyscale.pipelines.sample.sample_checkpoint", lambda *a, **k: json.loads('{"a": 1,')
    )
    code, err = run(["sample"], capsys)
    assert code == EXIT_ERROR
    assert assert_one_line(err).startswith("polyscale sample: error: corrupt JSON file (Expecting")


# --------------------------------------------------------- failures raised by a stand-in for the pipeline

ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 1024000000000 bytes. Error code 12 (Cannot allocate memory)"
)
CASES = [
    (RuntimeError(ALLOCATOR), "error: out of memory: tried to allocate 953.7 GiB (try fewer --num-samples"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), "error: out of memory: MPS backend out"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity"),
     "error: out of memory: tried to allocate 20.00 GiB on the GPU (try"),
    (MemoryError("Unable to allocate 7.28 TiB for an array with shape (10,) and data type float64"),
     "error: out of memory: tried to allocate 7.28 TiB (try"),
    (MemoryError(), "error: out of memory (try fewer --num-samples"),
    (OSError(errno.ENOSPC, "No space left on device", "out/samples.png"),
     "error: no space left on device while writing out/samples.png"),
    (OSError(errno.ENOSPC, "No space left on device"), "error: no space left on device (free some disk space"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/run/model"), "error: permission denied: /srv/run/model"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), "error: read-only file system: /mnt/ro/x"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.npy"),
     "error: [Errno 2] No such file or directory: 'x.npy'"),
    (FileNotFoundError("array file 'x.npy' does not exist"), "error: array file 'x.npy' does not exist"),
    (AssertionError("Torch not compiled with CUDA enabled"),
     "error: --device cuda: no CUDA device on this machine (use --device cpu or auto)"),
    (RuntimeError("Found no NVIDIA driver on your system."), "error: --device cuda: no CUDA device"),
    (ValueError("checkpoint 'x' has dims=2,\nbut dims=3 was requested"),
     "error: checkpoint 'x' has dims=2, but dims=3 was requested"),
]  # fmt: skip


@pytest.mark.parametrize("exc, fragment", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_recognised_failures_are_one_line_and_exit_2(exc, fragment, capsys, monkeypatch):
    monkeypatch.delenv("POLYSCALE_DEBUG", raising=False)
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", _raiser(exc))
    code, err = run(["sample", "--num-samples", "2"], capsys)
    line = assert_one_line(err)
    assert code == EXIT_ERROR
    assert line.startswith(f"polyscale sample: {fragment}")


def test_out_of_memory_advice_follows_the_command(capsys, monkeypatch):
    monkeypatch.setattr("polyscale.pipelines.train.train_experiment", _raiser(RuntimeError(ALLOCATOR)))
    code, err = run(["train", "--preset", "digits2d", "--output-dir", "unused"], capsys)
    assert code == EXIT_ERROR
    assert assert_one_line(err) == (
        "polyscale train: error: out of memory: tried to allocate 953.7 GiB (try a smaller --set "
        "train.batch_size, data.crop_size or model.base_channels)"
    )
    assert describe_failure(MemoryError(), "graph sample") == (
        "error: out of memory (try fewer --num-graphs or a smaller --num-nodes)",
        EXIT_ERROR,
    )
    assert describe_failure(MemoryError(), "") == (
        "error: out of memory (try a smaller problem: fewer samples, a smaller batch size or resolution)",
        EXIT_ERROR,
    )


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", _raiser(KeyboardInterrupt()))
    code, err = run(["sample"], capsys)
    assert code == EXIT_INTERRUPTED == 130
    assert assert_one_line(err) == "polyscale sample: interrupted"


def test_ctrl_c_during_training_says_where_the_checkpoints_are(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"

    def interrupted_training(*args, **kwargs):
        (run_dir / "checkpoints" / "step_00000002").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr("polyscale.pipelines.train.train_experiment", interrupted_training)
    code, err = run(["train", "--preset", "digits2d", "--output-dir", str(run_dir)], capsys)
    assert code == EXIT_INTERRUPTED
    assert assert_one_line(err) == (
        f"polyscale train: interrupted; the checkpoints written so far are kept in {run_dir} "
        "(the same command resumes from the newest)"
    )


def test_an_unexpected_exception_is_an_internal_error_with_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("POLYSCALE_DEBUG", raising=False)
    monkeypatch.setattr(
        "polyscale.pipelines.sample.sample_checkpoint", _raiser(TypeError("unsupported operand\ntype(s)"))
    )
    code, err = run(["sample"], capsys)
    assert code == EXIT_INTERNAL == 1
    assert assert_one_line(err) == (
        "polyscale sample: internal error: TypeError: unsupported operand type(s) "
        "(run with --debug or POLYSCALE_DEBUG=1 for the traceback)"
    )
    monkeypatch.setattr(
        "polyscale.pipelines.sample.sample_checkpoint", _raiser(RuntimeError("shape mismatch"))
    )
    code, err = run(["sample"], capsys)
    assert code == EXIT_INTERNAL
    assert "internal error: RuntimeError: shape mismatch (run with --debug" in assert_one_line(err)


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--debug", "sample"], None),
        (["sample", "--debug"], None),
        (["presets", "--debug"], None),
        (["sample"], "1"),
    ],
)
def test_debug_lets_the_exception_through_with_its_traceback(argv, env, capsys, monkeypatch):
    if env is None:
        monkeypatch.delenv("POLYSCALE_DEBUG", raising=False)
    else:
        monkeypatch.setenv("POLYSCALE_DEBUG", env)
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", _raiser(TypeError("boom")))
    monkeypatch.setattr("polyscale.pipelines.experiment.preset_names", _raiser(TypeError("boom")))
    with pytest.raises(TypeError, match="boom"):
        main(argv)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", _raiser(ValueError("bad")))
    monkeypatch.setattr("polyscale.pipelines.experiment.preset_names", _raiser(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        main(argv)


@pytest.mark.parametrize("value", ["0", "", "false"])
def test_debug_variable_off(value, capsys, monkeypatch):
    monkeypatch.setenv("POLYSCALE_DEBUG", value)
    monkeypatch.setattr("polyscale.pipelines.sample.sample_checkpoint", _raiser(TypeError("boom")))
    code, err = run(["sample"], capsys)
    assert code == EXIT_INTERNAL and "internal error: TypeError: boom" in assert_one_line(err)


def test_the_debug_flag_defaults_off_everywhere():
    parse = build_parser().parse_args
    assert parse(["presets"]).debug is False
    assert parse(["--debug", "presets"]).debug is True
    assert parse(["grow", "depth", "--debug"]).debug is True
    assert all(parse(argv).debug is False for argv in (["sample"], ["graph", "sample", "--checkpoint", "x"]))
