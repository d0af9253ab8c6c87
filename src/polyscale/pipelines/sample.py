"""Sample a trained model directory (or a model shipped with the package) and write the results to files."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from polyscale.config import from_dict
from polyscale.diffusion import EDMPrecond, TiledDenoiser, get_sampler, sigmas_karras
from polyscale.io import atomic_write_bytes, load_pretrained, read_model_dir
from polyscale.nn.unet import UNet
from polyscale.pipelines.datasets import to_display
from polyscale.pipelines.experiment import ExperimentConfig
from polyscale.viz.animation import DenoisingRecorder, save_denoising_gif
from polyscale.viz.grids import save_image_grid, save_line_plots, save_volume_slices

MODEL_CLASSES = {"UNet": UNet}  # the explicit map from config.json "class" to a constructor
SHIPPED_BY_DIM = {
    1: "mnist1d",
    2: "digits2d",
    3: "porous3d",
}  # what `sample --dim D` uses without a checkpoint


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


def check_architecture(cfg: ExperimentConfig, checkpoint: str | Path, **requested: int | None) -> None:
    """Raise ValueError when an architecture flag (``dims``, ``in_channels``, ``base_channels``) given by the
    user contradicts the checkpoint; ``None`` means "not given"."""
    for name, value in requested.items():
        have = getattr(cfg.model, name)
        if value is not None and value != have:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} has {name}={have}, but {name}={value} was requested; drop the "
                "flag or pick a checkpoint with that architecture"
            )


def sample_checkpoint(
    checkpoint: str | Path | None,
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
    dims: int | None = None,
    channels: int | None = None,
    base_channels: int | None = None,
    create_animation: bool = False,
    animation_interval: int = 1,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> SampleResult:
    """Load ``checkpoint``, draw ``num_samples`` samples (at ``resolution`` per spatial axis when given).

    ``checkpoint=None`` takes the shipped model for ``dims`` (:data:`SHIPPED_BY_DIM`). ``dims``, ``channels``
    and ``base_channels`` are checks: a value that contradicts the checkpoint is an error. With
    ``create_animation`` the first batch is recorded every ``animation_interval`` steps and written next to
    ``output_file`` as a GIF (x beside the denoised estimate). ``tile_size`` denoises overlapping windows of
    that edge (``tile_overlap`` shared positions, default a quarter) and averages them: memory of one window
    for outputs of any size (:class:`polyscale.diffusion.TiledDenoiser`).
    """
    if checkpoint is None:
        if dims not in SHIPPED_BY_DIM:
            raise ValueError(
                f"without a checkpoint, dims must be one of {sorted(SHIPPED_BY_DIM)}, got {dims!r}"
            )
        checkpoint = SHIPPED_BY_DIM[dims]
    if create_animation and output_file is None:
        raise ValueError("create_animation needs an output_file (the GIF is written next to it)")
    recorder = DenoisingRecorder(interval=animation_interval) if create_animation else None
    dev = resolve_device(device)
    denoiser, cfg, sample_shape = load_denoiser(checkpoint, device=dev)
    check_architecture(cfg, checkpoint, dims=dims, in_channels=channels, base_channels=base_channels)
    if tile_size is not None:
        overlap = tile_size // 4 if tile_overlap is None else tile_overlap
        denoiser = TiledDenoiser(
            denoiser, tile_size=tile_size, overlap=overlap, size_multiple=denoiser.net.size_multiple
        )
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
        callback=recorder,
        batch_size=batch_size,
        device=dev,
        progress=progress,
    ).cpu()
    files = []
    if output_file is not None:
        files = save_samples(samples, output_file, data_kind=cfg.data.kind, save_raw=save_raw)
    if recorder is not None:
        first = samples[: recorder.max_samples]
        frames = [*recorder.ordered(), (len(recorder.frames), 0.0, first, first)]  # end on the final samples
        shown = [(i, s, to_display(x, cfg.data.kind), to_display(d, cfg.data.kind)) for i, s, x, d in frames]
        files.append(save_denoising_gif(shown, Path(output_file).with_suffix(".gif")))
    return SampleResult(samples=samples, files=files)
