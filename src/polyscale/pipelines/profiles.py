"""Memory profiles: how to sample a model on a card of a given size.

A profile is a memory budget (``"6-12GB"`` plans for 6 GiB, the small end, so it holds on every card of the
range). :func:`plan_sampling` turns a budget, a model and a request (resolution, number of samples, guidance)
into a :class:`SamplingPlan`: the precision, the largest batch whose estimated peak
(:func:`polyscale.pipelines.sample.sampling_memory`) fits in :data:`SAFETY` of the budget, the attention chunk,
a tile size when even one sample does not fit whole, and the Schrödinger-bridge kernel whose matrices fit.

| profile | budget | precision on a GPU | attention chunk |
|---|---|---|---|
| ``cpu`` | the RAM available now | float32 | 2^20 entries |
| ``6-12GB`` | 6 GiB | float16 (bfloat16 where supported) | 2^22 |
| ``16GB`` | 16 GiB | float16 / bfloat16 | 2^23 |
| ``24GB`` | 24 GiB | float32 | 2^24 |
| ``32GB`` | 32 GiB | float32 | 2^24 |
| ``80GB`` | 80 GiB | float32 | 2^25 |
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from polyscale.nn import attention
from polyscale.pipelines.preflight import available_memory, human_bytes
from polyscale.pipelines.sample import sampling_memory

GIB = 2**30
SAFETY = 0.8  # plan for this share of the budget: the estimate is an estimate, and the card has other tenants
BRIDGE_REFERENCE = 1024  # reference samples a bridge step transports onto (SinkhornBridge's default use)


@dataclass(frozen=True)
class Profile:
    name: str
    budget: int | None  # bytes; None = what the device has available when the plan is made
    half: bool  # sample in half precision on a GPU
    attention_chunk: int  # entries of logits + gathered keys and values handled at once


PROFILES = {
    p.name: p
    for p in (
        Profile("cpu", None, False, 2**20),
        Profile("6-12GB", 6 * GIB, True, 2**22),
        Profile("16GB", 16 * GIB, True, 2**23),
        Profile("24GB", 24 * GIB, False, 2**24),
        Profile("32GB", 32 * GIB, False, 2**24),
        Profile("80GB", 80 * GIB, False, 2**25),
    )
}
ALIASES = {"6GB": "6-12GB", "8GB": "6-12GB", "12GB": "6-12GB", "auto": "auto"}


def parse_gpu_memory(value: str | int | None, device: torch.device) -> Profile:
    """The profile for ``value``: a profile name or alias (``"8GB"``), a size (``"16 GiB"``, ``"20GB"``, an
    int of bytes: the profile of that size, with that budget), ``"auto"`` or None (what ``device`` has free:
    ``cpu`` on a CPU)."""
    names = sorted(PROFILES, key=lambda n: PROFILES[n].budget or 0)
    if value is None or value == "auto":
        if device.type != "cuda":
            return PROFILES["cpu"]
        free, _ = torch.cuda.mem_get_info(device)
        return _sized(int(free))
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"gpu_memory must be a profile name {names}, a size like '16GB', 'auto' or None, got {value!r}"
        )
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"gpu_memory must be a positive number of bytes, got {value}")
        return _sized(value)
    text = value.strip().replace(" ", "")
    if text in PROFILES:
        return PROFILES[text]
    if text.upper() in ALIASES:
        return PROFILES[ALIASES[text.upper()]]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(G|GB|GiB|gb|gib|g)", text)
    if match is None:
        raise ValueError(
            f"gpu_memory must be a profile name {names}, a size like '16GB' or '16 GiB', 'auto' or None, "
            f"got {value!r}"
        )
    return _sized(int(float(match.group(1)) * GIB))


def _sized(budget: int) -> Profile:
    """The largest profile whose budget is at most ``budget`` (the smallest when none), planning for
    ``budget`` itself."""
    fitting = [p for p in PROFILES.values() if p.budget is not None and p.budget <= budget]
    base = max(fitting, key=lambda p: p.budget or 0) if fitting else PROFILES["6-12GB"]
    return Profile(base.name, budget, base.half, base.attention_chunk)


@dataclass
class SamplingPlan:
    """What a profile picks for one sampling run (see the module docstring)."""

    profile: str
    budget: int  # bytes planned for (SAFETY of it is used)
    dtype: torch.dtype
    batch_size: int
    tile_size: int | None  # None: whole samples
    attention_chunk: int
    bridge_kernel: str  # a key of polyscale.ot.KERNELS
    estimate: int  # estimated peak bytes of the run with this plan

    def describe(self) -> str:
        tile = f"tiles of {self.tile_size}" if self.tile_size else "whole samples"
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"profile {self.profile} ({human_bytes(self.budget)}): {dtype}, batch {self.batch_size}, {tile}, "
            f"attention chunk {self.attention_chunk}, bridge kernel {self.bridge_kernel}; estimated peak "
            f"{human_bytes(self.estimate)}"
        )


def _peak(
    model, shape: tuple[int, ...], batch: int, steps: int, tile: int | None, guidance: bool, scale: float
) -> int:
    """Estimated peak bytes of a run in batches of ``batch`` (guidance doubles what the network sees), scaled
    by ``scale`` (0.5 in half precision)."""
    est = sampling_memory(model, shape, batch_size=batch, steps=steps, tile_size=tile, guidance=guidance)
    return int(est.device * scale)


def plan_sampling(
    model,
    sample_shape: Sequence[int],
    *,
    resolution: int | None = None,
    num_samples: int = 1,
    gpu_memory: str | int | None = None,
    device: torch.device | str = "cpu",
    guidance: bool = False,
    steps: int = 32,
) -> SamplingPlan:
    """Plan a run of ``num_samples`` samples of a U-Net of config ``model`` (training sample shape
    ``sample_shape = (C, *spatial)``) at ``resolution`` per axis on ``device`` under the profile
    ``gpu_memory`` (:func:`parse_gpu_memory`)."""
    device = torch.device(device)
    profile = parse_gpu_memory(gpu_memory, device)
    budget = profile.budget if profile.budget is not None else available_memory(device)
    if budget is None:  # the device does not say: plan as for the smallest card
        budget = PROFILES["6-12GB"].budget or 6 * GIB
    half = profile.half and device.type == "cuda"
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if half else torch.float32
    scale = 0.5 if half else 1.0
    channels, *spatial = (int(v) for v in sample_shape)
    if resolution is not None:
        spatial = [resolution] * len(spatial)
    shape = (num_samples, channels, *spatial)
    limit = SAFETY * budget
    tile = None
    if _peak(model, (1, *shape[1:]), 1, steps, None, guidance, scale) > limit:
        multiple = 2 ** (len(model.channel_mults) - 1)
        tile = _largest(lambda t: _peak(model, (1, *shape[1:]), 1, steps, t, guidance, scale) <= limit,
                        multiple, max(spatial), step=multiple)  # fmt: skip
        if tile is None:
            raise ValueError(
                f"even one window of {multiple} positions per axis does not fit in {human_bytes(int(limit))} "
                f"({profile.name}): use a larger memory profile"
            )
    batch = (
        _largest(lambda b: _peak(model, shape, b, steps, tile, guidance, scale) <= limit, 1, num_samples) or 1
    )
    features = channels * math.prod(spatial)
    dense = (
        batch * BRIDGE_REFERENCE * 4 * 4 + BRIDGE_REFERENCE * features * 4
    )  # kernel, its logs, the reference
    bridge = "dense" if dense <= 0.1 * budget else "nystrom"
    estimate = _peak(model, shape, batch, steps, tile, guidance, scale)
    return SamplingPlan(
        profile.name, int(budget), dtype, batch, tile, profile.attention_chunk, bridge, estimate
    )


def _largest(fits, low: int, high: int, *, step: int = 1) -> int | None:
    """The largest ``v`` in ``low, low + step, ..., <= high`` with ``fits(v)`` (``fits`` monotone), or None."""
    count = (high - low) // step
    if count < 0 or not fits(low):
        return None
    lo, hi = 0, count  # fits(low + lo * step) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(low + mid * step):
            lo = mid
        else:
            hi = mid - 1
    return low + lo * step


def attention_chunk(entries: int | None):
    """Neighbourhood attention handles at most ``entries`` logits (plus gathered keys and values) at once
    inside the block (:func:`polyscale.nn.attention.attention_chunk_elements`)."""
    return attention.attention_chunk_elements(entries)


__all__ = ["PROFILES", "Profile", "SamplingPlan", "attention_chunk", "parse_gpu_memory", "plan_sampling"]
