"""LoRA against full fine-tuning: the shipped ``texture2d`` model (trained on gravel) fine-tuned on another
scikit-image texture for the same number of steps, both through ``polyscale.pipelines.finetune``.

    OMP_NUM_THREADS=1 python benchmarks/lora_finetune.py --output-dir runs/lora_finetune

Reports, per model (the base without fine-tuning, LoRA, full): trainable parameters, what is saved (the adapter
alone against a whole model), training wall time, seconds per optimizer step (both methods timed alternately in
one process, in CPU time), and how close its samples come to held-out real crops of the
new texture (radial power spectrum RMS log10 error and grey-level histogram TV distance, as ``polyscale
evaluate`` computes them for textures), beside the real-vs-real floor (training-band crops against held-out
crops). Writes ``<output-dir>/report.md``, ``report.json`` and ``samples.png`` (rows: held-out real crops, the
base, LoRA, full; the same noise for every model), and the table to ``--out`` when given. ``--reuse`` keeps
the runs and samples of an earlier call (``samples-*.npy``) and scores them again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import machine_description, markdown_table, publish
from polyscale.metrics.spectrum import histogram_error, spectrum_error
from polyscale.pipelines.datasets import build_dataset
from polyscale.pipelines.evaluate import stack_dataset
from polyscale.pipelines.finetune import finetune
from polyscale.pipelines.sample import generate, load_denoiser, resolve_checkpoint, resolve_sampler
from polyscale.pipelines.train import make_loss
from polyscale.training.lora import ADAPTER_WEIGHTS, AdapterConfig, add_lora, apply_adapter

BASE = "texture2d"


def train_both(args, out: Path) -> dict[str, dict]:
    """Fine-tune the base with a LoRA adapter and with every weight; what each run measured."""
    data = ["data.kind=texture", f"data.image={args.texture}", "train.progress=false"]
    runs = {}
    for name, lora in (("LoRA", AdapterConfig(rank=args.rank)), ("full", None)):
        run = out / name.lower()
        record = run / "record.json"
        if args.reuse and record.is_file():
            runs[name] = json.loads(record.read_text())
            continue
        t0 = time.perf_counter()
        result = finetune(BASE, run, lora=lora, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                          overrides=data, resume=False)  # fmt: skip
        saved = run / "adapter" / ADAPTER_WEIGHTS if lora is not None else run / "model" / "model.safetensors"
        runs[name] = {
            "run": str(run), "trainable": result.parameters.trainable, "total": result.parameters.total,
            "saved_bytes": saved.stat().st_size, "train_s": result.train.wall_time,
            "wall_s": time.perf_counter() - t0, "final_loss": result.train.final_loss,
        }  # fmt: skip
        record.write_text(json.dumps(runs[name]))
    return runs


REPEATS = 7  # timed optimizer steps of each method


def step_seconds(batch: torch.Tensor, *, rank: int, lr: float) -> dict[str, float]:
    """Median CPU seconds of this process (``time.process_time``: what the step computes, whatever else the
    machine runs) of one optimizer step (forward, backward, AdamW) on ``batch`` ``(B, C, H, W)``, LoRA and full
    fine-tuning timed alternately."""
    base, cfg, _ = load_denoiser(BASE)
    loss_fn = make_loss(cfg)
    models = {"LoRA": base.train(), "full": load_denoiser(BASE)[0].train().requires_grad_(True)}
    add_lora(models["LoRA"].net, AdapterConfig(rank=rank), seed=0)
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
        for name, m in models.items()
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(REPEATS + 1):  # round 0 warms up
        for name, model in models.items():
            t0 = time.process_time()
            loss_fn(model, batch, generator=torch.Generator().manual_seed(i)).mean().backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if i:
                times[name].append(time.process_time() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def denoisers(out: Path) -> dict[str, torch.nn.Module]:
    """The base as shipped, the base with the LoRA adapter applied, and the fully fine-tuned model."""
    base, _, _ = load_denoiser(BASE)
    adapted, _, _ = load_denoiser(BASE)
    apply_adapter(adapted, out / "lora" / "adapter")
    full, _, _ = load_denoiser(out / "full" / "model")
    return {"base (no fine-tuning)": base, "LoRA": adapted, "full": full}


def draw(args, out: Path, shape: tuple[int, ...], sampler) -> dict[str, torch.Tensor]:
    """``args.num_samples`` samples of every model from the same noise (those of an earlier call with --reuse)."""
    fakes = {}
    for name, model in denoisers(out).items():
        kept = out / f"samples-{name.split(' ')[0].lower()}.npy"
        if args.reuse and kept.is_file():
            fakes[name] = torch.from_numpy(np.load(kept))
            continue
        generator = torch.Generator().manual_seed(0)
        fakes[name] = generate(
            model, (args.num_samples, *shape), sampler, generator=generator, progress=False
        )
        np.save(kept, fakes[name].numpy())
    return fakes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="runs/lora_finetune")
    parser.add_argument(
        "--texture", default="brick", help="the new texture: brick or grass (the base saw gravel)"
    )
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each fine-tuning run")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both runs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=64, help="samples of 32x32 per model")
    parser.add_argument(
        "--reuse", action="store_true", help="score the runs and samples of an earlier call again"
    )
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    runs = train_both(args, out)
    _, cfg, shape = load_denoiser(BASE)
    data = replace(cfg.data, kind="texture", image=args.texture, crop_size=shape[-1])
    # 1024 held-out crops of the new texture; the floor: as many training-band crops as there are samples
    real_test, _ = stack_dataset(build_dataset(replace(data, num_samples=1024), split="test"))
    real_train, _ = stack_dataset(build_dataset(replace(data, num_samples=args.num_samples), split="train"))
    sampler = resolve_sampler(cfg)
    fakes = draw(args, out, shape, sampler)
    per_step = step_seconds(real_train[: args.batch_size], rank=args.rank, lr=args.lr)
    base_bytes = (resolve_checkpoint(BASE) / "model.safetensors").stat().st_size
    rows = []
    for name, fake in fakes.items():
        run = runs.get(name)  # None for the base
        rows.append({
            "model": name,
            "trainable parameters": f"{run['trainable']:,}" if run else "-",
            "saved (bytes)": f"{run['saved_bytes']:,}" if run else f"{base_bytes:,}",
            "train wall (s)": f"{run['train_s']:.0f}" if run else "-",
            "CPU s / step": f"{per_step[name]:.2f}" if name in per_step else "-",
            "spectrum RMS log10 error": spectrum_error(fake, real_test),
            "histogram TV": histogram_error(fake, real_test),
        })  # fmt: skip
    rows.append({"model": "real vs real (floor)", "spectrum RMS log10 error": spectrum_error(real_train, real_test),
                 "histogram TV": histogram_error(real_train, real_test)})  # fmt: skip
    lora = runs["LoRA"]
    lines = [
        f"# LoRA vs full fine-tuning: {BASE} (gravel) -> {args.texture}",
        "",
        f"- {machine_description()}",
        f"- {args.steps} steps each, batch {args.batch_size}, lr {args.lr:g}, LoRA rank {args.rank} "
        f"(alpha = rank); base {base_bytes:,} bytes, {lora['total'] - lora['trainable']:,} parameters",
        f"- adapter / base size: {lora['saved_bytes'] / base_bytes:.4f}; trainable LoRA / full: "
        f"{lora['trainable'] / runs['full']['trainable']:.4f}",
        f"- {args.num_samples} samples of {shape[-1]}x{shape[-1]} per model ({sampler.name}, {sampler.steps} steps, "
        f"the same noise for every model), scored against {len(real_test)} held-out crops of the "
        f"{args.texture} photograph's top band; the floor: {len(real_train)} crops of its training band",
        "- train wall: each whole run, on a machine shared with other jobs (an upper bound); CPU s / step: the "
        f"median CPU time of {REPEATS} optimizer steps of each method at batch {args.batch_size}, timed alternately "
        "in one process",
        "",
        markdown_table(rows),
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"runs": runs, "rows": rows, "per_step": per_step}, indent=2))
    save_rows(out / "samples.png", {"held-out real": real_test, **fakes}, shape[-1])
    publish(text, args.out)


def save_rows(path: Path, rows: dict[str, torch.Tensor], edge: int, count: int = 10) -> None:
    """One row of ``count`` images per entry, labelled, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, *(len(x) for x in rows.values()))
    fig, axes = plt.subplots(len(rows), count, figsize=(count * 1.2, len(rows) * 1.35), squeeze=False)
    for r, (name, x) in enumerate(rows.items()):
        for c in range(count):
            ax = axes[r, c]
            ax.imshow(((x[c, 0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{edge}x{edge} crops and samples", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
