"""The user's own files: image folders and ``.npy`` / ``.npz`` arrays. Pickled arrays are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from polyscale.data.base import GridDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _load_image(path: Path, channels: int, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                side = min(img.size)  # center-crop to a square, then resize
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)  # (C, H, W)


def image_folder(path: str | Path, *, size: int | None = None, channels: int = 3) -> GridDataset:
    """Images under ``path`` as ``(N, C, H, W)`` in [-1, 1]; sub-folders (if any) name the classes.

    Args:
        size: center-crop to a square and resize to ``size``; None keeps the originals (they must then agree).
        channels: 1 (greyscale) or 3 (RGB).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no images found in {root} (searched for {', '.join(IMAGE_EXTENSIONS)})")
    arrays = [_load_image(p, channels, size) for p in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images in {root} have different sizes {sorted(shapes)}; pass size= to resize them")
    data = torch.from_numpy(np.stack(arrays)) * 2 - 1
    class_names = sorted({p.parent.relative_to(root).as_posix() for p in files})
    labels = None
    if class_names != ["."]:
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[p.parent.relative_to(root).as_posix()] for p in files])
    return GridDataset(data, labels, scale=0.5, shift=0.5, class_names=class_names if labels is not None else None)


def _load_array(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path} holds pickled Python objects; polyscale refuses to unpickle data files. "
                             "Save a plain numeric array (np.save(path, array.astype(np.float32)))") from None
        raise ValueError(f"cannot read {path}: {err}") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        data_key = key or next((k for k in ("x", "data", "arr_0") if k in keys), None)
        if data_key is None or data_key not in keys:
            raise ValueError(f"{path}: key {key or 'x/data/arr_0'!r} not found; available keys: {keys}")
        label_key = next((k for k in ("labels", "y") if k in keys), None)
        return loaded[data_key], None if label_key is None else loaded[label_key]


def array_file(path: str | Path, *, key: str | None = None, channel_axis: bool = True) -> GridDataset:
    """A ``.npy`` or ``.npz`` array of samples, min-max scaled to [-1, 1] (``denormalize`` restores the values).

    Args:
        key: array name inside an ``.npz`` (default: ``x``, ``data`` or ``arr_0``); labels from ``labels``/``y``.
        channel_axis: the array is ``(N, C, *spatial)``; with False it is ``(N, *spatial)`` and gets ``C = 1``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file {str(path)!r} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"expected a .npy or .npz file, got {path.name}")
    array, labels = _load_array(path, key)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if not channel_axis:
        array = array[:, None]
    if array.ndim not in (3, 4, 5):
        expected = "(N, C, L), (N, C, H, W) or (N, C, D, H, W)" if channel_axis else "(N, L), (N, H, W) or (N, D, H, W)"
        raise ValueError(f"{path}: expected an array of shape {expected}, got shape {array.shape}")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    lo, hi = float(data.min()), float(data.max())
    half_range = (hi - lo) / 2 or 1.0
    mid = (hi + lo) / 2
    label_tensor = None if labels is None else torch.from_numpy(np.asarray(labels)).long()
    return GridDataset((data - mid) / half_range, label_tensor, scale=half_range, shift=mid)
