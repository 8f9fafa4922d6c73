"""Longitudinal ComBat: site effects of repeated sessions, with a random subject intercept.

When subjects are scanned several times (follow-ups, travelling subjects), their
sessions are not independent.  Longitudinal ComBat (Beer et al., 2020) adds a random
intercept :math:`\\eta_{jv} \\sim N(0, \\tau^2_v)` of subject :math:`j` to ComBat's model:

.. math::

    y_{ijv}(t) = \\alpha_v + X_{ij}(t)\\beta_v + \\eta_{jv} + \\gamma_{iv}
    + \\delta_{iv}\\varepsilon_{ijv}(t), \\qquad \\varepsilon \\sim N(0, \\sigma^2_v).

:func:`fit_longitudinal_combat` estimates it for all features at once (the design is
the same for every feature, only the two variances differ):

1. :math:`\\hat\\sigma^2_v`, the within-subject residual variance: the residual sum of
   squares after removing each subject's mean and the within-subject part of the
   design :math:`D = [\\text{site one-hot} \\mid X]`, over
   :math:`n - n_\\text{subjects} - \\operatorname{rank}(D_\\text{within})`;
2. :math:`\\hat\\tau^2_v` by the method of moments (Henderson's method 3): with
   :math:`M = I - D D^+` and :math:`Z` the subject indicators,
   :math:`E\\|M y_v\\|^2 = (n - \\operatorname{rank} D)\\sigma^2_v
   + \\operatorname{tr}(M Z Z^\\top)\\tau^2_v`, solved for :math:`\\tau^2_v` and truncated
   at 0;
3. the fixed effects by generalized least squares with
   :math:`V_v \\propto I + (\\hat\\tau^2_v/\\hat\\sigma^2_v) Z Z^\\top` (feasible GLS; the
   :math:`q \\times q` normal equations of every feature in one batched solve);
4. each subject's intercept by its BLUP :math:`\\hat\\eta_{jv} = \\hat\\tau^2_v
   \\sum_{t} r_{jtv} / (\\hat\\sigma^2_v + n_j\\hat\\tau^2_v)` from the GLS residuals
   :math:`r` of its :math:`n_j` sessions.

Then, as in ComBat, :math:`Z_{ijv}(t) = (y - \\hat\\alpha_v - X\\hat\\beta_v -
\\hat\\eta_{jv})/\\hat\\sigma_v` gives each site's :math:`(\\gamma^*, \\delta^{2*})`
(empirical Bayes as chosen), and the harmonized data keep the subject intercepts:
:math:`\\hat\\sigma_v (Z - \\gamma^*_{iv})/\\delta^*_{iv} + \\hat\\alpha_v + X\\hat\\beta_v +
\\hat\\eta_{jv}`.  Beer et al. fit the mixed model by REML per feature (``lme4``); the
moment estimator here is the classical alternative, equal to the ANOVA/REML estimate
in balanced one-way designs when positive, and vectorized over 10^5 voxels.  With a
reference site, :math:`\\hat\\alpha` is its intercept and :math:`\\hat\\sigma^2` the
within-subject variance scaled by the reference site's share of the conditional
residuals :math:`y - D\\hat b - \\hat\\eta`.

Applied to new sessions, a subject's intercept is the BLUP from the sessions of that
subject given to :func:`apply_longitudinal_combat` (one session: the same formula with
:math:`n_j = 1`; ``subjects=None``: every session its own subject).

References
----------
Beer JC, Tustison NJ, Cook PA, et al. Longitudinal ComBat: a method for harmonizing
longitudinal multi-scanner imaging data. NeuroImage 220 (2020) 117129.
Searle SR, Casella G, McCulloch CE. Variance Components. Wiley (1992), ch. 5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_harmony.methods.combat.design import CovariatesLike
from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.model import (
    CombatModel,
    CombatStep,
    apply_combat,
    fitted_model,
)
from bids_harmony.methods.combat.splines import DEFAULT_DF
from bids_harmony.methods.combat.steps import (
    as_samples_by_features,
    check_apply_inputs,
    check_eb,
    chunks,
    drop_no_residual,
    expand,
    grand_intercept,
    output_dtype,
    prepare_sites,
    site_design,
    text_labels,
)
from bids_harmony.methods.combat.untouched import Untouched, untouched_reasons

__all__ = ["LongitudinalCombatModel", "apply_longitudinal_combat", "fit_longitudinal_combat"]

LOGGER = logging.getLogger(__name__)
#: Features per batched GLS solve: bounds the (block, q, q) normal equations.
_GLS_BLOCK = 16_384


@dataclass(frozen=True, eq=False)
class LongitudinalCombatModel(CombatStep):
    """A fitted longitudinal ComBat model.

    Attributes
    ----------
    combat : CombatModel
        ``alpha``, ``beta`` (GLS), ``sigma`` (within-subject, or the reference
        site's), ``gamma_star``, ``delta2_star`` as in ComBat.
    site_alpha : ndarray, shape (n_sites, n_features)
        GLS intercept of each site (the residuals of new sessions, for their BLUP).
    tau2 : ndarray, shape (n_features,)
        :math:`\\hat\\tau^2_v`, variance of the subject intercepts.
    sigma2_within : ndarray, shape (n_features,)
        :math:`\\hat\\sigma^2_v`, within-subject residual variance (of the BLUP).
    """

    combat: CombatModel
    site_alpha: np.ndarray
    tau2: np.ndarray
    sigma2_within: np.ndarray


def _subject_index(subjects: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray:
    if subjects is None:
        return np.arange(n)
    return np.unique(text_labels(subjects, n, "subject"), return_inverse=True)[1]


def _group_sums(values: np.ndarray, index: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums per group: ``(n_groups, n_columns)``."""
    out = np.zeros((n_groups, values.shape[1]))
    np.add.at(out, index, values)
    return out


def _absorbed(
    e: np.ndarray,
    weight: np.ndarray,
    lam: np.ndarray,
    subj: np.ndarray,
    site_index: np.ndarray,
    n_sites: int,
    iterations: int = 3,
) -> np.ndarray:
    """Per sample, :math:`c_t = \\mathrm{Var}(e_t)/(\\sigma^2\\delta^2_t)`, the share of its
    noise variance that the BLUP leaves in the conditional residual ``e`` (n, p).

    With :math:`e_t = \\eta_j(1 - n_j w_j) + \\varepsilon_t - w_j\\sum_{t' \\in j}
    \\varepsilon_{t'}`,

    .. math::

        c_t \\delta^2_t = \\lambda (1 - n_j w_j)^2 + \\delta^2_t (1 - 2 w_j)
        + w_j^2 \\sum_{t' \\in j} \\delta^2_{t'},

    :math:`\\lambda = \\tau^2/\\sigma^2` (``lam``, (p,)), :math:`w_j` the subject's BLUP
    weight (``weight``, (n_subjects, p)); equal to :math:`1 - w_j` when every site has
    the same scale.  The relative site scales :math:`\\delta^2` are not known yet: a
    few fixed-point steps, from equal scales, estimate them from ``e / sqrt(c)``.
    """
    w = weight[subj]
    c = np.maximum(1.0 - w, 1e-6)
    counts = np.bincount(site_index, minlength=n_sites)[:, None]
    for _ in range(iterations):
        d2 = _group_sums(e**2 / c, site_index, n_sites) / counts
        d2 /= np.maximum(d2.mean(axis=0), 1e-300)
        d2_t = d2[site_index]
        others = _group_sums(d2_t, subj, weight.shape[0])[subj]
        c = (lam * (1.0 - np.bincount(subj)[subj, None] * w) ** 2 + d2_t * (1.0 - 2.0 * w)
             + w**2 * others) / np.maximum(d2_t, 1e-300)  # fmt: skip
        c = np.maximum(c, 1e-6)
    return c


def fit_longitudinal_combat(
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    subjects: Sequence[object] | np.ndarray | None,
    ref_site: object | None = None,
    eb: str = "parametric",
    mean_only: bool = False,
    categorical: Sequence[str | int] = (),
    smooth: Sequence[str | int] = (),
    smooth_df: int = DEFAULT_DF,
) -> LongitudinalCombatModel:
    """Fit longitudinal ComBat (see the module docstring).

    Parameters
    ----------
    data, sites, covariates, ref_site, eb, mean_only, categorical, smooth, smooth_df
        As :func:`~bids_harmony.methods.combat.fit_combat`.
    subjects : sequence, shape (n_samples,)
        Subject of each sample (compared as text); some subject must have 2+ samples.

    Returns
    -------
    LongitudinalCombatModel

    Raises
    ------
    CombatInputError
        No ``subjects``, no repeated sessions, subjects that the fixed effects
        determine, or as :func:`fit_combat`.
    """
    if subjects is None:
        raise CombatInputError(
            "longitudinal ComBat needs the subject of every sample (subjects=...) to model "
            "its random intercept; without repeated sessions use plain ComBat."
        )
    check_eb(eb)
    data = as_samples_by_features(data)
    n, n_features = data.shape
    subj = _subject_index(subjects, n)
    n_subj = int(subj.max()) + 1
    per_subject = np.bincount(subj, minlength=n_subj)
    if per_subject.max() < 2:
        raise CombatInputError(
            "longitudinal ComBat needs repeated sessions: every subject has one sample, so "
            "the subject intercept cannot be told from the residual. Use plain ComBat."
        )
    fit_sites = prepare_sites(sites, n, ref_site, stacklevel=3)
    names, site_index, counts, _, ref_index = fit_sites
    n_sites = len(names)
    encoding, x, design = site_design(covariates, site_index, n_sites, categorical=categorical,
                                      smooth=smooth, smooth_df=smooth_df)  # fmt: skip
    q = design.shape[1]

    # within-subject design: its residual variance does not involve tau^2
    within = design - (_group_sums(design, subj, n_subj) / per_subject[:, None])[subj]
    u, s, _ = np.linalg.svd(within, full_matrices=False)
    basis_w = u[:, s > 1e-10 * max(s[0], 1e-300)]
    dof_w = n - n_subj - basis_w.shape[1]
    if dof_w <= 0:
        raise CombatInputError(
            f"longitudinal ComBat: no within-subject degrees of freedom ({n} samples, "
            f"{n_subj} subjects, {basis_w.shape[1]} within-subject effects); more "
            "repeated sessions are needed."
        )
    pinv = np.linalg.pinv(design)
    same_subject = subj[:, None] == subj[None, :]  # Z Z^T
    trace_mzz = n - float((design @ pinv)[same_subject].sum())  # tr(M Z Z^T)
    if trace_mzz <= 1e-8 * n:
        raise CombatInputError(
            "longitudinal ComBat: site and covariates determine the subjects (e.g. one "
            "subject per site), so the subject intercepts cannot be estimated."
        )

    reason = untouched_reasons(data, site_index, n_sites)
    keep = np.flatnonzero(reason == Untouched.HARMONIZED)
    y = data[:, keep].astype(np.float64)
    sigma2 = np.empty(keep.size)
    tau2 = np.empty(keep.size)
    coef = np.empty((q, keep.size))
    eta = np.empty((n_subj, keep.size))
    weight = np.empty((n_subj, keep.size))  # BLUP weight w_j of each subject
    sums_d = _group_sums(design, subj, n_subj)  # s_j = D_j^T 1, (n_subj, q)
    outer = (sums_d[:, :, None] * sums_d[:, None, :]).reshape(n_subj, q * q)
    gram = design.T @ design
    for cols in chunks(keep.size):
        yc = y[:, cols]
        sums_y = _group_sums(yc, subj, n_subj)
        yw = yc - (sums_y / per_subject[:, None])[subj]
        yw -= basis_w @ (basis_w.T @ yw)
        sigma2[cols] = np.einsum("ij,ij->j", yw, yw) / dof_w
        del yw
        r = yc - design @ (pinv @ yc)
        rss = np.einsum("ij,ij->j", r, r)
        tau2[cols] = np.maximum((rss - (n - q) * sigma2[cols]) / trace_mzz, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(sigma2[cols] > 0, tau2[cols] / sigma2[cols], 0.0)
        for start in range(0, lam.size, _GLS_BLOCK):
            b = slice(start, start + _GLS_BLOCK)
            # V^-1 = (I - sum_j w_j 1_j 1_j^T) / sigma^2, w_j = lam / (1 + lam n_j)
            w = lam[b, None] / (1.0 + lam[b, None] * per_subject)  # (block, n_subj)
            lhs = gram - (w @ outer).reshape(-1, q, q)
            rhs = design.T @ yc[:, b] - sums_d.T @ (w.T * sums_y[:, b])
            coef[:, cols][:, b] = np.linalg.solve(lhs, rhs.T[..., None])[..., 0].T
        r = yc - design @ coef[:, cols]
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = tau2[cols] / (sigma2[cols] + per_subject[:, None] * tau2[cols])
        weight[:, cols] = np.nan_to_num(shrink)
        eta[:, cols] = weight[:, cols] * _group_sums(r, subj, n_subj)
    site_alpha = coef[:n_sites]
    alpha = grand_intercept(site_alpha, counts, ref_index)
    beta = coef[n_sites:]
    scale = np.std(data[:, keep], axis=0)
    # The BLUP absorbs part of each session's noise: the conditional residuals
    # e = y - D b - eta have a smaller variance than sigma^2 delta_i^2.  The site effects
    # are estimated from (alpha_i - alpha + e / sqrt(c)) / sigma, with c the ratio
    # (see _absorbed); the harmonization itself uses e as it is (as the reference site).
    rows = site_index == (-1 if ref_index is None else ref_index)
    ref_ss, all_ss = np.zeros(keep.size), np.zeros(keep.size)
    z = y  # the standardized data, in place: y is our copy
    for cols in chunks(keep.size):
        e = y[:, cols] - design @ coef[:, cols] - eta[:, cols][subj]
        e /= np.sqrt(_absorbed(e, weight[:, cols], tau2[cols] / sigma2[cols], subj,
                               site_index, n_sites))  # fmt: skip
        ref_ss[cols] = np.sum(e[rows] ** 2, axis=0) / max(rows.sum(), 1)
        all_ss[cols] = np.mean(e**2, axis=0)
        z[:, cols] = e + site_alpha[:, cols][site_index] - alpha[cols]
    del weight
    sigma = np.sqrt(sigma2)
    if ref_index is not None:  # the reference site's share of the residual variance
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = sigma * np.sqrt(np.where(all_ss > 0, ref_ss / all_ss, 1.0))
    exact = ~(sigma > 1e-10 * scale)
    for cols in chunks(keep.size):
        z[:, cols] /= np.where(exact[cols], 1.0, sigma[cols])
    keep, z, alpha, beta, sigma, site_alpha, tau2, sigma2 = drop_no_residual(
        exact, reason, keep, z, alpha, beta, sigma, site_alpha, tau2, sigma2
    )
    combat = fitted_model(z, keep, n_features, reason, fit_sites, encoding, alpha, beta, sigma,
                          eb=eb, mean_only=mean_only)  # fmt: skip
    return LongitudinalCombatModel(
        combat=combat,
        site_alpha=expand(site_alpha, keep, n_features, 0.0),
        tau2=expand(tau2, keep, n_features, 0.0),
        sigma2_within=expand(sigma2, keep, n_features, 1.0),
    )


def apply_longitudinal_combat(
    model: LongitudinalCombatModel,
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    subjects: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Harmonize sessions of the fitted sites, keeping each subject's intercept.

    Parameters
    ----------
    model : LongitudinalCombatModel
    data : ndarray, shape (n_samples, n_features)
    sites : sequence, shape (n_samples,)
    covariates : as at fit time
    subjects : sequence, shape (n_samples,), optional
        Subject of each sample: its intercept is the BLUP from its samples given here.
        None: every sample is its own subject (the BLUP of one session).

    Returns
    -------
    ndarray, shape (n_samples, n_features)
        The reference site's samples and untouched features bit for bit, in
        ``data``'s floating dtype.

    Raises
    ------
    UnseenSiteError, CombatInputError
        As :func:`~bids_harmony.methods.combat.apply_combat`.
    """
    combat = model.combat
    data, labels, site_index = check_apply_inputs(data, sites, combat.sites, model.n_features)
    n = data.shape[0]
    subj = _subject_index(subjects, n)
    n_subj = int(subj.max()) + 1 if n else 0
    per_subject = np.bincount(subj, minlength=n_subj)
    x = combat.encoding.encode(covariates, n)
    keep = np.flatnonzero(~combat.untouched)
    shifted = data.astype(np.float64)  # the data less the subject intercepts
    eta = np.empty((n, keep.size))
    for cols in chunks(keep.size):
        k = keep[cols]
        r = shifted[:, k] - model.site_alpha[:, k][site_index] - x @ combat.beta[:, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            shrink = model.tau2[k] / (model.sigma2_within[k] + per_subject[:, None] * model.tau2[k])
        eta[:, cols] = (np.nan_to_num(shrink) * _group_sums(r, subj, n_subj))[subj]
        shifted[:, k] -= eta[:, cols]
    out = apply_combat(combat, shifted, labels, covariates)
    del shifted
    out[:, keep] += eta
    out = out.astype(output_dtype(data), copy=False)
    out[:, combat.untouched] = data[:, combat.untouched]
    if combat.ref_site is not None:
        rows = labels == combat.ref_site
        out[rows] = data[rows]
    return out
