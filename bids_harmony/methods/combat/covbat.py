"""CovBat: ComBat, then the site effects on the covariance of the residuals.

ComBat removes each feature's site location and scale but leaves site differences in
how features vary *together* (e.g. noise shared by neighbouring voxels at one
scanner).  CovBat (Chen et al., 2022) adds a second step.  With
:math:`e_{ij} = (y^{\\mathrm{ComBat}}_{ij} - \\hat\\alpha - X_{ij}\\hat\\beta)/\\hat\\sigma`
the ComBat-adjusted residuals (``(n_samples, n_features)``, one row per sample),
centred and scaled per feature to :math:`R` (``std_var``, as the authors' default),

1. principal components of :math:`R` pooled over sites,
   :math:`R = S V^\\top` with scores :math:`S = U\\Lambda^{1/2}` and loadings
   :math:`V = R^\\top U \\Lambda^{-1/2}` from the eigendecomposition
   :math:`R R^\\top = U \\Lambda U^\\top` of the ``(n_samples, n_samples)`` Gram matrix
   (never a features x features covariance: 200,000 voxels cost one
   :math:`n^2 p` product);
2. the first :math:`K` scores (the fewest explaining more than ``variance`` of the
   total, or ``n_components``) are harmonized as ComBat features, site location and
   scale, no covariates, :math:`S_{\\cdot k} \\to S^*_{\\cdot k}`;
3. rebuild :math:`R^* = R + (S^*_K - S_K) V_K^\\top` (the components past :math:`K`
   are kept as they are), undo the scaling, and add :math:`\\hat\\alpha + X\\hat\\beta`
   back.

Defaults follow the authors' R package ``CovBat``: 95 % of the variance, and the
scores' ComBat *without* empirical Bayes (``score_eb="none"``: the :math:`K` scores are
too few and too heterogeneous for priors pooled across them); the first step uses
``eb`` as plain ComBat.  With a reference site, both ComBat steps map to it and its
samples are returned bit for bit.  The scores' per-site scaling also rescales whatever
the covariate model misses: a nonlinear age effect fitted as linear, with age
confounded with site, comes out as a new site effect (``benchmarks/combat.py``: 23 %
of regions with a site effect after CovBat, 1 % with ``smooth=("age",)``).

References
----------
Chen AA, Beer JC, Tustison NJ, et al. Mitigating site effects in covariance for machine
learning in neuroimaging data. Human Brain Mapping 43 (2022) 1224-1243.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_harmony.methods.combat.design import CovariatesLike
from bids_harmony.methods.combat.errors import CombatInputError, SmallSiteWarning
from bids_harmony.methods.combat.model import CombatModel, CombatStep, apply_combat, fit_combat
from bids_harmony.methods.combat.splines import DEFAULT_DF
from bids_harmony.methods.combat.steps import (
    as_samples_by_features,
    check_apply_inputs,
    check_eb,
    chunks,
    expand,
    moved_rows,
    text_labels,
)

__all__ = ["CovbatModel", "apply_covbat", "fit_covbat"]

LOGGER = logging.getLogger(__name__)

#: Share of the residual variance the harmonized components explain by default.
DEFAULT_VARIANCE = 0.95
#: Eigenvalues of the Gram matrix below this fraction of the largest are rounding noise.
_RANK_TOL = 1e-10


@dataclass(frozen=True, eq=False)
class CovbatModel(CombatStep):
    """A fitted CovBat model.

    Attributes
    ----------
    combat : CombatModel
        The first, per-feature step.
    scores : CombatModel
        ComBat of the principal-component scores (``n_components`` features).
    center, scale : ndarray, shape (n_features,)
        Per-feature mean and standard deviation of the ComBat residuals (0 and 1 for
        untouched features, and ``scale`` 1 without ``std_var``).
    loadings : ndarray, shape (n_features, n_components)
        :math:`V_K`, orthonormal columns (rows of untouched features are 0).
    explained : ndarray, shape (n_components,)
        Share of the residual variance of each kept component.
    """

    combat: CombatModel
    scores: CombatModel
    center: np.ndarray
    scale: np.ndarray
    loadings: np.ndarray
    explained: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.loadings.shape[1])


def _residuals(
    model: CombatModel, data: np.ndarray, sites: np.ndarray, covariates: CovariatesLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ComBat output, its standardized residuals on the harmonized features, and the
    covariate design: ``(harmonized, residuals (n, n_keep) float64, x)``."""
    harmonized = apply_combat(model, data, sites, covariates)
    x = model.encoding.encode(covariates, data.shape[0])
    keep = np.flatnonzero(~model.untouched)
    resid = np.empty((data.shape[0], keep.size))
    for cols in chunks(keep.size):
        k = keep[cols]
        resid[:, cols] = harmonized[:, k] - (model.alpha[k] + x @ model.beta[:, k])
        resid[:, cols] /= model.sigma[k]
    return harmonized, resid, x


def fit_covbat(
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    ref_site: object | None = None,
    eb: str = "parametric",
    mean_only: bool = False,
    categorical: Sequence[str | int] = (),
    smooth: Sequence[str | int] = (),
    smooth_df: int = DEFAULT_DF,
    variance: float = DEFAULT_VARIANCE,
    n_components: int | None = None,
    score_eb: str = "none",
    std_var: bool = True,
) -> CovbatModel:
    """Fit CovBat on a cohort (see the module docstring).

    Parameters
    ----------
    data, sites, covariates, ref_site, eb, mean_only, categorical, smooth, smooth_df
        As :func:`~bids_harmony.methods.combat.fit_combat` (the first step).
    variance : float
        In (0, 1]: keep the fewest components whose cumulative share of the residual
        variance exceeds it (ignored when ``n_components`` is given).
    n_components : int, optional
        Number of components to harmonize (at most the rank of the residuals).
    score_eb : {"none", "parametric", "nonparametric"}
        Shrinkage of the scores' site effects (with one component: none).
    std_var : bool
        Scale each feature's residuals to unit variance before the PCA.

    Returns
    -------
    CovbatModel

    Raises
    ------
    CombatInputError
        Fewer than 3 samples, ``variance`` outside (0, 1], a bad ``n_components``,
        an unknown ``score_eb``, or as :func:`fit_combat`.
    """
    data = as_samples_by_features(data)
    n = data.shape[0]
    if n < 3:
        raise CombatInputError(
            f"CovBat needs at least 3 samples for principal components of the residuals; got {n}."
        )
    if n_components is None and not 0.0 < variance <= 1.0:
        raise CombatInputError(f"CovBat's variance must be in (0, 1]; got {variance!r}.")
    check_eb(score_eb, "score_eb")
    combat = fit_combat(data, sites, covariates, ref_site=ref_site, eb=eb,  # type: ignore[arg-type]
                        mean_only=mean_only, categorical=categorical, smooth=smooth,
                        smooth_df=smooth_df)  # fmt: skip
    labels = text_labels(sites, n)
    _, resid, _ = _residuals(combat, data, labels, covariates)
    keep = np.flatnonzero(~combat.untouched)
    center = resid.mean(axis=0)
    scale = resid.std(axis=0, ddof=1) if std_var else np.ones(keep.size)
    scale[scale == 0] = 1.0  # a feature ComBat made constant: nothing to rotate
    gram = np.zeros((n, n))
    for cols in chunks(keep.size):
        resid[:, cols] -= center[cols]
        resid[:, cols] /= scale[cols]
        gram += resid[:, cols] @ resid[:, cols].T
    eigval, eigvec = np.linalg.eigh(gram)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]  # largest first
    rank = int(np.sum(eigval > _RANK_TOL * max(eigval[0], 0.0)))
    if rank == 0:
        raise CombatInputError("CovBat: the ComBat residuals are all zero; nothing to rotate.")
    share = eigval[:rank] / eigval[:rank].sum()
    if n_components is None:
        k = int(np.searchsorted(np.cumsum(share), variance, side="right")) + 1
        k = min(k, rank)
    elif int(n_components) != n_components or not 1 <= n_components <= rank:
        raise CombatInputError(
            f"CovBat: n_components must be an integer in [1, {rank}] (the rank of the "
            f"residuals); got {n_components!r}."
        )
    else:
        k = int(n_components)
    u, root = eigvec[:, :k], np.sqrt(eigval[:k])
    scores = u * root  # (n, k)
    loadings = np.zeros((combat.n_features, k))
    for cols in chunks(keep.size):
        loadings[keep[cols]] = resid[:, cols].T @ (u / root)
    del resid
    with warnings.catch_warnings():  # the first step warned about small sites already
        warnings.simplefilter("ignore", SmallSiteWarning)
        score_model = fit_combat(scores, labels, None, ref_site=ref_site,
                                 eb=score_eb if k > 1 else "none")  # type: ignore[arg-type]  # fmt: skip
    LOGGER.info("CovBat: %d of %d components harmonized (%.1f %% of the residual variance).",
                k, rank, 100 * share[:k].sum())  # fmt: skip
    return CovbatModel(
        combat=combat,
        scores=score_model,
        center=expand(center, keep, combat.n_features, 0.0),
        scale=expand(scale, keep, combat.n_features, 1.0),
        loadings=loadings,
        explained=share[:k].copy(),
    )


def apply_covbat(
    model: CovbatModel,
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
) -> np.ndarray:
    """Harmonize samples of the fitted sites with a CovBat model.

    Parameters
    ----------
    model : CovbatModel
    data : ndarray, shape (n_samples, n_features)
    sites : sequence, shape (n_samples,)
    covariates : as at fit time

    Returns
    -------
    ndarray, shape (n_samples, n_features)
        As :func:`~bids_harmony.methods.combat.apply_combat`: the reference site's
        samples and untouched features bit for bit, ``data``'s floating dtype.

    Raises
    ------
    UnseenSiteError, CombatInputError
        As :func:`apply_combat`.
    """
    combat = model.combat
    data, labels, _ = check_apply_inputs(data, sites, combat.sites, combat.n_features)
    out, resid, _ = _residuals(combat, data, labels, covariates)
    keep = np.flatnonzero(~combat.untouched)
    moved = moved_rows(labels, combat.ref_site)
    if moved.size == 0 or model.n_components == 0:
        return out
    scores = np.zeros((data.shape[0], model.n_components))
    for cols in chunks(keep.size):
        k = keep[cols]
        scores += ((resid[:, cols] - model.center[k]) / model.scale[k]) @ model.loadings[k]
    del resid
    shift = apply_combat(model.scores, scores, labels) - scores  # 0 for the reference site
    for cols in chunks(keep.size):
        k = keep[cols]
        change = shift[moved] @ model.loadings[k].T
        out[np.ix_(moved, k)] += change * (model.scale[k] * combat.sigma[k])
    return out
