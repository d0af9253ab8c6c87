"""The user's own arrays: ``.npy`` / ``.npz`` files of samples. Pickled data is always refused."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from polyscale.data.base import GridDataset

DATA_KEYS = ("x", "data", "arr_0")  # npz names tried, in order, when no key is given
LABEL_KEYS = ("labels", "y")  # npz names read as class labels, in order of precedence

_NO_PICKLE = (
    "polyscale never unpickles data files (np.load(..., allow_pickle=False)); save a plain numeric array "
    "instead, e.g. np.save(path, array.astype(np.float32))"
)


def _read(loader, path: Path, what: str) -> np.ndarray:
    """Call ``loader()`` and turn numpy's pickle refusals into an error that names the file."""
    try:
        return loader()
    except ValueError as err:
        if "pickle" in str(err).lower() or "object arrays" in str(err).lower():
            raise ValueError(
                f"{str(path)!r}: {what} holds pickled Python objects (or is not a NumPy file); {_NO_PICKLE}"
            ) from None
        raise ValueError(f"cannot read {what} of {str(path)!r}: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read {what} of {str(path)!r}: {err}") from None


def _load_arrays(path: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(data, labels or None)`` from a ``.npy`` (no labels) or ``.npz`` file."""
    loaded = _read(lambda: np.load(path, allow_pickle=False), path, "the file")
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise ValueError(
                f"key={key!r} was given but {str(path)!r} is a single .npy array, not an .npz archive"
            )
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        if key is not None and key not in keys:
            raise ValueError(f"{str(path)!r} has no array named {key!r}; available keys: {keys}")
        if key is None:
            others = [k for k in keys if k not in LABEL_KEYS]
            key = next((k for k in DATA_KEYS if k in keys), others[0] if len(others) == 1 else None)
            if key is None:
                raise ValueError(
                    f"{str(path)!r}: cannot tell which array holds the samples (tried {list(DATA_KEYS)}); "
                    f"pass key= one of the available keys: {keys}"
                )
        label_key = next((k for k in LABEL_KEYS if k in keys and k != key), None)
        data = _read(lambda: loaded[key], path, f"array {key!r}")
        labels = None if label_key is None else _read(lambda: loaded[label_key], path, f"array {label_key!r}")
    if labels is not None and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"{str(path)!r}: labels {label_key!r} must be a 1-D integer array (N,), "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    return data, labels


def array_file(
    path: str | Path,
    *,
    key: str | None = None,
    channel_axis: bool = True,
    scale: Literal["auto"] | tuple[float, float] | None = "auto",
) -> GridDataset:
    """Samples from a ``.npy`` or ``.npz`` file as a :class:`GridDataset` ``(N, C, *spatial)`` float32.

    Files are always read with ``allow_pickle=False``: an object array or a pickle is a ``ValueError``.

    Shape: with ``channel_axis=True`` the array must be ``(N, C, L)``, ``(N, C, H, W)`` or
    ``(N, C, D, H, W)``; with ``channel_axis=False`` it is ``(N, *spatial)`` with 1-3 spatial axes and gets
    ``C = 1``. (The flag is needed because a 3-D array could be either ``(N, C, L)`` or ``(N, H, W)``.)

    Labels: in an ``.npz``, an integer array named ``labels`` (or else ``y``) of shape ``(N,)``.

    Values (``scale``): one affine map for the whole array, stored on the dataset; ``denormalize`` inverts it.

    - ``"auto"``: min-max to [-1, 1] (``lo`` -> -1, ``hi`` -> +1; a constant array is only shifted to 0).
    - ``(lo, hi)``: the natural range of the data, mapped to [-1, 1] (e.g. ``(0, 255)`` for 8-bit images);
      values outside it are an error.
    - ``None``: the values are already in model space and are kept as they are.

    Args:
        key: name of the samples inside an ``.npz`` (default: ``x``, ``data``, ``arr_0``, or the only
            non-label array); must be None for ``.npy``.
        channel_axis: whether the array has the channel axis (see Shape).
        scale: ``"auto"``, ``(lo, hi)`` or None (see Values).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"array file {str(path)!r} is a directory, expected a .npy or .npz file "
            "(a folder of images is data.kind 'image_folder', polyscale.data.image_folder)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"array file {str(path)!r} does not exist")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"expected a .npy or .npz file, got {path.name!r}")
    array, labels = _load_arrays(path, key)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise ValueError(f"{str(path)!r}: expected a real numeric or boolean array, got dtype {array.dtype}")
    if array.ndim - (2 if channel_axis else 1) not in (1, 2, 3):  # 1-3 spatial axes
        expected = (
            "(N, C, L), (N, C, H, W) or (N, C, D, H, W)"
            if channel_axis
            else "(N, L), (N, H, W) or (N, D, H, W)"
        )
        raise ValueError(
            f"{str(path)!r}: expected an array of shape {expected} (channel_axis={channel_axis}), "
            f"got shape {array.shape}"
        )
    if not channel_axis:
        array = array[:, None]  # (N, *spatial) -> (N, 1, *spatial)
    if array.size == 0:
        raise ValueError(f"{str(path)!r}: expected at least one non-empty sample, got shape {array.shape}")
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not bool(torch.isfinite(data).all()):
        raise ValueError(
            f"{str(path)!r}: the array holds {int((~torch.isfinite(data)).sum())} NaN/inf values"
        )
    mid, half_range = _value_map(data, scale, path)
    label_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return GridDataset((data - mid) / half_range, label_tensor, scale=half_range, shift=mid)


def _value_map(data: torch.Tensor, scale: object, path: Path) -> tuple[float, float]:
    """``(mid, half_range)``: model space is ``(x - mid) / half_range`` (``scale`` of :func:`array_file`)."""
    lo_data, hi_data = float(data.min()), float(data.max())
    if scale is None:
        return 0.0, 1.0
    if scale == "auto":
        lo, hi = lo_data, hi_data
    elif isinstance(scale, tuple | list) and len(scale) == 2 and float(scale[0]) < float(scale[1]):
        lo, hi = float(scale[0]), float(scale[1])
        if lo_data < lo or hi_data > hi:
            raise ValueError(
                f"{str(path)!r}: values span [{lo_data}, {hi_data}], outside the declared range {scale}"
            )
    else:
        raise ValueError(f"scale must be 'auto', a (lo, hi) tuple with lo < hi, or None, got {scale!r}")
    return (hi + lo) / 2, ((hi - lo) / 2) or 1.0
