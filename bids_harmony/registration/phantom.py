r"""Rigid registration of phantom scans put back by hand: multi-start search, refinement, test.

:func:`register_phantom` registers a target (or rescan) phantom scan to the source
scan of a HARP pair:

1. **Contrast.**  The mean diffusion attenuation :math:`\bar S_\mathrm{dw}/\bar S_0`
   inside each scan's mask (:func:`bids_harmony.registration.multistart.attenuation_contrast`).
   A receive bias field, receiver gain and the T2 weighting of a material cancel in
   it; they change raw b0 images enough between scanners that a b0 correlation of a
   well-registered pair fell to 0.63 on a phantom study with a bias field.
2. **Multi-start search.**  A grid of rotations (±30° about the bore axis, ±24°
   about x and y) with centroid-matched translations, polished by Powell
   (:func:`~bids_harmony.registration.multistart.search_poses`): vial layouts are
   nearly symmetric, and a local optimizer started from the identity finds the
   wrong symmetric pose beyond a few degrees.
3. **Refinement.**  ``antsRegistration`` rigid (Mattes mutual information on the
   same contrast) from the best start; the result is kept only if it scores
   better than its start.  With ``method="flirt"`` FLIRT's own result (b0,
   correlation ratio) is scored as one more candidate.
4. **Acceptance test.**  Correlation of the smoothed contrasts inside the source
   mask (:data:`MIN_SIMILARITY`).  It does not depend on intensity differences
   between scanners: the attenuation of a phantom material is a property of the
   material.  A rejected pair is *reported*, not raised: the caller excludes it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bids_harmony.errors import RegistrationError
from bids_harmony.registration.ants import LPS
from bids_harmony.registration.multistart import (
    OUTSIDE_PENALTY,
    ROTATION_PENALTY,
    ContrastScorer,
    PoseCandidate,
    rotation_angle,
    search_poses,
)
from bids_harmony.registration.rigid import ants_rigid, b0_correlation

logger = logging.getLogger(__name__)

#: Smallest acceptable contrast correlation after registration.  Measured on the
#: simulated zoo: the same phantom at two sites 0.62-0.99 (lowest: a fibre phantom of
#: similar tubes at 4.5 mm, whose attenuation the sites' TE and diffusion time change),
#: rescans at one site 0.88-0.99, two different phantoms 0.28-0.53.
MIN_SIMILARITY = 0.6
#: How much the similarity may drop below its value before registration.
SIMILARITY_SLACK = 0.01

__all__ = ["MIN_SIMILARITY", "PhantomImage", "PhantomRegistration", "register_phantom"]


@dataclass(frozen=True, eq=False)
class PhantomImage:
    """What registration needs of one phantom scan.

    Attributes
    ----------
    contrast : ndarray, shape (X, Y, Z)
        Mean attenuation, 0 outside the mask.
    mask : ndarray of bool, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
    b0 : ndarray, shape (X, Y, Z)
        Mean b0 (reported, and FLIRT's input).
    name : str
        For messages (a file name).
    """

    contrast: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    b0: np.ndarray
    name: str


@dataclass(frozen=True)
class PhantomRegistration:
    """Outcome of :func:`register_phantom`.

    Attributes
    ----------
    transform : ndarray, shape (4, 4)
        Fixed-to-moving world (RAS, mm) transform.
    similarity_before, similarity_after : float
        Contrast correlation with the identity and with ``transform``.
    b0_correlation_before, b0_correlation_after : float
        Raw b0 correlation (for the record; not the test).
    accepted : bool
    reason : str
        Why the pair is rejected (empty when accepted).
    method : str
        What produced ``transform``.
    """

    transform: np.ndarray
    similarity_before: float
    similarity_after: float
    b0_correlation_before: float = float("nan")
    b0_correlation_after: float = float("nan")
    accepted: bool = True
    reason: str = ""
    method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def translation_mm(self) -> np.ndarray:
        """Translation part of :attr:`transform`, shape (3,)."""
        return np.asarray(self.transform)[:3, 3].copy()

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of :attr:`transform` in degrees."""
        return rotation_angle(self.transform)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for the model card."""
        return {
            "similarity_before": round(self.similarity_before, 4),
            "similarity_after": round(self.similarity_after, 4),
            "b0_correlation_before": round(self.b0_correlation_before, 4),
            "b0_correlation_after": round(self.b0_correlation_after, 4),
            "translation_mm": [round(float(v), 3) for v in self.translation_mm],
            "rotation_deg": round(self.rotation_deg, 3),
            "accepted": self.accepted,
            "reason": self.reason,
            "method": self.method,
            "transform": np.round(np.asarray(self.transform, dtype=float), 6).tolist(),
        }


def _write_initial(transform: np.ndarray, path: str) -> None:
    import ants

    lps = LPS @ np.asarray(transform, dtype=float) @ LPS
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3],
        translation=lps[:3, 3], center=(0.0, 0.0, 0.0),
    )  # fmt: skip
    ants.write_transform(tx, path)


def _ants_refine(fixed: PhantomImage, moving: PhantomImage, start: np.ndarray, seed: int):
    """ANTs rigid (Mattes MI) on the contrasts from ``start``; None when ANTs fails."""
    levels = (4, 2, 1) if min(fixed.contrast.shape) >= 32 else (2, 1)
    with tempfile.TemporaryDirectory(prefix="harp_init_") as tmp:
        init = os.path.join(tmp, "init.mat")
        _write_initial(start, init)
        try:
            matrix = ants_rigid(fixed.contrast, fixed.affine, moving.contrast, moving.affine,
                                 init, levels, seed, moving.name)  # fmt: skip
        except RegistrationError as err:
            logger.info("ANTs refinement of %s failed: %s", moving.name, err)
            return None
    u, _, vt = np.linalg.svd(matrix[:3, :3])  # a rigid result, without round-off scaling
    matrix[:3, :3] = u @ vt
    return matrix


def _unusable(image: PhantomImage) -> str:
    if image.contrast.ndim != 3 or image.mask.shape != image.contrast.shape:
        return f"{image.name}: the contrast and mask are not 3-D images on one grid"
    if not np.all(np.isfinite(image.b0)) or np.ptp(image.b0) == 0:
        return f"{image.name}: the b0 is empty, constant or not finite (corrupted scan?)"
    if image.mask.sum() < 27 or np.ptp(image.contrast[image.mask]) == 0:
        return f"{image.name}: the phantom mask is (nearly) empty or its attenuation is constant"
    return ""


def register_phantom(
    fixed: PhantomImage,
    moving: PhantomImage,
    *,
    seed: int = 0,
    method: str = "ants",
    min_similarity: float = MIN_SIMILARITY,
    slack: float = SIMILARITY_SLACK,
    start: np.ndarray | None = None,
) -> PhantomRegistration:
    """Register a moving phantom scan to a fixed one (see the module docstring).

    Parameters
    ----------
    fixed, moving : PhantomImage
    seed : int
        ANTs seed (``seed + 1`` is passed; 0 would mean "from the clock").
    method : {"ants", "flirt"}
        ``flirt`` adds FLIRT's result (b0, correlation ratio) as a candidate.
    min_similarity, slack : float
        The acceptance test.
    start : ndarray, shape (4, 4), optional
        A transform found for another run of the same two sessions: scored first,
        and kept without a search when it passes the test.

    Returns
    -------
    PhantomRegistration
        ``accepted`` False (with ``reason``) when the inputs are unusable or the
        test fails; the transform is then the best one found.
    """
    if method not in ("ants", "flirt"):
        raise ValueError(f"method must be 'ants' or 'flirt', got {method!r}.")
    identity = np.eye(4)
    for image in (fixed, moving):
        problem = _unusable(image)
        if problem:
            return PhantomRegistration(identity, 0.0, 0.0, accepted=False, reason=problem,
                                       method="none")  # fmt: skip

    scorer = ContrastScorer(fixed.contrast, fixed.affine, fixed.mask, moving.contrast,
                            moving.affine)  # fmt: skip

    def similarity(transform: np.ndarray) -> float:
        return scorer.score(transform, overlap=False)

    before = similarity(identity)
    tries: list[tuple[float, np.ndarray, str]] = []
    if start is not None:
        score = similarity(start)
        tries.append((score, np.asarray(start, dtype=float), "reused from another run"))
    if not tries or tries[0][0] < min_similarity or tries[0][0] < before - slack:
        candidates: list[PoseCandidate] = search_poses(
            fixed.contrast, fixed.affine, fixed.mask, moving.contrast, moving.affine, moving.mask
        )
        for i, cand in enumerate(candidates):
            tries.append((similarity(cand.transform), cand.transform, "multi-start search"))
            if i == 0 or tries[-1][0] < min_similarity:
                refined = _ants_refine(fixed, moving, cand.transform, seed)
                if refined is not None:
                    tries.append((similarity(refined), refined, "multi-start search + ANTs rigid"))
            if max(t[0] for t in tries) >= min_similarity:
                break
        if method == "flirt":
            from bids_harmony.registration.flirt import flirt_rigid

            try:
                matrix = flirt_rigid(fixed.b0, fixed.affine, moving.b0, moving.affine,
                                     f"{moving.name} to {fixed.name}")  # fmt: skip
                tries.append((similarity(matrix), matrix, "FSL flirt -dof 6 -cost corratio"))
            except RegistrationError as err:
                logger.warning("%s; using the ANTs result.", err)
    # the same weak priors as the search: among near-equal fits the least rotated one
    # (a thin slab hardly constrains tilts) keep the least rotated one
    # (a thin slab hardly constrains tilts), and one that keeps the object in the slab
    # (phantoms hardly change along their axis, so nothing else stops a slide along it)
    after, transform, how = max(
        tries, key=lambda t: t[0] - ROTATION_PENALTY * rotation_angle(t[1])
        - OUTSIDE_PENALTY * scorer.outside(t[1]),
    )  # fmt: skip
    accepted = after >= min_similarity and after >= before - slack
    reason = "" if accepted else (
        f"attenuation correlation {before:.3f} before and {after:.3f} after registration "
        f"(needs >= {min_similarity:.2f}): not the same phantom, or a scan too corrupted "
        "or repositioned beyond the search range (30 degrees about the bore axis, 24 about x/y)"
    )  # fmt: skip
    result = PhantomRegistration(
        transform=transform,
        similarity_before=before,
        similarity_after=after,
        b0_correlation_before=b0_correlation(fixed.b0, fixed.affine, moving.b0, moving.affine),
        b0_correlation_after=b0_correlation(
            fixed.b0, fixed.affine, moving.b0, moving.affine, transform
        ),
        accepted=accepted,
        reason=reason,
        method=how,
    )
    logger.info(
        "Rigid %s -> %s (%s): attenuation correlation %.3f -> %.3f, b0 correlation %.3f -> "
        "%.3f, translation %s mm, rotation %.2f deg%s.",
        moving.name, fixed.name, how, before, after, result.b0_correlation_before,
        result.b0_correlation_after, np.array2string(result.translation_mm, precision=2),
        result.rotation_deg, "" if accepted else " (REJECTED)",
    )  # fmt: skip
    return result
