"""The one-call API: load a model once, then draw samples with a line.

```python
import polyscale

sampler = polyscale.create_sampler("digits2d_text", gpu_memory="auto")
images = sampler.generate(prompts=["a handwritten seven"], num_samples=4, guidance_scale=3, seed=0)
sampler.save(images, "sevens.png")
```

``generate`` returns the samples as a tensor ``(N, C, *spatial)`` in model space (images in [-1, 1]); sample
``i`` depends only on the seed and ``i``, so the batch size never changes a result. When the device runs out
of memory the batch is halved and the run goes on (down to one sample at a time). A memory profile
(``gpu_memory="16GB"``, ``"auto"``, ...; :mod:`polyscale.pipelines.memory`) picks the batch size, precision,
attention chunking and tile size for the resolution asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from polyscale.pipelines.datasets import to_display
from polyscale.pipelines.preflight import check_steps
from polyscale.pipelines.profiles import SamplingPlan, attention_chunk, plan_sampling
from polyscale.pipelines.sample import (
    check_resolution,
    generate,
    load_model,
    resolve_device,
    resolve_sampler,
    save_raw_samples,
    save_samples,
)
from polyscale.viz.animation import DenoisingRecorder, save_denoising_animation

OUTPUT_SUFFIXES = (".png", ".npy", ".pt", ".gif")


def _expand(values, per_item: int) -> list | None:
    """Each entry of ``values`` repeated ``per_item`` times, in order (None stays None)."""
    if values is None:
        return None
    if isinstance(values, str | int) or isinstance(values, Tensor) and values.ndim == 0:
        values = [values]
    return [v for v in values for _ in range(per_item)]


class Sampler:
    """A loaded model that draws samples (see the module docstring). Build it with :func:`create_sampler`."""

    def __init__(self, checkpoint: str | Path, *, device: str = "auto", gpu_memory: str | int | None = None,
                 sampler: str | None = None, ema: bool = True, lora: str | Path | None = None) -> None:  # fmt: skip
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.gpu_memory = gpu_memory
        self.model = load_model(checkpoint, device=self.device, ema=ema, lora=lora)
        self.sampler_name = sampler
        resolve_sampler(self.model.cfg, sampler=sampler)  # an unknown sampler fails now, not at generate
        self.last_plan: SamplingPlan | None = None

    @property
    def conditioning(self) -> tuple[str, ...]:
        """What the model can be conditioned on: ``class_labels`` and/or ``tokens`` / ``context`` (prompts)."""
        return self.model.unet.condition_keys

    def plan(
        self, num_samples: int, resolution: int | None = None, *, guidance: bool = False
    ) -> SamplingPlan:
        """The batch size, precision, attention chunk and tile size the memory profile picks for a run."""
        return plan_sampling(
            self.model.unet.config, self.model.sample_shape, resolution=resolution, num_samples=num_samples,
            gpu_memory=self.gpu_memory, device=self.device, guidance=guidance,
        )  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
        class_labels: int | Sequence[int] | None = None,
        *,
        num_samples: int = 1,
        timesteps: int | None = None,
        guidance_scale: float | None = None,
        resolution: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        tile_size: int | None = None,
        output: str | Path | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Draw ``num_samples`` samples per prompt (or per class label; without either, ``num_samples`` in all).

        Args:
            prompts: text for a text-conditioned model (sample order: prompt by prompt).
            class_labels: classes for a class-conditional model.
            timesteps: denoising steps (default: the model's).
            guidance_scale: classifier-free guidance (default: the model's; 1 = none).
            resolution: spatial size per axis (default: the training size).
            seed: sample ``i`` depends on ``(seed, i)`` alone.
            batch_size: samples per batch (default: what the memory profile allows); halved on out-of-memory.
            tile_size: denoise in overlapping windows of this edge (default: the profile's choice).
            output: also write the samples: ``.png`` (a picture), ``.npy`` / ``.pt`` (raw) or ``.gif`` (the
                denoising of the first samples).

        Returns:
            ``(N, C, *spatial)`` samples in model space, on the CPU.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if output is not None and Path(output).suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"output must end in one of {list(OUTPUT_SUFFIXES)}, got {str(output)!r}")
        model = self.model
        groups = len(_expand(prompts, 1) or []) or len(_expand(class_labels, 1) or []) or 1
        total = num_samples * groups
        texts = _expand(prompts, num_samples)
        labels = _expand(class_labels, num_samples)
        if texts is not None and labels is not None and len(texts) != len(labels):
            raise ValueError(
                f"give as many prompts as class labels (one condition per group), got {len(texts) // num_samples} "
                f"prompts and {len(labels) // num_samples} labels"
            )
        check_resolution(resolution, model.unet.size_multiple, tile_size=tile_size)
        sampling = resolve_sampler(model.cfg, sampler=self.sampler_name, steps=timesteps)
        check_steps(sampling.steps, flag="timesteps")
        cond = model.condition(total, class_labels=labels, prompts=texts)
        plan = self.plan(total, resolution, guidance=model.guides(cond, guidance_scale))
        self.last_plan = plan
        tile = tile_size if tile_size is not None else plan.tile_size
        denoiser = model.denoiser_for(cond, guidance_scale, tile_size=tile)
        spatial = (
            model.sample_shape[1:] if resolution is None else (resolution,) * (len(model.sample_shape) - 1)
        )
        recorder = DenoisingRecorder() if output is not None and Path(output).suffix == ".gif" else None
        autocast = torch.autocast(self.device.type, dtype=plan.dtype, enabled=plan.dtype != torch.float32)
        with autocast, attention_chunk(plan.attention_chunk):
            samples = generate(
                denoiser, (total, model.sample_shape[0], *spatial), sampling, seed=seed, cond=cond,
                batch_size=batch_size or plan.batch_size, device=self.device, progress=progress,
                callback=recorder,
            ).float().cpu()  # fmt: skip
        if output is not None:
            self.save(samples, output, recorder=recorder)
        return samples

    def save(
        self, samples: Tensor, path: str | Path, *, recorder: DenoisingRecorder | None = None
    ) -> list[Path]:
        """Write ``samples`` (from :meth:`generate`): a ``.png`` picture, raw ``.npy`` / ``.pt``, or with the
        recorder of a run a ``.gif`` of its denoising."""
        path = Path(path)
        kind = self.model.cfg.data.kind
        if path.suffix in (".npy", ".pt"):
            return [save_raw_samples(samples, path, fmt=path.suffix[1:])]
        if path.suffix == ".gif":
            if recorder is None:
                raise ValueError("a .gif shows the denoising: pass output='x.gif' to generate() to record it")
            first = samples[: recorder.max_samples]
            frames = [*recorder.ordered(), (len(recorder.frames), 0.0, first, first)]
            shown = [(i, s, to_display(x, kind), to_display(d, kind)) for i, s, x, d in frames]
            return save_denoising_animation(shown, path.with_suffix(".png"))
        if path.suffix != ".png":
            raise ValueError(f"path must end in one of {list(OUTPUT_SUFFIXES)}, got {str(path)!r}")
        return save_samples(samples, path, data_kind=kind)

    def clear_cache(self) -> None:
        """Free the device's cached memory (CUDA's caching allocator); the model stays loaded."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def create_sampler(
    checkpoint: str | Path,
    *,
    device: str = "auto",
    gpu_memory: str | int | None = None,
    sampler: str | None = None,
    ema: bool = True,
    lora: str | Path | None = None,
) -> Sampler:
    """Load ``checkpoint`` (a model directory, a run directory or a shipped model's name) for sampling.

    ``gpu_memory``: a memory profile (``"cpu"``, ``"6-12GB"``, ``"16GB"``, ``"24GB"``, ``"32GB"``, ``"80GB"``),
    a size (``"12GB"``, bytes as an int), ``"auto"`` (what the device has free) or None (the profile of the
    device: ``auto``). ``sampler`` overrides the model's sampler by name; ``ema=False`` uses the raw weights;
    ``lora`` merges a LoRA adapter directory trained on ``checkpoint`` (``polyscale finetune``).
    """
    return Sampler(checkpoint, device=device, gpu_memory=gpu_memory, sampler=sampler, ema=ema, lora=lora)


__all__ = ["Sampler", "create_sampler"]
