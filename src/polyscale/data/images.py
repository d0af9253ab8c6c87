"""The user's own images: a folder of png/jpg/bmp/webp/tiff files, optionally one sub-folder per class."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from polyscale.data.base import GridDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _too_many_pixels(path: Path, err: Exception) -> str:
    """The message for Pillow's decompression-bomb refusal of ``path``: the file, its pixels, the limit."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS or 0
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return (
        f"image file {str(path)!r} has {pixels}, more than the {2 * limit:,} that Pillow reads (twice "
        f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,}, its guard against decompression bombs); shrink the image "
        "first, or from Python raise PIL.Image.MAX_IMAGE_PIXELS before loading it"
    )


def _load_image(path: Path, *, channels: int, size: int | None) -> np.ndarray:
    """One image as ``(C, H, W)`` float32 in [0, 1]; square center-crop + bicubic resize if ``size``.

    8-bit images go through Pillow's "L"/"RGB" conversion; 16-bit greyscale ("I;16", which that conversion
    would clip to 255) is divided by 65535 and resized as floats. 32-bit "I"/"F" images have no fixed range
    and are refused (use :func:`polyscale.data.array_file`).
    """
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img: Image.Image = opened
            if img.mode in ("I", "F"):
                raise ValueError(
                    f"32-bit mode {img.mode!r} has no fixed value range; save it as .npy instead"
                )
            if img.mode.startswith("I;16"):  # 16-bit greyscale -> float image in [0, 1]
                img = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0)
            else:
                img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                side = min(img.size)  # center-crop to the largest square, then resize (Pillow antialiases)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.float32)
            array = array.clip(0, 1) if img.mode == "F" else array / 255.0  # (H, W) or (H, W, 3)
    except Image.DecompressionBombError as err:  # more pixels than Pillow agrees to decode
        raise ValueError(_too_many_pixels(path, err)) from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image file {str(path)!r}: {err}") from None
    if array.ndim == 2:
        array = np.repeat(array[None], channels, axis=0)  # (H, W) -> (C, H, W)
    else:
        array = array.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    return np.ascontiguousarray(array)


def _image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted), skipping hidden files and folders (named '.*')."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _class_labels(root: Path, files: list[Path]) -> tuple[torch.Tensor, list[str]] | None:
    """Labels from each file's top-level sub-folder (sorted names -> 0, 1, ...); None if all are in root."""
    parts = [p.relative_to(root).parts for p in files]
    if all(len(q) == 1 for q in parts):
        return None
    loose = [q[0] for q in parts if len(q) == 1]
    if loose:
        raise ValueError(
            f"{str(root)!r} has images both directly inside it "
            f"({', '.join(loose[:3])}{', ...' if len(loose) > 3 else ''}) "
            "and in class sub-folders; move every image into a class sub-folder, or pass labels=False"
        )
    class_names = sorted({q[0] for q in parts})
    index = {name: i for i, name in enumerate(class_names)}
    return torch.tensor([index[q[0]] for q in parts], dtype=torch.long), class_names


def image_folder(
    path: str | Path, *, size: int | None = None, channels: int = 3, labels: bool = True
) -> GridDataset:
    """Images under ``path`` as ``(N, C, H, W)`` float32 in [-1, 1]; ``denormalize`` returns [0, 1].

    Files with the extensions in ``IMAGE_EXTENSIONS`` (any case) are found recursively and read with Pillow in
    sorted path order. With ``labels=True`` and every image inside a sub-folder, the top-level sub-folder
    names, sorted, are the classes (``class_names``; nested folders belong to their top-level class); images
    all directly in ``path`` give an unlabelled dataset.

    Args:
        size: center-crop each image to its largest square and resize it to ``size x size`` (bicubic);
            None keeps the originals, which must then all have the same size.
        channels: 1 (greyscale, Pillow mode "L") or 3 (RGB; alpha is dropped).
        labels: read class labels from sub-folders.
    """
    root = Path(path)
    if root.is_file():
        raise ValueError(
            f"image folder {str(root)!r} is a file, expected a folder of images ({', '.join(IMAGE_EXTENSIONS)}); "
            "a .npy or .npz file is data.kind 'array' (polyscale.data.array_file)"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels or None, got {size}")
    files = _image_files(root)
    if not files:
        raise ValueError(
            f"no images found under {str(root)!r} (searched recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    arrays = [_load_image(p, channels=channels, size=size) for p in files]
    shapes = sorted({a.shape[1:] for a in arrays})
    if len(shapes) > 1:
        raise ValueError(
            f"images under {str(root)!r} have different sizes (H, W) {shapes}; pass size= to resize them"
        )
    data = torch.from_numpy(np.stack(arrays)) * 2 - 1  # (N, C, H, W) in [-1, 1]
    found = _class_labels(root, files) if labels else None
    if found is None:
        return GridDataset(data, scale=0.5, shift=0.5)
    label_tensor, class_names = found
    return GridDataset(
        data, label_tensor, num_classes=len(class_names), scale=0.5, shift=0.5, class_names=class_names
    )
