"""Phantom registration over the capture range, its acceptance test, and SH rotation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_harmony.dmri.sh import sh_basis
from bids_harmony.dmri.sh_rotation import bvec_frame, direction_map, rotate_sh
from bids_harmony.registration.multistart import attenuation_contrast
from bids_harmony.registration.phantom import PhantomImage, register_phantom


def _phantom(subject: str, session: str) -> tuple[PhantomImage, np.ndarray]:
    from bids_harmony.simulate import simulate_session
    from bids_harmony.simulate.study import object_grid
    from bids_harmony.simulate.zoo import PhantomScenario

    # a 70 mm slab, as a phantom scan covers its phantom: a thin one hardly shows tilts
    scenario = PhantomScenario("thick", phantom_slices=20)
    data = simulate_session(
        subject, session, size="demo", seed=0, protocols=("b1000",), scenario=scenario
    )
    run = data.runs[0]
    image = run.image.astype(np.float64)
    b0 = image[..., run.bvals < 50].mean(-1)
    dwi = image[..., run.bvals > 500].mean(-1)
    mask = b0 > 0.2 * np.percentile(b0, 99)
    affine = object_grid(data.spec, "demo", scenario).affine
    pose = np.eye(4)
    pose[:3, 3] = data.pose.translation_mm
    return PhantomImage(attenuation_contrast(b0, dwi, mask), mask, affine, b0, subject), pose


@pytest.fixture(scope="module")
def scans():
    fixed, fixed_pose = _phantom("phantom01", "GE1")
    moving, moving_pose = _phantom("phantom01", "Prisma1")
    other, _ = _phantom("phantom02", "Prisma1")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # simulator world = diag(-1, 1, 1) x scanner frame
    sessions = flip @ moving_pose @ np.linalg.inv(fixed_pose) @ flip
    return fixed, moving, other, sessions


def _moved(image: PhantomImage, motion: np.ndarray) -> PhantomImage:
    """The same scan with the object moved by ``motion`` (world): a new affine."""
    return PhantomImage(image.contrast, image.mask, motion @ image.affine, image.b0, image.name)


@pytest.mark.parametrize(
    "angles, shift",
    [((0, 0, 25), (15, -12, 3)), ((0, 0, -25), (-20, 5, 0)), ((-20, 0, 3), (0, 5, 0)),
     ((6, -8, 18), (5, -15, 2))],
)  # fmt: skip
def test_recovers_known_poses_across_the_capture_range(scans, angles, shift):
    fixed, moving, _, sessions = scans
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    motion[:3, 3] = shift
    result = register_phantom(fixed, _moved(moving, motion), seed=0)
    assert result.accepted, result.reason
    true = motion @ sessions
    points = np.argwhere(fixed.mask).astype(float) @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    est = points @ result.transform[:3, :3].T + result.transform[:3, 3]
    ref = points @ true[:3, :3].T + true[:3, 3]
    diff = est - ref
    axis = true[:3, :3] @ np.array([0.0, 0.0, 1.0])  # the vials run along it: a shift along
    diff -= np.outer(diff @ axis, axis)  # it is not observable and changes nothing
    error = np.sqrt(np.mean(np.sum(diff**2, axis=1)))
    assert error < 0.5 * 3.4375  # half a voxel
    cos = (np.trace(result.transform[:3, :3].T @ true[:3, :3]) - 1) / 2
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 1.0
    assert result.similarity_after > 0.95 > result.similarity_before
    record = result.record()
    assert record["accepted"] and len(record["transform"]) == 4


def test_a_different_phantom_is_rejected_not_raised(scans):
    fixed, _, other, _ = scans
    result = register_phantom(fixed, other, seed=0)
    assert not result.accepted
    assert "not the same phantom" in result.reason and "correlation" in result.reason


def test_an_empty_scan_is_rejected(scans):
    fixed, moving, _, _ = scans
    empty = PhantomImage(np.zeros_like(moving.contrast), np.zeros_like(moving.mask),
                         moving.affine, np.zeros_like(moving.b0), "empty.nii.gz")  # fmt: skip
    result = register_phantom(fixed, empty)
    assert not result.accepted and "empty.nii.gz" in result.reason


def test_a_known_start_is_reused_without_a_search(scans, monkeypatch):
    fixed, moving, _, sessions = scans
    import bids_harmony.registration.phantom as reg

    monkeypatch.setattr(reg, "search_poses", lambda *a, **k: pytest.fail("searched"))
    result = register_phantom(fixed, moving, start=sessions)
    assert result.accepted and result.method == "reused from another run"


def test_sh_rotation_matches_rotated_sampling():
    rng = np.random.default_rng(0)
    q = Rotation.from_euler("xyz", [10, -20, 25], degrees=True).as_matrix()
    coeffs = rng.standard_normal((3, 45))
    dirs = rng.standard_normal((40, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    basis, _ = sh_basis(dirs, 8)
    rotated_basis, _ = sh_basis(dirs @ q.T, 8)
    np.testing.assert_allclose(rotate_sh(coeffs, q) @ basis.T, coeffs @ rotated_basis.T,
                               atol=1e-10)  # fmt: skip
    # band power (RISH) is kept; zero-padded bands stay zero
    out = rotate_sh(coeffs, q)
    for a, b in ((1, 6), (6, 15), (28, 45)):
        np.testing.assert_allclose((out[:, a:b] ** 2).sum(1), (coeffs[:, a:b] ** 2).sum(1))
    padded = coeffs.copy()
    padded[:, 28:] = 0
    assert not rotate_sh(padded, q)[:, 28:].any()


def test_direction_map_uses_the_bvec_convention():
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    # FSL b-vectors: voxel axes, first axis flipped when the determinant is positive
    np.testing.assert_allclose(bvec_frame(las), np.diag([-1.0, 1.0, 1.0]))
    np.testing.assert_allclose(bvec_frame(ras), np.diag([-1.0, 1.0, 1.0]))
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("z", 30, degrees=True).as_matrix()
    q = direction_map(las, las, turn)
    np.testing.assert_allclose(q, bvec_frame(las).T @ turn[:3, :3] @ bvec_frame(las))
    np.testing.assert_allclose(direction_map(las, las, np.eye(4)), np.eye(3), atol=1e-12)
