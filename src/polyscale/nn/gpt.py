"""A small GPT (decoder-only transformer, pre-LayerNorm) whose depth can grow during training.

Layout (the GPT-2 family, as nanoGPT trains it):

- token embedding ``wte`` plus learned position embedding ``wpe``, dropout;
- ``n_layer`` blocks, each ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))`` (pre-LayerNorm residual blocks;
  causal multi-head self-attention through ``F.scaled_dot_product_attention``, a 4x GELU MLP);
- a final LayerNorm and a language-model head tied to ``wte``.

Initialisation: normal(0, 0.02) for linear and embedding weights, zeros for biases, and the two residual
output projections (``attn.c_proj``, ``mlp.c_proj``) at std ``0.02 / sqrt(2 * n_layer)`` so the residual
stream's variance does not grow with depth.

**Layer insertion.** :meth:`GPT.insert_layer` puts a new block at any position, updates ``config.n_layer``
with it and returns the new parameters, so the training loop can add them to the optimizer (fresh state)
while every existing parameter keeps its own. The new block's weights come from a state dict (what
:mod:`polyscale.growth.depth_grower` builds: geometric extrapolation, a copy, a zero-residual block) or, with
none, from the initialisation above. A block whose two output projections are zero is the identity on the
residual stream, so inserting one leaves the model's outputs unchanged exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polyscale.io import PretrainedMixin


@dataclass
class GPTConfig:
    """The model's shape; equal to :class:`GPT`'s constructor arguments."""

    vocab_size: int = 65  # characters of the corpus (tinyshakespeare has 65)
    block_size: int = 128  # longest context the position embedding covers
    n_layer: int = 2  # transformer blocks; insert_layer changes it
    n_head: int = 4  # attention heads; n_embd must divide by it
    n_embd: int = 128  # width of the residual stream
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in the linear layers and LayerNorms (GPT-2 has them)

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(B, T, C)  # heads back side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm residual block."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


RESIDUAL_OUTPUTS = ("attn.c_proj", "mlp.c_proj")  # a block is the identity when both are zero


class GPT(PretrainedMixin, nn.Module):
    """The model of the module docstring. ``forward(idx (B, T) long, targets=None) -> (logits (B, T, V),
    loss or None)``; the loss is the mean cross-entropy over all ``B * T`` positions. Saved and loaded with
    ``save_pretrained(dir)`` / ``GPT.from_pretrained(dir)`` (:class:`polyscale.io.PretrainedMixin`)."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig | None = None, **kwargs) -> None:
        super().__init__()
        cfg = config if config is not None else GPTConfig(**kwargs)
        if config is not None and kwargs:
            raise ValueError(f"pass a GPTConfig or keyword arguments, not both (got {sorted(kwargs)})")
        cfg.validate()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        blocks = [Block(cfg) for _ in range(cfg.n_layer)]  # typed: iterating the ModuleList gives nn.Module
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self.init_weights)
        for block in blocks:
            self._init_residual_outputs(block)

    def init_weights(self, module: nn.Module, generator: torch.Generator | None = None) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=generator)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _init_residual_outputs(self, block: Block, generator: torch.Generator | None = None) -> None:
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name in RESIDUAL_OUTPUTS:
            layer = block.get_submodule(name)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{name} of a GPT block is a {type(layer).__name__}, expected nn.Linear")
            nn.init.normal_(layer.weight, mean=0.0, std=std, generator=generator)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if idx.ndim != 2 or idx.dtype != torch.long:
            raise ValueError(
                f"idx must be (batch, time) token ids of dtype long, got {tuple(idx.shape)} {idx.dtype}"
            )
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``idx (B, T)`` by ``max_new_tokens`` sampled tokens -> ``(B, T + max_new_tokens)``; the
        context is cut to the last ``block_size`` tokens."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            probs = F.softmax(logits[:, -1] / temperature, dim=-1)  # (B, vocab)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

    def insert_layer(
        self,
        index: int,
        state: dict[str, Tensor] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> list[nn.Parameter]:
        """Insert a block so that it becomes ``blocks[index]`` (``0 <= index <= n_layer``; ``n_layer``
        appends after the last one) and update ``config.n_layer``. ``state`` is the new block's state dict
        (the keys of :meth:`Block.state_dict`); without one it is initialised like a block of a fresh model
        of the new depth. Returns the new block's parameters, for the optimizer."""
        if not 0 <= index <= len(self.blocks):
            raise ValueError(f"index must be in [0, {len(self.blocks)}], got {index}")
        ref = self.wte.weight
        block = Block(self.config).to(device=ref.device, dtype=ref.dtype)
        self.config.n_layer += 1
        if state is None:
            block.apply(lambda m: self.init_weights(m, generator))
            self._init_residual_outputs(block, generator)
        else:
            expected = set(block.state_dict())
            if set(state) != expected:
                self.config.n_layer -= 1
                raise ValueError(f"state must have the block's keys {sorted(expected)}, got {sorted(state)}")
            block.load_state_dict({k: v.to(device=ref.device, dtype=ref.dtype) for k, v in state.items()})
        block.train(self.training)
        self.blocks.insert(index, block)
        return list(block.parameters())

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; the position embedding is left out by default (the tied token embedding counts
        once, as the head's weights)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: ``6 N + 12 n_layer n_embd T``. ``N`` is the
        non-embedding parameter count; the second term is attention's ``QK^T`` and ``AV`` over a context of
        ``T`` (default ``block_size``); the estimate of Kaplan et al. (2020) that nanoGPT's MFU uses."""
        cfg, T = self.config, seq_len if seq_len is not None else self.config.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T
