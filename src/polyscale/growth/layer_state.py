"""Saved states of individual layers: ``save_state(layer_id, state_name, state_dict, step)`` on
safetensors, one file per saved state, with a JSON index beside them.

Layout under ``output_dir``: ``layer_{id}/{state_name}_step{step}.safetensors`` and ``index.json``, a list
of ``{"layer_id", "state_name", "step", "file"}``. Writes are atomic (temporary name, then rename), and
loading reads safetensors only, never pickles.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from polyscale.atomic import atomic_write_bytes, atomic_write_text

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class LayerStateManager:
    """Saves and loads per-layer state dicts (module docstring)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)
        index = self.root / "index.json"
        self.index: list[dict] = []
        if index.is_file():
            try:
                self.index = json.loads(index.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{index} is not valid JSON ({err}); expected the layer-state index"
                ) from None
            if not isinstance(self.index, list):
                raise ValueError(
                    f"{index}: expected a JSON list of saved states, found {type(self.index).__name__}"
                )

    def save_state(self, layer_id: int, state_name: str, state_dict: dict[str, Tensor], step: int) -> Path:
        """Write ``state_dict`` (tensors only) as layer ``layer_id``'s ``state_name`` at ``step``; returns the
        file. Saving the same (layer, name, step) again replaces it."""
        from safetensors.torch import save

        if layer_id < 0 or step < 0:
            raise ValueError(f"need layer_id >= 0 and step >= 0, got {layer_id}, {step}")
        if not _NAME.match(state_name):
            raise ValueError(f"state_name must be letters, digits, '_', '-' or '.', got {state_name!r}")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        path = self.root / f"layer_{layer_id}" / f"{state_name}_step{step}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, save(tensors))
        entry = {"layer_id": layer_id, "state_name": state_name, "step": step,
                 "file": str(path.relative_to(self.root))}  # fmt: skip
        self.index = [e for e in self.index if e["file"] != entry["file"]] + [entry]
        atomic_write_text(self.root / "index.json", json.dumps(self.index, indent=1) + "\n")
        return path

    def states(self, layer_id: int | None = None, state_name: str | None = None) -> list[dict]:
        """Index entries, optionally of one layer and / or one state name, by step."""
        rows = [e for e in self.index if (layer_id is None or e["layer_id"] == layer_id)
                and (state_name is None or e["state_name"] == state_name)]  # fmt: skip
        return sorted(rows, key=lambda e: (e["layer_id"], e["step"], e["state_name"]))

    def load_state(self, layer_id: int, state_name: str, step: int | None = None) -> dict[str, Tensor]:
        """The saved state (the latest step when ``step`` is None); a corrupt file is a ValueError naming it."""
        from polyscale.io import load_weights

        rows = [e for e in self.states(layer_id, state_name) if step is None or e["step"] == step]
        if not rows:
            have = sorted({(e["layer_id"], e["state_name"], e["step"]) for e in self.index})
            raise KeyError(f"no state {state_name!r} of layer {layer_id} at step {step}; saved: {have}")
        return load_weights(self.root / rows[-1]["file"])
