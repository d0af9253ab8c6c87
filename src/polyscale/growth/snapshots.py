"""Multi-scale snapshots of a growing sparse network, stored as deltas, and snapshot ensembles.

A :class:`SnapshotStore` keeps states of a :class:`polyscale.nn.sparse_mlp.SparseMLP` taken during growth
(the training loop takes one at every growth event and whenever validation accuracy improves by more than
2 %), organised by growth phase (coarse, medium, fine).

**Storage.** The first snapshot of each phase is a keyframe; every later snapshot of the phase is a delta
against the one before it. A delta is exact: each tensor is stored as the bitwise XOR of its bytes with a
reference tensor of the same layout, zlib-compressed. Weights that barely moved share their sign, exponent
and leading mantissa bits with the reference, so their XOR is mostly zero bytes and compresses well;
XOR-ing back gives the stored tensor bit for bit. The reference is the previous snapshot's tensor when the
shape is unchanged; for a sparse block's ``values``, whose count grows with the network, the previous
values are first placed at the (row, column) positions they had, so surviving connections still line up;
anything else (a keyframe, a tensor new to the network) is stored against zeros, i.e. whole.
:attr:`SnapshotStore.compression_ratio` is the bytes of every snapshot stored whole and uncompressed over
the bytes actually kept.

**Loading.** :meth:`SnapshotStore.state` / :meth:`SnapshotStore.model` rebuild any snapshot on its own
(from its phase's keyframe forward; nothing else needs loading first), with the structure it had then.
:meth:`SnapshotStore.save` writes the store to one safetensors file (compressed bytes as ``uint8`` tensors,
the index as its JSON metadata; no pickle) and :meth:`SnapshotStore.load` reads it back.

**Ensembles.** :func:`ensemble_probabilities` averages the softmax probabilities of any chosen snapshots.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from polyscale.config import to_dict
from polyscale.io import model_from_state
from polyscale.nn.sparse_mlp import SparseMLP

FORMAT = "polyscale.sparse_snapshots/1"


@dataclass
class SnapshotInfo:
    """One snapshot: when (``epoch``), in which growth ``phase``, why (``reason``: ``"growth"`` or
    ``"improvement"``), its validation ``metric``, whether it is a keyframe, the network ``config`` and the
    bytes it takes whole (``raw_bytes``) and as kept (``stored_bytes``)."""

    index: int
    epoch: int
    phase: str
    reason: str
    metric: float | None
    keyframe: bool
    config: dict
    raw_bytes: int
    stored_bytes: int


def _block_in_features(key: str, config: dict) -> int | None:
    """``in_features`` of the block that ``blocks.{t}<-{s}.values`` belongs to (None for other keys)."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "values":
        return None
    sizes = [config["in_features"], *config["hidden_sizes"], config["out_features"]]  # a SparseMLPConfig
    return int(sizes[int(parts[1].split("<-")[1])])


def _reference(key: str, new: dict, new_config: dict, old: dict | None, old_config: dict | None) -> Tensor:
    """The tensor ``new[key]`` is XOR-ed against (see the module docstring)."""
    target = new[key]
    if old is None or key not in old:
        return torch.zeros_like(target)
    in_new = _block_in_features(key, new_config)
    if in_new is not None:
        flat_key = key[: -len("values")] + "flat_index"
        if flat_key in old and flat_key in new:
            if old_config is None:
                raise ValueError(f"{key}: the previous state was given without its config")
            in_old = _block_in_features(key, old_config)
            if in_old is None:
                raise ValueError(f"{key}: the previous config gives no in_features for this block")
            # (row, col) of each connection, as one sortable integer independent of the layer's width
            width = max(in_new, in_old) + 1
            old_rc = (old[flat_key] // in_old) * width + old[flat_key] % in_old
            new_rc = (new[flat_key] // in_new) * width + new[flat_key] % in_new
            ref = torch.zeros_like(target)
            if old_rc.numel():
                slot = torch.searchsorted(old_rc, new_rc).clamp(max=old_rc.numel() - 1)
                match = old_rc[slot] == new_rc
                ref[match] = old[key][slot[match]].to(target.dtype)
            return ref
    previous = old[key]
    if previous.shape == target.shape and previous.dtype == target.dtype:
        return previous
    return torch.zeros_like(target)


def _bytes(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().reshape(-1).numpy().view(np.uint8)


def _encode(t: Tensor, ref: Tensor) -> bytes:
    return zlib.compress(np.bitwise_xor(_bytes(t), _bytes(ref)).tobytes(), 6)


def _decode(blob: bytes, ref: Tensor) -> Tensor:
    if ref.numel() == 0:
        return ref.clone()
    raw = np.bitwise_xor(np.frombuffer(zlib.decompress(blob), dtype=np.uint8), _bytes(ref))
    flat = torch.from_numpy(raw.copy()).view(ref.dtype)
    return flat.reshape(ref.shape)


class SnapshotStore:
    """Snapshots of a growing network, kept as exact deltas (the module docstring)."""

    def __init__(self) -> None:
        self.infos: list[SnapshotInfo] = []
        self._blobs: list[dict[str, bytes]] = []
        self._layout: list[dict[str, tuple[str, list[int]]]] = []  # key -> (dtype name, shape)
        self._last: tuple[int, dict[str, Tensor]] | None = (
            None  # the latest rebuilt state, for the next delta
        )

    def __len__(self) -> int:
        return len(self.infos)

    def add(
        self, net: SparseMLP, *, epoch: int, phase: str, reason: str, metric: float | None = None
    ) -> SnapshotInfo:
        """Store ``net``'s current state; returns its :class:`SnapshotInfo`."""
        if reason not in ("growth", "improvement", "final"):
            raise ValueError(f"reason must be 'growth', 'improvement' or 'final', got {reason!r}")
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        config = to_dict(net.config)
        keyframe = not self.infos or self.infos[-1].phase != phase
        old, old_config = (None, None) if keyframe else (self._previous_state(), self.infos[-1].config)
        blobs = {k: _encode(v, _reference(k, state, config, old, old_config)) for k, v in state.items()}
        info = SnapshotInfo(
            index=len(self.infos),
            epoch=int(epoch),
            phase=phase,
            reason=reason,
            metric=None if metric is None else float(metric),
            keyframe=keyframe,
            config=config,
            raw_bytes=sum(v.numel() * v.element_size() for v in state.values()),
            stored_bytes=sum(len(b) for b in blobs.values()),
        )
        self.infos.append(info)
        self._blobs.append(blobs)
        self._layout.append(
            {k: (str(v.dtype).removeprefix("torch."), list(v.shape)) for k, v in state.items()}
        )
        self._last = (info.index, state)
        return info

    def _previous_state(self) -> dict[str, Tensor]:
        last = len(self.infos) - 1
        if self._last is not None and self._last[0] == last:
            return self._last[1]
        return self.state(last)

    def state(self, index: int) -> dict[str, Tensor]:
        """The full state dict of snapshot ``index``, rebuilt bit for bit from its phase's keyframe."""
        if not 0 <= index < len(self.infos):
            raise IndexError(f"snapshot index must be in [0, {len(self.infos)}), got {index}")
        start = index
        while not self.infos[start].keyframe:
            start -= 1
        state: dict[str, Tensor] | None = None
        for i in range(start, index + 1):
            new = {
                k: torch.zeros(shape, dtype=getattr(torch, d)) for k, (d, shape) in self._layout[i].items()
            }
            config = self.infos[i].config
            old_config = self.infos[i - 1].config if state is not None else None
            # connection positions first: a block's values are aligned through them
            for key in sorted(new, key=lambda k: k.endswith(".values")):
                new[key] = _decode(self._blobs[i][key], _reference(key, new, config, state, old_config))
            state = new
        assert state is not None
        return state

    def model(self, index: int) -> SparseMLP:
        """Snapshot ``index`` as a network of the structure it had when it was taken."""
        return model_from_state(SparseMLP, self.infos[index].config, self.state(index))

    def by_phase(self) -> dict[str, list[int]]:
        """Snapshot indices grouped by growth phase, in order."""
        out: dict[str, list[int]] = {}
        for info in self.infos:
            out.setdefault(info.phase, []).append(info.index)
        return out

    @property
    def raw_bytes(self) -> int:
        return sum(i.raw_bytes for i in self.infos)

    @property
    def stored_bytes(self) -> int:
        return sum(i.stored_bytes for i in self.infos)

    @property
    def compression_ratio(self) -> float:
        """Bytes of every snapshot stored whole and uncompressed over the bytes kept (1.0 when empty)."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def best(self) -> int:
        """Index of the snapshot with the highest validation metric."""
        scored = [(i.metric, i.index) for i in self.infos if i.metric is not None]
        if not scored:
            raise ValueError("no snapshot has a validation metric")
        return max(scored, key=lambda s: s[0])[1]

    def save(self, path: str | Path) -> Path:
        """Write the store to ``path`` (one ``.safetensors`` file, written atomically)."""
        from safetensors.torch import save

        from polyscale.atomic import atomic_write_bytes

        tensors = {
            f"{i}/{key}": torch.frombuffer(bytearray(blob), dtype=torch.uint8)
            for i, blobs in enumerate(self._blobs)
            for key, blob in blobs.items()
        }
        meta = {"format": FORMAT, "infos": [asdict(i) for i in self.infos], "layout": self._layout}
        return atomic_write_bytes(path, save(tensors, metadata={"index": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> SnapshotStore:
        """Read a store written by :meth:`save`; another, corrupt or truncated file is a ValueError naming it."""
        from safetensors import SafetensorError

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no snapshot file at {path}")
        try:
            return cls._read(path)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(
                f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: the snapshot index is damaged ({type(err).__name__}: {err})") from None

    @classmethod
    def _read(cls, path: Path) -> SnapshotStore:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("index", "{}"))
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            if found != FORMAT:
                raise ValueError(f"{path} is not a polyscale snapshot store (format {found!r})")
            store = cls()
            store.infos = [SnapshotInfo(**i) for i in meta["infos"]]
            store._layout = [{k: (d, list(s)) for k, (d, s) in lay.items()} for lay in meta["layout"]]
            store._blobs = [
                {key: f.get_tensor(f"{i}/{key}").numpy().tobytes() for key in lay}
                for i, lay in enumerate(store._layout)
            ]
        return store


@torch.no_grad()
def ensemble_probabilities(models: list[torch.nn.Module], x: Tensor) -> Tensor:
    """Mean of the models' softmax probabilities on ``x``: ``(B, classes)``."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    return torch.stack([torch.softmax(m(x), dim=-1) for m in models]).mean(dim=0)
