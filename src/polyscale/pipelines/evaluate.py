"""Evaluate a model directory against held-out real data, always beside the real-vs-real floor.

The samples are compared with the held-out split; the floor compares an equally large part of the training
split with the same held-out split, so a model's number means something only next to it. Metrics: sliced
Wasserstein distance (every data type), then one small function per data family:

- labelled data (digits, MNIST-1D), :func:`labelled_rows`: the Fréchet distance in the features of a
  :class:`~polyscale.metrics.classifier.FeatureClassifier` trained on the training split (without the floor's
  part), its mean max-probability (confidence) and the smallest class share (coverage);
- porous media, :func:`porous_rows`: the porosity error and the two-point-correlation error;
- textures, :func:`texture_rows`: the grey-level histogram error and the radial power spectrum error.

For confidence and coverage the "floor" is the held-out data's own value (there is nothing to compare it with).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from polyscale.data.captions import TRAIN_TEMPLATES, caption, class_words
from polyscale.io import read_model_dir
from polyscale.metrics.classifier import FeatureClassifier
from polyscale.metrics.frechet import frechet_distance
from polyscale.metrics.porous import normalised_correlation, porosity, two_point_correlation
from polyscale.metrics.sliced_wasserstein import sliced_wasserstein
from polyscale.metrics.spectrum import histogram_error, spectrum_error, windows
from polyscale.nn.text import split_words
from polyscale.nn.unet import context_width
from polyscale.pipelines.datasets import build_dataset, texture_band_height
from polyscale.pipelines.experiment import DataConfig, experiment_from_dict
from polyscale.pipelines.preflight import check_steps
from polyscale.pipelines.sample import (
    check_sampling_memory,
    resolve_checkpoint,
    resolve_device,
    resolve_sampler,
    sample_checkpoint,
    sampling_memory,
)


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


def sliced_wasserstein_row(fake: Tensor, floor_x: Tensor, test_x: Tensor, *, seed: int = 0) -> MetricRow:
    """Sliced Wasserstein distance of ``fake`` and of ``floor_x`` to ``test_x``, along the same directions.

    Every row function takes samples ``fake (N, C, *spatial)``, real training data ``floor_x (M, C, *spatial)``
    and held-out data ``test_x (K, C, *spatial)``, and scores the first two against the third.
    """
    directions = torch.Generator().manual_seed(seed)
    state = directions.get_state()
    model = sliced_wasserstein(fake, test_x, generator=directions)
    directions.set_state(state)  # the same directions for the floor
    floor = sliced_wasserstein(floor_x, test_x, generator=directions)
    return MetricRow("sliced Wasserstein to held-out (lower)", model, floor)


def labelled_rows(
    fake: Tensor, floor_x: Tensor, test_x: Tensor, classifier: FeatureClassifier
) -> list[MetricRow]:
    """Classifier rows for labelled data: Fréchet distance in its features, confidence, class coverage.

    ``classifier`` should not have seen ``floor_x`` or ``test_x`` (a classifier is surer of, and maps more
    tightly, the data it was trained on, which would flatter the floor).
    """
    feats_test = classifier.features(test_x)
    model, real = classifier.report(fake), classifier.report(test_x)
    return [
        MetricRow(
            "Fréchet distance in classifier features (lower)",
            frechet_distance(classifier.features(fake), feats_test),
            frechet_distance(classifier.features(floor_x), feats_test),
        ),
        MetricRow("classifier mean max-prob (higher)", model.mean_max_prob, real.mean_max_prob),
        MetricRow(
            "smallest class share (closer to 1/classes)", model.min_class_fraction, real.min_class_fraction
        ),
    ]


def porous_rows(fake: Tensor, floor_x: Tensor, test_x: Tensor) -> list[MetricRow]:
    """Porous-media rows: porosity error, RMS error of the (non-periodic) two-point correlation ``S2`` and of its
    normalised shape ``C(r)`` (:func:`~polyscale.metrics.porous.normalised_correlation`: the structure without
    the porosity offset, which the first row already reports)."""
    phi = float(porosity(test_x))
    s2_test = two_point_correlation(test_x, periodic=False)
    c_test = normalised_correlation(s2_test)

    def s2_error(x: Tensor) -> float:
        return float((two_point_correlation(x, periodic=False) - s2_test).pow(2).mean().sqrt())

    def c_error(x: Tensor) -> float:
        return float(
            (normalised_correlation(two_point_correlation(x, periodic=False)) - c_test).pow(2).mean().sqrt()
        )

    return [
        MetricRow(
            "porosity abs. error (lower)",
            abs(float(porosity(fake)) - phi),
            abs(float(porosity(floor_x)) - phi),
        ),
        MetricRow("two-point correlation RMS error (lower)", s2_error(fake), s2_error(floor_x)),
        MetricRow("two-point correlation shape C(r) RMS error (lower)", c_error(fake), c_error(floor_x)),
    ]


def texture_rows(fake: Tensor, floor_x: Tensor, test_x: Tensor) -> list[MetricRow]:
    """Texture rows for 2D images ``(N, C, H, W)`` in [-1, 1]: grey-level histogram and power spectrum errors.

    Samples larger than the real crops (a texture sampled beyond the held-out band's height) are compared window
    by window (:func:`~polyscale.metrics.spectrum.windows` of the real crops' size).
    """
    edge = test_x.shape[-1]
    fake = windows(fake, edge) if fake.shape[-1] > edge else fake
    floor_x = windows(floor_x, edge) if floor_x.shape[-1] > edge else floor_x
    return [
        MetricRow(
            "grey-level histogram TV distance (lower)",
            histogram_error(fake, test_x),
            histogram_error(floor_x, test_x),
        ),
        MetricRow(
            "radial power spectrum RMS log10 error (lower)",
            spectrum_error(fake, test_x),
            spectrum_error(floor_x, test_x),
        ),
    ]


def real_data_config(data: DataConfig, fake: Tensor) -> DataConfig:
    """The data configuration whose splits are comparable with samples ``fake (N, C, *spatial)``.

    Whole samples for digits, MNIST-1D and the user's files; porous volumes generated at the sampled size, as
    many per split as there are samples (at least 64; not the training set's count, which may be of smaller
    volumes);
    texture crops of the sampled size (a texture has no "whole sample", only its held-out region), at most as
    tall as the held-out band (larger samples are then compared window by window, see :func:`texture_rows`).
    """
    if data.kind == "texture":
        return replace(data, crop_size=min(fake.shape[-1], texture_band_height(data)))
    data = replace(data, crop_size=None)
    if data.kind == "porous":
        return replace(data, size=fake.shape[-1], num_samples=max(fake.shape[0], 64))
    return data


_CLASSIFIERS: dict[str, FeatureClassifier] = {}  # trained reference classifiers, by digest of their data


def reference_classifier(x: Tensor, labels: Tensor) -> FeatureClassifier:
    """:meth:`FeatureClassifier.fit` on real ``x (N, C, *spatial)`` and ``labels (N,)``, once per process.

    Training is deterministic (a fixed seed), so the classifier is a pure function of its data; remembering it
    by a digest of the data saves seconds on every further evaluation of the same dataset.
    """
    digest = hashlib.blake2b(digest_size=16)
    for t in (x, labels):
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    key = digest.hexdigest()
    if key not in _CLASSIFIERS:
        _CLASSIFIERS[key] = FeatureClassifier.fit(x, labels, generator=torch.Generator().manual_seed(0))
    return _CLASSIFIERS[key]


def check_finite(samples: Tensor, checkpoint: str | Path) -> None:
    """Refuse samples ``(N, ...)`` with NaN or infinite values (no metric means anything on them, and the
    Fréchet distance's matrix square root fails on them): a ValueError counting them and naming the model."""
    bad = int((~torch.isfinite(samples)).flatten(1).any(1).sum())
    if bad:
        raise ValueError(
            f"samples contain NaN or infinite values ({bad} of {len(samples)}), so they cannot be scored: "
            f"did the model {str(checkpoint)!r} diverge in training, or its sampler settings (--sampler, "
            "--timesteps, --set sampler.*) blow up?"
        )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    num_samples: int = 512,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    resolution: int | None = None,
    device: str = "auto",
    progress: bool = True,
    overrides: Sequence[str] = (),
    force: bool = False,
    class_labels: int | Sequence[int] | None = None,
    prompts: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
) -> list[MetricRow]:
    """Sample ``num_samples`` from ``checkpoint`` (in one batch) and score them (see the module docstring);
    ``overrides``: ``KEY=VALUE`` sampler settings (:func:`polyscale.pipelines.sample.resolve_sampler`).

    A conditional model samples ``class_labels`` / ``prompts`` (default: every class in turn, as a prompt
    from the training captions for a text model) with ``guidance_scale``, and one more row reports the share
    of samples that the reference classifier assigns to the class each one asked for, beside that
    classifier's accuracy on held-out real data (:func:`requested_classes`).

    Raises:
        ValueError: fewer than 2 samples, a checkpoint without experiment metadata, a run that would not fit
            in memory (checked before sampling, see :func:`polyscale.pipelines.sample.sampling_memory`;
            ``force`` only warns), or samples that are not finite (:func:`check_finite`).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to compare distributions, got {num_samples}")
    meta = read_model_dir(resolve_checkpoint(checkpoint)).metadata  # the config alone, no weights loaded
    if "experiment" not in meta:
        raise ValueError(
            f"{checkpoint} has no polyscale experiment metadata in config.json; was it saved by polyscale?"
        )
    cfg = experiment_from_dict(meta["experiment"])
    if "sample_shape" in meta:  # else sample_checkpoint names what is missing
        shape = list(meta["sample_shape"])
        spatial = shape[1:] if resolution is None else [resolution] * (len(shape) - 1)
        sampling = resolve_sampler(cfg, sampler=sampler, steps=steps, overrides=overrides)
        check_steps(sampling.steps, flag="--timesteps (sampler.steps)")
        estimate = sampling_memory(cfg.model, (num_samples, shape[0], *spatial), steps=sampling.steps)
        check_sampling_memory(estimate, resolve_device(device), force=force, flag="--force",
                              lower="--num-samples or --resolution")  # fmt: skip
    conditional = cfg.model.num_classes is not None or context_width(cfg.model) is not None
    if conditional and prompts is None and class_labels is None and context_width(cfg.model) is not None:
        prompts = default_prompts(cfg, num_samples)
    fake = sample_checkpoint(
        checkpoint, num_samples=num_samples, sampler=sampler, steps=steps, seed=seed, resolution=resolution,
        device=device, progress=progress, overrides=overrides, force=force, class_labels=class_labels,
        prompts=prompts, guidance_scale=guidance_scale,
    ).samples  # fmt: skip
    check_finite(fake, checkpoint)
    data_cfg = real_data_config(cfg.data, fake)
    train_ds = build_dataset(data_cfg, split="train")
    train_x, train_y = stack_dataset(train_ds)
    test_x, test_y = stack_dataset(build_dataset(data_cfg, split="test"))
    n_floor = min(num_samples, len(train_x))
    floor_x = train_x[:n_floor]
    rows = [sliced_wasserstein_row(fake, floor_x, test_x, seed=seed)]
    if train_y is not None:
        # The classifier trains on the training split without the floor's part, unless that would leave it
        # less than half of the split (then the floor's numbers are a little flattered).
        keep = slice(n_floor, None) if 2 * n_floor <= len(train_x) else slice(None)
        classifier = reference_classifier(train_x[keep], train_y[keep])
        rows += labelled_rows(fake, floor_x, test_x, classifier)
        if conditional:
            asked = requested_classes(cfg, num_samples, class_labels=class_labels, prompts=prompts,
                                      class_names=getattr(train_ds, "class_names", None))  # fmt: skip
            if asked is not None:
                rows.append(requested_class_row(fake, asked, test_x, test_y, classifier))
    if cfg.data.kind == "porous":
        rows += porous_rows(fake, floor_x, test_x)
    if cfg.data.kind == "texture":
        rows += texture_rows(fake, floor_x, test_x)
    return rows


def default_prompts(cfg, num_samples: int) -> list[str]:
    """One training-caption prompt per class, in turn (``"a handwritten zero"``, ``"a handwritten one"``, ...),
    for a text model evaluated without prompts."""
    classes = cfg.model.num_classes or 10
    words = class_words(None, classes)
    return [caption(TRAIN_TEMPLATES[0], *words[i % classes]) for i in range(min(num_samples, classes))]


def requested_classes(
    cfg, num_samples: int, *, class_labels=None, prompts=None, class_names=None
) -> Tensor | None:
    """The class each of ``num_samples`` samples asked for ``(N,)``: its class label, or the class whose name
    or numeral its prompt contains (:func:`polyscale.data.captions.class_words`); None when a prompt names no
    class or several."""
    if cfg.model.num_classes is not None and prompts is None:
        labels = (
            list(range(cfg.model.num_classes))
            if class_labels is None
            else list([class_labels] if isinstance(class_labels, int) else class_labels)
        )
        return torch.tensor([labels[i % len(labels)] for i in range(num_samples)])
    if prompts is None:
        return None
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    words = class_words(class_names, cfg.model.num_classes or 10)
    classes = []
    for text in texts:
        said = set(split_words(text))
        hits = {k for k, (word, numeral) in enumerate(words) if word in said or numeral in said}
        if len(hits) != 1:
            return None
        classes.append(hits.pop())
    return torch.tensor([classes[i % len(classes)] for i in range(num_samples)])


def requested_class_row(
    fake: Tensor, asked: Tensor, test_x: Tensor, test_y: Tensor | None, classifier: FeatureClassifier
) -> MetricRow:
    """Share of samples the classifier assigns to the class they asked for, beside its accuracy on held-out
    real data (the floor: how often it is right about real samples)."""
    model = float((classifier.predict_proba(fake).argmax(1) == asked).double().mean())
    floor = (
        float((classifier.predict_proba(test_x).argmax(1) == test_y).double().mean())
        if test_y is not None
        else float("nan")
    )
    return MetricRow("share classified as the requested class (higher)", model, floor)


def format_table(rows: list[MetricRow]) -> str:
    """The rows as a fixed-width text table: metric, model, real-vs-real floor."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'metric':<{width}}  {'model':>10}  {'real floor':>10}", "-" * (width + 24)]
    lines += [f"{r.name:<{width}}  {r.model:>10.4f}  {r.floor:>10.4f}" for r in rows]
    return "\n".join(lines)
