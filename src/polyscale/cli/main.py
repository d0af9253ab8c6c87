"""The ``polyscale`` command line: parses flags and calls :mod:`polyscale.pipelines`. No logic of its own."""

from __future__ import annotations

import argparse
import sys


def _cmd_presets(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import preset_names
    from polyscale.pipelines.sample import shipped_models

    print("presets:", " ".join(preset_names()))
    print("shipped models:", " ".join(shipped_models()) or "(none)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from polyscale.pipelines.experiment import load_experiment
    from polyscale.pipelines.train import train_experiment

    cfg = load_experiment(args.preset, overrides=args.set)
    result = train_experiment(cfg, args.output_dir, resume=not args.no_resume)
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
        save_raw=args.save_raw,
        dims=dims,
        channels=args.channels,
        base_channels=args.base_channels,
        create_animation=args.create_animation,
        animation_interval=args.animation_interval,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
    )
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from polyscale.pipelines.evaluate import evaluate_checkpoint, format_table

    rows = evaluate_checkpoint(args.checkpoint, **_sampling_kwargs(args))
    print(format_table(rows))
    return 0


def _add_sampling_args(p: argparse.ArgumentParser, *, num_samples: int) -> None:
    """Flags that `sample` and `evaluate` share: how many samples, which sampler, steps, size, seed, device."""
    p.add_argument("--num-samples", type=int, default=num_samples)
    p.add_argument("--sampler", default=None, help="ddpm, ddim, euler, heun, dpmpp2m, pc, ode, ode_adaptive")
    p.add_argument("--timesteps", type=int, default=None, help="number of denoising steps")
    p.add_argument(
        "--resolution", type=int, default=None, help="spatial size per axis (default: training size)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def _sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.timesteps,
        seed=args.seed,
        resolution=args.resolution,
        device=args.device,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyscale", description="Scale-agnostic diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the shipped presets and models")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("train", help="train a preset (or a YAML experiment file)")
    p.add_argument(
        "--preset", required=True, help="preset name (see `polyscale presets`) or path to a .yaml file"
    )
    p.add_argument("--output-dir", required=True, help="run directory (checkpoints, logs, final model/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-3"
    )
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --output-dir")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate samples from a model directory or a shipped model")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="model directory or shipped model name (default: the shipped model for --dim: "
        "1 mnist1d, 2 digits2d, 3 porous3d)",
    )
    p.add_argument("--dim", type=int, choices=[1, 2, 3], default=None, help="spatial dimensions (default 2)")
    p.add_argument(
        "--channels", type=int, default=None, help="data channels (checked against the checkpoint)"
    )
    p.add_argument(
        "--base-channels", type=int, default=None, help="model width (checked against the checkpoint)"
    )
    p.add_argument(
        "--create-animation", action="store_true", help="also write a GIF of x and the denoised estimate"
    )
    p.add_argument("--animation-interval", type=int, default=1, help="keep every K-th step in the animation")
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="denoise overlapping windows of this edge (bounded memory)",
    )
    p.add_argument("--tile-overlap", type=int, default=None, help="positions windows share (default tile/4)")
    _add_sampling_args(p, num_samples=16)
    p.add_argument("--output-file", default="samples.png", help="PNG to write (3D also writes a .npy)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--save-raw", action="store_true", help="also write the raw samples as .npy")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "evaluate", help="score a model against held-out real data, beside the real-vs-real floor"
    )
    p.add_argument("--checkpoint", required=True, help="model directory, or a shipped model name")
    _add_sampling_args(p, num_samples=256)
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"polyscale {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
