"""Fingerprints of what the command line samples, to show that a change of code leaves results bit-identical.

Runs ``polyscale sample`` on every shipped model (several samplers, a larger-than-trained size and tiled
denoising) and a short ``polyscale graph train`` + ``graph sample`` run per graph task, all with fixed seeds,
and records the SHA-256 of every raw array written. ``--write FILE`` stores the fingerprints; ``--check FILE``
compares against stored ones and exits 1 on any difference. Floating-point results are only comparable on the
same machine and torch build, so store and check on one machine::

    python benchmarks/sample_identity.py --write before.json    # on the old code
    python benchmarks/sample_identity.py --check before.json    # on the new code: every line "same"

About two minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

GRID_CASES = [
    ("digits2d", ["--num-samples", "4", "--timesteps", "6"]),
    ("digits2d", ["--num-samples", "2", "--timesteps", "5", "--sampler", "ddim"]),
    ("digits2d", ["--num-samples", "2", "--timesteps", "5", "--sampler", "dpmpp2m"]),
    ("digits2d", ["--num-samples", "2", "--timesteps", "5", "--sampler", "ddpm", "--seed", "3"]),
    ("mnist1d", ["--num-samples", "4", "--timesteps", "6"]),
    ("mnist1d", ["--num-samples", "2", "--timesteps", "4", "--sampler", "pc"]),
    ("porous3d", ["--num-samples", "1", "--timesteps", "4"]),
    ("texture2d", ["--num-samples", "1", "--timesteps", "4", "--resolution", "64"]),
    ("texture2d", ["--num-samples", "1", "--timesteps", "3", "--resolution", "64", "--tile-size", "32"]),
]

GRAPH_CASES = [
    # (preset, training overrides, sample flags)
    (
        "graph_features",
        ["data.num_graphs=16", "model.hidden=16", "model.num_layers=2"],
        ["--num-nodes", "40"],
    ),
    ("graph_planar", ["data.num_graphs=16", "model.hidden=16", "model.num_layers=2"], ["--num-nodes", "40"]),
]
GRAPH_TRAIN = ["optimization.max_steps=6", "optimization.batch_size=4", "optimization.checkpoint_every=6",
               "optimization.log_every=3", "system.device=cpu"]  # fmt: skip


def _run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "polyscale", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")


def _digest(path: Path) -> str:
    if path.suffix == ".npz":
        with np.load(path) as z:  # arrays only: allow_pickle stays False
            h = hashlib.sha256()
            for key in sorted(z.files):
                h.update(key.encode())
                h.update(np.ascontiguousarray(z[key]).tobytes())
            return h.hexdigest()
    return hashlib.sha256(np.ascontiguousarray(np.load(path)).tobytes()).hexdigest()


def fingerprints(work: Path) -> dict[str, str]:
    """Run every case under ``work``; returns ``{case name: sha256 of its samples}``."""
    out: dict[str, str] = {}
    for i, (name, flags) in enumerate(GRID_CASES):
        png = work / f"grid{i}.png"
        _run(["sample", "--checkpoint", name, *flags, "--save-raw", "npy", "--device", "cpu",
              "--output-file", str(png)])  # fmt: skip
        out[f"sample {name} {' '.join(flags)}"] = _digest(png.with_suffix(".npy"))
        print(f"  {name} {' '.join(flags)}", flush=True)
    for preset, overrides, flags in GRAPH_CASES:
        run = work / preset
        sets = [x for o in [*overrides, *GRAPH_TRAIN] for x in ("--set", o)]
        _run(["graph", "train", "--preset", preset, "--output-dir", str(run), *sets])
        png = work / f"{preset}.png"
        _run(["graph", "sample", "--checkpoint", str(run), *flags, "--num-graphs", "2", "--timesteps", "4",
              "--device", "cpu", "--output-file", str(png)])  # fmt: skip
        out[f"graph {preset} {' '.join(flags)}"] = _digest(png.with_suffix(".npz"))
        print(f"  {preset}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="store the fingerprints in this JSON file")
    group.add_argument("--check", type=Path, help="compare against fingerprints stored in this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = fingerprints(Path(tmp))
    if args.write:
        args.write.write_text(json.dumps(found, indent=1) + "\n")
        print(f"wrote {len(found)} fingerprints to {args.write}")
        return 0
    stored = json.loads(args.check.read_text())
    bad = 0
    for key in sorted(set(stored) | set(found)):
        verdict = "same" if stored.get(key) == found.get(key) else "DIFFERENT"
        bad += verdict != "same"
        print(f"{verdict:9s} {key}")
    print(f"{len(found) - bad} of {len(set(stored) | set(found))} bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
