"""Sampling as one value: :class:`SamplerConfig` (which sampler, how many levels, the Karras schedule's
range and the sampler's own options) and :func:`run_sampler`, the one place that turns it into a schedule and
calls the sampler. Grids and graphs (features and both structure stages) all sample through it."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from polyscale.diffusion.samplers import SAMPLERS
from polyscale.diffusion.samplers._common import Generators, row_generators
from polyscale.diffusion.schedules import sigmas_karras

# keyword arguments every sampler takes from run_sampler itself, never from a configuration
RESERVED = ("denoiser", "x", "sigmas", "generator", "callback", "disable", "desc", "cond")


def sampler_options(name: str) -> dict[str, Any]:
    """The options (keyword-only parameters beyond the common ones) that sampler ``name`` accepts, with their
    defaults: ``{}`` for Euler, ``{"eta": 0.0}`` for DDIM, Heun's churn settings, ..."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in RESERVED}


@dataclass
class SamplerConfig:
    """How to sample: sampler ``name`` (a key of :data:`polyscale.diffusion.SAMPLERS`) over a Karras schedule
    of ``steps`` levels from ``sigma_max`` down to ``sigma_min`` with exponent ``rho``; ``options`` are the
    sampler's own keyword arguments (DDIM's ``eta``, Heun's ``s_churn`` / ``s_tmin`` / ``s_tmax`` /
    ``s_noise``, ...; see :func:`sampler_options`). Validated on construction: an unknown option is an
    error, never dropped."""

    name: str = "heun"
    steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = sampler_options(self.name)
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"sampler steps must be an integer >= 1, got {self.steps!r}")
        for key in ("sigma_min", "sigma_max", "rho"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"sampler.{key} must be a finite number, got {value!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if not self.rho > 0:
            raise ValueError(f"rho must be > 0, got {self.rho}")
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} for sampler {self.name!r}; it accepts {sorted(allowed) or 'none'}"
            )
        self.steps = int(self.steps)

    def sigmas(self, device: torch.device | str | None = None) -> Tensor:
        """``(steps + 1,)`` Karras noise levels from ``sigma_max`` to ``sigma_min``, then 0."""
        return sigmas_karras(self.steps, self.sigma_min, self.sigma_max, rho=self.rho, device=device)


def nest_sampler_keys(section: Mapping[str, Any], keys: Mapping[str, str], *, into: str = "sampler") -> dict:
    """``section`` (a config mapping) with its flat sampling keys (``keys``: old name -> :class:`SamplerConfig`
    field) moved into the mapping ``section[into]``; a key already nested wins over a flat one. A section
    without flat keys comes back unchanged (a copy)."""
    out = dict(section)
    flat = {}
    for old, new in keys.items():
        if old in out and not isinstance(out[old], Mapping):
            flat[new] = out.pop(old)
    if flat:
        out[into] = {**flat, **dict(out.get(into) or {})}
    return out


def with_sampler(config: SamplerConfig, name: str | None = None, steps: int | None = None) -> SamplerConfig:
    """``config`` with another sampler ``name`` and / or ``steps`` (None: keep). A new sampler keeps the options
    it accepts too (Heun's churn passes to another sampler that has churn, DDIM's ``eta`` does not pass to
    Euler), so a flag that picks a sampler never makes the configured options an error."""
    if name is None and steps is None:
        return config
    name = config.name if name is None else name
    allowed = sampler_options(name)
    options = {k: v for k, v in config.options.items() if k in allowed}
    return replace(config, name=name, steps=config.steps if steps is None else steps, options=options)


def run_sampler(
    denoiser: nn.Module | Callable,
    x: Tensor,
    config: SamplerConfig,
    *,
    generator: Generators = None,
    callback: Callable | None = None,
    progress: bool = False,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Denoise ``x`` (any shape whose first axis is the batch, already at noise ``config.sigma_max``) with
    the sampler, schedule and options of ``config``; ``cond`` is passed to every denoiser call. With
    ``progress`` a bar labelled ``desc`` (default ``"sampling"``) shows the steps. ``generator``: one
    ``torch.Generator`` for the batch, or one per batch row (row ``i``'s noise comes from ``generator[i]``
    alone; a length other than the batch size is a ``ValueError``). Returns a tensor of ``x``'s shape."""
    row_generators(x, generator)  # a list of the wrong length fails here, also for deterministic samplers
    fn = SAMPLERS[config.name]
    return fn(denoiser, x, config.sigmas(x.device), generator=generator, callback=callback,
              disable=not progress, desc=desc, cond=cond, **config.options)  # fmt: skip


__all__ = ["RESERVED", "SamplerConfig", "nest_sampler_keys", "run_sampler", "sampler_options", "with_sampler"]
