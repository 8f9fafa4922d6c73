"""Preprocessing steps on tiny synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from bids_harmony.dmri import preprocess
from bids_harmony.errors import BadGradientsError, BadImageError

BVALS = np.array([0.0, 0.0, 1000.0, 1000.0, 1000.0])
BVECS = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


def blob_series(rng, n=20, noise=1.0):
    """Smooth ellipsoid 'head' with a dark 'ventricle', plus noise."""
    x, y, z = np.mgrid[:n, :n, :n] - (n - 1) / 2
    r = n / 20
    head = ((x / (7 * r)) ** 2 + (y / (6 * r)) ** 2 + (z / (5 * r)) ** 2 < 1).astype(float)
    hole = ((x / 2) ** 2 + (y / 2) ** 2 + (z / 2) ** 2 < r * r).astype(float)
    vol = ndimage.gaussian_filter(100 * head - 80 * hole + 30 * (x > 2) * head, 0.7)
    scales = np.array([1.0, 1.0, 0.5, 0.6, 0.4])
    data = vol[..., None] * scales + rng.normal(0, noise, (n, n, n, scales.size))
    return data, head.astype(bool)


def test_brain_mask_on_a_blob(rng):
    data, head = blob_series(rng, n=36)
    mask = preprocess.brain_mask(data, BVALS)
    assert mask.dtype == bool and mask.any()
    assert mask[18, 18, 18]  # the dark centre is filled
    assert not mask[0, 0, 0] and not mask[-1, -1, -1]
    overlap = (mask & head).sum() / (mask | head).sum()
    assert overlap > 0.85


def test_brain_mask_errors():
    with pytest.raises(BadImageError, match="no positive voxel"):
        preprocess.brain_mask(np.zeros((6, 6, 6, 5)), BVALS)
    with pytest.raises(BadGradientsError):
        preprocess.brain_mask(np.ones((6, 6, 6, 5)), np.full(5, 1000.0))


def test_check_finite():
    data = np.ones((4, 4, 3, 5), np.float32)
    preprocess.check_finite(data, name="ok.nii.gz")
    preprocess.check_finite(np.ones((2, 2, 2, 2), np.int16), name="int.nii.gz")
    data[1, 2, 0, 3] = np.nan
    data[3, 3, 2, 1:3] = np.inf
    with pytest.raises(BadImageError, match=r"sub-01_dwi.nii.gz: 3 NaN/Inf values in 2 voxels"):
        preprocess.check_finite(data, name="sub-01_dwi.nii.gz")
    with pytest.raises(BadImageError, match=r"\(1, 2, 0\)"):
        preprocess.check_finite(data, name="x")


def test_motion_correct_recovers_a_shift(rng):
    data, _ = blob_series(rng, noise=0.5)
    moved = data.copy()
    moved[..., 3] = ndimage.shift(data[..., 3], (1.5, -1.0, 0.0), order=1)
    corrected, bvecs, affines = preprocess.motion_correct(
        moved, BVALS, BVECS, level_iters=(40, 10), sigmas=(1.0, 0.0), factors=(2, 1)
    )
    assert corrected.shape == data.shape and corrected.dtype == np.float32
    np.testing.assert_allclose(affines[3, :3, 3], (1.5, -1.0, 0.0), atol=0.2)
    np.testing.assert_allclose(affines[2, :3, 3], 0.0, atol=0.2)
    np.testing.assert_allclose(affines[:, :3, :3], np.broadcast_to(np.eye(3), (5, 3, 3)), atol=0.02)
    np.testing.assert_allclose(bvecs, BVECS, atol=0.02)
    inner = (slice(4, 16),) * 3
    err_before = np.abs(moved[inner + (3,)] - data[inner + (3,)]).mean()
    err_after = np.abs(corrected[inner + (3,)] - data[inner + (3,)]).mean()
    assert err_after < 0.5 * err_before


def test_rotate_bvecs(rng):
    rot = Rotation.from_euler("z", 10, degrees=True).as_matrix()
    affines = np.tile(np.eye(4), (5, 1, 1))
    affines[2:, :3, :3] = 1.1 * rot  # scaling is removed by the polar decomposition
    out = preprocess.rotate_bvecs(BVALS, BVECS, affines)
    np.testing.assert_allclose(out[2:], BVECS[2:] @ rot, atol=1e-9)  # R^-1 g = R^T g
    assert not out[:2].any()
    flipped = preprocess.rotate_bvecs(BVALS, BVECS, affines, flip_x=True)
    flip = np.diag([-1.0, 1, 1])
    np.testing.assert_allclose(flipped[2:], BVECS[2:] @ (flip @ rot @ flip), atol=1e-9)


def test_denoise_and_gibbs(rng):
    clean = np.ones((8, 8, 8, 12)) * np.linspace(50, 100, 12)
    noisy = clean + rng.normal(0, 5, clean.shape)
    out = preprocess.denoise(noisy, method="mppca", patch_radius=1)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert np.abs(out - clean).mean() < np.abs(noisy - clean).mean()
    bvals = np.r_[0.0, 0.0, np.full(10, 1000.0)]
    p2s = preprocess.denoise(noisy, method="patch2self", bvals=bvals)
    np.testing.assert_array_equal(p2s, preprocess.denoise(noisy, method="patch2self", bvals=bvals))
    assert preprocess.denoise(noisy, method="none").dtype == np.float32
    with pytest.raises(ValueError, match="unknown denoising method"):
        preprocess.denoise(noisy, method="nlmeans")
    with pytest.raises(ValueError, match="bvals"):
        preprocess.denoise(noisy, method="patch2self")
    gibbs = preprocess.remove_gibbs(noisy)
    assert gibbs.shape == noisy.shape and gibbs.dtype == np.float32
