"""Per-sample noise: a sampler given one ``torch.Generator`` per batch row draws row ``i``'s noise from generator
``i`` alone, so a batch of 4 with generators ``[g0, g1, g2, g3]`` equals the four rows sampled one at a time,
each with its own generator (as diffusers takes a list of generators).

The denoiser is the closed-form optimal denoiser of N(mu, diag(s^2)) data: elementwise, so a row's output
does not depend on the other rows and the comparison is exact. PC's corrector takes one step size for the
whole batch (a batch mean of norms, see its docstring), so its rows are independent only without corrector
steps; it is checked with ``corrector_steps=0``.
"""

from __future__ import annotations

import pytest
import torch

from polyscale.diffusion import SAMPLERS
from polyscale.diffusion.samplers._common import noise_like
from polyscale.diffusion.sampling import SamplerConfig, run_sampler
from polyscale.diffusion.utils import append_dims

# every sampler that draws noise, with options that make it draw at every step
STOCHASTIC = {
    "ddpm": {},
    "ddim": {"eta": 0.7},
    "heun": {"s_churn": 20.0},
    "pc": {"corrector_steps": 0},
}
SHAPE = (2, 6, 5)  # (C, *spatial) of one sample


class GaussianDenoiser:
    """The optimal denoiser for N(mu, diag(s^2)) data, elementwise."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.mu = torch.randn((1, *SHAPE), generator=g, dtype=torch.float64)
        self.s2 = (0.3 + torch.rand((1, *SHAPE), generator=g, dtype=torch.float64)) ** 2

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma2 = append_dims(sigma, x.ndim) ** 2
        return self.mu + self.s2 / (self.s2 + sigma2) * (x - self.mu)


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_every_stochastic_sampler_is_listed():
    """A new sampler that draws noise must join STOCHASTIC (deterministic ones ignore the generator)."""
    denoiser, x = GaussianDenoiser(), torch.zeros((2, *SHAPE), dtype=torch.float64) + 3.0
    drawing = set()
    for name in SAMPLERS:
        options = STOCHASTIC.get(name, {})
        config = SamplerConfig(name=name, steps=4, sigma_max=3.0, options=options)
        a = run_sampler(denoiser, x.clone(), config, generator=torch.Generator().manual_seed(0))
        b = run_sampler(denoiser, x.clone(), config, generator=torch.Generator().manual_seed(1))
        if not torch.equal(a, b):
            drawing.add(name)
    assert drawing == set(STOCHASTIC)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_batch_with_row_generators_equals_rows_sampled_alone(name):
    denoiser = GaussianDenoiser()
    config = SamplerConfig(name=name, steps=6, sigma_max=20.0, options=STOCHASTIC[name])
    seeds = [11, 12, 13, 14]
    starts = torch.stack(
        [torch.randn(SHAPE, generator=g, dtype=torch.float64) * 20.0 for g in _generators(seeds)]
    )  # (4, C, *S): row i's starting noise from generator i
    batch = run_sampler(denoiser, starts.clone(), config, generator=_generators([100 + s for s in seeds]))
    for i, seed in enumerate(seeds):
        alone = run_sampler(
            denoiser, starts[i : i + 1].clone(), config, generator=torch.Generator().manual_seed(100 + seed)
        )
        assert torch.equal(batch[i : i + 1], alone), f"{name}: row {i} differs from its run alone"
    # the noise mattered: other generators give other samples
    other = run_sampler(denoiser, starts.clone(), config, generator=_generators([200 + s for s in seeds]))
    assert not torch.equal(other, batch)


def test_row_noise_is_that_generators_own_stream():
    x = torch.empty(3, 4, 5)
    rows = noise_like(x, _generators([1, 2, 3]))
    assert rows.shape == x.shape
    for i, seed in enumerate([1, 2, 3]):
        assert torch.equal(rows[i], torch.randn(4, 5, generator=torch.Generator().manual_seed(seed)))
    # one generator for the batch is unchanged
    assert torch.equal(
        noise_like(x, torch.Generator().manual_seed(1)),
        torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)),
    )


@pytest.mark.parametrize("name", ["euler", "ddpm"])
def test_a_list_of_the_wrong_length_is_one_line(name):
    config = SamplerConfig(name=name, steps=2)
    x = torch.zeros(4, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError) as err:
        run_sampler(GaussianDenoiser(), x, config, generator=_generators([1, 2, 3]))
    message = str(err.value)
    assert "\n" not in message
    assert "expected one torch.Generator per batch row (4), got 3" in message
    with pytest.raises(ValueError, match=r"got 2 \(Generator/int\)"):
        noise_like(torch.zeros(2, 3), [torch.Generator(), 5])
