"""Fréchet distance between Gaussians fitted to two feature sets (the distance behind FID).

``d^2 = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})`` (Dowson & Landau 1982; Heusel et al. 2017)
for the means ``mu`` and covariances ``S`` of the two sets. ``S_a S_b`` is not symmetric, but it is similar to
the symmetric positive semi-definite ``S_a^{1/2} S_b S_a^{1/2}``, so both have the same eigenvalues and
``tr((S_a S_b)^{1/2}) = sum_i sqrt(lambda_i(S_a^{1/2} S_b S_a^{1/2}))``: two symmetric eigen-decompositions,
no general (possibly complex) matrix square root.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_features(feats_a: Tensor, feats_b: Tensor) -> None:
    for name, f in (("feats_a", feats_a), ("feats_b", feats_b)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N, D) features with N >= 2, got shape {tuple(f.shape)}")
    if feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"feature sets must have the same dimension D, got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )


def gaussian_fit(feats: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of features ``(N, D)``, float64."""
    f = feats.detach().to(device="cpu", dtype=torch.float64)
    mu = f.mean(dim=0)  # (D,)
    centred = f - mu  # (N, D)
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(s: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix ``(D, D)``; tiny negative eigenvalues (round-off) -> 0."""
    evals, evecs = torch.linalg.eigh(s)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T  # V diag(sqrt(lambda)) V^T


def trace_sqrt_product(s_a: Tensor, s_b: Tensor) -> Tensor:
    """``tr((S_a S_b)^{1/2})`` for symmetric PSD ``(D, D)`` matrices, a 0-d float64 tensor."""
    root_a = _psd_sqrt(s_a.double())
    m = root_a @ s_b.double() @ root_a  # (D, D) similar to S_a S_b, symmetric PSD
    m = (m + m.T) / 2  # remove the round-off asymmetry before eigvalsh, which reads one triangle only
    return torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum()


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Squared Fréchet distance between Gaussians fitted to ``feats_a (N, D)`` and ``feats_b (M, D)``.

    Computed in float64 on the CPU. It is the square (as in FID), so shifting one set by a vector ``d`` adds
    ``|d|^2`` to the distance between a set and itself. The estimate is biased upwards for small ``N`` (the
    fitted covariances are noisy), so compare models only at equal sample sizes, next to a real-vs-real floor.

    Returns:
        ``d^2 >= 0`` (a round-off negative is reported as 0).
    """
    _check_features(feats_a, feats_b)
    mu_a, s_a = gaussian_fit(feats_a)
    mu_b, s_b = gaussian_fit(feats_b)
    d2 = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * trace_sqrt_product(s_a, s_b)
    return max(float(d2), 0.0)  # identical sets give ~-1e-12 from round-off; a distance is never negative
