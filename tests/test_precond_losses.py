"""Preconditioning, VP adapters and losses against hand-written formulas and Gaussian known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polyscale.diffusion import (
    ClampedDenoiser,
    DiscreteEpsDenoiser,
    DiscreteVDenoiser,
    EDMLoss,
    EDMPrecond,
    EpsLoss,
    alphas_cumprod_from_betas,
    betas_linear,
    block_mean,
    eps_from_denoiser,
    sample_dpmpp_2m,
    sigmas_from_alphas_cumprod,
    sigmas_karras,
    to_d,
)

SHAPES = {"graph": (7, 3), 1: (5, 2, 6), 2: (4, 2, 3, 5), 3: (3, 1, 2, 3, 4)}  # (N, F) or (B, C, *spatial)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Test-side broadcasting written out by hand, (B,) -> (B, 1, ..., 1)."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


class OptimalF(nn.Module):
    """The raw network that makes EDMPrecond the optimal denoiser for N(mu, s^2) data, written from Table 1:
    ``F = (D* - c_skip x) / c_out`` with ``x = x_in / c_in`` and ``sigma = exp(4 c_noise)``."""

    def __init__(self, mu: torch.Tensor, s: float, sigma_data: float) -> None:
        super().__init__()
        self.mu, self.s, self.sd = mu, s, sigma_data
        self.seen_c_noise: list[torch.Tensor] = []

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.seen_c_noise.append(c_noise)
        sigma = _bcast((4 * c_noise).exp(), x_in)
        x = x_in * (sigma**2 + self.sd**2).sqrt()
        optimal = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        c_skip = self.sd**2 / (sigma**2 + self.sd**2)
        c_out = sigma * self.sd / (sigma**2 + self.sd**2).sqrt()
        return (optimal - c_skip * x) / c_out


@pytest.mark.parametrize("dims", list(SHAPES))
def test_edm_precond_with_optimal_network_is_optimal(dims):
    shape = SHAPES[dims]
    mu = torch.randn(1, *shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s, sd = 0.8, 0.5  # data std differs from sigma_data, so F is not trivially zero
    net = OptimalF(mu, s, sd)
    den = EDMPrecond(net, sigma_data=sd)
    assert den.net is net and den.sigma_data == sd
    x = torch.randn(shape, dtype=torch.float64)
    sigma = torch.logspace(-2, 1.9, shape[0], dtype=torch.float64)
    expected = mu + s**2 / (s**2 + _bcast(sigma, x) ** 2) * (x - mu)
    assert torch.allclose(den(x, sigma), expected, atol=1e-10)
    assert torch.allclose(net.seen_c_noise[-1], sigma.log() / 4)  # c_noise = log(sigma) / 4, shape (B,)
    assert torch.allclose(den(x, 2.0), mu + s**2 / (s**2 + 4.0) * (x - mu), atol=1e-10)  # scalar sigma


def test_edm_precond_input_scaling_and_clean_end():
    """c_in gives the network unit-variance input for data of std sigma_data; at sigma = 0, D(x) = x."""
    seen = []

    def net(x_in, c_noise, *, label):
        seen.append((x_in, label))
        return torch.full_like(x_in, 5.0)

    den = EDMPrecond(net, sigma_data=0.5)
    g = torch.Generator().manual_seed(1)
    x0 = 0.5 * torch.randn(4000, 8, generator=g, dtype=torch.float64)
    sigma = torch.full((4000,), 3.0, dtype=torch.float64)
    den(x0 + 3.0 * torch.randn(x0.shape, generator=g, dtype=torch.float64), sigma, label="a")
    assert seen[-1][0].std().item() == pytest.approx(1.0, abs=0.02) and seen[-1][1] == "a"
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(den(x, torch.zeros(3, dtype=torch.float64), label="b"), x)


def test_clamped_denoiser_projects_onto_the_data_range_and_keeps_a_sampler_bounded():
    x = torch.tensor([[-3.0], [0.25], [2.0]])

    def shrink(x, sigma, **cond):
        return 0.5 * x + cond.get("shift", 0.0)

    clamped = ClampedDenoiser(shrink)
    assert torch.equal(clamped(x, 1.0), torch.tensor([[-1.0], [0.125], [1.0]]))  # in range: untouched
    assert torch.equal(clamped(x, 1.0, shift=0.5), torch.tensor([[-1.0], [0.625], [1.0]]))  # cond passes on
    assert torch.equal(
        ClampedDenoiser(shrink, low=0.0, high=2.0)(x, 1.0), torch.tensor([[0.0], [0.125], [1.0]])
    )

    def exploding(x, sigma):  # an estimate far outside anything trained, as on out-of-distribution inputs
        return 1e9 * torch.ones_like(x)

    sigmas = sigmas_karras(16, 0.002, 80.0)
    start = torch.randn(5, 1, generator=torch.Generator().manual_seed(0)) * 80
    wild = sample_dpmpp_2m(exploding, start, sigmas, disable=True)
    tame = sample_dpmpp_2m(ClampedDenoiser(exploding), start, sigmas, disable=True)
    assert wild.abs().min() > 1e8 and torch.allclose(tame, torch.ones_like(tame), atol=1e-3)
    with pytest.raises(ValueError, match="need low < high, got low=1.0, high=1.0"):
        ClampedDenoiser(shrink, low=1.0, high=1.0)


def test_vp_adapters_recover_x0_from_exact_predictions():
    ac = alphas_cumprod_from_betas(betas_linear(1000))
    x0 = torch.randn(3, 2, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    idx = torch.tensor([50, 400, 900])
    sigma = sigmas_from_alphas_cumprod(ac)[idx]
    x = x0 + _bcast(sigma, x0) * eps  # sigma space
    abar = _bcast(ac[idx], x0)
    seen = {}

    def eps_net(x_vp, t):
        seen.update(x_vp=x_vp, t=t)
        return eps

    def v_net(x_vp, t):
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    eps_den = DiscreteEpsDenoiser(eps_net, ac)
    assert torch.allclose(eps_den(x, sigma), x0, atol=1e-10)
    assert torch.allclose(seen["x_vp"], abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-10)
    assert torch.allclose(seen["t"], idx.double(), atol=1e-6)  # trained levels map to their integer t
    assert torch.allclose(DiscreteVDenoiser(v_net, ac)(x, sigma), x0, atol=1e-10)
    assert eps_den.sigma_min == pytest.approx(float(sigmas_from_alphas_cumprod(ac)[0]))
    assert eps_den.sigma_max == pytest.approx(float(sigmas_from_alphas_cumprod(ac)[-1]))
    assert torch.allclose(eps_from_denoiser(eps_den, x, sigma), eps, atol=1e-10)
    assert torch.allclose(to_d(x, sigma, x0), eps, atol=1e-10)


@pytest.mark.parametrize("dims", list(SHAPES))
def test_edm_loss_matches_hand_formula(dims):
    x0 = torch.randn(SHAPES[dims], generator=torch.Generator().manual_seed(2))
    weight = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(3))

    def den(x, sigma, *, scale):
        return scale * weight * x / (1 + _bcast(sigma, x))

    loss = EDMLoss(P_mean=-1.0, P_std=1.5, sigma_data=0.6)(
        den, x0, generator=torch.Generator().manual_seed(4), scale=0.7
    )
    g = torch.Generator().manual_seed(4)
    sigma = (torch.randn(x0.shape[0], generator=g) * 1.5 - 1.0).exp()
    n = torch.randn(x0.shape, generator=g)
    lam = (sigma**2 + 0.36) / (sigma * 0.6) ** 2
    err = (den(x0 + _bcast(sigma, x0) * n, sigma, scale=0.7) - x0) ** 2
    expected = lam * err.reshape(x0.shape[0], -1).mean(dim=1)
    assert loss.shape == (x0.shape[0],) and torch.allclose(loss, expected, rtol=1e-5)


def test_block_mean_and_the_low_frequency_loss_term():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    means = block_mean(x, 2)
    assert means.shape == (2, 1, 2, 2) and means[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert torch.allclose(block_mean(x, 4)[:, 0, 0, 0], x.flatten(1).mean(1))
    with pytest.raises(ValueError, match="multiple of 3"):
        block_mean(x, 3)

    # a denoiser off by a constant c everywhere: the plain term sees c^2, the block means c^2 too, so the
    # loss grows by the factor (1 + w); an error that cancels within each block adds nothing
    x0 = torch.randn(3, 1, 8, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    checker = torch.ones(8, 8, 8, dtype=torch.float64)
    checker[::2] = -1

    def run(offset, **kw):
        return EDMLoss(sigma_data=1.0, **kw)(
            lambda x, s: x0 + offset, x0, generator=torch.Generator().manual_seed(1)
        )

    plain, boosted = run(0.3), run(0.3, lowpass_factor=4, lowpass_weight=10.0)
    assert torch.allclose(boosted, 11 * plain)
    assert torch.allclose(run(0.3 * checker, lowpass_factor=4, lowpass_weight=10.0), run(0.3 * checker))


def test_edm_loss_of_optimal_denoiser_is_one():
    """For data ~ N(0, sigma_data^2) the optimal denoiser's error variance is sigma^2 sd^2 / (sigma^2 + sd^2),
    which lambda(sigma) turns into exactly 1 at every sigma: the mean loss must be 1 within sampling error."""
    sd, n, f = 0.5, 2000, 16
    x0 = sd * torch.randn(n, f, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def optimal(x, sigma):
        return sd**2 / (sd**2 + _bcast(sigma, x) ** 2) * x

    loss = EDMLoss(sigma_data=sd)(optimal, x0, generator=torch.Generator().manual_seed(6))
    se = math.sqrt(2 / f) / math.sqrt(n)  # each per-sample loss is a chi^2_f / f variable: variance 2 / f
    assert loss.mean().item() == pytest.approx(1.0, abs=4 * se)
    assert loss.var().item() == pytest.approx(2 / f, rel=0.15)


@pytest.mark.parametrize("dims", list(SHAPES))
def test_eps_loss_matches_hand_formula(dims):
    ac = alphas_cumprod_from_betas(betas_linear(100))
    x0 = torch.randn(SHAPES[dims], generator=torch.Generator().manual_seed(7))
    seen_t = []

    def eps_net(x_t, t, *, shift):
        seen_t.append(t)
        return torch.tanh(x_t) * (1 + t.reshape(-1, *([1] * (x_t.ndim - 1))) / 100) + shift

    loss = EpsLoss(ac)(eps_net, x0, generator=torch.Generator().manual_seed(8), shift=0.1)
    g = torch.Generator().manual_seed(8)
    t = torch.randint(0, 100, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    a = _bcast(ac[t].float(), x0)
    err = (eps_net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t.float(), shift=0.1) - eps) ** 2
    expected = err.reshape(x0.shape[0], -1).mean(dim=1)
    assert loss.shape == (x0.shape[0],) and torch.allclose(loss, expected, atol=1e-6)
    assert seen_t[0].dtype == x0.dtype and torch.equal(seen_t[0], t.float())


def test_losses_backpropagate():
    net = nn.Linear(3, 3)
    x0 = torch.randn(6, 3)
    EDMLoss()(EDMPrecond(lambda x, c: net(x)), x0).mean().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    ac = alphas_cumprod_from_betas(betas_linear(50))
    net.zero_grad()
    EpsLoss(ac)(lambda x, t: net(x), x0).sum().backward()
    assert net.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: EDMLoss(P_std=0), "P_std"),
        (lambda: EDMLoss(sigma_data=-1.0), "sigma_data"),
        (lambda: EDMLoss(lowpass_factor=1, lowpass_weight=1.0), "lowpass_factor"),
        (lambda: EDMLoss(lowpass_factor=2, lowpass_weight=-1.0), "lowpass_weight"),
        (lambda: EDMPrecond(nn.Identity(), sigma_data=0), "sigma_data"),
        (lambda: EDMPrecond(lambda x, c: x)(torch.randn(3, 2), torch.ones(2)), "sigma must be"),
        (lambda: EpsLoss(torch.tensor([0.5, 0.9])), "alphas_cumprod"),
        (lambda: DiscreteEpsDenoiser(nn.Identity(), torch.ones(3, 3) * 0.5), "alphas_cumprod"),
        (lambda: EDMLoss()(lambda x, s: x, torch.ones(3, 2, dtype=torch.long)), "floating"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
