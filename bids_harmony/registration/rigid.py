r"""Rigid registration helpers (antspyx): b0-to-b0 rigid fits, resampling, ANTs plumbing.

HARP learns a voxel-wise mapping, so every training voxel needs the *same* point
of the phantom at both sites.  Phantom pairs are registered by
:func:`bids_harmony.registration.phantom.register_phantom` (multi-start
search on the attenuation contrast, an acceptance test, SH rotation), which uses
the ANTs conversion and resampling helpers of this module.  :func:`register_rigid`
is a plain b0-to-b0 rigid registration (identity, then centre-of-mass start) with
a b0-correlation check, for images that differ by a few millimetres.

Conventions
-----------
Arrays are in voxel order ``(X, Y, Z[, C])`` with a NIfTI (RAS+, mm) affine.
A transform is a 4×4 matrix :math:`T` on world coordinates that maps a point of
the *fixed* image to the corresponding point of the *moving* image (ITK's
"pull" direction): the moving image resampled into the fixed grid is
:math:`I_m(A_m^{-1} T A_f\,v)` for a fixed voxel :math:`v`.  ANTs works in LPS;
the conversion is :math:`T_\mathrm{RAS} = F\,T_\mathrm{LPS}\,F`,
:math:`F = \mathrm{diag}(-1, -1, 1, 1)`.

Determinism
-----------
``antsRegistration`` runs with dense sampling (``aff_random_sampling_rate=1``),
``--random-seed`` set to ``seed + 1`` (ANTs takes 0 to
mean "seed from the clock") and one ITK thread
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``); either alone leaves run-to-run
differences of 0.01-0.05 mm (antspyx 0.6.3).  antspyx has no ``random_seed``
argument: the seed goes through ``ants.config._random_seed``.  ITK reads the
thread variable once, when the process creates its first ITK object, so results
are bit-identical only if no ITK (antspyx) code ran earlier in the process with
more threads; a caller that uses antspyx before may export the variable at
start-up.

Initialization
--------------
Identity first: phantoms sit at the same scanner position within millimetres.
If that result is rejected (:func:`register_rigid`), the registration is retried from
antspyx's centre-of-mass alignment, for scanners whose world origins differ by
centimetres, and the better of the two is kept.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_harmony.errors import RegistrationError
from bids_harmony.registration.ants import LPS, ants_environment, check_affine, to_ants

logger = logging.getLogger(__name__)

#: Smallest acceptable normalized b0 correlation after registration.
MIN_CORRELATION = 0.7
#: How much the correlation may drop (registration noise) before the result is rejected.
CORRELATION_SLACK = 0.01
#: Identity first (phantoms are positioned consistently), then antspyx's
#: centre-of-mass alignment (``None``) when the first result is rejected.
_INITIALIZATIONS: tuple[str | None, ...] = ("Identity", None)

__all__ = ["CORRELATION_SLACK", "MIN_CORRELATION", "RegistrationError", "RigidResult",
           "b0_correlation", "register_rigid", "resample_to"]  # fmt: skip


@dataclass(frozen=True)
class RigidResult:
    """Outcome of :func:`register_rigid`.

    Attributes
    ----------
    transform : ndarray, shape (4, 4)
        World (RAS, mm) transform from fixed points to moving points.
    corr_before, corr_after : float
        Normalized b0 correlation in the fixed grid before (identity) and after.
    """

    transform: np.ndarray
    corr_before: float
    corr_after: float

    def __post_init__(self) -> None:
        matrix = np.array(self.transform, dtype=float)
        matrix.flags.writeable = False
        object.__setattr__(self, "transform", matrix)

    @property
    def translation_mm(self) -> np.ndarray:
        """Translation part of :attr:`transform`, shape (3,)."""
        return self.transform[:3, 3].copy()

    @property
    def rotation_deg(self) -> float:
        """Angle of the rotation part of :attr:`transform` in degrees."""
        cos = (np.trace(self.transform[:3, :3]) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _read_rigid(path: str) -> np.ndarray:
    """World RAS 4×4 matrix of an ANTs affine transform file (fixed → moving)."""
    import ants

    tx = ants.read_transform(path)
    params = np.asarray(tx.parameters, dtype=float)
    center = np.asarray(tx.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = params[9:12] + center - matrix @ center
    return LPS @ lps @ LPS


def resample_to(
    moving_data: np.ndarray,
    moving_affine: np.ndarray,
    fixed_shape: tuple[int, ...],
    fixed_affine: np.ndarray,
    transform: np.ndarray | None = None,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a moving image into the fixed grid through a world transform.

    Parameters
    ----------
    moving_data : ndarray, shape (X, Y, Z) or (X, Y, Z, C)
        Every channel ``C`` (e.g. all SH coefficients) is resampled alike.
    moving_affine, fixed_affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm) affines.
    fixed_shape : tuple of int
        Spatial shape ``(X', Y', Z')`` of the fixed grid (extra entries ignored).
    transform : ndarray, shape (4, 4), optional
        Fixed-to-moving world transform (:attr:`RigidResult.transform`);
        identity when omitted.
    order : int
        Spline order: 1 (linear) for maps, 0 (nearest) for masks.
    cval : float
        Value of fixed voxels whose centre falls outside the moving voxels'
        extent (``nan`` marks them; cast to the output dtype).  Within half a
        voxel of the moving edge, values are extended from the edge, so a
        sub-voxel shift of thick slices keeps the end slices.

    Returns
    -------
    ndarray, shape (X', Y', Z'[, C])
        The input dtype for ``order=0`` (masks stay boolean), else ``float64``
        for ``float64`` input and ``float32`` otherwise.
    """
    data = np.asarray(moving_data)
    if data.ndim not in (3, 4):
        raise ValueError(f"moving_data must be 3-D or 4-D, got shape {data.shape}.")
    shape = tuple(int(s) for s in fixed_shape[:3])
    transform = np.eye(4) if transform is None else np.asarray(transform, dtype=float)
    if transform.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {transform.shape}.")
    voxel_map = (
        np.linalg.inv(check_affine(moving_affine)) @ transform @ check_affine(fixed_affine)
    )
    inside = _inside_field_of_view(voxel_map, shape, data.shape[:3])
    work = np.float64 if data.dtype == np.float64 else np.float32
    dtype = data.dtype if order == 0 else np.dtype(work)
    channels = data[..., None] if data.ndim == 3 else data
    out = np.empty((*shape, channels.shape[-1]), dtype=dtype)
    for c in range(channels.shape[-1]):
        out[..., c] = ndimage.affine_transform(
            channels[..., c].astype(work, copy=False),
            voxel_map[:3, :3],
            offset=voxel_map[:3, 3],
            output_shape=shape,
            order=order,
            mode="nearest",
        )
    out[~inside] = cval
    return out[..., 0] if data.ndim == 3 else out


def _inside_field_of_view(
    voxel_map: np.ndarray, shape: tuple[int, ...], moving_shape: tuple[int, ...]
) -> np.ndarray:
    """Fixed voxels whose centre maps inside the moving voxels' extent (±½ voxel)."""
    inside = np.ones(shape, dtype=bool)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    for axis, size in enumerate(moving_shape):
        coord = voxel_map[axis, 3] + sum(voxel_map[axis, k] * grids[k] for k in range(3))
        inside &= (coord >= -0.5) & (coord <= size - 0.5)
    return inside


def b0_correlation(
    fixed_b0: np.ndarray,
    fixed_affine: np.ndarray,
    moving_b0: np.ndarray,
    moving_affine: np.ndarray,
    transform: np.ndarray | None = None,
) -> float:
    """Pearson correlation of the fixed b0 and the resampled moving b0.

    Computed over the fixed voxels where either image is above 10 % of its 99th
    percentile (the object plus a rim), inside the moving field of view, so the
    empty background does not inflate the value.
    """
    fixed = np.asarray(fixed_b0, dtype=np.float64)
    moved = resample_to(
        np.asarray(moving_b0, dtype=np.float64), moving_affine, fixed.shape, fixed_affine,
        transform, cval=np.nan,
    )  # fmt: skip
    valid = np.isfinite(moved) & np.isfinite(fixed)
    if not valid.any():
        return 0.0
    thr_f = 0.1 * np.percentile(fixed[valid], 99)
    thr_m = 0.1 * np.percentile(moved[valid], 99)
    keep = valid & ((fixed > thr_f) | (moved > thr_m))
    if keep.sum() < 3:
        return 0.0
    a = fixed[keep] - fixed[keep].mean()
    b = moved[keep] - moved[keep].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def ants_rigid(
    fixed_b0: np.ndarray,
    fixed_affine: np.ndarray,
    moving_b0: np.ndarray,
    moving_affine: np.ndarray,
    init: str | None,
    levels: tuple[int, ...],
    seed: int,
    what: str,
) -> np.ndarray:
    """One ``antsRegistration`` rigid run; the RAS fixed-to-moving transform."""
    import ants

    with ants_environment(seed), tempfile.TemporaryDirectory(prefix="harp_reg_") as tmp:
        # the thread variable must be set before the first ITK image of the process
        fixed = to_ants(fixed_b0, fixed_affine)
        moving = to_ants(moving_b0, moving_affine)
        try:
            out = ants.registration(
                fixed,
                moving,
                type_of_transform="Rigid",
                initial_transform=init,
                outprefix=os.path.join(tmp, "rigid_"),
                aff_metric="mattes",
                aff_sampling=32,
                aff_random_sampling_rate=1.0,
                aff_iterations=tuple(200 for _ in levels),
                aff_shrink_factors=levels,
                aff_smoothing_sigmas=tuple(lvl // 2 for lvl in levels),
            )
            return _read_rigid(out["fwdtransforms"][0])
        except (RuntimeError, IndexError, ValueError) as err:
            raise RegistrationError(f"rigid registration of {what} failed: {err}") from err


def register_rigid(
    fixed_b0: np.ndarray,
    fixed_affine: np.ndarray,
    moving_b0: np.ndarray,
    moving_affine: np.ndarray,
    *,
    seed: int = 0,
    min_corr: float = MIN_CORRELATION,
    slack: float = CORRELATION_SLACK,
    fixed_name: str = "fixed image",
    moving_name: str = "moving image",
    method: str = "ants",
) -> RigidResult:
    """Rigidly register a moving b0 to a fixed b0 (ANTs Mattes MI, or FSL FLIRT).

    Parameters
    ----------
    fixed_b0 : ndarray, shape (X, Y, Z)
        Mean b0 of the source scan (the grid everything is resampled into).
    fixed_affine, moving_affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm) affines; orthogonal axes.
    moving_b0 : ndarray, shape (X', Y', Z')
        Mean b0 of the target (or rescan) scan.
    seed : int
        Non-negative seed; ANTs gets ``seed + 1`` (its 0 means "from the clock").
    min_corr : float
        Smallest acceptable b0 correlation after registration.
    slack : float
        Allowed drop of the correlation below its value before registration.
    fixed_name, moving_name : str
        How the images are named in messages (file names).
    method : {"ants", "flirt"}
        ``antsRegistration`` (identity, then centre-of-mass initialization), or
        one ``flirt -dof 6 -cost corratio`` run first (:mod:`bids_harmony.registration.flirt`;
        FLIRT searches rotations itself), then the ANTs tries if its result fails
        the correlation check.  The check is the same for both.

    Returns
    -------
    RigidResult

    Raises
    ------
    RegistrationError
        ANTs failed, or the correlation after registration is below ``min_corr``
        or more than ``slack`` below the correlation before.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    fixed_b0 = np.asarray(fixed_b0, dtype=np.float32)
    moving_b0 = np.asarray(moving_b0, dtype=np.float32)
    for name, arr in ((fixed_name, fixed_b0), (moving_name, moving_b0)):
        if arr.ndim != 3 or not np.all(np.isfinite(arr)) or np.ptp(arr) == 0:
            raise RegistrationError(f"{name}: the b0 must be a finite, non-constant 3-D image.")
    levels = (4, 2, 1) if min(fixed_b0.shape) >= 16 else (2, 1)
    before = b0_correlation(fixed_b0, fixed_affine, moving_b0, moving_affine)
    if method not in ("ants", "flirt"):
        raise ValueError(f"method must be 'ants' or 'flirt', got {method!r}.")
    tries = []
    what = f"{moving_name} to {fixed_name}"
    # A FLIRT result that fails the check falls back to ANTs' tries.
    for init in _INITIALIZATIONS if method == "ants" else ("flirt", *_INITIALIZATIONS):
        if init == "flirt":
            from bids_harmony.registration.flirt import flirt_rigid

            try:
                transform = flirt_rigid(fixed_b0, fixed_affine, moving_b0, moving_affine, what)
            except RegistrationError as err:
                logger.warning("%s; trying ANTs.", err)
                continue
        else:
            transform = ants_rigid(fixed_b0, fixed_affine, moving_b0, moving_affine, init,
                                    levels, seed, what)  # fmt: skip
        after = b0_correlation(fixed_b0, fixed_affine, moving_b0, moving_affine, transform)
        tries.append((after, transform))
        if after >= min_corr and after >= before - slack:
            break
        logger.info("Rigid %s -> %s from %s init: b0 correlation %.3f -> %.3f.",
                    moving_name, fixed_name, init or "centre-of-mass", before, after)  # fmt: skip
    after, transform = max(tries, key=lambda t: t[0])
    result = RigidResult(transform=transform, corr_before=before, corr_after=after)
    logger.info(
        "Rigid %s -> %s: b0 correlation %.4f -> %.4f, translation %s mm, rotation %.2f deg.",
        moving_name, fixed_name, before, after,
        np.array2string(result.translation_mm, precision=2), result.rotation_deg,
    )  # fmt: skip
    if after < min_corr or after < before - slack:
        raise RegistrationError(
            f"rigid registration of {moving_name} to {fixed_name} is not usable: normalized "
            f"b0 correlation {before:.3f} before, {after:.3f} after (needs >= {min_corr:.2f} "
            f"and no drop over {slack:.2f}). Check that both scans show the same phantom "
            "and that the b0 images are not empty or corrupted."
        )
    return result
