"""ComBat: fit the location/scale model of site effects on a cohort, then remove them.

For feature :math:`v` of sample :math:`j` at site :math:`i` (Johnson et al., 2007;
Fortin et al., 2017, 2018)

.. math::

    y_{ijv} = \\alpha_v + X_{ij}\\beta_v + \\gamma_{iv} + \\delta_{iv}\\varepsilon_{ijv},
    \\qquad \\varepsilon_{ijv} \\sim N(0, \\sigma_v^2).

:func:`fit_combat` estimates :math:`\\alpha, \\beta` and the site intercepts by ordinary
least squares on the design :math:`[\\text{site one-hot} \\mid X]`, with
:math:`\\hat\\alpha_v = \\sum_i (n_i/n)\\,\\hat\\alpha_{iv}` (or the reference site's
intercept) and :math:`\\hat\\sigma^2_v` the mean squared residual over every sample (or
over the reference site's); standardizes
:math:`Z_{ijv} = (y_{ijv} - \\hat\\alpha_v - X_{ij}\\hat\\beta_v)/\\hat\\sigma_v`; and
estimates each site's :math:`(\\gamma^*_{iv}, \\delta^{2*}_{iv})` from :math:`Z` (see
:mod:`.eb`).  :func:`apply_combat` then maps any sample of a fitted site to

.. math::

    y^{\\mathrm{ComBat}}_{ijv} = \\hat\\sigma_v \\frac{Z_{ijv} - \\gamma^*_{iv}}
    {\\sqrt{\\delta^{2*}_{iv}}} + \\hat\\alpha_v + X_{ij}\\hat\\beta_v,

keeping the covariate effects; the reference site's samples are returned unchanged.
As in sva and neuroCombat (whose outputs these reproduce), :math:`\\hat\\sigma^2_v` divides
by :math:`n` and :math:`\\hat\\delta^2_{iv}` by :math:`n_i - 1`: a site identical to the
reference up to location and scale comes out as the reference shrunk towards its
mean by :math:`\\sqrt{(n_i - 1)/n_i}`.
Features that the model cannot describe (a non-finite value, constant, constant within
a site, or with no residual variance) are left as they are and reported.

References
----------
Johnson WE, Li C, Rabinovic A. Biostatistics 8 (2007) 118-127.
Fortin JP, Parker D, Tunc B, et al. NeuroImage 161 (2017) 149-170.
Fortin JP, Cullen N, Sheline YI, et al. NeuroImage 167 (2018) 104-120.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bids_harmony.methods.combat.design import CovariateEncoding, CovariatesLike
from bids_harmony.methods.combat.splines import DEFAULT_DF
from bids_harmony.methods.combat.steps import (
    CHUNK,
    EB_VARIANTS,
    MIN_RELIABLE_SAMPLES,
    EbVariant,
    FitSites,
    as_samples_by_features,
    check_apply_inputs,
    check_eb,
    check_pooling,
    chunks,
    drop_no_residual,
    estimate_site_effects,
    expand,
    grand_intercept,
    moved_rows,
    output_dtype,
    prepare_sites,
    site_design,
)
from bids_harmony.methods.combat.untouched import Untouched, untouched_reasons

__all__ = [
    "EB_VARIANTS",
    "MIN_RELIABLE_SAMPLES",
    "CombatModel",
    "apply_combat",
    "combat",
    "fit_combat",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CombatModel:
    """A fitted ComBat model: everything :func:`apply_combat` needs.

    Attributes
    ----------
    sites : tuple of str
        Site labels, sorted; the rows of ``gamma_star``, ``delta2_star``.
    alpha : ndarray, shape (n_features,)
        :math:`\\hat\\alpha_v`, the grand mean (the reference site's intercept if any).
    beta : ndarray, shape (n_columns, n_features)
        :math:`\\hat\\beta_v`, covariate effects, one row per ``encoding.column_names``.
    gamma_star : ndarray, shape (n_sites, n_features)
        Additive site effects, in units of ``sigma`` (0 for the reference site).
    delta2_star : ndarray, shape (n_sites, n_features)
        Multiplicative site effects on the variance (1 for the reference site).
    sigma : ndarray, shape (n_features,)
        :math:`\\hat\\sigma_v`, pooled residual standard deviation (the reference site's).
    n_per_site : ndarray of int, shape (n_sites,)
        Samples of each site in the fit.
    untouched_reason : ndarray of int8, shape (n_features,)
        :class:`Untouched` code per feature; 0 for harmonized features.  Untouched
        features have ``alpha = beta = gamma_star = 0`` and ``delta2_star = sigma = 1``.
    encoding : CovariateEncoding
        How the covariates become ``beta``'s rows.
    ref_site : str or None
        The site whose data are left unchanged and the others mapped to.
    eb : {"parametric", "nonparametric", "none"}
    mean_only : bool
        Whether only the additive effect was removed (:math:`\\delta = 1`).
    """

    sites: tuple[str, ...]
    alpha: np.ndarray
    beta: np.ndarray
    gamma_star: np.ndarray
    delta2_star: np.ndarray
    sigma: np.ndarray
    n_per_site: np.ndarray
    untouched_reason: np.ndarray
    encoding: CovariateEncoding = field(default_factory=CovariateEncoding)
    ref_site: str | None = None
    eb: str = "parametric"
    mean_only: bool = False

    @property
    def n_features(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def untouched(self) -> np.ndarray:
        """``(n_features,)`` bool: the features left as they are."""
        return self.untouched_reason != Untouched.HARMONIZED

    def untouched_summary(self) -> dict[str, int]:
        """Untouched features per reason, e.g. ``{"constant": 3}``."""
        codes, counts = np.unique(self.untouched_reason[self.untouched], return_counts=True)
        return {Untouched(int(c)).name.lower(): int(k) for c, k in zip(codes, counts, strict=True)}


class CombatStep:
    """Base of the models whose first step is a ComBat model ``combat`` (CovBat,
    longitudinal ComBat): its features, sites and reference site."""

    combat: CombatModel

    @property
    def n_features(self) -> int:
        return self.combat.n_features

    @property
    def sites(self) -> tuple[str, ...]:
        return self.combat.sites

    @property
    def ref_site(self) -> str | None:
        return self.combat.ref_site


def fit_combat(
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    ref_site: object | None = None,
    eb: EbVariant = "parametric",
    mean_only: bool = False,
    categorical: Sequence[str | int] = (),
    smooth: Sequence[str | int] = (),
    smooth_df: int = DEFAULT_DF,
) -> CombatModel:
    """Fit ComBat on a cohort.

    Parameters
    ----------
    data : ndarray, shape (n_samples, n_features)
        One row per sample (session), e.g. ROI means or the voxels of maps in a
        common space.
    sites : sequence, shape (n_samples,)
        Site of each sample (compared as text); at least two sites, two samples each.
    covariates : ndarray (n_samples, k) or (n_samples,), mapping of name to column, or None
        Effects to keep (see :class:`CovariateEncoding`); columns of numbers are
        numeric, others categorical.
    ref_site : optional
        Site left unchanged, whose location and scale the others are mapped to.
    eb : {"parametric", "nonparametric", "none"}
        Empirical-Bayes shrinkage of the site effects (:mod:`.eb`), or none.
    mean_only : bool
        Remove the additive effect only (:math:`\\delta = 1`).
    categorical : sequence of str or int
        Covariates to treat as categorical although they hold numbers.
    smooth : sequence of str or int
        Numeric covariates whose effect is smooth rather than linear (ComBat-GAM,
        Pomponio et al., 2020): a natural cubic spline of ``smooth_df`` columns with
        knots at the covariate's quantiles, stored in ``model.encoding``
        (:mod:`.splines`).
    smooth_df : int
        Columns (degrees of freedom) of each smooth covariate's spline.

    Returns
    -------
    CombatModel

    Raises
    ------
    CombatInputError
        Shapes that do not match, a missing covariate value, an unknown ``ref_site``.
    TooFewSamplesError
        Fewer than two sites, or a site with fewer than two samples.
    ConfoundedCovariateError
        A covariate that site determines (rank-deficient design).

    Warns
    -----
    SmallSiteWarning
        A site with fewer than :data:`MIN_RELIABLE_SAMPLES` samples.
    """
    check_eb(eb)
    data = as_samples_by_features(data)
    n_samples, n_features = data.shape
    fit_sites = prepare_sites(sites, n_samples, ref_site, stacklevel=3)
    names, site_index, counts, _, ref_index = fit_sites
    n_sites = len(names)
    encoding, x, design = site_design(covariates, site_index, n_sites, categorical=categorical,
                                      smooth=smooth, smooth_df=smooth_df)  # fmt: skip
    reason = untouched_reasons(data, site_index, n_sites)
    keep = np.flatnonzero(reason == Untouched.HARMONIZED)
    y = (data if keep.size == n_features else data[:, keep]).astype(np.float64)  # one copy
    # full column rank (checked): the pseudo-inverse is the least-squares solution, and
    # unlike lstsq it does not copy the (n_samples, n_features) right-hand side
    coef = np.linalg.pinv(design) @ y
    alpha = grand_intercept(coef[:n_sites], counts, ref_index)
    beta = coef[n_sites:]
    rows = np.arange(n_samples) if ref_index is None else np.flatnonzero(site_index == ref_index)
    sigma = np.empty(keep.size)
    scale = np.empty(keep.size)
    for cols in chunks(keep.size):
        resid = y[rows, cols] - design[rows] @ coef[:, cols]
        sigma[cols] = np.sqrt(np.mean(resid**2, axis=0))
        scale[cols] = np.std(y[:, cols], axis=0)
    # exactly explained features have residuals of rounding size, relative to the data's
    exact = sigma <= 1e-10 * scale
    keep, y, alpha, beta, sigma = drop_no_residual(exact, reason, keep, y, alpha, beta, sigma)
    if reason.any():
        why = ", ".join(f"{(reason == r).sum()} {r.name.lower()}" for r in Untouched
                        if r and (reason == r).any())  # fmt: skip
        LOGGER.warning("ComBat leaves %d of %d features as they are (%s).",
                       n_features - keep.size, n_features, why)  # fmt: skip
    z = y  # standardized in place: y is our copy
    for cols in chunks(keep.size):
        z[:, cols] -= alpha[cols] + x @ beta[:, cols]
        z[:, cols] /= sigma[cols]
    return fitted_model(z, keep, n_features, reason, fit_sites, encoding, alpha, beta, sigma,
                        eb=eb, mean_only=mean_only)  # fmt: skip


def fitted_model(
    z: np.ndarray,
    keep: np.ndarray,
    n_features: int,
    reason: np.ndarray,
    fit_sites: FitSites,
    encoding: CovariateEncoding,
    alpha: np.ndarray,
    beta: np.ndarray,
    sigma: np.ndarray,
    *,
    eb: str,
    mean_only: bool,
) -> CombatModel:
    """The last step of a ComBat fit: each site's effects from the standardized data
    ``z`` (n_samples, keep.size), and the model, with the estimates over the harmonized
    features ``keep`` spread to all ``n_features`` (the untouched ones' neutral)."""
    check_pooling(eb, keep.size)
    names, site_index, counts, ref, ref_index = fit_sites
    gamma_star, delta2_star = estimate_site_effects(
        z, site_index, len(names), ref_index, eb=eb, mean_only=mean_only
    )
    return CombatModel(
        sites=names,
        alpha=expand(alpha, keep, n_features, 0.0),
        beta=expand(beta, keep, n_features, 0.0),
        gamma_star=expand(gamma_star, keep, n_features, 0.0),
        delta2_star=expand(delta2_star, keep, n_features, 1.0),
        sigma=expand(sigma, keep, n_features, 1.0),
        n_per_site=counts.astype(np.int64),
        untouched_reason=reason,
        encoding=encoding,
        ref_site=ref,
        eb=eb,
        mean_only=mean_only,
    )


def apply_combat(
    model: CombatModel,
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
) -> np.ndarray:
    """Remove the fitted site effects from samples of the fitted sites.

    Parameters
    ----------
    model : CombatModel
    data : ndarray, shape (n_samples, n_features)
        Samples of sites in ``model.sites``: the training samples, or new ones
        (e.g. patients, when the model was fitted on controls).
    sites : sequence, shape (n_samples,)
    covariates : as at fit time (same columns)

    Returns
    -------
    ndarray, shape (n_samples, n_features)
        Harmonized data, in ``data``'s floating dtype (``float64`` for integers);
        untouched features and the reference site's samples are copied bit for bit,
        and a non-finite input value stays where it was.

    Raises
    ------
    UnseenSiteError
        A site that the model was not fitted on.
    CombatInputError
        Another number of features, or covariates that do not match the fit.
    """
    data, labels, site_index = check_apply_inputs(data, sites, model.sites, model.n_features)
    x = model.encoding.encode(covariates, data.shape[0])
    out = np.array(data, dtype=output_dtype(data), copy=True)
    moved = moved_rows(labels, model.ref_site)
    keep = np.flatnonzero(~model.untouched)
    idx = site_index[moved]
    for start in range(0, keep.size, CHUNK):
        cols = keep[start : start + CHUNK]
        y = data[np.ix_(moved, cols)].astype(np.float64)
        mean = model.alpha[cols] + x[moved] @ model.beta[:, cols]
        z = (y - mean) / model.sigma[cols]
        z -= model.gamma_star[np.ix_(idx, cols)]
        z /= np.sqrt(model.delta2_star[np.ix_(idx, cols)])
        out[np.ix_(moved, cols)] = z * model.sigma[cols] + mean
    return out


def combat(
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    **options: object,
) -> tuple[np.ndarray, CombatModel]:
    """Fit on ``data`` and harmonize it: ``(apply_combat(model, data, ...), model)``;
    ``options`` as :func:`fit_combat`'s."""
    model = fit_combat(data, sites, covariates, **options)  # type: ignore[arg-type]
    return apply_combat(model, data, sites, covariates), model
