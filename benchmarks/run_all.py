"""Run every benchmark in one process tree and write their tables into one markdown file.

    python benchmarks/run_all.py --out BENCHMARKS.md            # full run (what ``make bench`` does)
    python benchmarks/run_all.py --quick --out /tmp/bench.md     # smoke run, small cases only
    python benchmarks/run_all.py --only attention --out part.md  # one section

Sections: (a) U-Net training-step throughput against diffusers' ``UNet2DModel`` (same layout, same parameter
count), (b) neighbourhood attention against full attention (``scaled_dot_product_attention``), (c) sampler
overhead as a share of sampling time. Every table compares against its peer measured in the same run.
``--report FILE`` appends end-to-end training reports written by ``benchmarks/e2e_train.py``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attention  # noqa: E402
import bench_samplers  # noqa: E402
import bench_unet  # noqa: E402
from common import machine_description, markdown_table  # noqa: E402

SECTIONS = {
    "unet": (
        "(a) U-Net training step: polyscale `UNet` vs diffusers `UNet2DModel` (2D, 32x32x3)",
        "Same ADM layout on both sides, parameter counts within 10% (checked). Throughput from the median of "
        "alternating rounds; ratio > 1 means we are faster. Peak memory of one step above what was resident.",
        bench_unet.run,
    ),
    "attention": (
        "(b) Neighbourhood attention (kernel 7) vs full attention (`F.scaled_dot_product_attention`)",
        "Forward + backward, 4 heads of 32 channels, float32. Ratios below 1 mean ours is cheaper. Full attention "
        "runs under a memory cap and is reported as skipped where it would need more.",
        bench_attention.run,
    ),
    "samplers": (
        "(c) Sampler overhead: share of sampling wall time spent outside the denoiser",
        "Every sampler drives the same 2D U-Net denoiser; the peer is the denoiser itself (overhead 0).",
        bench_samplers.run,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to (re)write")
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--report", action="append", default=[], help="e2e report.md files to append")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep --out as it is and add to it (runs only the --only sections)",
    )
    args = parser.parse_args()

    names = args.only or ([] if args.append else list(SECTIONS))
    header = [
        "# polyscale benchmarks",
        "",
        f"Written by `python benchmarks/run_all.py` on {datetime.date.today().isoformat()}"
        f"{' (quick run)' if args.quick else ''}.",
        "",
        f"Machine: {machine_description()}",
        "",
    ]
    parts = [Path(args.out).read_text().rstrip("\n"), ""] if args.append else header
    for name in names:
        title, intro, run = SECTIONS[name]
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows = run(quick=args.quick)
        seconds = time.perf_counter() - t0
        parts += [f"## {title}", "", intro, "", markdown_table(rows), f"(section took {seconds:.0f} s)", ""]
    for report in args.report:
        text = Path(report).read_text()
        parts += [
            "## End to end: " + text.lstrip("# ").split("\n", 1)[0],
            "",
            text.split("\n", 1)[1].strip(),
            "",
        ]
    Path(args.out).write_text("\n".join(parts))
    print(f"[run_all] wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
