"""Fibre-orientation preservation: principal fODF peaks and axial angular errors."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import get_sphere
from dipy.direction import peak_directions
from dipy.reconst.shm import sf_to_sh, sh_to_sf_matrix
from scipy.spatial.transform import Rotation

from bids_harmony.dmri.bands import band_slices
from bids_harmony.dmri.csd import BatchedCSD
from bids_harmony.dmri.sh import sh_basis
from bids_harmony.evaluation.fibers import (
    angular_error_deg,
    default_sphere,
    principal_directions,
    summarize_angular_error,
)
from tests.conftest import hemisphere

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

SAMPLING = get_sphere(name="repulsion724").subdivide(n=2)  # 11,522 points to fit SH from
EVALS = np.array([1.7e-3, 0.3e-3, 0.3e-3])


def unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@lru_cache
def _fit_matrix(order):
    """dipy's least-squares SH fit on SAMPLING (as ``sf_to_sh``), computed once."""
    _, inverse = sh_to_sf_matrix(SAMPLING, sh_order_max=order, basis_type="descoteaux07",
                                 legacy=True, return_inv=True)  # fmt: skip
    return inverse


def watson_sh(axes, weights=None, kappa=20.0, order=8):
    """SH (dipy descoteaux07, legacy: the CSD basis) of a sum of Watson lobes."""
    axes = np.atleast_2d(unit(axes))
    weights = np.ones(len(axes)) if weights is None else np.asarray(weights)
    sf = np.exp(kappa * ((SAMPLING.vertices @ axes.T) ** 2 - 1)) @ weights
    return sf @ _fit_matrix(order)


@pytest.fixture(scope="module")
def axes():
    return unit(np.random.default_rng(3).normal(size=(12, 3)))


@pytest.fixture(scope="module")
def single(axes):
    return np.array([watson_sh(a) for a in axes])


def test_watson_helper_is_sf_to_sh(axes):
    sf = np.exp(20.0 * ((SAMPLING.vertices @ axes[0]) ** 2 - 1))
    expected = sf_to_sh(sf, SAMPLING, sh_order_max=8, basis_type="descoteaux07", legacy=True)
    np.testing.assert_allclose(watson_sh(axes[0]), expected, atol=1e-10)


def test_single_fibre_direction(axes, single):
    found = principal_directions(single)
    assert found.shape == (len(axes), 3)
    np.testing.assert_allclose(np.linalg.norm(found, axis=1), 1.0)
    assert angular_error_deg(found, axes).max() < 0.5
    # the sphere vertex alone: within its resolution (~3.7° spacing)
    assert angular_error_deg(principal_directions(single, refine=False), axes).max() < 3.0
    # also on dipy's plain repulsion724 (7.5° spacing), refined
    coarse = principal_directions(single, sphere=get_sphere(name="repulsion724"))
    assert angular_error_deg(coarse, axes).max() < 2.0


def test_rotated_copy_gives_rotation_angle(axes, single):
    for angle in (5.0, 30.0, 60.0, 90.0):
        perpendicular = unit(np.cross(axes, [0.0, 0.0, 1.0]))
        rotvec = np.radians(angle) * perpendicular
        rotated = Rotation.from_rotvec(rotvec).apply(axes)
        moved = principal_directions(np.array([watson_sh(a) for a in rotated]))
        errors = angular_error_deg(principal_directions(single), moved)
        np.testing.assert_allclose(errors, min(angle, 180 - angle), atol=0.5)


def test_vertex_matches_dipy_peak_directions():
    """refine=False gives the first peak of dipy's peak_directions on the same sphere."""
    rng = np.random.default_rng(5)
    coeffs = np.array([watson_sh(unit(rng.normal(size=(2, 3))), weights=[1.0, rng.uniform(0.3, 1)],
                                 kappa=rng.uniform(5, 30)) for _ in range(20)])  # fmt: skip
    coeffs += 0.02 * rng.normal(size=coeffs.shape)
    sphere = get_sphere(name="repulsion724")
    found = principal_directions(coeffs, sphere=sphere, refine=False)
    basis, _ = sh_basis(sphere.vertices, 8)
    for fodf, u in zip(coeffs, found, strict=True):
        dipy_peaks, _, _ = peak_directions(basis @ fodf, sphere)
        assert angular_error_deg(dipy_peaks[0], u) < 1e-6


def test_crossing_gives_larger_lobe():
    a, b = unit([1.0, 0.2, 0.1]), unit([-0.1, 1.0, 0.4])
    for weights, expected in (([1.0, 0.6], a), ([0.6, 1.0], b)):
        u = principal_directions(watson_sh([a, b], weights))
        assert angular_error_deg(u, expected) < 1.0


def test_package_csd_fodf():
    """End to end with the package's CSD: the basis of its fODFs is the one sampled."""
    bvals = np.r_[0.0, np.full(60, 1000.0)]
    bvecs = np.r_[np.zeros((1, 3)), hemisphere(60)]
    gtab = gradient_table(bvals, bvecs=bvecs)
    rot = Rotation.random(8, random_state=11).as_matrix()
    signal = np.array([100 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, r @ np.diag(EVALS)
                                                        @ r.T, bvecs)) for r in rot])  # fmt: skip
    model = BatchedCSD(gtab, (EVALS, 100.0), sh_order=8)
    fodf = model.fit(signal[:, model.dwi_index], n_threads=1)
    errors = angular_error_deg(principal_directions(fodf), rot[:, :, 0])
    assert errors.max() < 0.5


def test_band_scaling_keeps_direction(single):
    """HARP-like scaling of all l > 0 bands by one positive constant: f' = a Y00 + g f."""
    base = principal_directions(single)
    for gain in (0.3, 1.7):
        scaled = single.copy()
        scaled[..., 1:] *= gain
        np.testing.assert_array_less(angular_error_deg(principal_directions(scaled), base), 1e-6)
    # per-band gains of a realistic size move it little (sharper / blunter lobes)
    scaled = single.copy()
    for sl, gain in zip(band_slices(8)[1:], (0.9, 1.1, 0.8, 1.2), strict=True):
        scaled[..., sl] *= gain
    assert angular_error_deg(principal_directions(scaled), base).max() < 0.5


def test_no_peak_is_nan(single):
    isotropic = np.zeros(45)
    isotropic[0] = 1.0
    nan_coeffs = single[0].copy()
    nan_coeffs[3] = np.nan
    coeffs = np.stack([np.zeros(45), isotropic, -single[0] - 10 * isotropic, nan_coeffs,
                       single[0]]).astype(np.float32)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        found = principal_directions(coeffs)
    assert np.isnan(found[:4]).all()
    assert np.isfinite(found[4]).all()


def test_shapes_mask_and_lower_order(axes):
    coeffs = np.array([watson_sh(a, order=4) for a in axes[:6]]).reshape(2, 3, 1, 15)
    mask = np.ones((2, 3, 1), dtype=bool)
    mask[1, 2, 0] = False
    found = principal_directions(coeffs, sh_order=4, mask=mask, chunk_size=2)
    assert found.shape == (2, 3, 1, 3)
    assert np.isnan(found[1, 2, 0]).all()
    errors = angular_error_deg(found.reshape(-1, 3), axes[:6])
    assert np.nanmax(errors) < 1.0 and np.isnan(errors).sum() == 1
    with pytest.raises(ValueError, match="not 8"):
        principal_directions(coeffs, sh_order=8)
    with pytest.raises(ValueError, match="mask has shape"):
        principal_directions(coeffs, mask=mask[0])
    with pytest.raises(ValueError, match="not the number of coefficients"):
        principal_directions(np.ones((3, 10)))
    assert len(default_sphere().vertices) == 1445


def test_angular_error_is_axial():
    u = unit(np.random.default_rng(1).normal(size=(50, 3)))
    np.testing.assert_allclose(angular_error_deg(u, -u), 0.0, atol=1e-12)
    np.testing.assert_allclose(angular_error_deg(u, 3 * u), 0.0, atol=1e-12)
    assert angular_error_deg([1.0, 0, 0], [0, 0, 1.0]) == pytest.approx(90.0)
    assert angular_error_deg([1.0, 0, 0], [1.0, 1.0, 0]) == pytest.approx(45.0)
    assert angular_error_deg([1.0, 0, 0], [-1.0, 1.0, 0]) == pytest.approx(45.0)
    tilted = np.degrees(np.arctan(0.2))
    assert angular_error_deg([1.0, 0, 0], [-1.0, 0.2, 0]) == pytest.approx(tilted)
    assert angular_error_deg([1.0, 0, 0], [np.cos(1e-7), np.sin(1e-7), 0]) == pytest.approx(
        np.degrees(1e-7), rel=1e-6
    )
    # NaN propagation and zero vectors; broadcasting
    out = angular_error_deg(np.array([[np.nan, 0, 0], [0, 0, 0], [0, 1.0, 0]]), [1.0, 0, 0])
    assert np.isnan(out[:2]).all() and out[2] == pytest.approx(90.0)
    with pytest.raises(ValueError, match="last axis of 3"):
        angular_error_deg(np.ones((4, 2)), np.ones((4, 2)))


def test_summarize_angular_error():
    errors = np.array([[1.0, 2.0, 3.0], [4.0, np.nan, 100.0]])
    mask = np.array([[True, True, True], [True, True, False]])
    stats = summarize_angular_error(errors, mask)
    assert stats["n"] == 4
    assert stats["mean"] == pytest.approx(2.5) and stats["median"] == pytest.approx(2.5)
    assert stats["p95"] == pytest.approx(np.percentile([1, 2, 3, 4], 95))
    assert summarize_angular_error(errors)["n"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = summarize_angular_error(errors, np.zeros_like(mask))
    assert empty["n"] == 0 and np.isnan([empty["mean"], empty["median"], empty["p95"]]).all()
    with pytest.raises(ValueError, match="mask has shape"):
        summarize_angular_error(errors, mask[0])
