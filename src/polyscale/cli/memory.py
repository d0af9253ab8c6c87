"""`polyscale memory`: the predicted peak memory of sampling a model, and what a memory profile picks."""

from __future__ import annotations

import argparse

from polyscale.cli.args import add_command, add_device, non_negative_float, positive_int


def _cmd_memory(args: argparse.Namespace) -> int:
    from polyscale.io import read_model_dir
    from polyscale.pipelines.experiment import experiment_from_dict
    from polyscale.pipelines.preflight import human_bytes
    from polyscale.pipelines.profiles import plan_sampling
    from polyscale.pipelines.sample import (
        check_resolution,
        resolve_checkpoint,
        resolve_device,
        sampling_memory,
    )

    meta = read_model_dir(resolve_checkpoint(args.checkpoint)).metadata
    if "experiment" not in meta or "sample_shape" not in meta:
        raise ValueError(
            f"{args.checkpoint} has no polyscale experiment metadata; was it saved by polyscale?"
        )
    cfg = experiment_from_dict(meta["experiment"])
    channels, *spatial = meta["sample_shape"]
    check_resolution(args.resolution, 2 ** (len(cfg.model.channel_mults) - 1))
    if args.resolution is not None:
        spatial = [args.resolution] * len(spatial)
    steps = args.timesteps or cfg.diffusion.sampler.steps
    guidance = args.guidance_scale if args.guidance_scale is not None else cfg.diffusion.guidance_scale
    conditional = cfg.model.num_classes is not None or cfg.model.text_encoder or cfg.model.context_dim
    doubled = bool(conditional) and guidance != 1
    num_samples = args.num_samples or args.batch_size
    est = sampling_memory(cfg.model, (num_samples, channels, *spatial), batch_size=args.batch_size, steps=steps,
                          guidance=doubled)  # fmt: skip
    size = "x".join(str(v) for v in (channels, *spatial))
    print(f"{args.checkpoint}: {num_samples} samples of {size}, batch {args.batch_size}, {steps} steps")
    print(f"  predicted peak while sampling: {human_bytes(est.device)} ({est.what})")
    print(f"  predicted peak on the host afterwards: {human_bytes(est.host)}")
    if args.profile is not None:
        plan = plan_sampling(cfg.model, meta["sample_shape"], resolution=args.resolution, num_samples=num_samples,
                             gpu_memory=args.profile, device=resolve_device(args.device), guidance=doubled,
                             steps=steps)  # fmt: skip
        print(f"  {plan.describe()}")
    return 0


def add_memory_command(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "memory", _cmd_memory, "predict the peak memory of sampling a model (and plan a profile)"
    )
    p.add_argument("--checkpoint", required=True, help="model directory, or a shipped model name")
    p.add_argument(
        "--resolution", type=positive_int, default=None, help="spatial size per axis (default: training)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="samples per batch (default 1)")
    p.add_argument(
        "--num-samples", type=positive_int, default=None, help="samples in all (default: one batch)"
    )
    p.add_argument(
        "--timesteps", type=positive_int, default=None, help="denoising steps (default: the model's)"
    )
    p.add_argument(
        "--guidance-scale",
        type=non_negative_float,
        default=None,
        help="conditional models: guidance other than 1 doubles the network's batch (default: the model's)",
    )
    p.add_argument("--profile", default=None,
                   help="also print what a memory profile picks: cpu, 6-12GB, 16GB, 24GB, 32GB, 80GB, auto or a "
                   "size such as 12GB")  # fmt: skip
    add_device(p, "the device the profile plans for (auto: CUDA when present)")
