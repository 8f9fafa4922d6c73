"""LinearRISH baseline: closed-form per-band gains."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bids_harmony.dmri.bands import band_slices, rish_features
from bids_harmony.methods.rish import (
    DEFAULT_MAX_SCALE,
    LinearRISH,
    apply_rish_scales,
    rish_scale_maps,
    site_template,
)

GAINS = np.array([1.1, 0.8, 1.3, 0.6, 1.9])  # per band, l = 0..8
SHAPE = (4, 3, 2)


def _band_gain(coeffs: np.ndarray, gains: np.ndarray) -> np.ndarray:
    out = coeffs.copy()
    for sl, g in zip(band_slices(8), gains, strict=False):
        out[..., sl] *= g
    return out


@pytest.fixture
def sites():
    """Paired subjects: the target is the source with per-band gain g_l."""
    rng = np.random.default_rng(0)
    source = rng.normal(size=(3, *SHAPE, 45))
    source[..., 0] += 3.0
    return source, _band_gain(source, GAINS)


def test_scale_maps_recover_band_gains(sites):
    source, target = sites
    model = LinearRISH().fit(rish_features(source), rish_features(target))
    assert model.scales_.shape == (*SHAPE, 5)
    np.testing.assert_allclose(model.scales_, np.broadcast_to(GAINS, model.scales_.shape),
                               rtol=0, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(model.transform(source[1]), target[1], rtol=0, atol=1e-9)


def test_site_template_is_mean_rish(sites):
    source, _ = sites
    rish = rish_features(source)
    np.testing.assert_allclose(site_template(rish), rish.mean(axis=0))
    # a list of per-subject arrays (e.g. memory maps) gives the same
    np.testing.assert_allclose(site_template(list(rish)), rish.mean(axis=0))


def test_masks_exclude_subjects(sites):
    source, _ = sites
    rish = rish_features(source)
    rish[2, 0, 0, 0] = 1e9  # outlier, masked out
    rish[:, 1, 0, 0] = np.nan  # all invalid here
    masks = np.ones(rish.shape[:-1], dtype=bool)
    masks[2, 0, 0, 0] = False
    masks[:, 2, 0, 0] = False  # no subject in the mask
    template = site_template(rish, masks)
    np.testing.assert_allclose(template[0, 0, 0], rish[:2, 0, 0, 0].mean(axis=0))
    assert np.isnan(template[1, 0, 0]).all() and np.isnan(template[2, 0, 0]).all()
    np.testing.assert_allclose(template[3], rish[:, 3].mean(axis=0))
    scales = rish_scale_maps(template, template)
    assert np.isfinite(scales).all()
    np.testing.assert_array_equal(scales[1, 0, 0], 1.0)


def test_zero_source_band_gives_unit_scale(sites):
    source, target = sites
    source, target = source.copy(), target.copy()
    source[:, 0, 0, 0, 15:28] = 0.0  # band l=6 empty at the source
    source[:, 0, 1, 0] = 0.0  # empty voxel at the source, signal at the target
    target[:, 0, 1, 1] = 0.0  # empty voxel at the target
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LinearRISH().fit(rish_features(source), rish_features(target))
        out = model.transform(source[0])
    scales = model.scales_
    assert np.isfinite(scales).all() and np.isfinite(out).all()
    assert scales[0, 0, 0, 3] == 1.0
    np.testing.assert_allclose(np.delete(scales[0, 0, 0], 3), np.delete(GAINS, 3), atol=1e-6)
    np.testing.assert_array_equal(scales[0, 1, 0], 1.0)
    np.testing.assert_array_equal(scales[0, 1, 1], 0.0)  # target has no energy: scale 0


def test_scale_clip_and_nan_templates():
    target = np.array([[100.0, 1.0, 4.0], [np.nan, 1.0, 1.0], [1.0, -1e-9, np.inf]])
    source = np.ones((3, 3))
    scales = rish_scale_maps(target, source)
    np.testing.assert_allclose(scales[0], [DEFAULT_MAX_SCALE, 1.0, 2.0])
    np.testing.assert_allclose(scales[1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(scales[2], [1.0, 0.0, 1.0])  # overshoot -> 0; inf -> missing
    assert rish_scale_maps(target, source, max_scale=None)[0, 0] == pytest.approx(10.0)
    # eps is relative to the voxel's total source energy
    tiny = rish_scale_maps(np.array([1.0, 1.0]), np.array([1.0, 1e-7]))
    np.testing.assert_allclose(tiny, [1.0, 1.0])
    np.testing.assert_allclose(rish_scale_maps(np.array([1.0, 1.0]), np.array([1.0, 1e-7]),
                                               eps=0, max_scale=None), [1.0, 10**3.5])  # fmt: skip


@pytest.mark.parametrize("order, n", [(0, 1), (2, 6), (4, 15), (6, 28), (8, 45)])
def test_lower_orders(order, n):
    rng = np.random.default_rng(order)
    coeffs = rng.normal(size=(2, 3, 1, n)).astype(np.float32)
    expected = _band_gain(coeffs.astype(float), GAINS)
    n_bands = order // 2 + 1
    # order-8 scales are truncated; exactly n_bands also works
    for scales in (np.broadcast_to(GAINS, (2, 3, 1, 5)), GAINS[:n_bands]):
        out = apply_rish_scales(coeffs, scales)
        assert out.shape == coeffs.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    # the whole pipeline at a lower order
    target = _band_gain(coeffs[None].astype(float), GAINS)
    model = LinearRISH().fit(rish_features(coeffs[None]), rish_features(target))
    expected_scales = np.broadcast_to(GAINS[:n_bands], (2, 3, 1, n_bands))
    np.testing.assert_allclose(model.scales_, expected_scales, atol=1e-5)
    if n_bands > 1:
        with pytest.raises(ValueError, match="bands but only"):
            apply_rish_scales(coeffs, GAINS[: n_bands - 1])


def test_bad_shapes_raise(sites):
    source, target = sites
    rish = rish_features(source)
    with pytest.raises(ValueError, match=r"\(S, X, Y, Z, n_bands\)"):
        site_template(rish[0])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        site_template(rish, np.ones((3, 4, 3, 1), dtype=bool))
    with pytest.raises(ValueError, match="masks has 2 subjects"):
        site_template(rish, np.ones((2, *SHAPE), dtype=bool))
    with pytest.raises(ValueError, match="subject 1 has RISH maps"):
        site_template([rish[0], rish[1, :2]])
    with pytest.raises(ValueError, match="no subjects"):
        site_template([])
    with pytest.raises(ValueError, match="differ in shape"):
        rish_scale_maps(rish[0], rish[0, ..., :3])
    with pytest.raises(ValueError, match="not the number of coefficients"):
        apply_rish_scales(np.ones((2, 10)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="do not broadcast"):
        apply_rish_scales(np.ones((2, 45)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="differ"):
        LinearRISH().fit(rish, rish[:, :2])
    with pytest.raises(ValueError, match="differ"):
        LinearRISH().fit(rish, rish[..., :3])
    with pytest.raises(RuntimeError, match="before fit"):
        LinearRISH().transform(source[0])
    with pytest.raises(ValueError, match="template grid"):
        LinearRISH().fit(rish, rish).transform(source[0, :2])
