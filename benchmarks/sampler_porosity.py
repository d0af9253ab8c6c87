"""Porosity of a porous model's samples under different samplers and step counts (same seed for every row).

    python benchmarks/sampler_porosity.py --size 32 --num-samples 16 dpmpp2m:8 dpmpp2m:16 euler:32 heun:16

Every row starts from the same noise (``--seed``), so differences between rows are paired. The data's porosity
at the same size, from as many held-out volumes as ``--num-samples``, is printed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, markdown_table, publish  # noqa: E402
from polyscale.diffusion.sampling import with_sampler  # noqa: E402
from polyscale.metrics.porous import porosity  # noqa: E402
from polyscale.pipelines.datasets import build_dataset  # noqa: E402
from polyscale.pipelines.evaluate import stack_dataset  # noqa: E402
from polyscale.pipelines.sample import generate, load_denoiser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="SAMPLER:STEPS")
    parser.add_argument("--checkpoint", default="porous3d")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    denoiser, cfg, shape = load_denoiser(args.checkpoint)
    if cfg.data.kind != "porous":
        raise SystemExit(f"--checkpoint must be a porous model, got data kind {cfg.data.kind!r}")
    data_cfg = replace(cfg.data, size=args.size, num_samples=args.num_samples)
    real = stack_dataset(build_dataset(data_cfg, split="test"), args.num_samples)[0]
    rows = []
    for spec in args.specs:
        sampler, _, steps = spec.partition(":")
        if not steps.isdigit():
            raise SystemExit(f"each spec must be SAMPLER:STEPS (e.g. dpmpp2m:8), got {spec!r}")
        start = time.perf_counter()
        x = generate(
            denoiser,
            (args.num_samples, shape[0], *(args.size,) * (len(shape) - 1)),
            with_sampler(cfg.diffusion.sampler, sampler, int(steps)),
            generator=torch.Generator().manual_seed(args.seed),
            progress=False,
        )
        per = porosity(x, per_sample=True)
        rows.append(
            {
                "sampler": sampler,
                "steps": int(steps),
                "porosity": float(per.mean()),
                "std of one volume": float(per.std()),
                "seconds": time.perf_counter() - start,
            }
        )
        print(rows[-1], file=sys.stderr, flush=True)
    text = "\n".join(
        [
            f"Machine: {machine_description()}. {args.checkpoint}, {args.num_samples} volumes of {args.size}^3, "
            f"seed {args.seed}; held-out data porosity {float(porosity(real)):.4f}.",
            "",
            markdown_table(rows),
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
