"""Scan-rescan / inter-scanner standard error (HARP Eq. 2) and its group statistics."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from bids_harmony.evaluation.variability import (
    PairedTest,
    inter_scanner_error,
    masked_mean,
    paired_ttest,
    percentage_difference,
    roi_means,
    roi_standard_errors,
    scan_rescan_error,
    standard_error,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


# --- Eq. 2 -----------------------------------------------------------------


def test_standard_error_hand_example_k2():
    # subject 1: (1, 3), mean 2 -> deviations (-1, 1); subject 2: (2, 6), mean 4 -> (-2, 2)
    # sum of squares 1 + 1 + 4 + 4 = 10; N (K - 1) = 2 -> sigma^2 = 5
    values = np.array([[1.0, 3.0], [2.0, 6.0]])
    assert standard_error(values) == pytest.approx(math.sqrt(5.0))
    assert scan_rescan_error(values) == pytest.approx(math.sqrt(5.0))
    assert np.ndim(standard_error(values)) == 0


def test_standard_error_hand_example_k4():
    # subject 1: (1, 2, 3, 6), mean 3 -> deviations (-2, -1, 0, 3), SS = 14
    # subject 2: (0, 0, 0, 4), mean 1 -> deviations (-1, -1, -1, 3), SS = 12
    # N (K - 1) = 2 * 3 = 6 -> sigma^2 = 26 / 6
    values = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    assert standard_error(values) == pytest.approx(math.sqrt(26.0 / 6.0))
    # same numbers through the (source, target) interface
    got = inter_scanner_error(values[:, :2], values[:, 2:])
    assert got == pytest.approx(math.sqrt(26.0 / 6.0))


def test_standard_error_voxelwise_matches_per_voxel_loop(rng):
    values = rng.normal(size=(5, 3, 4, 2, 3))
    got = standard_error(values)
    assert got.shape == (4, 2, 3)
    for idx in np.ndindex(4, 2, 3):
        assert got[idx] == pytest.approx(standard_error(values[(slice(None), slice(None), *idx)]))


def test_standard_error_single_subject_and_nan():
    assert standard_error([[2.0, 4.0]]) == pytest.approx(math.sqrt(2.0))
    values = np.zeros((3, 2, 2))
    values[1, 0, 1] = np.nan
    got = standard_error(values)
    assert got[0] == 0.0
    assert np.isnan(got[1])


@pytest.mark.parametrize("k", [2, 4])
def test_standard_error_recovers_noise_sigma(rng, k):
    n, sigma = 20000, 0.05
    mu = rng.uniform(0.2, 0.8, size=(n, 1))
    values = mu + rng.normal(0.0, sigma, size=(n, k))
    assert standard_error(values) == pytest.approx(sigma, rel=0.03)


def test_standard_error_voxelwise_recovers_different_sigmas(rng):
    n, sigmas = 5000, np.array([0.01, 0.05, 0.2])
    mu = rng.uniform(0.0, 1.0, size=(n, 1, 3))
    values = mu + rng.normal(size=(n, 2, 3)) * sigmas
    np.testing.assert_allclose(standard_error(values), sigmas, rtol=0.05)


# --- inter-scanner -----------------------------------------------------------


def test_site_offset_noise_free_gives_d_over_sqrt3():
    # subject means mu_i at both sites, target shifted by d: (mu, mu, mu + d, mu + d);
    # deviations +-d/2, SS = d^2 per subject, / (K - 1) = 3 -> sigma^2 = d^2 / 3
    mu = np.array([0.3, 0.5, 0.7])[:, None]
    source = np.repeat(mu, 2, axis=1)
    for d in (0.0, 0.1, 0.25):
        target = source + d
        assert scan_rescan_error(source) == 0.0
        assert scan_rescan_error(target) == 0.0
        assert inter_scanner_error(source, target) == pytest.approx(d / math.sqrt(3.0), abs=1e-15)


def test_site_offset_with_noise_exact_decomposition(rng):
    # With two sessions per site, per subject SS_4 = SS_src + SS_tgt + (m_src - m_tgt)^2, so
    # sigma_inter^2 = (sigma_sr,src^2 + sigma_sr,tgt^2 + mean_i (m_src,i - m_tgt,i)^2) / 3.
    n = 50
    mu = rng.uniform(0.2, 0.8, size=(n, 1))
    source = mu + rng.normal(0.0, 0.02, size=(n, 2))
    target0 = mu + rng.normal(0.0, 0.03, size=(n, 2))
    for d in (0.0, 0.05, 0.2):
        target = target0 + d
        gap = source.mean(axis=1) - target.mean(axis=1)
        expected = (
            scan_rescan_error(source) ** 2 + scan_rescan_error(target) ** 2 + np.mean(gap**2)
        ) / 3.0
        assert inter_scanner_error(source, target) ** 2 == pytest.approx(expected, rel=1e-12)
    # a big offset dominates: inter-scanner error exceeds both scan-rescan errors
    big = inter_scanner_error(source, target0 + 0.2)
    assert big > max(scan_rescan_error(source), scan_rescan_error(target0))


def test_inter_scanner_voxelwise_shape(rng):
    src = rng.normal(size=(4, 2, 3, 3, 2))
    tgt = rng.normal(size=(4, 2, 3, 3, 2))
    assert inter_scanner_error(src, tgt).shape == (3, 3, 2)


# --- percentage difference ---------------------------------------------------


def test_percentage_difference_simple_numbers():
    assert percentage_difference(0.15, 0.10, 0.12) == pytest.approx(25.0)
    assert percentage_difference(0.09, 0.10, 0.05) == pytest.approx(-10.0)
    got = percentage_difference([0.2, 0.1], [0.1, 0.1], [0.05, 0.2])
    np.testing.assert_allclose(got, [100.0, -50.0])


def test_percentage_difference_zero_denominator_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = percentage_difference([0.1, 0.0, 0.3], [0.0, 0.0, 0.1], [0.0, 0.0, np.nan])
    assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[2])


# --- ROIs --------------------------------------------------------------------

# 2 x 2 x 1 label volume: ROI 1 = two voxels, ROI 2 = one voxel, background 0
LABELS = np.array([[[1], [1]], [[2], [0]]])


def test_masked_mean():
    m = np.array([[1.0, 2.0], [np.nan, 10.0]])
    assert masked_mean(m, np.array([[True, True], [True, False]])) == pytest.approx(1.5)
    assert math.isnan(masked_mean(m, np.array([[False, False], [True, False]])))
    assert math.isnan(masked_mean(m, np.zeros((2, 2), dtype=bool)))


def test_roi_means_hand_example():
    vol = np.array([[[2.0], [4.0]], [[7.0], [100.0]]])
    np.testing.assert_allclose(roi_means(vol, LABELS, [1, 2, 3]), [3.0, 7.0, np.nan])
    vol_nan = vol.copy()
    vol_nan[0, 1, 0] = np.nan  # ROI 1 keeps only the finite voxel
    vol_nan[1, 0, 0] = np.inf  # ROI 2 has none left
    np.testing.assert_allclose(roi_means(vol_nan, LABELS, [1, 2]), [2.0, np.nan])
    # leading axes are kept; integer-valued float labels accepted
    stack = np.stack([vol, 2.0 * vol, vol + 1.0])
    got = roi_means(stack, LABELS.astype(np.float32), [2, 1])
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, [[7.0, 3.0], [14.0, 6.0], [8.0, 4.0]])


def test_roi_standard_errors_hand_example(rng):
    # ROI 1 means per measurement are [[1, 3], [2, 6]] (sigma = sqrt(5), see above),
    # made of two voxels m - 1 and m + 1; ROI 2 is constant (sigma = 0); background is noise.
    roi1 = np.array([[1.0, 3.0], [2.0, 6.0]])
    values = np.empty((2, 2, 2, 2, 1))
    values[:, :, 0, 0, 0] = roi1 - 1.0
    values[:, :, 0, 1, 0] = roi1 + 1.0
    values[:, :, 1, 0, 0] = 5.0
    values[:, :, 1, 1, 0] = rng.normal(size=(2, 2))
    got = roi_standard_errors(values, LABELS, [1, 2])
    assert got.shape == (2,)
    np.testing.assert_allclose(got, [math.sqrt(5.0), 0.0], atol=1e-15)
    # an ROI absent from the labels has no mean, hence no error
    assert np.isnan(roi_standard_errors(values, LABELS, [7])[0])


# --- paired t-test -----------------------------------------------------------


def test_paired_ttest_matches_scipy():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.5])
    b = np.array([0.5, 2.5, 2.0, 3.0, 4.0])
    ref = stats.ttest_rel(a, b)
    got = paired_ttest(a, b)
    assert isinstance(got, PairedTest)
    assert got.statistic == pytest.approx(ref.statistic)
    assert got.pvalue == pytest.approx(ref.pvalue)
    assert got.n == 5
    assert got.mean_difference == pytest.approx(np.mean(a - b))
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.n = 3  # type: ignore[misc]


def test_paired_ttest_drops_nan_pairs():
    a = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.5, 9.0])
    b = np.array([0.5, 2.5, 1.0, 2.0, 3.0, 4.0, np.nan])
    ref = paired_ttest([1.0, 2.0, 3.0, 4.0, 5.5], [0.5, 2.5, 2.0, 3.0, 4.0])
    assert paired_ttest(a, b) == ref


def test_paired_ttest_too_few_pairs():
    got = paired_ttest([1.0, np.nan], [2.0, 3.0])
    assert got.n == 1 and math.isnan(got.statistic) and math.isnan(got.pvalue)
    assert got.mean_difference == pytest.approx(-1.0)
    empty = paired_ttest([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.mean_difference)


def test_paired_ttest_constant_difference_emits_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = paired_ttest([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert got.n == 3 and got.mean_difference == 0.0


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: standard_error([1.0, 2.0]), r"shape \(N subjects, K repeats"),
        (lambda: standard_error(np.zeros((0, 2))), r"N >= 1"),
        (lambda: standard_error(np.zeros((3, 1))), r"K >= 2"),
        (lambda: scan_rescan_error(np.zeros((3, 4))), r"\(N, 2, \.\.\.\)"),
        (lambda: inter_scanner_error(np.zeros((3, 2)), np.zeros((4, 2))), r"shapes differ"),
        (lambda: inter_scanner_error(np.zeros((3, 3)), np.zeros((3, 3))), r"source must"),
        (lambda: inter_scanner_error(np.zeros((3, 2)), np.zeros((3, 4))), r"target must"),
        (lambda: masked_mean(np.zeros((2, 2)), np.ones((2, 3), bool)), r"shapes differ"),
        (lambda: masked_mean(np.zeros((2, 2)), np.ones((2, 2))), r"boolean"),
        (lambda: roi_means(np.zeros((2, 3, 1)), LABELS, [1]), r"must match labels"),
        (lambda: roi_means(np.zeros((2, 2, 1)), LABELS + 0.5, [1]), r"integer"),
        (lambda: roi_means(np.zeros((2, 2, 1)), LABELS, [[1]]), r"1-D"),
        (lambda: roi_standard_errors(np.zeros((2, 2, 1)), LABELS, [1]), r"\(N, K"),
        (lambda: paired_ttest([1.0, 2.0], [1.0]), r"equal length"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
