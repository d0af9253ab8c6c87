"""Export a trained model directory for shipping: EMA weights only, as the model's own weights.

A training run's ``model/`` holds the raw weights and their EMA; samplers use the EMA. A shipped model needs
only one set, so the package stays small: ``export_ema(run/model, dest)`` writes ``dest`` with the EMA weights
as ``model.safetensors`` and the same ``config.json`` metadata (experiment, sample shape).
"""

from __future__ import annotations

from pathlib import Path

import torch

from polyscale.io import load_pretrained, read_model_dir, resolve_model_dir, save_pretrained
from polyscale.pipelines.sample import MODEL_CLASSES


def export_ema(source: str | Path, destination: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the EMA weights of ``source`` (raw weights if it has none) to ``destination``. ``source`` is a
    model directory, a run directory (its ``model/``) or a shipped model's name. ``dtype=torch.float16``
    stores the weights in half precision (half the bytes); loading converts them back to the network's
    float32, so only the weights' rounding changes.

    Raises:
        FileNotFoundError / ValueError: ``source`` is not a readable polyscale model directory (see
            :func:`polyscale.io.read_model_dir`), or ``destination`` holds something other than a model.
    """
    source = resolve_model_dir(source)
    info = read_model_dir(source)
    net = load_pretrained(source, MODEL_CLASSES, ema=info.has_ema, map_location="cpu")
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        net = net.to(dtype)
    return save_pretrained(net, destination, metadata=info.metadata)
