"""Configurations of ``polyscale grow sparse`` and ``polyscale grow depth``: one dataclass field per flag, YAML
presets in ``polyscale/presets/grow/`` and loaders on :func:`polyscale.config.load_config` (validated;
unknown keys are errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from polyscale.config import ConfigError, load_config

T = TypeVar("T")


@dataclass
class GrowSparseConfig:
    """A growing sparse classifier run (:func:`polyscale.pipelines.grow.grow_sparse`)."""

    dataset: Literal["mnist1d", "digits"] = "mnist1d"
    epochs: int = 100  # a resumed run continues to this total
    connectivity: float = 1e-4  # initial share of possible connections present (before per-unit minima)
    activation: Literal["tanh", "sigmoid", "relu"] = "tanh"
    hidden_sizes: tuple[int, ...] = (256, 256)
    skip: int = 1  # skip connections up to this many layers back (0 to 3; cloning needs >= 1)
    lr: float = 1e-2  # Adam learning rate
    batch_size: int = 100
    device: str = "auto"  # auto, cpu or cuda
    seed: int = 0
    structure_size: int = 1  # connections per structure of the schedule's allowance
    rank: Literal["random", "gradient"] = "random"  # how a route picks among candidate targets
    fill: Literal["gradient"] | None = None  # place a growth event's leftover allowance by |dL/dW|
    regrowth: Literal["set", "rigl"] | None = None  # prune and regrow after epochs that do not grow
    checkpoint_every: int = 10  # epochs between checkpoints (and always at the end)
    progress: bool = True  # progress bar
    schedule: dict[str, Any] = field(default_factory=dict)  # other SparseGrowthSchedule fields
    grower: dict[str, Any] = field(default_factory=dict)  # other SparseGrower fields

    def validate(self) -> None:
        """Raise a one-line ValueError for a value out of range (types are checked by ``from_dict``)."""
        _check(0 < self.connectivity <= 1, "connectivity (the initial share of connections)", "in (0, 1]",
               self.connectivity)  # fmt: skip
        _check(bool(self.hidden_sizes) and min(self.hidden_sizes) >= 1, "hidden_sizes", "positive widths",
               list(self.hidden_sizes))  # fmt: skip
        _check(0 <= self.skip <= 3, "skip", "0 to 3", self.skip)
        _check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        _check(0 < self.lr <= 10, "lr", "in (0, 10]", self.lr)
        for name in ("epochs", "batch_size", "structure_size", "checkpoint_every"):
            _check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))


@dataclass
class GrowDepthConfig:
    """A growing character-level GPT run (:func:`polyscale.pipelines.grow_depth.grow_depth`)."""

    dataset_path: str | None = None  # a UTF-8 text file (None: the shipped Shakespeare)
    n_layer: int = 1  # initial depth
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64  # context length in characters
    max_layers: int = 4  # growth stops here
    max_steps: int = 2000  # the learning-rate schedule spans it, so it is part of the run's settings
    batch_size: int = 12
    lr: float = 1e-3  # AdamW peak learning rate
    strategy: Literal["geometric", "copy", "zero", "random"] = "geometric"  # initialisation of a new layer
    detector: Literal["stagnation", "plateau"] = "stagnation"  # plateau confirmed by tau/kappa, or alone
    beta0: float = 0.1  # linear gain: beta = beta0 / (tau + eps)
    gamma0: float = 0.15  # curvature gain: gamma = gamma0 / (1 + kappa)
    eta0: float = 0.03  # escape gain under stagnation
    k_subspace: int = 10  # dominant subspace dimension
    ell_orth: int = 5  # secondary modes for the escape
    pg_patience: int = 2  # stagnant checks in a row that grow
    pg_threshold: float = 0.01  # relative improvement below which a check is stagnant
    tau_crit: float = 2.0
    kappa_crit: float = 0.5
    warmup_steps: int = 200  # steps before the first check, and after each growth
    history_window: int = 10  # snapshots in the trajectory
    collect_interval: int = 50  # steps between snapshots / checks
    eval_interval: int = 100
    device: str = "auto"  # auto, cpu or cuda
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and always at the end)
    progress: bool = True  # progress bar

    def validate(self) -> None:
        """Raise a one-line ValueError for a value out of range (types are checked by ``from_dict``)."""
        for name in ("n_layer", "n_head", "n_embd", "block_size", "max_steps", "batch_size", "k_subspace",
                     "pg_patience", "collect_interval", "eval_interval", "checkpoint_every"):  # fmt: skip
            _check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        _check(self.max_layers >= self.n_layer, "max_layers", f">= n_layer ({self.n_layer})", self.max_layers)
        _check(0 < self.lr <= 10, "lr", "in (0, 10]", self.lr)
        _check(0 <= self.pg_threshold <= 1, "pg_threshold", "in [0, 1]", self.pg_threshold)
        _check(self.ell_orth >= 0 and self.warmup_steps >= 0, "ell_orth and warmup_steps", ">= 0",
               (self.ell_orth, self.warmup_steps))  # fmt: skip
        _check(self.history_window >= 3, "history_window", ">= 3", self.history_window)
        _check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {got!r}")


def grow_preset_names() -> list[str]:
    """Names of the growth presets shipped in ``polyscale/presets/grow``."""
    folder = resources.files("polyscale") / "presets" / "grow"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _source(preset_or_path: str | Path | None) -> str | Path | Mapping[str, Any]:
    """``{}`` (the defaults), a YAML path, or the file of a shipped growth preset."""
    if preset_or_path is None:
        return {}
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    if str(preset_or_path) not in grow_preset_names():
        raise ValueError(
            f"unknown growth preset {str(preset_or_path)!r}; expected one of {grow_preset_names()} or a .yaml path"
        )
    return Path(str(resources.files("polyscale") / "presets" / "grow" / f"{preset_or_path}.yaml"))


def _load(cls: type[T], preset_or_path: str | Path | None, overrides: Sequence[str]) -> T:
    cfg = load_config(cls, _source(preset_or_path), overrides)
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(f"{preset_or_path or 'defaults'}: {err}") from None
    return cfg


def load_grow_sparse_config(
    preset_or_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> GrowSparseConfig:
    """A validated :class:`GrowSparseConfig` from the defaults (None), a preset name (``sparse_mnist1d``) or a
    YAML path, with ``key=value`` overrides applied. Raises ConfigError on unknown keys or bad values."""
    return _load(GrowSparseConfig, preset_or_path, overrides)


def load_grow_depth_config(
    preset_or_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> GrowDepthConfig:
    """A validated :class:`GrowDepthConfig` (as :func:`load_grow_sparse_config`; preset ``depth_shakespeare``)."""
    return _load(GrowDepthConfig, preset_or_path, overrides)
