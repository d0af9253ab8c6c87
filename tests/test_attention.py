"""Neighbourhood attention against oracles: the masked full-attention reference (values and gradients),
NATTEN's published window rule, plain full attention (SDPA and nn.MultiheadAttention) and NATTEN itself when
it happens to be installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import polyscale.nn.attention as attention_module
from polyscale.nn.attention import (
    NeighborhoodAttention,
    neighborhood_attention,
    neighborhood_attention_reference,
    neighborhood_mask,
    window_starts,
)

CASES = [
    # (spatial, kernel, dilation): every case hits the borders; anisotropic kernels, non-square shapes
    ((9,), 3, 1),
    ((12,), 7, 1),
    ((13,), 5, 2),
    ((7, 9), 3, 1),
    ((8, 6), 5, 1),
    ((11, 9), 7, 1),
    ((7, 9), (3, 5), 1),
    ((10, 11), 3, (2, 3)),
    ((5, 6, 7), 3, 1),
    ((6, 7, 5), (5, 3, 3), 1),
    ((7, 7, 7), 5, 1),
    ((7, 8, 9), 7, 1),
    ((7, 6, 9), 3, (2, 1, 3)),
]


def _qkv(spatial, *, batch=2, heads=3, head_dim=4, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, *spatial, head_dim)
    return [
        torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=requires_grad) for _ in range(3)
    ]


def _assert_matches_reference(spatial, kernel, dilation, tile_size=None, seed=0):
    q, k, v = _qkv(spatial, seed=seed, requires_grad=True)
    fast = neighborhood_attention(q, k, v, kernel_size=kernel, dilation=dilation, tile_size=tile_size)
    ref = neighborhood_attention_reference(q, k, v, kernel_size=kernel, dilation=dilation)
    assert fast.shape == q.shape
    assert (fast - ref).abs().max() <= 1e-10
    grad_out = torch.randn(fast.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    g_fast = torch.autograd.grad(fast, (q, k, v), grad_out)
    g_ref = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, a, b in zip("qkv", g_fast, g_ref, strict=True):
        assert (a - b).abs().max() <= 1e-10, f"gradient of {name}"


@pytest.mark.parametrize("spatial, kernel, dilation", CASES)
def test_fast_equals_reference_values_and_grads(spatial, kernel, dilation):
    _assert_matches_reference(spatial, kernel, dilation, seed=sum(spatial))


@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize("tile_size", [1, 2, 3, 5, 16])
@pytest.mark.parametrize(
    "spatial, kernel, dilation", [((23,), 5, 2), ((9, 10), (3, 5), (2, 1)), ((6, 7, 5), 3, 1)]
)
def test_result_does_not_depend_on_tiling_or_chunking(
    spatial, kernel, dilation, tile_size, chunk, monkeypatch
):
    if chunk is not None:  # a budget of 1 element: every chunk is a single tile
        monkeypatch.setitem(attention_module._CHUNK_ELEMENTS, "cpu", chunk)
    _assert_matches_reference(spatial, kernel, dilation, tile_size=tile_size)


@pytest.mark.long
def test_gradcheck(monkeypatch):
    """Finite differences against the hand-written backward, with padding slots, dilation and many chunks."""
    monkeypatch.setitem(attention_module._CHUNK_ELEMENTS, "cpu", 200)
    q, k, v = _qkv((5, 7), batch=1, heads=2, head_dim=3, requires_grad=True)
    fn = lambda q, k, v: neighborhood_attention(q, k, v, kernel_size=(3, 3), dilation=(1, 2), tile_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_backward_keeps_linear_memory():
    """Saved for backward: scaled q, k, v, the output and a log-sum-exp per row -- no (N, k^d) or (N, N)
    tensor (FlashAttention-style recomputation)."""
    q, k, v = _qkv((40, 40), batch=1, heads=2, head_dim=4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        neighborhood_attention(q, k, v, kernel_size=7)
    assert 0 < sum(saved) <= 5 * q.numel()


@st.composite
def _problems(draw):
    nd = draw(st.integers(1, 3))
    longest = {1: 30, 2: 12, 3: 7}[nd]
    spatial, kernel, dilation = [], [], []
    for _ in range(nd):
        ks = draw(st.sampled_from([1, 3, 5]).filter(lambda v: v <= longest))
        r = draw(st.integers(1, max(1, min(3, longest // ks))))
        spatial.append(draw(st.integers(ks * r, longest)))
        kernel.append(ks)
        dilation.append(r)
    tile = draw(st.integers(1, 6))
    return tuple(spatial), tuple(kernel), tuple(dilation), tile


@settings(max_examples=25, deadline=None)
@given(_problems(), st.sampled_from([1, 3000, None]))
def test_random_problems_match_reference(problem, chunk):
    spatial, kernel, dilation, tile = problem
    default = attention_module._CHUNK_ELEMENTS["cpu"]
    attention_module._CHUNK_ELEMENTS["cpu"] = default if chunk is None else chunk
    try:
        _assert_matches_reference(spatial, kernel, dilation, tile_size=tile)
    finally:
        attention_module._CHUNK_ELEMENTS["cpu"] = default


def _natten_start(i: int, length: int, kernel: int, dilation: int) -> int:
    """NATTEN's window-start rule as its CPU kernels state it, case by case (an independent oracle)."""
    half = kernel // 2
    if dilation == 1:
        return max(i - half, 0) + (length - i - half - 1 if i + half >= length else 0)
    if i - half * dilation < 0:
        return i % dilation
    if i + half * dilation >= length:
        rem = i % dilation
        full = (length // dilation) * dilation
        tail = length - full
        return length - tail + rem - 2 * half * dilation if rem < tail else full + rem - kernel * dilation
    return i - half * dilation


def test_window_rule_and_reference_mask_match_natten():
    for length in range(1, 24):
        for kernel in (1, 3, 5, 7):
            for dilation in (1, 2, 3):
                if kernel * dilation > length:
                    continue
                natten = [_natten_start(i, length, kernel, dilation) for i in range(length)]
                assert window_starts(length, kernel, dilation).tolist() == natten
                expected = torch.zeros(length, length, dtype=torch.bool)
                for i, start in enumerate(natten):
                    expected[i, start : start + dilation * (kernel - 1) + 1 : dilation] = True
                assert torch.equal(neighborhood_mask((length,), kernel, dilation), expected)


def test_mask_is_the_product_of_axis_masks():
    mask = neighborhood_mask((5, 6), (3, 5), (1, 1)).view(5, 6, 5, 6)
    rows, cols = neighborhood_mask((5,), 3), neighborhood_mask((6,), 5)
    assert torch.equal(mask, rows[:, None, :, None] & cols[None, :, None, :])
    assert (mask.flatten(2).sum(-1) == 15).all()  # every query sees a full 3 x 5 window


@pytest.mark.parametrize("spatial", [(9,), (5, 7), (3, 5, 3)])
def test_full_window_is_full_attention(spatial):
    q, k, v = _qkv(spatial)
    out = neighborhood_attention(q, k, v, kernel_size=spatial)
    flat = [t.flatten(2, 1 + len(spatial)) for t in (q, k, v)]  # (B, h, N, c)
    assert (out - F.scaled_dot_product_attention(*flat).unflatten(2, spatial)).abs().max() <= 1e-10


def test_long_1d_input_never_builds_n_squared():
    """N = 2^17 would need 2^34 logits (128 GiB in float64) as full attention; the first positions must still
    equal the reference on a crop, since windows there never reach past the crop."""
    length = 2**17
    q, k, v = _qkv((length,), batch=1, heads=1, head_dim=2)
    out = neighborhood_attention(q, k, v, kernel_size=7)
    ref = neighborhood_attention_reference(*(t[:, :, :64] for t in (q, k, v)), kernel_size=7)
    assert (out[:, :, :57] - ref[:, :, :57]).abs().max() <= 1e-10


def test_scale_argument():
    q, k, v = _qkv((6, 7))
    for scale in (0.1, 2.0):
        fast = neighborhood_attention(q, k, v, kernel_size=3, scale=scale)
        ref = neighborhood_attention_reference(q, k, v, kernel_size=3, scale=scale)
        assert (fast - ref).abs().max() <= 1e-10
    assert not torch.allclose(
        neighborhood_attention(q, k, v, kernel_size=3, scale=0.1),
        neighborhood_attention(q, k, v, kernel_size=3),
    )


def test_matches_natten_if_installed():
    functional = pytest.importorskip("natten.functional")  # optional peer, never installed by us
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for spatial, kernel, dilation in [((16,), 5, 2), ((12, 10), (5, 3), 1), ((8, 8, 8), 3, 2)]:
        q, k, v = (t.float().to(device) for t in _qkv(spatial, head_dim=16))
        last = [t.movedim(1, -2).contiguous() for t in (q, k, v)]  # NATTEN layout (B, *S, heads, c)
        try:
            theirs = getattr(functional, f"na{len(spatial)}d")(*last, kernel_size=kernel, dilation=dilation)
        except (NotImplementedError, RuntimeError) as err:  # e.g. no backend for this device
            pytest.skip(f"natten cannot run here: {err}")
        ours = neighborhood_attention(q, k, v, kernel_size=kernel, dilation=dilation)
        assert (ours - theirs.movedim(-2, 1)).abs().max() <= 1e-4


def _module_reference(m: NeighborhoodAttention, x: torch.Tensor) -> torch.Tensor:
    kernel, dilation = m.window(tuple(x.shape[2:]))
    qkv = m.qkv(x.movedim(1, -1)).unflatten(-1, (3, m.num_heads, -1))  # (B, *S, 3, heads, c)
    q, k, v = (qkv[..., i, :, :].movedim(-2, 1) for i in range(3))  # (B, heads, *S, c)
    out = neighborhood_attention_reference(q, k, v, kernel_size=kernel, dilation=dilation)
    return m.proj(out.movedim(1, -2).flatten(-2)).movedim(-1, 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_module_runs_at_any_size_with_same_weights(dims):
    torch.manual_seed(0)
    m = NeighborhoodAttention(8, dims=dims, kernel_size=5, num_heads=2, dilation=2).double()
    sizes = {1: [(3,), (4,), (9,), (17,)], 2: [(3, 4), (6, 11), (12, 10)], 3: [(3, 4, 5), (6, 5, 11)]}[dims]
    for spatial in sizes:  # windows shrink to the axis (3, 4) and dilation drops (6, 9 < 5 x 2) where needed
        x = torch.randn(2, 8, *spatial, dtype=torch.float64, requires_grad=True)
        out = m(x)
        assert out.shape == x.shape
        assert (out - _module_reference(m, x)).abs().max() <= 1e-10
        out.square().sum().backward()
        assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in m.parameters())


def test_module_window_fallback():
    m = NeighborhoodAttention(4, dims=3, kernel_size=(5, 5, 3), num_heads=1, dilation=3)
    assert m.window((20, 12, 2)) == ((5, 5, 2), (3, 2, 1))
    assert m.window((4, 5, 9)) == ((4, 5, 3), (1, 1, 3))


def test_module_on_small_input_equals_multihead_attention():
    """Below the kernel size the window is the whole grid: exactly torch's nn.MultiheadAttention."""
    torch.manual_seed(0)
    m = NeighborhoodAttention(12, dims=2, kernel_size=7, num_heads=3).double()
    mha = torch.nn.MultiheadAttention(12, 3, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(m.qkv.weight)
        mha.in_proj_bias.copy_(m.qkv.bias)
        mha.out_proj.weight.copy_(m.proj.weight)
        mha.out_proj.bias.copy_(m.proj.bias)
    x = torch.randn(2, 12, 4, 6, dtype=torch.float64)
    seq = x.flatten(2).transpose(1, 2)  # (B, N, C)
    expected = mha(seq, seq, seq, need_weights=False)[0].transpose(1, 2).unflatten(2, (4, 6))
    assert (m(x) - expected).abs().max() <= 1e-10


def test_module_is_local():
    """Changing an input far outside every window leaves an output position unchanged."""
    m = NeighborhoodAttention(4, dims=2, kernel_size=3, num_heads=1).double()
    x = torch.randn(1, 4, 12, 12, dtype=torch.float64)
    y = x.clone()
    y[..., 11, 11] += 5.0
    assert torch.equal(m(x)[..., :8, :8], m(y)[..., :8, :8])
    assert not torch.allclose(m(x)[..., 10, 10], m(y)[..., 10, 10])


def test_module_under_bfloat16_autocast():
    m = NeighborhoodAttention(8, dims=2, kernel_size=3, num_heads=2)
    x = torch.randn(2, 8, 9, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    out.float().sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()
    assert torch.allclose(out.float(), m(x), atol=0.1)


def test_errors_name_expected_and_received():
    q = torch.randn(1, 1, 8, 8, 4)
    with pytest.raises(ValueError, match="odd and >= 1, got 4"):
        neighborhood_attention(q, q, q, kernel_size=4)
    with pytest.raises(ValueError, match="odd and >= 1, got 8"):
        neighborhood_attention(q, q, q, kernel_size=8)  # even is refused even when it spans the axis
    with pytest.raises(ValueError, match="9 exceeds spatial axis 0 of length 8"):
        neighborhood_attention(q, q, q, kernel_size=9)
    with pytest.raises(ValueError, match="dilation 3 = 9 exceeds"):
        neighborhood_attention(q, q, q, kernel_size=3, dilation=3)
    with pytest.raises(ValueError, match="one int per spatial axis \\(2\\), got \\(3, 3, 3\\)"):
        neighborhood_attention(q, q, q, kernel_size=(3, 3, 3))
    with pytest.raises(ValueError, match="share one shape"):
        neighborhood_attention(q, q[..., :2], q, kernel_size=3)
    with pytest.raises(ValueError, match="1-3 spatial axes, got \\(8, 8, 4\\)"):
        neighborhood_attention(q[0, 0], q[0, 0], q[0, 0], kernel_size=3)
    with pytest.raises(ValueError, match="tile_size must be >= 1"):
        neighborhood_attention(q, q, q, kernel_size=3, tile_size=0)
    m = NeighborhoodAttention(8, dims=2, kernel_size=3, num_heads=2)
    with pytest.raises(ValueError, match="rank 4 .* got shape \\(1, 8, 5\\)"):
        m(torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match="expected 8 channels, got 3"):
        m(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="odd and >= 1 on every axis, got 4"):
        NeighborhoodAttention(8, dims=2, kernel_size=4)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NeighborhoodAttention(6, dims=1, kernel_size=3, num_heads=4)
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3, got 4"):
        NeighborhoodAttention(8, dims=4, kernel_size=3)


def _periodic_reference(m: NeighborhoodAttention, x: torch.Tensor) -> torch.Tensor:
    """Periodic neighbourhood attention written out: every query attends to the keys at offsets
    ``r * (-k//2 .. k//2)`` per axis, taken modulo the axis length (a ring)."""
    spatial = tuple(x.shape[2:])
    kernel, dilation = m.window(spatial)
    qkv = m.qkv(x.movedim(1, -1)).unflatten(-1, (3, m.num_heads, -1))  # (B, *S, 3, heads, c)
    q, k, v = (qkv[..., i, :, :].movedim(-2, 1).flatten(2, -2) for i in range(3))  # (B, heads, N, c)
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in spatial), indexing="ij"), -1).flatten(
        0, -2
    )
    allowed = torch.ones(len(coords), len(coords), dtype=torch.bool)
    for axis, (n, ks, r) in enumerate(zip(spatial, kernel, dilation, strict=True)):
        if ks >= n:  # whole axis
            continue
        diff = (coords[None, :, axis] - coords[:, None, axis]) % n  # key - query on the ring
        offsets = torch.tensor([(r * o) % n for o in range(-(ks // 2), ks // 2 + 1)])
        allowed &= (diff[..., None] == offsets).any(-1)
    logits = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    out = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # (B, heads, N, c)
    out = out.movedim(1, -2).flatten(-2).unflatten(1, spatial)  # (B, *S, C)
    return m.proj(out).movedim(-1, 1)


@pytest.mark.parametrize(
    "spatial, kernel, dilation", [((11,), 3, 1), ((9, 10), 3, 2), ((6, 4, 5), 3, 1), ((3, 8), 5, 1)]
)
def test_periodic_module_is_attention_on_a_ring(spatial, kernel, dilation):
    torch.manual_seed(0)
    m = NeighborhoodAttention(
        8, dims=len(spatial), kernel_size=kernel, num_heads=2, dilation=dilation, periodic=True
    ).double()
    x = torch.randn(2, 8, *spatial, dtype=torch.float64)
    assert (m(x) - _periodic_reference(m, x)).abs().max() <= 1e-10
    axes = tuple(range(2, 2 + len(spatial)))
    shifts = tuple(range(1, 1 + len(spatial)))
    # a ring has no borders: shifting the input shifts the output, by any amount
    assert (m(x.roll(shifts, axes)) - m(x).roll(shifts, axes)).abs().max() <= 1e-10
    plain = NeighborhoodAttention(8, dims=len(spatial), kernel_size=kernel, num_heads=2, dilation=dilation)
    plain.load_state_dict(m.state_dict())
    assert (plain.double()(x) - m(x)).abs().max() > 1e-3  # the border windows do differ from NATTEN's rule
