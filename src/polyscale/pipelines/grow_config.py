"""Configurations of ``polyscale grow sparse`` and ``polyscale grow depth``: one dataclass field per flag, YAML
presets in ``polyscale/presets/grow/`` and loaders on :func:`polyscale.config.load_config` (validated;
unknown keys are errors)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from polyscale.config import ConfigError, check_finite, load_config, shipped_presets

OPT_IN = "opt-in, beyond the default growth rules (docs/growth.md)"  # a flag group of grow sparse


def _flag(default: Any, help: str, *, group: str | None = None) -> Any:
    """A field that is also a command-line flag: ``help`` (and the flag ``group``) in its metadata."""
    return field(default=default, metadata={"help": help, "group": group})


def flag_fields(cls: type) -> list[Field[Any]]:
    """The fields of config dataclass ``cls`` that are flags (those with a ``help`` in their metadata)."""
    return [f for f in fields(cls) if f.metadata.get("help")]


@dataclass
class GrowSparseConfig:
    """A growing sparse classifier run (:func:`polyscale.pipelines.grow.grow_sparse`). A field with a ``help``
    (:func:`_flag`) is also a flag of ``polyscale grow sparse``; every field is a ``--set`` key."""

    dataset: Literal["mnist1d", "digits"] = _flag(
        "mnist1d", "mnist1d: 40-sample signals; digits: scikit-learn's 8x8 images"
    )
    epochs: int = _flag(100, "training epochs; a resumed run continues to this total")
    connectivity: float = _flag(
        1e-4, "initial connectivity: share of possible connections at the start (1e-4 = 0.01 %; every unit "
        "also starts with at least one input and one output)",
    )  # fmt: skip
    activation: Literal["tanh", "sigmoid", "relu"] = _flag("tanh", "hidden units' activation")
    hidden_sizes: tuple[int, ...] = _flag((256, 256), "units per hidden layer")
    skip: Literal[0, 1, 2, 3] = _flag(
        1, "skip connections up to this many layers back (the routing radius; cloning needs >= 1)"
    )
    lr: float = _flag(1e-2, "Adam learning rate")
    batch_size: int = _flag(100, "examples per step")
    device: str = "auto"  # auto, cpu or cuda (the flag comes from polyscale.cli.args.add_device)
    seed: int = 0  # seed of the initial network and of the data order
    structure_size: int = _flag(
        1, "connections per structure of the phase limits 10/50/200 (1: a run adds at most 260)", group=OPT_IN
    )
    rank: Literal["random", "gradient"] = _flag(
        "random", "how a route picks among its candidate targets: uniformly, or by |dL/dW|", group=OPT_IN
    )
    fill: Literal["gradient"] | None = _flag(
        None, "place what routing leaves of a growth event's allowance on the inactive positions of largest "
        "|dL/dW|, in every block (null: off)", group=OPT_IN,
    )  # fmt: skip
    regrowth: Literal["set", "rigl"] | None = _flag(
        None, "also prune and regrow (SET: random, RigL: by gradient) after every epoch that does not grow",
        group=OPT_IN,
    )  # fmt: skip
    checkpoint_every: int = _flag(10, "epochs between checkpoints (and always at the end)")
    progress: bool = True  # progress bar
    schedule: dict[str, Any] = field(default_factory=dict)  # other SparseGrowthSchedule fields
    grower: dict[str, Any] = field(default_factory=dict)  # other SparseGrower fields
    # steps in a row whose loss or gradients are NaN or inf that are skipped before the run stops with a
    # DivergenceError (0 = stop at the first)
    max_bad_steps: int = 0

    def validate(self) -> None:
        """Raise a one-line ValueError for a value out of range (types are checked by ``from_dict``)."""
        check_finite(self)
        _check(0 < self.connectivity <= 1, "connectivity (the initial share of connections)", "in (0, 1]",
               self.connectivity)  # fmt: skip
        _check(bool(self.hidden_sizes) and min(self.hidden_sizes) >= 1, "hidden_sizes", "positive widths",
               list(self.hidden_sizes))  # fmt: skip
        _check(0 <= self.skip <= 3, "skip", "0 to 3", self.skip)
        _check(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        _check(0 < self.lr <= 10, "lr", "in (0, 10]", self.lr)
        for name in ("epochs", "batch_size", "structure_size", "checkpoint_every"):
            _check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        _check(self.max_bad_steps >= 0, "max_bad_steps", ">= 0", self.max_bad_steps)


@dataclass
class GrowDepthConfig:
    """A growing character-level GPT run (:func:`polyscale.pipelines.grow_depth.grow_depth`). A field with a
    ``help`` (:func:`_flag`) is also a flag of ``polyscale grow depth``; every field is a ``--set`` key."""

    dataset_path: str | None = _flag(None, "a UTF-8 text file (null: the shipped Shakespeare)")
    n_layer: int = _flag(1, "initial depth")
    n_head: int = _flag(4, "attention heads per layer")
    n_embd: int = _flag(128, "embedding width")
    block_size: int = _flag(64, "context length in characters")
    max_layers: int = _flag(4, "growth stops at this depth")
    max_steps: int = _flag(2000, "training steps (the learning-rate schedule spans them)")
    batch_size: int = _flag(12, "sequences per step")
    lr: float = _flag(1e-3, "AdamW peak learning rate")
    strategy: Literal["geometric", "copy", "zero", "random"] = _flag(
        "geometric", "initialisation of an inserted layer (geometric: extrapolate the weight trajectory)"
    )
    detector: Literal["stagnation", "plateau"] = _flag(
        "stagnation", "when to grow: a loss plateau confirmed by tau/kappa (stagnation), or the plateau alone"
    )
    beta0: float = _flag(0.1, "linear gain: beta = beta0 / (tau + eps)")
    gamma0: float = _flag(0.15, "curvature gain: gamma = gamma0 / (1 + kappa)")
    eta0: float = _flag(0.03, "escape gain under stagnation")
    k_subspace: int = _flag(10, "dominant subspace dimension")
    ell_orth: int = _flag(5, "secondary modes for the escape")
    pg_patience: int = _flag(2, "stagnant checks in a row that grow")
    pg_threshold: float = _flag(0.01, "relative improvement below which a check is stagnant")
    tau_crit: float = _flag(2.0, "stretch factor above which the trajectory counts as stagnating")
    kappa_crit: float = _flag(0.5, "curvature above which the trajectory counts as stagnating")
    warmup_steps: int = _flag(200, "steps before the first check, and after each growth")
    history_window: int = _flag(10, "snapshots in the trajectory")
    collect_interval: int = _flag(50, "steps between snapshots / checks")
    eval_interval: int = _flag(100, "steps between validation losses")
    device: str = "auto"  # auto, cpu or cuda (the flag comes from polyscale.cli.args.add_device)
    seed: int = 0
    checkpoint_every: int = _flag(500, "steps between checkpoints (and always at the end)")
    progress: bool = True  # progress bar
    # steps in a row whose loss or gradient norm is NaN or inf that are skipped before the run stops with a
    # DivergenceError (0 = stop at the first)
    max_bad_steps: int = 0

    def validate(self) -> None:
        """Raise a one-line ValueError for a value out of range (types are checked by ``from_dict``)."""
        check_finite(self)
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
        for name in ("beta0", "gamma0", "eta0"):  # gains of the extrapolation's terms; 0 turns one off
            _check(getattr(self, name) >= 0, name, ">= 0 (a gain; 0 turns its term off)", getattr(self, name))
        _check(self.tau_crit >= 1, "tau_crit", ">= 1 (the stretch factor path / chord is never below 1)",
               self.tau_crit)  # fmt: skip
        _check(self.kappa_crit >= 0, "kappa_crit", ">= 0 (the curvature is never negative)", self.kappa_crit)
        _check(self.max_bad_steps >= 0, "max_bad_steps", ">= 0", self.max_bad_steps)


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {got!r}")


def grow_preset_names() -> list[str]:
    """Names of the growth presets shipped in ``polyscale/presets/grow``."""
    return shipped_presets("grow")


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


Config = TypeVar("Config", GrowSparseConfig, GrowDepthConfig)


def _load(cls: type[Config], preset_or_path: str | Path | None, overrides: Sequence[str]) -> Config:
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
