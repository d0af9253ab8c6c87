"""The ``polyscale`` command line: parses flags and calls :mod:`polyscale.pipelines`. No logic of its own.

Commands live by group: :mod:`polyscale.cli.grid` (presets, train, sample, evaluate),
:mod:`polyscale.cli.graph` (graph ...), :mod:`polyscale.cli.grow` (grow ...); shared parser pieces in
:mod:`polyscale.cli.args`.

Every failure is one line on stderr and a non-zero exit, never a traceback:

- a flag that does not parse (or is out of range): ``polyscale <cmd>: error: <message> (see polyscale <cmd>
  --help)``, exit code 2 (argparse's convention);
- an error the pipelines report (``ValueError``, ``OSError``: bad checkpoint, contradicting settings, missing
  files) and the failures polyscale recognises: out of memory (``MemoryError``, ``torch.OutOfMemoryError``,
  or an allocator's ``RuntimeError``: ``out of memory: tried to allocate ... (try ...)``), a disk that is full
  (``no space left on device while writing <file>``), a file it may not touch (``permission denied: <file>``),
  a corrupt or truncated safetensors or JSON file, an image over Pillow's pixel limit, ``--device cuda``
  without a CUDA device: ``polyscale <cmd>: error: <message>``, exit code 2;
- Ctrl-C: ``polyscale <cmd>: interrupted`` (saying where the checkpoints written so far are kept, for commands
  with an ``--output-dir``), exit code 130;
- anything else: ``polyscale <cmd>: internal error: <Type>: <message> (run with --debug or POLYSCALE_DEBUG=1
  for the traceback)``, exit code 1.

``--debug`` (before or after the command) or the environment variable ``POLYSCALE_DEBUG=1`` turns the
translation off: the exception propagates with its full traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from pathlib import Path

from polyscale.cli.args import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    OneLineParser,
    add_debug,
)
from polyscale.cli.finetune import add_finetune_command
from polyscale.cli.graph import add_graph_commands
from polyscale.cli.grid import (
    add_evaluate_command,
    add_presets_command,
    add_sample_command,
    add_train_command,
)
from polyscale.cli.grow import add_grow_commands
from polyscale.cli.memory import add_memory_command

__all__ = ["EXIT_ERROR", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "build_parser", "describe_failure", "main"]

DEBUG_ENV = "POLYSCALE_DEBUG"


def _version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polyscale")
    except PackageNotFoundError:
        from polyscale import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``polyscale`` parser with subcommands ``presets``, ``train``, ``sample``, ``evaluate``, ``graph``
    and ``grow``."""
    parser = OneLineParser(prog="polyscale", description="Scale-agnostic diffusion models.")
    parser.add_argument(
        "--version", action="version", version=f"polyscale {_version()}", help="print the version and exit"
    )
    add_debug(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    add_presets_command(sub)
    add_train_command(sub)
    add_sample_command(sub)
    add_evaluate_command(sub)
    add_finetune_command(sub)
    add_graph_commands(sub)
    add_grow_commands(sub)
    add_memory_command(sub)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ------------------------------------------------------------------------------------ recognised failures

# what to try after running out of memory, per command (default: _MEMORY_HINT)
_MEMORY_HINT = "try a smaller problem: fewer samples, a smaller batch size or resolution"
_MEMORY_HINTS = {
    "sample": "try fewer --num-samples or --timesteps, a smaller --batch-size or --resolution, or --tile-size",
    "evaluate": "try fewer --num-samples or --timesteps, or a smaller --resolution",
    "train": "try a smaller --set train.batch_size, data.crop_size or model.base_channels",
    "graph sample": "try fewer --num-graphs or a smaller --num-nodes",
    "graph evaluate": "try fewer --num-graphs or smaller --sizes",
    "graph train": "try a smaller --set optimization.batch_size or model.hidden",
    "grow sparse": "try a smaller --batch-size or --hidden-sizes",
    "grow depth": "try a smaller --batch-size, --block-size, --n-embd or --max-layers",
}
_ALLOCATION_FAILURES = (
    "DefaultCPUAllocator: can't allocate memory",
    "not enough memory",
    "CUDA out of memory",
    "out of memory",
    "Storage size calculation overflowed",
)
_NO_CUDA = ("Torch not compiled with CUDA enabled", "Found no NVIDIA driver", "No CUDA GPUs are available")


def _bytes(count: int) -> str:
    """``count`` bytes in binary units, e.g. ``953.7 GiB``."""
    size, unit = float(count), "bytes"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024:
            break
        size, unit = size / 1024, name
    return f"{size:.1f} {unit}" if unit != "bytes" else f"{count} bytes"


def _memory_cause(text: str) -> str:
    """The short cause of an allocation failure, from its message."""
    if match := re.search(r"allocate (\d+) bytes", text):  # torch's CPU allocator
        return f"tried to allocate {_bytes(int(match.group(1)))}"
    if match := re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGTPE]?i?B)", text):  # CUDA
        return f"tried to allocate {match.group(1)} on the GPU"
    if match := re.search(r"[Uu]nable to allocate ([\d.]+ ?[KMGTPE]?i?B)", text):  # numpy
        return f"tried to allocate {match.group(1)}"
    if match := re.search(r"sizes=\[([^\]]*)\]", text):  # a size product beyond 64 bits
        return f"a tensor of shape ({match.group(1)}) is too large to allocate"
    first = " ".join(text.split()).split(". ")[0]  # may be empty: a bare MemoryError
    return first if len(first) <= 120 else first[:117] + "..."


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _ALLOCATION_FAILURES)


def _safetensors_error(err: BaseException) -> bool:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return False
    return isinstance(err, SafetensorError)


def _file_of_failed_read(err: BaseException) -> str | None:
    """The file a reader was opening when ``err`` was raised: the ``filename`` argument of the innermost
    frame of the safetensors package in the traceback, when there is one (its errors do not name the file)."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__", "").startswith("safetensors"):
            name = frame.f_locals.get("filename")
            if isinstance(name, (str, os.PathLike)):
                found = os.fspath(name)
        tb = tb.tb_next
    return str(found) if found is not None else None


def _os_error(err: OSError) -> str:
    """One line for an ``OSError``: disk full and permission denied spelled out with the file."""
    name = err.filename if err.filename is not None else err.filename2
    where = f" {os.fsdecode(name)}" if name is not None else ""
    if err.errno == errno.ENOSPC:
        if where:
            return f"no space left on device while writing{where}"
        return "no space left on device (free some disk space, or write somewhere else)"
    if err.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing{where}" if where else "disk quota exceeded"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}" if where else f"permission denied ({_one_line(err)})"
    if err.errno == errno.EROFS:
        return f"read-only file system:{where}" if where else "read-only file system"
    return _one_line(err)


def describe_failure(err: BaseException, command: str = "") -> tuple[str, int]:
    """``(line, exit code)`` for an exception a command raised: ``"error: <message>"`` and 2 for the failures
    of the module docstring, ``"internal error: <Type>: <message> (run with --debug ...)"`` and 1 otherwise.
    ``command`` (e.g. ``"sample"``, ``"graph train"``) picks the out-of-memory advice."""
    import json

    if _is_out_of_memory(err):
        hint = _MEMORY_HINTS.get(command, _MEMORY_HINT)
        cause = _memory_cause(str(err))
        return f"error: out of memory{': ' + cause if cause else ''} ({hint})", EXIT_ERROR
    if isinstance(err, (AssertionError, RuntimeError)) and any(s in str(err) for s in _NO_CUDA):
        return "error: --device cuda: no CUDA device on this machine (use --device cpu or auto)", EXIT_ERROR
    if _safetensors_error(err):
        name = _file_of_failed_read(err)
        where = f"{name}: " if name else ""
        return f"error: {where}corrupt or truncated safetensors file ({_one_line(err)})", EXIT_ERROR
    if isinstance(err, json.JSONDecodeError):
        return f"error: corrupt JSON file ({_one_line(err)})", EXIT_ERROR
    if type(err).__name__ == "DecompressionBombError":  # PIL's, raised by an image reader
        return (
            f"error: image over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS): {_one_line(err)}",
            EXIT_ERROR,
        )
    if isinstance(err, OSError):
        return f"error: {_os_error(err)}", EXIT_ERROR
    if isinstance(err, ValueError):
        return f"error: {_one_line(err)}", EXIT_ERROR
    return (
        f"internal error: {type(err).__name__}: {_one_line(err)} "
        f"(run with --debug or {DEBUG_ENV}=1 for the traceback)",
        EXIT_INTERNAL,
    )


def _interrupted(args: argparse.Namespace | None) -> str:
    """``interrupted``, and where the checkpoints written so far are kept when the command writes a run."""
    output_dir = getattr(args, "output_dir", None)
    if output_dir is None or not Path(output_dir).is_dir():
        return "interrupted"
    if next(Path(output_dir).rglob("checkpoint*"), None) is None:  # nothing saved yet
        return "interrupted"
    return (
        f"interrupted; the checkpoints written so far are kept in {output_dir} "
        "(the same command resumes from the newest)"
    )


def _debug_from_environment() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _command_name(args: argparse.Namespace) -> str:
    sub_name = {"graph": "graph_command", "grow": "grow_command"}.get(args.command)
    return f"{args.command} {getattr(args, sub_name)}" if sub_name else args.command


def main(argv: list[str] | None = None) -> int:
    """Run ``polyscale`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Flag errors exit through ``SystemExit(2)`` (argparse); other failures return 2 (recognised), 1
    (unexpected) or 130 (Ctrl-C), each with exactly one line on stderr (module docstring). With ``--debug`` or
    ``POLYSCALE_DEBUG=1`` they propagate instead.
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_from_environment() or "--debug" in tokens[: tokens.index("--") if "--" in tokens else None]
    name, args = "", None
    try:
        args, extras = build_parser().parse_known_args(tokens)
        name, debug = _command_name(args), debug or bool(getattr(args, "debug", False))
        if extras:
            parser = args.command_parser
            parser.error(f"unrecognized arguments: {' '.join(extras)}{parser.unknown_flag_hint(extras)}")
        from polyscale.pipelines.allocator import apply_from_environment

        apply_from_environment()  # POLYSCALE_KEEP_FREED_MEMORY=1: reuse freed memory (pipelines/allocator.py)
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"polyscale{' ' + name if name else ''}: {_interrupted(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        line, code = describe_failure(err, name)
        print(f"polyscale{' ' + name if name else ''}: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
