"""Sample a trained model directory (or a model shipped with the package) and write the results to files."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from polyscale import devices
from polyscale.atomic import atomic_write_bytes
from polyscale.config import load_config, to_dict
from polyscale.devices import DEVICES
from polyscale.diffusion import SAMPLERS, EDMPrecond, TiledDenoiser
from polyscale.diffusion.sampling import SamplerConfig, run_sampler, with_sampler
from polyscale.io import load_pretrained, read_model_dir
from polyscale.nn.text import PromptEncoder
from polyscale.nn.unet import UNet
from polyscale.pipelines.batching import run_in_batches
from polyscale.pipelines.conditioning import build_condition, guided, prompt_encoder
from polyscale.pipelines.datasets import to_display
from polyscale.pipelines.experiment import ExperimentConfig, experiment_from_dict
from polyscale.pipelines.preflight import check_memory, check_steps, check_writable
from polyscale.viz.animation import DenoisingRecorder, save_denoising_animation
from polyscale.viz.grids import save_image_grid, save_line_plots, save_volume_slices

MODEL_CLASSES = {"UNet": UNet}  # the explicit map from config.json "class" to a constructor
SHIPPED_BY_DIM = {
    1: "mnist1d",
    2: "digits2d",
    3: "porous3d",
}  # what `sample --dim D` uses without a checkpoint
RAW_FORMATS = ("npy", "pt")  # raw-sample files: numpy array (np.load) or plain tensor (torch.load)


def shipped_models() -> list[str]:
    """Names of the model directories shipped inside the package."""
    folder = resources.files("polyscale") / "pretrained"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The model directory ``--checkpoint`` names: a model directory, a run directory (its ``model/``) or a
    shipped model's name (``digits2d``); see :func:`polyscale.io.resolve_model_dir`."""
    from polyscale.io import resolve_model_dir

    return resolve_model_dir(checkpoint)


def resolve_device(device: str) -> torch.device:
    """The ``torch.device`` that ``device`` names (:data:`polyscale.devices.DEVICES`; ``auto`` picks CUDA when
    present)."""
    if device not in DEVICES:
        names = [repr(name) for name in DEVICES]
        raise ValueError(f"device must be {', '.join(names[:-1])} or {names[-1]}, got {device!r}")
    return devices.resolve_device(device)


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
    cfg = experiment_from_dict(meta["experiment"])
    denoiser = EDMPrecond(net, sigma_data=cfg.diffusion.sigma_data).to(device).eval()
    return denoiser, cfg, tuple(meta["sample_shape"])


def sample_generators(
    seed: int, start: int, stop: int, *, device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One generator per sample ``start .. stop - 1``, each seeded from ``(seed, i)`` alone: sample ``i``'s
    noise, and so the sample, never depends on the batch it is drawn in."""
    out = []
    for i in range(start, stop):
        digest = hashlib.sha256(f"polyscale-sample/{seed}/{i}".encode()).digest()
        out.append(torch.Generator(device).manual_seed(int.from_bytes(digest[:8], "little") >> 1))
    return out


@torch.no_grad()
def generate(
    denoiser,
    shape: tuple[int, ...],
    sampler: SamplerConfig | None = None,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    cond: dict[str, Tensor] | None = None,
    callback=None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Tensor:
    """Draw ``shape[0]`` samples of shape ``shape[1:]`` with ``sampler`` (default :class:`SamplerConfig`: Heun
    over a Karras schedule) in batches of ``batch_size``: ``(shape[0], *shape[1:])``.

    With ``seed``, sample ``i`` draws all its noise from its own generator (:func:`sample_generators`), so
    it is the same whatever the batch size. ``generator`` (without ``seed``) is one generator shared by the
    whole run, whose samples then depend on the batching. ``cond`` holds the samples' keyword arguments
    (``(N, ...)`` tensors, e.g. from :func:`polyscale.pipelines.conditioning.build_condition`); each batch
    gets its rows. With ``seed``, a batch that runs out of memory (``torch.OutOfMemoryError``) is halved and
    tried again, down to one sample, keeping the batches already drawn
    (:func:`polyscale.pipelines.batching.run_in_batches`); the samples are those of an unhalved run."""
    from polyscale.pipelines.conditioning import slice_condition

    if seed is not None and generator is not None:
        raise ValueError("give seed (one generator per sample) or generator (one for the run), not both")
    sampler = sampler if sampler is not None else SamplerConfig()
    sigma_max = sampler.sigmas(device)[0]
    n = shape[0]

    def draw(start: int, stop: int) -> Tensor:
        if seed is not None:
            gens = sample_generators(seed, start, stop, device=device)
            x = torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in gens]) * sigma_max
            noise: torch.Generator | list[torch.Generator] | None = gens
        else:
            x = torch.randn((stop - start, *shape[1:]), generator=generator, device=device) * sigma_max
            noise = generator
        part = slice_condition(cond, start, stop) if cond else None
        return run_sampler(
            denoiser, x, sampler, generator=noise, callback=callback, progress=progress, cond=part
        )

    def halved(old: int, new: int) -> None:
        warnings.warn(f"out of memory in a batch of {old}: going on in batches of {new}", stacklevel=3)

    step = batch_size or n
    if seed is None:  # one generator for the run: a halved batch would draw other noise, so no halving
        return torch.cat([draw(start, min(start + step, n)) for start in range(0, n, step)])
    size = "x".join(str(v) for v in shape[1:])
    return torch.cat(run_in_batches(draw, n, step, on_halve=halved, what=f"sampling {n} samples of {size}"))


@dataclass
class SampleResult:
    samples: Tensor  # (N, C, *spatial), model space
    files: list[Path]  # what was written


def raw_format(save_raw: bool | str | None) -> str | None:
    """The raw-sample format asked for: ``False``/``None`` none, ``True`` ``"npy"``, or ``"npy"``/``"pt"``."""
    if save_raw is None or save_raw is False:
        return None
    if save_raw is True:
        return "npy"
    if save_raw in RAW_FORMATS:
        return str(save_raw)
    raise ValueError(f"save_raw must be a bool or one of {list(RAW_FORMATS)}, got {save_raw!r}")


def save_raw_samples(samples: Tensor, path: str | Path, *, fmt: str = "npy") -> Path:
    """Write ``samples`` ``(N, C, *spatial)`` atomically: ``.npy`` (no pickle) or ``.pt`` (``torch.save`` of a
    plain CPU tensor, loadable with ``torch.load(path, weights_only=True)``); ``fmt`` also sets the suffix."""
    import io

    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, samples.detach().cpu().numpy(), allow_pickle=False)
    elif fmt == "pt":
        torch.save(samples.detach().cpu().contiguous().clone(), buf)  # clone: no view onto a larger storage
    else:
        raise ValueError(f"raw sample format must be one of {list(RAW_FORMATS)}, got {fmt!r}")
    return atomic_write_bytes(Path(path).with_suffix(f".{fmt}"), buf.getvalue())


def save_samples(
    samples: Tensor, output_file: str | Path, *, data_kind: str, save_raw: bool | str = False
) -> list[Path]:
    """Write a picture suited to the samples' rank, plus the raw samples when ``save_raw`` asks (``True`` or
    ``"npy"``: ``.npy``; ``"pt"``: ``.pt``, see :func:`save_raw_samples`) and always for 3D (``.npy`` unless
    ``"pt"`` is asked), since slices show only part of a volume."""
    fmt = raw_format(save_raw)
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
    if fmt is not None or dims == 3:
        files.append(save_raw_samples(samples, output_file, fmt=fmt or "npy"))
    return files


def check_architecture(cfg: ExperimentConfig, checkpoint: str | Path, **requested: int | None) -> None:
    """Raise ValueError when an architecture flag (``dims``, ``in_channels``, ``base_channels``) given by the
    user contradicts the checkpoint; ``None`` means "not given"."""
    for name, value in requested.items():
        have = getattr(cfg.model, name)
        if value is not None and value != have:
            raise ValueError(
                f"checkpoint {str(checkpoint)!r} has {name}={have}, but {name}={value} was requested; "
                "drop the flag or pick a checkpoint with that architecture"
            )


def _check_int(name: str, value: object, *, minimum: int, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int >= ``minimum`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_sampling_args(
    *,
    num_samples: int,
    sampler: str | None,
    steps: int | None,
    seed: int,
    resolution: int | None,
    batch_size: int | None,
    animation_interval: int,
    tile_size: int | None,
    tile_overlap: int | None,
) -> None:
    """Reject sampling arguments that cannot work, before any model is loaded (ValueError naming the argument,
    what it accepts and what arrived). Checks that need the model (resolution vs size multiple, architecture)
    are in :func:`sample_checkpoint`."""
    _check_int("num_samples", num_samples, minimum=1)
    for name, value in (("steps", steps), ("resolution", resolution), ("batch_size", batch_size)):
        _check_int(name, value, minimum=1, optional=True)
    _check_int("animation_interval", animation_interval, minimum=1)
    _check_int("tile_size", tile_size, minimum=1, optional=True)
    _check_int("tile_overlap", tile_overlap, minimum=0, optional=True)
    if steps is not None:
        check_steps(steps)
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    if tile_overlap is not None and tile_size is None:
        raise ValueError(f"tile_overlap={tile_overlap} was given without tile_size; give both or neither")
    if tile_size is not None and tile_overlap is not None and tile_overlap >= tile_size:
        raise ValueError(
            f"tile_overlap must be smaller than tile_size={tile_size} (windows must advance), "
            f"got {tile_overlap}"
        )


PICTURE_SUFFIXES = (".png",)  # what --output-file may end in: the picture is always a PNG


def output_suffixes(*, save_raw: bool | str | None = False, dims: int | None = None, animation: bool = False):
    """Suffixes of the files :func:`sample_checkpoint` writes beside its picture: the raw samples (asked for,
    or always for volumes, ``dims=3``) and the animation's GIF and MP4."""
    fmt = raw_format(save_raw) or ("npy" if dims == 3 else None)
    return ((f".{fmt}",) if fmt else ()) + ((".gif", ".mp4") if animation else ())


def check_output_file(
    output_file: str | Path,
    *,
    save_raw: bool | str | None = False,
    dims: int | None = None,
    animation: bool = False,
) -> Path:
    """Fail before sampling, not after, when ``output_file`` cannot be written: a suffix other than ``.png``,
    an existing directory (or a directory where a file beside it goes, see :func:`output_suffixes`), or a
    folder that cannot be made or written (:func:`polyscale.pipelines.preflight.check_writable`). Returns the
    path."""
    beside = output_suffixes(save_raw=save_raw, dims=dims, animation=animation)
    return check_writable(output_file, suffixes=PICTURE_SUFFIXES, flag="--output-file", beside=beside)


# ------------------------------------------------------------------------------------ memory, before sampling
#
# A run's peak memory, estimated from the model's configuration alone (no weights are loaded):
#
# - in flight, per batch of B samples of C x S (S positions; the U-Net sees windows of tile_size when tiling):
#   UNET_ACTIVATION_FACTOR x 4 bytes x B x sum over levels l of base_channels x channel_mults[l] x S_l
#   (S_l = S / 2**(l * dims): the positions at that level) + UNET_OVERHEAD_BYTES, plus SAMPLER_COPIES x 4 x B
#   x C x S for the sampler's own full-size tensors (x, the estimate, derivatives, a tiled denoiser's sums);
# - kept: the N samples, N x C x S x 4 bytes, twice while the batches are joined (on the device), and on the
#   host once plus PICTURE_COPIES[dims] copies while the picture is drawn (1D: plus LINE_PANEL_BYTES per
#   sample, a matplotlib panel each) or, after that, RAW_COPIES while a raw file is encoded;
# - an animation: per recorded frame the first 16 samples twice (x and the estimate) and their pictures.
#
# UNET_ACTIVATION_FACTOR was calibrated once from the peak RSS of sampling on CPU (2-core AMD EPYC, float32,
# one thread, 2 Heun steps, shipped models), as measured / (B x 4 x sum): digits2d 13.4 (B=16 at 64x64),
# 9.7 (64 at 64x64), 8.9 (4 at 256x256), 7.1 (16 at 256x256); texture2d 7.5 (8 at 256x256); mnist1d 4.6
# (256 at 4096, 16 at 65536); porous3d 12.6 (4 at 64^3), 11.9 (1 at 128^3). 12 covers all but the smallest
# run (183 MB measured, 197 MB estimated with the overhead). PICTURE_COPIES, LINE_PANEL_BYTES and RAW_COPIES:
# the peak RSS of whole `sample` runs of many samples in small batches, as a multiple of the kept bytes:
# digits2d, 65536 samples of 16x16 in batches of 16: 8.5 (the PNG grid is upscaled 4x4), the same with
# --save-raw npy (the picture's copies are gone by then); porous3d, 512 of 32^3 in batches of 1 (slices and
# the .npy): 4.2; mnist1d, 256 and 1024 samples of 40: 406 and 431 kB per sample (the panels).
UNET_ACTIVATION_FACTOR = 12
UNET_OVERHEAD_BYTES = 64 * 2**20
SAMPLER_COPIES = 8
PICTURE_COPIES = {1: 1.0, 2: 7.5, 3: 3.2}
LINE_PANEL_BYTES = 450_000
RAW_COPIES = 2.0
ANIMATION_SAMPLES = 16  # samples a frame shows (DenoisingRecorder.max_samples)


@dataclass
class MemoryEstimate:
    """Peak bytes of a sampling run: on the device that samples (``device``) and on the host afterwards
    (``host``, the same memory when sampling on CPU), and what they count (``what``, in words)."""

    device: int
    host: int
    what: str

    def total(self, device: torch.device | str) -> int:
        """The peak on ``device``: the larger phase on CPU (sampling, then writing), else the device's."""
        return max(self.device, self.host) if torch.device(device).type == "cpu" else self.device


def unet_batch_bytes(model, batch: int, spatial: Sequence[int]) -> int:
    """Working memory of the U-Net of config ``model`` denoising ``batch`` inputs of ``spatial`` positions
    (the formula above the constants)."""
    positions = math.prod(spatial)
    dims = len(spatial)
    levels = sum(
        model.base_channels * mult * positions // 2 ** (level * dims)
        for level, mult in enumerate(model.channel_mults)
    )
    return UNET_ACTIVATION_FACTOR * 4 * batch * levels + UNET_OVERHEAD_BYTES


def sampling_memory(
    model,
    shape: Sequence[int],
    *,
    batch_size: int | None = None,
    steps: int = 32,
    tile_size: int | None = None,
    picture: bool = False,
    raw: bool = False,
    animation_interval: int | None = None,
    guidance: bool = False,
) -> MemoryEstimate:
    """Estimated peak memory of drawing ``shape = (N, C, *spatial)`` samples with a U-Net of config ``model``
    (a :class:`~polyscale.nn.unet.UNetConfig`) in batches of ``batch_size`` (``None``: all at once), over
    ``steps`` steps, optionally in windows of ``tile_size``, then writing the ``picture``, the ``raw`` samples
    and an animation recorded every ``animation_interval`` steps (``None``: none). The formula and its
    calibration are in the comment above :data:`UNET_ACTIVATION_FACTOR`."""
    n, channels, *spatial = (int(v) for v in shape)
    batch = min(batch_size or n, n)
    positions = math.prod(spatial)
    window = [min(tile_size, v) for v in spatial] if tile_size is not None else spatial
    kept = n * channels * positions * 4
    # classifier-free guidance runs the network on the batch and its unconditional twin at once
    in_flight = unet_batch_bytes(model, batch * (2 if guidance else 1), window)
    in_flight += SAMPLER_COPIES * 4 * batch * channels * positions
    schedule = 32 * (steps + 1)  # the noise levels and their intermediates (float64)
    # the picture is drawn, then its copies are freed and the raw file is encoded: the larger of the two counts
    copies = 1 + max(PICTURE_COPIES[len(spatial)] if picture else 0, RAW_COPIES if raw else 0)
    panels = LINE_PANEL_BYTES * n if picture and len(spatial) == 1 else 0
    frames = 0
    if animation_interval is not None:
        shown = min(ANIMATION_SAMPLES, batch)
        count = steps // animation_interval + 2  # every K-th step and the final samples
        tiles = positions if len(spatial) < 3 else 3 * max(spatial) ** 2  # 3D frames show three slices
        drawn = 2**20 if len(spatial) == 1 else 2 * shown * tiles * 16 * 3 * 2  # RGB, 4x4 upscaled, 2 copies
        frames = count * (2 * shown * channels * positions * 4 + drawn)
    size = "x".join(str(v) for v in (channels, *spatial))
    what = f"{n} samples of {size} kept in memory + a batch of {batch} in flight"
    if guidance:
        what += " (doubled for guidance)"
    if tile_size is not None:
        what += f" in windows of {tile_size}"
    if frames:
        what += " + the animation's frames"
    host = int(copies * kept) + panels + frames
    return MemoryEstimate(device=2 * kept + in_flight + schedule, host=host, what=what)


def check_sampling_memory(
    estimate: MemoryEstimate,
    device: torch.device | str,
    *,
    force: bool = False,
    flag: str | None = "--force",
    lower: str | None = "--num-samples, --batch-size or --resolution",
) -> None:
    """:func:`polyscale.pipelines.preflight.check_memory` of ``estimate`` on the sampling device, and on the host
    too when that is another (an accelerator)."""
    check_memory(
        estimate.total(device), what=estimate.what, device=device, force=force, flag=flag, lower=lower
    )
    if torch.device(device).type != "cpu":
        check_memory(estimate.host, what=estimate.what, device="cpu", force=force, flag=flag, lower=lower)


def check_resolution(resolution: int | None, size_multiple: int, *, tile_size: int | None = None) -> None:
    """Raise ValueError when the network cannot take ``resolution`` per axis: it must be a multiple of the
    network's ``size_multiple``, unless tiling cuts it into windows of ``tile_size`` (itself checked)."""
    if resolution is None or resolution % size_multiple == 0:
        return
    if tile_size is not None and resolution > tile_size:
        return  # every window is tile_size wide
    lower = resolution - resolution % size_multiple
    upper = lower + size_multiple
    nearest = f"{lower} or {upper}" if lower > 0 else f"{upper}"
    raise ValueError(
        f"resolution {resolution} is not divisible by the model's size multiple {size_multiple}; "
        f"expected a multiple of {size_multiple} such as {nearest}"
    )


def resolve_sampler(
    cfg: ExperimentConfig,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
) -> SamplerConfig:
    """How a model of ``cfg`` samples: its ``diffusion.sampler``, then the ``sampler`` / ``steps`` flags (a new
    sampler keeps the options it accepts, see :func:`~polyscale.diffusion.sampling.with_sampler`), then
    ``overrides``: ``KEY=VALUE`` strings on the sampler (``sampler.steps=10``, ``sampler.options.eta=0.5``;
    a leading ``diffusion.`` is accepted), validated like a preset (an unknown option is an error)."""
    base = with_sampler(cfg.diffusion.sampler, sampler, steps)
    if isinstance(overrides, str):
        raise ValueError(f"overrides must be a list of KEY=VALUE strings, got the string {overrides!r}")
    keys = [o.removeprefix("diffusion.") for o in overrides]
    outside = [o for o in keys if not o.startswith("sampler.")]
    if outside:
        raise ValueError(f"sampling overrides must set sampler.* keys (e.g. sampler.steps=10), got {outside}")
    return load_config(SamplerConfig, to_dict(base), [o.removeprefix("sampler.") for o in keys])


@dataclass
class LoadedModel:
    """A model directory loaded for sampling: the EDM denoiser around its U-Net, the experiment it was
    trained in, the training sample shape ``(C, *spatial)``, its metadata and (text models) prompt encoder."""

    denoiser: EDMPrecond
    cfg: ExperimentConfig
    sample_shape: tuple[int, ...]
    metadata: dict
    encoder: PromptEncoder | None = None

    @property
    def unet(self) -> UNet:
        return cast(UNet, self.denoiser.net)  # load_model checks it

    def condition(self, num_samples: int, *, class_labels=None, prompts=None) -> dict[str, Tensor]:
        """The keyword arguments of ``num_samples`` samples (:func:`~polyscale.pipelines.conditioning.
        build_condition`), on the model's device."""
        device = next(self.denoiser.parameters()).device
        return build_condition(self.unet, num_samples, class_labels=class_labels, prompts=prompts,
                               encoder=self.encoder, device=device)  # fmt: skip

    def guides(self, cond: dict[str, Tensor], guidance_scale: float | None = None) -> bool:
        """Whether sampling ``cond`` at ``guidance_scale`` (None: the model's) runs guidance, which doubles the
        batch the network sees."""
        scale = self.cfg.diffusion.guidance_scale if guidance_scale is None else guidance_scale
        return bool(cond) and scale != 1

    def denoiser_for(
        self,
        cond: dict[str, Tensor],
        guidance_scale: float | None = None,
        *,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> nn.Module:
        """The denoiser that samples ``cond``: guided at ``guidance_scale`` (None: the model's default) and,
        with ``tile_size``, denoised in overlapping windows (:class:`~polyscale.diffusion.TiledDenoiser`)."""
        scale = self.cfg.diffusion.guidance_scale if guidance_scale is None else guidance_scale
        model: nn.Module = guided(
            self.denoiser, self.unet, cond, scale, experiment=self.metadata.get("experiment")
        )
        if tile_size is not None:
            overlap = tile_size // 4 if tile_overlap is None else tile_overlap
            model = TiledDenoiser(
                model,
                tile_size=tile_size,
                overlap=overlap,
                size_multiple=self.unet.size_multiple,
                periodic=self.unet.config.padding_mode == "circular",
            )
        return model


def load_model(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    ema: bool = True,
    lora: str | Path | None = None,
) -> LoadedModel:
    """:func:`load_denoiser` plus what conditional sampling needs: the metadata and the prompt encoder
    (the built-in one, or the CLIP directory the model was trained with). ``lora``: a LoRA adapter directory
    (``polyscale finetune``'s ``RUN/adapter``) merged into the network; it must have been trained on this
    checkpoint (:func:`polyscale.training.lora.apply_adapter`)."""
    denoiser, cfg, sample_shape = load_denoiser(checkpoint, ema=ema, device=device)
    if lora is not None:
        from polyscale.training.lora import apply_adapter  # optional: needs peft

        apply_adapter(denoiser, lora, merge=True)
    metadata = read_model_dir(resolve_checkpoint(checkpoint)).metadata
    unet = denoiser.net
    if not isinstance(unet, UNet):  # load_denoiser builds only MODEL_CLASSES
        raise ValueError(f"{checkpoint} holds a {type(unet).__name__}; sampling needs a UNet")
    keys = unet.condition_keys
    text = any(k in keys for k in ("tokens", "context"))
    encoder = prompt_encoder(unet, metadata.get("text_encoder")) if text else None
    if encoder is not None and isinstance(encoder, nn.Module):
        encoder.to(device)
    return LoadedModel(denoiser, cfg, sample_shape, metadata, encoder)


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
    save_raw: bool | str = False,
    progress: bool = True,
    dims: int | None = None,
    channels: int | None = None,
    base_channels: int | None = None,
    create_animation: bool = False,
    animation_interval: int = 1,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    class_labels: int | Sequence[int] | None = None,
    prompts: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
    lora: str | Path | None = None,
) -> SampleResult:
    """Load ``checkpoint``, draw ``num_samples`` samples (at ``resolution`` per spatial axis when given).

    A conditional model samples ``class_labels`` and/or ``prompts`` (sample ``i`` gets entry ``i`` modulo the
    list's length; see :func:`polyscale.pipelines.conditioning.build_condition`) with classifier-free
    guidance at ``guidance_scale`` (None: the model's ``diffusion.guidance_scale``). ``lora``: a LoRA adapter
    directory trained on ``checkpoint`` (``polyscale finetune``), merged in before sampling. Sample ``i`` depends on
    ``seed`` and ``i`` alone, never on ``batch_size``.

    ``checkpoint=None`` takes the shipped model for ``dims`` (:data:`SHIPPED_BY_DIM`). ``dims``, ``channels``
    and ``base_channels`` are checks: a value that contradicts the checkpoint is an error. With
    ``create_animation`` the first batch is recorded every ``animation_interval`` steps and written next to
    ``output_file`` as a GIF (x beside the denoised estimate), and as an MP4 too when ffmpeg is found
    (:func:`polyscale.viz.animation.save_denoising_animation`). ``tile_size`` denoises overlapping windows of
    that edge (``tile_overlap`` shared positions, default a quarter) and averages them: memory of one window
    for outputs of any size (:class:`polyscale.diffusion.TiledDenoiser`). ``save_raw`` (``True``/``"npy"`` or
    ``"pt"``) also writes the raw samples next to ``output_file`` (see :func:`save_samples`). ``overrides``:
    ``KEY=VALUE`` settings of the sampler on top of the model's and the flags' (:func:`resolve_sampler`).

    Before sampling, the run's peak memory is estimated (:func:`sampling_memory`) and compared with what the
    device (and the host) has free; ``force`` turns a refusal into a warning. ``output_file`` must be a
    writable ``.png`` path (:func:`check_output_file`).

    Raises:
        ValueError: an argument outside its range (named in the message, checked before loading), more
            sampler steps than :data:`~polyscale.pipelines.preflight.MAX_STEPS`, an output file that cannot be
            written, an architecture flag or ``resolution`` the checkpoint cannot serve, an unreadable
            checkpoint, an absent device, or a run that would not fit in memory (unless ``force``).
        FileNotFoundError: ``checkpoint`` is neither a directory nor a shipped model name.
    """
    check_sampling_args(
        num_samples=num_samples, sampler=sampler, steps=steps, seed=seed, resolution=resolution,
        batch_size=batch_size, animation_interval=animation_interval, tile_size=tile_size,
        tile_overlap=tile_overlap,
    )  # fmt: skip
    raw_format(save_raw)
    if output_file is not None:
        check_output_file(output_file, save_raw=save_raw, dims=dims, animation=create_animation)
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
    loaded = load_model(checkpoint, device=dev, lora=lora)
    cfg, sample_shape, unet = loaded.cfg, loaded.sample_shape, loaded.unet
    sampling = resolve_sampler(cfg, sampler=sampler, steps=steps, overrides=overrides)
    check_steps(sampling.steps, flag="--timesteps (sampler.steps)")
    check_architecture(cfg, checkpoint, dims=dims, in_channels=channels, base_channels=base_channels)
    check_resolution(resolution, unet.size_multiple, tile_size=tile_size)
    cond = loaded.condition(num_samples, class_labels=class_labels, prompts=prompts)
    model = loaded.denoiser_for(cond, guidance_scale, tile_size=tile_size, tile_overlap=tile_overlap)
    spatial = sample_shape[1:] if resolution is None else (resolution,) * (len(sample_shape) - 1)
    if output_file is not None and len(spatial) == 3:  # volumes always get their raw file
        check_output_file(output_file, save_raw=save_raw, dims=3, animation=create_animation)
    estimate = sampling_memory(
        unet.config, (num_samples, sample_shape[0], *spatial), batch_size=batch_size, steps=sampling.steps,
        tile_size=tile_size, picture=output_file is not None,
        raw=output_file is not None and (raw_format(save_raw) is not None or len(spatial) == 3),
        animation_interval=animation_interval if create_animation else None,
        guidance=loaded.guides(cond, guidance_scale),
    )  # fmt: skip
    check_sampling_memory(estimate, dev, force=force)
    samples = generate(
        model,
        (num_samples, sample_shape[0], *spatial),
        sampling,
        seed=seed,
        cond=cond,
        callback=recorder,
        batch_size=batch_size,
        device=dev,
        progress=progress,
    ).cpu()
    files = []
    if output_file is not None:
        files = save_samples(samples, output_file, data_kind=cfg.data.kind, save_raw=save_raw)
    if recorder is not None and output_file is not None:  # create_animation needs an output_file (checked)
        first = samples[: recorder.max_samples]
        frames = [*recorder.ordered(), (len(recorder.frames), 0.0, first, first)]  # end on the final samples
        shown = [(i, s, to_display(x, cfg.data.kind), to_display(d, cfg.data.kind)) for i, s, x, d in frames]
        files.extend(save_denoising_animation(shown, Path(output_file)))
    return SampleResult(samples=samples, files=files)
