"""Voxel bookkeeping shared by the dMRI modules (private).

The numerical routines work on ``(n_voxels, n_volumes)`` blocks.  These helpers
turn a 4D array into such a view without copying it (nibabel returns
Fortran-ordered arrays, numpy code usually makes C-ordered ones), pick the voxels
of a mask in the same order, and cut them into chunks that bound memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bids_harmony.errors import BadImageError

CHUNK_VOXELS = 32768


def array_order(data: np.ndarray) -> str:
    """``"F"`` for a Fortran-contiguous array (nibabel), else ``"C"``."""
    if data.flags.f_contiguous and not data.flags.c_contiguous:
        return "F"
    return "C"


def check_4d(data: np.ndarray, n_volumes: int | None = None, *, name: str = "data") -> None:
    """Raise :class:`BadImageError` unless ``data`` is 4D with ``n_volumes`` volumes."""
    if data.ndim != 4:
        raise BadImageError(f"{name}: expected a 4D image (X, Y, Z, volumes), got {data.shape}.")
    if n_volumes is not None and data.shape[-1] != n_volumes:
        raise BadImageError(
            f"{name}: the image has {data.shape[-1]} volumes but the gradient table has "
            f"{n_volumes} entries."
        )


def flat_voxels(data: np.ndarray) -> tuple[np.ndarray, str]:
    """``(n_voxels, n_volumes)`` view of a 4D array and the voxel order used.

    Returns
    -------
    flat : ndarray, shape (X*Y*Z, N)
        A view when ``data`` is C- or F-contiguous, a copy otherwise.
    order : {"C", "F"}
        Pass it to :func:`mask_indices` and :func:`unflatten`.
    """
    order = array_order(data)
    return data.reshape(-1, data.shape[-1], order=order), order


def mask_indices(
    mask: np.ndarray | None, shape: tuple[int, ...], order: str, *, name: str = "mask"
) -> np.ndarray:
    """Flat indices (in ``order``) of the voxels selected by ``mask``.

    ``mask=None`` selects every voxel.
    """
    n_voxels = int(np.prod(shape))
    if mask is None:
        return np.arange(n_voxels)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise BadImageError(f"{name}: shape {mask.shape} does not match the image {tuple(shape)}.")
    return np.flatnonzero(mask.reshape(-1, order=order) != 0)


def chunks(indices: np.ndarray, size: int = CHUNK_VOXELS) -> Iterator[np.ndarray]:
    """Consecutive pieces of ``indices`` of at most ``size`` elements."""
    for start in range(0, indices.size, size):
        yield indices[start : start + size]


def new_volume(
    shape: tuple[int, ...], n_last: int | None, order: str, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Zero array of ``shape`` (+ ``n_last``) and its flat view in ``order``."""
    full = tuple(shape) + (() if n_last is None else (n_last,))
    out = np.zeros(full, dtype=dtype, order=order)
    flat = (
        out.reshape(-1, n_last, order=order) if n_last is not None else out.reshape(-1, order=order)
    )
    return out, flat
