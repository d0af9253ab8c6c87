"""Tiny training fixtures, and a script for the multi-process test of ``polyscale.training.train``.

Run as ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/dist_train_script.py OUT``
(two CPU processes, gloo): every rank trains the same tiny denoiser and writes ``OUT/rank{r}.safetensors``
(its final parameters) and ``OUT/rank{r}.json`` (step, process count, final loss). An optional second
argument sets ``grad_accum_steps``. ``tests/test_training.py`` imports the fixtures (model, dataset, loss)
from here so both sides train the very same thing.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

NUM_CLASSES = 3


class TinyDenoiser(nn.Module):
    """Two 1D convolutions with an optional dropout and class embedding: ``(B, 1, L) -> (B, 1, L)``."""

    def __init__(self, *, hidden: int = 8, dropout: float = 0.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(1, hidden, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.conv_out = nn.Conv1d(hidden, 1, 3, padding=1)
        # one extra row for the "no class" label used by classifier-free guidance
        self.embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None

    def forward(self, x: Tensor, class_labels: Tensor | None = None) -> Tensor:
        h = self.conv_in(x)  # (B, hidden, L)
        if self.embed is not None and class_labels is not None:
            h = h + self.embed(class_labels)[:, :, None]  # (B, hidden, 1) broadcast over L
        return self.conv_out(self.drop(torch.nn.functional.silu(h)))


def make_model(seed: int, **kwargs) -> TinyDenoiser:
    """A model initialised from ``seed`` (test helper: the global RNG is forked, not disturbed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyDenoiser(**kwargs)


class DictDataset(Dataset):
    """``{"x": (1, L)}`` items (plus ``class_labels`` when given), like the package's grid datasets."""

    def __init__(self, x: Tensor, labels: Tensor | None = None) -> None:
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"x": self.x[index]}
        if self.labels is not None:
            item["class_labels"] = self.labels[index]
        return item


def make_dataset(n: int = 24, length: int = 16, *, labels: bool = False) -> DictDataset:
    """Smooth sinusoids with random phase and one of ``NUM_CLASSES`` frequencies: easy to denoise."""
    g = torch.Generator().manual_seed(1234)
    cls = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    t = torch.linspace(0, 2 * math.pi, length)
    x = torch.sin((cls[:, None] + 1) * t + phase)[:, None, :]  # (n, 1, length)
    return DictDataset(x, cls if labels else None)


def denoise_loss(model: nn.Module, x0: Tensor, *, generator: torch.Generator | None = None, **cond) -> Tensor:
    """Per-sample MSE of reconstructing ``x0`` from ``x0 + 0.5 * noise``: ``(B, 1, L) -> (B,)``."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return (model(x0 + 0.5 * noise, **cond).float() - x0).square().flatten(1).mean(1)


def main(out_dir: Path, grad_accum_steps: int) -> None:
    from safetensors.torch import save_file

    from polyscale.training import TrainConfig, train

    cfg = TrainConfig(
        max_steps=5,
        batch_size=8,
        grad_accum_steps=grad_accum_steps,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=5,
        log_every=1,
        seed=7,
        output_dir=str(out_dir / "run"),
        progress=False,
    )
    model = make_model(0)
    result = train(model, denoise_loss, make_dataset(), cfg)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"rank{rank}.safetensors")
    )
    info = {"step": result.step, "num_processes": world, "final_loss": result.final_loss}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
