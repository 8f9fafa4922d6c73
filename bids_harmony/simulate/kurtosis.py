"""Exact DKI ground truth of a tissue model (the cumulant expansion of its mixture).

Every voxel's site-free signal (TE → 0, TR → ∞: weights ``f_k ρ_k``) is a mixture
of Gaussian pools ``m`` (each compartment is one pool, or two when split,
:meth:`~bids_harmony.simulate.tissue.TissueModel.pool_diffusivities`) with
normalised signal fractions ``p_m`` and cylindrically symmetric tensors ``D_m``:

.. math::

    \\frac{S(b, n)}{S_0} = \\sum_m p_m e^{-b\\, n^T D_m n},\\qquad
    \\ln \\frac{S}{S_0} = -b\\, \\bar d(n) + \\frac{b^2}{2}
    \\operatorname{Var}_m[n^T D_m n] + O(b^3).

Matching DKI, ``ln S/S0 = −b nᵀDn + b² MD² W(n) / 6`` with ``W(n) = W_ijkl n_i n_j
n_k n_l``, gives exactly

.. math::

    D = \\sum_m p_m D_m,\\qquad
    W_{ijkl} = \\frac{1}{\\mathrm{MD}^2}\\Bigl[\\sum_m p_m
    (D^m_{ij} D^m_{kl} + D^m_{ik} D^m_{jl} + D^m_{il} D^m_{jk})
    - (D_{ij} D_{kl} + D_{ik} D_{jl} + D_{il} D_{jk})\\Bigr],

(``MD = tr D / 3``; the directional kurtosis is ``K(n) = 3 Var_m / (nᵀDn)²``, ≥ 0).
``D`` is the :meth:`~bids_harmony.simulate.tissue.TissueModel.mean_tensor` of the
truth FA/MD maps.  MD, AD, RD, FA come from ``D``; MK, AK, RK, KFA from ``(D, W)``
by dipy's formulas (``analytical=True``: MK the mean of K(n) over the sphere, AK
K along the first eigenvector, RK the mean over the plane perpendicular to it;
KFA as :func:`dipy.reconst.dki.kurtosis_fractional_anisotropy`), without
clipping.  This is the limit a DKI fit approaches as the b-values shrink; a fit at
clinical b-values (up to 2000–3000 s/mm²) also absorbs the higher cumulants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dipy.reconst import dki
from dipy.reconst.dti import (
    axial_diffusivity,
    decompose_tensor,
    fractional_anisotropy,
    mean_diffusivity,
    radial_diffusivity,
)
from numpy.typing import NDArray

from bids_harmony.simulate.tissue import TissueModel

#: Parameters of the DKI truth maps, in the order written.
DKI_PARAMS: tuple[str, ...] = ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")
#: Index tuples of dipy's 15 independent kurtosis-tensor elements, in dipy's order.
KT_INDICES: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 0, 0),
    (1, 1, 1, 1),
    (2, 2, 2, 2),
    (0, 0, 0, 1),
    (0, 0, 0, 2),
    (0, 1, 1, 1),
    (1, 1, 1, 2),
    (0, 2, 2, 2),
    (1, 2, 2, 2),
    (0, 0, 1, 1),
    (0, 0, 2, 2),
    (1, 1, 2, 2),
    (0, 0, 1, 2),
    (0, 1, 1, 2),
    (0, 1, 2, 2),
)


def _cylinder(d_par: NDArray, d_perp: NDArray, axis: NDArray) -> NDArray:
    """Tensors ``λ⊥ I + (λ∥ − λ⊥) u uᵀ``, shape (N, 3, 3)."""
    out = np.einsum("n,ni,nj->nij", d_par - d_perp, axis, axis)
    out[:, [0, 1, 2], [0, 1, 2]] += d_perp[:, None]
    return out


def mixture_pools(tissue: TissueModel, sel: Any = slice(None)) -> tuple[NDArray, NDArray]:
    """Site-free signal fractions and tensors of every pool of the support voxels ``sel``.

    Returns
    -------
    fractions : ndarray, shape (N, P)
        ``p_m`` (rows sum to 1; ``P = 2K``: pool A then pool B of each compartment).
    tensors : ndarray, shape (N, P, 3, 3)
    """
    w = (tissue.fractions[sel] * tissue.proton_density[sel]).astype(np.float64)
    total = w.sum(axis=1)
    w = w / np.where(total > 0, total, 1.0)[:, None]
    v, a_par, a_perp, b_par, b_perp = tissue.pool_diffusivities(tissue.d_par, tissue.d_perp)
    v, a_par, a_perp, b_par, b_perp = (x[sel] for x in (v, a_par, a_perp, b_par, b_perp))
    u = tissue.directions[sel].astype(np.float64)
    fractions, tensors = [], []
    for k in range(w.shape[1]):
        for share, par, perp in ((v[:, k], a_par, a_perp), (1.0 - v[:, k], b_par, b_perp)):
            fractions.append(w[:, k] * share)
            tensors.append(_cylinder(par[:, k], perp[:, k], u[:, k]))
    return np.stack(fractions, axis=1), np.stack(tensors, axis=1)


def cumulant_tensors(fractions: NDArray, tensors: NDArray) -> tuple[NDArray, NDArray]:
    """Diffusion and kurtosis tensors of Gaussian mixtures (the module equation).

    Parameters
    ----------
    fractions : ndarray, shape (N, P)
        Signal fractions (rows sum to 1).
    tensors : ndarray, shape (N, P, 3, 3)

    Returns
    -------
    dt : ndarray, shape (N, 3, 3)
    kt : ndarray, shape (N, 15)
        Kurtosis-tensor elements in dipy's order (:data:`KT_INDICES`).
    """
    p = np.asarray(fractions, dtype=np.float64)
    dm = np.asarray(tensors, dtype=np.float64)
    dt = np.einsum("np,npij->nij", p, dm)
    md = np.trace(dt, axis1=1, axis2=2) / 3.0
    scale = 1.0 / np.where(md > 0, md, 1.0) ** 2
    kt = np.empty((p.shape[0], len(KT_INDICES)))
    for e, (i, j, k, m) in enumerate(KT_INDICES):
        pools = dm[..., i, j] * dm[..., k, m] + dm[..., i, k] * dm[..., j, m]
        pools += dm[..., i, m] * dm[..., j, k]
        mean = dt[:, i, j] * dt[:, k, m] + dt[:, i, k] * dt[:, j, m] + dt[:, i, m] * dt[:, j, k]
        kt[:, e] = ((p * pools).sum(axis=1) - mean) * scale
    return dt, kt


def dki_metrics(dt: NDArray, kt: NDArray) -> dict[str, NDArray[np.float64]]:
    """The :data:`DKI_PARAMS` of tensors ``dt`` (N, 3, 3) and ``kt`` (N, 15), each (N,).

    MD, AD, RD in mm²/s; kurtoses unclipped (dipy's ``analytical`` formulas).
    """
    evals, evecs = decompose_tensor(dt)
    params = np.concatenate([evals, evecs.reshape(-1, 9), kt], axis=1)
    big = np.inf
    out = {
        "md": mean_diffusivity(evals),
        "ad": axial_diffusivity(evals),
        "rd": radial_diffusivity(evals),
        "fa": np.nan_to_num(fractional_anisotropy(evals)),
        "mk": dki.mean_kurtosis(params, min_kurtosis=-big, max_kurtosis=big),
        "ak": dki.axial_kurtosis(params, min_kurtosis=-big, max_kurtosis=big),
        "rk": dki.radial_kurtosis(params, min_kurtosis=-big, max_kurtosis=big),
        "kfa": dki.kurtosis_fractional_anisotropy(params),
    }
    return {name: np.nan_to_num(np.asarray(val, dtype=np.float64)) for name, val in out.items()}


def true_dki_maps(tissue: TissueModel, chunk: int = 100_000) -> dict[str, NDArray[np.float32]]:
    """DKI truth maps of ``tissue`` on its grid: :data:`DKI_PARAMS` → (X, Y, Z) float32.

    Computed inside ``tissue.mask`` (the brain; 0 elsewhere, e.g. the scalp), in
    chunks of ``chunk`` voxels.
    """
    inside = np.flatnonzero(tissue.mask[tissue.support])
    values: dict[str, list[NDArray]] = {name: [] for name in DKI_PARAMS}
    for start in range(0, inside.size, chunk):
        dt, kt = cumulant_tensors(*mixture_pools(tissue, inside[start : start + chunk]))
        for name, val in dki_metrics(dt, kt).items():
            values[name].append(val)
    out = {}
    for name in DKI_PARAMS:
        flat = np.zeros(tissue.n_voxels, dtype=np.float32)
        if values[name]:
            flat[inside] = np.concatenate(values[name])
        out[name] = tissue.to_volume(flat)
    return out
