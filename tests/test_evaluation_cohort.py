"""Cohort checks of harmonization (site F-test, site classifier, covariate slopes) and
their figures, on cohorts drawn from the ComBat model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression

from bids_harmony.evaluation import cohort
from bids_harmony.evaluation.cohort import (
    covariate_slopes,
    site_classifier_accuracy,
    site_effect_pvalues,
    site_effect_summary,
    slope_error,
)
from bids_harmony.evaluation.cohort_figures import (
    classifier_accuracy_figure,
    pvalue_histogram_figure,
    slope_figure,
)
from bids_harmony.methods.combat import ConfoundedCovariateError, combat


def draw_cohort(
    seed: int,
    *,
    n_per_site: tuple[int, ...] = (40, 40, 40),
    n_features: int = 300,
    gamma_sd: float = 0.0,
    delta_sd: float = 0.0,
    age_slope: float = 0.0,
    age_ranges: tuple[tuple[float, float], ...] | None = None,
    sigma: float = 0.05,
):
    """``y = alpha + (age - 50) beta + [sex] 0.01 + gamma_site + delta_site sigma eps``
    (the ComBat model); returns data, site labels, covariates and the true slopes."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(np.arange(len(n_per_site)), n_per_site)
    n = sites.size
    ranges = age_ranges or ((20.0, 80.0),) * len(n_per_site)
    age = np.concatenate(
        [rng.uniform(lo, hi, k) for (lo, hi), k in zip(ranges, n_per_site, strict=True)]
    )
    sex = rng.choice(["F", "M"], n)
    alpha = rng.normal(0.5, 0.1, n_features)
    beta = age_slope * rng.uniform(0.5, 1.5, n_features)
    gamma = rng.normal(0.0, gamma_sd, (len(n_per_site), n_features))
    delta = np.exp(rng.normal(0.0, delta_sd, (len(n_per_site), n_features)))
    eps = rng.normal(0.0, sigma, (n, n_features))
    y = alpha + np.outer(age - 50.0, beta) + 0.01 * (sex == "M")[:, None]
    y = y + gamma[sites] + delta[sites] * eps
    labels = np.array([f"site{s}" for s in sites])
    return y, labels, {"age": age, "sex": sex}, beta


def lstsq_f_test(y: np.ndarray, reduced: np.ndarray, full: np.ndarray) -> float:
    """The nested-model F-test of one feature, by explicit least squares."""
    rss0 = np.sum((y - reduced @ np.linalg.lstsq(reduced, y, rcond=None)[0]) ** 2)
    rss1 = np.sum((y - full @ np.linalg.lstsq(full, y, rcond=None)[0]) ** 2)
    r0, r1 = np.linalg.matrix_rank(reduced), np.linalg.matrix_rank(full)
    f = ((rss0 - rss1) / (r1 - r0)) / (rss1 / (y.size - r1))
    return float(stats.f.sf(f, r1 - r0, y.size - r1))


# --- site_effect_pvalues ------------------------------------------------------


def test_pvalues_equal_one_way_anova_without_covariates():
    y, sites, _, _ = draw_cohort(0, n_per_site=(12, 20, 31), n_features=50, gamma_sd=0.02)
    p = site_effect_pvalues(y, sites)
    expected = stats.f_oneway(*[y[sites == s] for s in np.unique(sites)]).pvalue
    np.testing.assert_allclose(p, expected, rtol=1e-8, atol=1e-14)


def test_pvalues_equal_per_feature_lstsq_with_covariates(monkeypatch):
    monkeypatch.setattr(cohort, "CHUNK", 7)  # several chunks, a ragged last one
    y, sites, cov, _ = draw_cohort(1, n_features=30, gamma_sd=0.01, age_slope=0.002)
    cov["group"] = np.where(np.arange(y.shape[0]) % 3 == 0, "patient", "control")
    p = site_effect_pvalues(y, sites, cov)
    n = y.shape[0]
    x = np.column_stack([np.ones(n), cov["age"], cov["sex"] == "M", cov["group"] == "patient"])
    full = np.column_stack([x, sites == "site1", sites == "site2"]).astype(float)
    expected = [lstsq_f_test(y[:, v], x.astype(float), full) for v in range(y.shape[1])]
    np.testing.assert_allclose(p, expected, rtol=1e-8)


def test_site_effect_makes_most_features_significant():
    y, sites, cov, _ = draw_cohort(2, gamma_sd=0.06, delta_sd=0.2, age_slope=0.001)
    p = site_effect_pvalues(y, sites, cov)
    assert np.mean(p < 0.05) > 0.9


def test_no_site_effect_gives_alpha_within_binomial_tolerance():
    n_features, alpha = 2000, 0.05
    y, sites, cov, _ = draw_cohort(3, n_features=n_features, age_slope=0.002)
    p = site_effect_pvalues(y, sites, cov)
    expected, sd = n_features * alpha, math.sqrt(n_features * alpha * (1 - alpha))
    assert abs(np.sum(p < alpha) - expected) < 4 * sd
    # and p is uniform: a Kolmogorov-Smirnov test does not reject
    assert stats.kstest(p, "uniform").pvalue > 1e-3


def test_untestable_features_are_nan_and_counted():
    y, sites, cov, _ = draw_cohort(4, n_features=20, gamma_sd=0.05)
    y[:, 0] = 0.7  # constant
    y[3, 1] = np.nan
    y[5, 2] = np.inf
    y[:, 3] = 0.2 + 0.001 * cov["age"]  # exactly the covariate: no residual
    p = site_effect_pvalues(y, sites, cov)
    assert np.isnan(p[:4]).all() and np.isfinite(p[4:]).all()
    p_after = p.copy()
    p_after[4] = np.nan
    summary = site_effect_summary(p, p_after)
    assert summary["n_features"] == 20
    assert summary["n_tested"] == 15 and summary["n_excluded"] == 5
    assert summary["fraction_significant_before"] == pytest.approx(np.mean(p[5:] < 0.05))


def test_pvalues_reject_bad_inputs():
    y, sites, _, _ = draw_cohort(5, n_features=5)
    with pytest.raises(ValueError, match="2 sites"):
        site_effect_pvalues(y, np.zeros(y.shape[0]))
    with pytest.raises(ValueError, match="shape"):
        site_effect_pvalues(y, sites[:-1])


def test_site_effect_summary_hand_example():
    before = np.array([0.001, 0.01, 0.2, 0.04, np.nan])
    after = np.array([0.5, 0.01, 0.9, 0.3, 0.2])
    s = site_effect_summary(before, after, alpha=0.05)
    assert s == {
        "alpha": 0.05, "n_features": 5, "n_tested": 4, "n_excluded": 1,
        "n_significant_before": 3, "fraction_significant_before": 0.75,
        "n_significant_after": 1, "fraction_significant_after": 0.25,
    }  # fmt: skip


# --- site_classifier_accuracy -------------------------------------------------


def test_classifier_at_chance_without_site_effect():
    y, sites, _, _ = draw_cohort(6, n_per_site=(30, 40, 50), n_features=40)
    r = site_classifier_accuracy(y, sites)
    assert r["chance"] == pytest.approx(50 / 120)
    assert abs(r["accuracy"] - r["chance"]) < 0.15
    assert len(r["fold_accuracies"]) == 5 and r["n_features"] == 40 and r["n_sites"] == 3


def test_classifier_near_perfect_with_strong_site_effect():
    y, sites, cov, _ = draw_cohort(7, n_features=40, gamma_sd=0.05, delta_sd=0.3)
    r = site_classifier_accuracy(y, sites, cov)
    assert r["accuracy"] > 0.97


def test_covariate_regression_keeps_confounded_age_from_predicting_site():
    # no site effect, but site 0 scans the young and site 1 the old
    y, sites, cov, _ = draw_cohort(
        8, n_per_site=(50, 50), n_features=30, age_slope=0.003,
        age_ranges=((20.0, 55.0), (45.0, 80.0)),
    )  # fmt: skip
    without = site_classifier_accuracy(y, sites)
    regressed = site_classifier_accuracy(y, sites, cov)
    assert without["accuracy"] > 0.7  # age tells the site (0.87 here; chance 0.5)
    assert abs(regressed["accuracy"] - 0.5) < 0.15


def test_classifier_with_more_features_than_samples():
    null, sites, cov, _ = draw_cohort(9, n_per_site=(30, 30, 30), n_features=3000)
    strong, _, _, _ = draw_cohort(9, n_per_site=(30, 30, 30), n_features=3000, gamma_sd=0.01)
    r_null = site_classifier_accuracy(null, sites, cov, seed=3)
    r_strong = site_classifier_accuracy(strong, sites, cov, seed=3)
    assert abs(r_null["accuracy"] - 1 / 3) < 0.15
    assert r_strong["accuracy"] > 0.97
    assert site_classifier_accuracy(null, sites, cov, seed=3) == r_null  # deterministic


def test_principal_components_lose_nothing_for_the_penalized_classifier():
    # the scores of the reduced path are a rotation of the span of the training samples:
    # an L2-penalized logistic regression predicts the same from them as from all features
    y, sites, _, _ = draw_cohort(10, n_per_site=(15, 15), n_features=200, gamma_sd=0.02)
    codes = (sites == "site1").astype(int)
    train, test = np.arange(0, 30, 3), np.setdiff1d(np.arange(30), np.arange(0, 30, 3))
    scores_train, scores_test = cohort._fold_features(y, train, test, None)
    assert scores_train.shape == (10, 9)
    a = y[train]
    mean, sd = a.mean(axis=0), a.std(axis=0)
    full_train, full_test = (a - mean) / sd, (y[test] - mean) / sd
    kw = {"C": 1.0, "tol": 1e-10, "max_iter": 10000}
    on_scores = LogisticRegression(**kw).fit(scores_train, codes[train])
    on_features = LogisticRegression(**kw).fit(full_train, codes[train])
    np.testing.assert_allclose(
        on_scores.decision_function(scores_test),
        on_features.decision_function(full_test),
        rtol=1e-4,
        atol=1e-4,
    )


def test_classifier_rejects_too_small_sites():
    y, sites, _, _ = draw_cohort(11, n_per_site=(3, 20), n_features=5)
    with pytest.raises(ValueError, match="samples per site"):
        site_classifier_accuracy(y, sites, folds=5)


def test_combat_fit_on_the_cohort_removes_the_site_effect_in_sample():
    # ComBat equalizes the site means of the samples it was fit on: p-values near 1,
    # and the cross-validated classifier no better than chance (below it: leakage)
    y, sites, cov, _ = draw_cohort(16, n_features=200, gamma_sd=0.05, delta_sd=0.2,
                                   age_slope=0.002)  # fmt: skip
    harmonized, _ = combat(y, sites, cov)
    before, after = site_effect_pvalues(y, sites, cov), site_effect_pvalues(harmonized, sites, cov)
    summary = site_effect_summary(before, after)
    assert summary["fraction_significant_before"] > 0.9
    assert summary["fraction_significant_after"] < 0.01
    assert np.median(after) > 0.9
    r = site_classifier_accuracy(harmonized, sites, cov)
    assert r["accuracy"] < r["chance"] + 0.05


# --- covariate_slopes, slope_error --------------------------------------------


def test_slopes_recovered_with_sites_in_the_model():
    # site effects correlated with age (older site also shifted): ignoring site biases
    # the slope; with the site indicators in the model it is recovered
    y, sites, cov, beta = draw_cohort(
        12, n_per_site=(60, 60), n_features=200, age_slope=0.002, sigma=0.02,
        age_ranges=((20.0, 60.0), (40.0, 80.0)),
    )  # fmt: skip
    y[sites == "site1"] += 0.05
    with_sites = slope_error(covariate_slopes(y, cov, "age", sites=sites), beta)
    without = slope_error(covariate_slopes(y, cov, "age"), beta)
    assert abs(with_sites["mean_relative_error"]) < 0.05
    assert with_sites["median_relative_error"] < 0.15
    assert with_sites["correlation"] > 0.9
    assert without["mean_relative_error"] > 0.2


def test_slopes_equal_per_feature_lstsq():
    y, sites, cov, _ = draw_cohort(13, n_features=8, gamma_sd=0.02, age_slope=0.001)
    y[2, 5] = np.nan
    slopes = covariate_slopes(y, cov, "age", sites=sites)
    n = y.shape[0]
    design = np.column_stack([np.ones(n), cov["age"], cov["sex"] == "M",
                              sites == "site1", sites == "site2"]).astype(float)  # fmt: skip
    expected = np.linalg.lstsq(design, np.nan_to_num(y), rcond=None)[0][1]
    expected[5] = np.nan
    np.testing.assert_allclose(slopes, expected, rtol=1e-9)


def test_slopes_reject_confounded_or_categorical_covariate():
    y, sites, cov, _ = draw_cohort(14, n_per_site=(10, 10), n_features=3)
    with pytest.raises(KeyError, match="numeric"):
        covariate_slopes(y, cov, "sex")
    cov["site_age"] = np.where(sites == "site1", 60.0, 30.0)
    with pytest.raises(ConfoundedCovariateError):
        covariate_slopes(y, cov, "site_age", sites=sites)


def test_slope_error_hand_example():
    e = slope_error([1.0, 2.2, 2.7, np.nan], [1.0, 2.0, 3.0, 4.0])
    assert e["n_features"] == 3
    assert e["mean_relative_error"] == pytest.approx((5.9 / 3 - 2.0) / 2.0)
    assert e["median_relative_error"] == pytest.approx(0.1)
    assert e["correlation"] == pytest.approx(np.corrcoef([1, 2.2, 2.7], [1, 2, 3])[0, 1])
    scalar = slope_error([0.9, 1.1], 1.0)
    assert scalar["mean_relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(scalar["correlation"])


# --- figures ------------------------------------------------------------------


def test_figures_written(tmp_path):
    y, sites, cov, beta = draw_cohort(15, n_features=100, gamma_sd=0.02, age_slope=0.002)
    p_before = site_effect_pvalues(y, sites, cov)
    p_after = {"ComBat": site_effect_pvalues(y - y.mean(axis=0), sites, cov),
               "No harmonization": p_before}  # fmt: skip
    result = site_classifier_accuracy(y, sites, cov)
    slopes = {"before": covariate_slopes(y, cov, "age", sites=sites),
              "ComBat": covariate_slopes(y, cov, "age")}  # fmt: skip
    paths = [
        pvalue_histogram_figure(p_before, p_after, tmp_path / "p.png"),
        classifier_accuracy_figure(
            {"No harmonization": result, "ComBat": 0.36}, tmp_path / "a.png"
        ),
        slope_figure(beta, slopes, tmp_path / "slopes.png"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    with pytest.raises(ValueError):
        pvalue_histogram_figure(p_before, {}, tmp_path / "none.png")
