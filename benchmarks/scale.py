"""Train small, sample large: the stationary models (porous3d, texture2d) at 1x, 2x, 4x and 8x their training size.

    python benchmarks/scale.py --out scale.md                       # both models, scales 1 2 4 8
    python benchmarks/scale.py --model texture2d --scales 1 4 --out part.md

Each (model, scale) runs in its own process, so its peak resident memory (``ru_maxrss``) is its own. At every
scale the samples are compared with real data of the same size: porous media are generated at that size
(procedural), textures are random crops of the held-out band of the photograph. The real-vs-real floor uses the
same number of real items from the training side against the same held-out set.

Porous: porosity (target +-0.03 of the data's), two-point correlation S2 (RMS error of the raw curve, and of the
normalised correlation ``C(r) = (S2 - phi^2) / (phi - phi^2)``, whose shape is independent of the porosity
offset that the first row already reports), correlation length. Texture: mean grey level, grey-level histogram
total variation, radially averaged power spectrum error (RMS of log10 spectra). At 8x the texture is larger than
the held-out band (128 rows), so its spectrum is measured on the four 128x128 quadrants of each sample: the
statistics of 128-pixel windows, compared with real 128-pixel windows.

Tiling: ``--tile-scale 8`` samples the 8x outputs with ``TiledDenoiser`` (two windows per axis). The peer row
"one untiled denoiser call at 8x" measures the peak memory of the whole-volume call the tiling replaces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import in_subprocess, machine_description, markdown_table, peak_rss_mib, publish  # noqa: E402
from polyscale.diffusion import TiledDenoiser  # noqa: E402
from polyscale.diffusion.sampling import with_sampler  # noqa: E402
from polyscale.metrics.porous import correlation_length, porosity, two_point_correlation  # noqa: E402
from polyscale.pipelines.datasets import build_dataset  # noqa: E402
from polyscale.pipelines.evaluate import (  # noqa: E402
    porous_rows,
    real_data_config,
    stack_dataset,
    texture_rows,
)
from polyscale.pipelines.sample import generate, load_denoiser, save_samples  # noqa: E402

# samples per scale: about the same number of voxels/pixels at every scale (at least one)
# (porous3d's volumes are windows of a stationary process: the pore fraction of one 16^3 volume has a standard
# deviation of about 0.08, of one 64^3 volume about 0.01, so small volumes need many for +-0.03 to mean much;
# its counts follow the volume: 2^19 generated and 2^20 held-out voxels, at least 1 and 2 volumes)
COUNTS = {"texture2d": {1: 64, 2: 16, 4: 8, 8: 2}}
HELD_OUT = {"texture2d": {1: 64, 2: 64, 4: 64, 8: 64}}  # real test set
VOXELS = {"porous3d": (2**19, 2**20)}
MODELS = sorted([*COUNTS, *VOXELS])


def counts(model: str, scale: int, size: int, dims: int) -> tuple[int, int]:
    """(generated, held-out real) items at ``scale`` for outputs of edge ``size``."""
    if model in VOXELS:
        fake, test = VOXELS[model]
        return max(1, fake // size**dims), max(2, test // size**dims)
    return COUNTS[model][scale], HELD_OUT[model][scale]


def real_sets(cfg, fake: torch.Tensor, n_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-side real items (as many as ``fake`` has, or as many windows of the held-out size) and ``n_test``
    held-out items, built as ``polyscale evaluate`` builds them (:func:`real_data_config`)."""
    data_cfg = real_data_config(cfg.data, fake)
    n = fake.shape[0]
    if (
        cfg.data.kind == "texture"
    ):  # samples larger than the held-out band are scored as windows of its height
        n *= (fake.shape[-1] // data_cfg.crop_size) ** 2
    data_cfg = replace(data_cfg, num_samples=max(n, n_test))
    train, test = build_dataset(data_cfg, split="train"), build_dataset(data_cfg, split="test")
    return stack_dataset(train, n)[0], stack_dataset(test, n_test)[0]


SHORT = {  # evaluate's row names -> table columns
    "two-point correlation RMS error (lower)": "S2 RMS err",
    "two-point correlation shape C(r) RMS error (lower)": "C(r) RMS err",
    "grey-level histogram TV distance (lower)": "hist TV",
    "radial power spectrum RMS log10 error (lower)": "spectrum err",
}


def error_columns(rows) -> dict:
    """``evaluate``'s metric rows as ``model <metric>`` / ``floor <metric>`` columns."""
    out = {}
    for row in rows:
        out[f"model {SHORT[row.name]}"], out[f"floor {SHORT[row.name]}"] = row.model, row.floor
    return out


def porous_columns(fake, floor, test) -> dict:
    """Porosity and correlation length of each set, then ``evaluate``'s porous error rows."""
    out = {"data porosity": float(porosity(test)), "model porosity": float(porosity(fake))}
    out["floor porosity"] = float(porosity(floor))
    for name, x in (("data", test), ("model", fake), ("floor", floor)):
        out[f"{name} corr. length"] = float(correlation_length(two_point_correlation(x, periodic=False)))
    rows = [r for r in porous_rows(fake, floor, test) if r.name.startswith("two-point")]
    return out | error_columns(rows)


def texture_columns(fake, floor, test) -> dict:
    """Mean grey level of each set, then ``evaluate``'s texture error rows (histogram TV, spectrum error)."""
    out = {
        f"{name} mean grey": float(x.mean())
        for name, x in (("data", test), ("model", fake), ("floor", floor))
    }
    return out | error_columns(texture_rows(fake, floor, test)) | {"spectrum window": test.shape[-1]}


def two_window_tiling(denoiser, size: int, train_size: int) -> TiledDenoiser:
    """``denoiser`` tiled with two windows per axis of an output of edge ``size``.

    Zero-padded network: the windows overlap by about a quarter of the training size (at least 4), the window
    edge rounded up to the network's size multiple. Circular network (periodic data): each window is a core of
    ``size / 2`` plus a margin of half the training size on each side, dropped after the call."""
    multiple = denoiser.net.size_multiple
    if denoiser.net.config.padding_mode == "circular":
        margin = max(2, train_size // 2)
        margin += -margin % multiple
        return TiledDenoiser(
            denoiser,
            tile_size=size // 2 + 2 * margin,
            overlap=2 * margin,
            size_multiple=multiple,
            periodic=True,
        )
    edge = size // 2 + max(4, train_size // 4) // 2
    edge += -edge % multiple
    return TiledDenoiser(denoiser, tile_size=edge, overlap=2 * edge - size, size_multiple=multiple)


def run_one(
    model: str,
    scale: int,
    *,
    sampler: str | None,
    steps: int | None,
    tile: bool,
    seed: int,
    pictures: str | None = None,
) -> dict:
    torch.manual_seed(seed)
    denoiser, cfg, sample_shape = load_denoiser(model)
    sampling = with_sampler(cfg.diffusion.sampler, sampler, steps or None)
    train_size = sample_shape[-1]
    size = scale * train_size
    dims = len(sample_shape) - 1
    n, n_test = counts(model, scale, size, dims)
    if tile:
        denoiser = two_window_tiling(denoiser, size, train_size)
    t0 = time.perf_counter()
    fake = generate(
        denoiser,
        (n, sample_shape[0], *(size,) * dims),
        sampling,
        generator=torch.Generator().manual_seed(seed),
        batch_size=1,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    rss = peak_rss_mib()
    if pictures:
        save_samples(fake[:4], Path(pictures) / f"{model}_{scale}x.png", data_kind=cfg.data.kind)
    floor, test = real_sets(cfg, fake, n_test)
    row = {
        "model": model,
        "scale": f"{scale}x",
        "size": f"{size}^{dims}",
        "samples": n,
        "sampler": f"{sampling.name} {sampling.steps}",
    }
    row |= (
        porous_columns(fake, floor, test) if cfg.data.kind == "porous" else texture_columns(fake, floor, test)
    )
    row |= {
        "tiled": f"{denoiser.tile_size}/{denoiser.overlap}" if tile else "no",
        "sampling s": seconds,
        "peak RSS MiB": rss,
    }
    return row


def one_call_memory(model: str, scale: int, *, tile: bool) -> dict:
    """Peak RSS of a single denoiser call at ``scale`` (whole volume vs tiled), in this process."""
    denoiser, cfg, sample_shape = load_denoiser(model)
    size = scale * sample_shape[-1]
    base = peak_rss_mib()
    x = torch.randn(1, sample_shape[0], *(size,) * (len(sample_shape) - 1))
    if tile:
        denoiser = two_window_tiling(denoiser, size, sample_shape[-1])
    t0 = time.perf_counter()
    with torch.no_grad():
        denoiser(x, torch.tensor([1.0]))
    return {
        "model": model,
        "call": f"one {'tiled' if tile else 'untiled'} denoiser call at {scale}x ({size}^{x.ndim - 2})",
        "seconds": time.perf_counter() - t0,
        "peak RSS MiB": peak_rss_mib(),
        "RSS before MiB": base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", choices=MODELS, help="default: both")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4, 8], choices=[1, 2, 4, 8])
    parser.add_argument(
        "--sampler", default=None, help="default: each model's own (its preset's diffusion.sampler.name)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="default: each model's own (diffusion.sampler.steps)"
    )
    parser.add_argument("--tile-scale", type=int, default=8, help="scales at or above this are tiled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--pictures", default=None, help="folder for a PNG of the samples at each scale")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SCALE"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, metavar=("MODEL", "SCALE", "TILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, scale = args.worker[0], int(args.worker[1])
        row = run_one(
            model,
            scale,
            sampler=args.sampler,
            steps=args.steps,
            tile=scale >= args.tile_scale,
            seed=args.seed,
            pictures=args.pictures,
        )
        print(json.dumps(row))
        return
    if args.memory:
        print(json.dumps(one_call_memory(args.memory[0], int(args.memory[1]), tile=args.memory[2] == "1")))
        return
    models = args.model or MODELS
    common = ["--tile-scale", str(args.tile_scale)]
    common += ["--sampler", args.sampler] if args.sampler else []
    common += ["--steps", str(args.steps)] if args.steps else []
    if args.pictures:
        common += ["--pictures", args.pictures]
    sections = [
        "## Train small, sample large (`benchmarks/scale.py`)",
        "",
        f"Machine: {machine_description()}. Sampler and steps in the 'sampler' column (default: each model's "
        "own), Karras schedule. "
        "'floor' = real training-side data of the same size and count against the same held-out set.",
        "",
    ]
    for model in models:
        rows = []
        for scale in args.scales:
            print(f"[scale] {model} {scale}x ...", file=sys.stderr, flush=True)
            rows.append(
                in_subprocess(__file__, ["--worker", model, str(scale), "--seed", str(args.seed), *common])
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        sections += [f"### {model}", "", markdown_table(rows)]
        if max(args.scales) >= args.tile_scale:
            scale = max(args.scales)
            mem = [in_subprocess(__file__, ["--memory", model, str(scale), t]) for t in ("0", "1")]
            untiled = mem[0]["peak RSS MiB"] - mem[0]["RSS before MiB"]
            for m in mem:  # the untiled call is the peer: ratio 1
                m["growth / untiled growth"] = (m["peak RSS MiB"] - m["RSS before MiB"]) / untiled
            sections += [
                "Peak memory of one denoiser call (peer: the untiled call):",
                "",
                markdown_table(mem),
            ]
    publish("\n".join(sections), args.out)


if __name__ == "__main__":
    main()
