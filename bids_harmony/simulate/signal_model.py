"""Noise-free diffusion signal of a tissue model as a given site measures it.

For support voxel ``x`` and volume ``i`` with effective weighting ``(b'_i, ĝ'_i)``
(:func:`~bids_harmony.simulate.gradients.effective_gradients`):

.. math::

    S_i(x) = G\\,C(x) \\sum_k f_k \\rho_k \\bigl(1 - e^{-TR/T_{1,k}}\\bigr)
             e^{-TE/T_{2,k}}
             \\exp\\Bigl(-b'_i\\bigl[\\lambda'_{\\perp,k} + (\\lambda'_{\\parallel,k} -
             \\lambda'_{\\perp,k}) (\\hat g'_i \\cdot u_k)^2\\bigr]\\Bigr)

followed by the site PSF, where ``G`` is the receiver gain, ``C`` the coil field and
``λ'`` the apparent diffusivities at the site's diffusion time
(:func:`apparent_diffusivities`).  For b0 volumes the bracket is the trace mean
``λ'_⊥ + (λ'_∥ − λ'_⊥)/3``.  Each compartment is the cylindrically symmetric tensor
of :func:`dipy.sims.voxel.multi_tensor`; the sum is vectorized over voxels and
chunked over volumes so paper-sized grids fit in a few GB.

A compartment split into two pools (:meth:`TissueModel.pool_diffusivities`: human
WM as intra-axonal sticks and extra-axonal hindered water, GM as slow and fast
water) contributes ``v e^{-b' D_A(ĝ')} + (1 − v) e^{-b' D_B(ĝ')}`` instead of one
exponential, with the same mean tensor: the same low-b signal, plus a kurtosis.
The pools scale with the compartment's apparent diffusivities, so every site
effect acts on them as on the compartment.
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from bids_harmony.simulate.gradients import effective_gradients
from bids_harmony.simulate.site_effects import SiteParams, apply_psf, coil_field
from bids_harmony.simulate.tissue import TissueModel

LOGGER = logging.getLogger(__name__)

#: Diffusion time (ms) at which tissue diffusivities are tabulated.
REFERENCE_DIFFUSION_TIME_MS = 30.0
#: Time-dependence strength of axial and radial diffusivity of restricted compartments.
#: Both are weak at clinical diffusion times (20–40 ms) in human white matter
#: (Fieremans et al. 2016, NeuroImage 129:414): a few per cent between sites.
KAPPA_PAR = 0.1
KAPPA_PERP = 0.1


def apparent_diffusivities(
    d_par: NDArray, d_perp: NDArray, restriction: NDArray, diffusion_time_ms: float
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Apparent diffusivities at diffusion time ``Δ`` (structural disorder, 1/√t).

    .. math:: \\lambda'(\\Delta) = \\lambda\\,\\bigl[1 + r\\,\\kappa
              \\bigl(\\sqrt{\\Delta_0/\\Delta} - 1\\bigr)\\bigr]

    with ``κ_∥ = KAPPA_PAR``, ``κ_⊥ = KAPPA_PERP``, ``Δ_0`` the reference time and
    ``r`` the compartment's restriction (0 for free water).

    Parameters
    ----------
    d_par, d_perp, restriction : ndarray, shape (N, K)
    diffusion_time_ms : float

    Returns
    -------
    d_par, d_perp : ndarray, shape (N, K)
    """
    s = np.sqrt(REFERENCE_DIFFUSION_TIME_MS / diffusion_time_ms) - 1.0
    r = np.asarray(restriction, dtype=np.float32)
    par = np.asarray(d_par, dtype=np.float32) * (1.0 + np.float32(KAPPA_PAR * s) * r)
    perp = np.asarray(d_perp, dtype=np.float32) * (1.0 + np.float32(KAPPA_PERP * s) * r)
    return par.astype(np.float32), perp.astype(np.float32)


def relaxation_weights(tissue: TissueModel, echo_time_ms: float, rep_time_ms: float) -> NDArray:
    """Signal weight of each compartment at TE/TR, shape (N, K).

    .. math:: w_k = f_k \\rho_k (1 - e^{-TR/T_{1,k}}) e^{-TE/T_{2,k}}
    """
    t1 = np.maximum(tissue.t1, 1e-3)
    t2 = np.maximum(tissue.t2, 1e-3)
    w = tissue.fractions * tissue.proton_density
    w = w * (1.0 - np.exp(-rep_time_ms / t1)) * np.exp(-echo_time_ms / t2)
    return w.astype(np.float32)


def mixture_signal(
    weights: NDArray,
    d_par: NDArray,
    d_perp: NDArray,
    directions: NDArray,
    b_eff: NDArray,
    g_eff: NDArray,
    is_b0: NDArray,
    pools: tuple[NDArray, ...] | None = None,
) -> NDArray[np.float32]:
    """Sum of cylindrically symmetric Gaussian compartments, shape (N, V).

    Parameters
    ----------
    weights, d_par, d_perp : ndarray, shape (N, K)
    directions : ndarray, shape (N, K, 3)
        Unit compartment axes.
    b_eff : ndarray, shape (V,)
    g_eff : ndarray, shape (V, 3)
        Unit gradient directions.
    is_b0 : ndarray of bool, shape (V,)
        Volumes computed with the trace-mean diffusivity.
    pools : tuple of 5 ndarray, shape (N, K), optional
        ``(v, a_par, a_perp, b_par, b_perp)`` of
        :meth:`~bids_harmony.simulate.tissue.TissueModel.pool_diffusivities`:
        compartments with ``v > 0`` are two Gaussian pools (``d_par``, ``d_perp``
        are then unused for them).
    """
    b = np.asarray(b_eff, dtype=np.float32)
    g = np.asarray(g_eff, dtype=np.float32)
    out = np.zeros((weights.shape[0], b.shape[0]), dtype=np.float32)

    def gauss(sel: NDArray, k: int, par: NDArray, perp: NDArray, cos2: NDArray) -> NDArray:
        lam_perp = perp[sel, k].astype(np.float32)[:, None]
        delta = (par[sel, k] - perp[sel, k]).astype(np.float32)[:, None]
        return np.exp(-b[None, :] * (lam_perp + delta * cos2))

    for k in range(weights.shape[1]):
        active = weights[:, k] > 0
        if not np.any(active):
            continue
        cos2 = (directions[active, k, :] @ g.T) ** 2
        cos2[:, is_b0] = 1.0 / 3.0
        if pools is None or not np.any(pools[0][active, k] > 0):
            sig = gauss(active, k, d_par, d_perp, cos2)
        else:
            v = pools[0][active, k].astype(np.float32)[:, None]
            sig = v * gauss(active, k, pools[1], pools[2], cos2)
            sig += (1.0 - v) * gauss(active, k, pools[3], pools[4], cos2)
        out[active] += weights[active, k][:, None] * sig
    return out


def noiseless_signal(
    tissue: TissueModel,
    site: SiteParams,
    bvals: NDArray,
    bvecs: NDArray,
    *,
    protocol: str,
    chunk_volumes: int = 16,
) -> NDArray[np.float32]:
    """Noise-free image of ``tissue`` acquired at ``site`` with a gradient table.

    Any tissue model can be imaged by any site with any table: pass a source run's
    tissue with the target site to get what the target scanner would have measured.

    Parameters
    ----------
    tissue : TissueModel
    site : SiteParams
    bvals : ndarray, shape (V,)
        Written b-values (s/mm²); the site's miscalibration is applied here.
    bvecs : ndarray, shape (V, 3) or (3, V)
        Unit vectors in the voxel frame (zeros for b0).
    protocol : str
        Protocol whose TE/TR at ``site`` are used (``site.timing(protocol)``).
    chunk_volumes : int
        Volumes computed at once (memory: ``N × chunk_volumes`` floats per array).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z, V)
        Fortran-ordered (each volume contiguous, as NIfTI stores it).
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.shape == (3, bvals.size) and bvals.size != 3:
        bvecs = bvecs.T
    if bvecs.shape != (bvals.size, 3):
        raise ValueError(f"bvecs shape {bvecs.shape} does not match {bvals.size} b-values")
    te, tr = site.timing(protocol)
    b_eff, g_eff, is_b0 = effective_gradients(
        bvals, bvecs, b_scale=site.b_scale, gain=np.asarray(site.gradient_gain)
    )
    d_par, d_perp = apparent_diffusivities(
        tissue.d_par, tissue.d_perp, tissue.restriction, site.diffusion_time(te)
    )
    weights = relaxation_weights(tissue, te, tr)
    pools = tissue.pool_diffusivities(d_par, d_perp) if tissue.has_pools else None
    scale = coil_field(site, tissue.grid)[tissue.support] * np.float32(site.receiver_gain)
    image = np.zeros(tissue.grid.shape + (bvals.size,), dtype=np.float32, order="F")
    flat = image.reshape(-1, bvals.size, order="F")  # a view: one contiguous column per volume
    where = np.ravel_multi_index(np.nonzero(tissue.support), tissue.grid.shape, order="F")
    LOGGER.debug("noiseless signal: %d voxels x %d volumes", tissue.n_voxels, bvals.size)
    for start in range(0, bvals.size, chunk_volumes):
        stop = min(start + chunk_volumes, bvals.size)
        sig = mixture_signal(
            weights,
            d_par,
            d_perp,
            tissue.directions,
            b_eff[start:stop],
            g_eff[start:stop],
            is_b0[start:stop],
            pools,
        )
        sig *= scale[:, None]
        for j in range(stop - start):
            flat[where, start + j] = sig[:, j]
    return apply_psf(image, site)
