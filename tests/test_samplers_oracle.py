"""Oracle: our samplers, driven by an eps-network through ``DiscreteEpsDenoiser``, reproduce diffusers'
scheduler loops (DDPM, DDIM with eta 0 and 1, Euler, Heun, DPM-Solver++(2M)) to 1e-4 on 1D, 2D and 3D grids,
in float64.

Conventions aligned (and why):

- Noise levels: both sides use the scheduler's own ``alphas_cumprod`` (float32 linear betas, T = 1000); we
  convert it to float64 and compute ``sigma_t = sqrt((1 - abar_t) / abar_t)`` ourselves.
- Timesteps: ``timesteps_vp`` reproduces the integer timesteps of DDPM/DDIM/Euler/Heun for "leading" (with
  ``steps_offset``), "trailing" and "linspace"; DPM-Solver picks ``n`` of ``n + 1`` rounded points, so there
  we pass its ``scheduler.timesteps`` to ``sigmas_at_timesteps``. Our schedule is those sigmas plus a final
  0.
- Euler/Heun with "linspace" are left out on purpose: diffusers keeps fractional timesteps there and
  interpolates sigma *linearly* in t, while the denoiser adapter maps sigma -> t by interpolation in
  *log*-sigma (k-diffusion's convention); at integer timesteps the two agree exactly.
- DDIM steps to ``t - T // n`` (not to the next listed timestep), so it is a consistent chain only for
  "leading" and for "trailing" when ``n`` divides ``T``: we use ``n = 10``. DDIM's "linspace" is left out
  for that reason.
- The network sees VP-space input ``x_vp = x / sqrt(1 + sigma^2)`` and a timestep; the adapter recovers the
  timestep from sigma with ``sigma_to_t``, equal to diffusers' integer timestep up to float rounding.
- State spaces: DDPM, DDIM and DPM-Solver evolve ``x_vp``; Euler and Heun evolve ``x = x_vp / sqrt(abar)``
  like we do. We start from the same noise: ``x = x_vp * sqrt(1 + sigma_0^2)`` resp.
  ``x = noise * init_noise_sigma``. The final level is sigma = 0, where the two spaces coincide.
- Final step: DDIM ``set_alpha_to_one=True``, DDPM's ``prev_t = -1`` (alpha 1) and DPM-Solver's
  ``final_sigmas_type="zero"`` with ``lower_order_final=True`` all end at sigma = 0 with a first-order step
  that returns ``x0_hat``, as our samplers do. Heun's last step (to 0) is Euler on both sides (NFE 2n - 1).
- Stochastic samplers (DDPM, DDIM eta = 1) share one seeded ``torch.Generator`` per side; both draw one
  ``randn`` of the sample's shape and dtype per step, in the same order, so they match draw for draw
  (diffusers draws a last, zero-weighted, noise on the final step, after which nothing is drawn).
  ``clip_sample=False``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from polyscale.diffusion import (  # noqa: E402
    DiscreteEpsDenoiser,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sigmas_at_timesteps,
    sigmas_vp,
    timesteps_vp,
)
from polyscale.diffusion.utils import append_dims  # noqa: E402

SHAPES = {1: (2, 3, 12), 2: (2, 2, 6, 5), 3: (2, 2, 3, 4, 5)}  # (B, C, *spatial)
T = 1000
STEPS = 10  # divides T, so that DDIM's "trailing" chain is consistent (see the module docstring)
TOL = 1e-4


class EpsNet(nn.Module):
    """A fixed smooth eps-predictor for any grid rank: the optimal predictor for N(0, 0.5^2) data plus a
    random 3^d convolution term whose gain depends on t, so that every timestep matters. Samples stay O(1)."""

    def __init__(self, alphas_cumprod: torch.Tensor, channels: int, dims: int) -> None:
        super().__init__()
        self.ac = alphas_cumprod.double()
        self.conv = (
            getattr(nn, f"Conv{dims}d")(channels, channels, 3, padding=1).double().requires_grad_(False)
        )
        g = torch.Generator().manual_seed(1234)
        for p in self.conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x_vp: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = append_dims(torch.as_tensor(t, dtype=x_vp.dtype), x_vp.ndim)  # scalar or (B, 1, ..., 1)
        lo = t.floor().long().clamp(0, T - 2)
        abar = torch.lerp(self.ac[lo], self.ac[lo + 1], t - lo)  # abar at a (possibly fractional) t
        optimal = (1 - abar).sqrt() * x_vp / (0.25 * abar + 1 - abar)
        return optimal + 0.2 * torch.tanh(self.conv(x_vp)) * torch.cos(t / 150.0)


def _setup(cls, dims: int, **kw):
    sched = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)
    sched.set_timesteps(STEPS)
    net = EpsNet(sched.alphas_cumprod, SHAPES[dims][1], dims)
    ours = DiscreteEpsDenoiser(net, sched.alphas_cumprod.double())
    noise = torch.randn(SHAPES[dims], generator=torch.Generator().manual_seed(dims), dtype=torch.float64)
    return sched, net, ours, noise


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ref.abs().max() < 10 and ref.abs().max() > 0.1  # a realistic range, so 1e-4 is meaningful
    assert (ours - ref).abs().max() <= TOL, (ours - ref).abs().max()


@pytest.mark.parametrize("n", [7, 10, 50])
@pytest.mark.parametrize(
    "spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)]
)
def test_timesteps_vp_match_diffusers(n, spacing, offset):
    ac = diffusers.DDPMScheduler().alphas_cumprod
    ts = timesteps_vp(n, T, spacing=spacing, steps_offset=offset)
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler, diffusers.EulerDiscreteScheduler):
        if cls is diffusers.EulerDiscreteScheduler and spacing == "linspace":
            continue  # fractional timesteps there (module docstring)
        sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
        sched.set_timesteps(n)
        assert torch.equal(ts, sched.timesteps.long()), cls.__name__
        if cls is diffusers.EulerDiscreteScheduler:
            assert torch.allclose(
                sigmas_vp(n, ac, spacing=spacing, steps_offset=offset), sched.sigmas, rtol=1e-5
            )


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(dims, spacing, eta):
    sched, net, ours, x_vp = _setup(
        diffusers.DDIMScheduler, dims, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing
    )
    sigmas = sigmas_vp(STEPS, sched.alphas_cumprod, spacing=spacing, dtype=torch.float64)
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()
    g = torch.Generator().manual_seed(5)
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp, eta=eta, generator=g).prev_sample
    out = sample_ddim(ours, x, sigmas, eta=eta, generator=torch.Generator().manual_seed(5), disable=True)
    _assert_close(out, x_vp)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddpm_matches_diffusers(dims, spacing):
    sched, net, ours, x_vp = _setup(
        diffusers.DDPMScheduler,
        dims,
        clip_sample=False,
        timestep_spacing=spacing,
        variance_type="fixed_small",
    )
    sigmas = sigmas_vp(STEPS, sched.alphas_cumprod, spacing=spacing, dtype=torch.float64)
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()
    g = torch.Generator().manual_seed(6)
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp, generator=g).prev_sample
    out = sample_ddpm(ours, x, sigmas, generator=torch.Generator().manual_seed(6), disable=True)
    _assert_close(out, x_vp)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_euler_heun_match_diffusers(dims, spacing, name):
    cls = diffusers.EulerDiscreteScheduler if name == "euler" else diffusers.HeunDiscreteScheduler
    sched, net, ours, noise = _setup(cls, dims, timestep_spacing=spacing)
    x_ref = x = noise * float(sched.init_noise_sigma)
    calls = 0
    for t in sched.timesteps:
        eps = net(sched.scale_model_input(x_ref, t), t)
        calls += 1
        x_ref = sched.step(eps, t, x_ref).prev_sample
    sigmas = sigmas_vp(STEPS, sched.alphas_cumprod, spacing=spacing, dtype=torch.float64)
    ref_sigmas = sched.sigmas.double()
    if name == "heun":  # diffusers interleaves the levels: [s0, s1, s1, s2, s2, ..., 0]
        ref_sigmas = torch.cat([ref_sigmas[:1], ref_sigmas[1::2]])
    assert torch.allclose(sigmas, ref_sigmas, rtol=1e-5)
    out = (sample_euler if name == "euler" else sample_heun)(ours, x.clone(), sigmas, disable=True)
    _assert_close(out, x_ref)
    assert calls == (STEPS if name == "euler" else 2 * STEPS - 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_dpmpp_2m_matches_diffusers(dims, spacing):
    sched, net, ours, x_vp = _setup(
        diffusers.DPMSolverMultistepScheduler,
        dims,
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing=spacing,
    )
    sigmas = sigmas_at_timesteps(sched.timesteps, sched.alphas_cumprod, dtype=torch.float64)
    assert torch.allclose(sigmas, sched.sigmas.double(), rtol=1e-5)
    if spacing == "trailing":
        assert torch.equal(
            sigmas, sigmas_vp(STEPS, sched.alphas_cumprod, spacing="trailing", dtype=torch.float64)
        )
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp).prev_sample
    _assert_close(sample_dpmpp_2m(ours, x, sigmas, disable=True), x_vp)


def test_oracle_tolerance_is_discriminating():
    """Stepping through neighbouring timesteps (off by one) or using a first-order rule instead of DPM++(2M)
    changes the result by far more than the tolerance, so the comparisons above can fail."""
    sched, net, ours, x_vp = _setup(
        diffusers.DPMSolverMultistepScheduler,
        2,
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sigmas = sigmas_at_timesteps(sched.timesteps, sched.alphas_cumprod, dtype=torch.float64)
    x = x_vp * (1 + sigmas[0] ** 2).sqrt()
    for t in sched.timesteps:
        x_vp = sched.step(net(x_vp, t), t, x_vp).prev_sample
    shifted = sigmas_at_timesteps(sched.timesteps - 1, sched.alphas_cumprod, dtype=torch.float64)
    assert (sample_dpmpp_2m(ours, x, shifted, disable=True) - x_vp).abs().max() > 100 * TOL
    assert (sample_ddim(ours, x, sigmas, disable=True) - x_vp).abs().max() > 100 * TOL
