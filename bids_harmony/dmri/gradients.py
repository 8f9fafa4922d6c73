"""Gradient tables: validation and shell grouping.

Real scanners write b0 volumes as b=0 (GE, Philips) or b=5 (Siemens), jitter
nominal b-values by a few s/mm² and store zero vectors for b0 volumes.  Volumes
with ``b < b0_threshold`` are treated as b0; the remaining volumes are grouped
into shells whose b-values lie within ``b_tolerance`` of each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bids_harmony.errors import BadGradientsError

B0_THRESHOLD = 50.0
B_TOLERANCE = 50.0
UNIT_TOLERANCE = 0.1


def shell_label(bval: float) -> str:
    """BIDS-safe label of a shell, used in file names.

    >>> shell_label(999.6)
    'b1000'
    """
    return f"b{int(round(bval))}"


def nearest_shell(bvals: Iterable[float], bval: float, tolerance: float) -> float | None:
    """The b-value of ``bvals`` nearest ``bval`` if within ``tolerance``, else None.

    >>> nearest_shell([1000.0, 2000.0], 1990.0, 50.0)
    2000.0
    >>> nearest_shell([1000.0], 3000.0, 50.0) is None
    True
    """
    near = [b for b in bvals if abs(b - bval) <= tolerance]
    return min(near, key=lambda b: abs(b - bval)) if near else None


@dataclass(frozen=True)
class Shell:
    """One diffusion-weighted shell of a run.

    Attributes
    ----------
    bval : float
        Nominal b-value (s/mm²): the mean of the member b-values rounded to 10.
    indices : ndarray of int, shape (n,)
        Volume indices of the shell in the run.
    """

    bval: float
    indices: np.ndarray

    @property
    def label(self) -> str:
        """BIDS-safe label, e.g. ``b1000``."""
        return shell_label(self.bval)

    def __len__(self) -> int:
        return int(self.indices.size)


def b0_mask(bvals: np.ndarray, *, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Boolean mask of the b0 volumes (``b < b0_threshold``).

    >>> b0_mask(np.array([0, 5, 1000, 995])).tolist()
    [True, True, False, False]
    """
    return np.asarray(bvals, dtype=float) < b0_threshold


def group_shells(
    bvals: np.ndarray,
    *,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
) -> list[Shell]:
    """Group the diffusion-weighted volumes into shells.

    Sorted b-values are split wherever two neighbours differ by more than
    ``b_tolerance``; each group is one shell.

    Parameters
    ----------
    bvals : ndarray, shape (n_volumes,)
    b_tolerance : float
        Largest b-value gap (s/mm²) inside one shell.
    b0_threshold : float
        Volumes below this b-value are b0 and belong to no shell.

    Returns
    -------
    list of Shell
        Sorted by increasing b-value.

    >>> [s.label for s in group_shells(np.array([0, 995, 1005, 2000, 5, 1990]))]
    ['b1000', 'b2000']
    """
    bvals = np.asarray(bvals, dtype=float)
    dwi = np.flatnonzero(~b0_mask(bvals, b0_threshold=b0_threshold))
    if dwi.size == 0:
        return []
    order = dwi[np.argsort(bvals[dwi], kind="stable")]
    breaks = np.flatnonzero(np.diff(bvals[order]) > b_tolerance) + 1
    shells = []
    for members in np.split(order, breaks):
        members = np.sort(members)
        nominal = float(np.round(bvals[members].mean() / 10.0) * 10.0)
        shells.append(Shell(bval=nominal, indices=members))
    return shells


def validate_gradients(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    n_volumes: int,
    *,
    name: str = "gradient table",
    b0_threshold: float = B0_THRESHOLD,
    unit_tolerance: float = UNIT_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """Check a gradient table against its image and return it cleaned.

    Parameters
    ----------
    bvals : array_like, shape (n,)
    bvecs : array_like, shape (n, 3) or (3, n)
        ``(3, 3)`` is read as one vector per row.
    n_volumes : int
        Number of volumes of the image the table belongs to.
    name : str
        What to call the table in error messages (usually the file name).
    b0_threshold : float
    unit_tolerance : float
        Largest allowed deviation of a DWI b-vector norm from 1.

    Returns
    -------
    bvals : ndarray, shape (n_volumes,)
    bvecs : ndarray, shape (n_volumes, 3)
        Unit vectors on DWI volumes, zeros on b0 volumes.

    Raises
    ------
    BadGradientsError
        On a shape mismatch, non-finite or negative values, a count that differs
        from ``n_volumes``, zero or non-unit vectors on DWI volumes, or no b0.
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.ndim != 2 or 3 not in bvecs.shape:
        raise BadGradientsError(
            f"{name}: b-vectors must have 3 rows (or 3 columns), got shape {bvecs.shape}."
        )
    if bvecs.shape[1] != 3:
        bvecs = bvecs.T  # FSL/BIDS files store one vector per column
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))):
        raise BadGradientsError(f"{name}: b-values or b-vectors contain NaN or Inf.")
    if bvals.size != bvecs.shape[0]:
        raise BadGradientsError(f"{name}: {bvals.size} b-values but {bvecs.shape[0]} b-vectors.")
    if bvals.size != n_volumes:
        raise BadGradientsError(
            f"{name}: the gradient table has {bvals.size} entries but the image has "
            f"{n_volumes} volumes; each volume needs exactly one b-value and b-vector."
        )
    if np.any(bvals < 0):
        raise BadGradientsError(
            f"{name}: negative b-values "
            f"{', '.join(f'{b:g}' for b in sorted(set(bvals[bvals < 0].tolist())))}."
        )
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    if not is_b0.any():
        raise BadGradientsError(
            f"{name}: no b0 volume (b < {b0_threshold:g} s/mm²); the signal cannot be "
            "normalized. Add the run's b0 volumes or raise --b0-threshold if b0s were "
            "acquired with a small b-value."
        )
    norms = np.linalg.norm(bvecs, axis=1)
    bad = np.flatnonzero(~is_b0 & (np.abs(norms - 1.0) > unit_tolerance))
    if bad.size:
        shown = ", ".join(f"{i} (|g|={norms[i]:.3g})" for i in bad[:5])
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise BadGradientsError(
            f"{name}: diffusion-weighted volumes need unit b-vectors; volumes {shown}{more} "
            "have zero or non-unit vectors."
        )
    clean = np.zeros_like(bvecs)
    clean[~is_b0] = bvecs[~is_b0] / norms[~is_b0, None]
    return bvals, clean


#: Largest plausible b-value (s/mm²): above ex-vivo and preclinical protocols (~20 000);
#: a table above it is almost always a units or scaling slip (s/m², or × 1000).
B_MAX = 30_000.0
#: The smallest b-value (s/mm²) a diffusion-weighted shell usually has; lower shells
#: (IVIM, perfusion) are kept with a warning.
B_MIN_SHELL = 100.0
#: Directions needed to fit a diffusion tensor (six unknowns besides S0).
MIN_TENSOR_DIRECTIONS = 6


def distinct_axes(bvecs: np.ndarray, *, angle: float = 2.0) -> int:
    """Number of distinct axes among unit vectors; ``g`` and ``-g`` are one axis.

    Diffusion is antipodally symmetric, so a direction and its opposite carry the
    same information, and repeated directions (averages) add none.  Vectors within
    ``angle`` degrees of an earlier one count once (greedy, in table order).

    Parameters
    ----------
    bvecs : ndarray, shape (n, 3)
        Unit vectors (e.g. one shell's).
    angle : float
        Tolerance in degrees.

    Returns
    -------
    int

    >>> distinct_axes(np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 1, 0.001]]))
    2
    """
    vectors = np.asarray(bvecs, dtype=float).reshape(-1, 3)
    cos = np.cos(np.deg2rad(angle))
    kept: list[np.ndarray] = []
    for vector in vectors:
        if not kept or np.max(np.abs(np.stack(kept) @ vector)) < cos:
            kept.append(vector)
    return len(kept)


def tensor_conditioning(bvecs: np.ndarray) -> float:
    """Reciprocal condition number of the tensor design of unit vectors, in [0, 1].

    The diffusion tensor enters the signal through
    ``g^T D g = [gx², gy², gz², 2gxgy, 2gxgz, 2gygz] · d``; with directions that
    are all along one axis or in one plane this 6-column design is singular and
    the tensor (FA, MD) is undetermined.  A well-spread scheme gives about 0.3;
    0 means degenerate.

    Parameters
    ----------
    bvecs : ndarray, shape (n, 3)

    Returns
    -------
    float
        ``σ_min / σ_max`` of the design (0 with fewer than 6 vectors).

    >>> round(tensor_conditioning(np.eye(3)), 3)
    0.0
    """
    g = np.asarray(bvecs, dtype=float).reshape(-1, 3)
    if g.shape[0] < MIN_TENSOR_DIRECTIONS:
        return 0.0
    x, y, z = g.T
    design = np.column_stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z, 2 * y * z])
    sigma = np.linalg.svd(design, compute_uv=False)
    return float(sigma[-1] / sigma[0]) if sigma[0] > 0 else 0.0


#: Below this reciprocal condition number (:func:`tensor_conditioning`) a shell's
#: directions are degenerate: a well-spread scheme gives about 0.3.
MIN_CONDITIONING = 0.01


def usable_directions(bvecs: np.ndarray) -> bool:
    """Whether one shell's directions support a tensor or spherical-harmonic fit.

    At least :data:`MIN_TENSOR_DIRECTIONS` distinct axes, not all along one axis
    or in one plane (:func:`distinct_axes`, :func:`tensor_conditioning`).

    >>> usable_directions(np.eye(3))
    False
    """
    return (
        distinct_axes(bvecs) >= MIN_TENSOR_DIRECTIONS
        and tensor_conditioning(bvecs) >= MIN_CONDITIONING
    )
