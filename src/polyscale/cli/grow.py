"""Growth commands: ``grow sparse`` (a sparse classifier that grows) and ``grow depth`` (a GPT that deepens).

Both read like ``train``: ``--preset NAME|file.yaml`` (a shipped growth preset by default), ``--set KEY=VALUE``
overrides, and one shortcut flag per field of the config dataclass that has a ``help`` in its metadata
(:mod:`polyscale.pipelines.grow_config`): the flags are built by walking those fields, so each setting is
written once. A flag left out keeps the preset's value; a flag given wins over ``--set`` of the same key.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from typing import TYPE_CHECKING, Any, Literal, Union

from polyscale.cli.args import (
    add_allow_change,
    add_command,
    add_device,
    add_force,
    add_overrides,
    add_run_dir,
    add_seed,
    any_float,
    any_int,
    float_in,
)

if TYPE_CHECKING:
    from polyscale.pipelines.grow_config import GrowDepthConfig, GrowSparseConfig

SPARSE_PRESET = "sparse_mnist1d"
DEPTH_PRESET = "depth_shakespeare"
RUN_FILES = "config.yaml, model/, checkpoints/, history.jsonl, summary.json"  # every run directory's layout


def _overrides(args: argparse.Namespace, cls: type) -> list[str]:
    """``--set`` items, then one ``key=value`` per flag given (JSON values: YAML reads them back exactly)."""
    from polyscale.pipelines.grow_config import flag_fields

    names = [f.name for f in flag_fields(cls)] + ["device", "seed"]
    given = [(name, getattr(args, name)) for name in names if getattr(args, name) is not None]
    return [*args.set, *(f"{name}={json.dumps(value)}" for name, value in given)]


def _cmd_grow_sparse(args: argparse.Namespace) -> int:
    from polyscale.pipelines.grow import grow_sparse
    from polyscale.pipelines.grow_config import GrowSparseConfig, load_grow_sparse_config

    cfg = load_grow_sparse_config(args.preset, _overrides(args, GrowSparseConfig))
    summary = grow_sparse(
        cfg,
        args.output_dir,
        resume=not args.no_resume,
        allow_change=tuple(args.allow_change),
        force=args.force,
    )
    print(
        f"{cfg.dataset}: test accuracy {summary['test_accuracy']:.4f} at connectivity "
        f"{summary['final_connectivity']:.4%} ({summary['final_connections']} connections, from "
        f"{summary['initial_connectivity']:.4%}); {summary['growth_events']} growth events added "
        f"{summary['connections_added']} connections and {summary['clones']} clones"
    )
    print(
        f"snapshots: {summary['snapshots']} (compression {summary['snapshot_compression_ratio']:.1f}x); "
        f"best snapshot {summary['best_snapshot_test_accuracy']:.4f}, ensemble of "
        f"{len(summary['ensemble_snapshots'])} {summary['ensemble_test_accuracy']:.4f}"
    )
    if args.output_dir is not None:
        print(f"wrote {args.output_dir}/: {RUN_FILES}, snapshots.safetensors")
    return 0


def _cmd_grow_depth(args: argparse.Namespace) -> int:
    from polyscale.pipelines.grow_config import GrowDepthConfig, load_grow_depth_config
    from polyscale.pipelines.grow_depth import grow_depth

    cfg = load_grow_depth_config(args.preset, _overrides(args, GrowDepthConfig))
    summary = grow_depth(
        cfg,
        args.output_dir,
        resume=not args.no_resume,
        allow_change=tuple(args.allow_change),
        force=args.force,
    )
    jumps = ", ".join(
        f"step {s}: {j:+.4f}" for s, j in zip(summary["insertion_steps"], summary["loss_jumps"], strict=True)
    )
    print(
        f"validation loss {summary['final_val_loss']:.4f} after {summary['steps']} steps; layers "
        f"{summary['initial_layers']} -> {summary['final_layers']} ({summary['growth_events']} insertions"
        f"{': ' + jumps if jumps else ''}); {summary['training_flops']:.3e} training FLOPs"
    )
    print("sample:\n" + summary["sample"][:300])
    if args.output_dir is not None:
        layers = ", layers/" if summary["growth_events"] else ""
        print(f"wrote {args.output_dir}/: {RUN_FILES}, growth.json{layers}, sample.txt")
    return 0


def _shown(value: object) -> str:
    """A preset value as a user would type it."""
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _argument(tp: Any) -> dict[str, Any]:
    """``add_argument`` keywords (type, choices, nargs) for a config field annotated ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):  # X | None: the flag takes an X (None is the preset's business)
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"a flag needs one type besides None, got {tp!r}")
        return _argument(options[0])
    if origin is Literal:
        return {"type": type(args[0]), "choices": list(args)}
    if origin is tuple:
        return {**_argument(args[0]), "nargs": "+"}
    if tp is int:
        return {"type": any_int}
    if tp is float:
        return {"type": any_float}
    if tp is str:
        return {"type": str}
    raise TypeError(f"no flag for a config field of type {tp!r}")


def _add_config_flags(
    p: argparse.ArgumentParser, values: GrowSparseConfig | GrowDepthConfig, preset: str, hint: str
) -> None:
    """``--preset``, ``--set``, and a flag (default None: the preset's value) for every flag field of the
    config dataclass ``values`` (the preset's settings, shown in the help)."""
    from polyscale.pipelines.grow_config import flag_fields, grow_preset_names

    p.add_argument(
        "--preset", default=preset,
        help=f"growth preset ({', '.join(grow_preset_names())}) or a .yaml file (default {preset})",
    )  # fmt: skip
    add_overrides(p, metavar="KEY=VALUE", help=f"override a field of the preset, repeatable; e.g. {hint}")
    cls = type(values)
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields(cls):
        target: argparse.ArgumentParser | argparse._ArgumentGroup = p
        group = f.metadata.get("group")
        if group:
            if group not in groups:
                groups[group] = p.add_argument_group(group)
            target = groups[group]
        text = f"{f.metadata['help']} (preset {preset}: {_shown(getattr(values, f.name))})"
        target.add_argument(
            f"--{f.name.replace('_', '-')}",
            default=None,
            help=text.replace("%", "%%"),
            **_argument(hints[f.name]),
        )
    add_device(p, default=None, help=f"auto: CUDA when present (preset {preset}: {values.device})")
    add_seed(p, default=None, help=f"random seed (preset {preset}: {values.seed})")


def _add_grow_sparse(gsub: argparse._SubParsersAction) -> None:
    from polyscale.pipelines.grow import CHANGEABLE
    from polyscale.pipelines.grow_config import GrowSparseConfig, load_grow_sparse_config

    p = add_command(
        gsub, "sparse", _cmd_grow_sparse, "train a sparse classifier that grows from a near-empty start",
        config=GrowSparseConfig,
    )  # fmt: skip
    preset = load_grow_sparse_config(SPARSE_PRESET)
    _add_config_flags(p, preset, SPARSE_PRESET, "epochs=30, schedule.spike_threshold=0.3")
    # the former name of --connectivity, kept working but out of --help
    p.add_argument("--sparsity", type=float_in(0.0, 1.0), dest="connectivity", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # fmt: skip
    add_run_dir(
        p,
        required=False,
        help=f"run directory ({RUN_FILES}, snapshots.safetensors); a checkpoint every checkpoint_every epochs "
        "that a rerun with the same settings resumes from",
    )
    add_allow_change(p, CHANGEABLE)
    add_force(p)


def _add_grow_depth(gsub: argparse._SubParsersAction) -> None:
    from polyscale.pipelines.grow_config import GrowDepthConfig, load_grow_depth_config
    from polyscale.pipelines.grow_depth import CHANGEABLE

    p = add_command(
        gsub, "depth", _cmd_grow_depth, "train a character-level GPT that inserts layers when it stagnates",
        config=GrowDepthConfig,
    )  # fmt: skip
    _add_config_flags(p, load_grow_depth_config(DEPTH_PRESET), DEPTH_PRESET, "max_layers=6")
    add_run_dir(
        p,
        required=False,
        help=f"run directory ({RUN_FILES}, growth.json, layers/, sample.txt); a checkpoint every "
        "checkpoint_every steps that a rerun with the same settings resumes from",
    )
    add_allow_change(p, CHANGEABLE)
    add_force(p)


def add_grow_commands(sub: argparse._SubParsersAction) -> None:
    grow = sub.add_parser(
        "grow", help="networks that grow during training: sparse, depth", description="Growth."
    )
    gsub = grow.add_subparsers(dest="grow_command", required=True)
    _add_grow_sparse(gsub)
    _add_grow_depth(gsub)
