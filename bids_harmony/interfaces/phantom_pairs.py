"""Load a phantom pair from the participant derivatives into flat training arrays.

The one place of :mod:`bids_harmony.methods.harp` that reads files (nibabel).  For a
:class:`~bids_harmony.bids.phantom_pairs.PhantomPair` it

1. loads the source SH map, mask, mean b0 and mean diffusion-weighted image;
2. registers the target, the target rescan and the source rescan to the source
   (:func:`~bids_harmony.registration.phantom.register_phantom`: multi-start
   search on the attenuation contrast, ANTs refinement, acceptance test).  A
   rejected target makes the pair *excluded* (returned with the reason, never
   raised); a rejected rescan is dropped from the pair;
3. resamples their SH maps (every coefficient, linear, NaN outside the field of
   view) and masks (nearest neighbour) into the source grid, and **rotates** the
   SH coefficients into the source gradient frame
   (:func:`bids_harmony.dmri.sh_rotation.rotate_sh`): a phantom turned by 20°
   turns its fibre orientation functions by 20° in the scanner frame;
4. zero-pads lower-order maps to 45 coefficients (order 8, the network input);
5. selects the training voxels (:mod:`bids_harmony.methods.harp.voxels`), flags the
   validation blocks (:func:`~bids_harmony.methods.harp.voxels.block_validation`) and
   returns them as ``(N, 45)`` float32 arrays, rows aligned across the scans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import nibabel as nb
import numpy as np

from bids_harmony.bids.phantom_pairs import PhantomPair, PhantomScan
from bids_harmony.dmri.bands import MAX_ORDER, pad_coeffs
from bids_harmony.dmri.gradients import B0_THRESHOLD, b0_mask
from bids_harmony.dmri.sh_rotation import direction_map, rotate_sh
from bids_harmony.errors import BadImageError
from bids_harmony.methods.harp.voxels import (
    C00_PERCENTILE,
    C00_WINDOW,
    ERODE,
    block_validation,
    voxel_selection,
)
from bids_harmony.registration.multistart import attenuation_contrast
from bids_harmony.registration.phantom import (
    MIN_SIMILARITY,
    PhantomImage,
    PhantomRegistration,
    register_phantom,
)
from bids_harmony.registration.rigid import resample_to

logger = logging.getLogger(__name__)

#: Registration cache key: (fixed DWI, moving DWI, seed).
RegistrationKey = tuple[str, str, int]

__all__ = ["PairArrays", "RegistrationCache", "RegistrationKey", "gather_pair_arrays",
           "load_mean_b0", "phantom_image"]  # fmt: skip


@dataclass
class RegistrationCache:
    """What the pairs of one training set share, so nothing is loaded or registered twice.

    Attributes
    ----------
    images : dict of str to PhantomImage
        Registration inputs by preprocessed DWI file.
    results : dict of RegistrationKey to PhantomRegistration
        One registration per scan pair (the shells of a run share it).
    starts : dict of tuple to ndarray
        An accepted transform between two sessions, tried first on their other runs.
    """

    images: dict[str, PhantomImage] = field(default_factory=dict)
    results: dict[RegistrationKey, PhantomRegistration] = field(default_factory=dict)
    starts: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)


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
        Voxels left after each selection step.
    target_rescan : ndarray, shape (N, 45), or None
    registrations : mapping of str to PhantomRegistration
        By role: ``target``, ``target_rescan``, ``source_rescan``.
    validation : ndarray of bool, shape (N,)
        Rows in a validation block.
    components : list of dict
        Per connected component of the C00-rule voxels (vial, tube, bath).
    excluded : str
        Why the pair was left out (then the arrays are empty).
    """

    source: np.ndarray
    target: np.ndarray
    source_rescan: np.ndarray | None
    counts: Mapping[str, int]
    target_rescan: np.ndarray | None = None
    registrations: Mapping[str, PhantomRegistration] = field(default_factory=dict)
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    components: list[dict[str, object]] = field(default_factory=list)
    excluded: str = ""

    @property
    def n_voxels(self) -> int:
        """Number of training voxels ``N``."""
        return int(self.source.shape[0])


def _load(path: os.PathLike[str] | str) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nb.load(path)
        return np.asarray(img.dataobj, dtype=np.float32), img.affine
    except (OSError, ValueError, EOFError, nb.filebasedimages.ImageFileError) as err:
        raise BadImageError(f"{path}: cannot read the image ({err}).") from err


def _means(dwi_file, bval_file, b0_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean b0, mean diffusion-weighted volume and affine, one volume at a time."""
    try:
        bvals = np.loadtxt(bval_file, ndmin=1)
        img = nb.load(dwi_file)
    except (OSError, ValueError, nb.filebasedimages.ImageFileError) as err:
        raise BadImageError(f"{dwi_file}: cannot read the DWI or its .bval ({err}).") from err
    if len(img.shape) != 4 or img.shape[3] != bvals.size:
        raise BadImageError(
            f"{dwi_file}: shape {img.shape} does not match {bvals.size} b-values in {bval_file}."
        )
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    if not is_b0.any():
        raise BadImageError(f"{dwi_file}: no b0 volume (b < {b0_threshold:g}) to register.")
    sums = [np.zeros(img.shape[:3]), np.zeros(img.shape[:3])]
    try:
        for i in range(bvals.size):  # in file order: a truncated file fails here, not later
            sums[0 if is_b0[i] else 1] += np.asarray(img.dataobj[..., i], dtype=np.float64)
    except (OSError, ValueError, EOFError) as err:
        raise BadImageError(f"{dwi_file}: cannot read the image ({err}).") from err
    n_dw = max(int((~is_b0).sum()), 1)
    return (sums[0] / is_b0.sum()).astype(np.float32), (sums[1] / n_dw).astype(np.float32), (
        img.affine
    )


def load_mean_b0(
    dwi_file: os.PathLike[str] | str,
    bval_file: os.PathLike[str] | str,
    *,
    b0_threshold: float = B0_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the b0 volumes of a DWI series: ``(b0 (X, Y, Z) float32, affine)``."""
    b0, _, affine = _means(dwi_file, bval_file, b0_threshold)
    return b0, affine


def phantom_image(scan: PhantomScan, mask: np.ndarray | None = None) -> PhantomImage:
    """The registration inputs of a scan: attenuation contrast, mask, b0."""
    b0, dwi, affine = _means(scan.preproc_dwi, scan.bval_file, B0_THRESHOLD)
    if mask is None:
        mask = _load(scan.mask_file)[0] > 0
    if mask.shape != b0.shape:
        raise BadImageError(f"{scan.mask_file}: mask {mask.shape} and DWI {b0.shape} differ.")
    return PhantomImage(attenuation_contrast(b0, dwi, mask), mask, affine, b0,
                        str(scan.preproc_dwi))  # fmt: skip


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


def _session_key(fixed: PhantomScan, moving: PhantomScan) -> tuple[str, ...]:
    return (fixed.subject, fixed.session or "", moving.subject, moving.session or "")


def gather_pair_arrays(
    pair: PhantomPair,
    *,
    rule: str = "window",
    c00_window: tuple[float, float] = C00_WINDOW,
    invivo_c00: np.ndarray | None = None,
    percentile: float = C00_PERCENTILE,
    erode: int = ERODE,
    seed: int = 0,
    min_similarity: float = MIN_SIMILARITY,
    registrations: RegistrationCache | None = None,
    registration_method: str = "ants",
    validation_fraction: float = 0.2,
    validation_block: int = 4,
) -> PairArrays:
    """Register, resample and select the training voxels of a phantom pair.

    Parameters
    ----------
    pair : PhantomPair
    rule, c00_window, invivo_c00, percentile, erode
        Training-voxel rule, see :func:`bids_harmony.methods.harp.voxels.voxel_selection`.
    seed : int
        Registration seed and validation-block draw.
    min_similarity : float
        Acceptance test of a registration.
    registrations : RegistrationCache, optional
        Shared by every pair of a training set.
    registration_method : {"ants", "flirt"}
    validation_fraction, validation_block : float, int
        Share of the grid's ``validation_block``-voxel cubes held out.

    Returns
    -------
    PairArrays
        ``excluded`` set (and no rows) when the target registration is rejected.

    Raises
    ------
    BadImageError
        Unreadable or inconsistent images.
    """
    cache = RegistrationCache() if registrations is None else registrations
    src = pair.source
    src_coeffs, src_mask, src_affine = _scan_maps(src)

    def image(scan: PhantomScan, mask: np.ndarray | None = None) -> PhantomImage:
        name = str(scan.preproc_dwi)
        if name not in cache.images:
            cache.images[name] = phantom_image(scan, mask)
        return cache.images[name]

    fixed = image(src, src_mask)
    if fixed.contrast.shape != src_mask.shape or not np.allclose(fixed.affine, src_affine,
                                                                 atol=1e-3):  # fmt: skip
        raise BadImageError(f"{src.preproc_dwi} and {src.sh_file} are not on one grid.")

    moved: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    results: dict[str, PhantomRegistration] = {}
    roles = {"target": pair.target, "target_rescan": pair.target_rescan,
             "source_rescan": pair.source_rescan}  # fmt: skip
    for role, scan in roles.items():
        if scan is None:
            continue
        key = (str(src.preproc_dwi), str(scan.preproc_dwi), int(seed))
        sessions = _session_key(src, scan)
        if key not in cache.results:
            try:
                moving = image(scan)
            except BadImageError as err:
                cache.results[key] = PhantomRegistration(
                    np.eye(4), 0.0, 0.0, accepted=False, reason=str(err), method="none"
                )
            else:
                cache.results[key] = register_phantom(
                    fixed, moving, seed=seed, method=registration_method,
                    min_similarity=min_similarity, start=cache.starts.get(sessions),
                )  # fmt: skip
            if cache.results[key].accepted:
                cache.starts[sessions] = cache.results[key].transform
        result = cache.results[key]
        results[role] = result
        if not result.accepted:
            if role == "target":
                logger.warning("Phantom pair %s -> %s excluded: %s.", src.label,
                               pair.target.label, result.reason)  # fmt: skip
                return _excluded(results, result.reason)
            logger.warning("Rescan %s of pair %s not used: %s.", scan.label, src.label,
                           result.reason)  # fmt: skip
            continue
        coeffs, mask, affine = _scan_maps(scan)
        transform = result.transform
        resampled = resample_to(coeffs, affine, src_mask.shape, src_affine, transform,
                                cval=np.nan)  # fmt: skip
        moved[role] = (
            rotate_sh(resampled, direction_map(src_affine, affine, transform)),
            resample_to(mask, affine, src_mask.shape, src_affine, transform, order=0),
        )

    rescans = [moved[r] for r in ("target_rescan", "source_rescan") if r in moved]
    selection = voxel_selection(
        src_coeffs, moved["target"][0], src_mask, moved["target"][1],
        rule=rule, c00_window=c00_window, invivo_c00=invivo_c00, percentile=percentile,
        rescans=rescans, erode=erode,
    )  # fmt: skip
    keep = selection.mask
    val_grid = block_validation(keep.shape, block=validation_block,
                                fraction=validation_fraction, seed=seed)  # fmt: skip

    def rows(role: str) -> np.ndarray | None:
        return moved[role][0][keep].astype(np.float32) if role in moved else None

    out = PairArrays(
        source=src_coeffs[keep].astype(np.float32),
        target=moved["target"][0][keep].astype(np.float32),
        source_rescan=rows("source_rescan"),
        counts=dict(selection.counts),
        target_rescan=rows("target_rescan"),
        registrations=results,
        validation=val_grid[keep],
        components=selection.components,
    )
    logger.info(
        "Pair %s -> %s: %d training voxels in %d component(s) (%s).",
        src.label, pair.target.label, out.n_voxels,
        sum(1 for c in selection.components if c["kept"]),
        ", ".join(f"{k} {v}" for k, v in selection.counts.items()),
    )  # fmt: skip
    return out


def _excluded(results: dict[str, PhantomRegistration], reason: str) -> PairArrays:
    empty = np.zeros((0, 45), dtype=np.float32)
    return PairArrays(source=empty, target=empty, source_rescan=None, counts={},
                      registrations=results, excluded=reason)  # fmt: skip
