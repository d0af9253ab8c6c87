"""Entropic OT: marginals, known transport maps, backends against the dense oracle, POT as a test-only oracle,
and the bridge callback in every sampler."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from polyscale.diffusion import sigmas_karras
from polyscale.diffusion.samplers import SAMPLERS
from polyscale.ot import (
    ConvergenceWarning,
    Dense,
    Grid,
    KernelConfig,
    Nystrom,
    RandomFeatures,
    SinkhornBridge,
    make_kernel,
    sinkhorn,
    sinkhorn_divergence,
)

D64 = torch.float64


def clouds(n=60, m=80, d=2, seed=0, shift=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=D64), torch.rand(m, d, generator=g, dtype=D64) + shift


def test_marginals_hold_for_weighted_batched_problems():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 40, 2, generator=g, dtype=D64), torch.rand(3, 50, 2, generator=g, dtype=D64)
    a = torch.rand(3, 40, generator=g, dtype=D64)
    a /= a.sum(-1, keepdim=True)
    b = torch.rand(3, 50, generator=g, dtype=D64)
    b /= b.sum(-1, keepdim=True)
    r = sinkhorn(Dense(x, y, 0.05), a, b, tol=1e-9)
    assert r.converged and r.f.shape == (3, 40) and r.g.shape == (3, 50)
    plan = r.plan()
    assert torch.allclose(plan.sum(-1), a, atol=1e-9) and torch.allclose(plan.sum(-2), b, atol=1e-12)
    assert torch.allclose(r.row_marginal(), a, atol=1e-9) and torch.allclose(r.col_marginal(), b, atol=1e-12)
    # each problem of the batch equals the same problem solved alone
    alone = sinkhorn(Dense(x[1], y[1], 0.05), a[1], b[1], tol=1e-9)
    assert torch.allclose(alone.plan(), plan[1], atol=1e-10)


def test_dense_absorbed_applications_equal_plain_log_sum_exp():
    """The absorbed matrix-vector path (small moves of h), re-absorption (large moves) and zero weights."""
    x, y = clouds()
    op = Dense(x, y, 0.01)
    log_k = -(torch.cdist(x, y) ** 2) / 0.01  # (n, m)
    g = torch.Generator().manual_seed(8)
    h = torch.randn(1, 80, generator=g, dtype=D64) * 3
    h[0, :7] = -float("inf")
    for step in (0.0, 0.5, 4.0, 30.0, 0.1):  # the third and fourth exceed ABSORB in places
        h = h + step * torch.randn(1, 80, generator=g, dtype=D64)
        assert torch.allclose(op.log_apply(h), torch.logsumexp(h[:, None, :] + log_k, -1), atol=1e-10)
        hx = torch.randn(1, 60, generator=g, dtype=D64) * step
        assert torch.allclose(op.log_apply_t(hx), torch.logsumexp(hx[:, :, None] + log_k, -2), atol=1e-10)


def test_float32_problems_match_float64():
    x, y = clouds()
    r64 = sinkhorn(Dense(x, y, 0.02), tol=1e-6)
    r32 = sinkhorn(Dense(x.float(), y.float(), 0.02), tol=1e-5)
    assert r32.f.dtype == torch.float32 and r32.converged
    assert torch.allclose(r32.cost.double(), r64.cost, rtol=1e-4)


def test_cost_and_map_match_the_dense_plan():
    x, y = clouds()
    r = sinkhorn(Dense(x, y, 0.05), tol=1e-10)
    plan = r.plan()
    c = (torch.cdist(x, y) ** 2 * plan).sum()
    assert torch.allclose(r.cost, c, rtol=1e-9)
    assert torch.allclose(r.barycentric(), plan @ y / plan.sum(-1, keepdim=True), atol=1e-12)


def lattice(k=6, spacing=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ij = torch.stack(torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"), -1).reshape(-1, 2)
    return ij.to(D64) * spacing + 0.02 * torch.rand(k * k, 2, generator=g, dtype=D64)


def test_identical_sets_give_the_identity_map_at_small_epsilon():
    x = lattice()
    r = sinkhorn(Dense(x, x, 2e-3), tol=1e-6)
    assert r.converged
    assert (r.barycentric() - x).abs().max() < 1e-5


def test_translated_set_gives_the_translation():
    """For the squared cost, the plan between a set and its translate by t is the plan of the set with itself
    (the cross term is separable), at every epsilon: the map is the self-map plus t, the cost grows by |t|^2;
    at small epsilon the map is the translation itself."""
    x, _ = clouds(n=70)
    t = torch.tensor([0.7, -0.4], dtype=D64)
    for eps in (0.1, 0.01):
        self_map = sinkhorn(Dense(x, x, eps), tol=1e-9, max_iter=10000)
        moved = sinkhorn(Dense(x, x + t, eps), tol=1e-9, max_iter=10000)
        assert torch.allclose(moved.barycentric(), self_map.barycentric() + t, atol=1e-7)
        assert torch.allclose(moved.cost, self_map.cost + t.pow(2).sum(), atol=1e-7)
    grid = lattice()
    r = sinkhorn(Dense(grid, grid + t, 2e-3), tol=1e-8)
    assert (r.barycentric() - (grid + t)).abs().max() < 1e-6


@pytest.mark.parametrize("shape", [(30,), (12, 9), (5, 6, 4)])
@pytest.mark.parametrize("backend", ["log", "fft", "matmul"])
def test_grid_equals_dense_on_grid_points(shape, backend):
    n = math.prod(shape)
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, n, generator=g, dtype=D64)
    b = torch.rand(2, n, generator=g, dtype=D64)
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    b[:, : n // 3] = 0  # empty cells on one side
    b /= b.sum(-1, keepdim=True)
    eps = 0.2
    grid = Grid(shape, eps, backend=backend)
    assert grid.backend == backend
    pts = grid.source_points()[0]
    rg, rd = sinkhorn(grid, a, b, tol=1e-10), sinkhorn(Dense(pts, pts, eps), a, b, tol=1e-10)
    assert rg.converged and rd.converged
    assert torch.allclose(rg.plan(), rd.plan(), atol=1e-9)
    assert torch.allclose(rg.cost, rd.cost, rtol=1e-7)
    assert torch.allclose(rg.barycentric(), rd.barycentric(), atol=1e-7)


def test_grid_fft_guard_and_auto_switch():
    with pytest.raises(ValueError, match="too small for the FFT path"):
        Grid((64, 64), 1e-3, backend="fft")
    with pytest.raises(ValueError, match="too small for the matmul path"):
        Grid((64, 64), 1e-3, backend="matmul")
    assert Grid((64, 64), 1e-3).backend == "log"
    assert Grid((64, 64), 2e-3).backend == "matmul"
    assert Grid((64, 64), 0.5).backend == "fft"
    # the matmul path at the edge of its guard equals the exact log path
    edge = Grid((40, 40), 1 / 590)
    h = torch.randn(2, 1600, dtype=D64, generator=torch.Generator().manual_seed(4)) * 50
    exact = Grid((40, 40), 1 / 590, backend="log").log_apply(h)
    assert edge.backend == "matmul" and torch.allclose(edge.log_apply(h), exact, rtol=1e-10, atol=1e-9)
    # the log path stays exact where the FFT path would not: a small epsilon against the dense oracle
    grid = Grid((16, 16), 2e-3)
    pts = grid.source_points()[0]
    h = torch.randn(1, 256, dtype=D64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(grid.log_apply(h), Dense(pts, pts, 2e-3).log_apply(h), atol=1e-10)


def plan_error(kernel, reference_plan):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r = sinkhorn(kernel, tol=1e-8, max_iter=2000)
    return float((r.plan() - reference_plan).abs().sum())


def test_random_features_approach_dense_as_rank_grows():
    x, y = clouds()
    exact = sinkhorn(Dense(x, y, 0.1), tol=1e-10).plan()
    errors = [
        np.mean(
            [
                plan_error(
                    RandomFeatures(x, y, 0.1, rank=r, generator=torch.Generator().manual_seed(s)), exact
                )
                for s in range(3)
            ]
        )
        for r in (16, 256, 4096)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03


def test_nystrom_approaches_dense_as_rank_grows_and_reports_its_failure_mode():
    x, y = clouds()
    exact = sinkhorn(Dense(x, y, 1.0), tol=1e-10).plan()
    errors = [
        plan_error(Nystrom(x, y, 1.0, rank=r, generator=torch.Generator().manual_seed(0)), exact)
        for r in (2, 8, 32)
    ]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    # small epsilon: negative approximations; sinkhorn stops, says so, and does not claim convergence
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        r = sinkhorn(Nystrom(x, y, 0.01, rank=40, generator=torch.Generator().manual_seed(0)))
    assert not r.converged and "non-finite" in r.stop_reason


def test_agrees_with_pot_sinkhorn_log():
    ot = pytest.importorskip("ot")
    x, y = clouds(n=50, m=70)
    g = torch.Generator().manual_seed(4)
    a = torch.rand(50, generator=g, dtype=D64)
    a /= a.sum()
    b = torch.full((70,), 1 / 70, dtype=D64)
    for eps in (0.5, 0.05, 0.01):
        ours = sinkhorn(Dense(x, y, eps), a, b, tol=1e-11, max_iter=10000).plan().numpy()
        m = (torch.cdist(x, y) ** 2).numpy()
        pot = ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), m, eps, stopThr=1e-13, numItermax=100000)
        assert np.abs(ours - pot).max() < 1e-9 * max(1.0, pot.max() * 1e3)


def test_non_convergence_is_reported():
    x, y = clouds()
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        r = sinkhorn(Dense(x, y, 1e-3), tol=1e-12, max_iter=3, scaling=None)
    assert not r.converged and r.iterations == 3 and r.stop_reason == "max_iter"


def test_warm_start_and_epsilon_scaling_save_iterations():
    x, y = clouds(n=100, m=100)
    cold = sinkhorn(Dense(x, y, 2e-3), tol=1e-6, max_iter=10000, scaling=None)
    scaled = sinkhorn(Dense(x, y, 2e-3), tol=1e-6, max_iter=10000, scaling=0.5)
    warm = sinkhorn(Dense(x, y, 2e-3), tol=1e-6, init=scaled)
    assert cold.converged and scaled.converged and warm.converged
    assert scaled.iterations < cold.iterations and warm.iterations <= 2
    assert torch.allclose(cold.cost, scaled.cost, rtol=1e-4)


def test_sinkhorn_divergence_is_zero_on_equal_measures_and_positive_otherwise():
    x, y = clouds()
    assert abs(float(sinkhorn_divergence(Dense(x, x, 0.05), tol=1e-10))) < 1e-10
    near = float(sinkhorn_divergence(Dense(x, x + 0.05, 0.05), tol=1e-10))
    far = float(sinkhorn_divergence(Dense(x, x + 0.5, 0.05), tol=1e-10))
    assert 0 < near < far
    # a translation by t costs |t|^2 in the debiased divergence (exactly, for any epsilon)
    assert abs(far - 0.5) < 1e-6


def test_kernel_config_and_auto_choice():
    x, y = clouds()
    assert isinstance(make_kernel(KernelConfig(epsilon=0.1), x, y), Dense)
    assert isinstance(make_kernel(KernelConfig(epsilon=0.1, dense_limit=100), x, y), RandomFeatures)
    assert isinstance(make_kernel(KernelConfig(bandwidth=0.5), grid=(8, 8)), Grid)
    assert make_kernel(KernelConfig(kind="nystrom", epsilon=0.1, rank=16), x, y).rank == 16
    assert KernelConfig(bandwidth=0.5).resolved_epsilon == 0.25
    with pytest.raises(ValueError, match="exactly one of epsilon and bandwidth"):
        KernelConfig()
    with pytest.raises(ValueError, match="kind must be one of"):
        KernelConfig(kind="sparse", epsilon=1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        KernelConfig(epsilon=1.0, backend="cuda")
    with pytest.raises(ValueError, match="equal positive mass"):
        sinkhorn(Dense(x, y, 0.1), torch.ones(60, dtype=D64))
    with pytest.raises(ValueError, match=r"shape \(60,\)"):
        sinkhorn(Dense(x, y, 0.1), torch.ones(61, dtype=D64) / 61)
    with pytest.raises(ValueError, match="epsilon must be a positive"):
        Dense(x, y, 0.0)


def gaussian_denoiser(mean):
    """The exact denoiser of N(mean, I) data: D(x, sigma) = (x + sigma^2 mean) / (1 + sigma^2)."""

    def denoise(x, sigma):
        s2 = sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2
        return (x + s2 * mean) / (1 + s2)

    return denoise


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bridge_moves_every_sampler_toward_the_reference(name):
    """A denoiser for the wrong distribution (mean 0) with reference data at mean 3: the bridge must pull
    every sampler's output toward 3; with step size 0 it must change nothing."""
    torch.manual_seed(0)
    ref = torch.randn(256, 2) + 3.0
    x0 = torch.randn(128, 2, generator=torch.Generator().manual_seed(5)) * 10
    sigmas = sigmas_karras(8, sigma_min=0.02, sigma_max=20.0)
    sampler = SAMPLERS[name]
    plain = sampler(
        gaussian_denoiser(0.0), x0.clone(), sigmas, generator=torch.Generator().manual_seed(6), disable=True
    )
    outs = {}
    for step in (0.0, 0.5):
        bridge = SinkhornBridge(
            ref, kernel=KernelConfig(epsilon=0.5), step_size=step, generator=torch.Generator().manual_seed(7)
        )
        outs[step] = sampler(
            gaussian_denoiser(0.0),
            x0.clone(),
            sigmas,
            generator=torch.Generator().manual_seed(6),
            callback=bridge,
            disable=True,
        )
        assert bridge.history and all(h["iterations"] >= 1 for h in bridge.history)
    assert torch.allclose(outs[0.0], plain, atol=1e-5)
    assert outs[0.5].mean(0).sub(3).abs().max() < plain.mean(0).sub(3).abs().max() - 1.0


def test_bridge_on_grid_data_inside_a_sampler():
    """Images (B, C, H, W) are flattened to points in R^(C H W) and moved in their own shape."""
    ref = torch.randn(64, 1, 4, 4) * 0.5 + 2.0
    sigmas = sigmas_karras(6, sigma_min=0.02, sigma_max=10.0)
    x0 = torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(3)) * 10
    plain = SAMPLERS["heun"](gaussian_denoiser(0.0), x0.clone(), sigmas, disable=True)
    bridge = SinkhornBridge(ref, kernel=KernelConfig(epsilon=2.0), step_size=1.0)
    out = SAMPLERS["heun"](gaussian_denoiser(0.0), x0.clone(), sigmas, callback=bridge, disable=True)
    assert out.shape == plain.shape and len(bridge.history) == 5
    assert (out.mean() - 2.0).abs() < (plain.mean() - 2.0).abs() - 1.0


def test_bridge_on_grid_samples_checks_shapes():
    ref = torch.randn(16, 1, 4, 4)
    bridge = SinkhornBridge(ref, kernel=KernelConfig(epsilon=1.0), steps=[0])
    x, den = torch.randn(8, 1, 4, 4), torch.zeros(8, 1, 4, 4)
    before = x.clone()
    bridge({"i": 0, "sigma": torch.tensor(1.0), "sigma_next": torch.tensor(0.5), "x": x, "denoised": den})
    assert not torch.equal(x, before) and torch.allclose(x - before, den, atol=1e-5)
    with pytest.raises(ValueError, match="reference's"):
        bridge(
            {
                "i": 0,
                "sigma": torch.tensor(1.0),
                "sigma_next": torch.tensor(0.5),
                "x": torch.randn(8, 2, 4, 4),
                "denoised": torch.zeros(8, 2, 4, 4),
            }
        )


def test_debiased_bridge_leaves_a_batch_drawn_like_the_reference_in_place():
    """The plain barycentric map contracts a batch toward local means (entropic blur); the debiased step
    subtracts the batch's own blur, so a batch equal to the reference does not move."""
    g = torch.Generator().manual_seed(11)
    ref = torch.randn(200, 2, generator=g, dtype=D64)
    info = {"i": 0, "sigma": torch.tensor(1e-8), "sigma_next": torch.tensor(0.0)}
    moves = {}
    for debias in (True, False):
        bridge = SinkhornBridge(
            ref,
            kernel=KernelConfig(epsilon=0.3),
            steps=[0],
            step_size=1.0,
            iterations=500,
            tol=1e-8,
            debias=debias,
            generator=torch.Generator().manual_seed(0),
        )
        x = ref.clone()
        bridge({**info, "x": x, "denoised": torch.zeros_like(x)})
        moves[debias] = float((x - ref).norm(dim=1).mean())
        assert bridge.history[0]["converged"]
    assert moves[True] < 1e-6 < 0.05 < moves[False]


@pytest.mark.parametrize("backend", ["dense", "random_features", "nystrom"])
def test_a_batch_equals_its_problems_solved_alone(backend):
    g = torch.Generator().manual_seed(12)
    x, y = torch.rand(2, 30, 2, generator=g, dtype=D64), torch.rand(2, 40, 2, generator=g, dtype=D64)
    cfg = KernelConfig(kind=backend, epsilon=1.0, rank=24)
    both = sinkhorn(make_kernel(cfg, x, y, generator=torch.Generator().manual_seed(0)), tol=1e-7)
    for i in range(2):
        # the same random draws for problem i alone: the batch's draws are per problem
        op = make_kernel(cfg, x, y, generator=torch.Generator().manual_seed(0))
        if backend == "random_features":
            op = RandomFeatures(x[i], y[i], 1.0, rank=24, _draws=op.draws[i : i + 1])
        elif backend == "nystrom":
            op = Nystrom(x[i], y[i], 1.0, rank=24, _landmarks=op.landmarks[i : i + 1])
        else:
            op = Dense(x[i], y[i], 1.0)
        alone = sinkhorn(op, tol=1e-7)
        assert torch.allclose(alone.plan(), both.plan()[i], atol=1e-7)
        assert torch.allclose(alone.cost, both.cost[i], rtol=1e-6)
