r"""Multi-start rigid pose search for phantom scans (numpy/scipy; no I/O).

Phantoms are put back by hand between sites and rescans: centimetres and tens of
degrees apart, most of it about the bore (z) axis.  Vial layouts are nearly
rotationally symmetric, so a local optimizer started from the identity (or from
the centres of mass) falls into the wrong symmetric pose.  This module scores a
grid of rotations, each with the translation that maps the fixed object's centroid
onto the moving object's centroid, and returns the best few poses as starts for a
local refinement (:func:`bids_harmony.registration.phantom.register_phantom`, ANTs).

Score
-----
Pearson correlation of the fixed contrast and the moving contrast sampled through
the candidate transform, on a subsample of the fixed object's voxels (every
``stride``-th voxel in-plane).  The contrast should be one that a phantom makes
site-stable, such as the diffusion attenuation
(:func:`attenuation_contrast`): receive bias fields, receiver gain and TE cancel
in it, where they change a b0.

Conventions
-----------
As in :mod:`bids_harmony.registration.rigid`: a transform :math:`T` is a 4×4 world
(RAS, mm) matrix mapping a point of the fixed image to the same point of the
moving image.  Candidate :math:`T(x) = R (x - c_f) + c_m` with :math:`R` from
extrinsic x, y, z Euler angles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

__all__ = [
    "ContrastScorer",
    "PoseCandidate",
    "attenuation_contrast",
    "candidate_angles",
    "rotation_angle",
    "search_poses",
]

#: Score lost per degree of rotation: a weak prior for the simplest pose.  A thin slab of
#: a phantom whose vials run along z barely constrains tilts about x and y; without the
#: prior a 4-slice slab drifted to 10-13 degree tilts for a 0.005 gain of correlation.
ROTATION_PENALTY = 0.002
#: Score lost per unit share of the fixed object mapped outside the moving slab.
OUTSIDE_PENALTY = 0.05
#: Slabs thinner than this (mm along z) get no tilt starts (tilts are still polished).
MIN_TILT_SLAB_MM = 40.0
#: Powell polish of each returned candidate: start steps (degrees, mm) and tolerance.
POLISH_STEP = (2.0, 2.0)
POLISH_XTOL = 0.05

#: Rotations about the bore axis (z) searched, degrees.
Z_ANGLES = tuple(range(-30, 31, 5))
#: Rotations about x and y searched, degrees.
TILT_ANGLES = (-24, -16, -8, 0, 8, 16, 24)


@dataclass(frozen=True)
class PoseCandidate:
    """A start for the local refinement.

    Attributes
    ----------
    transform : ndarray, shape (4, 4)
        Fixed-to-moving world transform.
    angles_deg : tuple of 3 float
        Extrinsic x, y, z Euler angles of its rotation.
    score : float
        Correlation of the contrasts through it, less ``ROTATION_PENALTY`` per
        degree of rotation.
    """

    transform: np.ndarray
    angles_deg: tuple[float, float, float]
    score: float


def attenuation_contrast(
    mean_b0: np.ndarray, mean_dwi: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    r"""Mean diffusion attenuation :math:`\bar S_\mathrm{dw} / \bar S_0`, clipped to [0, 1].

    Parameters
    ----------
    mean_b0, mean_dwi : ndarray, shape (X, Y, Z)
        Mean of the b0 and of the diffusion-weighted volumes.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Object mask; default: voxels whose b0 is above 10 % of its 99th percentile.

    Returns
    -------
    ndarray of float32, shape (X, Y, Z)
        0 outside the mask.  Multiplicative effects (coil field, receiver gain,
        T2 weighting of a one-compartment material) cancel.
    """
    b0 = np.asarray(mean_b0, dtype=np.float64)
    dwi = np.asarray(mean_dwi, dtype=np.float64)
    if mask is None:
        mask = b0 > 0.1 * np.percentile(b0[np.isfinite(b0)], 99)
    mask = np.asarray(mask, dtype=bool) & (b0 > 0) & np.isfinite(b0) & np.isfinite(dwi)
    out = np.zeros(b0.shape, dtype=np.float32)
    out[mask] = np.clip(dwi[mask] / b0[mask], 0.0, 1.0)
    return out


def candidate_angles(
    z_angles: Sequence[float] = Z_ANGLES, tilt_angles: Sequence[float] = TILT_ANGLES
) -> np.ndarray:
    """Euler angle triples (x, y, z) in degrees of the search grid, shape (K, 3)."""
    grid = np.array(np.meshgrid(tilt_angles, tilt_angles, z_angles, indexing="ij"), dtype=float)
    return grid.reshape(3, -1).T


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    vox = np.argwhere(mask).astype(float)
    return affine[:3, :3] @ vox.mean(axis=0) + affine[:3, 3]


def _transform(angles: np.ndarray, c_fixed: np.ndarray, c_moving: np.ndarray) -> np.ndarray:
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = c_moving - rot @ c_fixed
    return out


class ContrastScorer:
    """Correlation of a fixed and a moving contrast through candidate transforms.

    Both contrasts are smoothed once, and the fixed object's points and values are
    taken once, so a search or a comparison of several transforms does neither again.

    Parameters
    ----------
    fixed, moving : ndarray, shape (X, Y, Z) and (X', Y', Z')
    fixed_affine, moving_affine : ndarray, shape (4, 4)
    fixed_mask : ndarray of bool, shape (X, Y, Z)
        The points scored (every ``stride``-th voxel in-plane).
    stride : int
    smooth_mm : float
        Gaussian FWHM (mm) applied to both contrasts.
    """

    def __init__(
        self,
        fixed: np.ndarray,
        fixed_affine: np.ndarray,
        fixed_mask: np.ndarray,
        moving: np.ndarray,
        moving_affine: np.ndarray,
        *,
        stride: int = 1,
        smooth_mm: float = 3.0,
    ) -> None:
        fixed_affine = np.asarray(fixed_affine, dtype=float)
        mask = np.asarray(fixed_mask, dtype=bool)
        sub = np.zeros_like(mask)
        sub[::stride, ::stride, :] = mask[::stride, ::stride, :]
        vox = np.argwhere(sub)
        fixed_s = _smooth(np.asarray(fixed, dtype=np.float64), fixed_affine, smooth_mm)
        self.values = fixed_s[tuple(vox.T)]
        self.points = vox.astype(float) @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
        self.moving = _smooth(np.asarray(moving, dtype=np.float64), moving_affine, smooth_mm)
        self.moving_inv = np.linalg.inv(moving_affine)

    def _voxels(self, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Moving voxel coordinates of the points, and which fall inside the moving grid."""
        transform = np.asarray(transform, dtype=float)
        pts = self.points @ transform[:3, :3].T + transform[:3, 3]
        vox = pts @ self.moving_inv[:3, :3].T + self.moving_inv[:3, 3]
        inside = np.all((vox >= -0.5) & (vox <= np.asarray(self.moving.shape) - 0.5), axis=1)
        return vox, inside

    def outside(self, transform: np.ndarray) -> float:
        """Share of the points that ``transform`` maps outside the moving grid."""
        if not len(self.points):
            return 1.0
        return float(1.0 - self._voxels(transform)[1].mean())

    def score(self, transform: np.ndarray, *, overlap: bool = True) -> float:
        """Correlation through ``transform``, less ``OUTSIDE_PENALTY`` x the share outside.

        Every point is scored, those beyond the moving slab with its nearest slice:
        dropping them would let a pose win by leaving out the points it fits worst (a
        tilt of a thin slab leaves out the ends of the phantom).  Phantoms vary little
        along their axis, so nothing else stops a pose from sliding along it; the
        overlap term keeps the object inside the moving field of view (``overlap=False``
        gives the plain correlation, the acceptance test of a registration).  -1 when
        fewer than half of the points (or fewer than 10) map inside.
        """
        vox, inside = self._voxels(transform)
        if inside.sum() < 0.5 * len(vox) or inside.sum() < 10:
            return -1.0
        sampled = ndimage.map_coordinates(self.moving, vox.T, order=1, mode="nearest")
        a = self.values - self.values.mean()
        b = sampled - sampled.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        corr = float((a * b).sum() / denom) if denom > 0 else -1.0
        return corr - (OUTSIDE_PENALTY * float(1.0 - inside.mean()) if overlap else 0.0)


def search_poses(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    fixed_mask: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    moving_mask: np.ndarray,
    *,
    angles: np.ndarray | None = None,
    n_best: int = 3,
    min_separation_deg: float = 10.0,
    stride: int = 2,
    smooth_mm: float = 3.0,
    polish: bool = True,
) -> list[PoseCandidate]:
    """Best rigid poses of a grid search, as starts for a local refinement.

    Parameters
    ----------
    fixed, moving : ndarray, shape (X, Y, Z) and (X', Y', Z')
        Contrast images (e.g. :func:`attenuation_contrast`).
    fixed_affine, moving_affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS, mm).
    fixed_mask, moving_mask : ndarray of bool
        Object masks; their centroids set each candidate's translation.
    angles : ndarray, shape (K, 3), optional
        Euler angles to try (default :func:`candidate_angles`).
    n_best : int
        How many candidates to return.
    min_separation_deg : float
        Returned candidates differ by at least this rotation angle, so the
        refinement starts in distinct basins.
    stride : int
        In-plane subsampling of the fixed voxels scored.
    smooth_mm : float
        Gaussian FWHM (mm) applied to both contrasts first: widens the basin of
        each candidate.
    polish : bool
        Bring each returned candidate to the local optimum of the score (Powell).

    Returns
    -------
    list of PoseCandidate
        Best first; the identity-rotation candidate is always scored.
    """
    fixed_mask = np.asarray(fixed_mask, dtype=bool)
    moving_mask = np.asarray(moving_mask, dtype=bool)
    if not fixed_mask.any() or not moving_mask.any():
        return []
    scorer = ContrastScorer(fixed, fixed_affine, fixed_mask, moving, moving_affine,
                            stride=stride, smooth_mm=smooth_mm)  # fmt: skip
    c_f = _centroid(fixed_mask, fixed_affine)
    c_m = _centroid(moving_mask, moving_affine)
    if angles is None:
        thin = _slab_mm(fixed_mask, fixed_affine) < MIN_TILT_SLAB_MM
        angles = candidate_angles(tilt_angles=(0,) if thin else TILT_ANGLES)
    angles = np.asarray(angles, dtype=float)
    scored = []
    for ang in angles:
        transform = _transform(ang, c_f, c_m)
        score = scorer.score(transform)
        scored.append((score - ROTATION_PENALTY * rotation_angle(transform), ang, transform))
    scored.sort(key=lambda s: -s[0])
    chosen: list[PoseCandidate] = []
    for score, ang, transform in scored:
        if all(
            rotation_angle(transform[:3, :3].T @ c.transform[:3, :3]) >= min_separation_deg
            for c in chosen
        ):
            chosen.append(PoseCandidate(transform, tuple(float(a) for a in ang), score))
        if len(chosen) == n_best:
            break
    if polish:
        chosen = [_polish(c, scorer, c_f, c_m) for c in chosen]
        chosen.sort(key=lambda c: -c.score)
    return chosen


def _polish(
    cand: PoseCandidate, scorer: ContrastScorer, c_f: np.ndarray, c_m: np.ndarray
) -> PoseCandidate:
    """Powell search of the six rigid parameters around a grid candidate.

    The grid is 5-8 degrees apart; a local optimizer of the image metric (ANTs)
    started that far away can stop in a shallow plateau of a thin slab, so the
    candidate is first brought to the nearest optimum of the same score.
    """
    from scipy.optimize import minimize

    start = np.concatenate([np.asarray(cand.angles_deg, dtype=float), np.zeros(3)])

    def make(params: np.ndarray) -> np.ndarray:
        transform = _transform(params[:3], c_f, c_m)
        transform[:3, 3] += params[3:]
        return transform

    def cost(params: np.ndarray) -> float:
        transform = make(params)
        return -(scorer.score(transform) - ROTATION_PENALTY * rotation_angle(transform))

    step_deg, step_mm = POLISH_STEP
    result = minimize(
        cost, start, method="Powell",
        options={"xtol": POLISH_XTOL, "ftol": 1e-6, "maxfev": 600,
                 "direc": np.diag([step_deg] * 3 + [step_mm] * 3)},
    )  # fmt: skip
    if -result.fun <= cand.score:
        return cand
    return PoseCandidate(make(result.x), tuple(float(a) for a in result.x[:3]), float(-result.fun))


def rotation_angle(transform: np.ndarray) -> float:
    """Rotation angle (degrees) of a rigid 4×4 or 3×3 transform."""
    rot = np.asarray(transform, dtype=float)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def _slab_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Extent of the object along the world z axis (mm)."""
    vox = np.argwhere(mask).astype(float)
    z = vox @ np.asarray(affine, dtype=float)[2, :3] + affine[2, 3]
    return float(np.ptp(z)) + float(np.linalg.norm(affine[:3, 2]))


def _smooth(image: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    if fwhm_mm <= 0:
        return image
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    sigma = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / voxel
    return ndimage.gaussian_filter(image, sigma, mode="nearest")
