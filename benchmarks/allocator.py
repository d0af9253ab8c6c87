"""CPU sampling with glibc's default allocator settings (the peer) and with ``keep_freed_memory``.

    python benchmarks/allocator.py --out allocator.md
    python benchmarks/allocator.py --size 64 --steps 8 --threads 2

Each setting runs in its own process (its own peak memory and CPU times): the shipped porous3d model samples
one volume of ``--size``^3 with ``--steps`` Euler steps. Reported: wall time, user and system CPU time, peak
resident memory; ratios against the default allocator of the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_subprocess, machine_description, markdown_table, peak_rss_mib, publish  # noqa: E402


def worker(size: int, steps: int, threads: int, tuned: bool) -> dict:
    import torch

    from polyscale.diffusion.sampling import SamplerConfig
    from polyscale.pipelines.allocator import keep_freed_memory
    from polyscale.pipelines.sample import generate, load_denoiser

    torch.set_num_threads(threads)
    applied = keep_freed_memory() if tuned else None
    denoiser, _, _ = load_denoiser("porous3d")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    generate(
        denoiser,
        (1, 1, size, size, size),
        SamplerConfig("euler", steps),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "allocator": "keep_freed_memory" if applied else "glibc default",
        "wall s": wall,
        "user s": after.ru_utime - before.ru_utime,
        "system s": after.ru_stime - before.ru_stime,
        "peak RSS MiB": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each setting")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.size, args.steps, args.threads, args.worker == "tuned")))
        return
    common = ["--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.repeats):
        for kind in runs:
            runs[kind].append(in_subprocess(__file__, [*common, "--worker", kind]))
    # best of the repeats, as timeit reports
    rows = [dict(min(results, key=lambda r: r["wall s"])) for results in runs.values()]
    peer = rows[0]
    for row in rows:
        row["wall / default"] = row["wall s"] / peer["wall s"]
        row["peak RSS / default"] = row["peak RSS MiB"] / peer["peak RSS MiB"]
    text = "\n".join(
        [
            f"Machine: {machine_description()} (the parent; each worker uses {args.threads}).",
            f"porous3d, one {args.size}^3 volume, {args.steps} Euler steps, best of {args.repeats} runs each:",
            "",
            markdown_table(rows),
        ]
    )
    publish(text, args.out)


if __name__ == "__main__":
    main()
