"""How well a conditional model follows its condition, over guidance scales, beside real data.

    python benchmarks/conditional.py --checkpoint digits2d_text --per-class 50 --scales 0 1 2 3 4 8
    python benchmarks/conditional.py --checkpoint runs/digits2d_class/model
    python benchmarks/conditional.py --checkpoint runs/porous3d_class/model --per-class 16

For every guidance scale, ``--per-class`` samples of every class are drawn (for a text model: prompts from the
training caption templates, and separately from the held-out phrasings) and scored by:

- **accuracy**: the share that a classifier trained on the real training split (the reference
  :class:`~polyscale.metrics.classifier.FeatureClassifier` of ``polyscale evaluate``) assigns to the requested
  class; the floor is its accuracy on held-out real data;
- **diversity**: within-class sliced Wasserstein distance between the samples of a class and held-out real
  data of that class, averaged over classes (lower = closer to the real spread); the floor is the training
  data of each class against the same held-out data. Guidance that collapses a class onto a few modes raises it;
- for porous media: the porosity of each class's samples against the class's porosity (target +-0.03).

Prints a markdown table and writes it, with the raw numbers, to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from polyscale.data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, caption, class_words
from polyscale.io import read_model_dir
from polyscale.metrics.porous import porosity
from polyscale.metrics.sliced_wasserstein import sliced_wasserstein
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.evaluate import reference_classifier, stack_dataset
from polyscale.pipelines.experiment import experiment_from_dict
from polyscale.pipelines.sample import resolve_checkpoint, sample_checkpoint


def prompts_for(classes: int, per_class: int, templates) -> tuple[list[str], torch.Tensor]:
    """``classes * per_class`` prompts (class-major), cycling through ``templates``, and their classes."""
    words = class_words(None, classes)
    texts, labels = [], []
    for k in range(classes):
        for j in range(per_class):
            texts.append(caption(templates[j % len(templates)], *words[k]))
            labels.append(k)
    return texts, torch.tensor(labels)


def within_class_sw(x, y, x_labels, y_labels, classes: int) -> float:
    """Mean over classes of the sliced Wasserstein distance between ``x`` and ``y`` of that class."""
    out = []
    for k in range(classes):
        a, b = x[x_labels == k], y[y_labels == k]
        if len(a) and len(b):
            out.append(sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(k)))
    return sum(out) / len(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument(
        "--held-out-scales",
        type=float,
        nargs="+",
        default=None,
        help="text models: guidance scales for the held-out phrasings (default: --scales)",
    )
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file for the table and raw numbers")
    args = parser.parse_args()

    meta = read_model_dir(resolve_checkpoint(args.checkpoint)).metadata
    cfg = experiment_from_dict(meta["experiment"])
    text = cfg.model.text_encoder is not None or cfg.model.context_dim is not None
    train_ds, test_ds = build_dataset(cfg.data, split="train"), build_dataset(cfg.data, split="test")
    train_x, train_y = stack_dataset(train_ds)
    test_x, test_y = stack_dataset(test_ds)
    classes = int(train_ds.num_classes)
    porous = cfg.data.kind == "porous"
    classifier = None if porous else reference_classifier(train_x, train_y)
    floor_acc = (
        None if porous else float((classifier.predict_proba(test_x).argmax(1) == test_y).double().mean())
    )
    floor_sw = within_class_sw(train_x, test_x, train_y, test_y, classes)

    sets = (
        {"training phrasings": TRAIN_TEMPLATES, "held-out phrasings": HELD_OUT_TEMPLATES}
        if text
        else {"labels": None}
    )
    rows, raw = [], []
    for name, templates in sets.items():
        scales = (
            args.held_out_scales if name == "held-out phrasings" and args.held_out_scales else args.scales
        )
        for scale in scales:
            start = time.perf_counter()
            if templates is not None:
                prompts, asked = prompts_for(classes, args.per_class, templates)
                kwargs = {"prompts": prompts}
            else:
                asked = torch.arange(classes).repeat_interleave(args.per_class)
                kwargs = {"class_labels": asked.tolist()}
            fake = sample_checkpoint(args.checkpoint, num_samples=len(asked), steps=args.timesteps, seed=args.seed,
                                     guidance_scale=scale, device="cpu", progress=False, force=True,
                                     **kwargs).samples  # fmt: skip
            seconds = time.perf_counter() - start
            sw = within_class_sw(fake, test_x, asked, test_y, classes)
            entry = {"set": name, "scale": scale, "within_class_sw": sw, "seconds": seconds}
            if porous:
                phi = porosity(fake, per_sample=True)
                entry["porosity"] = [float(phi[asked == k].mean()) for k in range(classes)]
                entry["target"] = list(cfg.data.porosity_classes)
            else:
                entry["accuracy"] = float((classifier.predict_proba(fake).argmax(1) == asked).double().mean())
            raw.append(entry)
            if porous:
                shown = ", ".join(
                    f"{p:.3f} ({t:g})" for p, t in zip(entry["porosity"], entry["target"], strict=True)
                )
                rows.append(f"| {name} | {scale:g} | {shown} | {sw:.4f} | {floor_sw:.4f} |")
            else:
                rows.append(
                    f"| {name} | {scale:g} | {entry['accuracy']:.3f} | {floor_acc:.3f} | {sw:.4f} | {floor_sw:.4f} |"
                )
            print(rows[-1], flush=True)
    if porous:
        head = (
            "| prompts | guidance | porosity per class (target) | within-class SW | SW floor |\n"
            + "|---" * 5
            + "|"
        )
    else:
        head = ("| prompts | guidance | accuracy | real floor | within-class SW (lower) | SW floor |\n"
                "|---|---|---|---|---|---|")  # fmt: skip
    table = "\n".join([head, *rows])
    print(table)
    if args.output:
        Path(args.output).write_text(json.dumps({"table": table, "rows": raw, "floor_accuracy": floor_acc,
                                                 "floor_sw": floor_sw}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
