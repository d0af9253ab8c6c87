"""The ``finetune`` command: fine-tune a trained model on new data with a LoRA adapter, or every weight."""

from __future__ import annotations

import argparse

from polyscale.cli.args import (
    add_allow_change,
    add_command,
    add_overrides,
    add_run_dir,
    any_int,
    finite_float,
    non_negative_float,
    positive_int,
)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from polyscale.pipelines.finetune import adapter_config, finetune

    lora = adapter_config(
        rank=args.lora_rank,
        full=args.full,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=tuple(args.lora_targets or ()),
    )
    result = finetune(
        args.checkpoint,
        args.output_dir,
        lora=lora,
        data_dir=args.data_dir,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        overrides=args.set,
        merge=args.merge,
        resume=not args.no_resume,
        allow_change=tuple(args.allow_change or ()),
    )
    counts, done = result.parameters, result.train
    what = "every weight" if lora is None else f"a LoRA adapter of rank {lora.rank}"
    print(
        f"fine-tuned {what} ({counts.trainable:,} of {counts.total:,} parameters) for {done.step} steps in "
        f"{done.wall_time:.1f} s"
    )
    for kind, path in (("adapter", result.adapter_dir), ("model", result.model_dir)):
        if path is not None:
            print(f"{kind} saved to {path}")
    return 0


def add_finetune_command(sub: argparse._SubParsersAction) -> None:
    from polyscale.pipelines.experiment import ExperimentConfig
    from polyscale.pipelines.finetune import DEFAULT_LR, DEFAULT_STEPS
    from polyscale.pipelines.train import CHANGEABLE

    p = add_command(
        sub,
        "finetune",
        _cmd_finetune,
        "fine-tune a model on new data: a small LoRA adapter (--lora-rank) or every weight (--full)",
        config=ExperimentConfig,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="the base: a model directory, a run directory or a shipped model name",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="PATH",
        help="a folder of images (data.kind=image_folder) or a .npy/.npz array file (data.kind=array); "
        "default: the base model's own data, or what --set data.* names (e.g. data.kind=texture)",
    )
    add_run_dir(p, required=True, help="run directory (checkpoints, logs, adapter/ or model/)")
    p.add_argument(
        "--lora-rank",
        type=any_int,
        default=None,
        metavar="R",
        help="train a LoRA adapter of rank R >= 1 on the frozen base (written alone to OUTPUT_DIR/adapter)",
    )
    p.add_argument(
        "--lora-alpha",
        type=finite_float,
        default=None,
        help="scale of the adapter's update, alpha / R (default alpha = R)",
    )
    p.add_argument(
        "--lora-dropout",
        type=non_negative_float,
        default=0.0,
        help="dropout on the adapter's input (default 0)",
    )
    p.add_argument(
        "--lora-targets",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="adapt only the Conv/Linear layers whose names match these globs, e.g. 'up.*' '*.attn.*' "
        "(default: every convolution, linear layer and attention projection)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="fine-tune every weight instead of an adapter (written to OUTPUT_DIR/model)",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="LoRA: also write the base with the adapter folded in, a plain model directory, to OUTPUT_DIR/model",
    )
    p.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})"
    )
    p.add_argument(
        "--lr",
        type=finite_float,
        default=DEFAULT_LR,
        help=f"peak learning rate, LoRA and --full alike (default {DEFAULT_LR:g})",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="samples per step (default: the base model's)"
    )
    add_overrides(
        p,
        metavar="KEY=VALUE",
        help="override the data or training settings, e.g. data.kind=texture, data.image=brick, "
        "train.warmup_steps=10 (the network and diffusion.sigma_data are the base model's)",
    )
    add_allow_change(p, CHANGEABLE)
