"""DKI evaluation numerics (bids_harmony.evaluation.dki) on arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from bids_harmony.evaluation import dki


def test_cv_map_is_sample_sd_over_mean():
    values = np.stack([np.full((2, 2, 2), v) for v in (1.0, 2.0, 3.0, 4.0)])
    expected = np.std([1, 2, 3, 4], ddof=1) / 2.5
    np.testing.assert_allclose(dki.cv_map(values), expected)
    zero = np.zeros((4, 1, 1, 1))
    assert np.isnan(dki.cv_map(zero)).all()


def test_inter_scanner_cv_averages_wm_voxels_per_subject():
    # subject 0: source 1, 1; target 3, 3 -> CV = sd(1,1,3,3)/2; subject 1: all equal -> 0
    shape = (2, 2, 3, 1, 1)
    source, target = np.ones(shape), np.ones(shape)
    target[0] = 3.0
    wm = np.array([True, True, False]).reshape(3, 1, 1)
    target[0, :, 2] = 100.0  # outside WM: ignored
    cv = dki.inter_scanner_cv(source, target, wm)
    np.testing.assert_allclose(cv, [np.std([1, 1, 3, 3], ddof=1) / 2.0, 0.0])


def test_nrmse_known_value_and_mask():
    ref = np.full((4, 1, 1), 2.0)
    x = ref + np.array([1.0, -1.0, 1.0, 50.0]).reshape(4, 1, 1)
    mask = np.array([True, True, True, False]).reshape(4, 1, 1)
    assert dki.nrmse(x, ref, mask) == pytest.approx(0.5)  # rms 1 / mean 2
    assert np.isnan(dki.nrmse(x, ref, np.zeros_like(mask)))


def test_nrmse_to_reference_and_scan_rescan_per_roi():
    rois = np.array([1001, 1001, 2001, 2001]).reshape(4, 1, 1)
    target = np.full((1, 2, 4, 1, 1), 2.0)
    source = target.copy()
    source[0, 0, :2] += 1.0  # pair 1 off by 1 in ROI 1001, pair 2 exact
    out = dki.nrmse_to_reference(source, target, rois, [1001, 2001])
    np.testing.assert_allclose(out, [[0.25, 0.0]])  # mean of 0.5 and 0
    sr = dki.scan_rescan_nrmse(source, rois, [1001, 2001])
    np.testing.assert_allclose(sr, [[1 / 3, 0.0]])  # rms 1 / mean of session 1 (3)


def test_percent_reduction():
    assert dki.percent_reduction(10.0, 4.0) == pytest.approx(60.0)
    assert np.isnan(dki.percent_reduction(0.0, 1.0))
    assert np.isnan(dki.percent_reduction(1.0, float("nan")))


def _study(rng, n=2, bias=0.3):
    """WM block (FA 0.5) beside GM (FA 0.1); the source site scales MK by 1 + bias."""
    shape = (n, 2, 6, 6, 6)
    fa = np.full(shape, 0.1)
    fa[..., :3, :, :] = 0.5
    md = np.full(shape, 0.8e-3)
    truth = 1.0 + 0.2 * rng.random((6, 6, 6))
    target = {"fa": fa, "md": md, "mk": truth * (1 + 0.01 * rng.standard_normal(shape))}
    source = {"fa": fa, "md": md,
              "mk": (1 + bias) * truth * (1 + 0.01 * rng.standard_normal(shape))}
    after = {"fa": fa, "md": md, "mk": truth * (1 + 0.01 * rng.standard_normal(shape))}
    return source, after, target, np.ones((6, 6, 6), bool)


def test_evaluate_dki_reduces_a_removed_site_bias():
    source, after, target, brain = _study(np.random.default_rng(0))
    rows = dki.evaluate_dki(source, after, target, brain)
    get = {(r["param"], r["measure"], r["region"], r["subject"]): r for r in rows}
    cv = get[("mk", "cv_inter", "WM", "mean")]
    assert cv["before"] > 0.1 and cv["after"] < 0.03 and cv["reduction_percent"] > 75
    ref = get[("mk", "nrmse_ref", "WM", "mean")]
    assert ref["before"] == pytest.approx(0.3, rel=0.1) and ref["reduction_percent"] > 80
    # scan-rescan at the reference site is unchanged by definition
    tgt = get[("mk", "nrmse_sr_target", "WM", "mean")]
    assert tgt["before"] == tgt["after"] and tgt["reduction_percent"] == 0
    # per-ROI and per-subject rows, and FA (unchanged) has no reduction
    assert any(r["region"].startswith("roi-1") for r in rows)
    assert {r["subject"] for r in rows} == {"0", "1", "mean"}
    assert get[("fa", "cv_inter", "WM", "mean")]["reduction_percent"] != \
        get[("fa", "cv_inter", "WM", "mean")]["reduction_percent"]  # 0/0: NaN


def test_evaluate_dki_without_after_maps_gives_nan_after():
    source, _, target, brain = _study(np.random.default_rng(1))
    rows = dki.evaluate_dki(source, None, target, brain)
    assert rows and all(np.isnan(r["after"]) for r in rows if r["measure"] != "nrmse_sr_target")


def test_after_all_uses_the_reference_sessions_network_maps():
    source, after, target, brain = _study(np.random.default_rng(2))
    smooth = {k: np.broadcast_to(v.mean(axis=(0, 1)), v.shape) for k, v in after.items()}
    rows = dki.evaluate_dki(source, smooth, target, brain, after_target=smooth)
    get = {(r["param"], r["measure"], r["region"], r["subject"]): r for r in rows}
    cv = get[("mk", "cv_inter", "WM", "mean")]
    assert cv["after_all"] == pytest.approx(0.0, abs=1e-12) and cv["after"] > 0.005
    assert cv["reduction_all_percent"] == pytest.approx(100.0)
    sr = get[("mk", "nrmse_sr_target", "WM", "mean")]
    assert sr["after"] == sr["before"] > 0
    assert sr["after_all"] == pytest.approx(0.0, abs=1e-12)
    plain = dki.evaluate_dki(source, smooth, target, brain)
    assert all(np.isnan(r["after_all"]) for r in plain)


def test_other_methods_are_evaluated_beside_with_the_reference_sessions_raw():
    source, after, target, brain = _study(np.random.default_rng(3))
    half = {k: (v + s) / 2 for (k, v), s in zip(after.items(), source.values(), strict=True)}
    rows = dki.evaluate_dki(source, None, target, brain,
                            others={"rish": source, "combat": half})  # fmt: skip
    get = {(r["param"], r["measure"], r["region"], r["subject"]): r for r in rows}
    cv = get[("mk", "cv_inter", "WM", "mean")]
    assert np.isnan(cv["after"])  # no DKI CNN maps
    assert cv[dki.method_column("rish")] == cv["before"]  # unchanged maps: no reduction
    assert cv[dki.reduction_column("rish")] == 0
    assert 0 < cv[dki.method_column("combat")] < cv["before"]
    sr = get[("mk", "nrmse_sr_target", "WM", "mean")]
    assert sr[dki.method_column("combat")] == sr["before"]  # reference sessions stay raw
    assert all(dki.method_column("combat") in r for r in rows)
