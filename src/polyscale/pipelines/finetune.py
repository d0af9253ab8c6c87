"""Fine-tune a trained model on new data: a LoRA adapter (:mod:`polyscale.training.lora`) or every weight.

The fine-tuning run is an experiment like any other: the base model's configuration (its network, diffusion
and training sections, from its ``config.json``) with new data and new training settings, trained by the one
training loop into one run directory::

    <run>/adapter/   LoRA: the adapter alone (adapter_config.json + adapter_model.safetensors), EMA weights
    <run>/model/     full fine-tuning, or LoRA with ``merge``: a model directory (polyscale.io)
    <run>/config.yaml, checkpoints/, metrics.csv, summary.json   as for ``polyscale train``

The data is the user's folder of images (``data.kind=image_folder``) or ``.npy``/``.npz`` array file
(``array``), or any data kind set with overrides (``data.kind=texture``, ``data.image=brick``); without
either, the base model's own data.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from polyscale.config import ConfigError, parse_overrides, to_dict
from polyscale.config import merge as merge_settings
from polyscale.diffusion import EDMPrecond
from polyscale.io import save_pretrained
from polyscale.pipelines.datasets import WithoutLabels, build_dataset
from polyscale.pipelines.experiment import ExperimentConfig, experiment_from_dict, migrate_experiment
from polyscale.pipelines.sample import load_denoiser
from polyscale.pipelines.train import CHANGEABLE, RESUMABLE, check_data_matches_model, make_loss
from polyscale.training import TrainResult, train
from polyscale.training.lora import (
    AdapterConfig,
    ParameterCounts,
    add_lora,
    base_fingerprint,
    merge_lora,
    parameter_counts,
    require_peft,
    save_adapter,
)
from polyscale.training.run_dir import OWNED, open_run, write_summary

ADAPTER = "adapter"  # the run directory's adapter folder
DEFAULT_STEPS = 500  # optimizer steps of a fine-tuning run (--steps)
DEFAULT_LR = 1e-3  # peak learning rate (--lr), LoRA and full alike
ARRAY_SUFFIXES = (".npy", ".npz")
# flags that set these keys; --set may not set them too
FLAG_KEYS = {"train.max_steps": "--steps", "train.lr": "--lr", "train.batch_size": "--batch-size"}


@dataclass
class FinetuneResult:
    """What a finished fine-tuning run reports."""

    train: TrainResult  # the training loop's result (steps, losses, wall time)
    parameters: ParameterCounts  # trainable (adapter, or every weight) and total parameters
    adapter_dir: Path | None  # <run>/adapter (LoRA)
    model_dir: Path | None  # <run>/model (full fine-tuning, or LoRA with merge)


def adapter_config(
    *,
    rank: int | None,
    full: bool,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] = (),
) -> AdapterConfig | None:
    """The adapter the flags ask for, or None for full fine-tuning (``full``).

    Raises:
        ValueError: neither or both of ``rank`` and ``full``, a rank below 1, or LoRA settings with ``full``.
    """
    if full:
        lora_flags = {"--lora-rank": rank, "--lora-alpha": alpha, "--lora-dropout": dropout or None,
                      "--lora-targets": tuple(targets) or None}  # fmt: skip
        given = [flag for flag, value in lora_flags.items() if value is not None]
        if given:
            raise ValueError(
                f"--full fine-tunes every weight without an adapter; drop {', '.join(given)} or --full"
            )
        return None
    if rank is None:
        raise ValueError(
            "expected --lora-rank R (train a LoRA adapter of rank R) or --full (train every weight)"
        )
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(
            f"--lora-rank must be an integer >= 1, got {rank!r} (for full fine-tuning pass --full)"
        )
    return AdapterConfig(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(targets))


def _data_from_path(data_dir: str | Path) -> dict[str, str]:
    """The ``data`` keys ``--data-dir`` sets: a folder is an image folder, a .npy/.npz file an array file."""
    path = Path(data_dir)
    if path.is_dir():
        return {"kind": "image_folder", "path": str(path)}
    if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
        return {"kind": "array", "path": str(path)}
    found = "nothing" if not path.exists() else f"a {path.suffix or 'suffix-less'} file"
    raise ValueError(
        f"--data-dir {str(path)!r}: expected a folder of images or a .npy/.npz file, found {found}"
    )


def finetune_experiment(
    base: ExperimentConfig,
    *,
    data_dir: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """The fine-tuning experiment: ``base`` (the base model's configuration) with the data of ``data_dir``,
    then ``overrides`` (``section.key=value``), and ``steps`` / ``lr`` / ``batch_size`` (default the base's) as
    the training settings; warm-up lasts a tenth of the steps unless an override sets it.

    Raises:
        ValueError / ConfigError: an override of the network (``model.*``) or of ``diffusion.sigma_data`` (both
            belong to the base), of a key a flag sets, ``data.kind`` beside ``data_dir``, an unknown key or
            value, or images resized below the crop size.
    """
    try:
        parsed = migrate_experiment(parse_overrides(overrides))
    except ConfigError as err:
        raise ConfigError(f"--set: {err}") from None
    if "model" in parsed:
        raise ValueError(f"--set model.{next(iter(parsed['model']), '')}: fine-tuning keeps the base model's "
                         "network; drop the override")  # fmt: skip
    if "sigma_data" in parsed.get("diffusion", {}):
        raise ValueError("--set diffusion.sigma_data: the preconditioning belongs to the base model; drop it")
    for key, flag in FLAG_KEYS.items():
        if key.split(".")[1] in parsed.get("train", {}):
            raise ValueError(f"--set {key}: use {flag} instead")
    data = _data_from_path(data_dir) if data_dir is not None else {}
    if data and {"kind", "path"} & set(parsed.get("data", {})):
        raise ValueError(
            "--data-dir sets data.kind and data.path; give either --data-dir or --set data.kind=..."
        )
    train = {"max_steps": steps, "lr": lr, "warmup_steps": steps // 10}
    if batch_size is not None:
        train["batch_size"] = batch_size
    settings = merge_settings(merge_settings(to_dict(base), {"data": data, "train": train}), parsed)
    try:
        cfg = experiment_from_dict(settings)
        cfg.train.validate()
    except (ConfigError, ValueError) as err:
        raise ConfigError(f"fine-tuning settings: {err}") from None
    d = cfg.data
    if d.kind == "image_folder" and d.crop_size is not None and d.size < d.crop_size:
        raise ValueError(
            f"data.size={d.size} (images are resized to it) is smaller than data.crop_size={d.crop_size} "
            f"(the base model trains on crops of that edge); set --set data.size=N with N >= {d.crop_size}"
        )
    return cfg


def finetune(
    checkpoint: str | Path,
    output_dir: str | Path,
    *,
    lora: AdapterConfig | None,
    data_dir: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
    merge: bool = False,
    resume: bool = True,
    allow_change: tuple[str, ...] = (),
    callbacks=(),
) -> FinetuneResult:
    """Fine-tune the model ``checkpoint`` (a model directory, a run directory or a shipped model's name; its EMA
    weights when it has them) on new data into the run directory ``output_dir`` (module docstring).

    ``lora`` trains a LoRA adapter on the frozen base and exports it alone to ``<run>/adapter`` (and, with
    ``merge``, the merged model to ``<run>/model``); ``lora=None`` trains every weight and exports
    ``<run>/model``. The run resumes like ``polyscale train`` (same settings required, except how far and how
    verbosely it trains and the ``allow_change`` keys; the base must have the same weights).

    Raises:
        ValueError: see :func:`finetune_experiment`, ``merge`` without ``lora``, data that does not fit the
            network, or a run directory that cannot be used (see :func:`~polyscale.training.run_dir.open_run`).
        PeftNotInstalledError: ``lora`` without peft installed.
    """
    if lora is not None:
        require_peft()
    elif merge:
        raise ValueError(
            "--merge folds a LoRA adapter into the model; with --full the model is written anyway"
        )
    denoiser, base_cfg, _ = load_denoiser(checkpoint)  # a directory or a shipped model's name
    cfg = finetune_experiment(base_cfg, data_dir=data_dir, steps=steps, lr=lr, batch_size=batch_size,
                              overrides=overrides)  # fmt: skip
    output_dir = Path(output_dir)
    train_cfg = replace(cfg.train, output_dir=str(output_dir))
    method = {"method": "full"} if lora is None else {"method": "lora", **to_dict(lora)}
    about = {"base": str(checkpoint), "base_sha256": base_fingerprint(denoiser.net), **method}
    settings = {**to_dict(replace(cfg, train=train_cfg)), "finetune": about}
    with open_run(output_dir, settings, resume=resume, ignore=(*RESUMABLE, "finetune.base"),
                  allow_change=allow_change, changeable=CHANGEABLE, command="finetune",
                  names=(*OWNED, ADAPTER)):  # fmt: skip
        return _finetune_in(denoiser, cfg, train_cfg, output_dir, lora=lora, about=about, merge=merge,
                            resume=resume, callbacks=callbacks)  # fmt: skip


def _finetune_in(denoiser: EDMPrecond, cfg: ExperimentConfig, train_cfg, output_dir: Path, *, lora, about,
                 merge: bool, resume: bool, callbacks) -> FinetuneResult:  # fmt: skip
    dataset = build_dataset(cfg.data, split="train")
    sample_shape = tuple(dataset[0]["x"].shape)
    check_data_matches_model(cfg, sample_shape)
    if cfg.model.num_classes is None:
        dataset = WithoutLabels(dataset)
    if lora is not None:
        add_lora(denoiser.net, lora, seed=cfg.train.seed)  # B = 0: training starts from the base exactly
    else:
        denoiser.requires_grad_(True)
    counts = parameter_counts(denoiser)
    metadata = {"experiment": to_dict(cfg), "sample_shape": list(sample_shape), "init_from": about["base"],
                "finetune": about}  # fmt: skip
    adapter_dir = output_dir / ADAPTER if lora is not None else None
    model_dir = output_dir / "model" if lora is None or merge else None

    def export(directory: Path, model: EDMPrecond, ema: EDMPrecond) -> None:
        if adapter_dir is not None:  # the EMA of the adapter, as samplers use the EMA of a model
            save_adapter(ema.net, adapter_dir, source=about["base"], metadata=metadata)
        if model_dir is None:
            return
        if lora is None:
            save_pretrained(model.net, model_dir, ema=ema.net, metadata=metadata)
        else:
            merged, merged_ema = merge_lora(copy.deepcopy(model.net)), merge_lora(copy.deepcopy(ema.net))
            save_pretrained(merged, model_dir, ema=merged_ema, metadata=metadata)

    result = train(denoiser, make_loss(cfg), dataset, train_cfg, export_fn=export, resume=resume,
                   callbacks=callbacks)  # fmt: skip
    write_summary(output_dir, {
        "steps": result.step, "final_loss": result.final_loss, "method": about["method"],
        "trainable_parameters": counts.trainable, "total_parameters": counts.total,
        "adapter": ADAPTER if adapter_dir is not None else None, "model": "model" if model_dir else None,
    })  # fmt: skip
    return FinetuneResult(result, counts, adapter_dir, model_dir)
