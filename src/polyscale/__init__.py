"""polyscale: scale-agnostic neural networks (diffusion at any size, growing networks, transport).

``polyscale.create_sampler(checkpoint, gpu_memory=...)`` is the one-call sampling API
(:mod:`polyscale.pipelines.api`), imported on first use so that ``import polyscale`` stays light.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("create_sampler", "Sampler"):
        from polyscale.pipelines import api

        return getattr(api, name)
    raise AttributeError(f"module 'polyscale' has no attribute {name!r}")
