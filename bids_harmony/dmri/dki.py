r"""Diffusion kurtosis imaging (DKI): MD, AD, RD, FA, MK, AK, RK and KFA of a multi-shell run.

The signal model (Jensen et al. 2005) is, for a unit gradient direction
:math:`\mathbf{g}` and b-value :math:`b`,

.. math::

    \log S(b, \mathbf{g}) = \log S_0 - b\, \mathbf{g}^T D \mathbf{g}
        + \frac{b^2}{6}\, \bar{D}^2 \sum_{ijkl} g_i g_j g_k g_l W_{ijkl},

with 6 unique diffusion-tensor elements, 15 unique kurtosis-tensor elements and
:math:`\log S_0`: 22 unknowns, linear in :math:`\log S` (dipy's
``dki.design_matrix``, shape (N, 22)).

Fit
    Weighted linear least squares (WLS, dipy's default ``fit_method="WLS"``):
    an OLS fit of :math:`\log S` gives the predicted signal
    :math:`w = \exp(X \hat\beta_\mathrm{OLS})`, then

    .. math:: \hat\beta = (X^T W^2 X)^{-1} X^T W^2 \log S, \quad W = \mathrm{diag}(w).

    The log transform turns Rician noise of constant variance into noise whose
    variance grows like :math:`1/S^2`; weighting by :math:`S^2` undoes this, and
    Veraart et al. (2013) found WLS more accurate and precise than OLS at the same
    cost (one extra solve).  The constrained fits (CLS/CWLS, De la Haije et al.
    2020) forbid negative apparent kurtosis through a semidefinite program per
    voxel (cvxpy): about two orders of magnitude slower, too slow for a
    participant-level default, and the range clipping below catches the same
    implausible voxels.  Iteratively reweighted fits (dipy ``weights_method``)
    refit several times for outlier robustness; our preprocessing already handles
    outliers (FSL eddy ``--repol``), so one WLS pass is kept.

    dipy fits voxel by voxel (``multi_voxel_fit``: a pseudo-inverse per voxel,
    ~1,000 voxels/s); :func:`wls_dki_params` builds the normal matrices of a
    block of voxels with one GEMM and solves them as a batch of 22x22 systems
    (columns scaled for conditioning), with dipy's design matrix, minimum signal
    and eigenvalue floor: equal to dipy's fit to ~1e-8
    (``tests/test_dmri_dki.py``), ~50x faster.  The scalar maps come from
    dipy's own functions on the fitted parameters (``mean_kurtosis``,
    ``axial_kurtosis``, ``radial_kurtosis`` -- analytical solutions of Tabesh et
    al. 2011 -- and ``kurtosis_fractional_anisotropy``, Glenn et al. 2015).

Ranges
    Kurtosis is unstable in CSF (free water, :math:`K \approx 0` with a low
    signal at high b) and at low SNR: the estimates can be negative or very large.
    Every map is clipped to the physical range of :data:`RANGES` (non-finite
    values to 0) and the clipped voxels of the mask are counted per map
    (:class:`DkiResult.clipped`), so a sidecar can say how many there were:

    ==========  ==================  ==================================================
    map         range               why
    ==========  ==================  ==================================================
    MD, AD, RD  [0, 3e-3] mm²/s     free water at 37 °C: 3.0e-3 mm²/s
    FA, KFA     [0, 1]              normalized anisotropies
    MK, AK, RK  [0, 3]              dipy's ``mean_kurtosis`` default; negative
                                    kurtosis needs restricted-diffusion geometries
                                    that brain tissue does not have (Tabesh 2011
                                    constrain :math:`K \ge 0`); > 3 is noise
    ==========  ==================  ==================================================

Which runs qualify (:func:`dki_support`)
    * at least one b0 volume and **two non-zero shells** (dipy's model needs three
      distinct b-values including b = 0: with one shell the diffusion and kurtosis
      terms of the signal cannot be told apart);
    * at least :data:`MIN_DIRECTIONS` = 15 distinct non-collinear directions over
      the diffusion-weighted volumes (the kurtosis tensor has 15 unique elements);
    * a design matrix of full rank 22 (reciprocal condition number of the
      column-scaled design at least :data:`MIN_CONDITIONING`): this refuses
      directions all in one plane or a second shell that repeats one direction.

References
----------
Jensen JH, Helpern JA, Ramani A, Lu H, Kaczynski K (2005). Diffusional kurtosis
imaging. Magn Reson Med 53:1432-1440.
Tabesh A, Jensen JH, Ardekani BA, Helpern JA (2011). Estimation of tensors and
tensor-derived measures in diffusional kurtosis imaging. Magn Reson Med 65:823-836.
Veraart J, Sijbers J, Sunaert S, Leemans A, Jeurissen B (2013). Weighted linear
least squares estimation of diffusion MRI parameters. NeuroImage 81:335-346.
Glenn GR, Helpern JA, Tabesh A, Jensen JH (2015). Quantitative assessment of
diffusional kurtosis anisotropy. NMR Biomed 28:448-459.
Henriques RN et al. (2021). Diffusional kurtosis imaging in the diffusion imaging
in Python project. Front Hum Neurosci 15:675433.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.dki import (
    axial_kurtosis,
    kurtosis_fractional_anisotropy,
    mean_kurtosis,
    radial_kurtosis,
)
from dipy.reconst.dki import design_matrix as dki_design_matrix
from dipy.reconst.dti import (
    MIN_POSITIVE_SIGNAL,
    axial_diffusivity,
    decompose_tensor,
    fractional_anisotropy,
    from_lower_triangular,
    mean_diffusivity,
    radial_diffusivity,
)

from bids_harmony.dmri import _voxels
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_TOLERANCE,
    b0_mask,
    distinct_axes,
    group_shells,
    validate_gradients,
)
from bids_harmony.dmri.metrics import wls_log_linear_fit
from bids_harmony.errors import BadGradientsError

logger = logging.getLogger(__name__)

#: dipy ``DiffusionKurtosisModel(fit_method=...)`` equivalent of :func:`wls_dki_params`.
FIT_METHOD = "WLS"
#: Diffusion-weighted shells a run needs for DKI.
MIN_SHELLS = 2
#: Distinct non-collinear directions a run needs (15 unique kurtosis-tensor elements).
MIN_DIRECTIONS = 15
#: Unknowns of the linear DKI model: 6 diffusion + 15 kurtosis elements + log S0.
N_UNKNOWNS = 22
#: Smallest reciprocal condition number of the column-scaled design matrix; a
#: well-spread two-shell scheme gives ~0.05, a degenerate one ~1e-17.
MIN_CONDITIONING = 1e-4
#: The maps, in the order they are written.
PARAMS = ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")
#: Physical range of every map (see the module docstring); diffusivities in mm²/s.
RANGES: dict[str, tuple[float, float]] = {
    "md": (0.0, 3e-3), "ad": (0.0, 3e-3), "rd": (0.0, 3e-3),
    "fa": (0.0, 1.0), "kfa": (0.0, 1.0),
    "mk": (0.0, 3.0), "ak": (0.0, 3.0), "rk": (0.0, 3.0),
}  # fmt: skip
#: Units of each map (BIDS ``Units``).
UNITS = {name: ("mm^2/s" if name in ("md", "ad", "rd") else "arbitrary") for name in PARAMS}
#: What each map is, for sidecars.
DESCRIPTIONS = {
    "md": "Mean diffusivity of the DKI diffusion tensor",
    "ad": "Axial diffusivity of the DKI diffusion tensor",
    "rd": "Radial diffusivity of the DKI diffusion tensor",
    "fa": "Fractional anisotropy of the DKI diffusion tensor",
    "mk": "Mean kurtosis (analytical, Tabesh et al. 2011)",
    "ak": "Axial kurtosis (analytical, Tabesh et al. 2011)",
    "rk": "Radial kurtosis (analytical, Tabesh et al. 2011)",
    "kfa": "Kurtosis fractional anisotropy (Glenn et al. 2015)",
}
_EIG_TOL = 1e-6  # dipy's eigenvalue floor: tol / max(b)
_COUNT_TOLERANCE = 1e-6  # of a range's width: closer to a bound is rounding, not counted


@dataclass(frozen=True)
class DkiSupport:
    """Whether a gradient table supports DKI, and why not.

    Attributes
    ----------
    ok : bool
    reason : str
        Empty when ``ok``; otherwise a sentence naming what is missing.
    shells : tuple of float
        b-values of the diffusion-weighted shells (s/mm²).
    n_directions : int
        Distinct non-collinear directions over all shells.
    """

    ok: bool
    reason: str
    shells: tuple[float, ...]
    n_directions: int


def design_conditioning(
    bvals: np.ndarray, bvecs: np.ndarray, *, b0_threshold: float = B0_THRESHOLD
) -> float:
    """Reciprocal condition number of dipy's DKI design, columns scaled to unit norm.

    Parameters
    ----------
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3)
        Unit vectors on the diffusion-weighted volumes (b >= ``b0_threshold``).
    b0_threshold : float

    Returns
    -------
    float
        ``σ_min / σ_max`` in [0, 1]; 0 when there are fewer rows than unknowns.

    >>> bvals = np.r_[0.0, np.full(6, 1000.0)]
    >>> design_conditioning(bvals, np.r_[np.zeros((1, 3)), np.eye(3), np.eye(3)])
    0.0
    """
    bvals = np.asarray(bvals, dtype=float)
    if bvals.size < N_UNKNOWNS:
        return 0.0
    gtab = gradient_table(bvals, bvecs=np.asarray(bvecs, dtype=float), b0_threshold=b0_threshold)
    design = dki_design_matrix(gtab)
    norms = np.linalg.norm(design, axis=0)
    if np.any(norms == 0):
        return 0.0
    sigma = np.linalg.svd(design / norms, compute_uv=False)
    return float(sigma[-1] / sigma[0])


def dki_support(
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    name: str = "the run",
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
) -> DkiSupport:
    """Check that a gradient table can hold the 22-parameter DKI fit.

    Parameters
    ----------
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    name : str
        What to call the run in the reason (its BIDS prefix).
    b_tolerance, b0_threshold : float
        Shell grouping (:func:`~bids_harmony.dmri.gradients.group_shells`).

    Returns
    -------
    DkiSupport

    Examples
    --------
    >>> i = np.arange(30) + 0.5  # 30 directions on a Fibonacci hemisphere
    >>> z, phi = 1 - i / 30, i * np.pi * (3 - np.sqrt(5))
    >>> g = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    >>> one = dki_support(np.r_[0, [1000.0] * 30], np.r_[np.zeros((1, 3)), g], name="sub-01")
    >>> one.ok, one.reason
    (False, 'DKI needs two non-zero shells; sub-01 has one (b=1000).')
    >>> two = dki_support(np.r_[0, [1000.0] * 30, [2000.0] * 30], np.r_[np.zeros((1, 3)), g, g])
    >>> two.ok, two.shells, two.n_directions
    (True, (1000.0, 2000.0), 30)
    """
    bvals = np.asarray(bvals, dtype=float).ravel()
    bvecs = np.asarray(bvecs, dtype=float)
    if bvecs.ndim == 2 and bvecs.shape[1] != 3 and bvecs.shape[0] == 3:
        bvecs = bvecs.T
    shells = group_shells(bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold)
    values = tuple(float(s.bval) for s in shells)
    dwi = ~b0_mask(bvals, b0_threshold=b0_threshold)
    n_dirs = distinct_axes(bvecs[dwi]) if dwi.any() else 0

    def refuse(reason: str) -> DkiSupport:
        return DkiSupport(False, reason, values, n_dirs)

    if len(shells) < MIN_SHELLS:
        have = "none" if not shells else f"one (b={shells[0].bval:g})"
        return refuse(f"DKI needs two non-zero shells; {name} has {have}.")
    if not (~dwi).any():
        return refuse(f"DKI needs a b0 volume (b < {b0_threshold:g}); {name} has none.")
    if n_dirs < MIN_DIRECTIONS:
        return refuse(
            f"DKI needs at least {MIN_DIRECTIONS} distinct non-collinear gradient directions "
            f"(15 kurtosis-tensor elements); {name} has {n_dirs} over shells "
            f"{', '.join(f'b={b:g}' for b in values)}."
        )
    conditioning = design_conditioning(bvals, bvecs, b0_threshold=b0_threshold)
    if conditioning < MIN_CONDITIONING:
        return refuse(
            f"the directions of {name} cannot separate the 22 DKI parameters (design "
            f"conditioning {conditioning:.1e} < {MIN_CONDITIONING:g}): directions in one "
            "plane, or a second shell with too few distinct directions."
        )
    return DkiSupport(True, "", values, n_dirs)


def wls_dki_params(
    signal: np.ndarray,
    design: np.ndarray,
    *,
    min_signal: float = MIN_POSITIVE_SIGNAL,
) -> np.ndarray:
    """DKI parameters by WLS, equal to dipy's ``DiffusionKurtosisModel(fit_method="WLS")``.

    Parameters
    ----------
    signal : ndarray, shape (V, N)
        Raw signal of ``V`` voxels (not normalized: :math:`\\log S_0` is fitted).
    design : ndarray, shape (N, 22)
        dipy's ``dki.design_matrix`` of the volumes.
    min_signal : float
        Floor of the signal before the log (dipy's ``MIN_POSITIVE_SIGNAL``).

    Returns
    -------
    ndarray, shape (V, 27), float64
        dipy's DKI parameter layout: eigenvalues (3, decreasing, floored at
        ``1e-6 / max(b)``), eigenvectors (9: the rows of the matrix whose columns
        are the eigenvectors), kurtosis-tensor elements (15).
    """
    # OLS first: its predicted signal gives the weights, as dipy's ls_fit_dki
    beta = wls_log_linear_fit(signal, design, min_signal)
    return _to_dki_params(beta, min_diffusivity=_EIG_TOL / -design.min())


def _to_dki_params(beta: np.ndarray, *, min_diffusivity: float) -> np.ndarray:
    """Linear solution (V, 22) -> dipy's (V, 27) parameters (``params_to_dki_params``)."""
    evals, evecs = decompose_tensor(
        from_lower_triangular(beta[:, :6]), min_diffusivity=min_diffusivity
    )
    md2 = evals.mean(axis=1) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(md2[:, None] > 0, beta[:, 6:21] / md2[:, None], 0.0)
    return np.concatenate([evals, evecs.reshape(-1, 9), kt], axis=1)


def raw_metrics(params: np.ndarray) -> dict[str, np.ndarray]:
    """The eight scalar maps of DKI parameters, unclipped.

    Parameters
    ----------
    params : ndarray, shape (V, 27)
        dipy's DKI parameters (:func:`wls_dki_params`).

    Returns
    -------
    dict of str to ndarray, shape (V,), float64
        :data:`PARAMS`; kurtosis from dipy's analytical solutions with no
        bounds (``min_kurtosis=None, max_kurtosis=None``), so
        :func:`clip_to_ranges` can count what it clips.
    """
    params = np.ascontiguousarray(params, dtype=np.float64)
    evals = params[:, :3]
    bounds = {"min_kurtosis": None, "max_kurtosis": None}
    return {
        "md": mean_diffusivity(evals),
        "ad": axial_diffusivity(evals),
        "rd": radial_diffusivity(evals),
        "fa": fractional_anisotropy(evals),
        "mk": mean_kurtosis(params, **bounds),
        "ak": axial_kurtosis(params, **bounds),
        "rk": radial_kurtosis(params, **bounds),
        "kfa": kurtosis_fractional_anisotropy(params),
    }


def clip_to_ranges(
    maps: dict[str, np.ndarray], ranges: dict[str, tuple[float, float]] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Clip each map to its range; non-finite values become 0.

    Parameters
    ----------
    maps : dict of str to ndarray, shape (V,)
    ranges : dict of str to (float, float), optional
        Default :data:`RANGES`.

    Returns
    -------
    clipped : dict of str to ndarray, shape (V,), float32
    counts : dict of str to dict
        Per map: ``below``, ``above`` (voxels outside the range by more than
        1e-6 of its width: rounding is clipped but not counted) and ``nonfinite``
        (NaN or infinite, set to 0).

    >>> out, counts = clip_to_ranges({"mk": np.array([-0.2, 1.0, 7.0, np.nan])})
    >>> out["mk"].tolist(), counts["mk"]
    ([0.0, 1.0, 3.0, 0.0], {'below': 1, 'above': 1, 'nonfinite': 1})
    """
    ranges = RANGES if ranges is None else ranges
    out, counts = {}, {}
    for name, values in maps.items():
        low, high = ranges[name]
        # rounding (a K = 0 voxel fitted as -1e-13) is clipped but not counted
        tol = _COUNT_TOLERANCE * (high - low)
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
        counts[name] = {
            "below": int(np.count_nonzero(finite & (values < low - tol))),
            "above": int(np.count_nonzero(finite & (values > high + tol))),
            "nonfinite": int(np.count_nonzero(~finite)),
        }
        out[name] = np.clip(np.where(finite, values, 0.0), low, high).astype(np.float32)
    return out, counts


@dataclass(frozen=True, eq=False)
class DkiResult:
    """DKI maps of one run.

    Attributes
    ----------
    maps : dict of str to ndarray, shape (X, Y, Z), float32
        :data:`PARAMS`, clipped to :data:`RANGES`, 0 outside the mask.
    clipped : dict of str to dict of str to int
        Per map, mask voxels clipped ``below`` / ``above`` the range and
        ``nonfinite`` values set to 0.
    shells : tuple of float
        b-values of the shells used (all diffusion-weighted shells).
    n_volumes : int
        Volumes fitted (b0s and all shells).
    n_voxels : int
        Voxels fitted (the mask).
    fit_method : str
    ranges : dict of str to (float, float)
    """

    maps: dict[str, np.ndarray]
    clipped: dict[str, dict[str, int]]
    shells: tuple[float, ...]
    n_volumes: int
    n_voxels: int
    fit_method: str = FIT_METHOD
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(RANGES))

    def clipped_total(self, name: str) -> int:
        """Voxels of map ``name`` that were changed by the clipping."""
        return sum(self.clipped[name].values())


def dki_fit(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    name: str = "the run",
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    ranges: dict[str, tuple[float, float]] | None = None,
    chunk_size: int = 16384,
    n_procs: int = 1,
) -> DkiResult:
    """Fit DKI (WLS) on the b0 volumes and all shells of a run; clip the maps.

    Parameters
    ----------
    data : ndarray, shape (X, Y, Z, N)
    bvals : ndarray, shape (N,)
    bvecs : ndarray, shape (N, 3) or (3, N)
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit (default: all).
    name : str
        The run, for messages.
    b_tolerance, b0_threshold : float
    ranges : dict, optional
        Clipping ranges (default :data:`RANGES`).
    chunk_size : int
        Voxels per block (memory: ~chunk_size x 22² x 8 bytes per process).
    n_procs : int
        Processes that fit blocks at the same time (see :func:`_fit_blocks`).

    Returns
    -------
    DkiResult

    Raises
    ------
    BadGradientsError
        When the table does not support DKI (:func:`dki_support` says why).
    """
    data = np.asarray(data)
    _voxels.check_4d(data)
    bvals, bvecs = validate_gradients(bvals, bvecs, data.shape[-1], b0_threshold=b0_threshold)
    support = dki_support(bvals, bvecs, name=name, b_tolerance=b_tolerance,
                          b0_threshold=b0_threshold)  # fmt: skip
    if not support.ok:
        raise BadGradientsError(support.reason)
    ranges = dict(RANGES if ranges is None else ranges)
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)
    design = dki_design_matrix(gtab)
    flat, order = _voxels.flat_voxels(data)
    index = _voxels.mask_indices(mask, data.shape[:3], order)
    maps = {p: _voxels.new_volume(data.shape[:3], None, order) for p in PARAMS}
    counts = {p: {"below": 0, "above": 0, "nonfinite": 0} for p in PARAMS}
    # at least one block per process
    chunk_size = max(1, min(chunk_size, -(-index.size // max(n_procs, 1))))
    blocks = list(_voxels.chunks(index, chunk_size))
    for idx, (values, block_counts) in zip(
        blocks, _fit_blocks(flat, blocks, design, ranges, n_procs), strict=True
    ):
        for p in PARAMS:
            maps[p][1][idx] = values[p]
            for key, count in block_counts[p].items():
                counts[p][key] += count
    return DkiResult(
        maps={p: maps[p][0] for p in PARAMS},
        clipped=counts,
        shells=support.shells,
        n_volumes=int(bvals.size),
        n_voxels=int(index.size),
        ranges=ranges,
    )


def fit_block(
    signal: np.ndarray, design: np.ndarray, ranges: dict[str, tuple[float, float]]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Fit, compute and clip the maps of one block of voxels.

    Parameters
    ----------
    signal : ndarray, shape (V, N)
    design : ndarray, shape (N, 22)
    ranges : dict of str to (float, float)

    Returns
    -------
    values : dict of str to ndarray, shape (V,), float32
    counts : dict of str to dict of str to int
        See :func:`clip_to_ranges`.
    """
    return clip_to_ranges(raw_metrics(wls_dki_params(signal, design)), ranges)


#: Blocks of the worker processes, inherited through ``fork`` (never pickled).
_SHARED: dict[str, object] = {}


def _fit_shared(idx: np.ndarray):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one BLAS thread per process: the processes fill the cores
        return fit_block(_SHARED["flat"][idx], _SHARED["design"], _SHARED["ranges"])


def _fit_blocks(flat, blocks, design, ranges, n_procs) -> list:
    """Results of :func:`fit_block` for every block, in order.

    dipy's analytical kurtosis (Cython) holds the GIL, so threads do not help:
    with ``n_procs > 1`` the blocks go to forked processes that inherit the data
    (nothing large is pickled).  Where ``fork`` is unavailable, or the processes
    fail (cannot start, killed), the blocks are fitted here, one after the other.
    """
    import multiprocessing

    if n_procs > 1 and len(blocks) > 1 and "fork" in multiprocessing.get_all_start_methods():
        from concurrent.futures import ProcessPoolExecutor

        _SHARED.update(flat=flat, design=design, ranges=ranges)
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(n_procs, len(blocks)), mp_context=context) as pool:
                return list(pool.map(_fit_shared, blocks))
        except (OSError, AssertionError, RuntimeError) as err:
            logger.warning("DKI fitted in one process: worker processes failed (%s).", err)
        finally:
            _SHARED.clear()
    return [fit_block(flat[idx], design, ranges) for idx in blocks]
