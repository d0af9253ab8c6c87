"""polyscale: scale-agnostic neural networks (diffusion at any size, growing networks, transport)."""

__version__ = "0.1.0"
