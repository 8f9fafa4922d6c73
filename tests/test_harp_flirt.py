"""FLIRT matrices ↔ world transforms (closed forms), and the FLIRT call, without FSL."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.registration.flirt import (
    flirt_interface,
    flirt_to_world,
    scaled_voxel_matrix,
    world_to_flirt,
)
from bids_harmony.registration.rigid import register_rigid


def _translation(t):
    m = np.eye(4)
    m[:3, 3] = t
    return m


@pytest.mark.parametrize("x_size", [2.0, -2.0])  # RAS (FSL flips x) and LAS (it does not)
def test_world_translation_is_a_flirt_translation(x_size):
    affine = np.diag([x_size, 2.0, 2.0, 1.0])
    affine[:3, 3] = [30.0, -20.0, 5.0]
    shape = (16, 16, 8)
    t = np.array([3.0, -1.5, 0.5])  # input (moving) points = reference points + t
    matrix = world_to_flirt(_translation(t), shape, affine, shape, affine)
    # FLIRT maps input to reference (−t), in coordinates whose x axis runs
    # against the world's x for both storage orders here.
    np.testing.assert_allclose(matrix, _translation([t[0], -t[1], -t[2]]), atol=1e-12)
    np.testing.assert_allclose(flirt_to_world(matrix, shape, affine, shape, affine),
                               _translation(t), atol=1e-12)  # fmt: skip


def test_scaled_voxel_coordinates():
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(scaled_voxel_matrix((10, 5, 5), ras) @ [0, 1, 1, 1], [18, 3, 4, 1])
    las = np.diag([-2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(scaled_voxel_matrix((10, 5, 5), las) @ [0, 1, 1, 1], [0, 3, 4, 1])


def test_round_trip_between_grids():
    rng = np.random.default_rng(0)
    angle = np.radians(4.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    transform = _translation(rng.normal(size=3)) @ rot
    in_affine = np.diag([2.5, 2.5, 3.0, 1.0])
    ref_affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    ref_affine[:3, 3] = [40, -30, -10]
    matrix = world_to_flirt(transform, (20, 20, 10), in_affine, (24, 24, 16), ref_affine)
    back = flirt_to_world(matrix, (20, 20, 10), in_affine, (24, 24, 16), ref_affine)
    np.testing.assert_allclose(back, transform, atol=1e-10)
    # A point of the reference voxel grid maps to the same input voxel both ways.
    ref_vox = np.array([5.0, 7.0, 3.0, 1.0])
    world_in = transform @ ref_affine @ ref_vox
    in_vox = np.linalg.inv(in_affine) @ world_in
    s_in = scaled_voxel_matrix((20, 20, 10), in_affine)
    s_ref = scaled_voxel_matrix((24, 24, 16), ref_affine)
    np.testing.assert_allclose(matrix @ s_in @ in_vox, s_ref @ ref_vox, atol=1e-10)


def test_flirt_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    for name in ("moving.nii.gz", "fixed.nii.gz"):
        nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / name)
    cmd = flirt_interface(str(tmp_path / "moving.nii.gz"), str(tmp_path / "fixed.nii.gz"),
                          str(tmp_path / "m.mat")).cmdline  # fmt: skip
    assert cmd.startswith("flirt ")
    expected = [
        "-dof 6",
        "-cost corratio",
        f"-omat {tmp_path / 'm.mat'}",
        f"-ref {tmp_path / 'fixed.nii.gz'}",
        f"-in {tmp_path / 'moving.nii.gz'}",
    ]
    for part in expected:
        assert part in cmd


def test_unknown_registration_method():
    b0 = np.random.default_rng(0).uniform(1, 2, (8, 8, 8))
    with pytest.raises(ValueError, match="'ants' or 'flirt'"):
        register_rigid(b0, np.eye(4), b0, np.eye(4), method="elastix")
