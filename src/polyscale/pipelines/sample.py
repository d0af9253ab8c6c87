"""Sample a trained model directory (or a model shipped with the package) and write the results to files."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from polyscale.config import from_dict
from polyscale.diffusion import EDMPrecond, get_sampler, sigmas_karras
from polyscale.io import atomic_write_bytes, load_pretrained, read_model_dir
from polyscale.nn.unet import UNet
from polyscale.pipelines.datasets import to_display
from polyscale.pipelines.experiment import ExperimentConfig
from polyscale.viz.grids import save_image_grid, save_line_plots, save_volume_slices

MODEL_CLASSES = {"UNet": UNet}  # the explicit map from config.json "class" to a constructor


def shipped_models() -> list[str]:
    """Names of the model directories shipped inside the package."""
    folder = resources.files("polyscale") / "pretrained"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A model directory path, or the name of a shipped model (``digits2d``)."""
    path = Path(checkpoint)
    if path.exists():
        return path
    if str(checkpoint) in shipped_models():
        return Path(str(resources.files("polyscale") / "pretrained" / str(checkpoint)))
    raise FileNotFoundError(
        f"checkpoint {str(checkpoint)!r} is neither an existing model directory nor a shipped model "
        f"(shipped: {shipped_models()})"
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return torch.device(device)


def load_denoiser(
    checkpoint: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[EDMPrecond, ExperimentConfig, tuple[int, ...]]:
    """Load a model directory as an EDM denoiser (EMA weights when the directory has them).

    Returns the denoiser, its experiment configuration and the training sample shape ``(C, *spatial)``.
    """
    directory = resolve_checkpoint(checkpoint)
    info = read_model_dir(directory)
    use_ema = ema and (directory / "ema.safetensors").is_file()
    net = load_pretrained(directory, MODEL_CLASSES, ema=use_ema, map_location="cpu")
    meta = info.metadata
    if "experiment" not in meta or "sample_shape" not in meta:
        raise ValueError(
            f"{directory}/config.json has no polyscale experiment metadata; was it saved by polyscale?"
        )
    cfg = from_dict(ExperimentConfig, meta["experiment"])
    denoiser = EDMPrecond(net, sigma_data=cfg.diffusion.sigma_data).to(device).eval()
    return denoiser, cfg, tuple(meta["sample_shape"])


@torch.no_grad()
def generate(
    denoiser,
    shape: tuple[int, ...],
    *,
    sampler: str = "heun",
    steps: int = 24,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    callback=None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with a Karras schedule; batches of ``batch_size``."""
    sample_fn = get_sampler(sampler)
    sigmas = sigmas_karras(steps, sigma_min, sigma_max, rho=rho, device=device)
    n = shape[0]
    batch_size = batch_size or n
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        x = torch.randn((b, *shape[1:]), generator=generator, device=device) * sigmas[0]
        out.append(
            sample_fn(denoiser, x, sigmas, generator=generator, callback=callback, disable=not progress)
        )
    return torch.cat(out)


@dataclass
class SampleResult:
    samples: Tensor  # (N, C, *spatial), model space
    files: list[Path]  # what was written


def save_samples(
    samples: Tensor, output_file: str | Path, *, data_kind: str, save_raw: bool = False
) -> list[Path]:
    """Write a picture suited to the samples' rank (+ raw ``.npy`` for 3D or when asked)."""
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    shown = to_display(samples, data_kind)
    dims = samples.ndim - 2
    files = []
    if dims == 1:
        files.append(save_line_plots(shown, output_file))
    elif dims == 2:
        files.append(save_image_grid(shown if shown.shape[1] in (1, 3) else shown[:, :1], output_file))
    else:
        files.append(save_volume_slices(shown, output_file))
    if save_raw or dims == 3:
        import io

        buf = io.BytesIO()
        np.save(buf, samples.cpu().numpy(), allow_pickle=False)
        files.append(atomic_write_bytes(output_file.with_suffix(".npy"), buf.getvalue()))
    return files


def sample_checkpoint(
    checkpoint: str | Path,
    *,
    num_samples: int = 16,
    output_file: str | Path | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    resolution: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    save_raw: bool = False,
    progress: bool = True,
) -> SampleResult:
    """Load ``checkpoint``, draw ``num_samples`` samples (at ``resolution`` per spatial axis when given)."""
    dev = resolve_device(device)
    denoiser, cfg, sample_shape = load_denoiser(checkpoint, device=dev)
    spatial = sample_shape[1:] if resolution is None else (resolution,) * (len(sample_shape) - 1)
    generator = torch.Generator(dev).manual_seed(seed)
    samples = generate(
        denoiser,
        (num_samples, sample_shape[0], *spatial),
        sampler=sampler or cfg.diffusion.sampler,
        steps=steps or cfg.diffusion.steps,
        sigma_min=cfg.diffusion.sigma_min,
        sigma_max=cfg.diffusion.sigma_max,
        rho=cfg.diffusion.rho,
        generator=generator,
        batch_size=batch_size,
        device=dev,
        progress=progress,
    ).cpu()
    files = []
    if output_file is not None:
        files = save_samples(samples, output_file, data_kind=cfg.data.kind, save_raw=save_raw)
    return SampleResult(samples=samples, files=files)
