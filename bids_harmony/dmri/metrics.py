r"""Scalar diffusion metrics: DTI (FA, MD, AD, RD) and GFA of the CSD fODF.

Both use the b0 volumes and **one** shell of a run (default: the shell closest to
b = 1000 s/mm²), as in the HARP evaluation (paper §2.6).  Maps are float32,
0 outside the mask and free of NaN.

DTI
    Weighted linear least squares exactly as dipy's ``TensorModel(fit_method="WLS")``
    (Chung et al. 2006): an OLS fit of :math:`\log S` gives weights
    :math:`w = \exp(X\hat\beta_\mathrm{OLS})`, then

    .. math:: \hat\beta = (X^T W^2 X)^{-1} X^T W^2 \log S, \quad W = \mathrm{diag}(w),

    with dipy's design matrix, minimum signal and eigenvalue floor.  dipy solves
    every voxel with an SVD-based pseudo-inverse (~40k voxels/s); here the
    normal matrices of all voxels come from one GEMM and are solved as a batch of
    7x7 systems (columns scaled for conditioning): ~5x less CPU time, equal to dipy
    to ~1e-8 (``tests/test_dmri_metrics.py``).
GFA
    Constrained spherical deconvolution (Tournier 2007) with
    :class:`bids_harmony.dmri.csd.BatchedCSD` (dipy's matrices, batched solver),
    response from the high-FA voxels of the mask; GFA from the fODF coefficients as
    dipy's ``SphHarmFit.gfa``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from dipy.core.gradients import GradientTable, gradient_table
from dipy.reconst.dti import (
    MIN_POSITIVE_SIGNAL,
    axial_diffusivity,
    design_matrix,
    eig_from_lo_tri,
    fractional_anisotropy,
    mean_diffusivity,
    radial_diffusivity,
)

from bids_harmony.dmri import _voxels
from bids_harmony.dmri.csd import BatchedCSD, estimate_response, sh_gfa
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_TOLERANCE,
    Shell,
    b0_mask,
    group_shells,
    usable_directions,
    validate_gradients,
)
from bids_harmony.dmri.sh import MAX_ORDER, sh_order_for_directions
from bids_harmony.errors import BadGradientsError

logger = logging.getLogger(__name__)

TARGET_BVAL = 1000.0
_EIG_TOL = 1e-6  # dipy's eigenvalue floor: tol / max(b)


def choose_shell(shells: list[Shell], target: float = TARGET_BVAL) -> Shell:
    """The shell whose b-value is closest to ``target`` (the lower one on a tie).

    >>> from bids_harmony.dmri.gradients import group_shells
    >>> choose_shell(group_shells(np.array([0, 1000, 1000, 3000]))).label
    'b1000'
    """
    if not shells:
        raise BadGradientsError("the run has no diffusion-weighted shell.")
    return min(shells, key=lambda s: (abs(s.bval - target), s.bval))


def select_shell(
    bvals: np.ndarray,
    *,
    shell: float | None = None,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    bvecs: np.ndarray | None = None,
) -> tuple[np.ndarray, Shell]:
    """Volumes of the b0s plus one shell.

    Parameters
    ----------
    bvals : ndarray, shape (N,)
    shell : float, optional
        b-value of the wanted shell (within ``b_tolerance``); default: the shell
        closest to b = 1000.
    bvecs : ndarray, shape (N, 3), optional
        With the default shell, only shells whose directions can hold a tensor
        (:func:`~bids_harmony.dmri.gradients.usable_directions`) are candidates.

    Returns
    -------
    volumes : ndarray of int
        b0 volumes and the shell's volumes, in table order.
    shell : Shell
    """
    shells = group_shells(bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold)
    if shell is None and bvecs is not None:
        # A degenerate shell (all volumes along one axis) makes the tensor fit fail.
        usable = [s for s in shells if usable_directions(np.asarray(bvecs)[s.indices])]
        shells = usable or shells
    chosen = choose_shell(shells, TARGET_BVAL if shell is None else shell)
    if shell is not None and abs(chosen.bval - shell) > b_tolerance:
        raise BadGradientsError(
            f"no shell at b={shell:g}; the run has {[s.label for s in shells]}."
        )
    b0 = np.flatnonzero(b0_mask(bvals, b0_threshold=b0_threshold))
    if b0.size == 0:
        raise BadGradientsError("the run has no b0 volume.")
    return np.union1d(b0, chosen.indices), chosen


@dataclass(frozen=True)
class _Selection:
    gtab: GradientTable
    volumes: np.ndarray
    shell: Shell


def _select(data, bvals, bvecs, shell, b_tolerance, b0_threshold) -> _Selection:
    data = np.asarray(data)
    _voxels.check_4d(data)
    bvals, bvecs = validate_gradients(bvals, bvecs, data.shape[-1], b0_threshold=b0_threshold)
    volumes, chosen = select_shell(
        bvals, shell=shell, b_tolerance=b_tolerance, b0_threshold=b0_threshold, bvecs=bvecs
    )
    gtab = gradient_table(bvals[volumes], bvecs=bvecs[volumes], b0_threshold=b0_threshold)
    return _Selection(gtab=gtab, volumes=volumes, shell=chosen)


def wls_log_linear_fit(signal: np.ndarray, design: np.ndarray, min_signal: float) -> np.ndarray:
    """Weighted linear least squares of ``log S = design @ beta`` for many voxels at once.

    The weights are the squared signal predicted by an OLS fit first (Veraart et al.,
    2013), as dipy's ``wls_fit_tensor`` and ``ls_fit_dki`` do; the normal equations are
    solved per voxel in one batch, on column-normalized design for conditioning.

    Parameters
    ----------
    signal : ndarray, shape (V, n)
        Signals (floored at ``min_signal`` before the log).
    design : ndarray, shape (n, p)
    min_signal : float

    Returns
    -------
    ndarray, shape (V, p)
    """
    log_s = np.log(np.maximum(np.asarray(signal, dtype=float), min_signal))
    ols = log_s @ np.linalg.pinv(design).T
    weights2 = np.exp(2.0 * (ols @ design.T))  # w², w = predicted signal
    scale = np.linalg.norm(design, axis=0)
    scaled = design / scale
    n_par = design.shape[1]
    outer = (scaled[:, :, None] * scaled[:, None, :]).reshape(-1, n_par * n_par)
    normal = (weights2 @ outer).reshape(-1, n_par, n_par)
    rhs = (weights2 * log_s) @ scaled
    try:
        beta = np.linalg.solve(normal, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a degenerate voxel: fall back to the pseudo-inverse
        beta = np.einsum("vij,vj->vi", np.linalg.pinv(normal), rhs)
    return beta / scale


def wls_tensor_evals(signal: np.ndarray, gtab: GradientTable) -> np.ndarray:
    """Tensor eigenvalues by WLS, equal to dipy's ``TensorModel(fit_method="WLS")``.

    Parameters
    ----------
    signal : ndarray, shape (V, n)
    gtab : GradientTable
        ``n`` entries.

    Returns
    -------
    ndarray, shape (V, 3), float64
        Eigenvalues (mm²/s for b in s/mm²), decreasing.
    """
    design = design_matrix(gtab)  # (n, 7)
    beta = wls_log_linear_fit(signal, design, MIN_POSITIVE_SIGNAL)
    params = eig_from_lo_tri(beta, min_diffusivity=_EIG_TOL / -design.min())
    return params[:, :3]


def tensor_metrics(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    shell: float | None = None,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    chunk_size: int = _voxels.CHUNK_VOXELS,
) -> dict[str, np.ndarray]:
    """DTI maps from the b0 volumes and one shell.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    mask : ndarray of bool, shape (X, Y, Z), optional
    shell : float, optional
        b-value of the shell; default: the shell closest to b = 1000.

    Returns
    -------
    dict of str to ndarray, shape (X, Y, Z), float32
        ``"fa"``, ``"md"``, ``"ad"``, ``"rd"`` (diffusivities in mm²/s).
    """
    data = np.asarray(data)
    sel = _select(data, bvals, bvecs, shell, b_tolerance, b0_threshold)
    flat, order = _voxels.flat_voxels(data)
    index = _voxels.mask_indices(mask, data.shape[:3], order)
    names = ("fa", "md", "ad", "rd")
    maps = {name: _voxels.new_volume(data.shape[:3], None, order) for name in names}
    for idx in _voxels.chunks(index, chunk_size):
        evals = wls_tensor_evals(flat[idx][:, sel.volumes], sel.gtab)
        values = {
            "fa": np.clip(fractional_anisotropy(evals), 0.0, 1.0),
            "md": mean_diffusivity(evals),
            "ad": axial_diffusivity(evals),
            "rd": radial_diffusivity(evals),
        }
        for name in names:
            maps[name][1][idx] = np.nan_to_num(values[name], nan=0.0, posinf=0.0, neginf=0.0)
    return {name: maps[name][0] for name in names}


@dataclass(frozen=True, eq=False)
class CSDResult:
    """fODFs of one shell.

    Attributes
    ----------
    coeffs : ndarray, shape (X, Y, Z, n_coeffs(order)), float32
        fODF SH coefficients (dipy's descoteaux07 legacy basis, as dipy's CSD).
    order : int
    response : (ndarray (3,), float)
        Single-fibre response used (eigenvalues mm²/s, S0).
    n_response_voxels : int
        Voxels behind the response; 0 when the default response was used.
    bval : float
        The shell's b-value.
    """

    coeffs: np.ndarray
    order: int
    response: tuple[np.ndarray, float]
    n_response_voxels: int
    bval: float


def csd_fodf(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    shell: float | None = None,
    sh_order: int = MAX_ORDER,
    response: tuple[np.ndarray, float] | None = None,
    fa: np.ndarray | None = None,
    fa_threshold: float = 0.7,
    min_response_voxels: int = 100,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    n_threads: int | None = None,
    chunk_size: int = 65536,
) -> CSDResult:
    """CSD fODFs of the b0 volumes and one shell.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals, bvecs : gradient table of ``data``
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit and to draw the response from.
    shell : float, optional
        Default: the shell closest to b = 1000.
    sh_order : int
        fODF order; lowered (with a warning) for shells with few directions.
    response : (ndarray (3,), float), optional
        Skip the estimation and use this response.
    fa : ndarray, shape (X, Y, Z), optional
        FA of the same shell (e.g. from :func:`tensor_metrics`) to pick the
        response voxels; computed when omitted.
    fa_threshold, min_response_voxels
        See :func:`bids_harmony.dmri.csd.estimate_response`.
    n_threads : int, optional
        Threads for the batched solves.

    Returns
    -------
    CSDResult
    """
    data = np.asarray(data)
    sel = _select(data, bvals, bvecs, shell, b_tolerance, b0_threshold)
    order = sh_order_for_directions(len(sel.shell), sh_order)
    if order < sh_order:
        logger.warning(
            "Shell %s has %d directions: CSD order lowered from %d to %d.",
            sel.shell.label, len(sel.shell), sh_order, order,
        )  # fmt: skip
    flat, vox_order = _voxels.flat_voxels(data)
    index = _voxels.mask_indices(mask, data.shape[:3], vox_order)
    n_used = 0
    if response is None:
        if fa is None:
            fa_flat = None
        else:
            fa_flat = np.asarray(fa).reshape(-1, order=vox_order)[index]
        response, n_used = _response(flat, index, sel, fa_flat, fa_threshold, min_response_voxels)
    model = BatchedCSD(sel.gtab, response, sh_order=order)
    out, out_flat = _voxels.new_volume(data.shape[:3], model.n_coeffs, vox_order)
    dwi_columns = sel.volumes[model.dwi_index]
    for idx in _voxels.chunks(index, chunk_size):
        block = np.asarray(flat[idx][:, dwi_columns], dtype=float)
        out_flat[idx] = model.fit(block, n_threads=n_threads)
    return CSDResult(
        coeffs=out, order=order, response=response, n_response_voxels=n_used, bval=sel.shell.bval
    )


def gfa_csd(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    shell: float | None = None,
    sh_order: int = MAX_ORDER,
    **kwargs,
) -> np.ndarray:
    r"""GFA of the CSD fODF, :math:`\sqrt{1 - c_{00}^2/\sum c^2}`.

    Same parameters as :func:`csd_fodf` (``fa=``, ``response=``, ``n_threads=`` ...).

    Returns
    -------
    ndarray, shape (X, Y, Z), float32
        0 outside the mask.
    """
    result = csd_fodf(data, bvals, bvecs, mask=mask, shell=shell, sh_order=sh_order, **kwargs)
    return sh_gfa(result.coeffs)


def _response(flat, index, sel, fa_flat, fa_threshold, min_voxels):
    """Response from the mask voxels; FA from a WLS tensor when not given."""
    if index.size > 200_000:  # an evenly spaced subset is plenty for a mean response
        pick = np.linspace(0, index.size - 1, 200_000).astype(int)
        index = index[pick]
        fa_flat = None if fa_flat is None else fa_flat[pick]
    signal = np.asarray(flat[index][:, sel.volumes], dtype=float)
    if fa_flat is None:
        fa_flat = np.nan_to_num(fractional_anisotropy(wls_tensor_evals(signal, sel.gtab)))
    return estimate_response(
        sel.gtab, signal, fa_flat, fa_threshold=fa_threshold, min_voxels=min_voxels
    )
