r"""Warping maps between a session's native space and the FA template (antspyx).

FA, MD and GFA maps (raw and harmonized) are warped into the template
(:func:`to_template`); LinearRISH scale maps estimated in template space are
warped back onto each session's native grid (:func:`from_template`).  Both use
the transforms of :func:`bids_harmony.registration.syn.register_to_template`
and warp 4-D maps one volume at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.errors import BadImageError
from bids_harmony.registration.ants import ants_environment, ants_image, check_finite, load_image
from bids_harmony.registration.syn import SessionTransform

__all__ = ["from_template", "native_correction", "to_template"]

#: Interpolators accepted by ``ants.apply_transforms``.
_INTERPOLATORS = frozenset({"linear", "nearestNeighbor", "multiLabel", "gaussian", "bSpline",
                            "cosineWindowedSinc", "welchWindowedSinc", "hammingWindowedSinc",
                            "lanczosWindowedSinc", "genericLabel"})  # fmt: skip


def _check_interpolator(interpolator: str) -> None:
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}, "
                         f"got {interpolator!r}.")  # fmt: skip


def _warp(
    data: np.ndarray,
    affine: np.ndarray,
    fixed: Any,
    transforms: Sequence[Path],
    invert: Sequence[bool] | None,
    interpolator: str,
    what: str,
) -> np.ndarray:
    """Resample a 3-D/4-D array (one volume at a time) onto ``fixed``."""
    import ants

    out_dtype = np.float64 if data.dtype == np.float64 else np.float32
    volumes = data[..., None] if data.ndim == 3 else data
    out = np.empty((*fixed.shape, volumes.shape[-1]), dtype=out_dtype)
    for c in range(volumes.shape[-1]):
        moving = ants_image(volumes[..., c], affine, what)
        warped = ants.apply_transforms(
            fixed=fixed, moving=moving, transformlist=[str(p) for p in transforms],
            whichtoinvert=None if invert is None else list(invert), interpolator=interpolator,
        )  # fmt: skip
        out[..., c] = warped.numpy()
    return out[..., 0] if data.ndim == 3 else out


def _as_array(image: Path | np.ndarray, grid_file: Path, what: str) -> tuple[np.ndarray, Any]:
    """Data and affine of a map given as a file, or as an array on ``grid_file``'s grid."""
    import nibabel as nb

    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image), allow_4d=True)
    data = np.asarray(image)
    if data.ndim not in (3, 4):
        raise BadImageError(f"{what}: expected a 3-D or 4-D array, got shape {data.shape}.")
    if not np.issubdtype(data.dtype, np.floating) or data.dtype == np.float16:
        data = data.astype(np.float32)
    check_finite(data, what)
    try:
        grid = nb.load(str(grid_file))
    except Exception as err:
        raise BadImageError(f"{grid_file}: cannot read the image ({err}).") from err
    if tuple(data.shape[:3]) != tuple(grid.shape[:3]):
        raise BadImageError(
            f"{what}: array shape {data.shape[:3]} does not match the grid of {grid_file} "
            f"{tuple(grid.shape[:3])}."
        )
    return data, np.asarray(grid.affine, dtype=float)


def to_template(
    image: Path | np.ndarray,
    transform: SessionTransform,
    template_file: Path,
    *,
    reference: Path | None = None,
    interpolator: str = "linear",
) -> np.ndarray:
    """Warp a native-space map of a session into template space.

    Parameters
    ----------
    image : Path or ndarray, shape (X, Y, Z) or (X, Y, Z, C)
        A NIfTI file (any grid in the session's native world space: its own
        affine is used), or an array on the grid of ``reference``
        (default: the session FA map, ``transform.fa_file``).  4-D maps (e.g.
        RISH features per band) are warped volume by volume.
    transform : SessionTransform
        From :func:`register_to_template`.
    template_file : Path
        The FA template (output grid).
    reference : Path, optional
        NIfTI file whose grid an array ``image`` lies on.
    interpolator : str
        antspyx interpolator (``"linear"``, ``"nearestNeighbor"``, ``"genericLabel"``...).

    Returns
    -------
    ndarray, shape (X', Y', Z'[, C])
        On the template grid; ``float64`` for ``float64`` input, else ``float32``.
        Template voxels that map outside the native field of view are 0.
    """
    _check_interpolator(interpolator)
    reference = Path(reference) if reference is not None else transform.fa_file
    what = str(image) if isinstance(image, (str, os.PathLike)) else "map to warp"
    data, affine = _as_array(image, reference, what)
    template_data, template_affine = load_image(Path(template_file))
    with ants_environment(0):
        fixed = ants_image(template_data, template_affine, str(template_file))
        return _warp(data, affine, fixed, transform.forward, None, interpolator, what)


def from_template(
    array: np.ndarray,
    transform: SessionTransform,
    template_file: Path,
    *,
    interpolator: str = "linear",
) -> np.ndarray:
    """Warp a template-space map back onto the session FA grid (native space).

    Parameters
    ----------
    array : ndarray, shape (X', Y', Z') or (X', Y', Z', C)
        On the grid of ``template_file`` (e.g. LinearRISH scale maps per band).
    transform : SessionTransform
        From :func:`register_to_template`.
    template_file : Path
        The FA template (grid of ``array``).
    interpolator : str
        antspyx interpolator.

    Returns
    -------
    ndarray, shape (X, Y, Z[, C])
        On the grid of ``transform.fa_file``; ``float64`` for ``float64`` input,
        else ``float32``.  Native voxels that map outside the template are 0.
    """
    _check_interpolator(interpolator)
    data, template_affine = _as_array(array, Path(template_file), "template-space map")
    fa_data, fa_affine = load_image(transform.fa_file)
    with ants_environment(0):
        fixed = ants_image(fa_data, fa_affine, str(transform.fa_file))
        return _warp(data, template_affine, fixed, transform.inverse, transform.inverse_invert,
                     interpolator, "template-space map")  # fmt: skip


def native_correction(
    native: np.ndarray,
    delta: np.ndarray,
    transform: SessionTransform,
    template_file: Path,
    mask: np.ndarray,
) -> np.ndarray:
    r"""A native map plus a template-space correction warped back, inside ``mask``.

    :math:`y_{native} + \mathbb{1}_{mask} \cdot W^{-1}(\Delta)`: how a method fitted in the
    template space (ComBat) harmonizes a session's own maps without resampling them.

    Parameters
    ----------
    native : ndarray, shape (X, Y, Z)
        The session's map on its FA grid.
    delta : ndarray, shape (X', Y', Z')
        Harmonized minus unharmonized, on the template grid (0 where not harmonized).
    transform, template_file
        As for :func:`from_template`.
    mask : ndarray of bool, shape (X, Y, Z)
        Native voxels that get the correction (the brain mask).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
    """
    warped = from_template(np.asarray(delta, np.float32), transform, template_file)
    return np.asarray(native, np.float32) + np.where(mask, warped, 0.0)

