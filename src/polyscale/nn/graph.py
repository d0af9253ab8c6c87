"""GNN denoiser with scale-aware neighbourhood attention and node-centric, local heads.

The model predicts locally, ``p(x | s) = prod_i p(x_i | N(i), s)``: every layer mixes a node with its graph
neighbours only (attention over incoming edges), so the same weights run on graphs of any size. Nothing global
enters un-normalised: the optional graph context is a per-graph *mean* of node states, and the attention
temperature depends on the local neighbourhood size and the user's scale factor ``s``, never on the number of
nodes of the graph.

Scale-aware attention: the logits of head ``h`` at target node ``i`` are multiplied by
``gamma_h(i) = exp(f_h(log(1 + deg_i), log s_g))`` with ``f`` a small learned MLP whose last layer starts at
zero (``gamma = 1``, plain attention, at initialisation). A softmax over ``deg`` neighbours flattens as ``deg``
grows; a temperature that grows with ``log deg`` keeps its sharpness (the ``log n`` scaling of length-general
attention, applied to the neighbourhood). ``s`` is the user's scale factor per graph (default 1).

Edges: edge states live on directed edges; for an undirected graph ``edge_index`` holds both directions with
equal features, and every edge update is symmetric in its two ends, so both directions stay equal (unless the
caller's ``edge_cond`` differs per direction, e.g. relative positions; ``PackedGraphNet`` then averages the two
outputs of each edge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polyscale.io import PretrainedMixin
from polyscale.nn.embeddings import NoiseEmbedding


@dataclass
class GraphDenoiserConfig:
    """Constructor arguments of :class:`GraphDenoiser`."""

    node_dim: int  # node features denoised (0 for none)
    edge_dim: int = 0  # edge features denoised (0 for none)
    node_cond_dim: int = 0  # clean per-node conditioning (e.g. positions-derived features), not denoised
    edge_cond_dim: int = 0  # clean per-edge conditioning (e.g. relative positions), not denoised
    hidden: int = 64  # width of node and edge states
    num_layers: int = 4  # message-passing layers (receptive field: num_layers hops)
    num_heads: int = 4  # attention heads (must divide hidden)
    emb_channels: int | None = None  # noise embedding width; None = hidden
    global_context: bool = True  # add a gated per-graph mean of node states each layer (size-normalised)
    dropout: float = 0.0
    # False: the node state (e.g. positions) is predicted but not read as an input feature; it enters only
    # through the caller's relative edge features, which keeps the model translation-invariant
    use_node_state: bool = True
    # clean features per triangle (edge a = i -> j, with edges i -> k and j -> k of a third node k); > 0 adds a
    # triangle update to every layer, through which an edge reads the nodes it could form a triangle with
    triangle_cond_dim: int = 0
    # clean features per crossing (edge a and an edge b whose segment crosses a's, e.g. two candidate edges of
    # a plane graph); > 0 adds a crossing update to every layer, through which an edge reads the edges it
    # cannot coexist with in a planar drawing
    crossing_cond_dim: int = 0


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``logits (E, H)`` over the rows that share ``index (E,)`` (one segment per target node)."""
    heads = logits.shape[1]
    expanded = index[:, None].expand(-1, heads)  # (E, H)
    peak = logits.new_full((num_segments, heads), float("-inf"))
    peak = peak.scatter_reduce(0, expanded, logits, reduce="amax", include_self=True)  # (N, H)
    ex = (logits - peak[index]).exp()  # (E, H), the largest of each segment is exp(0) = 1
    total = logits.new_zeros((num_segments, heads)).index_add_(0, index, ex)  # (N, H)
    return ex / total[index]


def segment_mean(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of the rows of ``values (N, C)`` per segment ``index (N,)`` -> ``(num_segments, C)``."""
    total = values.new_zeros((num_segments, values.shape[1])).index_add_(0, index, values)
    count = values.new_zeros(num_segments).index_add_(0, index, values.new_ones(index.shape[0]))
    return total / count.clamp(min=1)[:, None]


EDGE_CHUNK = 1 << 14  # edges per piece in inference (no autograd): bounded memory at any size, and pieces
# small enough to stay in cache (2^14 instead of 2^20 halved a 100,000-node call: 31 s -> 14 s, 1 thread)


def by_pieces(fn, edge_index: Tensor, e: Tensor, chunk: int | None, out: Tensor | None = None) -> Tensor:
    """``fn(src, dst, e)`` row-wise over edges, in pieces of ``chunk`` edges (None: at once), written into
    ``out`` when given (which may be ``e`` itself: each piece is read before it is overwritten)."""
    if chunk is None or e.shape[0] <= chunk:
        whole = fn(edge_index[0], edge_index[1], e)
        return whole if out is None else out.copy_(whole)
    # filled piece by piece: no list of pieces next to the whole output
    for lo in range(0, e.shape[0], chunk):
        piece = fn(edge_index[0, lo : lo + chunk], edge_index[1, lo : lo + chunk], e[lo : lo + chunk])
        if out is None:
            out = piece.new_empty(e.shape[0], *piece.shape[1:])
        out[lo : lo + piece.shape[0]] = piece
    if out is None:  # no piece: range() with a negative step is empty
        raise ValueError(f"chunk must be positive or None, got {chunk}")
    return out


def _given(value: Tensor | None, name: str, dim: int) -> Tensor:
    """``value``, which a model with ``dim > 0`` features of this kind needs."""
    if value is None:
        raise ValueError(f"this model reads {name} with {dim} features per row: pass {name}")
    return value


def _check_tuples(name: str, rows: int, dim: int, index: Tensor | None, cond: Tensor | None) -> None:
    """A model with ``dim > 0`` features per edge tuple needs ``index (rows, T)`` and ``cond (T, dim)``."""
    if not dim:
        return
    if index is None or cond is None:
        raise ValueError(
            f"this model reads {name} ({name[:-1]}_cond_dim={dim}): pass {name} ({rows}, T) and {name[:-1]}_cond "
            f"(T, {dim})"
        )
    if index.ndim != 2 or index.shape[0] != rows or cond.shape != (index.shape[1], dim):
        raise ValueError(
            f"{name} must be ({rows}, T) and {name[:-1]}_cond (T, {dim}), got {tuple(index.shape)} and "
            f"{tuple(cond.shape)}"
        )


class ScaleAwareGraphAttention(nn.Module):
    """Multi-head attention of each node over its incoming edges, with edge states in keys and values and a
    learned temperature per head from ``(log(1 + deg_i), log s)``: ``(h (N, C), e (E, C)) -> (N, C)``."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({num_heads})")
        self.heads, self.head_dim = num_heads, hidden // num_heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.edge_kv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.temperature = nn.Sequential(nn.Linear(2, 16), nn.SiLU(), nn.Linear(16, num_heads))
        last = cast(nn.Linear, self.temperature[-1])  # the Linear just above
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.out = nn.Linear(hidden, hidden)

    def forward(
        self, h: Tensor, e: Tensor, edge_index: Tensor, scale_features: Tensor, chunk: int | None = None
    ) -> Tensor:
        """``chunk``: edges per piece (None: all at once). In pieces, the keys are computed for the logits and
        the values afterwards for the messages, each from its half of ``kv`` and ``edge_kv``, so memory scales
        with the piece and ``E x heads``, not ``E x C``."""
        src, dst = edge_index  # messages flow src -> dst
        n, heads, d, c = h.shape[0], self.heads, self.head_dim, h.shape[1]
        num_edges = e.shape[0]
        step = min(chunk or num_edges, num_edges) or 1
        q_all, kv_all = self.q(h), self.kv(h)  # (N, C), (N, 2C)
        k_all, v_all = kv_all[:, :c], kv_all[:, c:]
        edge_k, edge_v = self.edge_kv.weight[:c], self.edge_kv.weight[c:]  # rows of keys, then of values
        gamma = self.temperature(scale_features).exp()  # (N, H), 1 at initialisation

        def project(lo: int, node: Tensor, weight: Tensor) -> Tensor:  # keys or values, (E_piece, H, d)
            return (node[src[lo : lo + step]] + F.linear(e[lo : lo + step], weight)).view(-1, heads, d)

        def keys(lo: int) -> Tensor:
            return project(lo, k_all, edge_k)

        def values(lo: int) -> Tensor:
            return project(lo, v_all, edge_v)

        def logits_of(lo: int, k: Tensor) -> Tensor:
            t = dst[lo : lo + step]
            return (q_all[t].view(-1, heads, d) * k).sum(-1) / d**0.5 * gamma[t]  # (E_piece, H)

        pieces = range(0, num_edges, step)
        if len(pieces) <= 1:  # one piece, or none: a graph without edges
            alpha = segment_softmax(logits_of(0, keys(0)), dst, n)  # (E, H)
            out = h.new_zeros(h.shape).index_add_(0, dst, (alpha[..., None] * values(0)).flatten(1))
            return self.out(out)  # (N, C)
        logits = torch.cat([logits_of(lo, keys(lo)) for lo in pieces])  # (E, H)
        alpha = segment_softmax(logits, dst, n)
        out = h.new_zeros(h.shape)
        for lo in pieces:
            messages = (alpha[lo : lo + step, :, None] * values(lo)).flatten(1)  # (E_piece, C)
            out.index_add_(0, dst[lo : lo + step], messages)  # in place: pieces run without autograd
        return self.out(out)  # (N, C)


class TriangleUpdate(nn.Module):
    """Edge update from the triangles an edge closes. For a triangle ``(a, b, c)`` (edge ``a = i -> j``, edges
    ``b = i -> k`` and ``c = j -> k`` of a third node ``k``, raw features ``t``) the message is
    ``SiLU(P e_b + P e_c + R t)`` (width ``H``); messages are pooled per edge ``a`` by max and by mean and
    ``Linear(2H -> C)`` of the pooled vector is added to ``e_a`` (zero at initialisation).

    The same update serves any set of edge tuples: ``rows (1 + P, T)`` names the receiving edge ``a`` and ``P``
    partner edges whose projected states are summed (triangles: ``P = 2``; crossings, an edge and an edge whose
    segment crosses it: ``P = 1``).

    Max pooling lets an edge find the third node that decides it (e.g. the largest opposite angle on each side,
    which decides whether an edge belongs to a Delaunay-like mesh). The message is one gather-add and a narrow
    linear map per triangle, and without autograd it runs over triangles in chunks, so a million-node graph
    (tens of millions of triangles) needs memory for the pooled ``(E, 2H)`` only.
    """

    def __init__(self, hidden: int, triangle_dim: int, width: int, chunk: int = 1 << 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.edge = nn.Linear(hidden, width)
        self.tri = nn.Linear(triangle_dim, width, bias=False)
        self.out = nn.Linear(2 * width, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.chunk = chunk

    def forward(self, e: Tensor, triangles: Tensor, t: Tensor, *, inplace: bool = False) -> Tensor:
        """``e (E, C)``, ``triangles (1 + P, T)`` edge ids (receiver first), ``t (T, F)`` -> ``(E, C)``.
        ``inplace`` (inference only): the update is added into ``e`` itself, which is returned."""
        p = self.edge(self.norm(e))  # (E, H)
        a = triangles[0]
        count = e.new_zeros(e.shape[0]).index_add_(0, a, e.new_ones(a.shape[0]))  # (E,)
        step = triangles.shape[1] if torch.is_grad_enabled() else self.chunk
        peak = p.new_full(p.shape, float("-inf"))
        total = p.new_zeros(p.shape)
        for lo in range(0, max(triangles.shape[1], 1), step):
            a, *partners = triangles[:, lo : lo + step]
            msg = self.tri(t[lo : lo + step])  # (T_chunk, H)
            for b in partners:
                msg = msg + p[b]
            msg = F.silu(msg)
            if torch.is_grad_enabled():  # one piece; out of place for autograd
                peak = peak.scatter_reduce(0, a[:, None].expand_as(msg), msg, reduce="amax")
                total = total.index_add(0, a, msg)
            else:  # in place: an out-of-place update would copy (E, H) per piece, quadratic in size
                peak.scatter_reduce_(0, a[:, None].expand_as(msg), msg, reduce="amax")
                total.index_add_(0, a, msg)
        none = (count == 0)[:, None]  # edges that close no triangle pool to 0
        if torch.is_grad_enabled():
            mean = total / count.clamp(min=1)[:, None]
            return e + self.out(torch.cat([peak.masked_fill(none, 0.0), mean], dim=1))
        # inference: the output in pieces of edges, so no (E, 2H) temporary exists (and with inplace no second
        # (E, C) one: at 10^6 nodes an (E, C) float tensor is about 3 GB)
        del p
        out = e if inplace else torch.empty_like(e)
        for lo in range(0, e.shape[0], self.chunk):
            hi = lo + self.chunk
            mean = total[lo:hi] / count[lo:hi].clamp(min=1)[:, None]
            pooled = torch.cat([peak[lo:hi].masked_fill_(none[lo:hi], 0.0), mean], dim=1)
            out[lo:hi] = e[lo:hi] + self.out(pooled)
        return out


class GraphLayer(nn.Module):
    """Pre-norm residual block: noise-modulated attention, gated graph context, node MLP, symmetric edge MLP."""

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        emb: int,
        *,
        global_context: bool,
        dropout: float,
        triangle_dim: int = 0,
        crossing_dim: int = 0,
    ) -> None:
        super().__init__()
        self.triangle = TriangleUpdate(hidden, triangle_dim, hidden // 2) if triangle_dim else None
        self.crossing = TriangleUpdate(hidden, crossing_dim, hidden // 2) if crossing_dim else None
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(emb, 2 * hidden)
        self.attn = ScaleAwareGraphAttention(hidden, num_heads)
        self.context = nn.Linear(hidden, hidden) if global_context else None
        if self.context is not None:
            nn.init.zeros_(self.context.weight)
            nn.init.zeros_(self.context.bias)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden)
        )
        self.edge_norm = nn.LayerNorm(hidden)
        self.edge_mlp = nn.Sequential(
            nn.Linear(3 * hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden)
        )

    def forward(
        self,
        h: Tensor,
        e: Tensor,
        edge_index: Tensor,
        emb: Tensor,
        batch: Tensor,
        num_graphs: int,
        scale: Tensor,
        triangles: Tensor | None = None,
        t: Tensor | None = None,
        crossings: Tensor | None = None,
        crossing_cond: Tensor | None = None,
        *,
        inplace: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``inplace`` (inference only, for a caller that owns ``e``): edge states are updated inside ``e``."""
        inplace = inplace and not torch.is_grad_enabled()
        if self.triangle is not None:
            e = self.triangle(e, triangles, t, inplace=inplace)
        if self.crossing is not None:
            e = self.crossing(e, crossings, crossing_cond, inplace=inplace)
        chunk = None if torch.is_grad_enabled() else EDGE_CHUNK  # inference: bounded memory at any size
        shift_scale = self.film(emb)  # (N, 2C) per-node noise modulation
        gain, bias = shift_scale.chunk(2, dim=1)
        x = self.norm1(h) * (1 + gain) + bias
        h = h + self.attn(x, e, edge_index, scale, chunk)
        if self.context is not None:  # size-normalised: a mean, not a sum
            h = h + self.context(segment_mean(h, batch, num_graphs))[batch]
        h = h + self.mlp(self.norm2(h))

        def update(src: Tensor, dst: Tensor, e_piece: Tensor) -> Tensor:
            hs, hd = h[src], h[dst]
            return e_piece + self.edge_mlp(torch.cat([self.edge_norm(e_piece), hs + hd, hs * hd], dim=1))

        return h, by_pieces(
            update, edge_index, e, chunk, out=e if inplace else None
        )  # symmetric in (src, dst)


class GraphDenoiser(PretrainedMixin, nn.Module):
    """``forward(x (N, node_dim), edge_index (2, E), edge_attr (E, edge_dim), c_noise (N,), *, batch (N,),
    node_cond (N, node_cond_dim), edge_cond (E, edge_cond_dim), scale (G,), triangles (3, T),
    triangle_cond (T, triangle_cond_dim)) -> (node_out (N, node_dim), edge_out (E, edge_dim))``.

    ``c_noise`` is per node (EDM's ``log(sigma) / 4`` of the node's graph); edges take the value of their
    target node. Heads are node-centric: the node head reads node ``i``'s final state, the edge head a
    symmetric function of the two end states and the edge state. Both heads start at zero.
    """

    config_class = GraphDenoiserConfig

    def __init__(
        self,
        *,
        node_dim: int,
        edge_dim: int = 0,
        node_cond_dim: int = 0,
        edge_cond_dim: int = 0,
        hidden: int = 64,
        num_layers: int = 4,
        num_heads: int = 4,
        emb_channels: int | None = None,
        global_context: bool = True,
        dropout: float = 0.0,
        use_node_state: bool = True,
        triangle_cond_dim: int = 0,
        crossing_cond_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = GraphDenoiserConfig(
            node_dim, edge_dim, node_cond_dim, edge_cond_dim, hidden, num_layers, num_heads,
            emb_channels, global_context, dropout, use_node_state, triangle_cond_dim, crossing_cond_dim,
        )  # fmt: skip
        if node_dim < 0 or edge_dim < 0 or node_dim + edge_dim == 0:
            raise ValueError(f"need node_dim + edge_dim >= 1 (both >= 0), got {node_dim} and {edge_dim}")
        if num_layers < 1 or hidden < 1 or hidden % num_heads:
            raise ValueError(
                f"need num_layers >= 1 and hidden divisible by num_heads, got {num_layers}, {hidden}, {num_heads}"
            )
        emb = emb_channels or hidden
        self.noise_embed = NoiseEmbedding(hidden, emb)
        state_in = node_dim if use_node_state else 0
        self.node_in = nn.Linear(state_in + node_cond_dim + 1, hidden)  # +1: log(1 + degree)
        self.edge_in = nn.Linear(
            edge_dim + edge_cond_dim + 1, hidden
        )  # +1: a constant (edges without features)
        self.layers = nn.ModuleList(
            GraphLayer(
                hidden, num_heads, emb, global_context=global_context, dropout=dropout,
                triangle_dim=triangle_cond_dim, crossing_dim=crossing_cond_dim,
            )
            for _ in range(num_layers)
        )  # fmt: skip
        self.node_out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, max(node_dim, 1)))
        self.edge_out = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, max(edge_dim, 1))
        )
        for head in (cast(nn.Linear, self.node_out[-1]), cast(nn.Linear, self.edge_out[-1])):  # built above
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @classmethod
    def from_config(cls, config: GraphDenoiserConfig) -> GraphDenoiser:
        return cls(**asdict(config))

    def _check(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, c_noise: Tensor) -> None:
        cfg, n = self.config, x.shape[0]
        if x.ndim != 2 or x.shape[1] != cfg.node_dim:
            raise ValueError(f"x must be (N, node_dim={cfg.node_dim}), got shape {tuple(x.shape)}")
        if edge_index.ndim != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
            raise ValueError(
                f"edge_index must be int64 of shape (2, E), got {edge_index.dtype} {tuple(edge_index.shape)}"
            )
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(f"edge_index refers to nodes outside 0..{n - 1}")
        if cfg.edge_dim and (edge_attr is None or edge_attr.shape != (edge_index.shape[1], cfg.edge_dim)):
            got = None if edge_attr is None else tuple(edge_attr.shape)
            raise ValueError(
                f"edge_attr must be (E={edge_index.shape[1]}, edge_dim={cfg.edge_dim}), got {got}"
            )
        if c_noise.shape != (n,):
            raise ValueError(f"c_noise must be one value per node, shape ({n},), got {tuple(c_noise.shape)}")

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None,
        c_noise: Tensor,
        *,
        batch: Tensor | None = None,
        node_cond: Tensor | None = None,
        edge_cond: Tensor | None = None,
        scale: Tensor | None = None,
        triangles: Tensor | None = None,
        triangle_cond: Tensor | None = None,
        crossings: Tensor | None = None,
        crossing_cond: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        self._check(x, edge_index, edge_attr, c_noise)
        cfg, n = self.config, x.shape[0]
        _check_tuples("triangles", 3, cfg.triangle_cond_dim, triangles, triangle_cond)
        _check_tuples("crossings", 2, cfg.crossing_cond_dim, crossings, crossing_cond)
        batch = x.new_zeros(n, dtype=torch.long) if batch is None else batch
        num_graphs = int(batch.max()) + 1 if n else 1
        scale = x.new_ones(num_graphs) if scale is None else scale.to(x.dtype).expand(num_graphs)
        src, dst = edge_index
        degree = x.new_zeros(n).index_add_(0, dst, x.new_ones(dst.shape[0]))  # in-degree (N,)
        log_deg = degree.log1p()[:, None]  # (N, 1)
        scale_features = torch.cat([log_deg, scale.log()[batch][:, None]], dim=1)  # (N, 2)
        parts = [x] if cfg.use_node_state else []
        parts += [log_deg] + (
            [_given(node_cond, "node_cond", cfg.node_cond_dim)] if cfg.node_cond_dim else []
        )
        h = self.node_in(torch.cat(parts, dim=1))  # (N, C)
        eparts = [x.new_ones(edge_index.shape[1], 1)]
        if cfg.edge_dim:
            eparts.append(_given(edge_attr, "edge_attr", cfg.edge_dim))
        if cfg.edge_cond_dim:
            eparts.append(_given(edge_cond, "edge_cond", cfg.edge_cond_dim))
        e = self.edge_in(torch.cat(eparts, dim=1))  # (E, C)
        emb = F.silu(self.noise_embed(c_noise))  # (N, emb)
        inplace = not torch.is_grad_enabled()  # e is ours: in inference the layers update it in place
        for layer in self.layers:
            h, e = layer(
                h, e, edge_index, emb, batch, num_graphs, scale_features,
                triangles, triangle_cond, crossings, crossing_cond, inplace=inplace,
            )  # fmt: skip
        node = self.node_out(h) if cfg.node_dim else None
        edge = None
        if cfg.edge_dim:

            def head(s: Tensor, d: Tensor, e_piece: Tensor) -> Tensor:
                hs, hd = h[s], h[d]
                return self.edge_out(torch.cat([hs + hd, hs * hd, e_piece], dim=1))

            chunk = None if torch.is_grad_enabled() else EDGE_CHUNK
            edge = by_pieces(head, edge_index, e, chunk)  # (E, edge_dim)
        return node, edge
