"""``SparseMLP``: a multilayer perceptron of :class:`~polyscale.nn.sparse.SparseLinear` blocks with skip
connections, the network that sparse growth ("Structure Net") grows; see :mod:`polyscale.nn.sparse` for the
layer, its two execution paths and the initial-connectivity rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypedDict

import torch
from torch import Tensor, nn

from polyscale.io import PretrainedMixin
from polyscale.nn.sparse import ParameterChange, SparseLinear


class InitialDraw(TypedDict):
    """How a :class:`SparseMLP`'s connections were first drawn (see :class:`SparseMLPConfig`)."""

    density: float
    min_inputs: int
    min_outputs: int


ACTIVATIONS = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu}


@dataclass
class SparseMLPConfig:
    """:class:`SparseMLP`'s constructor arguments. ``hidden_sizes`` follows growth (cloning widens layers);
    ``density``, ``min_inputs`` and ``min_outputs`` describe the initial draw only: a saved network's
    connections are its weights file's ``blocks.<t><-<s>.flat_index`` tensors, which rebuild it exactly."""

    in_features: int = 40
    hidden_sizes: tuple[int, ...] = field(default_factory=lambda: (256, 256))
    out_features: int = 10
    activation: str = "tanh"
    skip: int = 0
    density: float = 1e-4
    min_inputs: int = 1
    min_outputs: int = 1
    mode: str = "auto"
    sparse_below: float = 0.005


class SparseMLP(PretrainedMixin, nn.Module):
    """A multi-layer network of ``SparseLinear`` blocks, with optional skip connections.

    Sizes ``[in, *hidden, out]``; layer ``l`` (1-based) computes ``h_l = act(sum_s W_{l,s} h_s + b_l)`` over
    its sources ``s = l - 1, ..., l - 1 - skip`` (``h_0 = x``; ``skip`` in 0..3, the growth routing's search
    radius). The last layer has no activation (logits). The adjacent block ``W_{l,l-1}`` starts with the
    per-unit minima of incoming (``min_inputs``) and, for hidden units, outgoing connections
    (``min_outputs``; module docstring); skip blocks start at ``density`` with no minimum.
    ``x (B, in) -> (B, out)``. Saved and loaded with ``save_pretrained(dir)`` / ``SparseMLP.from_pretrained``
    (:class:`polyscale.io.PretrainedMixin`); :meth:`build_for_weights` rebuilds the connections.
    """

    config_class = SparseMLPConfig

    def __init__(
        self,
        in_features: int,
        hidden_sizes: list[int] | tuple[int, ...],
        out_features: int,
        *,
        activation: str = "tanh",
        skip: int = 0,
        density: float = 1e-4,
        min_inputs: int = 1,
        min_outputs: int = 1,
        mode: str = "auto",
        sparse_below: float = 0.005,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 0 <= skip <= 3:
            raise ValueError(f"skip must be 0 to 3 layers back, got {skip}")
        self.sizes = [in_features, *hidden_sizes, out_features]
        self.activation, self.skip = activation, skip
        self.initial: InitialDraw = {"density": density, "min_inputs": min_inputs, "min_outputs": min_outputs}
        self.blocks = nn.ModuleDict()
        for layer in range(1, len(self.sizes)):
            for source in range(layer - 1, max(-1, layer - 2 - skip), -1):
                adjacent = source == layer - 1
                self.blocks[self.block_name(layer, source)] = SparseLinear(
                    self.sizes[source],
                    self.sizes[layer],
                    density=density,
                    min_inputs=min_inputs if adjacent else 0,
                    bias=adjacent,
                    mode=mode,
                    sparse_below=sparse_below,
                    generator=generator,
                )
        for layer in range(1, len(self.sizes) - 1):
            self._give_outputs(self.block(self.block_name(layer + 1, layer)), min_outputs, generator)

    @staticmethod
    def _give_outputs(block: SparseLinear, count: int, generator: torch.Generator | None) -> None:
        """At init: every input unit of ``block`` with fewer than ``count`` connections gets the rest, to
        distinct random outputs, with weights drawn like the block's others."""
        if not 0 <= count <= block.out_features:
            raise ValueError(f"min_outputs must be in [0, {block.out_features}], got {count}")
        have = torch.bincount(block.flat_index % block.in_features, minlength=block.in_features)
        mask = block.mask()
        positions = []
        for col in (have < count).nonzero().squeeze(1).tolist():
            free = (~mask[:, col]).nonzero().squeeze(1)
            rows = free[torch.randperm(free.numel(), generator=generator)[: count - int(have[col])]]
            positions += (rows * block.in_features + col).tolist()
        if positions:
            bound = 1.0 / math.sqrt(max(1.0, (block.nnz + len(positions)) / block.out_features))
            init = (torch.rand(len(positions), generator=generator) * 2 - 1) * bound
            block.add_connections(torch.tensor(positions, dtype=torch.long), init)

    @staticmethod
    def block_name(layer: int, source: int) -> str:
        return f"{layer}<-{source}"

    def block(self, name: str) -> SparseLinear:
        """Block ``name`` (``"<layer><-<source>"``) with its type: ``nn.ModuleDict`` hands out plain
        ``nn.Module``."""
        block = self.blocks[name]
        if not isinstance(block, SparseLinear):
            raise TypeError(f"block {name!r} of a SparseMLP is a {type(block).__name__}, not a SparseLinear")
        return block

    def sparse_blocks(self) -> dict[str, SparseLinear]:
        """All blocks by name, in ``self.blocks`` order, typed as :class:`SparseLinear` (see :meth:`block`)."""
        return {name: self.block(name) for name in self.blocks}

    def sources(self, layer: int) -> list[int]:
        return [s for s in range(layer - 1, -1, -1) if self.block_name(layer, s) in self.blocks]

    def hidden_activations(self, x: Tensor) -> list[Tensor]:
        """``[h_0 = x, h_1, ..., h_L]``: every layer's output (the last one without activation)."""
        act = ACTIVATIONS[self.activation]
        h = [x]
        for layer in range(1, len(self.sizes)):
            z = sum(self.blocks[self.block_name(layer, s)](h[s]) for s in self.sources(layer))
            h.append(z if layer == len(self.sizes) - 1 else act(z))
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.hidden_activations(x)[-1]

    @property
    def config(self) -> SparseMLPConfig:
        """The current structure's :class:`SparseMLPConfig` (layer sizes follow growth)."""
        first = self.block(next(iter(self.blocks)))
        return SparseMLPConfig(
            self.sizes[0], tuple(self.sizes[1:-1]), self.sizes[-1], self.activation, self.skip,
            **self.initial, mode=first.mode, sparse_below=first.sparse_below,
        )  # fmt: skip

    @classmethod
    def build_for_weights(cls, config: SparseMLPConfig, state: dict[str, Tensor]) -> SparseMLP:
        """A network of ``config``'s shape whose blocks hold the connection positions of ``state`` (a
        ``state_dict()``), values still to be loaded: the structure-from-weights hook of the model protocol
        (:mod:`polyscale.io`), so any grown network loads back exactly."""
        net = cls(
            config.in_features, list(config.hidden_sizes), config.out_features, activation=config.activation,
            skip=config.skip, density=0.0, min_inputs=0, min_outputs=0, mode=config.mode,
            sparse_below=config.sparse_below,
        )  # fmt: skip
        net.initial = {"density": config.density, "min_inputs": config.min_inputs,
                       "min_outputs": config.min_outputs}  # fmt: skip
        for name, block in net.sparse_blocks().items():
            key = f"blocks.{name}.flat_index"
            if key not in state:
                raise ValueError(f"weights have no {key} for block {name!r}; expected a SparseMLP state_dict")
            block.flat_index = state[key].to(device="cpu", dtype=torch.long).clone()
            block.values = nn.Parameter(torch.empty(block.nnz))
        return net

    def clone_units(
        self, layer: int, units: Tensor | list[int], into: int, *, scale: float = 0.7, preserve: bool = False
    ) -> tuple[Tensor, list[ParameterChange]]:
        """Surgery, vertical cloning: copy hidden units ``units`` of ``layer`` into the adjacent hidden layer
        ``into`` (``layer - 1`` or ``layer + 1``), where they are appended as new units.

        A clone ``c`` of ``u`` reads what ``u`` reads and writes where ``u`` writes, wherever a block from its
        new layer allows it: for every source ``s`` of ``u`` with a block ``into <- s`` (``s < into``) it gets
        ``u``'s incoming weights from ``s`` times ``scale`` (0.7), and the bias likewise; for every target
        ``t`` of ``u`` with a block ``t <- into`` (``t > into``) it gets ``u``'s outgoing weights times
        ``scale``. Paths that no block carries (``u``'s adjacent blocks, whose other end is the clone's own
        layer) are not copied, so cloning needs skip connections (``skip >= 1``): a clone one layer up runs
        beside ``u``'s skip traffic.

        ``preserve=True`` is the function-preserving variant: the clone's outgoing connections are created
        with weight 0, so the network computes exactly what it computed before, and training then moves them.

        Returns ``(new unit indices in into, changed parameters)``. A clone left with no incoming connection
        is an error, raised before anything changes.
        """
        hidden = range(1, len(self.sizes) - 1)
        if layer not in hidden or into not in hidden or abs(into - layer) != 1:
            raise ValueError(
                f"clone from a hidden layer into an adjacent hidden layer (hidden layers {list(hidden)}), got "
                f"layer={layer}, into={into}"
            )
        units = torch.as_tensor(units, dtype=torch.long).flatten()
        if units.numel() == 0:
            return units, []
        if (
            int(units.min()) < 0
            or int(units.max()) >= self.sizes[layer]
            or units.unique().numel() != units.numel()
        ):
            raise ValueError(
                f"units must be distinct indices in [0, {self.sizes[layer]}), got {units.tolist()}"
            )
        first_new = self.sizes[into]
        incoming, outgoing, bias = self._clone_plan(layer, units.tolist(), into, scale, preserve)
        # grow layer `into`: its incoming blocks gain rows, its outgoing blocks gain columns
        k = units.numel()
        self.sizes[into] += k
        changes: list[ParameterChange] = []
        for name, block in self.sparse_blocks().items():
            t, s = (int(v) for v in name.split("<-"))
            if t == into:
                changes += block.resize(block.in_features, self.sizes[into])
            elif s == into:
                changes += block.resize(self.sizes[into], block.out_features)
        adjacent_into = self.block(self.block_name(into, into - 1))
        if adjacent_into.bias is not None:
            with torch.no_grad():
                adjacent_into.bias[first_new:] = torch.tensor(bias, dtype=adjacent_into.bias.dtype)
        for name, (pos, val) in incoming.items():
            changes.append(self.connect(name, torch.tensor(pos), torch.tensor(val)))
        for name, (pairs, val) in outgoing.items():
            block = self.block(name)
            flat = torch.tensor([r * block.in_features + c for r, c in pairs], dtype=torch.long)
            changes.append(self.connect(name, flat, torch.tensor(val)))
        return torch.arange(first_new, first_new + k), changes

    def _clone_plan(
        self, layer: int, units: list[int], into: int, scale: float, preserve: bool
    ) -> tuple[dict[str, tuple[list, list[float]]], dict[str, tuple[list, list[float]]], list[float]]:
        """What :meth:`clone_units` would add, before anything changes: per block ``into <- s`` the new
        flat positions and weights of the clones' inputs, per block ``t <- into`` the ``(row, clone)`` pairs
        and weights of their outputs, and the clones' biases. Raises when a clone would have no input."""
        first_new = self.sizes[into]
        incoming: dict[str, tuple[list, list[float]]] = {}  # block into <- s: new flat positions, weights
        outgoing: dict[str, tuple[list, list[float]]] = {}  # block t <- into: (row, clone) pairs, weights
        bias = []
        for i, u in enumerate(units):
            c = first_new + i
            reads = 0
            for s in self.sources(layer):
                src = self.block(self.block_name(layer, s))
                name = self.block_name(into, s)
                if s >= into or name not in self.blocks:
                    continue
                row = (src.flat_index // src.in_features) == u
                cols = src.flat_index[row] % src.in_features
                pos, val = incoming.setdefault(name, ([], []))
                pos += (c * src.in_features + cols).tolist()
                val += (scale * src.values.detach()[row]).tolist()
                reads += int(row.sum())
            if reads == 0:
                raise ValueError(
                    f"unit {u} of layer {layer} has no inputs a clone in layer {into} can read "
                    f"(skip={self.skip}; cloning copies along skip blocks, so it needs skip >= 1)"
                )
            adjacent = self.block(self.block_name(layer, layer - 1))
            bias.append(0.0 if adjacent.bias is None else scale * float(adjacent.bias.detach()[u]))
            for t in range(layer + 1, len(self.sizes)):
                dst_name, name = self.block_name(t, layer), self.block_name(t, into)
                if t <= into or dst_name not in self.blocks or name not in self.blocks:
                    continue
                dst = self.block(dst_name)
                col = (dst.flat_index % dst.in_features) == u
                rows = dst.flat_index[col] // dst.in_features
                pos, val = outgoing.setdefault(name, ([], []))
                pos += [(r, c) for r in rows.tolist()]
                val += [0.0] * len(rows) if preserve else (scale * dst.values.detach()[col]).tolist()
        return incoming, outgoing, bias

    def clone_connections(self, layer: int, unit: int, into: int) -> int:
        """Connections a clone of ``unit`` (``layer``) in ``into`` would get; 0 when it could not read
        anything (see :meth:`clone_units`)."""
        try:
            incoming, outgoing, _ = self._clone_plan(layer, [unit], into, 1.0, False)
        except ValueError:
            return 0
        return sum(len(pos) for pos, _ in incoming.values()) + sum(len(pos) for pos, _ in outgoing.values())

    def connect(self, name: str, positions: Tensor, init: Tensor) -> ParameterChange:
        """Surgery: ``SparseLinear.add_connections`` on block ``name``, reported as a :class:`ParameterChange`."""
        block = self.block(name)
        old = block.values
        where = block.add_connections(positions, init.to(old.dtype))
        return ParameterChange(old, block.values, where)

    def connectivity_stats(self) -> dict:
        """Active connections, possible connections and their ratio per block and overall."""
        layers = []
        active = possible = 0
        for name, block in self.sparse_blocks().items():
            block_possible = block.in_features * block.out_features
            layers.append(
                {
                    "block": name,
                    "active": block.nnz,
                    "possible": block_possible,
                    "ratio": block.nnz / block_possible,
                }
            )
            active += block.nnz
            possible += block_possible
        return {"layers": layers, "active": active, "possible": possible, "ratio": active / possible}
