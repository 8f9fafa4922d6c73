r"""Spherical-harmonic (SH) representation of one shell: the HARP convention.

Every choice that fixes what a HARP coefficient *means* lives in this module, so
that phantoms, humans, training and inference agree.  The convention was
reverse-engineered from the authors' code (github.com/Hwihuni/HARP, ``test.py``),
which rebuilds harmonized images as::

    qb_model = QballModel(gtab, sh_order=8)
    recon = (coeffs @ qb_model.B.T) ** (bvals.max() / 1000.0) * mean(b0)

and whose coefficient files are named ``*_sphhar_norm1000``.

Convention
----------
Normalization
    :math:`E = S / \bar S_0`, with :math:`\bar S_0` the mean of the run's b0
    volumes; clipped to :math:`[0, 1]`; :math:`E = 0` where
    :math:`\bar S_0 \le 0`.
Reference b-value
    :math:`E' = E^{b_\mathrm{ref}/b}` with ``B_REF = 1000`` s/mm² ("norm1000"),
    exact for a mono-exponential decay, so shells of different b-values share one
    scale.  The nominal shell b-value (:attr:`~bids_harmony.dmri.gradients.Shell.bval`)
    is used for every volume of the shell.
Basis
    Real, symmetric (even-order) SH of ``SH_BASIS = "descoteaux07"`` in dipy's
    **legacy** form (``SH_LEGACY = True``): ``QballModel.B`` is built by
    ``real_sh_descoteaux(sh_order, theta, phi)`` whose ``legacy`` default is
    ``True`` in every dipy release the authors could have used (and in 1.12), so
    their coefficients are in the legacy basis.  Both forms are orthonormal and
    differ only in the functions used for :math:`m < 0`; band energies (RISH) are
    identical.  Ordering is dipy's ``sph_harm_ind_list``: by order :math:`l`,
    then degree :math:`m = -l..l`.
Order
    :math:`L = 8` (45 coefficients) when a shell has at least 45 directions,
    otherwise the largest even order with no more coefficients than directions
    (30 directions: 6; 15: 4; 6: 2); fewer than 6 directions cannot be fitted.
Fit
    Least squares with a Laplace–Beltrami penalty (Descoteaux 2007),

    .. math:: \hat c = \arg\min_c \|E' - B c\|^2 + \lambda \|\mathrm{diag}(l(l+1))\, c\|^2
              = (B^T B + \lambda L^2)^{-1} B^T E',

    ``LB_LAMBDA = 1e-5``.  The authors' fitting script is not published (their
    ``QballModel`` only supplies the basis, its ``smooth=0.006`` is unused), so the
    value is our choice; it is small enough that a 60-direction fit is
    essentially unregularized.  dipy's ``sf_to_sh(smooth=λ)`` computes the same.
Reconstruction
    :math:`S = \mathrm{clip}(B c, 0, 1)^{b/b_\mathrm{ref}} \, \bar S_0`, b0 volumes
    copied.  The authors take ``abs`` of the result and do not clip; clipping
    keeps the power real for fractional exponents and bounds harmonized signals
    by the b0.  They average the first two volumes as b0; we use all b0 volumes.
Order bands
    :math:`l = 0, 2, 4, 6, 8` occupy ``[0:1], [1:6], [6:15], [15:28], [28:45]``;
    the RISH feature of a band is the sum of its squared coefficients.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from dipy.core.geometry import cart2sphere
from dipy.reconst.shm import real_sh_descoteaux, smooth_pinv

from bids_harmony.dmri import _voxels
from bids_harmony.dmri.bands import (
    MAX_ORDER,
    MIN_DIRECTIONS,
    band_orders,
    band_slices,
    check_order,
    n_coeffs,
    order_from_n_coeffs,
    pad_coeffs,
    rish_features,
    sh_order_for_directions,
)
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_TOLERANCE,
    b0_mask,
    group_shells,
    usable_directions,
    validate_gradients,
)
from bids_harmony.errors import BadGradientsError, BadImageError

logger = logging.getLogger(__name__)

B_REF = 1000.0
LB_LAMBDA = 1e-5
SH_BASIS = "descoteaux07"
SH_LEGACY = True

__all__ = [  # the HARP SH API; band bookkeeping is re-exported from bands.py
    "B_REF", "LB_LAMBDA", "MAX_ORDER", "SH_BASIS", "SH_LEGACY", "ShellFit", "ShellSHModel",
    "band_orders", "band_slices", "fit_shells", "n_coeffs", "normalize_shell",
    "order_from_n_coeffs", "pad_coeffs", "power_map", "reconstruct_dwi", "rish_features",
    "sh_basis", "sh_order_for_directions",
]  # fmt: skip


def normalize_shell(shell_data: np.ndarray, mean_b0: np.ndarray) -> np.ndarray:
    r"""Attenuation :math:`E = \mathrm{clip}(S / \bar S_0, 0, 1)`, 0 where :math:`\bar S_0 \le 0`.

    Parameters
    ----------
    shell_data : ndarray, shape (..., n)
    mean_b0 : ndarray, shape (...)

    Returns
    -------
    ndarray, shape (..., n), float32
    """
    signal = np.asarray(shell_data, dtype=np.float32)
    b0 = np.asarray(mean_b0, dtype=np.float32)[..., None]
    out = np.zeros(np.broadcast_shapes(signal.shape, b0.shape), dtype=np.float32)
    np.divide(signal, b0, out=out, where=b0 > 0)
    return np.clip(out, 0.0, 1.0, out=out)


def power_map(attenuation: np.ndarray, bval: float, b_ref: float = B_REF) -> np.ndarray:
    r"""Map an attenuation to the reference b-value: :math:`E^{b_\mathrm{ref}/b}`.

    Exact for mono-exponential decay: :math:`e^{-bD}` becomes :math:`e^{-b_\mathrm{ref}D}`.
    """
    return _power(np.asarray(attenuation), _exponent(b_ref, bval))


def sh_basis(bvecs: np.ndarray, order: int = MAX_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """HARP SH basis sampled at unit vectors.

    Returns
    -------
    basis : ndarray, shape (n, n_coeffs(order)), float64
    l_values : ndarray of int, shape (n_coeffs(order),)
    """
    bvecs = np.asarray(bvecs, dtype=float)
    check_order(order)
    if bvecs.ndim != 2 or bvecs.shape[1] != 3:
        raise BadGradientsError(f"b-vectors must have shape (n, 3), got {bvecs.shape}.")
    if np.any(np.linalg.norm(bvecs, axis=1) < 1e-6):
        raise BadGradientsError("a diffusion-weighted volume has a zero b-vector.")
    _, theta, phi = cart2sphere(bvecs[:, 0], bvecs[:, 1], bvecs[:, 2])
    with warnings.catch_warnings():  # the legacy basis is chosen on purpose (module docstring)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        basis, _, l_values = real_sh_descoteaux(
            order, theta[:, None], phi[:, None], full_basis=False, legacy=SH_LEGACY
        )
    return basis, np.asarray(l_values, dtype=int)


class ShellSHModel:
    r"""SH model of one shell in the HARP convention (see the module docstring).

    Parameters
    ----------
    bvecs : ndarray, shape (n, 3)
        Unit gradient directions of the shell's volumes.
    bval : float
        Nominal b-value of the shell (s/mm²).
    sh_order : int
        Even SH order; needs ``n_coeffs(sh_order) <= n``.
    b_ref : float
        Reference b-value of the power map.
    lambda_lb : float
        Laplace–Beltrami weight :math:`\lambda`.
    """

    def __init__(
        self,
        bvecs: np.ndarray,
        bval: float,
        *,
        sh_order: int = MAX_ORDER,
        b_ref: float = B_REF,
        lambda_lb: float = LB_LAMBDA,
    ) -> None:
        self.bval = float(bval)
        self.b_ref = float(b_ref)
        self.sh_order = int(sh_order)
        self.lambda_lb = float(lambda_lb)
        self._fit_exponent = _exponent(self.b_ref, self.bval)
        basis, l_values = sh_basis(bvecs, self.sh_order)
        if basis.shape[1] > basis.shape[0]:
            raise BadGradientsError(
                f"order {sh_order} needs {basis.shape[1]} directions, the shell has "
                f"{basis.shape[0]}; use sh_order_for_directions()."
            )
        if self.lambda_lb < 0:
            raise ValueError("lambda_lb must be >= 0.")
        self._basis = basis
        self._basis.flags.writeable = False
        penalty = np.sqrt(self.lambda_lb) * -(l_values * (l_values + 1.0))
        self._fit_matrix = smooth_pinv(basis, penalty).T.astype(np.float32)  # (n, K)
        self._basis_t32 = basis.T.astype(np.float32)  # (K, n)

    @property
    def basis_matrix(self) -> np.ndarray:
        """Read-only SH basis at the shell directions, shape (n, n_coeffs), float64."""
        return self._basis

    @property
    def n_coeffs(self) -> int:
        return self._basis.shape[1]

    def fit_voxels(self, signal: np.ndarray, mean_b0: np.ndarray) -> np.ndarray:
        """Coefficients (V, n_coeffs), float32, of a block: signal (V, n), mean_b0 (V,)."""
        attenuation = _power(normalize_shell(signal, mean_b0), self._fit_exponent)
        return attenuation @ self._fit_matrix

    def fit(
        self,
        shell_data: np.ndarray,
        mean_b0: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        chunk_size: int = _voxels.CHUNK_VOXELS,
    ) -> np.ndarray:
        """SH coefficients of every voxel (zeros outside ``mask``).

        Parameters
        ----------
        shell_data : ndarray, shape (..., n)
        mean_b0 : ndarray, shape (...)
        mask : ndarray of bool, shape (...), optional

        Returns
        -------
        ndarray, shape (..., n_coeffs), float32
        """
        shell_data = np.asarray(shell_data)
        if shell_data.shape[-1] != self._basis.shape[0]:
            raise BadImageError(
                f"the shell has {self._basis.shape[0]} directions but the data "
                f"{shell_data.shape[-1]} volumes."
            )
        return _blockwise(self.fit_voxels, shell_data, mean_b0, mask, self.n_coeffs, chunk_size)

    def predict_voxels(self, coeffs: np.ndarray, mean_b0: np.ndarray) -> np.ndarray:
        """Signal (V, n), float32, of a block: coeffs (V, n_coeffs), mean_b0 (V,)."""
        attenuation = np.asarray(coeffs, dtype=np.float32) @ self._basis_t32
        np.clip(attenuation, 0.0, 1.0, out=attenuation)
        signal = _power(attenuation, 1.0 / self._fit_exponent)
        return signal * np.asarray(mean_b0, dtype=np.float32)[..., None]

    def predict(
        self, coeffs: np.ndarray, mean_b0: np.ndarray, *, chunk_size: int = _voxels.CHUNK_VOXELS
    ) -> np.ndarray:
        r"""Signal at the shell directions.

        .. math:: S = \mathrm{clip}(B c, 0, 1)^{b/b_\mathrm{ref}} \, \bar S_0

        Parameters
        ----------
        coeffs : ndarray, shape (..., n_coeffs)
        mean_b0 : ndarray, shape (...)

        Returns
        -------
        ndarray, shape (..., n), float32
        """
        coeffs = np.asarray(coeffs)
        if coeffs.shape[-1] != self.n_coeffs:
            raise ValueError(f"expected {self.n_coeffs} coefficients, got {coeffs.shape[-1]}.")
        return _blockwise(self.predict_voxels, coeffs, mean_b0, None, self._basis.shape[0],
                          chunk_size)  # fmt: skip


@dataclass(frozen=True, eq=False)
class ShellFit:
    """SH coefficients of one shell of a run.

    Attributes
    ----------
    bval : float
        Nominal b-value (s/mm²).
    order : int
        SH order used (8 unless lowered).
    coeffs : ndarray, shape (X, Y, Z, n_coeffs(order)), float32
    indices : ndarray of int, shape (n,)
        Volumes of the run that belong to the shell.
    lowered : bool
        True when ``order`` is below the requested one because of few directions.
    """

    bval: float
    order: int
    coeffs: np.ndarray
    indices: np.ndarray
    lowered: bool = False

    @property
    def label(self) -> str:
        """BIDS-safe label, e.g. ``b1000``."""
        return f"b{int(round(self.bval))}"


def fit_shells(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    sh_order: int = MAX_ORDER,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    b_ref: float = B_REF,
    lambda_lb: float = LB_LAMBDA,
    chunk_size: int = _voxels.CHUNK_VOXELS,
) -> list[ShellFit]:
    """Fit every shell of a run in the HARP convention.

    Shells with fewer than 6 directions are skipped with a warning; shells with
    fewer than ``n_coeffs(sh_order)`` directions get a lower order (warning,
    ``lowered=True``).

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit; coefficients are 0 elsewhere.

    Returns
    -------
    list of ShellFit
        One per fitted shell, by increasing b-value.

    Raises
    ------
    BadGradientsError
        No b0 volume, no shell with at least 6 directions, or a malformed table.
    BadImageError
        ``data`` is not 4D or does not match the table or the mask.
    """
    data = np.asarray(data)
    _voxels.check_4d(data)
    bvals, bvecs = validate_gradients(bvals, bvecs, data.shape[-1], b0_threshold=b0_threshold)
    models, shells = [], []
    for shell in group_shells(bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold):
        try:
            order = sh_order_for_directions(len(shell), sh_order)
        except BadGradientsError as err:
            logger.warning("Shell %s skipped: %s", shell.label, err)
            continue
        if not usable_directions(bvecs[shell.indices]):
            logger.warning("Shell %s skipped: its directions lie along one axis or in one "
                           "plane (or repeat fewer than 6 axes).", shell.label)  # fmt: skip
            continue
        if order < sh_order:
            logger.warning(
                "Shell %s has %d directions: SH order lowered from %d to %d (%d coefficients).",
                shell.label, len(shell), sh_order, order, n_coeffs(order),
            )  # fmt: skip
        models.append(
            ShellSHModel(bvecs[shell.indices], shell.bval, sh_order=order, b_ref=b_ref,
                         lambda_lb=lambda_lb)
        )  # fmt: skip
        shells.append(shell)
    if not shells:
        raise BadGradientsError(
            f"no diffusion-weighted shell with at least {MIN_DIRECTIONS} directions "
            f"(b-values {sorted(set(np.round(bvals).astype(int).tolist()))})."
        )
    flat, vox_order = _voxels.flat_voxels(data)
    index = _voxels.mask_indices(mask, data.shape[:3], vox_order)
    b0_idx = np.flatnonzero(b0_mask(bvals, b0_threshold=b0_threshold))
    outputs = [_voxels.new_volume(data.shape[:3], model.n_coeffs, vox_order) for model in models]
    for idx in _voxels.chunks(index, chunk_size):
        block = np.asarray(flat[idx], dtype=np.float32)
        mean_b0 = block[:, b0_idx].mean(axis=1)
        for shell, model, (_, out_flat) in zip(shells, models, outputs, strict=True):
            out_flat[idx] = model.fit_voxels(block[:, shell.indices], mean_b0)
    return [
        ShellFit(
            bval=shell.bval,
            order=model.sh_order,
            coeffs=out,
            indices=shell.indices,
            lowered=model.sh_order < sh_order,
        )
        for shell, model, (out, _) in zip(shells, models, outputs, strict=True)
    ]


def reconstruct_dwi(
    fits: list[ShellFit],
    bvals: np.ndarray,
    bvecs: np.ndarray,
    b0_data: np.ndarray,
    *,
    b0_threshold: float = B0_THRESHOLD,
    b_ref: float = B_REF,
    chunk_size: int = _voxels.CHUNK_VOXELS,
) -> np.ndarray:
    r"""Rebuild a run's DWI from per-shell coefficients (e.g. harmonized ones).

    Volume :math:`i` of shell :math:`k` becomes
    :math:`\mathrm{clip}(B_i c_k, 0, 1)^{b_k/b_\mathrm{ref}} \bar S_0`; b0 volumes
    are copied unchanged.

    Parameters
    ----------
    fits : list of ShellFit
        ``indices`` refer to volumes of the table below.
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    b0_data : ndarray, shape (X, Y, Z, N) or (X, Y, Z, n_b0)
        The original run (its b0 volumes are used) or only its b0 volumes, in
        table order.  With the original run, volumes of shells without a fit are
        copied through (warning); with b0 volumes only they are an error.

    Returns
    -------
    ndarray, shape (X, Y, Z, N), float32
    """
    b0_data = np.asarray(b0_data)
    _voxels.check_4d(b0_data, name="b0 data")
    n_volumes = np.asarray(bvals).size
    bvals, bvecs = validate_gradients(bvals, bvecs, n_volumes, b0_threshold=b0_threshold)
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    full = b0_data.shape[-1] == n_volumes
    if not full and b0_data.shape[-1] != is_b0.sum():
        raise BadImageError(
            f"b0 data has {b0_data.shape[-1]} volumes; expected the whole run ({n_volumes}) "
            f"or its {int(is_b0.sum())} b0 volumes."
        )
    covered = is_b0.copy()
    models = []
    for fit in fits:
        if fit.coeffs.shape[:3] != b0_data.shape[:3]:
            raise BadImageError(
                f"shell {fit.label}: coefficients {fit.coeffs.shape[:3]} and data "
                f"{b0_data.shape[:3]} differ in shape."
            )
        off = np.abs(bvals[fit.indices] - fit.bval) > B_TOLERANCE
        if off.any() or covered[fit.indices].any():
            raise BadGradientsError(
                f"shell {fit.label}: its volume indices do not match this gradient table."
            )
        covered[fit.indices] = True
        models.append(ShellSHModel(bvecs[fit.indices], fit.bval, sh_order=fit.order, b_ref=b_ref))
    if not covered.all():
        missing = np.flatnonzero(~covered)
        if not full:
            raise BadGradientsError(f"no SH fit for volumes {missing.tolist()}.")
        logger.warning("No SH fit for volumes %s: copied unchanged.", missing.tolist())
    flat, order = _voxels.flat_voxels(b0_data)
    out, out_flat = _voxels.new_volume(b0_data.shape[:3], n_volumes, order)
    b0_out = np.flatnonzero(is_b0)
    b0_src = b0_out if full else np.arange(b0_data.shape[-1])
    passthrough = np.flatnonzero(~covered)
    coeffs = [
        fit.coeffs.reshape(-1, m.n_coeffs, order=order) for fit, m in zip(fits, models, strict=True)
    ]
    for start in range(0, flat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        b0_block = np.asarray(flat[rows][:, b0_src], dtype=np.float32)
        out_flat[rows, b0_out] = b0_block
        if passthrough.size:
            out_flat[rows, passthrough] = flat[rows][:, passthrough]
        mean_b0 = b0_block.mean(axis=1)
        for fit, model, flat_coeffs in zip(fits, models, coeffs, strict=True):
            out_flat[rows, fit.indices] = model.predict_voxels(flat_coeffs[rows], mean_b0)
    return out


def _blockwise(func, values, mean_b0, mask, n_out, chunk_size):
    """Apply ``func(values (V, n), mean_b0 (V,))`` to the masked voxels in chunks."""
    spatial = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    b0 = np.broadcast_to(np.asarray(mean_b0), spatial).reshape(-1)
    out = np.zeros((flat.shape[0], n_out), dtype=np.float32)
    for idx in _voxels.chunks(_voxels.mask_indices(mask, spatial, "C"), chunk_size):
        out[idx] = func(flat[idx], b0[idx])
    return out.reshape(spatial + (n_out,))


def _exponent(b_ref: float, bval: float) -> float:
    if not bval > 0 or not b_ref > 0:
        raise BadGradientsError(f"b-values must be positive, got b={bval}, b_ref={b_ref}.")
    return float(b_ref) / float(bval)


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """``values ** exponent`` with fast paths for the common exponents 1, 1/2, 2."""
    if exponent == 1.0:
        return values
    if exponent == 0.5:
        return np.sqrt(values)
    if exponent == 2.0:
        return np.square(values)
    return np.power(values, np.float32(exponent) if values.dtype == np.float32 else exponent)
