"""Rigid registration of phantom b0s (antspyx) and resampling into the source grid."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.registration.rigid import (
    RegistrationError,
    RigidResult,
    b0_correlation,
    register_rigid,
    resample_to,
)

SHAPE = (28, 28, 24)
VOXEL = 2.0


def las_affine(shape=SHAPE, voxel=VOXEL, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Radiological (LAS) affine with the grid centre near ``shift``."""
    aff = np.diag([-voxel, voxel, voxel, 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0) + np.asarray(shift)
    return aff


def rigid(angles_deg, translation) -> np.ndarray:
    mat = np.eye(4)
    mat[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    mat[:3, 3] = translation
    return mat


def blobs(shape, affine, motion=None) -> np.ndarray:
    """An asymmetric object (four Gaussian blobs) moved by ``motion`` (world, mm)."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = ijk.reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
    inverse = np.linalg.inv(np.eye(4) if motion is None else motion)
    points = world @ inverse[:3, :3].T + inverse[:3, 3]
    centres = np.array([[0, 0, 0], [12, -6, 4], [-8, 10, -6], [5, 9, 10]], dtype=float)
    widths = np.array([[10, 6, 4], [4, 4, 4], [6, 3, 5], [3, 5, 3]], dtype=float)
    amps = (1.0, 0.8, 0.6, 0.9)
    value = sum(
        a * np.exp(-0.5 * (((points - c) / w) ** 2).sum(-1))
        for c, w, a in zip(centres, widths, amps, strict=True)
    )
    return 1000.0 * value.reshape(shape)


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    rel = a[:3, :3] @ b[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def moved_pair():
    """Fixed and moving images of the object, moving displaced by a known rigid motion."""
    rng = np.random.default_rng(0)
    fixed_aff = las_affine()
    moving_aff = las_affine(shift=(1.0, -2.0, 0.5))  # different grid placement too
    motion = rigid((3.0, -4.0, 5.0), (2.5, -1.7, 3.1))
    fixed = blobs(SHAPE, fixed_aff) + rng.normal(0, 10, SHAPE)
    moving = blobs(SHAPE, moving_aff, motion) + rng.normal(0, 10, SHAPE)
    return fixed, fixed_aff, moving, moving_aff, motion


@pytest.fixture(scope="module")
def registered(moved_pair) -> RigidResult:
    fixed, fixed_aff, moving, moving_aff, _ = moved_pair
    return register_rigid(fixed, fixed_aff, moving, moving_aff, seed=0)


def test_recovers_known_rigid_motion(moved_pair, registered):
    *_, motion = moved_pair
    # the transform maps fixed points to moving points: the applied motion itself
    assert np.abs(registered.translation_mm - motion[:3, 3]).max() < 0.5 * VOXEL
    assert rotation_error_deg(registered.transform, motion) < 1.0
    assert registered.corr_after > 0.99 > registered.corr_before
    assert registered.rotation_deg == pytest.approx(rotation_error_deg(motion, np.eye(4)), abs=1.0)


def test_result_is_deterministic(moved_pair, registered):
    fixed, fixed_aff, moving, moving_aff, _ = moved_pair
    again = register_rigid(fixed, fixed_aff, moving, moving_aff, seed=0)
    np.testing.assert_array_equal(again.transform, registered.transform)
    assert not registered.transform.flags.writeable


def test_resampled_moving_matches_fixed(moved_pair, registered):
    fixed, fixed_aff, moving, moving_aff, _ = moved_pair
    clean_fixed = blobs(SHAPE, fixed_aff)
    moved = resample_to(moving, moving_aff, SHAPE, fixed_aff, registered.transform)
    identity = resample_to(moving, moving_aff, SHAPE, fixed_aff)
    err_after = np.abs(moved - clean_fixed).mean()
    err_before = np.abs(identity - clean_fixed).mean()
    assert err_after < 0.3 * err_before


def test_translation_only_subvoxel_on_thick_slices():
    """A phantom-like case: only a sub-voxel in-plane shift, anisotropic voxels."""
    aff = np.diag([-3.0, 3.0, 6.0, 1.0])
    aff[:3, 3] = [40.0, -40.0, -30.0]
    shape = (28, 28, 10)
    motion = rigid((0, 0, 0), (1.2, -0.9, 0.0))
    rng = np.random.default_rng(1)
    fixed = blobs(shape, aff) + rng.normal(0, 5, shape)
    moving = blobs(shape, aff, motion) + rng.normal(0, 5, shape)
    result = register_rigid(fixed, aff, moving, aff, seed=3)
    assert np.abs(result.translation_mm[:2] - motion[:2, 3]).max() < 0.5
    assert result.rotation_deg < 1.0
    assert result.corr_after >= result.corr_before


def test_registering_to_noise_fails(moved_pair):
    fixed, fixed_aff, _, moving_aff, _ = moved_pair
    noise = np.abs(np.random.default_rng(2).normal(0, 100, SHAPE))
    with pytest.raises(RegistrationError) as info:
        register_rigid(
            fixed, fixed_aff, noise, moving_aff, fixed_name="src.nii.gz", moving_name="tgt.nii.gz"
        )
    message = str(info.value)
    assert "src.nii.gz" in message and "tgt.nii.gz" in message
    assert "before" in message and "after" in message
    assert isinstance(info.value, BidsHarmonyError)


def test_constant_or_bad_images_rejected(moved_pair):
    fixed, fixed_aff, _, moving_aff, _ = moved_pair
    with pytest.raises(RegistrationError, match="non-constant"):
        register_rigid(fixed, fixed_aff, np.zeros(SHAPE), moving_aff)
    sheared = fixed_aff.copy()
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match="shear"):
        register_rigid(fixed, fixed_aff, fixed, sheared)
    with pytest.raises(ValueError, match="seed"):
        register_rigid(fixed, fixed_aff, fixed, fixed_aff, seed=-1)


def test_resample_identity_and_integer_shift():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(6, 7, 5, 3)).astype(np.float32)
    aff = las_affine((6, 7, 5), 2.0)
    same = resample_to(data, aff, (6, 7, 5), aff)
    np.testing.assert_allclose(same, data, atol=1e-6)
    assert same.dtype == np.float32 and same.shape == data.shape
    # fixed point x corresponds to moving point x + 2 mm along world y (one voxel)
    shifted = resample_to(data, aff, (6, 7, 5), aff, rigid((0, 0, 0), (0.0, 2.0, 0.0)), cval=np.nan)
    np.testing.assert_allclose(shifted[:, :-1], data[:, 1:], atol=1e-6)
    assert np.isnan(shifted[:, -1]).all()


def test_resample_half_voxel_edges_and_masks():
    mask = np.zeros((5, 5, 3), dtype=bool)
    mask[1:4, 1:4, :] = True
    aff = np.diag([2.0, 2.0, 6.0, 1.0])
    # a 0.4-voxel shift along the thick slices keeps both end slices
    moved = resample_to(mask, aff, mask.shape, aff, rigid((0, 0, 0), (0, 0, 2.4)), order=0)
    assert moved.dtype == np.bool_
    np.testing.assert_array_equal(moved, mask)
    # a 0.6-voxel shift loses one end slice (outside the moving voxels' extent)
    moved = resample_to(mask, aff, mask.shape, aff, rigid((0, 0, 0), (0, 0, 3.6)), order=0)
    assert moved[..., :2].sum() == mask[..., 1:].sum() and not moved[..., 2].any()


def test_correlation_rises_with_alignment(moved_pair, registered):
    fixed, fixed_aff, moving, moving_aff, motion = moved_pair
    best = b0_correlation(fixed, fixed_aff, moving, moving_aff, motion)
    assert best == pytest.approx(registered.corr_after, abs=0.005)
    assert b0_correlation(fixed, fixed_aff, fixed, fixed_aff) == pytest.approx(1.0)


def test_far_apart_world_origins_fall_back_to_centre_of_mass(moved_pair, caplog):
    """Fields of view that do not overlap: identity fails, centre of mass recovers."""
    caplog.set_level(logging.INFO, logger="bids_harmony.registration.rigid")
    fixed, fixed_aff, *_ = moved_pair
    offset = np.array([100.0, -50.0, 30.0])
    moving_aff = fixed_aff.copy()
    moving_aff[:3, 3] += offset  # same voxels, another scanner origin
    result = register_rigid(fixed, fixed_aff, fixed, moving_aff)
    assert np.abs(result.translation_mm - offset).max() < 0.5 * VOXEL
    assert result.corr_before == 0.0 and result.corr_after > 0.99
    assert "centre-of-mass" not in caplog.text and "Identity init" in caplog.text


def test_flirt_failure_falls_back_to_ants(moved_pair, registered, caplog, monkeypatch):
    """FLIRT absent (as here) or failing: the ANTs tries give the same result as without it."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no flirt, whatever the machine has
    fixed, fixed_aff, moving, moving_aff, _ = moved_pair
    result = register_rigid(fixed, fixed_aff, moving, moving_aff, seed=0, method="flirt")
    assert "FLIRT registration of" in caplog.text and "trying ANTs" in caplog.text
    np.testing.assert_array_equal(result.transform, registered.transform)
