"""Stateless samplers ``sample_<name>(denoiser, x, sigmas, *, generator=None, callback=None, disable=None,
desc=None, cond=None, ...) -> x``.

``x`` ``(B, ...)`` starts at ``randn * sigmas[0]`` (the caller draws it); ``sigmas`` is a strictly decreasing
schedule ending in 0; ``cond`` is a dict of keyword arguments passed to every denoiser call; randomness comes
only from ``generator`` (one ``torch.Generator``, or a sequence of one per batch row, drawn from by
``_common.noise_like``); ``callback`` receives ``{"i", "sigma", "sigma_next", "x", "denoised"}`` once per step
(``x`` and ``denoised`` before the update). A callback may move the batch by editing ``x`` in place, moving
``denoised`` by the same displacement (the velocity ``(x - denoised) / sigma`` is then unchanged); the step
continues from the moved batch (``polyscale.ot.bridge.SinkhornBridge`` does this). A tqdm bar, labelled
``desc`` (default ``"sampling"``), shows unless ``disable=True``.
"""

from __future__ import annotations

from collections.abc import Callable

from polyscale.diffusion.samplers.adaptive import sample_ode_adaptive
from polyscale.diffusion.samplers.deterministic import (
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_ode_rk4,
)
from polyscale.diffusion.samplers.stochastic import sample_ddim, sample_ddpm, sample_pc

SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp2m": sample_dpmpp_2m,
    "pc": sample_pc,
    "ode": sample_ode_rk4,
    "ode_adaptive": sample_ode_adaptive,
}


def get_sampler(name: str) -> Callable:
    """The sampler function registered under ``name`` in :data:`SAMPLERS`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "get_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_ode_adaptive",
    "sample_ode_rk4",
    "sample_pc",
]
