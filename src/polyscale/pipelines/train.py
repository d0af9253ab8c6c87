"""Train an experiment end to end: dataset -> EDM-preconditioned U-Net -> training loop -> model directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import torch

from polyscale.config import to_dict
from polyscale.data.captions import Captioned, caption_words
from polyscale.diffusion import EDMLoss, EDMPrecond
from polyscale.io import save_pretrained
from polyscale.nn.unet import UNet, context_width
from polyscale.pipelines.datasets import WithoutLabels, build_dataset
from polyscale.pipelines.experiment import ExperimentConfig
from polyscale.pipelines.sample import load_denoiser
from polyscale.training import TrainResult, train
from polyscale.training.run_dir import open_run, write_summary

# settings a resumed run may change: how far it trains and how it reports, not what it computes
RESUMABLE = ("train.max_steps", "train.output_dir", "train.progress", "train.num_workers", "train.checkpoint_every",
             "train.keep_checkpoints", "train.log_every", "train.max_bad_steps")  # fmt: skip
# settings a resumed run changes only when asked (--allow-change KEY): the loop applies the new value from the
# resumed step on (the learning rate's schedule keeps its shape, scaled to the new peak)
CHANGEABLE = ("train.lr", "train.weight_decay", "train.grad_clip", "train.ema_decay")


def make_denoiser(cfg: ExperimentConfig) -> EDMPrecond:
    """The trainable denoiser of an experiment: ``EDMPrecond(UNet(**cfg.model))``, initialised from
    ``cfg.train.seed`` without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = UNet.from_config(cfg.model)
    return EDMPrecond(net, sigma_data=cfg.diffusion.sigma_data)


def make_loss(cfg: ExperimentConfig) -> EDMLoss:
    """The training loss of an experiment: EDM's weighted denoising loss under its ``diffusion`` section."""
    d = cfg.diffusion
    return EDMLoss(
        P_mean=d.P_mean, P_std=d.P_std, sigma_data=d.sigma_data,
        lowpass_factor=d.lowpass_factor, lowpass_weight=d.lowpass_weight,
    )  # fmt: skip


def check_data_matches_model(cfg: ExperimentConfig, sample_shape: tuple[int, ...]) -> None:
    """Fail early, naming both sides, when the data cannot feed the configured network."""
    channels, spatial = sample_shape[0], sample_shape[1:]
    if channels != cfg.model.in_channels:
        raise ValueError(
            f"data has {channels} channel(s) but model.in_channels={cfg.model.in_channels}; "
            f"set model.in_channels={channels}"
        )
    if len(spatial) != cfg.model.dims:
        raise ValueError(
            f"data has {len(spatial)} spatial dimension(s) {tuple(spatial)} but model.dims={cfg.model.dims}"
        )


def init_from_pretrained(denoiser: EDMPrecond, cfg: ExperimentConfig, checkpoint: str | Path) -> str:
    """Copy the weights of a model directory or shipped model (its EMA weights when it has them) into
    ``denoiser.net``: the start of a fine-tuning run. The checkpoint's network must be the one ``cfg.model``
    describes; the data, diffusion and training sections may differ (that is the point of fine-tuning).

    Returns what is recorded in the run's metadata: the shipped model's name, or the directory's path.

    Raises:
        FileNotFoundError: ``checkpoint`` is neither a model directory nor a shipped model.
        ValueError: the checkpoint's architecture differs from ``cfg.model`` (names every differing field).
    """
    source, source_cfg, _ = load_denoiser(checkpoint)  # a directory or a shipped model's name
    ours, theirs = to_dict(cfg.model), to_dict(source_cfg.model)
    differ = [
        f"{k}: checkpoint {theirs.get(k)!r}, run {ours.get(k)!r}" for k in ours if ours[k] != theirs.get(k)
    ]
    if differ:
        raise ValueError(
            f"--init-from {str(checkpoint)!r} has a different network than the run's model section: "
            + "; ".join(differ)
        )
    denoiser.net.load_state_dict(source.net.state_dict())
    return str(checkpoint)


def train_experiment(
    cfg: ExperimentConfig,
    output_dir: str | Path,
    *,
    resume: bool = True,
    callbacks=(),
    init_from: str | Path | None = None,
    allow_change: tuple[str, ...] = (),
) -> TrainResult:
    """Train ``cfg`` into the run directory ``output_dir`` (:mod:`polyscale.training.run_dir`: ``config.yaml``,
    ``checkpoints/``, ``model/``, ``metrics.csv``, ``summary.json``).

    Resuming (``resume=True`` and a checkpoint in ``output_dir``) requires the saved ``config.yaml`` to equal
    ``cfg`` except for the keys in :data:`RESUMABLE` (``train.max_steps`` extends a run); otherwise a
    ValueError names every differing key (old -> new); ``allow_change`` accepts changes to keys of
    :data:`CHANGEABLE`. The run directory is locked while the run lasts, and a fresh start keeps the earlier
    run until its own first checkpoint (:func:`~polyscale.training.run_dir.open_run`).

    ``init_from`` (a model directory or shipped model name) starts the weights, and so the EMA, from that
    model instead of the seeded initialisation: fine-tuning, e.g. on larger volumes. A run that resumes from
    its own checkpoint continues from that checkpoint instead.
    """
    output_dir = Path(output_dir)
    dataset = build_dataset(cfg.data, split="train")
    cfg = with_caption_vocabulary(cfg, dataset)
    train_cfg = replace(cfg.train, output_dir=str(output_dir))
    settings = to_dict(replace(cfg, train=train_cfg))
    with open_run(output_dir, settings, resume=resume, ignore=RESUMABLE, allow_change=allow_change,
                  changeable=CHANGEABLE, command="train"):  # fmt: skip
        return _train_in(
            cfg, train_cfg, output_dir, dataset, resume=resume, callbacks=callbacks, init_from=init_from
        )


def with_caption_vocabulary(cfg: ExperimentConfig, dataset) -> ExperimentConfig:
    """``cfg`` with its built-in text encoder's vocabulary filled in from the training captions' words, when
    the preset leaves it empty (the vocabulary is then part of the run's settings and of the saved model)."""
    text = cfg.model.text_encoder
    if text is None or text.vocabulary:
        return cfg
    if not cfg.data.captions:
        raise ValueError("model.text_encoder needs captions to learn from: set data.captions=true")
    words = caption_words(getattr(dataset, "class_names", None), _num_classes(dataset))
    return replace(cfg, model=replace(cfg.model, text_encoder=replace(text, vocabulary=words)))


def _num_classes(dataset) -> int:
    classes = getattr(dataset, "num_classes", None)
    if classes is None:
        raise ValueError(
            "data.captions needs a labelled dataset (digits, MNIST-1D, an image folder of classes)"
        )
    return int(classes)


def caption_encoder(cfg: ExperimentConfig, net: UNet):
    """What turns the captions into the network's keyword arguments, and the encoder's metadata for the
    model directory (None for the built-in encoder, whose vocabulary is in the network's config)."""
    if cfg.data.text_encoder is not None:
        from polyscale.nn.clip_text import CLIPTextEncoder

        clip = CLIPTextEncoder.from_directory(cfg.data.text_encoder)
        if cfg.model.context_dim != clip.context_dim:
            raise ValueError(
                f"model.context_dim={cfg.model.context_dim} but the text encoder in {cfg.data.text_encoder} "
                f"gives contexts of width {clip.context_dim}; set model.context_dim={clip.context_dim}"
            )
        return clip.encode, clip.to_metadata()
    if net.text_encoder is None:
        raise ValueError(
            "data.captions needs a text-conditioned model: set model.text_encoder (built in) or "
            "data.text_encoder (a local CLIP directory) with model.context_dim"
        )
    encoder = net.text_encoder
    return (lambda texts: {"tokens": encoder.tokenize(texts)}), None


def _train_in(
    cfg: ExperimentConfig, train_cfg, output_dir: Path, dataset, *, resume: bool, callbacks, init_from
):
    sample_shape = tuple(dataset[0]["x"].shape)
    check_data_matches_model(cfg, sample_shape)
    denoiser = make_denoiser(cfg)
    net = cast(UNet, denoiser.net)  # make_denoiser builds a UNet
    text_meta = None
    if cfg.data.captions:
        encode, text_meta = caption_encoder(cfg, net)
        dataset = Captioned(dataset, encode, class_names=getattr(dataset, "class_names", None),
                            num_classes=_num_classes(dataset), seed=cfg.train.seed,
                            keep_labels=cfg.model.num_classes is not None)  # fmt: skip
    elif context_width(cfg.model) is not None:
        raise ValueError("a model with a text encoder or context_dim needs data.captions=true to train")
    if cfg.model.num_classes is None:
        dataset = WithoutLabels(dataset)

    source = init_from_pretrained(denoiser, cfg, init_from) if init_from is not None else None
    loss_fn = make_loss(cfg)
    metadata = {"experiment": to_dict(cfg), "sample_shape": list(sample_shape)}
    if text_meta is not None:
        metadata["text_encoder"] = text_meta
    if source is not None:
        metadata["init_from"] = source

    def export(directory: Path, model: EDMPrecond, ema: EDMPrecond) -> None:
        save_pretrained(model.net, directory, ema=ema.net, metadata=metadata)

    result = train(
        denoiser, loss_fn, dataset, train_cfg, export_fn=export, resume=resume, callbacks=callbacks,
        null_condition=net.null_condition,
    )  # fmt: skip
    write_summary(output_dir, {"steps": result.step, "final_loss": result.final_loss, "model": "model"})
    return result
