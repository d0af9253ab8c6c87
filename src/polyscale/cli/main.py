"""The ``polyscale`` command line: parses flags and calls :mod:`polyscale.pipelines`. No logic of its own.

Commands live by group: :mod:`polyscale.cli.grid` (presets, train, sample, evaluate),
:mod:`polyscale.cli.graph` (graph ...), :mod:`polyscale.cli.grow` (grow ...); shared parser pieces in
:mod:`polyscale.cli.args`.

Every failure is one line on stderr and a non-zero exit: a flag that does not parse (or is out of range) gives
``polyscale <cmd>: error: <message> (see polyscale <cmd> --help)`` and exit code 2 (argparse's convention);
an error raised by the pipelines (``ValueError``, ``OSError``: bad checkpoint, contradicting flags, missing
files, no CUDA, out of memory) gives ``polyscale <cmd>: error: <message>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from polyscale.cli.args import EXIT_ERROR, OneLineParser
from polyscale.cli.graph import add_graph_commands
from polyscale.cli.grid import (
    add_evaluate_command,
    add_presets_command,
    add_sample_command,
    add_train_command,
)
from polyscale.cli.grow import add_grow_commands

__all__ = ["EXIT_ERROR", "build_parser", "main"]


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
    sub = parser.add_subparsers(dest="command", required=True)
    add_presets_command(sub)
    add_train_command(sub)
    add_sample_command(sub)
    add_evaluate_command(sub)
    add_graph_commands(sub)
    add_grow_commands(sub)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``polyscale`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Flag errors exit through ``SystemExit(2)`` (argparse); pipeline errors return 2. Either way stderr gets
    exactly one line.
    """
    import torch

    from polyscale.pipelines.allocator import apply_from_environment

    args, extras = build_parser().parse_known_args(argv)
    if extras:
        parser = args.command_parser
        parser.error(f"unrecognized arguments: {' '.join(extras)}{parser.unknown_flag_hint(extras)}")
    try:
        apply_from_environment()  # POLYSCALE_KEEP_FREED_MEMORY=1: reuse freed memory (pipelines/allocator.py)
        return args.func(args)
    except (ValueError, OSError, torch.OutOfMemoryError) as err:
        sub_name = {"graph": "graph_command", "grow": "grow_command"}.get(args.command)
        name = f"{args.command} {getattr(args, sub_name)}" if sub_name else args.command
        print(f"polyscale {name}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
