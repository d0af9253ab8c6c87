"""The one-call API and out-of-memory batch halving: ``polyscale.create_sampler(...).generate(...)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polyscale
from polyscale.diffusion import EDMPrecond
from polyscale.diffusion.sampling import SamplerConfig
from polyscale.nn.unet import UNet
from polyscale.pipelines.batching import BatchTooLargeError
from polyscale.pipelines.sample import generate


class RefusesLargeBatches(nn.Module):
    """A real denoiser that raises ``torch.OutOfMemoryError`` for batches above ``limit``, as a GPU would."""

    def __init__(self, denoiser: nn.Module, limit: int) -> None:
        super().__init__()
        self.denoiser, self.limit, self.batches = denoiser, limit, []

    def forward(self, x, sigma, **cond):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (batch {x.shape[0]})")
        return self.denoiser(x, sigma, **cond)


def small_denoiser() -> EDMPrecond:
    torch.manual_seed(0)
    net = UNet(dims=2, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
               attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2, num_classes=3)  # fmt: skip
    for p in net.parameters():  # zero-initialised output layers would make every sample equal its input
        p.data.add_(torch.randn_like(p) * 0.05)
    return EDMPrecond(net).eval()


@pytest.mark.parametrize("sampler", ["heun", "ddpm"])
def test_halving_after_out_of_memory_gives_the_unhalved_samples(sampler):
    den = small_denoiser()
    cond = {"class_labels": torch.tensor([0, 1, 2, 0, 1, 2, 0])}
    config = SamplerConfig(name=sampler, steps=3)
    whole = generate(den, (7, 1, 8, 8), config, seed=3, cond=cond, batch_size=7, progress=False)
    tight = RefusesLargeBatches(den, limit=2)
    with pytest.warns(UserWarning, match="out of memory in a batch of 7: going on in batches of 3"):
        halved = generate(tight, (7, 1, 8, 8), config, seed=3, cond=cond, batch_size=7, progress=False)
    assert halved.shape == whole.shape
    # every sample is there, in order, the same up to the rounding of other batch sizes on CPU
    torch.testing.assert_close(halved, whole, rtol=1e-4, atol=1e-4)
    # 7 and 3 ran out of memory; the run went on one sample at a time (3 // 2 = 1) to the end
    assert tight.batches[0] == 7 and 3 in tight.batches and set(tight.batches) - {7, 3} <= {1, 2}
    # the same run drawn in batches of 1 from the start is bit-identical to the halved one
    direct = generate(den, (7, 1, 8, 8), config, seed=3, cond=cond, batch_size=1, progress=False)
    assert torch.equal(direct, halved)


def test_a_sample_that_does_not_fit_alone_is_one_clear_error():
    tight = RefusesLargeBatches(small_denoiser(), limit=0)
    cond = {"class_labels": torch.tensor([0, 1])}
    with pytest.warns(UserWarning), pytest.raises(BatchTooLargeError, match="even in a batch of 1"):
        generate(tight, (2, 1, 8, 8), SamplerConfig(steps=2), seed=0, cond=cond, progress=False)


def test_create_sampler_generates_per_prompt_and_saves(tmp_path):
    sampler = polyscale.create_sampler("digits2d_text", device="cpu")
    out = sampler.generate(prompts=["a handwritten seven", "the digit 3"], num_samples=2, timesteps=2, seed=1,
                           progress=False, output=tmp_path / "x.png")  # fmt: skip
    assert out.shape == (4, 1, 16, 16) and torch.isfinite(out).all()
    assert (tmp_path / "x.png").is_file()
    # sample i depends on (seed, i): the first two are the sevens of a run asking for sevens alone
    sevens = sampler.generate(
        prompts=["a handwritten seven"], num_samples=2, timesteps=2, seed=1, progress=False
    )
    # (equal up to CPU kernels rounding differently for other batch sizes, which guidance at 3 and two
    # large denoising steps amplify; the noise itself is bit-identical, see test_guidance.py)
    torch.testing.assert_close(sevens, out[:2], rtol=0, atol=3e-2)
    one_by_one = sampler.generate(prompts=["a handwritten seven", "the digit 3"], num_samples=2, timesteps=2,
                                  seed=1, batch_size=1, progress=False)  # fmt: skip
    torch.testing.assert_close(one_by_one, out, rtol=0, atol=3e-2)
    sampler.clear_cache()
    raw = sampler.generate(
        prompts="a 5, handwritten", timesteps=2, progress=False, output=tmp_path / "five.npy"
    )
    assert raw.shape == (1, 1, 16, 16) and (tmp_path / "five.npy").is_file()


def test_create_sampler_refuses_what_the_model_cannot_do():
    sampler = polyscale.create_sampler("digits2d", device="cpu")
    with pytest.raises(ValueError, match="not trained with text"):
        sampler.generate(prompts=["a seven"], timesteps=2, progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        sampler.generate(class_labels=[3], timesteps=2, progress=False)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        sampler.generate(num_samples=0)
    with pytest.raises(ValueError, match="output must end in one of"):
        sampler.generate(timesteps=2, output="x.jpg")
    with pytest.raises(ValueError, match="unknown sampler"):
        polyscale.create_sampler("digits2d", sampler="nope")
