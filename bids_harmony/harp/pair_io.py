"""Load a phantom pair from the participant derivatives into flat training arrays.

The one place of :mod:`bids_harmony.harp` that reads files (nibabel).  For a
:class:`~bids_harmony.harp.pairs.PhantomPair` it

1. loads the source SH map, mask and mean b0 (preprocessed DWI + ``.bval``);
2. rigidly registers the mean b0 of the target, the target rescan and the source
   rescan to the source b0 (:func:`~bids_harmony.harp.registration.register_rigid`;
   scan-rescan sessions of one site may differ by a sub-voxel shift too);
3. resamples their SH maps (every coefficient, linear, NaN outside the field of
   view; no SH rotation, see :mod:`bids_harmony.harp.registration`) and masks
   (nearest neighbour) into the source grid;
4. zero-pads lower-order maps to 45 coefficients (order 8, the network input);
5. selects the training voxels (:mod:`bids_harmony.harp.voxels`) and returns
   them as ``(N, 45)`` float32 arrays, rows aligned across the scans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

import nibabel as nb
import numpy as np

from bids_harmony.dmri.bands import MAX_ORDER, pad_coeffs
from bids_harmony.dmri.gradients import B0_THRESHOLD, b0_mask
from bids_harmony.errors import BadImageError
from bids_harmony.harp.pairs import PhantomPair, PhantomScan
from bids_harmony.harp.registration import (
    MIN_CORRELATION,
    RigidResult,
    register_rigid,
    resample_to,
)
from bids_harmony.harp.voxels import (
    C00_PERCENTILE,
    C00_WINDOW,
    ERODE,
    MIN_VOXELS,
    check_voxel_count,
    voxel_selection,
)

logger = logging.getLogger(__name__)

#: Registration cache key: (fixed DWI, moving DWI, seed).
RegistrationKey = tuple[str, str, int]

__all__ = ["PairArrays", "RegistrationKey", "gather_pair_arrays", "load_mean_b0"]


@dataclass(frozen=True, eq=False)
class PairArrays:
    """Training arrays of one phantom pair (rows are the same voxels in every array).

    Attributes
    ----------
    source, target : ndarray, shape (N, 45), float32
        SH coefficients of the selected voxels (target resampled to the source).
    source_rescan : ndarray, shape (N, 45), or None
        The source rescan on the same voxels, when the pair has one.
    counts : mapping of str to int
        Voxels left after each selection step (``grid``, ``mask``, ``finite``,
        ``window``).
    target_rescan : ndarray, shape (N, 45), or None
    registrations : mapping of str to RigidResult
        By role: ``target``, ``target_rescan``, ``source_rescan``.
    """

    source: np.ndarray
    target: np.ndarray
    source_rescan: np.ndarray | None
    counts: Mapping[str, int]
    target_rescan: np.ndarray | None = None
    registrations: Mapping[str, RigidResult] = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Number of training voxels ``N``."""
        return int(self.source.shape[0])


def _load(path: os.PathLike[str] | str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nb.load(path)
        return np.asarray(img.dataobj, dtype=np.float32), img.affine
    except (OSError, ValueError, nb.filebasedimages.ImageFileError) as err:
        raise BadImageError(f"{path}: cannot read the image ({err}).") from err


def load_mean_b0(
    dwi_file: os.PathLike[str] | str,
    bval_file: os.PathLike[str] | str,
    *,
    b0_threshold: float = B0_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the b0 volumes of a DWI series.

    Returns
    -------
    b0 : ndarray, shape (X, Y, Z), float32
    affine : ndarray, shape (4, 4)
    """
    try:
        bvals = np.loadtxt(bval_file, ndmin=1)
        img = nb.load(dwi_file)
    except (OSError, ValueError, nb.filebasedimages.ImageFileError) as err:
        raise BadImageError(f"{dwi_file}: cannot read the DWI or its .bval ({err}).") from err
    if len(img.shape) != 4 or img.shape[3] != bvals.size:
        raise BadImageError(
            f"{dwi_file}: shape {img.shape} does not match {bvals.size} b-values in {bval_file}."
        )
    index = np.flatnonzero(b0_mask(bvals, b0_threshold=b0_threshold))
    if index.size == 0:
        raise BadImageError(f"{dwi_file}: no b0 volume (b < {b0_threshold:g}) to register.")
    total = np.zeros(img.shape[:3], dtype=np.float64)
    for i in index:  # one volume at a time, in file order
        total += np.asarray(img.dataobj[..., int(i)], dtype=np.float64)
    return (total / index.size).astype(np.float32), img.affine


def _scan_maps(scan: PhantomScan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SH map (padded to 45), mask and affine of a scan."""
    coeffs, affine = _load(scan.sh_file)
    mask, _ = _load(scan.mask_file)
    if coeffs.ndim != 4 or mask.shape != coeffs.shape[:3]:
        raise BadImageError(
            f"{scan.sh_file}: SH map {coeffs.shape} and mask {mask.shape} ({scan.mask_file}) "
            "are not on one grid."
        )
    return pad_coeffs(coeffs, MAX_ORDER), mask > 0, affine


def gather_pair_arrays(
    pair: PhantomPair,
    *,
    rule: str = "window",
    c00_window: tuple[float, float] = C00_WINDOW,
    invivo_c00: np.ndarray | None = None,
    percentile: float = C00_PERCENTILE,
    erode: int = ERODE,
    min_voxels: int = MIN_VOXELS,
    seed: int = 0,
    min_corr: float = MIN_CORRELATION,
    registrations: MutableMapping[RegistrationKey, RigidResult] | None = None,
    registration_method: str = "ants",
) -> PairArrays:
    """Register, resample and select the training voxels of a phantom pair.

    Parameters
    ----------
    pair : PhantomPair
    rule, c00_window, invivo_c00, percentile, erode
        Training-voxel rule, see :func:`bids_harmony.harp.voxels.select_training_voxels`.
    min_voxels : int
        Fewest training voxels accepted (tests use fewer than real data).
    seed : int
        Registration seed.
    min_corr : float
        Smallest acceptable b0 correlation after registration.
    registrations : mutable mapping, optional
        Cache of registrations keyed by (fixed DWI, moving DWI, seed); pass the
        same dict for every pair of a training set so each scan pair is
        registered once (shells of a multi-shell run share their registration).
    registration_method : {"ants", "flirt"}
        See :func:`bids_harmony.harp.registration.register_rigid`.

    Returns
    -------
    PairArrays

    Raises
    ------
    RegistrationError
        A registration is unusable (message: both correlations and the files).
    TrainingDataError
        Fewer than ``min_voxels`` training voxels (message: counts per step).
    BadImageError
        Unreadable or inconsistent images.
    """
    cache: MutableMapping[RegistrationKey, RigidResult] = (
        {} if registrations is None else registrations
    )
    src = pair.source
    src_coeffs, src_mask, src_affine = _scan_maps(src)
    src_b0, b0_affine = load_mean_b0(src.preproc_dwi, src.bval_file)
    if src_b0.shape != src_mask.shape or not np.allclose(b0_affine, src_affine, atol=1e-3):
        raise BadImageError(f"{src.preproc_dwi} and {src.sh_file} are not on one grid.")

    moved: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results: dict[str, RigidResult] = {}
    roles = {"target": pair.target, "target_rescan": pair.target_rescan,
             "source_rescan": pair.source_rescan}  # fmt: skip
    for role, scan in roles.items():
        if scan is None:
            continue
        key = (str(src.preproc_dwi), str(scan.preproc_dwi), int(seed))
        if key not in cache:
            b0, affine = load_mean_b0(scan.preproc_dwi, scan.bval_file)
            cache[key] = register_rigid(
                src_b0, src_affine, b0, affine, seed=seed, min_corr=min_corr,
                fixed_name=str(src.preproc_dwi), moving_name=str(scan.preproc_dwi),
                method=registration_method,
            )  # fmt: skip
        results[role] = cache[key]
        coeffs, mask, affine = _scan_maps(scan)
        transform = cache[key].transform
        moved[role] = (
            resample_to(coeffs, affine, src_mask.shape, src_affine, transform, cval=np.nan),
            resample_to(mask, affine, src_mask.shape, src_affine, transform, order=0),
        )

    rescans = [moved[r] for r in ("target_rescan", "source_rescan") if r in moved]
    selection = voxel_selection(
        src_coeffs, moved["target"][0], src_mask, moved["target"][1],
        rule=rule, c00_window=c00_window, invivo_c00=invivo_c00, percentile=percentile,
        rescans=rescans, erode=erode,
    )  # fmt: skip
    check_voxel_count(selection, min_voxels, f"phantom pair {src.label} -> {pair.target.label}")
    keep = selection.mask

    def rows(role: str) -> np.ndarray | None:
        return moved[role][0][keep].astype(np.float32) if role in moved else None

    out = PairArrays(
        source=src_coeffs[keep].astype(np.float32),
        target=moved["target"][0][keep].astype(np.float32),
        source_rescan=rows("source_rescan"),
        counts=dict(selection.counts),
        target_rescan=rows("target_rescan"),
        registrations=results,
    )
    logger.info(
        "Pair %s -> %s: %d training voxels (%s).",
        src.label, pair.target.label, out.n_voxels,
        ", ".join(f"{k} {v}" for k, v in selection.counts.items()),
    )  # fmt: skip
    return out
