"""The ComBat family: ComBat-GAM, CovBat, longitudinal ComBat, and the variants facade."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_harmony.methods.combat import (
    VARIANTS,
    CombatInputError,
    CovariateEncoding,
    CovbatModel,
    LongitudinalCombatModel,
    apply_combat,
    apply_covbat,
    apply_longitudinal_combat,
    apply_variant,
    fit_combat,
    fit_covbat,
    fit_longitudinal_combat,
    fit_variant,
    variant_from_tensors,
    variant_of,
    variant_to_tensors,
)
from bids_harmony.methods.combat.method import CombatMethod
from bids_harmony.methods.combat.splines import natural_spline_basis, quantile_knots

pytestmark = pytest.mark.filterwarnings("ignore::bids_harmony.methods.combat.SmallSiteWarning")

AGE_RANGE = {"A": (20.0, 50.0), "B": (35.0, 65.0), "C": (50.0, 80.0)}


def _sites(rng, per_site, n_features, gamma_sd=0.5):
    """Site labels and effects (none at A, the reference)."""
    sites = np.repeat(list(AGE_RANGE), per_site)
    index = np.repeat(np.arange(3), per_site)
    gamma = np.vstack([np.zeros(n_features), rng.normal(0.0, gamma_sd, (2, n_features))])
    delta = np.vstack([np.ones(n_features), rng.uniform(0.6, 1.8, (2, n_features))])
    return sites, index, gamma, delta


def _quadratic_cohort(rng, per_site=40, n_features=25):
    """Age confounded with site, a U-shaped age effect: (data, sites, age, truth)."""
    sites, index, gamma, delta = _sites(rng, per_site, n_features)
    age = np.concatenate([rng.uniform(*AGE_RANGE[s], per_site) for s in AGE_RANGE])
    curve = rng.uniform(0.5, 1.5, n_features) * ((age[:, None] - 50.0) / 15.0) ** 2
    eps = 0.3 * rng.standard_normal((sites.size, n_features))
    truth = 3.0 + curve + eps
    return 3.0 + curve + gamma[index] + delta[index] * eps, sites, age, truth


def _shared_noise_cohort(rng, per_site=40, n_features=30):
    """Site B adds noise shared by all features (a site-specific covariance)."""
    sites, index, gamma, delta = _sites(rng, per_site, n_features)
    age = rng.uniform(20, 80, sites.size)
    eps = rng.standard_normal((sites.size, n_features))
    loading = rng.normal(0.0, 1.0, n_features)
    shared = rng.standard_normal(sites.size)[:, None] * loading * 1.5
    eps[sites == "B"] += shared[sites == "B"]
    data = 1.0 + 0.02 * age[:, None] + gamma[index] + delta[index] * eps
    return data, sites, age


def _longitudinal_cohort(rng, n_subjects=90, sessions=3, n_features=200, tau=1.0, sigma=0.5):
    """Subjects with random intercepts, each session at a random site."""
    subjects = np.repeat(np.arange(n_subjects), sessions).astype(str)
    index = rng.integers(0, 3, subjects.size)
    index[: 3 * sessions] = np.repeat(np.arange(3), sessions)  # every site has samples
    sites = np.array(list(AGE_RANGE))[index]
    gamma = np.vstack([np.zeros(n_features), rng.normal(0.0, 0.5, (2, n_features))])
    delta = np.vstack([np.ones(n_features), rng.uniform(0.6, 1.8, (2, n_features))])
    age = np.repeat(rng.uniform(20, 80, n_subjects), sessions) + np.tile(
        np.arange(sessions), n_subjects
    )
    eta = tau * rng.standard_normal((n_subjects, n_features))
    subj = np.repeat(np.arange(n_subjects), sessions)
    eps = sigma * rng.standard_normal((subjects.size, n_features))
    truth = 2.0 + 0.01 * age[:, None] + eta[subj] + eps
    data = 2.0 + 0.01 * age[:, None] + eta[subj] + gamma[index] + delta[index] * eps
    return data, sites, subjects, age, truth, gamma, delta, eta


def _covariance_gap(data, sites):
    """Frobenius norm of the difference of the within-site covariances of B and A."""
    return np.linalg.norm(np.cov(data[sites == "B"].T) - np.cov(data[sites == "A"].T))


# ---- splines and ComBat-GAM ------------------------------------------------------------


def test_natural_spline_is_cubic_inside_and_linear_beyond_the_boundary_knots():
    rng = np.random.default_rng(0)
    knots = quantile_knots(rng.uniform(20, 80, 200), 5)
    assert knots.size == 6 and knots[0] >= 20 and knots[-1] <= 80
    outside = np.concatenate([np.linspace(0, knots[0], 7), np.linspace(knots[-1], 120, 7)])
    basis = natural_spline_basis(outside, knots)
    assert basis.shape == (14, 5)
    for part in (basis[:7], basis[7:]):  # equally spaced: second differences vanish
        np.testing.assert_allclose(np.diff(part, 2, axis=0), 0.0, atol=1e-9)
    inside = natural_spline_basis(np.linspace(knots[0], knots[-1], 50), knots)
    assert np.abs(np.diff(inside, 2, axis=0)).max() > 1e-4  # not linear between knots
    with pytest.raises(CombatInputError, match="distinct values"):
        quantile_knots(np.repeat([1.0, 2.0, 3.0], 10), 5)


def test_gam_keeps_a_nonlinear_age_effect_that_linear_combat_distorts():
    rng = np.random.default_rng(1)
    data, sites, age, truth = _quadratic_cohort(rng)
    moved = sites != "A"
    errors = {}
    for smooth in ((), ("age",)):
        model = fit_combat(data, sites, {"age": age}, ref_site="A", smooth=smooth)
        out = apply_combat(model, data, sites, {"age": age})
        assert np.array_equal(out[~moved], data[~moved])
        errors[smooth] = np.sqrt(np.mean((out[moved] - truth[moved]) ** 2))
    assert errors[("age",)] < 0.5 * errors[()]  # found: ~0.08 vs ~0.6
    assert errors[("age",)] < 0.15


def test_gam_encoding_stores_its_knots_and_reproduces_the_basis_on_new_samples():
    rng = np.random.default_rng(2)
    data, sites, age, _ = _quadratic_cohort(rng)
    cov = {"age": age, "sex": rng.choice(["F", "M"], sites.size)}
    model = fit_combat(data, sites, cov, smooth=("age",), smooth_df=4)
    encoding = model.encoding
    assert encoding.smooth == ("age",)
    assert encoding.column_names == ("s(age)1", "s(age)2", "s(age)3", "s(age)4", "sex[M]")
    config = json.loads(json.dumps(encoding.to_config()))
    again = CovariateEncoding.from_config(config)
    new = {"age": np.array([10.0, 50.0, 95.0]), "sex": np.array(["F", "M", "F"])}
    np.testing.assert_array_equal(again.encode(new, 3), encoding.encode(new, 3))
    assert "smooth" not in fit_combat(data, sites, cov).encoding.to_config()  # as before
    with pytest.raises(CombatInputError, match="categorical"):
        fit_combat(data, sites, cov, smooth=("sex",))
    with pytest.raises(CombatInputError, match="not among"):
        fit_combat(data, sites, cov, smooth=("height",))


# ---- CovBat -----------------------------------------------------------------------------


def test_covbat_reduces_a_site_specific_covariance_that_combat_keeps():
    rng = np.random.default_rng(3)
    data, sites, age = _shared_noise_cohort(rng)
    cov = {"age": age}
    plain = apply_combat(fit_combat(data, sites, cov), data, sites, cov)
    model = fit_covbat(data, sites, cov)
    out = apply_covbat(model, data, sites, cov)
    before, after = _covariance_gap(plain, sites), _covariance_gap(out, sites)
    assert after < 0.6 * before  # found: ~0.3
    assert model.scores.eb == "none" and 1 <= model.n_components < sites.size
    # the ComBat part is the plain fit: the per-feature means are unchanged by the PCs
    np.testing.assert_allclose(out.mean(axis=0), plain.mean(axis=0), atol=1e-10)


def test_covbat_loadings_from_the_gram_matrix_equal_those_of_an_svd():
    rng = np.random.default_rng(4)
    data, sites, age = _shared_noise_cohort(rng, per_site=10, n_features=50)
    model = fit_covbat(data, sites, {"age": age}, n_components=4, std_var=False)
    np.testing.assert_allclose(model.loadings.T @ model.loadings, np.eye(4), atol=1e-10)
    combat = model.combat
    harmonized = apply_combat(combat, data, sites, {"age": age})
    resid = (harmonized - combat.alpha - age[:, None] * combat.beta) / combat.sigma
    resid -= resid.mean(axis=0)
    _, s, vt = np.linalg.svd(resid, full_matrices=False)
    np.testing.assert_allclose(np.abs(vt[:4] @ model.loadings), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(model.explained, s[:4] ** 2 / np.sum(s**2), rtol=1e-10)


def test_covbat_returns_the_reference_site_bit_for_bit():
    rng = np.random.default_rng(5)
    data, sites, age = _shared_noise_cohort(rng)
    data32 = data.astype(np.float32)
    model = fit_covbat(data32, sites, {"age": age}, ref_site="A", variance=0.8)
    out = apply_covbat(model, data32, sites, {"age": age})
    assert out.dtype == np.float32
    assert np.array_equal(out[sites == "A"], data32[sites == "A"])
    assert not np.allclose(out[sites == "B"], data32[sites == "B"])


def test_covbat_refuses_too_few_samples_and_bad_options():
    rng = np.random.default_rng(6)
    with pytest.raises(CombatInputError, match="at least 3 samples"):
        fit_covbat(rng.normal(size=(2, 5)), ["A", "B"])
    data, sites, age = _shared_noise_cohort(rng, per_site=5)
    with pytest.raises(CombatInputError, match=r"variance must be in \(0, 1\]"):
        fit_covbat(data, sites, variance=1.5)
    with pytest.raises(CombatInputError, match="n_components must be"):
        fit_covbat(data, sites, n_components=100)


# ---- longitudinal ComBat ----------------------------------------------------------------


def test_longitudinal_recovers_site_effects_and_the_subject_variance():
    rng = np.random.default_rng(7)
    data, sites, subjects, age, truth, gamma, delta, _ = _longitudinal_cohort(rng)
    cov = {"age": age}
    model = fit_longitudinal_combat(data, sites, cov, subjects=subjects, ref_site="A", eb="none")
    assert np.median(np.abs(np.sqrt(model.tau2) - 1.0)) < 0.1
    assert np.median(np.abs(np.sqrt(model.sigma2_within) - np.sqrt(np.mean(delta**2, 0)) * 0.5)
                     ) < 0.1  # fmt: skip
    sigma = model.combat.sigma
    np.testing.assert_allclose(np.median(sigma), 0.5, rtol=0.1)
    for i in (1, 2):
        g_err = model.combat.gamma_star[i] * sigma - gamma[i]
        assert np.median(np.abs(g_err)) < 0.1
        d_err = model.combat.delta2_star[i] / delta[i] ** 2 - 1.0
        assert abs(np.median(d_err)) < 0.15
    # plain ComBat folds the subject variance into its scale: delta^2 shrunk towards 1
    plain = fit_combat(data, sites, cov, ref_site="A", eb="none")
    plain_err = plain.delta2_star[1:] / delta[1:] ** 2 - 1.0
    long_err = model.combat.delta2_star[1:] / delta[1:] ** 2 - 1.0
    assert np.median(np.abs(long_err)) < 0.6 * np.median(np.abs(plain_err))  # ~0.2 vs 0.4


def test_longitudinal_keeps_subject_differences_and_removes_the_site_effect():
    rng = np.random.default_rng(8)
    data, sites, subjects, age, truth, *_ = _longitudinal_cohort(rng)
    cov = {"age": age}
    model = fit_longitudinal_combat(data, sites, cov, subjects=subjects, ref_site="A")
    out = apply_longitudinal_combat(model, data, sites, cov, subjects=subjects)
    assert np.array_equal(out[sites == "A"], data[sites == "A"])
    moved = sites != "A"
    err = np.sqrt(np.mean((out[moved] - truth[moved]) ** 2))
    raw = np.sqrt(np.mean((data[moved] - truth[moved]) ** 2))
    assert err < 0.35 * raw
    # subject means of the output track the truth's (between-subject differences kept)
    subj = np.unique(subjects, return_inverse=True)[1]
    means = np.array([out[subj == j].mean(0) for j in range(subj.max() + 1)])
    true_means = np.array([truth[subj == j].mean(0) for j in range(subj.max() + 1)])
    corr = [np.corrcoef(means[:, v], true_means[:, v])[0, 1] for v in range(data.shape[1])]
    assert np.median(corr) > 0.95
    # new sessions: the intercept from the given sessions, or from the one session
    one = apply_longitudinal_combat(model, data[:1], sites[:1], {"age": age[:1]})
    assert one.shape == (1, data.shape[1])
    some = np.flatnonzero(subjects == subjects[-1])
    again = apply_longitudinal_combat(model, data[some], sites[some], {"age": age[some]},
                                      subjects=subjects[some])  # fmt: skip
    np.testing.assert_allclose(again, out[some], rtol=1e-12, atol=1e-12)


def test_longitudinal_refuses_missing_or_unrepeated_subjects():
    rng = np.random.default_rng(9)
    data, sites, subjects, age, *_ = _longitudinal_cohort(rng, n_features=10)
    with pytest.raises(CombatInputError, match="subjects="):
        fit_longitudinal_combat(data, sites, subjects=None)
    with pytest.raises(CombatInputError, match="repeated sessions"):
        fit_longitudinal_combat(data, sites, subjects=np.arange(sites.size))
    with pytest.raises(CombatInputError, match="one subject per sample"):
        fit_longitudinal_combat(data, sites, subjects=subjects[:-1])


# ---- the facade and the model files ------------------------------------------------------


def _fit_every_variant(rng):
    data, sites, subjects, age, *_ = _longitudinal_cohort(rng, n_subjects=30, n_features=40)
    cov = {"age": age, "sex": np.where(np.arange(sites.size) % 2, "F", "M")}
    models = {}
    for variant in VARIANTS:
        models[variant] = fit_variant(
            variant, data, sites, cov, ref_site="B",
            subjects=subjects if variant == "longitudinal" else None,
            smooth=("age",) if variant == "gam" else (),
        )  # fmt: skip
    return models, data, sites, subjects, cov


def test_every_variant_fits_applies_and_round_trips_exactly_in_memory():
    rng = np.random.default_rng(10)
    models, data, sites, subjects, cov = _fit_every_variant(rng)
    assert isinstance(models["covbat"], CovbatModel)
    assert isinstance(models["longitudinal"], LongitudinalCombatModel)
    for variant, model in models.items():
        assert variant_of(model) == variant
        subj = subjects if variant == "longitudinal" else None
        out = apply_variant(model, data, sites, cov, subjects=subj)
        assert np.array_equal(out[sites == "B"], data[sites == "B"]), variant
        tensors, config = variant_to_tensors(model)
        config = json.loads(json.dumps(config))
        assert config["variant"] == variant
        again = variant_from_tensors(tensors, config)
        assert np.array_equal(apply_variant(again, data, sites, cov, subjects=subj), out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_saves_and_loads_through_the_method(variant, tmp_path):
    rng = np.random.default_rng(11)
    models, data, sites, subjects, cov = _fit_every_variant(rng)
    method = CombatMethod()
    path = method.save(models[variant], tmp_path / "m", card={})
    loaded, card = method.load(path)
    assert card["config"]["variant"] == variant and variant_of(loaded) == variant
    subj = subjects if variant == "longitudinal" else None
    before = method.apply(models[variant], data, sites=sites, covariates=cov, subjects=subj)
    after = method.apply(loaded, data, sites=sites, covariates=cov, subjects=subj)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)  # float32 tensors
    assert np.array_equal(after[sites == "B"], data[sites == "B"])


def test_a_configuration_without_variant_reads_as_plain_combat():
    rng = np.random.default_rng(12)
    models, data, sites, _, cov = _fit_every_variant(rng)
    tensors, config = variant_to_tensors(models["combat"])
    del config["variant"]
    model = variant_from_tensors(tensors, config)
    assert variant_of(model) == "combat"
    assert np.array_equal(apply_combat(model, data, sites, cov),
                          apply_combat(models["combat"], data, sites, cov))  # fmt: skip
    method = CombatMethod()
    fitted = method.fit(data, sites, variant="covbat", covariates=cov, variance=0.9)
    assert isinstance(fitted, CovbatModel)


def test_the_facade_refuses_options_that_do_not_fit_the_variant():
    rng = np.random.default_rng(13)
    data, sites, subjects, age, *_ = _longitudinal_cohort(rng, n_features=10)
    cov = {"age": age}
    with pytest.raises(CombatInputError, match="unknown ComBat variant"):
        fit_variant("harp", data, sites)
    with pytest.raises(CombatInputError, match="smooth="):
        fit_variant("gam", data, sites, cov)
    with pytest.raises(CombatInputError, match="use variant 'gam'"):
        fit_variant("combat", data, sites, cov, smooth=("age",))
    with pytest.raises(CombatInputError, match="subjects="):
        fit_variant("longitudinal", data, sites, cov)
    with pytest.raises(CombatInputError, match="'longitudinal' variant only"):
        fit_variant("covbat", data, sites, cov, subjects=subjects)
    with pytest.raises(CombatInputError, match=r"\['variance'\] do not apply"):
        fit_variant("combat", data, sites, cov, variance=0.9)
    with pytest.raises(CombatInputError, match="unknown ComBat variant"):
        variant_from_tensors({}, {"variant": "nope"})
