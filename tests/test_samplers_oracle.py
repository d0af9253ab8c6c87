"""Oracle: our samplers, driven by an eps-network through ``DiscreteEpsDenoiser``, reproduce diffusers' schedulers.

Conventions aligned (and why):
- Both sides use diffusers' own ``alphas_cumprod`` (float32 linear betas), so the noise levels are identical.
- Integer timesteps: DDIM uses ``leading`` spacing, Euler/Heun ``leading`` as well (their default ``linspace`` picks
  fractional timesteps and interpolates sigma linearly, while k-diffusion-style adapters interpolate t in
  log-sigma), DPM-Solver++ its default rounded ``linspace``. At integer timesteps the two agree exactly.
- The eps-network sees VP-space input ``x_vp = x / sqrt(1 + sigma^2)`` and a timestep; our adapter recovers the
  timestep from sigma (``sigma_to_t``), equal to diffusers' integer timestep up to float rounding.
- State spaces: DDIM and DPM-Solver++ evolve ``x_vp``; Euler and Heun evolve ``x = x_vp / sqrt(abar)`` (sigma
  space), like ours. We start both from the same noise and convert with ``x_sigma = x_vp * sqrt(1 + sigma^2)``.
- Final step: DDIM ``set_alpha_to_one=True`` and DPM-Solver++ ``final_sigmas_type="zero"`` with
  ``lower_order_final=True`` both end at sigma = 0 with a first-order step, as our samplers do.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from polyscale.diffusion import (  # noqa: E402
    DiscreteEpsDenoiser,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sigmas_at_timesteps,
    sigmas_vp,
)

SHAPES = {1: (2, 2, 12), 2: (2, 2, 6, 5), 3: (2, 1, 4, 5, 3)}
T = 1000
STEPS = 12


class EpsNet(torch.nn.Module):
    """A fixed smooth eps-predictor: the optimal one for N(0, 0.5^2) data plus a non-linear term that mixes
    neighbours and channels and depends on t. Samples stay O(1), as a trained network's do."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.ac = alphas_cumprod.double()

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t  # (B,) -> (B, 1, ...) or scalar
        lo = t.floor().long().clamp(0, T - 2)
        abar = torch.lerp(self.ac[lo], self.ac[lo + 1], t - lo)  # abar at (possibly fractional) t
        optimal = (1 - abar).sqrt() * x / (0.25 * abar + 1 - abar)
        mixed = x + 0.3 * torch.roll(x, 1, dims=-1) - 0.2 * torch.roll(x, 1, dims=1)
        return optimal + 0.1 * torch.tanh(mixed * (0.5 + t / T)) * torch.cos(t / 300.0)


def _scheduler(cls, **kw):
    return cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)


def _ours(scheduler) -> DiscreteEpsDenoiser:
    return DiscreteEpsDenoiser(EpsNet(scheduler.alphas_cumprod), scheduler.alphas_cumprod.double())


def _noise(dims: int) -> torch.Tensor:
    return torch.randn(SHAPES[dims], generator=torch.Generator().manual_seed(dims), dtype=torch.float64)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_ddim_matches_diffusers(dims):
    sched = _scheduler(diffusers.DDIMScheduler, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(STEPS)
    net, x_vp = EpsNet(sched.alphas_cumprod), _noise(dims)
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp, eta=0.0).prev_sample
    ac = sched.alphas_cumprod.double()
    sigmas = sigmas_vp(STEPS, ac, spacing="leading").double()
    x = _noise(dims) * (1 + sigmas[0] ** 2).sqrt()
    ours = sample_ddim(_ours(sched), x, sigmas, disable=True)
    assert x_vp.abs().max() < 10  # a realistic range, so 1e-4 is a meaningful tolerance
    assert (ours - x_vp).abs().max() <= 1e-4


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_euler_heun_match_diffusers(dims, name):
    cls = diffusers.EulerDiscreteScheduler if name == "euler" else diffusers.HeunDiscreteScheduler
    sched = _scheduler(cls, timestep_spacing="leading")
    sched.set_timesteps(STEPS)
    net = EpsNet(sched.alphas_cumprod)
    x = _noise(dims) * float(sched.init_noise_sigma)
    x_ref = x.clone()
    calls = 0
    for t in sched.timesteps:
        eps = net(sched.scale_model_input(x_ref, t), t)
        calls += 1
        x_ref = sched.step(eps, t, x_ref).prev_sample
    ac = sched.alphas_cumprod.double()
    sigmas = sigmas_vp(STEPS, ac, spacing="leading").double()
    ref_sigmas = sched.sigmas.double()
    if name == "heun":  # diffusers interleaves the levels: [s0, s1, s1, s2, s2, ..., 0]
        ref_sigmas = torch.cat([ref_sigmas[:1], ref_sigmas[1::2]])
    assert torch.allclose(sigmas, ref_sigmas, rtol=1e-5)
    sampler = sample_euler if name == "euler" else sample_heun
    ours = sampler(_ours(sched), x.clone(), sigmas, disable=True)
    assert x_ref.abs().max() < 10
    assert (ours - x_ref).abs().max() <= 1e-4
    assert calls == (STEPS if name == "euler" else 2 * STEPS - 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_dpmpp_2m_matches_diffusers(dims):
    sched = _scheduler(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=2,
                       lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(STEPS)
    net, x_vp = EpsNet(sched.alphas_cumprod), _noise(dims)
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp).prev_sample
    ac = sched.alphas_cumprod.double()
    # DPM-Solver's "linspace" takes n of n + 1 rounded points; use its timesteps directly.
    sigmas = sigmas_at_timesteps(sched.timesteps, ac).double()
    assert torch.allclose(sigmas, sched.sigmas.double(), rtol=1e-5)
    x = _noise(dims) * (1 + sigmas[0] ** 2).sqrt()
    ours = sample_dpmpp_2m(_ours(sched), x, sigmas, disable=True)
    assert x_vp.abs().max() < 10  # a realistic range, so 1e-4 is a meaningful tolerance
    assert (ours - x_vp).abs().max() <= 1e-4
