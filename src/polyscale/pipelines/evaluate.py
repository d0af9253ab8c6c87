"""Evaluate a model directory against held-out real data, always beside the real-vs-real floor.

The samples are compared with the held-out split; the floor compares an equally large part of the training
split with the same held-out split, so a model's number means something only next to it. Metrics: sliced
Wasserstein distance (every data type); for labelled data (digits, MNIST-1D) the confidence and class
coverage under a classifier fitted on the training split; for porous media the porosity error and the
two-point-correlation error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from polyscale.config import from_dict
from polyscale.io import read_model_dir
from polyscale.metrics.classifier import ReferenceClassifier
from polyscale.metrics.porous import porosity, two_point_correlation
from polyscale.metrics.sliced_wasserstein import sliced_wasserstein
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.experiment import ExperimentConfig
from polyscale.pipelines.sample import resolve_checkpoint, sample_checkpoint


@dataclass
class MetricRow:
    name: str  # what is measured (and which way is better)
    model: float  # samples vs held-out real data
    floor: float  # training data vs held-out real data


def stack_dataset(ds, limit: int | None = None) -> tuple[Tensor, Tensor | None]:
    """The first ``limit`` (default all) items of a dict dataset as ``(x (N, C, *S), labels (N,) | None)``."""
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[i] for i in range(n)]
    labels = torch.stack([it["class_labels"] for it in items]) if "class_labels" in items[0] else None
    return torch.stack([it["x"] for it in items]), labels


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    num_samples: int = 256,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    resolution: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> list[MetricRow]:
    """Sample ``num_samples`` from ``checkpoint`` and score them (see the module docstring)."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to compare distributions, got {num_samples}")
    meta = read_model_dir(resolve_checkpoint(checkpoint)).metadata  # the config alone, no weights loaded
    if "experiment" not in meta:
        raise ValueError(
            f"{checkpoint} has no polyscale experiment metadata in config.json; was it saved by polyscale?"
        )
    cfg = from_dict(ExperimentConfig, meta["experiment"])
    fake = sample_checkpoint(
        checkpoint, num_samples=num_samples, sampler=sampler, steps=steps, seed=seed, resolution=resolution,
        device=device, progress=progress,
    ).samples  # fmt: skip
    data_cfg = replace(cfg.data, crop_size=None)
    if cfg.data.kind == "porous":
        data_cfg = replace(data_cfg, size=fake.shape[-1])  # real volumes of the sampled size
    train_x, train_y = stack_dataset(build_dataset(data_cfg, split="train"))
    test_x, _ = stack_dataset(build_dataset(data_cfg, split="test"))
    floor_x = train_x[: min(num_samples, len(train_x))]
    directions = torch.Generator().manual_seed(seed)
    state = directions.get_state()
    sw_model = sliced_wasserstein(fake, test_x, generator=directions)
    directions.set_state(state)  # the same directions for the floor
    rows = [
        MetricRow(
            "sliced Wasserstein to held-out (lower)",
            sw_model,
            sliced_wasserstein(floor_x, test_x, generator=directions),
        )
    ]
    if train_y is not None:
        clf = ReferenceClassifier(train_x, train_y)
        real, model = clf.report(test_x), clf.report(fake)
        rows += [
            MetricRow("classifier mean max-prob (higher)", model.mean_max_prob, real.mean_max_prob),
            MetricRow(
                "smallest class share (closer to 1/classes)",
                model.min_class_fraction,
                real.min_class_fraction,
            ),
        ]
    if cfg.data.kind == "porous":
        phi = float(porosity(test_x))
        s2_test = two_point_correlation(test_x, periodic=False)
        rows += [
            MetricRow(
                "porosity abs. error (lower)",
                abs(float(porosity(fake)) - phi),
                abs(float(porosity(floor_x)) - phi),
            ),
            MetricRow(
                "two-point correlation RMS error (lower)",
                float((two_point_correlation(fake, periodic=False) - s2_test).pow(2).mean().sqrt()),
                float((two_point_correlation(floor_x, periodic=False) - s2_test).pow(2).mean().sqrt()),
            ),
        ]
    return rows


def format_table(rows: list[MetricRow]) -> str:
    """The rows as a fixed-width text table: metric, model, real-vs-real floor."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'metric':<{width}}  {'model':>10}  {'real floor':>10}", "-" * (width + 24)]
    lines += [f"{r.name:<{width}}  {r.model:>10.4f}  {r.floor:>10.4f}" for r in rows]
    return "\n".join(lines)
