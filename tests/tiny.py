"""What several test files share: a tiny digits U-Net for runs of a few seconds, and running the CLI in-process."""

from __future__ import annotations

from polyscale.cli.main import main

# a digits2d run small enough for a test: 8 base channels, two levels, batches of 8
TINY_DIGITS = [
    "model.base_channels=8",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_levels=[1]",
    "model.attention_kernel_sizes=[3]",
    "model.num_heads=2",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.log_every=1",
]


def sets(*pairs: str) -> list[str]:
    """``--set`` flags for ``key=value`` pairs."""
    return [a for kv in pairs for a in ("--set", kv)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``polyscale argv`` run in-process (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err
