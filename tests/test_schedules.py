"""Schedules against their defining formulas, a slow reference for the sigma <-> t interpolation, and
diffusers' schedules as a peer (beta schedules, Karras / exponential sigma grids).
"""

from __future__ import annotations

import math

import pytest
import torch

from polyscale.diffusion import (
    alphas_cumprod_from_betas,
    betas_cosine,
    betas_linear,
    betas_scaled_linear,
    log_sigmas_from_alphas_cumprod,
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

CONTINUOUS = [sigmas_karras, sigmas_exponential, sigmas_linear]


@pytest.mark.parametrize("fn", CONTINUOUS)
@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_continuous_schedules_endpoints_order_dtype(fn, n):
    s = fn(n, 0.01, 50.0)
    assert s.shape == (n + 1,) and s.dtype == torch.get_default_dtype() and s[-1] == 0
    assert float(s[0]) == pytest.approx(50.0, rel=1e-6)
    if n > 1:
        assert float(s[-2]) == pytest.approx(0.01, rel=1e-5)
    assert (s[1:] < s[:-1]).all()
    s64 = fn(n, 0.01, 50.0, dtype=torch.float64, device="cpu")
    assert s64.dtype == torch.float64 and torch.allclose(s64.float(), s)


def test_karras_formula_and_special_cases():
    s = sigmas_karras(5, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    for i in range(5):
        expected = (80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert float(s[i]) == pytest.approx(expected, rel=1e-12)
    # rho = 1 is evenly spaced in sigma
    assert torch.allclose(
        sigmas_karras(6, 0.5, 3.0, rho=1.0, dtype=torch.float64),
        sigmas_linear(6, 0.5, 3.0, dtype=torch.float64),
        rtol=1e-12,
    )
    log_s = sigmas_exponential(6, 0.5, 3.0, dtype=torch.float64)[:-1].log()
    assert torch.allclose(log_s.diff(), torch.full((5,), math.log(0.5 / 3.0) / 5, dtype=torch.float64))


def test_karras_and_exponential_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for flag, ours in [("use_karras_sigmas", sigmas_karras), ("use_exponential_sigmas", sigmas_exponential)]:
        sched = diffusers.EulerDiscreteScheduler(**{flag: True})
        sched.set_timesteps(25)
        ref = sched.sigmas.double()
        mine = ours(25, float(ref[-2]), float(ref[0]), dtype=torch.float64)
        assert torch.allclose(mine, ref, rtol=1e-5), flag


@pytest.mark.parametrize("bad", [(0, 0.1, 1.0), (5, 1.0, 0.1), (5, 1.0, 1.0), (5, -1.0, 1.0), (5, 0.0, 1.0)])
@pytest.mark.parametrize("fn", CONTINUOUS)
def test_continuous_schedule_errors(fn, bad):
    with pytest.raises(ValueError, match="n must be|sigma_min"):
        fn(*bad)


def test_beta_schedules_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    cases = [
        ("linear", betas_linear(1000), (1e-4, 0.02)),
        ("scaled_linear", betas_scaled_linear(1000), (0.00085, 0.012)),
        ("squaredcos_cap_v2", betas_cosine(1000), (1e-4, 0.02)),
    ]
    for name, ours, (start, end) in cases:
        sched = diffusers.DDPMScheduler(
            num_train_timesteps=1000, beta_schedule=name, beta_start=start, beta_end=end
        )
        assert ours.dtype == torch.float64 and ours.shape == (1000,)
        assert torch.allclose(ours.float(), sched.betas, rtol=1e-5, atol=1e-8), name
        ac = alphas_cumprod_from_betas(ours)
        assert torch.allclose(ac.float(), sched.alphas_cumprod, rtol=1e-5), name


def test_vp_formulas():
    betas = betas_linear(10, 0.1, 0.5)
    ac = alphas_cumprod_from_betas(betas)
    assert torch.allclose(
        ac,
        torch.tensor(
            [math.prod(1 - float(b) for b in betas[: i + 1]) for i in range(10)], dtype=torch.float64
        ),
    )
    sig = sigmas_from_alphas_cumprod(ac)
    assert torch.allclose(1 / (1 + sig**2), ac)  # abar = 1 / (1 + sigma^2)
    cos = betas_cosine(50, max_beta=0.2)
    assert cos.max() == pytest.approx(0.2) and (cos > 0).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda: betas_linear(1),
        lambda: betas_linear(10, 0.5, 0.1),
        lambda: betas_linear(10, 0.0, 0.1),
        lambda: betas_scaled_linear(10, 0.2, 0.1),
        lambda: betas_cosine(10, max_beta=1.0),
        lambda: alphas_cumprod_from_betas(torch.tensor([0.1, 1.5])),
        lambda: alphas_cumprod_from_betas(torch.ones(2, 2) * 0.1),
        lambda: sigmas_from_alphas_cumprod(torch.tensor([0.5, 0.9])),  # increasing
        lambda: sigmas_from_alphas_cumprod(torch.tensor([1.0, 0.5])),  # abar = 1: sigma = 0 is not a level
        lambda: sigmas_karras(5, 0.1, 1.0, rho=0.0),
        lambda: sigma_to_t(torch.tensor(1.0)),  # neither alphas_cumprod nor log_sigmas
    ],
)
def test_vp_errors(call):
    with pytest.raises(ValueError):
        call()


def _slow_sigma_to_t(sigma: float, sigmas: list[float]) -> float:
    """Reference: walk the increasing levels, interpolate t linearly in log-sigma inside the bracket."""
    if sigma <= sigmas[0]:
        return 0.0
    if sigma >= sigmas[-1]:
        return float(len(sigmas) - 1)
    for i in range(len(sigmas) - 1):
        if sigmas[i] <= sigma <= sigmas[i + 1]:
            lo, hi = math.log(sigmas[i]), math.log(sigmas[i + 1])
            return i + (math.log(sigma) - lo) / (hi - lo)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("betas", [betas_linear(1000), betas_cosine(200)], ids=["linear", "cosine"])
def test_sigma_to_t_against_slow_reference_and_round_trip(betas):
    ac = alphas_cumprod_from_betas(betas)
    levels = sigmas_from_alphas_cumprod(ac)
    g = torch.Generator().manual_seed(0)
    sigma = torch.exp(torch.empty(200, dtype=torch.float64).uniform_(-7, 6, generator=g))  # beyond both ends
    t = sigma_to_t(sigma, ac)
    expected = torch.tensor([_slow_sigma_to_t(float(v), levels.tolist()) for v in sigma], dtype=torch.float64)
    assert torch.allclose(t, expected, atol=1e-9)
    inside = (sigma > levels[0]) & (sigma < levels[-1])
    assert torch.allclose(t_to_sigma(t[inside], ac), sigma[inside], rtol=1e-9)
    grid_t = torch.linspace(0, len(ac) - 1, 301, dtype=torch.float64)
    assert torch.allclose(sigma_to_t(t_to_sigma(grid_t, ac), ac), grid_t, atol=1e-8)
    ints = torch.arange(len(ac))
    assert torch.allclose(sigma_to_t(levels, ac), ints.double(), atol=1e-9)  # levels map to their index
    # integer t -> the level, in the default float dtype for integer input
    assert torch.allclose(t_to_sigma(ints, ac), levels.float())


def test_sigma_to_t_shapes_dtypes_and_precomputed_log_sigmas():
    ac = alphas_cumprod_from_betas(betas_linear(100))
    sigma = torch.tensor([[0.05, 1.0], [3.0, 0.0]], dtype=torch.float32)
    t = sigma_to_t(sigma, ac)
    assert t.shape == (2, 2) and t.dtype == torch.float32 and t[1, 1] == 0  # sigma = 0 clamps to t = 0
    log_sigmas = log_sigmas_from_alphas_cumprod(ac)
    assert torch.equal(sigma_to_t(sigma, log_sigmas=log_sigmas), t)
    assert torch.equal(t_to_sigma(t, log_sigmas=log_sigmas), t_to_sigma(t, ac))
    assert sigma_to_t(torch.tensor(1.0, dtype=torch.float64), ac).ndim == 0
    with pytest.raises(ValueError, match="exactly one"):
        sigma_to_t(sigma, ac, log_sigmas=log_sigmas)


def test_timesteps_and_sigmas_vp():
    ac = alphas_cumprod_from_betas(betas_linear(1000))
    assert timesteps_vp(4, 1000, spacing="leading").tolist() == [750, 500, 250, 0]
    assert timesteps_vp(4, 1000, spacing="leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    assert timesteps_vp(4, 1000, spacing="trailing").tolist() == [999, 749, 499, 249]
    assert timesteps_vp(4, 1000, spacing="linspace").tolist() == [999, 666, 333, 0]
    s = sigmas_vp(4, ac, spacing="trailing", dtype=torch.float64)
    assert s.shape == (5,) and s[-1] == 0
    assert torch.allclose(s[:-1], sigmas_from_alphas_cumprod(ac)[[999, 749, 499, 249]])
    assert torch.equal(
        sigmas_at_timesteps(torch.tensor([999.0, 249.0]), ac), sigmas_at_timesteps([999, 249], ac)
    )
    with pytest.raises(ValueError, match="spacing"):
        timesteps_vp(4, 1000, spacing="cosine")
    with pytest.raises(ValueError, match="n must be"):
        timesteps_vp(0, 1000)
    with pytest.raises(ValueError, match="n must be"):
        timesteps_vp(1001, 1000)
    with pytest.raises(ValueError, match="steps_offset"):
        timesteps_vp(1000, 1000, steps_offset=1)
    with pytest.raises(ValueError, match="decreasing"):
        sigmas_at_timesteps([10, 20], ac)
    with pytest.raises(ValueError, match="lie in"):
        sigmas_at_timesteps([1000, 20], ac)
    with pytest.raises(ValueError, match="integers"):
        sigmas_at_timesteps(torch.tensor([10.5, 2.0]), ac)
