"""End-to-end check on CPU: train a preset from nothing, sample it, and score the samples.

    python benchmarks/e2e_train.py --preset digits2d --output-dir runs/digits2d

Writes ``<output-dir>/report.md`` (wall time, loss curve path, sample paths, scores). For digits and MNIST-1D the
score is a logistic-regression classifier fitted on the real training split: mean max-probability and class
coverage of the samples, next to the same numbers on held-out real data (the floor). For porous media it is the
porosity of the samples next to the data's.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path

from polyscale.data import correlation_length, porosity, two_point_correlation
from polyscale.metrics.classifier import ReferenceClassifier
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.evaluate import stack_dataset
from polyscale.pipelines.experiment import load_experiment
from polyscale.pipelines.sample import sample_checkpoint
from polyscale.pipelines.train import train_experiment


def plot_loss(metrics_csv: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="skip training when the run finished before (re-sample, re-score)",
    )
    parser.add_argument("--sampler", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--resolution", type=int, default=None, help="sample size per axis (default: training)"
    )
    args = parser.parse_args()

    out = Path(args.output_dir)
    cfg = load_experiment(args.preset, overrides=args.set)
    record = out / "train_record.json"
    if args.reuse and record.is_file() and (out / "model" / "config.json").is_file():
        done = json.loads(record.read_text())  # what the earlier training run measured
    else:
        t0 = time.perf_counter()
        result = train_experiment(cfg, out)
        done = {"steps": result.step, "seconds": time.perf_counter() - t0, "final_loss": result.final_loss}
        record.write_text(json.dumps(done))
    loss_png = plot_loss(out / "metrics.csv", out / "loss.png")

    t0 = time.perf_counter()
    res = sample_checkpoint(
        out / "model",
        num_samples=args.num_samples,
        output_file=out / "samples.png",
        sampler=args.sampler,
        steps=args.steps,
        seed=1,
        resolution=args.resolution,
        batch_size=128 if cfg.model.dims < 3 else 8,
        progress=False,
        save_raw=True,
    )
    sample_s = time.perf_counter() - t0
    lines = [
        f"# {args.preset}: end to end on CPU",
        "",
        f"- training: {done['steps']} steps in {done['seconds']:.1f} s (final smoothed loss {done['final_loss']:.4f})",
        f"- loss curve: {loss_png}",
        f"- samples: {', '.join(str(p) for p in res.files)} ({args.num_samples} samples in {sample_s:.1f} s)",
    ]
    if cfg.data.kind in ("digits", "mnist1d"):
        x_train, y_train = stack_dataset(build_dataset(cfg.data, split="train"))
        x_test, y_test = stack_dataset(build_dataset(cfg.data, split="test"))
        clf = ReferenceClassifier(x_train, y_train)
        real = clf.report(x_test, y_test)
        fake = clf.report(res.samples)
        lines += [
            "",
            "| data | mean max-prob | min class share | max class share | accuracy |",
            "|---|---|---|---|---|",
            f"| held-out real | {real.mean_max_prob:.3f} | {real.min_class_fraction:.3f} | "
            f"{max(real.class_fractions):.3f} | {real.accuracy:.3f} |",
            f"| samples | {fake.mean_max_prob:.3f} | {fake.min_class_fraction:.3f} | "
            f"{max(fake.class_fractions):.3f} | - |",
            "",
            f"class shares of samples: {[round(c, 3) for c in fake.class_fractions]}",
        ]
    elif cfg.data.kind == "porous":
        # held-out volumes at the sampled size (whole volumes, not training crops)
        size = res.samples.shape[-1]
        x_real, _ = stack_dataset(build_dataset(replace(cfg.data, crop_size=None, size=size), split="test"))
        s2 = {
            name: two_point_correlation(x, periodic=False)
            for name, x in (("data", x_real), ("samples", res.samples))
        }
        lines += [
            "",
            f"Sampled at {size}^{cfg.model.dims}; held-out real volumes of the same size.",
            "",
            "| | porosity | correlation length (voxels) | S2(r), r = 0..4 |",
            "|---|---|---|---|",
        ]
        for name, x in (("held-out real", x_real), ("samples", res.samples)):
            curve = s2["data" if name != "samples" else "samples"]
            lines.append(
                f"| {name} | {float(porosity(x)):.4f} | {float(correlation_length(curve)):.3f} | "
                f"{', '.join(f'{v:.4f}' for v in curve[:5].tolist())} |"
            )
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
