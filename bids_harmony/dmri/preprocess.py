"""Python-backend preprocessing on arrays: checks, denoising, Gibbs, motion, mask.

All steps wrap dipy and are deterministic: MP-PCA and Patch2Self (OLS model) are
closed-form, motion correction uses dense mutual-information sampling.  File
handling lives in the interfaces; these functions take and return arrays.
"""

from __future__ import annotations

import logging

import numpy as np
from dipy.align import affine_registration
from dipy.core.gradients import gradient_table, reorient_bvecs
from dipy.denoise.gibbs import gibbs_removal
from dipy.denoise.localpca import mppca
from dipy.denoise.patch2self import patch2self
from dipy.segment.mask import median_otsu
from scipy import ndimage

from bids_harmony.dmri import _voxels
from bids_harmony.dmri.gradients import B0_THRESHOLD, b0_mask, validate_gradients
from bids_harmony.errors import BadGradientsError, BadImageError

logger = logging.getLogger(__name__)

DENOISE_METHODS = ("mppca", "patch2self", "none")
_FLIP_X = np.diag([-1.0, 1.0, 1.0])


def check_finite(data: np.ndarray, *, name: str) -> None:
    """Raise :class:`BadImageError` if ``data`` holds NaN or Inf.

    The message names ``name``, counts the bad values and voxels and shows where
    the first ones are.
    """
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.inexact):
        return
    volumes = data.reshape(data.shape[:3] + (-1,)) if data.ndim >= 3 else data[..., None]
    bad_voxels = np.zeros(volumes.shape[:-1], dtype=bool)
    n_values = 0
    first_volume = None
    for v in range(volumes.shape[-1]):
        bad = ~np.isfinite(volumes[..., v])
        count = int(bad.sum())
        if count:
            n_values += count
            bad_voxels |= bad
            first_volume = v if first_volume is None else first_volume
    if not n_values:
        return
    where = np.argwhere(bad_voxels)
    shown = ", ".join(str(tuple(int(i) for i in w)) for w in where[:3])
    more = f" and {len(where) - 3} more" if len(where) > 3 else ""
    raise BadImageError(
        f"{name}: {n_values} NaN/Inf values in {len(where)} voxels (first in volume "
        f"{first_volume}; voxels {shown}{more}). Fix or mask the image before processing."
    )


def mean_b0(data: np.ndarray, bvals: np.ndarray, *, b0_threshold: float = B0_THRESHOLD):
    """Mean of the b0 volumes, shape (X, Y, Z), float32."""
    data = np.asarray(data)
    _voxels.check_4d(data, np.asarray(bvals).size)
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    if not is_b0.any():
        raise BadGradientsError(f"no b0 volume (b < {b0_threshold:g} s/mm²).")
    return data[..., is_b0].mean(axis=-1, dtype=np.float64).astype(np.float32)


def brain_mask(
    data: np.ndarray,
    bvals: np.ndarray,
    *,
    b0_threshold: float = B0_THRESHOLD,
    median_radius: int = 2,
    numpass: int = 2,
    dilate: int = 0,
) -> np.ndarray:
    """Foreground mask from the mean b0: dipy ``median_otsu`` plus clean-up.

    The Otsu mask is reduced to its largest connected component and its holes are
    filled in 3D and slice by slice, so dark ventricles, or phantom vials in a
    water bath, stay inside.  For a phantom the mask is the water bath.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    median_radius, numpass : int
        Passed to ``median_otsu``.
    dilate : int
        Extra dilation iterations (voxels) after filling.

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    BadImageError
        The mean b0 has no positive voxel or the mask is empty.
    """
    b0 = mean_b0(data, bvals, b0_threshold=b0_threshold)
    if not np.any(b0 > 0):
        raise BadImageError("the mean b0 image has no positive voxel; no mask can be made.")
    _, mask = median_otsu(b0, median_radius=median_radius, numpass=numpass)
    labels, n_labels = ndimage.label(mask)
    if n_labels > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == np.argmax(sizes)
    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    if dilate:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    if not mask.any():
        raise BadImageError("the brain mask is empty: check the b0 volumes.")
    logger.info("Mask: %d voxels (%.1f%% of the volume).", mask.sum(), 100 * mask.mean())
    return mask


def denoise(
    data: np.ndarray,
    *,
    method: str = "mppca",
    mask: np.ndarray | None = None,
    patch_radius: int = 2,
    bvals: np.ndarray | None = None,
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """Denoise a 4D DWI series with dipy.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    method : {"mppca", "patch2self", "none"}
        MP-PCA (Veraart 2016) on local patches, or Patch2Self (Fadnavis 2020)
        with its closed-form OLS model (deterministic; needs ``bvals``).
    mask : ndarray of bool, shape (X, Y, Z), optional
        MP-PCA only: voxels to denoise (others are 0).
    patch_radius : int
        MP-PCA patch radius (Patch2Self uses single voxels).

    Returns
    -------
    ndarray, shape (X, Y, Z, N), float32
    """
    data = np.asarray(data)
    _voxels.check_4d(data)
    if method == "none":
        return data.astype(np.float32, copy=False)
    if method == "mppca":
        return mppca(
            data, mask=mask, patch_radius=patch_radius, out_dtype=np.float32,
            suppress_warning=True,
        )  # fmt: skip
    if method == "patch2self":
        if bvals is None:
            raise ValueError("patch2self needs the b-values (bvals=...).")
        return patch2self(
            data, np.asarray(bvals, dtype=float), model="ols", b0_threshold=b0_threshold,
            out_dtype=np.float32, version=1,
        )  # fmt: skip
    raise ValueError(f"unknown denoising method {method!r}; use one of {DENOISE_METHODS}.")


def remove_gibbs(
    data: np.ndarray, *, slice_axis: int = 2, n_points: int = 3, num_processes: int = 1
) -> np.ndarray:
    """Gibbs ringing removal (Kellner 2016, dipy ``gibbs_removal``), float32 copy."""
    data = np.asarray(data, dtype=np.float32)
    return gibbs_removal(
        data, slice_axis=slice_axis, n_points=n_points, inplace=False,
        num_processes=num_processes,
    )  # fmt: skip


def motion_correct(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    b0_threshold: float = B0_THRESHOLD,
    affine: np.ndarray | None = None,
    pipeline: tuple[str, ...] = ("center_of_mass", "translation", "rigid"),
    level_iters: tuple[int, ...] = (100, 50, 10),
    sigmas: tuple[float, ...] = (2.0, 1.0, 0.0),
    factors: tuple[int, ...] = (4, 2, 1),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Register every volume rigidly to the mean b0 and rotate the b-vectors.

    Each volume (b0s included) is registered to the mean of the b0 volumes with
    dipy's ``affine_registration`` (mutual information, dense sampling: the
    result is deterministic), on a grid scaled by the voxel sizes of ``affine``.
    The b-vectors are rotated by the inverse rotation part of each transform
    (dipy ``reorient_bvecs``).  They are taken to be in FSL/BIDS convention: in
    voxel axes, with x flipped when ``affine`` has a positive determinant.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    affine : ndarray, shape (4, 4), optional
        Voxel-to-world affine of the image (only its voxel sizes and handedness
        are used); default: 1 mm isotropic voxels, no flip.
    pipeline, level_iters, sigmas, factors
        Passed to ``affine_registration``; add ``"affine"`` to the pipeline for
        eddy-current-like shears.

    Returns
    -------
    corrected : ndarray, shape (X, Y, Z, N), float32
    bvecs : ndarray, shape (N, 3)
        Rotated unit vectors (zeros for b0 volumes).
    affines : ndarray, shape (N, 4, 4)
        Per volume, the map from reference to volume coordinates in mm of the
        scaled voxel grid (dipy convention).
    """
    data = np.asarray(data)
    _voxels.check_4d(data)
    bvals, bvecs = validate_gradients(bvals, bvecs, data.shape[-1], b0_threshold=b0_threshold)
    grid, flip = _voxel_grid(affine)
    reference = mean_b0(data, bvals, b0_threshold=b0_threshold)
    corrected = np.empty(data.shape, dtype=np.float32)
    affines = np.empty((data.shape[-1], 4, 4))
    for v in range(data.shape[-1]):
        moved, transform = affine_registration(
            np.asarray(data[..., v], dtype=np.float32), reference,
            moving_affine=grid, static_affine=grid, pipeline=list(pipeline),
            level_iters=list(level_iters), sigmas=list(sigmas), factors=list(factors),
        )  # fmt: skip
        corrected[..., v] = moved
        affines[v] = transform
        logger.debug("Volume %d: transform\n%s", v, np.round(transform, 4))
    rotated = rotate_bvecs(bvals, bvecs, affines, b0_threshold=b0_threshold, flip_x=flip)
    return corrected, rotated, affines


def rotate_bvecs(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    affines: np.ndarray,
    *,
    b0_threshold: float = B0_THRESHOLD,
    flip_x: bool = False,
) -> np.ndarray:
    r"""Rotate b-vectors by the inverse rotation part of per-volume transforms.

    .. math:: g' = R^{-1} g, \quad A_{3\times3} = R\,S \text{ (polar decomposition)}

    ``flip_x`` conjugates the rotations by an x flip (FSL b-vectors of images
    with a positive-determinant affine).

    Parameters
    ----------
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
    affines : ndarray, shape (N, 4, 4) or (N, 3, 3)

    Returns
    -------
    ndarray, shape (N, 3)
    """
    bvals = np.asarray(bvals, dtype=float)
    linear = np.asarray(affines, dtype=float)[:, :3, :3]
    if flip_x:
        linear = _FLIP_X @ linear @ _FLIP_X
    gtab = gradient_table(bvals, bvecs=np.asarray(bvecs, dtype=float), b0_threshold=b0_threshold)
    dwi = ~gtab.b0s_mask
    if not dwi.any():
        return np.asarray(bvecs, dtype=float).copy()
    rotated = reorient_bvecs(gtab, np.moveaxis(linear[dwi], 0, -1))
    out = np.zeros_like(rotated.bvecs)
    out[dwi] = rotated.bvecs[dwi]
    return out


def _voxel_grid(affine: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Scaled voxel grid (diag of voxel sizes) and whether FSL flips x."""
    if affine is None:
        return np.eye(4), False
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise BadImageError(f"affine must be 4x4, got {affine.shape}.")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(zooms <= 0):
        raise BadImageError("affine has a zero voxel size.")
    return np.diag(np.r_[zooms, 1.0]), bool(np.linalg.det(affine[:3, :3]) > 0)
