"""Depth growth inside a Hugging Face ``transformers.Trainer`` (optional extra
``pip install polyscale[hf]``).

- :class:`GPTForTrainer` wraps a :class:`polyscale.nn.gpt.GPT` in the interface the Trainer expects:
  ``forward(input_ids, labels=None) -> {"loss", "logits"}``. Labels are the next-character targets, already
  shifted, as :class:`CharWindows` makes them. It remembers the last training loss for the callback.
- :class:`CharWindows` is a map-style dataset of random training windows of a
  :class:`polyscale.data.text.CharCorpus`, ``{"input_ids": (T,), "labels": (T,)}``, the same for a given
  index and seed.
- :class:`TrainerDepthGrowth` is a ``TrainerCallback``. After every optimizer step it runs our
  :class:`polyscale.training.depth_growth.DepthGrowthCallback` on the live model and the Trainer's **live
  optimizer**. A new block's parameters join the optimizer's existing parameter groups, so the Trainer's
  learning-rate scheduler drives them too. Their Adam state starts empty, and every old parameter keeps its
  moments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import TrainerCallback

from polyscale.data.text import CharCorpus
from polyscale.nn.gpt import GPT
from polyscale.training.depth_growth import DepthGrowthCallback


class GPTForTrainer(nn.Module):
    """``transformers.Trainer``-facing wrapper of a :class:`GPT` (module docstring)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt
        self.last_loss: float | None = None

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits, loss = self.gpt(input_ids, labels)
        if loss is not None and self.training:
            self.last_loss = float(loss.detach())
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


class CharWindows(Dataset):
    """``length`` random windows of ``block_size`` characters from a split of ``corpus``; item ``i`` is a
    pure function of ``(seed, i)``."""

    def __init__(
        self, corpus: CharCorpus, block_size: int, length: int, *, split: str = "train", seed: int = 0
    ):
        self.corpus, self.block_size, self.length, self.split, self.seed = (
            corpus,
            block_size,
            length,
            split,
            seed,
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x, y = self.corpus.batch(
            self.split, 1, self.block_size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        )
        return {"input_ids": x[0], "labels": y[0]}


class TrainerDepthGrowth(TrainerCallback):
    """Runs ``growth`` (a :class:`DepthGrowthCallback`) after each Trainer step on the live optimizer."""

    def __init__(self, growth: DepthGrowthCallback) -> None:
        self.growth = growth

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError("the Trainer did not pass the model and the optimizer to the callback")
        wrapper = getattr(model, "module", model)  # under DDP the Trainer hands over the wrapped module
        if not isinstance(wrapper, GPTForTrainer):
            raise TypeError(f"TrainerDepthGrowth needs a GPTForTrainer model, got {type(wrapper).__name__}")
        if wrapper.last_loss is None:
            return control
        live = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self.growth(state.global_step, wrapper.gpt, live, wrapper.last_loss)
        return control
