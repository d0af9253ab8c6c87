"""Classifier-free guidance: the wrapper against its formula and its two ends (bit for bit), one batched
denoiser call per evaluation, every sampler running it, the warning for a model trained without conditioning
dropout, and per-sample noise (a seeded sample does not depend on the batch it is drawn in)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from polyscale.cli.main import main
from polyscale.diffusion import SAMPLERS, EDMPrecond
from polyscale.diffusion.guidance import ClassifierFreeGuidance
from polyscale.diffusion.sampling import SamplerConfig, run_sampler
from polyscale.nn.text import TextEncoderConfig
from polyscale.nn.unet import UNet
from polyscale.pipelines.conditioning import guided, trained_with_dropout
from polyscale.pipelines.sample import generate, sample_generators
from tiny import TINY_DIGITS, TINY_UNET, perturbed, run_cli, sets

KINDS = ("labels", "tokens", "context")
TEXT = TextEncoderConfig(vocabulary=("a", "seven", "one"), width=8, num_layers=1, num_heads=2, max_length=4)


def conditional(kind: str, batch: int = 3) -> tuple[EDMPrecond, dict[str, torch.Tensor]]:
    """A denoiser around a small perturbed U-Net conditioned on ``kind``, and a condition for ``batch``
    samples."""
    torch.manual_seed(0)
    if kind == "labels":
        net = UNet(dims=2, in_channels=1, num_classes=3, **TINY_UNET)
        cond = {"class_labels": torch.arange(batch) % 3}
    elif kind == "tokens":
        net = UNet(dims=2, in_channels=1, text_encoder=TEXT, **TINY_UNET)
        cond = net.encode_prompts([("a seven", "one", "")[i % 3] for i in range(batch)])
    else:
        net = UNet(dims=2, in_channels=1, context_dim=6, **TINY_UNET)
        mask = torch.ones(batch, 4, dtype=torch.bool)
        mask[0, 2:] = False
        cond = {"context": torch.randn(batch, 4, 6), "context_mask": mask}
    return EDMPrecond(perturbed(net), sigma_data=0.5).eval(), cond


class Counting(nn.Module):
    """A denoiser that records the batch size of every call it passes on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x, sigma, **cond):
        self.batches.append(x.shape[0])
        return self.inner(x, sigma, **cond)


def cfg_of(den: EDMPrecond, scale: float) -> ClassifierFreeGuidance:
    return ClassifierFreeGuidance(den, scale=scale, uncond=den.net.null_condition)


# ------------------------------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("kind", KINDS)
def test_scale_one_and_zero_are_the_conditional_and_unconditional_denoisers_bit_for_bit(kind):
    den, cond = conditional(kind)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 10.0])
    with torch.no_grad():
        conditional_out = den(x, sigma, **cond)
        unconditional_out = den(x, sigma, **den.net.null_condition(cond))
        assert torch.equal(cfg_of(den, 1)(x, sigma, **cond), conditional_out)
        assert torch.equal(cfg_of(den, 0)(x, sigma, **cond), unconditional_out)
    assert not torch.allclose(conditional_out, unconditional_out, atol=1e-4)  # so the two could be told apart


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [2.5, 0.4])
def test_scale_w_is_the_unconditional_plus_w_times_the_difference(kind, scale):
    den, cond = conditional(kind)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 10.0])
    with torch.no_grad():
        c = den(x, sigma, **cond)
        u = den(x, sigma, **den.net.null_condition(cond))
        out = cfg_of(den, scale)(x, sigma, **cond)
        assert torch.allclose(
            out, u + scale * (c - u), rtol=1e-5, atol=1e-5
        )  # one doubled batch vs two calls
        assert torch.allclose(
            cfg_of(den, scale)(x, 2.0, **cond), cfg_of(den, scale)(x, torch.full((3,), 2.0), **cond)
        )
    assert not torch.allclose(out, c, atol=1e-4) and not torch.allclose(out, u, atol=1e-4)


@pytest.mark.parametrize("scale, batches", [(3.0, [6]), (1.0, [3]), (0.0, [3])])
def test_one_denoiser_call_per_evaluation(scale, batches):
    den, cond = conditional("tokens")
    counting = Counting(den)
    with torch.no_grad():
        ClassifierFreeGuidance(counting, scale=scale, uncond=den.net.null_condition)(
            torch.randn(3, 1, 8, 8), 1.0, **cond
        )
    assert counting.batches == batches


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_guidance_runs_inside_every_sampler(name):
    den, cond = conditional("labels")
    counting = Counting(den)
    guidance = ClassifierFreeGuidance(counting, scale=2.0, uncond=den.net.null_condition)
    config = SamplerConfig(
        name=name, steps=2, options={"rtol": 0.05, "atol": 0.05} if name == "ode_adaptive" else {}
    )
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * config.sigma_max
    out = run_sampler(guidance, x, config, generator=torch.Generator().manual_seed(1), cond=cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert counting.batches and set(counting.batches) == {6}  # every call carried both halves


def test_guidance_without_a_condition_is_an_error():
    den, _ = conditional("labels")
    with pytest.raises(ValueError, match="needs a condition \\(class labels or a prompt\\), got none"):
        cfg_of(den, 2.0)(torch.randn(1, 1, 8, 8), 1.0)


@pytest.mark.parametrize("scale", [math.nan, math.inf, True, "2"])
def test_the_guidance_scale_must_be_a_finite_number(scale):
    with pytest.raises(ValueError, match=f"guidance scale must be a finite number, got {scale!r}"):
        ClassifierFreeGuidance(lambda x, s, **c: x, scale=scale, uncond=dict)


def test_guided_wraps_only_when_there_is_something_to_guide():
    den, cond = conditional("labels")
    assert guided(den, den.net, cond, 1.0) is den
    assert guided(den, den.net, {}, 3.0) is den
    wrapped = guided(den, den.net, cond, 3.0)
    assert isinstance(wrapped, ClassifierFreeGuidance) and wrapped.scale == 3.0
    for bad in (-1.0, math.nan, True):
        with pytest.raises(ValueError, match="guidance scale must be"):
            guided(den, den.net, cond, bad)


def test_trained_with_dropout_asks_for_the_dropout_of_each_condition_given():
    labels, tokens = {"class_labels": torch.zeros(1)}, {"tokens": torch.zeros(1, 2)}

    def run(**train):
        return {"train": {"label_dropout": 0.0, "context_dropout": 0.0, **train}}

    assert trained_with_dropout(None, labels)  # unknown: no warning
    assert not trained_with_dropout(run(), labels)
    assert trained_with_dropout(run(label_dropout=0.1), labels)
    assert not trained_with_dropout(run(label_dropout=0.1), {**labels, **tokens})
    assert trained_with_dropout(run(label_dropout=0.1, context_dropout=0.1), {**labels, **tokens})
    assert not trained_with_dropout(run(label_dropout=0.1), {"context": torch.zeros(1, 1, 1)})
    assert trained_with_dropout(run(context_dropout=0.1), tokens)


# --------------------------------------------------------------------------- the warning, through the CLI

CLASS_RUN = [*TINY_DIGITS, "train.max_steps=1", "train.checkpoint_every=1", "train.progress=false"]


@pytest.mark.parametrize("dropout, warns", [(0.0, True), (0.15, False)])
def test_guiding_a_model_trained_without_label_dropout_warns(tmp_path, capsys, dropout, warns):
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "digits2d_class",
        "--output-dir",
        str(run),
        *sets(*CLASS_RUN, f"train.label_dropout={dropout}"),
    ]
    assert main(argv) == 0
    argv = ["sample", "--checkpoint", str(run / "model"), "--class-label", "7", "--guidance-scale", "3",
            "--num-samples", "2", "--timesteps", "1", "--device", "cpu",
            "--output-file", str(tmp_path / "s.png")]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = run_cli(argv, capsys)
    assert code == 0, err
    ours = [w for w in caught if issubclass(w.category, UserWarning) and "dropout" in str(w.message)]
    assert len(ours) == int(warns), [str(w.message) for w in caught]
    if warns:
        assert "guidance scale 3.0" in str(ours[0].message) and "--guidance-scale 1" in str(ours[0].message)


# ------------------------------------------------------------------------------------------ per-sample noise


def draw(den, cond, sampler: str, batch_size: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Five seeded samples in batches of ``batch_size``, and the noise each started from."""
    starts = []

    def record(info):
        if info["i"] == 0:
            starts.append(info["x"].clone())

    out = generate(den, (5, 1, 8, 8), SamplerConfig(name=sampler, steps=3), seed=seed, cond=cond,
                   batch_size=batch_size, callback=record, progress=False)  # fmt: skip
    return out, torch.cat(starts)


@pytest.mark.parametrize("sampler", ["euler", "ddpm"])
def test_a_seeded_sample_does_not_depend_on_the_batch_it_is_drawn_in(sampler):
    den, cond = conditional("labels", batch=5)
    out, start = draw(den, cond, sampler, 5)
    assert torch.equal(draw(den, cond, sampler, 5)[0], out)  # the same batching: bit for bit
    for batch_size in (1, 3):
        other, other_start = draw(den, cond, sampler, batch_size)
        assert torch.equal(other_start, start)  # the noise, bit for bit
        # the samples up to rounding: CPU matmuls and convolutions block differently for other batch sizes
        assert torch.allclose(other, out, rtol=1e-5, atol=1e-5), float((other - out).abs().max())
    assert not torch.allclose(out[0], out[3], atol=1e-3)  # same class, own noise
    assert not torch.allclose(draw(den, cond, sampler, 5, seed=4)[0], out, atol=1e-3)


def test_sample_generators_depend_on_the_seed_and_the_index_alone():
    late = sample_generators(7, 2, 4)
    early = sample_generators(7, 0, 4)
    draws = [torch.randn(3, generator=g) for g in (late[0], early[2], sample_generators(8, 2, 3)[0])]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    with pytest.raises(ValueError, match="give seed .* or generator .*, not both"):
        generate(lambda x, s: x, (1, 1, 4), seed=0, generator=torch.Generator())
