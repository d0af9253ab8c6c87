"""`polyscale evaluate` for every shipped model: each metric beside its real-vs-real floor, as one markdown table.

    python benchmarks/evaluate_shipped.py --out part.md
    python benchmarks/evaluate_shipped.py --model digits2d --num-samples 64     # one model, fewer samples

The settings per model (samples, resolution, sampler) are in ``SETTINGS``; they are what the closing notes and
``BENCHMARKS.md`` quote. The command line equivalent of each row set is printed above its table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description, markdown_table, publish  # noqa: E402
from polyscale.pipelines.evaluate import evaluate_checkpoint  # noqa: E402

# keywords of evaluate_checkpoint; the large textures use DPM-Solver++(2M) with 16 steps (16 network evaluations
# instead of Heun's 47) to keep the CPU run short; porous3d samples with its own default, DPM-Solver++(2M) 8 steps
SETTINGS = {
    "digits2d": dict(num_samples=512),
    "mnist1d": dict(num_samples=512),
    "porous3d": dict(num_samples=16, resolution=32, sampler="dpmpp2m", steps=8),
    "texture2d": dict(num_samples=8, resolution=128, sampler="dpmpp2m", steps=16),
}


def command(name: str, settings: dict) -> str:
    flag = {"steps": "timesteps"}  # evaluate_checkpoint's keyword -> the CLI flag
    flags = " ".join(f"--{flag.get(k, k).replace('_', '-')} {v}" for k, v in settings.items())
    return f"polyscale evaluate --checkpoint {name} {flags}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", choices=sorted(SETTINGS), help="default: every model")
    parser.add_argument("--num-samples", type=int, default=None, help="override every model's sample count")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    parts = [
        "## `polyscale evaluate`: shipped models beside the real-vs-real floor (`benchmarks/evaluate_shipped.py`)",
        "",
        f"Machine: {machine_description()}. 'floor' = as many real training-split items (porous: volumes from the "
        "training seed; texture: crops of the training band) against the same held-out data.",
        "",
    ]
    for name in args.model or sorted(SETTINGS):
        settings = dict(SETTINGS[name])
        if args.num_samples is not None:
            settings["num_samples"] = args.num_samples
        t0 = time.perf_counter()
        rows = evaluate_checkpoint(name, device="cpu", progress=False, **settings)
        seconds = time.perf_counter() - t0
        table = [{"metric": r.name, "model": r.model, "real floor": r.floor} for r in rows]
        parts += [
            f"### {name}",
            "",
            f"`{command(name, settings)}` ({seconds:.0f} s)",
            "",
            markdown_table(table),
        ]
        print(parts[-1], file=sys.stderr, flush=True)
    publish("\n".join(parts), args.out)


if __name__ == "__main__":
    main()
