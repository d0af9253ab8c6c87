"""Known answers: for data ~ N(mu, diag(s^2)) the optimal denoiser is closed form,
``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)``, and so is the probability-flow ODE:
``x(sigma) - mu = sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)) (x(sigma_0) - mu)``.

1. Every sampler driven by D must return samples whose per-element mean and std are mu and s (1D, 2D, 3D
   grids, spatially varying mu and s). The initial x is drawn from the exact marginal at sigma_0,
   N(mu, s^2 + sigma_0^2), so that the only errors are the sampler's. Tolerance: 4 standard errors
   (s / sqrt(N) for the mean, s / sqrt(2N) for the std) plus a per-sampler allowance ``allow * s`` for
   discretisation bias, set from the measured bias at these step counts with margin. For PC with its
   corrector it adds the Langevin corrector's own stationary bias, ``1 / sqrt(1 - snr^2 H / s_i^2) - 1``
   with ``H`` the harmonic mean of ``s^2`` (finite-step Langevin inflates the variance; its step is
   ``2 snr^2 |z|^2 / |g|^2 ~ 2 snr^2 H``).
2. Deterministic solvers converge to the exact ODE solution at their order (Euler 1, Heun 2, DPM++(2M) 2,
   RK4 4), and the adaptive solver's error follows its tolerance.
3. Contract: callback keys and values, reproducibility with a seeded generator, no global RNG use, NFE
   counts.
"""

from __future__ import annotations

import pytest
import torch

from polyscale.diffusion import SAMPLERS, get_sampler, sigmas_karras
from polyscale.diffusion.utils import append_dims

SPATIAL = {1: (2, 4), 2: (1, 2, 4), 3: (1, 2, 2, 2)}  # (C, *spatial): 8 elements per sample
N = 4000  # 4000 x 8 = 32000 elements, under torch's parallel grain: elementwise ops stay single-threaded
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
KEYS = {"i", "sigma", "sigma_next", "x", "denoised"}


class GaussianDenoiser:
    """The optimal denoiser for N(mu, diag(s^2)); counts its calls and checks the sigma it receives."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor) -> None:
        self.mu, self.s2, self.calls = mu, s**2, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
        self.calls += 1
        sigma2 = append_dims(sigma, x.ndim) ** 2
        return self.mu + self.s2 / (self.s2 + sigma2) * (x - self.mu)


def _problem(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(dims)
    shape = (1, *SPATIAL[dims])
    mu = torch.randn(shape, generator=g, dtype=torch.float64)
    s = 0.3 + torch.rand(shape, generator=g, dtype=torch.float64)  # std in [0.3, 1.3]
    return mu, s


def _start(mu: torch.Tensor, s: torch.Tensor, n: int, sigma0: float, g: torch.Generator) -> torch.Tensor:
    """Draw from the exact noisy marginal at sigma0, N(mu, s^2 + sigma0^2)."""
    return mu + torch.randn((n, *mu.shape[1:]), generator=g, dtype=torch.float64) * (s**2 + sigma0**2).sqrt()


def _pc_langevin_bias(s: torch.Tensor, snr: float = 0.16) -> torch.Tensor:
    harmonic = 1 / (1 / s**2).mean()
    return 1 / (1 - snr**2 * harmonic / s**2).sqrt() - 1


# (name, kwargs, steps, allowance): first-order and stochastic samplers get more steps for a similar bias
CASES = [
    ("ddpm", {}, 400, 0.03),
    ("ddim", {}, 400, 0.02),
    ("ddim", {"eta": 1.0}, 400, 0.03),
    ("euler", {}, 400, 0.02),
    ("heun", {}, 80, 0.015),
    ("heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, 80, 0.02),  # Karras Alg. 2, stochastic
    ("dpmpp2m", {}, 80, 0.015),
    ("pc", {}, 400, 0.015),
    ("pc", {"corrector_steps": 0}, 400, 0.03),  # the predictor alone (the corrector would hide its errors)
    ("ode", {}, 30, 0.01),
    ("ode_adaptive", {}, 10, 0.01),
]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("name, kwargs, steps, allow", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_sampler_recovers_gaussian(dims, name, kwargs, steps, allow):
    mu, s = _problem(dims)
    sigmas = sigmas_karras(steps, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    g = torch.Generator().manual_seed(100 + dims)
    out = get_sampler(name)(
        GaussianDenoiser(mu, s), _start(mu, s, N, SIGMA_MAX, g), sigmas, generator=g, disable=True, **kwargs
    )
    mean, std = out.mean(0, keepdim=True), out.std(0, keepdim=True)
    bias = allow + (_pc_langevin_bias(s) if name == "pc" and kwargs.get("corrector_steps", 1) else 0.0)
    assert ((mean - mu).abs() <= 4 * s / N**0.5 + bias * s).all(), ((mean - mu) / s).abs().max()
    assert ((std - s).abs() <= 4 * s / (2 * N) ** 0.5 + bias * s).all(), ((std - s) / s).abs().max()


def test_wrong_model_is_detected():
    """The tolerance can fail: samples of a denoiser for std 1.15 s do not pass as std s."""
    mu, s = _problem(2)
    g = torch.Generator().manual_seed(0)
    sigmas = sigmas_karras(80, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    out = SAMPLERS["heun"](
        GaussianDenoiser(mu, 1.15 * s), _start(mu, 1.15 * s, N, SIGMA_MAX, g), sigmas, disable=True
    )
    assert not ((out.std(0, keepdim=True) - s).abs() <= 4 * s / (2 * N) ** 0.5 + 0.015 * s).all()


def _ode_error(name: str, n: int, **kwargs) -> float:
    """Max error against the exact flow from sigma_max to sigma_min followed by the exact final ``D``."""
    mu, s = _problem(3)
    x = _start(mu, s, 64, SIGMA_MAX, torch.Generator().manual_seed(3))
    sigmas = sigmas_karras(n, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    s2, smin = s**2, sigmas[-2]
    exact = mu + s2 / (s2 + smin**2).sqrt() / (s2 + SIGMA_MAX**2).sqrt() * (x - mu)
    return float(
        (SAMPLERS[name](GaussianDenoiser(mu, s), x, sigmas, disable=True, **kwargs) - exact).abs().max()
    )


@pytest.mark.parametrize("name, order", [("euler", 1), ("heun", 2), ("dpmpp2m", 2), ("ode", 4)])
def test_ode_solvers_converge_at_their_order(name, order):
    coarse, fine = _ode_error(name, 20), _ode_error(name, 40)
    assert 0.8 * 2**order <= coarse / fine <= 1.5 * 2**order, coarse / fine


def test_ddim_eta0_is_euler():
    assert _ode_error("ddim", 20) == pytest.approx(_ode_error("euler", 20), rel=1e-9)


def test_heun_churn_adds_noise_only_inside_its_range():
    """Churn 0, or a range no level falls in, is Alg. 1 exactly; churn inside the range moves the path,
    reproducibly for a seeded generator."""
    assert _ode_error("heun", 20, s_churn=0.0) == _ode_error("heun", 20)
    assert _ode_error("heun", 20, s_churn=10.0, s_tmin=100.0, s_tmax=200.0) == _ode_error("heun", 20)
    mu, s = _problem(1)
    x = _start(mu, s, 64, SIGMA_MAX, torch.Generator().manual_seed(0))
    sigmas = sigmas_karras(20, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return SAMPLERS["heun"](
            GaussianDenoiser(mu, s), x, sigmas, s_churn=10.0, s_tmax=1.0, generator=g, disable=True
        )

    plain = SAMPLERS["heun"](GaussianDenoiser(mu, s), x, sigmas, disable=True)
    assert (
        torch.equal(run(1), run(1))
        and not torch.allclose(run(1), run(2))
        and not torch.allclose(run(1), plain)
    )
    with pytest.raises(ValueError, match="s_churn >= 0"):
        SAMPLERS["heun"](GaussianDenoiser(mu, s), x, sigmas, s_churn=-1.0, disable=True)


def test_ode_adaptive_error_follows_tolerance():
    nfe = {}
    errors = {}
    for tol in (1e-3, 1e-5):
        infos = []
        errors[tol] = _ode_error("ode_adaptive", 10, rtol=tol, atol=tol, callback=infos.append)
        nfe[tol] = infos[-1]["nfe"]
        assert infos[-1]["sigma_next"] == 0 and infos[-1]["sigma"] == pytest.approx(SIGMA_MIN)
    # the global error stays within ~10-30x the local tolerance
    assert errors[1e-3] < 3e-2 and errors[1e-5] < 3e-4
    assert errors[1e-5] < errors[1e-3] / 20 and nfe[1e-5] > nfe[1e-3]
    with pytest.raises(RuntimeError, match="max_steps"):
        _ode_error("ode_adaptive", 10, rtol=1e-8, atol=1e-8, max_steps=5)


@pytest.mark.parametrize(
    "name, nfe",
    [
        ("euler", lambda n: n),
        ("ddpm", lambda n: n),
        ("ddim", lambda n: n),
        ("heun", lambda n: 2 * n - 1),
        ("dpmpp2m", lambda n: n),
        ("ode", lambda n: 4 * n - 3),
        ("pc", lambda n: 2 * n - 1),
    ],
)
def test_nfe(name, nfe):
    mu, s = _problem(1)
    den = GaussianDenoiser(mu, s)
    SAMPLERS[name](
        den,
        torch.randn(4, *mu.shape[1:], dtype=torch.float64) * SIGMA_MAX,
        sigmas_karras(10, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64),
        disable=True,
    )
    assert den.calls == nfe(10)


def test_ode_adaptive_reports_nfe():
    mu, s = _problem(2)
    den, infos = GaussianDenoiser(mu, s), []
    SAMPLERS["ode_adaptive"](
        den,
        torch.randn(4, *mu.shape[1:], dtype=torch.float64) * SIGMA_MAX,
        sigmas_karras(10, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64),
        callback=infos.append,
    )
    assert infos[-1]["nfe"] == den.calls and [d["i"] for d in infos] == list(range(len(infos)))
    steps_nfe = [d["nfe"] for d in infos[:-1]]
    assert steps_nfe == sorted(set(steps_nfe)) and infos[-1]["nfe"] == steps_nfe[-1]  # final D is free (FSAL)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_seed_and_statelessness(name):
    mu, s = _problem(2)
    sigmas = sigmas_karras(6, SIGMA_MIN, SIGMA_MAX, dtype=torch.float64)
    seen = []

    def run(seed: int, callback=None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((8, *mu.shape[1:]), generator=g, dtype=torch.float64) * sigmas[0]
        return SAMPLERS[name](
            GaussianDenoiser(mu, s), x, sigmas, generator=g, callback=callback, disable=True
        )

    rng_state = torch.get_rng_state()
    a, b, c = run(7, seen.append), run(7), run(8)
    assert torch.equal(torch.get_rng_state(), rng_state)  # randomness only through generator=
    assert torch.equal(a, b)  # same seed, same result; nothing carried over between calls
    assert not torch.allclose(a, c)
    assert all(KEYS <= set(d) for d in seen) and seen[-1]["sigma_next"] == 0
    assert seen[0]["i"] == 0 and float(seen[0]["sigma"]) == pytest.approx(SIGMA_MAX)
    assert seen[0]["x"].shape == a.shape and seen[0]["denoised"].shape == a.shape
    if name != "ode_adaptive":  # fixed grids: one call per step, at the grid's levels
        assert [d["i"] for d in seen] == list(range(6))
        assert torch.equal(torch.stack([d["sigma"] for d in seen]), sigmas[:-1])
        assert torch.equal(torch.stack([d["sigma_next"] for d in seen]), sigmas[1:])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cond_reaches_denoiser_float32_and_rank1(name):
    """Conditioning kwargs are forwarded; float32 data and (B,) "one number per sample" data work."""
    seen = set()

    def den(x, sigma, *, label):
        seen.add(label)
        return x / (1 + append_dims(sigma, x.ndim) ** 2)  # optimal for N(0, 1)

    for shape in [(5, 3), (5,)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 10.0
        out = SAMPLERS[name](
            den,
            x,
            sigmas_karras(8, 0.01, 10.0),
            cond={"label": 3},
            disable=True,
            generator=torch.Generator().manual_seed(1),
        )
        assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen == {3}


def test_sampler_input_errors():
    den = GaussianDenoiser(torch.zeros(1, 4), torch.ones(1, 4))
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="end in 0"):
        SAMPLERS["euler"](den, x, torch.tensor([2.0, 1.0]), disable=True)
    with pytest.raises(ValueError, match="strictly decreasing"):
        SAMPLERS["heun"](den, x, torch.tensor([1.0, 2.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="1-D"):
        SAMPLERS["heun"](den, x, torch.ones(2, 2), disable=True)
    with pytest.raises(ValueError, match="floating"):
        SAMPLERS["euler"](den, torch.ones(2, 4, dtype=torch.long), sigmas_karras(3, 0.1, 1.0), disable=True)
    with pytest.raises(ValueError, match="eta"):
        SAMPLERS["ddim"](den, x, sigmas_karras(3, 0.1, 1.0), eta=1.5, disable=True)
    with pytest.raises(ValueError, match="snr"):
        SAMPLERS["pc"](den, x, sigmas_karras(3, 0.1, 1.0), snr=0.0, disable=True)
    with pytest.raises(ValueError, match="rtol"):
        SAMPLERS["ode_adaptive"](den, x, sigmas_karras(3, 0.1, 1.0), rtol=0.0, disable=True)
    with pytest.raises(ValueError, match="ode_adaptive"):  # the message lists the allowed names
        get_sampler("nope")
    assert set(SAMPLERS) == {"ddpm", "ddim", "euler", "heun", "dpmpp2m", "pc", "ode", "ode_adaptive"}
