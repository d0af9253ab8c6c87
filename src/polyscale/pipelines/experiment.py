"""An experiment = model + data + diffusion + training configuration, loaded from a YAML preset.

Presets live in ``polyscale/presets/<name>.yaml``; :func:`load_experiment` validates them (and any
``section.key=value`` overrides) against the dataclasses below, so a typo is an error naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from polyscale.config import (
    ConfigError,
    check_finite,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    shipped_presets,
)
from polyscale.data.config import DataConfig
from polyscale.diffusion.sampling import SamplerConfig, nest_sampler_keys
from polyscale.nn.unet import UNetConfig
from polyscale.training import TrainConfig


@dataclass
class DiffusionConfig:
    """EDM preconditioning, training noise distribution and default sampling schedule."""

    sigma_data: float = 0.5  # std of the data; EDM's c_skip/c_out/c_in depend on it
    P_mean: float = -1.2  # log-normal training noise: mean of log(sigma)
    P_std: float = 1.2  # log-normal training noise: std of log(sigma)
    lowpass_factor: int = 0  # > 1: the loss also weights the error of means over f^d blocks (EDMLoss)
    lowpass_weight: float = 0.0  # weight of that low-frequency term (0 = off)
    # how this model samples by default: sampler name, steps, Karras schedule (sigma_min, sigma_max, rho) and
    # the sampler's own options (see polyscale.diffusion.sampling.SamplerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    # classifier-free guidance scale a conditional model samples with by default (1 = none)
    guidance_scale: float = 1.0


@dataclass
class ExperimentConfig:
    """Everything needed to train one model from nothing."""

    model: UNetConfig
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def preset_names() -> list[str]:
    """Names of the presets shipped with the package."""
    return shipped_presets()


def preset_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name (``digits2d``) or a YAML path to a file path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise FileNotFoundError(f"preset file {str(candidate)!r} does not exist")
        return candidate
    names = preset_names()
    if str(name_or_path) not in names:
        raise ValueError(
            f"unknown preset {str(name_or_path)!r}; expected one of {names} or a path to a .yaml file"
        )
    return Path(str(resources.files("polyscale") / "presets" / f"{name_or_path}.yaml"))


def load_experiment(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentConfig:
    """Load and validate a preset, applying ``section.key=value`` overrides (a file or an override with the
    flat sampling keys of earlier versions, ``diffusion.sampler=euler``, is read as :func:`migrate_experiment`
    says). Every number must be finite (``train.grad_clip`` may be ``.inf``: no clipping) and the sampler
    one of :data:`polyscale.diffusion.SAMPLERS`, with options it takes: a run is refused before it trains,
    not when it first samples."""
    path = preset_path(name_or_path)
    try:
        data = merge(migrate_experiment(load_yaml(path)), migrate_experiment(parse_overrides(overrides)))
        cfg = from_dict(ExperimentConfig, data)
        check_finite(cfg)
        cfg.train.validate()  # ranges too (train() checks again, knowing the number of processes)
        return cfg
    except (ConfigError, ValueError) as err:
        origin = f"{path}" + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(f"{origin}: {err}") from None


# the flat diffusion keys of earlier versions -> their SamplerConfig fields
FLAT_SAMPLER_KEYS = {"sampler": "name", "steps": "steps", "sigma_min": "sigma_min", "sigma_max": "sigma_max",
                     "rho": "rho"}  # fmt: skip


def migrate_experiment(data: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment mapping with the flat sampling keys of earlier versions (``diffusion.sampler: heun``,
    ``diffusion.steps``, ``sigma_min``, ``sigma_max``, ``rho``, as shipped models' and older runs'
    ``config.json`` hold them) moved into ``diffusion.sampler``; a mapping in the current form is returned
    unchanged (a copy)."""
    out = dict(data)
    if isinstance(out.get("diffusion"), Mapping):
        out["diffusion"] = nest_sampler_keys(out["diffusion"], FLAT_SAMPLER_KEYS)
    return out


def experiment_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """:class:`ExperimentConfig` from a stored mapping (a model directory's metadata), old forms migrated;
    non-finite numbers are refused as by :func:`load_experiment`."""
    cfg = from_dict(ExperimentConfig, migrate_experiment(data))
    check_finite(cfg)
    return cfg
