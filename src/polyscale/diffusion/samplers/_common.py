"""Pieces every sampler shares: input checks, the step loop with its progress bar, the callback payload."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import torch
from torch import Tensor
from tqdm.auto import trange

Callback = Callable[[dict[str, Any]], None]
Denoiser = Callable[..., Tensor]
# Where a sampler's noise comes from: one generator for the batch, one per batch row (row i from generator i,
# so a row's samples do not depend on the rest of the batch), or None (torch's global generator).
Generators: TypeAlias = torch.Generator | Sequence[torch.Generator] | None


def prepare(x: Tensor, sigmas: Tensor) -> Tensor:
    """Check a batch-first floating ``x`` and a strictly decreasing 1-D schedule ending in 0; return the
    schedule on ``x``'s device and dtype (``(N + 1,)``)."""
    if x.ndim < 1 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(
            f"x must be a non-empty floating batch-first tensor (B, ...), got {x.dtype} {tuple(x.shape)}"
        )
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length >= 2, got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or (sigmas[1:] >= sigmas[:-1]).any():
        values = sigmas.tolist()
        shown = values if len(values) <= 8 else f"{values[:3]} ... {values[-3:]}"
        raise ValueError(
            f"sigmas must be strictly decreasing and end in 0 (e.g. polyscale.diffusion.sigmas_karras), "
            f"got {shown}"
        )
    return sigmas.to(device=x.device, dtype=x.dtype)


def steps(sigmas: Tensor, disable: bool | None, desc: str | None = None) -> Iterable[int]:
    """Step indices ``0 .. len(sigmas) - 2`` with a tqdm bar unless ``disable``, labelled ``desc`` (default
    ``"sampling"``)."""
    return trange(len(sigmas) - 1, disable=disable, desc=desc or "sampling", leave=False)


def report(
    callback: Callback | None,
    i: int,
    sigma: Tensor,
    sigma_next: Tensor,
    x: Tensor,
    denoised: Tensor,
    **extra: Any,
) -> None:
    """Call ``callback({"i", "sigma", "sigma_next", "x", "denoised", **extra})`` if there is one."""
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised, **extra})


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """The scalar level ``sigma`` as the ``(B,)`` tensor a denoiser receives."""
    return sigma.to(x.dtype).repeat(x.shape[0])  # () -> (B,), contiguous


def row_generators(x: Tensor, generator: Generators) -> list[torch.Generator] | None:
    """``generator`` as a list of one generator per batch row of ``x`` when it is a sequence, ``None`` when it is
    one generator or ``None``. A sequence whose length is not the batch size, or that holds something other
    than generators, is a ``ValueError``."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    generators = list(generator)
    if len(generators) != x.shape[0] or not all(isinstance(g, torch.Generator) for g in generators):
        kinds = "/".join(sorted({type(g).__name__ for g in generators})) or "nothing"
        raise ValueError(
            f"expected one torch.Generator per batch row ({x.shape[0]}), got {len(generators)} ({kinds})"
        )
    return generators


def noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` on the generator's device (so a CPU
    generator gives the same numbers whatever device ``x`` lives on), then moved to ``x``'s device.

    ``generator`` may also be a sequence of generators, one per batch row: row ``i`` is drawn from
    ``generator[i]`` alone, the same numbers a batch of that one row would get from it (as diffusers takes a
    list of generators). A sequence whose length is not the batch size is a ``ValueError``
    (:func:`row_generators`).
    """
    generators = row_generators(x, generator)
    if generators is None:
        one = generator if isinstance(generator, torch.Generator) else None
        device = one.device if one is not None else x.device
        return torch.randn(x.shape, generator=one, device=device, dtype=x.dtype).to(x.device)
    rows = [
        torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype).to(x.device) for g in generators
    ]
    return torch.stack(rows)  # B x (...) -> (B, ...)
