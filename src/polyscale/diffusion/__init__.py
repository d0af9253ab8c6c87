"""Diffusion core: denoiser wrappers, schedules, losses and stateless samplers. Knows no architecture."""

from polyscale.diffusion.losses import EDMLoss, EpsLoss
from polyscale.diffusion.precond import (
    DiscreteEpsDenoiser,
    DiscreteVDenoiser,
    EDMPrecond,
    eps_from_denoiser,
    to_d,
)
from polyscale.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sample_ode_adaptive,
    sample_ode_rk4,
    sample_pc,
)
from polyscale.diffusion.schedules import (
    alphas_cumprod_from_betas,
    betas_cosine,
    betas_linear,
    betas_scaled_linear,
    sigma_to_t,
    sigmas_at_timesteps,
    sigmas_exponential,
    sigmas_from_alphas_cumprod,
    sigmas_karras,
    sigmas_linear,
    sigmas_vp,
    t_to_sigma,
    timesteps_vp,
)
from polyscale.diffusion.utils import append_dims

__all__ = [name for name in dir() if not name.startswith("_")]
