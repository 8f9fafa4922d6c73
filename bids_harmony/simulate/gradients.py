"""Gradient tables as scanners write them, and the gradients they really apply.

Each site has its own electrostatically dispersed direction set per direction count
(the vendor's default table), reused for every b-value and shell, as on real
scanners.  Tables follow vendor habits: b0 volumes first (GE) or interleaved
(Siemens), b0 written as 0 (GE) or 5 s/mm² (Siemens), and b-values that jitter by
a few s/mm² between volumes where the vendor rounds gradient amplitudes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dipy.core.sphere import HemiSphere, disperse_charges
from numpy.typing import NDArray

#: b-values below this are b0 volumes (s/mm²).
B0_THRESHOLD = 50.0


def dispersed_directions(n: int, rng: np.random.Generator, *, iters: int = 1000) -> NDArray:
    """A near-uniform set of ``n`` antipodally symmetric unit directions.

    Parameters
    ----------
    n : int
        Number of directions.
    rng : numpy.random.Generator
        Source of the random starting configuration (different per site).
    iters : int
        Iterations of :func:`dipy.core.sphere.disperse_charges`.

    Returns
    -------
    ndarray, shape (n, 3)
        Unit vectors with non-negative z (one of each antipodal pair).
    """
    start = rng.standard_normal((n, 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    hemi, _ = disperse_charges(HemiSphere(xyz=start), iters)
    dirs = np.asarray(hemi.vertices, dtype=float)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return dirs * np.where(dirs[:, 2:3] < 0, -1.0, 1.0)


def n_b0_volumes(n_dwi: int) -> int:
    """Number of b0 volumes acquired with ``n_dwi`` diffusion-weighted volumes.

    >>> n_b0_volumes(60), n_b0_volumes(120), n_b0_volumes(30)
    (5, 10, 3)
    """
    return max(2, math.ceil(n_dwi / 12))


def acquisition_table(
    shells: Sequence[float],
    directions: NDArray,
    *,
    b0_value: float,
    b0_layout: str,
    jitter: int,
    rng: np.random.Generator,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The ``.bval``/``.bvec`` table a scanner writes for a (multi-)shell protocol.

    Parameters
    ----------
    shells : sequence of float
        Nominal b-values (s/mm²) of the diffusion-weighted shells, acquired in order.
    directions : ndarray, shape (n, 3)
        Directions used for every shell.
    b0_value : float
        b-value written for b0 volumes (0 for GE, 5 for Siemens).
    b0_layout : {"start", "interleaved"}
        All b0 volumes first, or one at the start and the rest spread evenly.
    jitter : int
        Written b-values of DWI volumes are ``b + jitter * m`` with m in {-1, 0, 1}
        (0: exact nominal values).
    rng : numpy.random.Generator

    Returns
    -------
    bvals : ndarray, shape (V,)
    bvecs : ndarray, shape (V, 3)
        Unit vectors for DWI volumes, zeros for b0 volumes.
    """
    dwi_b = np.concatenate([np.full(len(directions), float(b)) for b in shells])
    dwi_g = np.concatenate([directions] * len(shells))
    if jitter:
        dwi_b = dwi_b + jitter * rng.integers(-1, 2, size=dwi_b.shape)
    n_b0 = n_b0_volumes(len(dwi_b))
    if b0_layout == "start":
        b0_pos = np.arange(n_b0)
    elif b0_layout == "interleaved":
        total = len(dwi_b) + n_b0
        b0_pos = np.round(np.linspace(0, total - 1, n_b0 + 1)[:-1]).astype(int)
    else:
        raise ValueError(f"unknown b0 layout {b0_layout!r}")
    total = len(dwi_b) + n_b0
    is_b0 = np.zeros(total, dtype=bool)
    is_b0[b0_pos] = True
    bvals = np.full(total, float(b0_value))
    bvecs = np.zeros((total, 3))
    bvals[~is_b0] = dwi_b
    bvecs[~is_b0] = dwi_g
    return bvals, bvecs


def effective_gradients(
    bvals: NDArray, bvecs: NDArray, *, b_scale: float, gain: NDArray
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Diffusion weighting actually applied by a miscalibrated gradient system.

    The nominal gradient direction ``g`` is distorted by the per-axis gain matrix
    ``L`` and the overall b-value scale ``δ``:

    .. math:: g' = L g,\\qquad b' = b\\,(1 + \\delta)\\,\\lVert L g \\rVert^2,
              \\qquad \\hat g' = g' / \\lVert g' \\rVert

    Parameters
    ----------
    bvals : ndarray, shape (V,)
    bvecs : ndarray, shape (V, 3)
    b_scale : float
        ``δ``, relative b-value error of the site.
    gain : ndarray, shape (3, 3)
        ``L``, close to the identity.

    Returns
    -------
    b_eff : ndarray, shape (V,)
    g_eff : ndarray, shape (V, 3)
        Unit effective directions (zeros where the nominal vector is zero).
    is_b0 : ndarray of bool, shape (V,)
        Volumes without a direction or with ``b < B0_THRESHOLD``; their signal is
        computed with the orientation-averaged (trace) diffusivity.
    """
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    g = bvecs @ np.asarray(gain, dtype=float).T
    norm = np.linalg.norm(g, axis=1)
    is_b0 = (norm < 1e-6) | (bvals < B0_THRESHOLD)
    unit_norm = np.linalg.norm(bvecs, axis=1)
    stretch = np.where(unit_norm > 1e-6, norm / np.maximum(unit_norm, 1e-12), 1.0) ** 2
    b_eff = bvals * (1.0 + b_scale) * stretch
    g_eff = np.where(norm[:, None] > 1e-6, g / np.maximum(norm, 1e-12)[:, None], 0.0)
    return b_eff, g_eff, is_b0
