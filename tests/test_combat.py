"""ComBat (bids_harmony.methods.combat): closed-form cases, bad input, and neuroCombat."""

from __future__ import annotations

import contextlib
import io
import logging
import re

import numpy as np
import pytest

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.combat import (
    CombatInputError,
    ConfoundedCovariateError,
    CovariateEncoding,
    SmallSiteWarning,
    TooFewSamplesError,
    UnseenSiteError,
    Untouched,
    apply_combat,
    combat,
    fit_combat,
    nonparametric_eb,
    parametric_eb,
)
from bids_harmony.methods.registry import get_method

# Small sites on purpose in most cases: the warning is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore::bids_harmony.methods.combat.SmallSiteWarning")

VARIANTS = [(eb, mean_only) for eb in ("parametric", "nonparametric", "none")
            for mean_only in (False, True)]  # fmt: skip


def _cohort(rng: np.random.Generator, sizes=(25, 30, 20), n_features=30, slope=0.01):
    """Sites with different age ranges, an age effect, additive and scale site effects."""
    sites = np.repeat(["A", "B", "C"][: len(sizes)], sizes)
    index = np.repeat(np.arange(len(sizes)), sizes)
    age = 20.0 + 15.0 * index + rng.uniform(0, 30, sites.size)  # confounded with site
    gamma = np.vstack([np.zeros(n_features), rng.normal(1.0, 0.5, (len(sizes) - 1, n_features))])
    delta = np.vstack([np.ones(n_features), rng.uniform(0.5, 2.0, (len(sizes) - 1, n_features))])
    eps = rng.standard_normal((sites.size, n_features))
    truth = 2.0 + slope * age[:, None] + eps
    data = 2.0 + slope * age[:, None] + gamma[index] + delta[index] * eps
    return data, sites, age, truth


def _two_sites_shifted(rng, n=12, n_features=8):
    """Site B is site A's samples plus a per-feature shift."""
    a = rng.normal(5.0, 1.0, (n, n_features))
    shift = rng.normal(3.0, 1.0, n_features)
    return np.vstack([a, a + shift]), np.repeat(["A", "B"], n), a


# ---- closed-form cases ---------------------------------------------------------------


def test_pure_additive_shift_is_removed_exactly_without_eb():
    rng = np.random.default_rng(1)
    data, sites, a = _two_sites_shifted(rng)
    out, model = combat(data, sites, eb="none")
    np.testing.assert_allclose(out[sites == "B"], out[sites == "A"], rtol=0, atol=1e-12)
    # the shift goes halfway each way (equal sites): the pooled mean is kept
    np.testing.assert_allclose(out.mean(axis=0), data.mean(axis=0), atol=1e-12)
    # no scale to remove: the same within-site variance (n / (n - 1) of the pooled one,
    # whose divisor is n as in sva and neuroCombat)
    np.testing.assert_allclose(model.delta2_star[0], model.delta2_star[1], rtol=1e-12)
    # to a reference site: B becomes A, up to sva's and neuroCombat's divisors (n for the
    # pooled variance, n - 1 for the site's), which shrink it by sqrt((n - 1) / n)
    out_ref, _ = combat(data, sites, eb="none", ref_site="A")
    n, center = len(a), a.mean(axis=0)
    expected = center + (a - center) * np.sqrt((n - 1) / n)
    np.testing.assert_allclose(out_ref[sites == "B"], expected, rtol=0, atol=1e-12)


def test_multiplicative_scale_is_removed_exactly_without_eb():
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 0.2, (15, 6))
    scale, offset = rng.uniform(1.5, 3.0, 6), rng.normal(0, 1, 6)
    b = offset + scale * (a - a.mean(axis=0))  # same samples, another location and scale
    data, sites = np.vstack([a, b]), np.repeat(["A", "B"], 15)
    out, model = combat(data, sites, eb="none", ref_site="A")
    center, shrink = a.mean(axis=0), np.sqrt(14 / 15)  # see the additive case
    np.testing.assert_allclose(out[sites == "B"], center + (a - center) * shrink, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(model.delta2_star[1]), scale / shrink, rtol=1e-12)
    # mean-only removes the location but keeps the scale
    out_mean, _ = combat(data, sites, eb="none", ref_site="A", mean_only=True)
    np.testing.assert_allclose(out_mean[sites == "B"].mean(axis=0), a.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(out_mean[sites == "B"].std(axis=0), b.std(axis=0), rtol=1e-12)


@pytest.mark.parametrize(("eb", "mean_only"), VARIANTS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_site_is_returned_bit_for_bit(eb, mean_only, dtype):
    rng = np.random.default_rng(3)
    data, sites, age, _ = _cohort(rng)
    data = data.astype(dtype)
    out, model = combat(data, sites, {"age": age}, ref_site="B", eb=eb, mean_only=mean_only)
    assert out.dtype == dtype
    assert np.array_equal(out[sites == "B"], data[sites == "B"])
    assert not np.allclose(out[sites == "A"], data[sites == "A"])
    assert np.all(model.gamma_star[1] == 0) and np.all(model.delta2_star[1] == 1)


def test_age_slope_is_kept_while_the_site_effect_goes():
    rng = np.random.default_rng(4)
    slope = 0.05
    data, sites, age, truth = _cohort(rng, sizes=(60, 60, 60), n_features=200, slope=slope)

    def pooled_slope(y):  # regression on age alone, as an analysis after harmonization
        design = np.column_stack([np.ones_like(age), age])
        return np.linalg.lstsq(design, y, rcond=None)[0][1].mean()

    out, model = combat(data, sites, {"age": age}, ref_site="A")
    assert abs(pooled_slope(data) - slope) > 0.2 * slope  # the site effect biases it...
    assert abs(pooled_slope(out) - slope) < 0.05 * slope  # ...and no longer does
    assert abs(pooled_slope(truth) - slope) < 0.05 * slope
    np.testing.assert_allclose(model.beta[0].mean(), slope, rtol=0.05)
    # without age as a covariate, ComBat would remove part of the age effect with the site's
    out_no_age, _ = combat(data, sites, ref_site="A")
    assert abs(pooled_slope(out_no_age) - slope) > 0.2 * slope


@pytest.mark.parametrize("eb", ["parametric", "nonparametric", "none"])
def test_mean_only_keeps_the_within_site_age_slope_exactly(eb):
    rng = np.random.default_rng(5)
    # mean-only ComBat shifts each site by a constant: the slope given site cannot change
    data, sites, age, _ = _cohort(rng)
    out, _ = combat(data, sites, {"age": age}, eb=eb, mean_only=True)
    onehot = (sites[:, None] == np.unique(sites)).astype(float)
    design = np.column_stack([onehot, age])
    before = np.linalg.lstsq(design, data, rcond=None)[0][-1]
    after = np.linalg.lstsq(design, out, rcond=None)[0][-1]
    np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-12)


def test_categorical_covariates_are_one_hot_with_a_reference_level():
    sex = np.array(["M", "F", "F", "M", "X"])
    enc = CovariateEncoding.from_covariates({"age": [30, 40, 50, 60, 70], "sex": sex}, 5)
    assert enc.levels == (None, ("F", "M", "X")) and enc.column_names == ("age", "sex[M]", "sex[X]")
    x = enc.encode({"age": [30, 40, 50, 60, 70], "sex": sex}, 5)
    np.testing.assert_array_equal(x[:, 1:], [[1, 0], [0, 0], [0, 0], [1, 0], [0, 1]])
    assert CovariateEncoding.from_config(enc.to_config()) == enc
    coded = CovariateEncoding.from_covariates(np.array([[0, 15], [1, 25]]), 2, categorical=[0])
    assert coded.column_names == ("x0[1]", "x1")
    with pytest.raises(CombatInputError, match="level"):
        enc.encode({"age": [30], "sex": ["Y"]}, 1)
    with pytest.raises(CombatInputError, match="the model was fitted with"):
        enc.encode({"sex": sex, "age": [30, 40, 50, 60, 70]}, 5)


# ---- features left untouched ---------------------------------------------------------


def test_constant_and_non_finite_features_are_left_untouched_and_reported(caplog):
    rng = np.random.default_rng(6)
    data, sites, age, _ = _cohort(rng, n_features=10)
    bad = np.empty((sites.size, 5))
    bad[:, 0] = 0.7  # constant
    bad[:, 1] = rng.normal(size=sites.size)
    bad[3, 1] = np.nan
    bad[:, 2] = rng.normal(size=sites.size)
    bad[7, 2] = np.inf
    bad[:, 3] = rng.normal(size=sites.size)
    bad[sites == "C", 3] = 1.0  # constant within one site
    bad[:, 4] = 3.0 + 0.1 * age + (sites == "B")  # site and age explain it exactly
    full = np.hstack([data, bad])
    with caplog.at_level(logging.WARNING, "bids_harmony.methods.combat"):
        out, model = combat(full, sites, {"age": age})
    assert np.array_equal(out[:, 10:], full[:, 10:], equal_nan=True)
    assert np.isfinite(out[:, :10]).all()
    assert model.untouched_summary() == {"nonfinite": 2, "constant": 1, "site_constant": 1,
                                         "no_residual": 1}  # fmt: skip
    assert list(model.untouched_reason[10:]) == [Untouched.CONSTANT, Untouched.NONFINITE,
                                                 Untouched.NONFINITE, Untouched.SITE_CONSTANT,
                                                 Untouched.NO_RESIDUAL]  # fmt: skip
    assert "leaves 5 of 15 features as they are" in caplog.text
    # the other features are harmonized as if the untouched ones were not there
    clean, _ = combat(data, sites, {"age": age})
    np.testing.assert_allclose(out[:, :10], clean, rtol=1e-12, atol=1e-12)
    # a non-finite value at apply time stays in its place and spreads nowhere
    new = full.copy()
    new[0, 0] = np.nan
    applied = apply_combat(model, new, sites, {"age": age})
    assert np.isnan(applied[0, 0]) and np.isfinite(applied[1:, :10]).all()


# ---- fit on some samples, apply to others --------------------------------------------


@pytest.mark.parametrize(("eb", "mean_only"), VARIANTS)
def test_fit_then_apply_equals_fit_and_apply_on_the_training_samples(eb, mean_only):
    rng = np.random.default_rng(7)
    data, sites, age, _ = _cohort(rng)
    sex = rng.choice(["F", "M"], sites.size)
    cov = {"age": age, "sex": sex}
    model = fit_combat(data, sites, cov, eb=eb, mean_only=mean_only)
    fitted, _ = combat(data, sites, cov, eb=eb, mean_only=mean_only)
    np.testing.assert_array_equal(apply_combat(model, data, sites, cov), fitted)
    # each sample is harmonized on its own: any subset, in any order, gives the same rows
    rows = rng.permutation(sites.size)[:17]
    part = apply_combat(model, data[rows], sites[rows], {"age": age[rows], "sex": sex[rows]})
    np.testing.assert_allclose(part, fitted[rows], rtol=1e-13, atol=1e-13)


def test_fit_on_controls_apply_to_patients_of_the_same_sites():
    rng = np.random.default_rng(8)
    data, sites, age, truth = _cohort(rng, sizes=(40, 40, 40), n_features=50)
    patients = rng.random(sites.size) < 0.3
    model = fit_combat(data[~patients], sites[~patients], {"age": age[~patients]},
                       ref_site="A")  # fmt: skip
    out = apply_combat(model, data[patients], sites[patients], {"age": age[patients]})
    err_raw = np.mean((data[patients] - truth[patients]) ** 2)
    assert np.mean((out - truth[patients]) ** 2) < 0.25 * err_raw


def test_eb_estimates_recover_the_site_effects_of_data_drawn_from_the_model():
    rng = np.random.default_rng(9)
    n, n_features = 30, 400
    gamma = rng.normal(0.5, 0.5, n_features)
    delta2 = 1.0 / rng.gamma(8.0, 1.0 / 7.0, n_features)  # inverse gamma, mean 1
    z = gamma + np.sqrt(delta2) * rng.standard_normal((n, n_features))
    for estimate in (parametric_eb, nonparametric_eb):
        g, d = estimate(z)
        raw_g, raw_d = z.mean(axis=0), z.var(axis=0, ddof=1)
        assert np.corrcoef(g, gamma)[0, 1] > 0.9
        # shrinkage helps: closer to the truth than the per-feature estimates
        assert np.mean((g - gamma) ** 2) <= np.mean((raw_g - gamma) ** 2)
        assert np.mean((d - delta2) ** 2) < np.mean((raw_d - delta2) ** 2)
        assert abs(np.mean(d) - 1.0) < 0.1


def test_nonparametric_eb_stays_finite_where_the_likelihoods_underflow():
    rng = np.random.default_rng(10)
    z = rng.normal(0.0, 1.0, (3000, 20)) + rng.normal(0, 2, 20)
    g, d = nonparametric_eb(z)  # (2 pi d)^(-1500) underflows: weights in the log domain
    assert np.isfinite(g).all() and np.isfinite(d).all()


# ---- bad input -------------------------------------------------------------------------


def test_an_unseen_site_is_refused_with_what_to_do():
    rng = np.random.default_rng(11)
    data, sites, age, _ = _cohort(rng)
    model = fit_combat(data, sites)
    with pytest.raises(UnseenSiteError, match="cannot harmonize an unseen site: Z") as err:
        apply_combat(model, data[:3], ["A", "Z", "A"])
    assert "refit" in str(err.value)
    assert isinstance(err.value, BidsHarmonyError) and err.value.exit_code == 2


def test_too_few_samples_or_sites_are_refused():
    rng = np.random.default_rng(12)
    data = rng.normal(size=(7, 4))
    with pytest.raises(TooFewSamplesError, match=r"C \(1\) have fewer than 2 samples"):
        fit_combat(data, ["A", "A", "A", "B", "B", "B", "C"])
    with pytest.raises(TooFewSamplesError, match="at least two sites"):
        fit_combat(data, ["A"] * 7)


def test_a_small_site_draws_a_warning():
    rng = np.random.default_rng(13)
    data = rng.normal(size=(30, 4))
    sites = ["A"] * 25 + ["B"] * 5
    with pytest.warns(SmallSiteWarning, match=r"B \(5\) have fewer than 20 samples"):
        fit_combat(data, sites)


@pytest.mark.parametrize("kind", ["categorical", "numeric"])
def test_a_covariate_confounded_with_site_is_refused(kind):
    rng = np.random.default_rng(14)
    data, sites, age, _ = _cohort(rng)
    if kind == "categorical":
        cov = {"age": age, "scanner": np.where(sites == "A", "Prisma", "Skyra")}
        name = "scanner[Skyra]"
    else:  # the site's mean age for everyone
        cov = {"age": np.array([age[sites == s].mean() for s in sites])}
        name = "age"
    with pytest.raises(ConfoundedCovariateError, match=re.escape(f"'{name}' is confounded")):
        fit_combat(data, sites, cov)


def test_shapes_and_values_that_do_not_match_are_refused():
    rng = np.random.default_rng(15)
    data, sites, age, _ = _cohort(rng)
    with pytest.raises(CombatInputError, match="n_samples, n_features"):
        fit_combat(data[:, 0], sites)
    with pytest.raises(CombatInputError, match="one site per sample"):
        fit_combat(data, sites[:-1])
    with pytest.raises(CombatInputError, match="covariates have"):
        fit_combat(data, sites, age[:-1, None])
    with pytest.raises(CombatInputError, match="'ref' is not among the sites"):
        fit_combat(data, sites, ref_site="ref")
    with pytest.raises(CombatInputError, match="eb must be one of"):
        fit_combat(data, sites, eb="bayes")  # type: ignore[arg-type]
    missing = age.copy()
    missing[4] = np.nan
    with pytest.raises(CombatInputError, match=r"'age' is missing or not finite .* \[4\]"):
        fit_combat(data, sites, {"age": missing})
    model = fit_combat(data, sites, {"age": age})
    with pytest.raises(CombatInputError, match="fitted on 30"):
        apply_combat(model, data[:, :5], sites, {"age": age})
    with pytest.raises(CombatInputError, match="fitted with"):
        apply_combat(model, data, sites)


# ---- the method ------------------------------------------------------------------------


def test_the_method_round_trips_a_model_with_categorical_covariates(tmp_path):
    rng = np.random.default_rng(16)
    data, sites, age, _ = _cohort(rng)
    cov = {"age": age, "sex": rng.choice(["F", "M"], sites.size)}
    method = get_method("combat")
    model = method.fit(data, sites, covariates=cov, ref_site="C", eb="nonparametric")
    path = method.save(model, tmp_path / "combat", {"template": "MNI"})
    loaded, card = method.load(path)
    assert card["config"]["covariates"] == {"names": ["age", "sex"], "levels": [None, ["F", "M"]]}
    assert card["config"]["n_per_site"] == [25, 30, 20] and loaded.ref_site == "C"
    before = method.apply(model, data, sites=sites, covariates=cov)
    after = method.apply(loaded, data, sites=sites, covariates=cov)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert np.array_equal(after[sites == "C"], data[sites == "C"])
    with pytest.raises(CombatInputError, match="sites="):
        method.apply(model, data)


# ---- oracle: neuroCombat 0.2.12 ----------------------------------------------------------


@pytest.mark.parametrize("ref", [None, "B"])
@pytest.mark.parametrize(("eb", "mean_only"), VARIANTS)
def test_equals_neurocombat(eb, mean_only, ref, monkeypatch):
    neuro = pytest.importorskip("neuroCombat")
    pd = pytest.importorskip("pandas")
    monkeypatch.setattr(np, "int", int, raising=False)  # its ref_batch path uses np.int
    rng = np.random.default_rng(17)
    data, sites, age, _ = _cohort(rng, sizes=(12, 15, 10), n_features=40)
    age = np.round(age)  # neuroCombat casts numeric covariates to float32
    sex = rng.choice(["F", "M"], sites.size)
    covars = pd.DataFrame({"site": sites, "age": age, "sex": sex})
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        expected = neuro.neuroCombat(
            data.T.copy(), covars, "site", categorical_cols=["sex"], continuous_cols=["age"],
            eb=eb != "none", parametric=eb == "parametric", mean_only=mean_only, ref_batch=ref,
        )["data"].T  # fmt: skip
    out, _ = combat(data, sites, {"age": age, "sex": sex}, ref_site=ref, eb=eb,
                    mean_only=mean_only)  # fmt: skip
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-10)  # found: ~1e-12
