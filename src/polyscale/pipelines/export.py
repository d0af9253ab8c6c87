"""Export a trained model directory for shipping: EMA weights only, as the model's own weights.

A training run's ``model/`` holds the raw weights and their EMA; samplers use the EMA. A shipped model needs
only one set, so the package stays small: ``export_ema(run/model, dest)`` writes ``dest`` with the EMA weights
as ``model.safetensors`` and the same ``config.json`` metadata (experiment, sample shape).
"""

from __future__ import annotations

from pathlib import Path

from polyscale.io import load_pretrained, read_model_dir, resolve_model_dir, save_pretrained
from polyscale.pipelines.sample import MODEL_CLASSES


def export_ema(source: str | Path, destination: str | Path) -> Path:
    """Write the EMA weights of ``source`` (raw weights if it has none) to ``destination``. ``source`` is a
    model directory, a run directory (its ``model/``) or a shipped model's name.

    Raises:
        FileNotFoundError / ValueError: ``source`` is not a readable polyscale model directory (see
            :func:`polyscale.io.read_model_dir`), or ``destination`` holds something other than a model.
    """
    source = resolve_model_dir(source)
    info = read_model_dir(source)
    net = load_pretrained(source, MODEL_CLASSES, ema=info.has_ema, map_location="cpu")
    return save_pretrained(net, destination, metadata=info.metadata)
