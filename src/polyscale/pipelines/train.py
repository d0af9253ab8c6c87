"""Train an experiment end to end: dataset -> EDM-preconditioned U-Net -> training loop -> model directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from polyscale.config import to_dict
from polyscale.diffusion import EDMLoss, EDMPrecond
from polyscale.io import save_pretrained
from polyscale.nn.unet import UNet
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
    train_cfg = replace(cfg.train, output_dir=str(output_dir))
    settings = to_dict(replace(cfg, train=train_cfg))
    with open_run(output_dir, settings, resume=resume, ignore=RESUMABLE, allow_change=allow_change,
                  changeable=CHANGEABLE, command="train"):  # fmt: skip
        return _train_in(cfg, train_cfg, output_dir, resume=resume, callbacks=callbacks, init_from=init_from)


def _train_in(cfg: ExperimentConfig, train_cfg, output_dir: Path, *, resume: bool, callbacks, init_from):
    dataset = build_dataset(cfg.data, split="train")
    sample_shape = tuple(dataset[0]["x"].shape)
    check_data_matches_model(cfg, sample_shape)
    if cfg.model.num_classes is None:
        dataset = WithoutLabels(dataset)

    denoiser = make_denoiser(cfg)
    source = init_from_pretrained(denoiser, cfg, init_from) if init_from is not None else None
    loss_fn = make_loss(cfg)
    metadata = {"experiment": to_dict(cfg), "sample_shape": list(sample_shape)}
    if source is not None:
        metadata["init_from"] = source

    def export(directory: Path, model: EDMPrecond, ema: EDMPrecond) -> None:
        save_pretrained(model.net, directory, ema=ema.net, metadata=metadata)

    result = train(
        denoiser, loss_fn, dataset, train_cfg, export_fn=export, resume=resume, callbacks=callbacks
    )
    write_summary(output_dir, {"steps": result.step, "final_loss": result.final_loss, "model": "model"})
    return result
