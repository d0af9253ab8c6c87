"""One U-Net for 1D, 2D and 3D grids, with multi-scale neighbourhood attention.

Fully convolutional with local attention: the same weights run at any input size whose spatial axes are
divisible by ``2 ** (len(channel_mults) - 1)``. Level ``l`` works at resolution ``size / 2**l``; attention
at a level uses that level's own window (``attention_kernel_sizes``), so coarse levels see a wider part of
the input per window. Layout (ADM-style): encoder of ``num_res_blocks`` residual blocks per level, each
followed by attention at attention levels, then a strided conv; middle block-attention-block; decoder of
``num_res_blocks + 1`` blocks per level fed by concatenated skips, then nearest upsampling + conv.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from polyscale.io import PretrainedMixin
from polyscale.nn.blocks import (
    NORMS,
    PADDING_MODES,
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    conv_nd,
    make_norm,
    zero_,
)
from polyscale.nn.embeddings import NoiseEmbedding
from polyscale.nn.text import START, CrossAttentionBlock, TextEncoderConfig, WordTextEncoder


@dataclass
class UNetConfig:
    """Constructor arguments of :class:`UNet` (one field per keyword argument)."""

    dims: int  # number of spatial axes: 1 (signals), 2 (images) or 3 (volumes)
    in_channels: int  # channels of the data
    out_channels: int | None = None  # channels predicted; None = in_channels
    base_channels: int = 64  # width of the stem; level l has base_channels * channel_mults[l] channels
    # one entry per resolution level; len - 1 = number of downsamplings (sizes must divide by 2**that)
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2  # residual blocks per level in the encoder (the decoder has one more)
    attention_levels: tuple[int, ...] = (1,)  # levels (0 = full resolution) that get neighbourhood attention
    # odd window edge at each attention level (multi-scale: one kernel per entry of attention_levels)
    attention_kernel_sizes: tuple[int, ...] = (7,)
    num_heads: int = 4  # attention heads (must divide the width of every attention level)
    num_classes: int | None = None  # class-conditional when set; label num_classes is the "null" class (CFG)
    dropout: float = 0.0  # dropout inside residual blocks (regularises small datasets)
    gradient_checkpointing: bool = False  # recompute blocks in backward: less activation memory, more compute
    emb_channels: int | None = None  # width of the noise/class embedding; None = 4 * base_channels
    norm_groups: int = 8  # GroupNorm groups (must divide base_channels and every level's width)
    # "zeros": borders are zero-padded; "circular": every axis wraps around (convolutions and attention windows),
    # for stationary data generated on a torus, so no position is ever near a border at any size
    padding_mode: str = "zeros"
    # "group": GroupNorm (statistics pooled over each sample's whole extent); "layer": LayerNorm over channels
    # at each position, so the network is strictly local and its output does not depend on the input's size
    norm: str = "group"
    # width of the context tokens that cross-attention reads (text: a CLIP encoder's hidden size); None = no
    # context unless text_encoder is set, whose width it then is
    context_dim: int | None = None
    # levels with cross-attention to the context; None = the attention levels (empty without a context)
    cross_attention_levels: tuple[int, ...] | None = None
    # a built-in word-level text encoder trained with the network (forward then takes `tokens`); None = none
    text_encoder: TextEncoderConfig | None = None


def context_width(cfg: UNetConfig) -> int | None:
    """Width of the context the network cross-attends to (None: it takes no context)."""
    if cfg.text_encoder is not None:
        return cfg.text_encoder.width
    return cfg.context_dim


def cross_levels(cfg: UNetConfig) -> tuple[int, ...]:
    """Levels that cross-attend to the context (none without one)."""
    if context_width(cfg) is None:
        return ()
    return cfg.attention_levels if cfg.cross_attention_levels is None else tuple(cfg.cross_attention_levels)


def _validate(cfg: UNetConfig) -> None:
    """Raise ValueError naming the offending field, what it must be and what arrived."""
    if cfg.dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {cfg.dims}")
    if cfg.padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {cfg.padding_mode!r}")
    if cfg.norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {cfg.norm!r}")
    for name in ("in_channels", "base_channels", "num_res_blocks", "num_heads", "norm_groups"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("out_channels", "emb_channels", "num_classes"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {getattr(cfg, name)}")
    if not cfg.channel_mults or min(cfg.channel_mults) < 1:
        raise ValueError(f"channel_mults must be a non-empty tuple of ints >= 1, got {cfg.channel_mults}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if len(cfg.attention_levels) != len(cfg.attention_kernel_sizes):
        raise ValueError(
            f"attention_levels {cfg.attention_levels} and attention_kernel_sizes "
            f"{cfg.attention_kernel_sizes} must have the same length (one kernel size per attention level)"
        )
    if len(set(cfg.attention_levels)) != len(cfg.attention_levels):
        raise ValueError(f"attention_levels must be distinct, got {cfg.attention_levels}")
    for level, kernel in zip(cfg.attention_levels, cfg.attention_kernel_sizes, strict=True):
        if not 0 <= level < len(cfg.channel_mults):
            raise ValueError(f"attention level {level} is out of range 0..{len(cfg.channel_mults) - 1}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"attention kernel size at level {level} must be odd and >= 1, got {kernel}")
        width = cfg.base_channels * cfg.channel_mults[level]
        if width % cfg.num_heads:
            raise ValueError(
                f"width {width} of attention level {level} is not divisible by num_heads={cfg.num_heads}"
            )
    text = cfg.text_encoder
    if text is not None and cfg.context_dim is not None and cfg.context_dim != text.width:
        raise ValueError(
            f"context_dim={cfg.context_dim} differs from text_encoder.width={text.width}; the built-in text "
            "encoder's tokens are the context, so leave context_dim unset"
        )
    if cfg.context_dim is not None and cfg.context_dim < 1:
        raise ValueError(f"context_dim must be >= 1 or None, got {cfg.context_dim}")
    if cfg.cross_attention_levels and context_width(cfg) is None:
        raise ValueError(
            f"cross_attention_levels={cfg.cross_attention_levels} needs a context: set context_dim or "
            "text_encoder"
        )
    for level in cross_levels(cfg):
        if not 0 <= level < len(cfg.channel_mults):
            raise ValueError(f"cross-attention level {level} is out of range 0..{len(cfg.channel_mults) - 1}")
        width = cfg.base_channels * cfg.channel_mults[level]
        if width % cfg.num_heads:
            raise ValueError(
                f"width {width} of cross-attention level {level} is not divisible by num_heads={cfg.num_heads}"
            )
    if context_width(cfg) is not None and not cross_levels(cfg):
        raise ValueError("a context (context_dim or text_encoder) needs at least one cross-attention level")
    for width in sorted({cfg.base_channels, *(cfg.base_channels * m for m in cfg.channel_mults)}):
        if width % cfg.norm_groups:
            raise ValueError(f"channel width {width} is not divisible by norm_groups={cfg.norm_groups}")


class UNet(PretrainedMixin, nn.Module):
    """N-D U-Net: ``forward(x (B, C_in, *S), c_noise (B,) | (), class_labels (B,) | None) -> (B, C_out, *S)``.

    Conditioning: sinusoidal features of ``c_noise`` through an MLP, plus a learned class embedding when
    ``num_classes`` is set; the sum modulates every residual block (scale and shift after its second norm).
    Labels run over ``0 .. num_classes``: index ``num_classes`` is the extra "null" class that classifier-free
    guidance trains with (the trainer replaces labels by it with some probability) and samples with.
    The final conv, every residual block's last conv and every attention output projection are
    zero-initialised, so a new network outputs exactly zero and each block starts as the identity.
    """

    config_class = UNetConfig

    def __init__(
        self,
        *,
        dims: int,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (1,),
        attention_kernel_sizes: tuple[int, ...] = (7,),
        num_heads: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        emb_channels: int | None = None,
        norm_groups: int = 8,
        padding_mode: str = "zeros",
        norm: str = "group",
        context_dim: int | None = None,
        cross_attention_levels: tuple[int, ...] | None = None,
        text_encoder: TextEncoderConfig | dict | None = None,
    ) -> None:
        super().__init__()
        if isinstance(text_encoder, dict):
            text_encoder = TextEncoderConfig(**text_encoder)
        if text_encoder is not None:
            text_encoder = TextEncoderConfig(
                **{**asdict(text_encoder), "vocabulary": tuple(text_encoder.vocabulary)}
            )
        cfg = UNetConfig(
            dims=dims,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            channel_mults=tuple(channel_mults),  # tuples whatever arrives (JSON/YAML give lists)
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            attention_kernel_sizes=tuple(attention_kernel_sizes),
            num_heads=num_heads,
            num_classes=num_classes,
            dropout=dropout,
            gradient_checkpointing=gradient_checkpointing,
            emb_channels=emb_channels,
            norm_groups=norm_groups,
            padding_mode=padding_mode,
            norm=norm,
            context_dim=context_dim,
            cross_attention_levels=None if cross_attention_levels is None else tuple(cross_attention_levels),
            text_encoder=text_encoder,
        )
        _validate(cfg)
        self.config = cfg
        emb = emb_channels or 4 * base_channels
        kernels = dict(zip(cfg.attention_levels, cfg.attention_kernel_sizes, strict=True))
        widths = [base_channels * m for m in cfg.channel_mults]
        deepest = len(widths) - 1

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(
                dims,
                cin,
                cout,
                emb,
                dropout=dropout,
                groups=norm_groups,
                padding_mode=padding_mode,
                norm=norm,
            )

        def attention(level: int) -> list[nn.Module]:
            if level not in kernels:
                return cross(level)
            kernel, width = kernels[level], widths[level]
            block = AttentionBlock(
                dims,
                width,
                kernel_size=kernel,
                num_heads=num_heads,
                groups=norm_groups,
                periodic=padding_mode == "circular",
                norm=norm,
            )
            blocks: list[nn.Module] = [block]
            return blocks + cross(level)

        def cross(level: int) -> list[nn.Module]:
            if level not in crossing:
                return []
            width = widths[level]
            return [
                CrossAttentionBlock(
                    width, ctx_dim, num_heads=num_heads, norm=make_norm(norm, norm_groups, width)
                )
            ]

        ctx_dim = context_width(cfg) or 0
        crossing = set(cross_levels(cfg))
        self.text_encoder = WordTextEncoder(**asdict(text_encoder)) if text_encoder is not None else None
        self.noise_embed = NoiseEmbedding(base_channels, emb)
        self.class_embed = nn.Embedding(num_classes + 1, emb) if num_classes is not None else None  # +1: null
        self.conv_in = conv_nd(dims, in_channels, base_channels, padding_mode=padding_mode)
        # Encoder: self.down[i] is one stage; every stage's output is kept as a skip for the decoder.
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels  # channel count of every skip, conv_in's output first
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([res(ch, width), *attention(level)]))
                ch = width
                skips.append(ch)
            if level < deepest:
                self.down.append(nn.ModuleList([Downsample(dims, ch, padding_mode=padding_mode)]))
                skips.append(ch)
        self.mid = nn.ModuleList([res(ch, ch), *attention(deepest), res(ch, ch)])
        # Decoder: each stage concatenates the matching skip (last in, first out) before its residual block.
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                stage = [res(ch + skips.pop(), widths[level]), *attention(level)]
                ch = widths[level]
                if level > 0 and i == num_res_blocks:
                    stage.append(Upsample(dims, ch, padding_mode=padding_mode))
                self.up.append(nn.ModuleList(stage))
        self.norm_out = make_norm(norm, norm_groups, ch)
        self.conv_out = zero_(conv_nd(dims, ch, out_channels or in_channels, padding_mode=padding_mode))

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        """Build a network from its config (``UNet.from_config(net.config)`` is an untrained twin)."""
        return cls(**asdict(config))

    @property
    def size_multiple(self) -> int:
        """Every spatial axis of the input must be a multiple of this (``2 ** number of downsamplings``)."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def _check_inputs(self, x: Tensor, c_noise: Tensor | float, class_labels: Tensor | None) -> Tensor:
        """Validate the inputs; return ``c_noise`` as a ``(B,)`` tensor on ``x``'s device."""
        cfg, batch = self.config, x.shape[0]
        if x.ndim != cfg.dims + 2:
            axes = ", ".join(f"S{i}" for i in range(cfg.dims))
            raise ValueError(
                f"expected input of rank {cfg.dims + 2} (B, C, {axes}) for dims={cfg.dims}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"expected {cfg.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if any(s % self.size_multiple for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not divisible by {self.size_multiple} "
                f"(= 2**{len(cfg.channel_mults) - 1} downsamplings); pad or crop the input"
            )
        c_noise = torch.as_tensor(c_noise, device=x.device)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(batch)
        if c_noise.shape != (batch,):
            raise ValueError(
                f"c_noise must be a scalar or of shape ({batch},), got shape {tuple(c_noise.shape)}"
            )
        if cfg.num_classes is None:
            if class_labels is not None:
                raise ValueError(
                    f"the model is unconditional (num_classes=None) but class_labels of shape "
                    f"{tuple(class_labels.shape)} were given"
                )
            return c_noise
        if class_labels is None:
            raise ValueError(
                f"class_labels of shape ({batch},) are required (num_classes={cfg.num_classes}), got None"
            )
        if class_labels.shape != (batch,) or class_labels.dtype != torch.long:
            raise ValueError(
                f"class_labels must be int64 of shape ({batch},), got {class_labels.dtype} of shape "
                f"{tuple(class_labels.shape)}"
            )
        # Range check on CPU only: on an accelerator it would force a host sync every step (the embedding
        # lookup still fails there, with a device-side assertion).
        if class_labels.device.type == "cpu" and class_labels.numel():
            low, high = int(class_labels.min()), int(class_labels.max())
            if low < 0 or high > cfg.num_classes:
                raise ValueError(
                    f"class_labels must lie in 0..{cfg.num_classes} ({cfg.num_classes} = null class), "
                    f"got values in {low}..{high}"
                )
        return c_noise

    @property
    def condition_keys(self) -> tuple[str, ...]:
        """The keyword arguments that condition this network: ``class_labels``, and ``tokens`` (built-in text
        encoder) or ``context`` and ``context_mask`` (an external encoder's hidden states)."""
        keys = ("class_labels",) if self.config.num_classes is not None else ()
        if self.text_encoder is not None:
            return (*keys, "tokens")
        if self.config.context_dim is not None:
            return (*keys, "context", "context_mask")
        return keys

    def null_condition(self, cond: dict[str, Tensor]) -> dict[str, Tensor]:
        """The unconditional counterpart of ``cond`` for the same batch: labels become the null class
        ``num_classes``, tokens the empty prompt (the start token alone), an external context zeros with one
        visible token. Classifier-free guidance trains with it (conditioning dropout) and samples with it."""
        out = dict(cond)
        if "class_labels" in cond and self.config.num_classes is not None:
            out["class_labels"] = torch.full_like(cond["class_labels"], self.config.num_classes)
        if "tokens" in cond:
            tokens = torch.zeros_like(cond["tokens"])  # (B, L) padding
            tokens[:, 0] = START
            out["tokens"] = tokens
        if "context" in cond:
            out["context"] = torch.zeros_like(cond["context"])
            mask = torch.zeros(cond["context"].shape[:2], dtype=torch.bool, device=cond["context"].device)
            mask[:, 0] = True
            out["context_mask"] = mask
        return out

    def encode_prompts(self, prompts: list[str]) -> dict[str, Tensor]:
        """The keyword arguments for ``prompts`` when the network has its own text encoder (``{"tokens"}``)."""
        if self.text_encoder is None:
            raise ValueError(
                "this model has no built-in text encoder: "
                + (
                    "it takes a context from an external encoder (CLIP)"
                    if self.config.context_dim
                    else "it was not trained with text (no prompt can condition it)"
                )
            )
        return self.text_encoder.encode(prompts)

    def _context(
        self, batch: int, tokens: Tensor | None, context: Tensor | None, context_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None] | None:
        """The context ``(B, L, D)`` and mask ``(B, L)`` that cross-attention reads (None: no context)."""
        cfg = self.config
        if self.text_encoder is not None:
            if tokens is None or context is not None:
                raise ValueError(
                    f"this model encodes its own prompts: pass tokens (B={batch}, L) from encode_prompts, got "
                    f"tokens={'None' if tokens is None else tuple(tokens.shape)}, context="
                    f"{'None' if context is None else tuple(context.shape)}"
                )
            if tokens.shape[0] != batch:
                raise ValueError(f"tokens must have batch size {batch}, got shape {tuple(tokens.shape)}")
            return self.text_encoder(tokens)
        if tokens is not None:
            raise ValueError("tokens were given but this model has no built-in text encoder")
        if cfg.context_dim is None:
            if context is not None:
                raise ValueError(
                    f"the model takes no context (context_dim=None) but a context of shape "
                    f"{tuple(context.shape)} was given"
                )
            return None
        if (
            context is None
            or context.ndim != 3
            or context.shape[0] != batch
            or context.shape[2] != cfg.context_dim
        ):
            got = "None" if context is None else f"shape {tuple(context.shape)}"
            raise ValueError(f"context must be of shape ({batch}, L, {cfg.context_dim}), got {got}")
        if context_mask is not None and (
            context_mask.shape != context.shape[:2] or context_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"context_mask must be bool of shape {tuple(context.shape[:2])}, got {context_mask.dtype} of "
                f"shape {tuple(context_mask.shape)}"
            )
        return context, context_mask

    def _run(
        self, block: nn.Module, h: Tensor, emb: Tensor, ctx: tuple[Tensor, Tensor | None] | None
    ) -> Tensor:
        args = (h, *ctx) if isinstance(block, CrossAttentionBlock) and ctx is not None else (h, emb)
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)  # activations recomputed in backward
        return block(*args)

    def forward(
        self,
        x: Tensor,
        c_noise: Tensor | float,
        class_labels: Tensor | None = None,
        *,
        tokens: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """Predict from a noisy grid.

        Args:
            x: ``(B, in_channels, *spatial)`` with ``dims`` spatial axes, each divisible by ``size_multiple``.
            c_noise: ``(B,)`` or scalar noise-conditioning value (e.g. EDM's ``log(sigma) / 4``).
            class_labels: ``(B,)`` int64 in ``0 .. num_classes`` (``num_classes`` = null class); required iff
                the model was built with ``num_classes``.
            tokens: ``(B, L)`` int64 prompt ids (:meth:`encode_prompts`); required iff the model has a
                built-in text encoder.
            context: ``(B, L, context_dim)`` an external encoder's hidden states, with ``context_mask``
                ``(B, L)`` bool (True = a real token; None = all real); required iff ``context_dim`` is set
                without a built-in encoder.

        Returns:
            ``(B, out_channels, *spatial)``.
        """
        c_noise = self._check_inputs(x, c_noise, class_labels)
        ctx = self._context(x.shape[0], tokens, context, context_mask)
        emb = self.noise_embed(c_noise)  # (B, E)
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels)  # (B, E)
        emb = F.silu(emb)
        h = self.conv_in(x)  # (B, base_channels, *S)
        skips = [h]
        for stage in self.down:
            for block in cast(nn.ModuleList, stage):  # every stage is a ModuleList (see __init__)
                h = self._run(block, h, emb, ctx)
            skips.append(h)
        for block in self.mid:
            h = self._run(block, h, emb, ctx)
        for stage in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, *S_level)
            for block in cast(nn.ModuleList, stage):  # every stage is a ModuleList (see __init__)
                h = self._run(block, h, emb, ctx)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, *S)
