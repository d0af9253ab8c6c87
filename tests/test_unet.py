"""The N-D U-Net: shapes in 1D/2D/3D, many sizes with one set of weights, conditioning, checkpointing."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from polyscale.nn.blocks import AttentionBlock, ResBlock
from polyscale.nn.embeddings import NoiseEmbedding, SinusoidalEmbedding
from polyscale.nn.unet import UNet, UNetConfig

TINY = dict(
    base_channels=8,
    channel_mults=(1, 2),
    num_res_blocks=1,
    attention_levels=(0, 1),
    attention_kernel_sizes=(5, 3),
    num_heads=2,
    norm_groups=4,
)


def _unzero(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make gradients vanish upstream; give them small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _net(**kwargs) -> UNet:
    torch.manual_seed(0)
    return _unzero(UNet(**{"dims": 2, "in_channels": 1, **TINY, **kwargs}))


# ------------------------------------------------------------------------------------------ shapes and sizes


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_shapes(dims, num_classes):
    net = UNet(dims=dims, in_channels=2, out_channels=3, num_classes=num_classes, **TINY)
    x = torch.randn(2, 2, *([8] * dims))
    labels = None if num_classes is None else torch.tensor([0, 3])  # 3 = the null class
    assert net(x, torch.randn(2), labels).shape == (2, 3, *([8] * dims))


@pytest.mark.long
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_same_weights_run_at_several_sizes(dims):
    net = _net(dims=dims).eval()
    for size in (4, 6, 12):  # 4: smaller than the level-0 window (5), which the attention clamps
        x = torch.randn(1, 1, *([size] * dims))
        out = net(x, torch.zeros(1))
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0
    rect = torch.randn(1, 1, *range(4, 4 + 2 * dims, 2))  # non-square: (4,), (4, 6), (4, 6, 8)
    assert net(rect, torch.zeros(1)).shape == rect.shape


def test_new_network_outputs_zero_and_blocks_start_as_identity():
    net = UNet(dims=2, in_channels=1, num_classes=2, **TINY)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(net(x, torch.randn(2), torch.tensor([0, 2])), torch.zeros_like(x))
    emb = torch.randn(2, net.noise_embed.mlp[-1].out_features)
    checked = 0
    for block in net.modules():
        if isinstance(block, ResBlock) and isinstance(block.skip, torch.nn.Identity):
            h = torch.randn(2, block.conv1.in_channels, 4, 4)
        elif isinstance(block, AttentionBlock):
            h = torch.randn(2, block.attn.channels, 4, 4)
        else:
            continue
        assert torch.equal(block(h, emb), h)
        checked += 1
    # attention: encoder 1 + 1, middle 1, decoder 2 + 2; same-width res blocks: level-0 encoder + 2 middle
    assert checked == 7 + 3


# ------------------------------------------------------------------------------------------ conditioning


def test_samples_in_a_batch_are_independent():
    """GroupNorm is per sample and every sample gets its own embedding: a batch equals its rows run alone."""
    net = _net(num_classes=3).eval()
    x, c, labels = torch.randn(3, 1, 8, 8), torch.tensor([-1.0, 0.2, 0.9]), torch.tensor([0, 3, 1])
    batched = net(x, c, labels)
    for i in range(3):
        alone = net(x[i : i + 1], c[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_scalar_c_noise_broadcasts():
    net = _net().eval()
    x = torch.randn(2, 1, 8, 8)
    ref = net(x, torch.full((2,), 0.3))
    torch.testing.assert_close(net(x, torch.tensor(0.3)), ref, rtol=0, atol=0)
    torch.testing.assert_close(net(x, 0.3), ref, rtol=0, atol=0)


def test_noise_level_and_class_change_the_output():
    net = _net(num_classes=2).eval()
    x = torch.randn(1, 1, 8, 8)
    a = net(x, torch.tensor([0.1]), torch.tensor([0]))
    assert (a - net(x, torch.tensor([0.5]), torch.tensor([0]))).abs().max() > 1e-4
    assert (a - net(x, torch.tensor([0.1]), torch.tensor([1]))).abs().max() > 1e-4
    assert (a - net(x, torch.tensor([0.1]), torch.tensor([2]))).abs().max() > 1e-4  # the null class


def test_sinusoidal_embedding_matches_formula():
    dim, c = 6, [0.0, 0.5, -3.0, 250.0]
    got = SinusoidalEmbedding(dim, max_period=100.0)(torch.tensor(c, dtype=torch.float64))
    freqs = [100.0 ** (-j / 3) for j in range(3)]
    want = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in c]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    steps = SinusoidalEmbedding(dim)(torch.tensor([0, 999]))  # integer DDPM timesteps
    assert steps.dtype == torch.float32 and torch.allclose(steps[1, 0], torch.tensor(math.cos(999.0)))


def test_noise_embedding_features_stay_accurate_in_a_bfloat16_model():
    emb = NoiseEmbedding(16, 32).to(torch.bfloat16)
    seen = []
    emb.mlp[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    c = torch.tensor([-1.2345, 0.0301, 1.0987])
    assert emb(c).dtype == torch.bfloat16
    want = SinusoidalEmbedding(16)(c.double() * 100)
    # features computed in float32, then rounded once to bfloat16 (<= 2**-9 for values in [-1, 1]); features
    # computed in bfloat16 would be off by up to ~0.5 (c * 100 and the frequencies each rounded to 8 bits)
    torch.testing.assert_close(seen[0].double(), want, rtol=0, atol=2**-8)


def _state_dict_from_diffusers(theirs: dict, *, levels: int, nrb: int, attention: tuple[int, ...]) -> dict:
    """Our state dict from a diffusers ``UNet2DModel`` of the same layout (names mapped by position)."""
    out = {}

    def copy(ours: str, their: str, names: dict[str, str]) -> None:
        for o, t in names.items():
            for p in ("weight", "bias"):
                if f"{their}{t}.{p}" in theirs:
                    out[f"{ours}{o}.{p}"] = theirs[f"{their}{t}.{p}"]

    def res(ours: str, their: str) -> None:
        names = dict(norm1="norm1", conv1="conv1", emb="time_emb_proj", norm2="norm2", conv2="conv2")
        copy(ours, their, {**names, "skip": "conv_shortcut"})

    def attn(ours: str, their: str) -> None:
        copy(ours, their, {"norm": "group_norm", "attn.proj": "to_out.0"})
        for p in ("weight", "bias"):  # our fused qkv projection = diffusers' q, k, v stacked along outputs
            out[f"{ours}attn.qkv.{p}"] = torch.cat([theirs[f"{their}to_{n}.{p}"] for n in "qkv"])

    copy("", "", {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"})
    copy(
        "",
        "",
        {"noise_embed.mlp.0": "time_embedding.linear_1", "noise_embed.mlp.2": "time_embedding.linear_2"},
    )
    copy("", "", {"class_embed": "class_embedding"})
    k = 0
    for level in range(levels):
        for j in range(nrb):
            res(f"down.{k}.0.", f"down_blocks.{level}.resnets.{j}.")
            if level in attention:
                attn(f"down.{k}.1.", f"down_blocks.{level}.attentions.{j}.")
            k += 1
        if level < levels - 1:
            copy(f"down.{k}.0.", f"down_blocks.{level}.downsamplers.0.", {"conv": "conv"})
            k += 1
    res("mid.0.", "mid_block.resnets.0.")
    if levels - 1 in attention:
        attn("mid.1.", "mid_block.attentions.0.")
    res(f"mid.{2 if levels - 1 in attention else 1}.", "mid_block.resnets.1.")
    for u, level in enumerate(reversed(range(levels))):  # diffusers lists up blocks deepest first
        for j in range(nrb + 1):
            k = u * (nrb + 1) + j
            res(f"up.{k}.0.", f"up_blocks.{u}.resnets.{j}.")
            if level in attention:
                attn(f"up.{k}.1.", f"up_blocks.{u}.attentions.{j}.")
            if level > 0 and j == nrb:
                copy(
                    f"up.{k}.{2 if level in attention else 1}.",
                    f"up_blocks.{u}.upsamplers.0.",
                    {"conv": "conv"},
                )
    return out


@pytest.mark.parametrize(
    "mults, nrb, attention",
    [
        ((1, 2), 1, (1,)),
        ((1, 2, 2), 2, ()),
    ],  # attention window 9 > 8: whole axis, i.e. diffusers' global attention
)
@pytest.mark.long
def test_matches_diffusers_unet2d_with_the_same_weights(mults, nrb, attention):
    """Peer oracle: with windows covering the whole grid, our net is diffusers' ADM-style ``UNet2DModel``."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    kinds = ["AttnDownBlock2D" if level in attention else "DownBlock2D" for level in range(len(mults))]
    theirs = diffusers.UNet2DModel(
        in_channels=2, out_channels=3, block_out_channels=tuple(8 * m for m in mults), layers_per_block=nrb,
        down_block_types=tuple(kinds), up_block_types=tuple(k.replace("Down", "Up") for k in reversed(kinds)),
        add_attention=len(mults) - 1 in attention, attention_head_dim=8, norm_num_groups=4,
        attn_norm_num_groups=4, resnet_time_scale_shift="scale_shift", num_class_embeds=3 + 1,
    ).eval()  # fmt: skip
    ours = UNet(
        dims=2, in_channels=2, out_channels=3, base_channels=8, channel_mults=mults, num_res_blocks=nrb,
        attention_levels=attention, attention_kernel_sizes=(9,) * len(attention), num_heads=2, num_classes=3,
        norm_groups=4,
    ).eval()  # fmt: skip
    _unzero(theirs)
    ours.load_state_dict(
        _state_dict_from_diffusers(theirs.state_dict(), levels=len(mults), nrb=nrb, attention=attention)
    )  # strict: every one of our parameters has exactly one counterpart
    x, c, labels = torch.randn(2, 2, 16, 16), torch.tensor([-0.8, 0.4]), torch.tensor([1, 3])
    with torch.no_grad():
        want = theirs(x, 100 * c, class_labels=labels).sample  # their timestep = our c_noise * 100
        got = ours(x, c, labels)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ gradients


def test_gradients_reach_every_parameter():
    net = _net(num_classes=2)
    net(torch.randn(2, 1, 8, 8), torch.randn(2), torch.tensor([0, 2])).pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(dropout):
    a = _net(dropout=dropout).double().train()
    b = UNet(dims=2, in_channels=1, gradient_checkpointing=True, dropout=dropout, **TINY).double().train()
    b.load_state_dict(a.state_dict())
    x, c = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    losses = []
    for net in (a, b):
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state when recomputing
        losses.append(net(x, c).pow(2).sum())
        losses[-1].backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-10)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-10, msg=name)


def _saved_tensor_count(net: UNet, x: torch.Tensor) -> int:
    count = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, torch.zeros(x.shape[0]))
    return count


def test_gradient_checkpointing_keeps_fewer_activations_and_only_in_training():
    plain = _net()
    ckpt = UNet(dims=2, in_channels=1, gradient_checkpointing=True, **TINY)
    x = torch.randn(1, 1, 8, 8)
    assert _saved_tensor_count(ckpt.train(), x) < _saved_tensor_count(plain.train(), x) / 2
    assert _saved_tensor_count(ckpt.eval(), x) == _saved_tensor_count(plain.eval(), x)


@pytest.mark.long
def test_deterministic():
    net = _net(dims=1).eval()
    x = torch.randn(2, 1, 8)
    assert torch.equal(net(x, torch.ones(2)), net(x, torch.ones(2)))


# ------------------------------------------------------------------------------------------ structure, config


@pytest.mark.long
def test_each_attention_level_uses_its_own_kernel_at_its_resolution():
    net = UNet(
        dims=2, in_channels=1, base_channels=8, channel_mults=(1, 1, 2), num_res_blocks=2,
        attention_levels=(2, 0), attention_kernel_sizes=(3, 5), num_heads=2, norm_groups=4,
    )  # fmt: skip
    seen = []
    for block in net.modules():
        if isinstance(block, AttentionBlock):
            block.register_forward_hook(
                lambda m, args, out: seen.append((m.attn.kernel_size, args[0].shape[2:]))
            )
    net(torch.randn(1, 1, 16, 16), torch.zeros(1))
    # level 0 (16x16): 2 encoder + 3 decoder blocks; level 2 (4x4): 2 encoder + 1 middle + 3 decoder blocks
    assert sorted(seen) == [((3, 3), (4, 4))] * 6 + [((5, 5), (16, 16))] * 5


def test_config_fields_equal_constructor_kwargs():
    params = inspect.signature(UNet.__init__).parameters
    fields = dataclasses.fields(UNetConfig)
    assert [f.name for f in fields] == [p for p in params if p != "self"]
    for f in fields:
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default == (
            inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        )


def test_from_config_round_trip_and_lists_become_tuples():
    cfg = UNetConfig(dims=2, in_channels=1, **TINY)
    net = UNet.from_config(cfg)
    assert net.config == cfg and UNet.from_config(net.config).config == cfg
    listed = UNet(
        dims=2, in_channels=1, **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    )
    assert listed.config == cfg and listed.size_multiple == 2


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(2, 1, 8), r"rank 4 \(B, C, S0, S1\) for dims=2, got shape \(2, 1, 8\)"),
        (torch.randn(2, 3, 8, 8), r"expected 1 input channel\(s\), got 3"),
        (torch.randn(2, 1, 9, 8), r"spatial size \(9, 8\) is not divisible by 2"),
    ],
)
def test_bad_input_errors(x, match):
    with pytest.raises(ValueError, match=match):
        UNet(dims=2, in_channels=1, **TINY)(x, torch.zeros(2))


def test_label_and_noise_errors():
    net = UNet(dims=2, in_channels=1, num_classes=3, **TINY)
    x = torch.randn(2, 1, 8, 8)
    cases = [
        (torch.zeros(2), None, r"class_labels of shape \(2,\) are required \(num_classes=3\), got None"),
        (
            torch.zeros(2),
            torch.tensor([0.0, 1.0]),
            r"int64 of shape \(2,\), got torch.float32 of shape \(2,\)",
        ),
        (torch.zeros(2), torch.tensor([0, 1, 2]), r"int64 of shape \(2,\), got torch.int64 of shape \(3,\)"),
        (torch.zeros(2), torch.tensor([0, 4]), r"lie in 0..3 \(3 = null class\), got values in 0..4"),
        (torch.zeros(2), torch.tensor([-1, 1]), r"got values in -1..1"),
        (
            torch.zeros(3),
            torch.tensor([0, 1]),
            r"c_noise must be a scalar or of shape \(2,\), got shape \(3,\)",
        ),
        (torch.zeros(2, 1), torch.tensor([0, 1]), r"c_noise .* got shape \(2, 1\)"),
    ]
    for c, labels, match in cases:
        with pytest.raises(ValueError, match=match):
            net(x, c, labels)
    with pytest.raises(
        ValueError, match=r"unconditional \(num_classes=None\) but class_labels of shape \(2,\)"
    ):
        UNet(dims=2, in_channels=1, **TINY)(x, torch.zeros(2), torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(attention_levels=(0, 1), attention_kernel_sizes=(3,)),
            r"\(0, 1\) and .* \(3,\) must have the same",
        ),
        (dict(attention_levels=(5,), attention_kernel_sizes=(3,)), r"level 5 is out of range 0..1"),
        (dict(attention_levels=(1, 1), attention_kernel_sizes=(3, 3)), r"distinct, got \(1, 1\)"),
        (dict(attention_levels=(1,), attention_kernel_sizes=(4,)), r"level 1 must be odd and >= 1, got 4"),
        (dict(dims=4), "dims must be 1, 2 or 3, got 4"),
        (dict(base_channels=6), r"width 6 is not divisible by norm_groups=4"),
        (dict(num_heads=3), r"width 8 of attention level 0 is not divisible by num_heads=3"),
        (dict(channel_mults=()), r"non-empty .* got \(\)"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(num_classes=0), "num_classes must be >= 1 or None, got 0"),
        (dict(emb_channels=0), "emb_channels must be >= 1 or None, got 0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{**TINY, "dims": 2, "in_channels": 1, **kwargs})


@pytest.mark.long
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_circular_unet_is_a_function_on_the_torus(dims):
    """padding_mode='circular': shifting the input by a multiple of size_multiple shifts the output (exactly,
    borders included), and the zero-padded twin with the same weights is not shift-equivariant."""
    torch.manual_seed(0)
    kwargs = dict(
        dims=dims, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2,
    )  # fmt: skip
    net = UNet(**kwargs, padding_mode="circular").double()
    for p in net.parameters():  # leave the zero init so the output depends on the input
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 1, *([12] * dims), dtype=torch.float64)
    axes, shifts = tuple(range(2, 2 + dims)), (4, 6, 2)[:dims]
    y = net(x, 0.1)
    assert (net(x.roll(shifts, axes), 0.1) - y.roll(shifts, axes)).abs().max() <= 1e-9
    zeros = UNet(**kwargs).double()
    zeros.load_state_dict(net.state_dict())
    assert (zeros(x.roll(shifts, axes), 0.1) - zeros(x, 0.1).roll(shifts, axes)).abs().max() > 1e-3


def test_bad_padding_mode_names_the_choices():
    with pytest.raises(
        ValueError, match=r"padding_mode must be one of \('zeros', 'circular'\), got 'reflect'"
    ):
        UNet(dims=2, in_channels=1, base_channels=8, padding_mode="reflect")


def test_layer_norm_unet_is_strictly_local():
    """norm='layer' normalises each position over its channels, so changing the input far outside a position's
    receptive field leaves the output there bit-identical; GroupNorm (statistics over the whole sample) does not."""
    torch.manual_seed(0)
    kwargs = dict(
        dims=1, in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
        attention_levels=(1,), attention_kernel_sizes=(3,), num_heads=2,
    )  # fmt: skip
    local = UNet(**kwargs, norm="layer").double()
    for p in local.parameters():
        torch.nn.init.normal_(p, std=0.2)
    pooled = UNet(**kwargs).double()
    for p in pooled.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 1, 256, dtype=torch.float64)
    far = x.clone()
    far[..., 200:] += 3.0  # positions 0..31 are far outside each other's receptive field
    for net, same in ((local, True), (pooled, False)):
        diff = (net(far, 0.3) - net(x, 0.3))[..., :32].abs().max().item()
        assert (diff == 0.0) if same else (diff > 1e-4), (net.config.norm, diff)
    assert sum("norm" in n for n, _ in local.named_parameters()) > 0  # affine parameters exist


def test_bad_norm_names_the_choices():
    with pytest.raises(ValueError, match=r"norm must be one of \('group', 'layer'\), got 'batch'"):
        UNet(dims=2, in_channels=1, base_channels=8, norm="batch")
