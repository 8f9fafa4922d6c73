"""Cohort checks of a harmonization method that, like ComBat, is fit on a whole cohort.

Three questions, asked of the data before and after harmonization:

- Is there a site effect left?  :func:`site_effect_pvalues` tests, per feature, whether
  site explains variance beyond the covariates (an F-test of nested linear models) and
  :func:`site_effect_summary` counts the features where it does.
- Can site still be predicted from the data?  :func:`site_classifier_accuracy`
  cross-validates a multinomial logistic regression, to compare with chance.
- Are the biological effects kept?  :func:`covariate_slopes` estimates the slope of a
  covariate (age) per feature and :func:`slope_error` compares it with the truth.

Covariates are a mapping of name to column (numbers, or text for a categorical one)
encoded as by ComBat (:class:`~bids_harmony.methods.combat.design.CovariateEncoding`:
numeric columns as they are, categorical ones one-hot against their first level).
Arrays only; the figures are in :mod:`.cohort_figures`.

References
----------
Fortin JP, Parker D, Tunc B, et al. Harmonization of multi-site diffusion tensor imaging
data. NeuroImage 161 (2017) 149-170 (site tests before and after ComBat).
Fortin JP, Cullen N, Sheline YI, et al. Harmonization of cortical thickness measurements
across scanners and sites. NeuroImage 167 (2018) 104-120.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from bids_harmony.methods.combat.design import (
    CovariateEncoding,
    CovariatesLike,
    check_design_rank,
)

__all__ = [
    "covariate_slopes",
    "site_classifier_accuracy",
    "site_effect_pvalues",
    "site_effect_summary",
    "slope_error",
]

#: Features processed at once (bounds the temporary arrays to ~ n_samples x CHUNK).
CHUNK = 16384


def _data(data: ArrayLike, sites: ArrayLike | None) -> tuple[NDArray, NDArray | None, int]:
    y = np.asarray(data, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"data must be (n_samples, n_features); got shape {y.shape}")
    codes = None
    if sites is not None:
        site = np.asarray(sites)
        if site.shape != (y.shape[0],):
            raise ValueError(f"sites has shape {site.shape}; expected ({y.shape[0]},)")
        codes = np.unique(site.astype(str), return_inverse=True)[1].ravel()
        if codes.max(initial=0) < 1:
            raise ValueError("need samples of at least 2 sites")
    return y, codes, y.shape[0]


def _covariate_design(covariates: CovariatesLike, n: int) -> tuple[NDArray, tuple[str, ...]]:
    """Covariate columns as ComBat encodes them, and their names."""
    encoding = CovariateEncoding.from_covariates(covariates, n)
    return encoding.encode(covariates, n), encoding.column_names


def _site_dummies(codes: NDArray) -> NDArray:
    """One indicator column per site but the first, ``(n_samples, n_sites - 1)``."""
    return (codes[:, None] == np.arange(1, codes.max() + 1)).astype(np.float64)


def _basis(columns: NDArray, against: NDArray | None = None) -> NDArray:
    """Orthonormal basis of the span of ``columns`` (after projecting out the orthonormal
    columns ``against``), from an SVD; singular values below ``max(shape) * eps`` times
    the largest (or 1) count as zero."""
    if against is not None and against.size:
        columns = columns - against @ (against.T @ columns)
    if columns.shape[1] == 0:
        return columns
    u, s, _ = np.linalg.svd(columns, full_matrices=False)
    scale = max(np.abs(columns).max(initial=0.0), 1.0)
    tol = max(columns.shape) * np.finfo(np.float64).eps * max(s.max(initial=0.0), scale)
    return u[:, s > tol]


def _unusable(y: NDArray) -> NDArray:
    """Features with a non-finite value or the same value in every sample."""
    return ~np.isfinite(y).all(axis=0) | (y == y[:1]).all(axis=0)


def site_effect_pvalues(
    data: ArrayLike, sites: ArrayLike, covariates: CovariatesLike = None
) -> NDArray[np.float64]:
    """Per feature, the p-value of the F-test of a site effect beyond the covariates.

    The nested linear models, with :math:`X` the covariate columns and :math:`S` the
    indicators of every site but the first,

    .. math::

        M_0: y = \\beta_0 + X\\beta + \\varepsilon, \\qquad
        M_1: y = \\beta_0 + X\\beta + S\\gamma + \\varepsilon,

    are compared by (e.g. Rencher & Schaalje, *Linear Models in Statistics*, 2008, §8.4)

    .. math::

        F = \\frac{(\\mathrm{RSS}_0 - \\mathrm{RSS}_1)/d_1}{\\mathrm{RSS}_1/d_2}
            \\sim F_{d_1, d_2} \\text{ under } \\gamma = 0,

    :math:`d_1 = \\operatorname{rank}[1, X, S] - \\operatorname{rank}[1, X]` and
    :math:`d_2 = n - \\operatorname{rank}[1, X, S]`.  Without covariates this is the
    one-way ANOVA of :func:`scipy.stats.f_oneway`.  All features are computed at once
    (in chunks of :data:`CHUNK`): with :math:`Q_0` an orthonormal basis of
    :math:`[1, X]` and :math:`Q_S` one of the part of :math:`S` orthogonal to it,
    :math:`r = y - Q_0 Q_0^\\top y`, :math:`\\mathrm{RSS}_0 = \\|r\\|^2` and
    :math:`\\mathrm{RSS}_1 = \\|r - Q_S Q_S^\\top r\\|^2`.

    Parameters
    ----------
    data : array_like, shape (n_samples, n_features)
    sites : array_like, shape (n_samples,)
        Site label of each sample (at least 2 sites).
    covariates : mapping or array or None
        ``{name: column of n_samples}``; numeric or categorical (text), as for ComBat.

    Returns
    -------
    pvalues : ndarray, shape (n_features,)
        NaN for a feature with a non-finite value, constant, or that the covariates
        explain exactly (no residual variance): no test.

    Raises
    ------
    ValueError
        Fewer than 2 sites, or no residual degrees of freedom.
    CombatInputError
        Malformed covariates (see :class:`CovariateEncoding`).

    Notes
    -----
    On data harmonized by a method fit on these same samples (ComBat), the site means
    given the covariates are equal by construction: :math:`F \\approx 0` and the
    p-values pile up near 1, well below ``alpha`` significant; uniform p-values are
    expected only on samples the method was not fit on.
    """
    y, codes, n = _data(data, sites)
    design, _ = _covariate_design(covariates, n)
    q0 = _basis(np.hstack([np.ones((n, 1)), design]))
    qs = _basis(_site_dummies(codes), q0)
    d1, d2 = qs.shape[1], n - q0.shape[1] - qs.shape[1]
    if d1 == 0:
        raise ValueError("site is a combination of the covariates: no site effect to test")
    if d2 <= 0:
        raise ValueError(f"no residual degrees of freedom: {n} samples, {n - d2} parameters")
    p = np.full(y.shape[1], np.nan)
    for start in range(0, y.shape[1], CHUNK):
        block = slice(start, start + CHUNK)
        yb = y[:, block]
        bad = _unusable(yb)
        yb = np.where(bad, 0.0, yb)
        r = yb - q0 @ (q0.T @ yb)
        rss0 = np.einsum("ij,ij->j", r, r)
        r -= qs @ (qs.T @ r)
        rss1 = np.einsum("ij,ij->j", r, r)
        # no variance beyond the covariates: rounding error only, relative to the values
        scale = n * np.finfo(np.float64).eps * np.abs(yb).max(axis=0, initial=0.0)
        bad |= rss0 <= n * scale**2
        with np.errstate(divide="ignore", invalid="ignore"):
            f = (np.maximum(rss0 - rss1, 0.0) / d1) / (rss1 / d2)
        p[block] = np.where(bad, np.nan, stats.f.sf(f, d1, d2))
    return p


def site_effect_summary(
    p_before: ArrayLike, p_after: ArrayLike, alpha: float = 0.05
) -> dict[str, float | int]:
    """Fraction of features with a significant site effect before and after harmonization.

    Both fractions are over the same features: those with a finite p-value before and
    after.  No correction for multiple tests: without a site effect the expected
    fraction is ``alpha``.

    Parameters
    ----------
    p_before, p_after : array_like, shape (n_features,)
        From :func:`site_effect_pvalues` on the data before and after.
    alpha : float
        Level of each test.

    Returns
    -------
    dict
        ``alpha``, ``n_features``, ``n_tested``, ``n_excluded`` (NaN before or after),
        ``n_significant_before``/``_after`` and ``fraction_significant_before``/
        ``_after`` (NaN when no feature is tested).
    """
    before = np.asarray(p_before, dtype=np.float64).ravel()
    after = np.asarray(p_after, dtype=np.float64).ravel()
    if before.shape != after.shape:
        raise ValueError(f"p-values before {before.shape} and after {after.shape} differ")
    tested = np.isfinite(before) & np.isfinite(after)
    n_tested = int(tested.sum())
    out: dict[str, float | int] = {
        "alpha": float(alpha),
        "n_features": int(before.size),
        "n_tested": n_tested,
        "n_excluded": int(before.size - n_tested),
    }
    for name, p in (("before", before), ("after", after)):
        k = int((p[tested] < alpha).sum())
        out[f"n_significant_{name}"] = k
        out[f"fraction_significant_{name}"] = k / n_tested if n_tested else float("nan")
    return out


def _fold_features(
    y: NDArray, train: NDArray, test: NDArray, design: NDArray | None
) -> tuple[NDArray, NDArray]:
    """Training and test features of one fold: covariates regressed out and standardized
    with the training fold's estimates; reduced to principal components (of the
    training fold) when there are more features than training samples less one."""
    n_train = train.size
    reduce = y.shape[1] > n_train - 1
    if design is not None:
        d_train = np.hstack([np.ones((n_train, 1)), design[train]])
        d_test = np.hstack([np.ones((test.size, 1)), design[test]])
        pinv = np.linalg.pinv(d_train)
    parts: list[tuple[NDArray, NDArray]] = []
    g_train, g_test = np.zeros((n_train, n_train)), np.zeros((test.size, n_train))
    for start in range(0, y.shape[1], CHUNK):
        a, b = y[train, start : start + CHUNK], y[test, start : start + CHUNK]
        if design is not None:
            beta = pinv @ a
            a, b = a - d_train @ beta, b - d_test @ beta
        mean, sd = a.mean(axis=0), a.std(axis=0)
        keep = sd > 1e-12 * np.maximum(np.abs(mean), np.abs(a).max(axis=0, initial=0.0))
        a, b = (a[:, keep] - mean[keep]) / sd[keep], (b[:, keep] - mean[keep]) / sd[keep]
        if reduce:  # accumulate the Gram matrices instead of keeping the features
            g_train += a @ a.T
            g_test += b @ a.T
        else:
            parts.append((a, b))
    if not reduce:
        return np.hstack([a for a, _ in parts]), np.hstack([b for _, b in parts])
    # PCA of the (centred) training features A = U S V^T from A A^T = U S^2 U^T:
    # training scores U S, test scores B V = B A^T U / S.
    eigval, eigvec = np.linalg.eigh(g_train)
    order = np.argsort(eigval)[::-1][: n_train - 1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    keep = eigval > 1e-10 * eigval.max(initial=0.0)  # the null space of the centring
    eigvec, s = eigvec[:, keep], np.sqrt(eigval[keep])
    signs = np.where(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(s.size)] < 0, -1.0, 1.0)
    eigvec = eigvec * signs  # deterministic signs: largest loading positive
    return eigvec * s, (g_test @ eigvec) / s


def site_classifier_accuracy(
    data: ArrayLike,
    sites: ArrayLike,
    covariates: CovariatesLike = None,
    *,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, object]:
    """Cross-validated accuracy of predicting site from the data, against chance.

    A multinomial logistic regression (scikit-learn, L2 penalty ``C = 1``, L-BFGS) is
    trained and tested on stratified folds (shuffled with ``seed``).  In each fold,
    estimated on the training samples only and applied to both:

    1. with covariates, their effect is regressed out of every feature (OLS on an
       intercept and the covariate columns), so that a covariate confounded with site
       (an older cohort at one site) does not identify the site.  When site does affect
       the data, the part of it collinear with such a covariate is removed as well:
       the accuracy is then a conservative measure of the site effect;
    2. each feature is standardized (features constant in the training fold dropped);
    3. with more features than training samples less one (voxels), the features are
       replaced by their principal components on the training fold, at most
       ``n_train - 1``: an exact rotation of the span of the (centred) training
       samples, computed from the ``n_train x n_train`` Gram matrix in chunks of
       features.  For an L2-penalized linear classifier this loses nothing: its weights
       lie in that span.

    Features with a non-finite value in any sample are dropped.  On data harmonized by a
    method fit on all samples (ComBat), the accuracy can fall well below chance: the
    site means over all samples were made equal, so those of the training fold are
    shifted opposite to the test fold's.  Accuracy far below chance is that leakage, not
    a site effect.

    Parameters
    ----------
    data : array_like, shape (n_samples, n_features)
    sites : array_like, shape (n_samples,)
        Site label of each sample (at least 2 sites, each with ``folds`` samples or more).
    covariates : mapping or array or None
        As for :func:`site_effect_pvalues`.
    folds : int
        Number of cross-validation folds (at least 2).
    seed : int
        Seed of the fold assignment; the result is deterministic given it.

    Returns
    -------
    dict
        ``accuracy`` (correct test predictions over all samples), ``chance`` (fraction of
        the largest site), ``fold_accuracies`` (list), ``folds``, ``n_samples``,
        ``n_features`` (used), ``n_sites``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    y, codes, n = _data(data, sites)
    counts = np.bincount(codes)
    if folds < 2 or counts.min() < folds:
        raise ValueError(
            f"{folds} folds need at least {folds} samples per site (and folds >= 2); the "
            f"smallest site has {counts.min()}"
        )
    design = None if covariates is None else _covariate_design(covariates, n)[0]
    if design is not None and design.shape[1] == 0:
        design = None
    finite = np.isfinite(y).all(axis=0)
    if not finite.all():
        y = y[:, finite]
    if y.shape[1] == 0:
        raise ValueError("no feature is finite in every sample")
    correct, fold_acc = 0, []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros((n, 1)), codes):
        x_train, x_test = _fold_features(y, train, test, design)
        if x_train.shape[1] == 0:  # nothing varies: predict the training majority
            predicted = np.full(test.size, np.bincount(codes[train]).argmax())
        else:
            model = LogisticRegression(C=1.0, max_iter=2000)
            predicted = model.fit(x_train, codes[train]).predict(x_test)
        hits = int((predicted == codes[test]).sum())
        correct += hits
        fold_acc.append(hits / test.size)
    return {"accuracy": correct / n, "chance": float(counts.max() / n),
            "fold_accuracies": fold_acc, "folds": folds, "n_samples": n,
            "n_features": int(y.shape[1]), "n_sites": int(counts.size)}  # fmt: skip


def covariate_slopes(
    data: ArrayLike,
    covariates: CovariatesLike,
    name: str,
    sites: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Per feature, the OLS slope of numeric covariate ``name`` given the others.

    The coefficient :math:`\\hat\\beta_{\\mathrm{name},v}` of

    .. math::

        y_v = \\beta_{0v} + X\\beta_v + S\\gamma_v + \\varepsilon_v,

    with :math:`X` all covariate columns and :math:`S` the site indicators (every site
    but the first) when ``sites`` is given: how the slope is estimated on data that
    still has site effects (Fortin et al., 2017, §2.6).  Computed for all features at
    once as one row of the design's pseudo-inverse times the data.

    Parameters
    ----------
    data : array_like, shape (n_samples, n_features)
    covariates : mapping
        ``{name: column of n_samples}``, containing ``name``.
    name : str
        A numeric covariate.
    sites : array_like, shape (n_samples,), optional

    Returns
    -------
    slopes : ndarray, shape (n_features,)
        Units of the data per unit of the covariate; NaN where a value is not finite.

    Raises
    ------
    KeyError
        ``name`` is not a numeric covariate.
    ConfoundedCovariateError
        A covariate column is a combination of the sites (or intercept) and the others.
    """
    y, codes, n = _data(data, sites)
    design, columns = _covariate_design(covariates, n)
    if name not in columns:
        raise KeyError(f"{name!r} is not a numeric covariate; columns are {list(columns)}")
    site_columns = np.ones((n, 1)) if codes is None else np.eye(codes.max() + 1)[codes]
    check_design_rank(site_columns, design, columns)
    full = np.hstack([np.ones((n, 1)), design, _site_dummies(codes) if codes is not None
                      else np.zeros((n, 0))])  # fmt: skip
    row = np.linalg.pinv(full)[1 + columns.index(name)]
    finite = np.isfinite(y).all(axis=0)
    return np.where(finite, row @ np.where(finite, y, 0.0), np.nan)


def slope_error(estimated: ArrayLike, truth: ArrayLike | float) -> dict[str, float | int]:
    """How well per-feature slopes recover the true ones.

    Parameters
    ----------
    estimated : array_like, shape (n_features,)
    truth : array_like, shape (n_features,), or float
        The true slopes (one for every feature when a number).

    Returns
    -------
    dict
        Over the features finite in both (``n_features``): ``mean_estimated``,
        ``mean_truth``, ``mean_relative_error``
        :math:`(\\bar{\\hat b} - \\bar b)/|\\bar b|` (signed), ``median_relative_error``
        :math:`\\operatorname{median}_v |\\hat b_v - b_v|/|b_v|` (over :math:`b_v \\ne 0`)
        and ``correlation`` (Pearson; NaN when either is constant).
    """
    est = np.asarray(estimated, dtype=np.float64).ravel()
    true = np.broadcast_to(np.asarray(truth, dtype=np.float64), est.shape)
    ok = np.isfinite(est) & np.isfinite(true)
    est, true = est[ok], true[ok]
    nan = float("nan")
    mean_est, mean_true = (float(est.mean()), float(true.mean())) if est.size else (nan, nan)
    nonzero = true != 0
    rel = np.abs(est[nonzero] - true[nonzero]) / np.abs(true[nonzero])
    constant = est.size < 2 or np.ptp(est) == 0 or np.ptp(true) == 0
    return {
        "n_features": int(est.size),
        "mean_estimated": mean_est,
        "mean_truth": mean_true,
        "mean_relative_error": (mean_est - mean_true) / abs(mean_true) if mean_true else nan,
        "median_relative_error": float(np.median(rel)) if rel.size else nan,
        "correlation": nan if constant else float(np.corrcoef(est, true)[0, 1]),
    }
