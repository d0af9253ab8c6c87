"""Grid commands: ``presets``, ``train``, ``sample``, ``evaluate``."""

from __future__ import annotations

import argparse

from polyscale.cli.args import (
    add_allow_change,
    add_command,
    add_device,
    add_force,
    add_overrides,
    add_run_dir,
    add_seed,
    int_at_least,
    non_negative_float,
    non_negative_int,
    positive_int,
)


def _cmd_presets(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import preset_names
    from polyscale.pipelines.graph_config import graph_preset_names
    from polyscale.pipelines.grow_config import grow_preset_names
    from polyscale.pipelines.sample import shipped_models

    print("presets:", " ".join(preset_names()))
    print("graph presets:", " ".join(graph_preset_names()) or "(none)")
    print("growth presets:", " ".join(grow_preset_names()) or "(none)")
    print("shipped models:", " ".join(shipped_models()) or "(none)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import load_experiment
    from polyscale.pipelines.train import train_experiment

    cfg = load_experiment(args.preset, overrides=args.set)
    result = train_experiment(
        cfg,
        args.output_dir,
        resume=not args.no_resume,
        init_from=args.init_from,
        allow_change=tuple(args.allow_change or ()),
    )
    print(f"trained {result.step} steps in {result.wall_time:.1f} s; model saved to {args.output_dir}/model")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from polyscale.pipelines.sample import sample_checkpoint

    dims = args.dim if args.dim is not None or args.checkpoint is not None else 2
    result = sample_checkpoint(
        args.checkpoint,
        **_sampling_kwargs(args),
        output_file=args.output_file,
        batch_size=args.batch_size,
        save_raw=args.save_raw or False,
        dims=dims,
        channels=args.channels,
        base_channels=args.base_channels,
        create_animation=args.create_animation,
        animation_interval=args.animation_interval,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        force=args.force,
        lora=args.lora,
    )
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from polyscale.pipelines.evaluate import evaluate_checkpoint, format_table

    rows = evaluate_checkpoint(args.checkpoint, **_sampling_kwargs(args), force=args.force)
    print(format_table(rows))
    return 0


def _add_sampling_args(p: argparse.ArgumentParser, *, num_samples: int) -> None:
    """Flags that `sample` and `evaluate` share: how many samples, sampler, steps, size, seed, device."""
    from polyscale.diffusion import SAMPLERS

    p.add_argument("--num-samples", type=positive_int, default=num_samples, help=f"default {num_samples}")
    p.add_argument(
        "--sampler",
        default=None,
        choices=list(SAMPLERS),
        help="default: the one the checkpoint was trained with",
    )
    p.add_argument(
        "--timesteps", type=positive_int, default=None, help="denoising steps (default: the checkpoint's)"
    )
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="spatial size per axis, a multiple of the model's size multiple (default: training size)",
    )
    add_seed(p, "seed of the noise (default 0); sample i depends on the seed and i alone")
    add_device(p, "auto: CUDA when present")
    p.add_argument(
        "--class-label",
        type=int_at_least(0),
        action="append",
        default=None,
        metavar="K",
        help="class to sample (class-conditional models; repeat to cycle through several; default: every "
        "class in turn)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help='text to sample (text-conditioned models, e.g. "a handwritten seven"; repeat to cycle)',
    )
    p.add_argument(
        "--guidance-scale",
        type=non_negative_float,
        default=None,
        metavar="W",
        help="classifier-free guidance: 1 = none, 0 = unconditional, > 1 follows the condition more closely "
        "(default: the model's)",
    )
    add_overrides(
        p,
        metavar="sampler.KEY=VALUE",
        help="override how the model samples, e.g. sampler.options.eta=1.0 or sampler.sigma_max=40 "
        "(sampler.* only; options are checked against the sampler's parameters)",
    )


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.timesteps,
        seed=args.seed,
        resolution=args.resolution,
        device=args.device,
        overrides=args.set,
        class_labels=args.class_label,
        prompts=args.prompt,
        guidance_scale=args.guidance_scale,
    )


def add_presets_command(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "presets", _cmd_presets, "list the shipped presets and models")


def add_train_command(sub: argparse._SubParsersAction) -> None:
    from polyscale.pipelines.experiment import ExperimentConfig
    from polyscale.pipelines.train import CHANGEABLE

    p = add_command(
        sub, "train", _cmd_train, "train a preset (or a YAML experiment file)", config=ExperimentConfig
    )
    p.add_argument(
        "--preset", required=True, help="preset name (see `polyscale presets`) or path to a .yaml file"
    )
    add_run_dir(
        p,
        required=True,
        help="run directory (checkpoints, logs, final model/)",
    )
    add_overrides(p, metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from this model directory or shipped model (same network as the preset); "
        "a run resuming its own checkpoint ignores it",
    )
    add_allow_change(p, CHANGEABLE)


def add_sample_command(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sample", _cmd_sample, "generate samples from a model directory or a shipped model")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model directory or shipped model name (default: the shipped model for --dim: "
        "1 mnist1d, 2 digits2d, 3 porous3d)",
    )
    p.add_argument("--dim", type=int, choices=[1, 2, 3], default=None, help="spatial dimensions (default 2)")
    p.add_argument(
        "--channels", type=positive_int, default=None, help="data channels (checked against the checkpoint)"
    )
    p.add_argument(
        "--base-channels",
        type=positive_int,
        default=None,
        help="model width (checked against the checkpoint)",
    )
    p.add_argument(
        "--create-animation",
        action="store_true",
        help="also write a GIF of x beside the denoised estimate, and an MP4 when ffmpeg is found",
    )
    p.add_argument(
        "--animation-interval", type=positive_int, default=1, help="keep every K-th step in the animation"
    )
    p.add_argument(
        "--tile-size",
        type=positive_int,
        default=None,
        help="denoise overlapping windows of this edge (bounded memory)",
    )
    p.add_argument(
        "--tile-overlap",
        type=non_negative_int,
        default=None,
        help="positions windows share, smaller than --tile-size (default tile/4)",
    )
    _add_sampling_args(p, num_samples=16)
    p.add_argument(
        "--output-file",
        default="samples.png",
        help="picture to write, a .png (raw files and animations beside it)",
    )
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per batch (default: all)")
    p.add_argument(
        "--lora",
        default=None,
        metavar="DIR",
        help="merge a LoRA adapter trained on --checkpoint (polyscale finetune's RUN/adapter) before sampling",
    )
    p.add_argument(
        "--save-raw",
        nargs="?",
        const="npy",
        default=None,
        choices=["npy", "pt"],
        help="also write the raw samples: .npy (the default format) or .pt (a tensor for "
        "torch.load(weights_only=True)); 3D always writes them (.npy unless pt is given)",
    )
    add_force(p)


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "evaluate",
        _cmd_evaluate,
        "score a model against held-out real data, beside the real-vs-real floor",
    )
    p.add_argument("--checkpoint", required=True, help="model directory, or a shipped model name")
    _add_sampling_args(p, num_samples=512)
    add_force(p, "evaluate")
