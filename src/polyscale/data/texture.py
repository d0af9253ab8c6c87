"""Grey-level texture photographs shipped with scikit-image (``skimage.data``), split into two regions.

A texture is one large stationary image, so a model trains on random crops of it and samples at any size. The
held-out split is a separate band of the same photograph (never overlapping the training band), so real-vs-real
statistics can be measured at sizes up to the band's height.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyscale.data.base import GridDataset

TEXTURES = ("brick", "grass", "gravel")  # the grey 512x512 texture photographs in skimage.data


def texture(
    name: str = "gravel", *, split: str | None = None, downsample: int = 2, test_fraction: float = 0.5
) -> GridDataset:
    """The photograph ``skimage.data.<name>()`` as one sample ``(1, 1, H, W)`` in [-1, 1]; ``denormalize`` -> [0, 1].

    The 8-bit image is divided by 255, shrunk by ``downsample`` with area averaging (so the texture's grain
    covers fewer pixels and a small crop sees more of it) and mapped to [-1, 1].

    Args:
        name: one of :data:`TEXTURES`.
        split: ``"test"`` is the top ``test_fraction`` of the rows, ``"train"`` the rest, None the whole
            image. The bands are disjoint, so held-out crops never repeat training pixels.
        downsample: integer shrink factor (1 keeps 512x512).
        test_fraction: share of the rows held out, in (0, 1).
    """
    import skimage.data

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; expected one of {list(TEXTURES)}")
    if not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"downsample must be an integer >= 1, got {downsample!r}")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    image = torch.from_numpy(getattr(skimage.data, name)()).to(torch.float32) / 255.0  # (512, 512) in [0, 1]
    image = image[None, None]  # (1, 1, H, W)
    if downsample > 1:
        image = F.avg_pool2d(image, downsample)  # (1, 1, H / d, W / d)
    cut = int(round(image.shape[2] * test_fraction))
    if split == "test":
        image = image[:, :, :cut]
    elif split == "train":
        image = image[:, :, cut:]
    return GridDataset(image * 2 - 1, scale=0.5, shift=0.5)
