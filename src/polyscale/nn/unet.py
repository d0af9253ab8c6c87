"""One U-Net for 1D, 2D and 3D grids, with multi-scale neighbourhood attention.

Fully convolutional with local attention: the same weights run at any input size whose spatial axes are divisible
by ``2 ** (len(channel_mults) - 1)``. Level ``l`` works at resolution ``size / 2**l``; attention at a level uses that
level's own kernel size (``attention_kernel_sizes``), so coarse levels see a wider part of the input per window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from polyscale.nn.attention import NeighborhoodAttention
from polyscale.nn.embeddings import NoiseEmbedding


@dataclass
class UNetConfig:
    """Constructor arguments of :class:`UNet` (one field per keyword argument)."""

    dims: int  # number of spatial axes: 1 (signals), 2 (images) or 3 (volumes)
    in_channels: int  # channels of the data
    out_channels: int | None = None  # channels predicted; None = in_channels
    base_channels: int = 64  # width of the first level; level l has base_channels * channel_mults[l]
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level; len - 1 = number of downsamplings
    num_res_blocks: int = 2  # residual blocks per level (encoder; the decoder has one more)
    attention_levels: tuple[int, ...] = (1,)  # levels (0 = full resolution) that get neighbourhood attention
    attention_kernel_sizes: tuple[int, ...] = (7,)  # odd window size used at each attention level (multi-scale)
    num_heads: int = 4  # attention heads
    num_classes: int | None = None  # class-conditional when set; label num_classes is the "null" class (CFG)
    dropout: float = 0.0  # dropout inside residual blocks
    gradient_checkpointing: bool = False  # recompute blocks in backward to save activation memory
    emb_channels: int | None = None  # width of the noise/class embedding; None = 4 * base_channels
    norm_groups: int = 8  # GroupNorm groups (must divide every level's width)


def _conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Module:
    return getattr(nn, f"Conv{dims}d")(cin, cout, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift in between."""

    def __init__(self, dims: int, cin: int, cout: int, emb: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = _conv(dims, cin, cout)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(dims, cout, cout)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = _conv(dims, cin, cout, kernel=1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb(emb).unflatten(1, (2, -1)).unbind(1)  # (B, 2 * C) -> 2 x (B, C)
        view = (*scale.shape, *([1] * (x.ndim - 2)))  # (B, C, 1, ..., 1): per-channel, per-sample
        h = self.norm2(h) * (1 + scale.view(view)) + shift.view(view)
        h = self.conv2(self.dropout(nn.functional.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Pre-norm residual neighbourhood attention."""

    def __init__(self, dims: int, channels: int, *, kernel_size: int, num_heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = NeighborhoodAttention(channels, dims=dims, kernel_size=kernel_size, num_heads=num_heads)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return x + self.attn(self.norm(x))


class Downsample(nn.Module):
    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(dims, channels, channels, stride=2)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(dims, channels, channels)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


def _validate(cfg: UNetConfig) -> None:
    if cfg.dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {cfg.dims}")
    if cfg.in_channels < 1 or cfg.base_channels < 1 or not cfg.channel_mults or cfg.num_res_blocks < 1:
        raise ValueError(
            "in_channels, base_channels and num_res_blocks must be >= 1 and channel_mults non-empty, got "
            f"{cfg.in_channels}, {cfg.base_channels}, {cfg.num_res_blocks}, {cfg.channel_mults}"
        )
    if len(cfg.attention_levels) != len(cfg.attention_kernel_sizes):
        raise ValueError(
            f"attention_levels {cfg.attention_levels} and attention_kernel_sizes {cfg.attention_kernel_sizes} "
            "must have the same length (one kernel size per attention level)"
        )
    for level in cfg.attention_levels:
        if not 0 <= level < len(cfg.channel_mults):
            raise ValueError(f"attention level {level} is out of range 0..{len(cfg.channel_mults) - 1}")
    for width in {cfg.base_channels * m for m in cfg.channel_mults}:
        if width % cfg.norm_groups or (cfg.attention_levels and width % cfg.num_heads):
            raise ValueError(
                f"level width {width} must be divisible by norm_groups={cfg.norm_groups} and num_heads={cfg.num_heads}"
            )
    if cfg.num_classes is not None and cfg.num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 or None, got {cfg.num_classes}")


class UNet(nn.Module):
    """N-D U-Net ``forward(x (B, C_in, *S), c_noise (B,), class_labels (B,) | None) -> (B, C_out, *S)``."""

    config_class = UNetConfig

    def __init__(
        self, *, dims: int, in_channels: int, out_channels: int | None = None, base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2, attention_levels: tuple[int, ...] = (1,),
        attention_kernel_sizes: tuple[int, ...] = (7,), num_heads: int = 4, num_classes: int | None = None,
        dropout: float = 0.0, gradient_checkpointing: bool = False, emb_channels: int | None = None,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        cfg = UNetConfig(
            dims=dims, in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels), attention_kernel_sizes=tuple(attention_kernel_sizes),
            num_heads=num_heads, num_classes=num_classes, dropout=dropout,
            gradient_checkpointing=gradient_checkpointing, emb_channels=emb_channels, norm_groups=norm_groups,
        )
        _validate(cfg)
        self.config = cfg
        emb = emb_channels or 4 * base_channels
        kernels = dict(zip(cfg.attention_levels, cfg.attention_kernel_sizes, strict=True))
        self.noise_embed = NoiseEmbedding(base_channels, emb)
        # one extra label (num_classes) is the "null" class used for classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, emb) if num_classes is not None else None
        self.conv_in = _conv(dims, in_channels, base_channels)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(dims, cin, cout, emb, dropout=dropout, groups=norm_groups)

        def attention(level: int, ch: int) -> list[nn.Module]:
            if level not in kernels:
                return []
            return [AttentionBlock(dims, ch, kernel_size=kernels[level], num_heads=num_heads, groups=norm_groups)]

        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([block(ch, base_channels * mult), *attention(level, base_channels * mult)]))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(nn.ModuleList([Downsample(dims, ch)]))
                skips.append(ch)
        deepest = len(cfg.channel_mults) - 1
        self.mid = nn.ModuleList([block(ch, ch), *attention(deepest, ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mults))):
            width = base_channels * cfg.channel_mults[level]
            for i in range(num_res_blocks + 1):
                layers = [block(ch + skips.pop(), width), *attention(level, width)]
                ch = width
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(dims, ch))
                self.up.append(nn.ModuleList(layers))
        self.norm_out = nn.GroupNorm(norm_groups, ch)
        self.conv_out = _conv(dims, ch, out_channels or in_channels)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        return cls(**asdict(config))

    @property
    def size_multiple(self) -> int:
        """Every spatial axis of the input must be a multiple of this."""
        return 2 ** (len(self.config.channel_mults) - 1)

    def _check_inputs(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None) -> Tensor:
        cfg = self.config
        if x.ndim != cfg.dims + 2:
            raise ValueError(
                f"expected input of rank {cfg.dims + 2} (B, C, {', '.join('S' * cfg.dims)}) for dims={cfg.dims}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})")
        bad = [s for s in x.shape[2:] if s % self.size_multiple]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not divisible by {self.size_multiple} "
                f"(= 2**{len(cfg.channel_mults) - 1} downsamplings); pad or crop the input"
            )
        c_noise = torch.as_tensor(c_noise, device=x.device, dtype=torch.float32)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(x.shape[0])
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must be a scalar or of shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
        if (cfg.num_classes is None) != (class_labels is None):
            raise ValueError(
                "class_labels are required (num_classes is set)" if class_labels is None
                else "class_labels were given but the model is unconditional (num_classes=None)"
            )
        if class_labels is not None and (class_labels.shape != (x.shape[0],) or class_labels.dtype != torch.long):
            raise ValueError(
                f"class_labels must be int64 of shape ({x.shape[0]},), got {class_labels.dtype} "
                f"{tuple(class_labels.shape)}"
            )
        return c_noise

    def _run(self, layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, h, emb, use_reentrant=False)
        return layer(h, emb)

    def forward(self, x: Tensor, c_noise: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        c_noise = self._check_inputs(x, c_noise, class_labels)
        emb = self.noise_embed(c_noise)  # (B, E)
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels)
        emb = nn.functional.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, *S)
            for layer in layers:
                h = self._run(layer, h, emb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))
