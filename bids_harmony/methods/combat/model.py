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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from bids_harmony.methods.combat.design import (
    CovariateEncoding,
    CovariatesLike,
    check_design_rank,
)
from bids_harmony.methods.combat.eb import nonparametric_eb, parametric_eb, site_estimates
from bids_harmony.methods.combat.errors import (
    CombatInputError,
    SmallSiteWarning,
    TooFewSamplesError,
    UnseenSiteError,
)
from bids_harmony.methods.combat.splines import DEFAULT_DF
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

EbVariant = Literal["parametric", "nonparametric", "none"]
EB_VARIANTS: tuple[str, ...] = ("parametric", "nonparametric", "none")
#: Fewer samples per site than this draw a :class:`SmallSiteWarning`: the rule of thumb
#: of the ComBat literature for reliable site estimates is about 20-25.
MIN_RELIABLE_SAMPLES = 20
#: Features processed at once (bounds the temporary arrays of the fit and of the apply).
_CHUNK = 65_536


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


def _site_labels(sites: Sequence[object] | np.ndarray, n_samples: int) -> np.ndarray:
    labels = np.asarray(sites)
    if labels.shape != (n_samples,):
        raise CombatInputError(
            f"sites has shape {labels.shape}; expected ({n_samples},), one site per sample."
        )
    return np.array([str(s) for s in labels], dtype=object)


def _as_samples_by_features(data: np.ndarray, what: str = "data") -> np.ndarray:
    array = np.asarray(data)
    if array.ndim != 2:
        raise CombatInputError(
            f"{what} must be (n_samples, n_features); got shape {array.shape} (reshape maps "
            "to one row per session)."
        )
    if array.dtype.kind not in "biuf":
        raise CombatInputError(f"{what} must be numbers; got dtype {array.dtype}.")
    return array


def prepare_sites(
    sites: Sequence[object] | np.ndarray,
    n_samples: int,
    ref_site: object | None,
    *,
    stacklevel: int = 2,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, str | None]:
    """Check the site labels of a fit: ``(names, site_index, counts, ref)``.

    ``names`` sorted; ``site_index`` (n_samples,) into them; ``counts`` per site;
    ``ref`` the reference site as text, or None.  Raises :class:`TooFewSamplesError`
    (fewer than two sites, a site of one sample) or :class:`CombatInputError` (an
    unknown ``ref_site``); warns :class:`SmallSiteWarning` for small sites.
    """
    labels = _site_labels(sites, n_samples)
    site_names, site_index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    names = tuple(str(s) for s in site_names)
    if len(names) < 2:
        raise TooFewSamplesError(
            f"ComBat needs samples of at least two sites; got only site {names}."
        )
    few = [f"{s} ({c})" for s, c in zip(names, counts, strict=True) if c < 2]
    if few:
        raise TooFewSamplesError(
            f"site(s) {', '.join(few)} have fewer than 2 samples: ComBat cannot estimate a "
            "site's scale from one sample. Add samples or leave those sites out."
        )
    ref = None if ref_site is None else str(ref_site)
    if ref is not None and ref not in names:
        raise CombatInputError(f"reference site {ref!r} is not among the sites {list(names)}.")
    small = [f"{s} ({c})" for s, c in zip(names, counts, strict=True)
             if c < MIN_RELIABLE_SAMPLES]  # fmt: skip
    if small:
        warnings.warn(
            f"ComBat: site(s) {', '.join(small)} have fewer than {MIN_RELIABLE_SAMPLES} "
            "samples; their site effects are poorly estimated (the literature's rule of "
            "thumb is 20-25 per site).",
            SmallSiteWarning,
            stacklevel=stacklevel,
        )
    return names, site_index, counts, ref


def estimate_site_effects(
    z: np.ndarray,
    site_index: np.ndarray,
    n_sites: int,
    ref_index: int | None,
    *,
    eb: str = "parametric",
    mean_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each site's :math:`(\\gamma^*_i, \\delta^{2*}_i)` from standardized data ``z``
    (n_samples, n_features): ``(gamma_star, delta2_star)``, each (n_sites, n_features),
    0 and 1 for the reference site (the target: no effect to remove)."""
    gamma_star = np.zeros((n_sites, z.shape[1]))
    delta2_star = np.ones((n_sites, z.shape[1]))
    for i in range(n_sites):
        if i == ref_index or z.shape[1] == 0:
            continue
        zi = z[site_index == i]
        if eb == "parametric":
            gamma_star[i], delta2_star[i] = parametric_eb(zi, mean_only=mean_only)
        elif eb == "nonparametric":
            gamma_star[i], delta2_star[i] = nonparametric_eb(zi, mean_only=mean_only)
        else:
            gamma_star[i], delta2_star[i] = site_estimates(zi, mean_only=mean_only)
    return gamma_star, delta2_star


def _chunks(n_features: int) -> list[slice]:
    """Column blocks that bound the temporary arrays to (n_samples, _CHUNK)."""
    return [slice(start, start + _CHUNK) for start in range(0, n_features, _CHUNK)]


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
    if eb not in EB_VARIANTS:
        raise CombatInputError(f"eb must be one of {EB_VARIANTS}; got {eb!r}.")
    data = _as_samples_by_features(data)
    n_samples, n_features = data.shape
    names, site_index, counts, ref = prepare_sites(sites, n_samples, ref_site, stacklevel=3)
    encoding = CovariateEncoding.from_covariates(
        covariates, n_samples, categorical=categorical, smooth=smooth, smooth_df=smooth_df
    )
    x = encoding.encode(covariates, n_samples)
    onehot = (site_index[:, None] == np.arange(len(names))).astype(float)
    check_design_rank(onehot, x, encoding.column_names)

    reason = untouched_reasons(data, site_index, len(names))
    keep = np.flatnonzero(reason == Untouched.HARMONIZED)
    y = (data if keep.size == n_features else data[:, keep]).astype(np.float64)  # one copy
    design = np.hstack([onehot, x])
    # full column rank (checked): the pseudo-inverse is the least-squares solution, and
    # unlike lstsq it does not copy the (n_samples, n_features) right-hand side
    coef = np.linalg.pinv(design) @ y
    n_sites = len(names)
    ref_index = None if ref is None else names.index(ref)
    weights = counts / n_samples if ref_index is None else np.eye(n_sites)[ref_index]
    alpha = weights @ coef[:n_sites]
    beta = coef[n_sites:]
    rows = np.arange(n_samples) if ref_index is None else np.flatnonzero(site_index == ref_index)
    sigma = np.empty(keep.size)
    scale = np.empty(keep.size)
    for cols in _chunks(keep.size):
        resid = y[rows, cols] - design[rows] @ coef[:, cols]
        sigma[cols] = np.sqrt(np.mean(resid**2, axis=0))
        scale[cols] = np.std(y[:, cols], axis=0)
    # exactly explained features have residuals of rounding size, relative to the data's
    exact = sigma <= 1e-10 * scale
    if exact.any():
        reason[keep[exact]] = Untouched.NO_RESIDUAL
        keep, y, alpha, beta, sigma = (keep[~exact], y[:, ~exact], alpha[~exact],
                                       beta[:, ~exact], sigma[~exact])  # fmt: skip
    if reason.any():
        why = ", ".join(f"{(reason == r).sum()} {r.name.lower()}" for r in Untouched
                        if r and (reason == r).any())  # fmt: skip
        LOGGER.warning("ComBat leaves %d of %d features as they are (%s).",
                       n_features - keep.size, n_features, why)  # fmt: skip
    if eb != "none" and 0 < keep.size < 2:
        raise CombatInputError(
            "empirical Bayes pools the site effects of several features; only one feature "
            "can be harmonized here. Use eb='none'."
        )
    z = y  # standardized in place: y is our copy
    for cols in _chunks(keep.size):
        z[:, cols] -= alpha[cols] + x @ beta[:, cols]
        z[:, cols] /= sigma[cols]
    gamma_star, delta2_star = estimate_site_effects(
        z, site_index, n_sites, ref_index, eb=eb, mean_only=mean_only
    )

    def full(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(values.shape[:-1] + (n_features,), fill)
        out[..., keep] = values
        return out

    return CombatModel(
        sites=names,
        alpha=full(alpha, 0.0),
        beta=full(beta, 0.0),
        gamma_star=full(gamma_star, 0.0),
        delta2_star=full(delta2_star, 1.0),
        sigma=full(sigma, 1.0),
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
    data = _as_samples_by_features(data)
    n_samples, n_features = data.shape
    if n_features != model.n_features:
        raise CombatInputError(
            f"data has {n_features} features; the ComBat model was fitted on "
            f"{model.n_features} (same features, same order)."
        )
    labels = _site_labels(sites, n_samples)
    unseen = sorted(set(labels) - set(model.sites))
    if unseen:
        raise UnseenSiteError(
            f"ComBat cannot harmonize an unseen site: {', '.join(unseen)} "
            f"{'was' if len(unseen) == 1 else 'were'} not in the fit (fitted sites: "
            f"{', '.join(model.sites)}). Its site effect was never estimated; refit the "
            "model with samples of that site included."
        )
    x = model.encoding.encode(covariates, n_samples)
    position = {site: i for i, site in enumerate(model.sites)}
    site_index = np.array([position[s] for s in labels], dtype=np.intp)
    dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
    out = np.array(data, dtype=dtype, copy=True)
    moved = np.flatnonzero(labels != model.ref_site) if model.ref_site else np.arange(n_samples)
    keep = np.flatnonzero(~model.untouched)
    idx = site_index[moved]
    for start in range(0, keep.size, _CHUNK):
        cols = keep[start : start + _CHUNK]
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
