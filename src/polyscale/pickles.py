"""Recognising pickle checkpoints, which polyscale refuses to load (unpickling can run arbitrary code)."""

from __future__ import annotations

import zipfile
from pathlib import Path

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def pickle_error(path: Path) -> ValueError:
    """The refusal for a pickle checkpoint at ``path``, with the one-time conversion recipe."""
    return ValueError(
        f"{path} looks like a pickle checkpoint; polyscale refuses to unpickle files for safety (unpickling "
        "can run arbitrary code). Convert it once, in an environment you trust: "
        f"safetensors.torch.save_file(torch.load({str(path)!r}, weights_only=True), 'model.safetensors'), "
        "then rebuild the model and save it with polyscale.io.save_pretrained"
    )


def has_pickle_signature(path: Path) -> bool:
    """Pickle protocol 2-5 header (``\\x80`` + version; also torch's legacy format) or a torch zip archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":  # zip: torch.save's container holds <archive>/data.pkl (numpy .npz does not)
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def is_pickle_file(path: Path) -> bool:
    """A pickle suffix or a pickle/torch-zip signature."""
    return path.suffix.lower() in PICKLE_SUFFIXES or has_pickle_signature(path)
