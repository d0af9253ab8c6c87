"""Text conditioning: a small word-level text encoder trained with the U-Net, and the cross-attention block
through which any context sequence (its tokens, or a CLIP encoder's hidden states) reaches the grid.

The built-in encoder exists so that a text-conditioned model works offline and fits in a few megabytes: a
vocabulary of whole words (the words of the training captions), a learned position embedding and a few
pre-norm transformer layers. Token 0 is padding, 1 starts every prompt (so even the empty prompt, which
classifier-free guidance uses as "no text", has one real token) and 2 stands for a word outside the
vocabulary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

PAD, START, UNKNOWN = 0, 1, 2
SPECIAL_TOKENS = 3  # ids below this are not words
_WORD = re.compile(r"[a-z0-9]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words and numerals of ``text`` (punctuation dropped): ``"A 7, drawn!"`` -> ``["a", "7",
    "drawn"]``."""
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a str, got {type(text).__name__} {text!r}")
    return _WORD.findall(text.lower())


@runtime_checkable
class PromptEncoder(Protocol):
    """What turns prompts into the keyword arguments a text-conditioned network takes.

    ``encode(prompts)`` returns ``{"tokens": (B, L) int64}`` for a network with its own text encoder, or
    ``{"context": (B, L, D) float, "context_mask": (B, L) bool}`` (True = a real token) for a frozen external
    encoder such as CLIP; ``context_dim`` is ``D``."""

    @property
    def context_dim(self) -> int: ...

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]: ...


@dataclass
class TextEncoderConfig:
    """Constructor arguments of :class:`WordTextEncoder`."""

    vocabulary: tuple[str, ...] = ()  # the words it knows (lower case); others become the unknown token
    width: int = 64  # width of every token's vector (the U-Net's context_dim)
    num_layers: int = 2  # transformer layers over the prompt
    num_heads: int = 4  # attention heads per layer (must divide width)
    max_length: int = 16  # tokens kept per prompt, the start token included (longer prompts are cut)


class WordTextEncoder(nn.Module):
    """Word-level transformer text encoder: ``forward(tokens (B, L)) -> (context (B, L, width), mask (B, L))``.

    :meth:`tokenize` maps prompts to ids with :func:`split_words` and the vocabulary (unknown words share one
    id, so a rephrased prompt still carries the words it has in common with the training captions)."""

    def __init__(
        self,
        *,
        vocabulary: Sequence[str] = (),
        width: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        max_length: int = 16,
    ) -> None:
        super().__init__()
        words = tuple(vocabulary)
        if len(set(words)) != len(words) or any(split_words(w) != [w] for w in words):
            raise ValueError(
                f"vocabulary must hold distinct lower-case words or numerals, got {list(words)[:20]}"
            )
        for name, value in (("width", width), ("num_heads", num_heads), ("max_length", max_length)):
            if value < 1:
                raise ValueError(f"text encoder {name} must be >= 1, got {value}")
        if num_layers < 0 or width % num_heads:
            raise ValueError(
                f"text encoder needs num_layers >= 0 and width divisible by num_heads, got num_layers="
                f"{num_layers}, width={width}, num_heads={num_heads}"
            )
        self.config = TextEncoderConfig(words, width, num_layers, num_heads, max_length)
        self.index = {w: i + SPECIAL_TOKENS for i, w in enumerate(words)}
        self.token_embed = nn.Embedding(len(words) + SPECIAL_TOKENS, width, padding_idx=PAD)
        self.position_embed = nn.Parameter(torch.randn(max_length, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, num_heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(width)

    @property
    def context_dim(self) -> int:
        return self.config.width

    def tokenize(self, prompts: Sequence[str], *, device: torch.device | str | None = None) -> Tensor:
        """``(B, max_length)`` int64 ids: the start token, the prompt's words (cut to fit), then padding."""
        if isinstance(prompts, str):
            raise ValueError(f"prompts must be a list of strings, got the string {prompts!r}")
        length = self.config.max_length
        out = torch.full((len(prompts), length), PAD, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [START] + [self.index.get(w, UNKNOWN) for w in split_words(prompt)]
            out[row, : min(len(ids), length)] = torch.tensor(ids[:length])
        return out.to(device) if device is not None else out

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The network's keyword arguments for ``prompts``: ``{"tokens": (B, max_length)}``."""
        return {"tokens": self.tokenize(prompts, device=self.position_embed.device)}

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens`` ``(B, L)`` int64, ``L <= max_length``, each row starting with the start token ->
        context ``(B, L, width)`` and its mask ``(B, L)`` (True = a real token)."""
        if tokens.ndim != 2 or tokens.dtype != torch.long or tokens.shape[1] > self.config.max_length:
            raise ValueError(
                f"tokens must be int64 of shape (B, L) with L <= {self.config.max_length}, got "
                f"{tokens.dtype} of shape {tuple(tokens.shape)}"
            )
        mask = tokens != PAD  # (B, L)
        h = self.token_embed(tokens) + self.position_embed[: tokens.shape[1]]  # (B, L, W)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual cross-attention from grid positions to a context sequence:
    ``h + proj(attention(q = norm(h), k = v = context))``, ``(B, C, *S) -> (B, C, *S)``.

    Every position attends to all ``L`` context tokens (a prompt is short), masked where the context is
    padding. The output projection is zero-initialised, so a new block is the identity."""

    def __init__(self, channels: int, context_dim: int, *, num_heads: int, norm: nn.Module) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = norm
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        """``h`` ``(B, C, *S)``, ``context`` ``(B, L, D)``, ``mask`` ``(B, L)`` bool (True = attend)."""
        b, c, *spatial = h.shape
        heads = self.num_heads
        q = self.q(self.norm(h).flatten(2).transpose(1, 2))  # (B, N, C), N = prod(S)
        k, v = self.kv(context.to(q.dtype)).chunk(2, dim=-1)  # 2 x (B, L, C)
        q, k, v = (t.unflatten(-1, (heads, c // heads)).transpose(1, 2) for t in (q, k, v))  # (B, H, *, C/H)
        keep = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, N, C/H)
        out = self.proj(out.transpose(1, 2).flatten(2))  # (B, N, C)
        return h + out.transpose(1, 2).reshape(b, c, *spatial)  # (B, C, *S)


__all__ = [
    "PAD",
    "START",
    "UNKNOWN",
    "CrossAttentionBlock",
    "PromptEncoder",
    "TextEncoderConfig",
    "WordTextEncoder",
    "split_words",
]
