"""Training-voxel selection, validation split and loading a pair into flat arrays."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.phantom_pairs import PhantomPair, PhantomScan, TrainingDataError
from bids_harmony.dmri import sh
from bids_harmony.interfaces.phantom_pairs import (
    RegistrationCache,
    gather_pair_arrays,
    load_mean_b0,
)
from bids_harmony.methods.harp.voxels import (
    C00_WINDOW,
    block_validation,
    c00_bounds,
    component_counts,
    partial_volume_voxels,
    scaled_erosion,
    select_training_voxels,
    voxel_selection,
)
from tests.conftest import fibonacci_directions


def coeff_maps(c00: np.ndarray, rng: np.random.Generator, n: int = 45) -> np.ndarray:
    out = rng.normal(0, 0.05, (*c00.shape, n))
    out[..., 0] = c00
    return out


def test_c00_window_matches_the_sh_convention():
    """C00 = 2*sqrt(pi)*mean(E'): the window keeps mean diffusivities ~0.6-1.3 um2/ms."""
    bvecs = fibonacci_directions(60)
    model = sh.ShellSHModel(bvecs, 2000.0)
    diffusivities = np.array([0.3e-3, 0.7e-3, 1.0e-3, 1.2e-3, 2.0e-3, 3.0e-3])
    signal = 1000.0 * np.exp(-2000.0 * diffusivities[:, None] * np.ones(60))
    coeffs = model.fit_voxels(signal, np.full(diffusivities.size, 1000.0))
    expected = 2 * np.sqrt(np.pi) * np.exp(-sh.B_REF * diffusivities)  # E' at b_ref
    np.testing.assert_allclose(coeffs[:, 0], expected, rtol=1e-4)
    low, high = C00_WINDOW
    inside = (coeffs[:, 0] > low) & (coeffs[:, 0] < high)
    assert inside.tolist() == [False, True, True, True, False, False]
    assert coeffs[:, 0].max() <= 2 * np.sqrt(np.pi)


def test_window_rule_at_both_sites_with_counts():
    rng = np.random.default_rng(0)
    c00 = np.full((4, 5, 3), 1.5)
    c00[0] = 0.5  # outside the window at both sites
    target_c00 = c00.copy()
    target_c00[1, 0, 0] = 2.5  # outside at the target only
    source, target = coeff_maps(c00, rng), coeff_maps(target_c00, rng)
    source_mask = np.ones(c00.shape, dtype=bool)
    source_mask[3] = False
    target_mask = np.ones(c00.shape, dtype=np.uint8)
    target[2, 0, 0, 7] = np.nan
    selection = voxel_selection(
        source, target, source_mask, target_mask, erode=0, partial_volume=False
    )
    assert selection.counts == {
        "grid": 60, "mask": 45, "finite": 44, "window": 28, "interior": 28, "homogeneous": 28
    }  # fmt: skip
    assert selection.n_voxels == 28
    assert not selection.mask[0].any() and not selection.mask[1, 0, 0]
    assert not selection.mask[2, 0, 0] and not selection.mask[3].any()
    mask = select_training_voxels(
        source, target, source_mask, target_mask, min_voxels=28, erode=0, partial_volume=False
    )
    np.testing.assert_array_equal(mask, selection.mask)


def test_erosion_drops_vial_walls_but_not_the_field_of_view_border():
    rng = np.random.default_rng(0)
    c00 = np.full((9, 9, 3), 0.5)  # bath: outside the window
    c00[2:7, 2:7, :] = 1.5  # a 5 x 5 vial through every slice
    source, target = coeff_maps(c00, rng), coeff_maps(c00, rng)
    mask = np.ones(c00.shape, dtype=bool)
    edges = voxel_selection(source, target, mask, mask, erode=0)
    interior = voxel_selection(source, target, mask, mask)  # default: one voxel
    assert edges.counts["interior"] == edges.n_voxels == 5 * 5 * 3
    assert interior.counts["window"] == 75 and interior.n_voxels == 3 * 3 * 3
    assert interior.mask[3:6, 3:6, :].all()  # first and last slices kept: FOV border
    with pytest.raises(ValueError, match="erode"):
        voxel_selection(source, target, mask, mask, erode=-1)


def test_too_few_voxels_message_counts_each_step():
    rng = np.random.default_rng(1)
    c00 = np.full((6, 6, 2), 0.4)
    c00[:2, :2] = 1.2
    source = coeff_maps(c00, rng)
    mask = np.ones(c00.shape, dtype=bool)
    with pytest.raises(TrainingDataError) as info:
        select_training_voxels(source, source, mask, mask, min_voxels=10)
    message = str(info.value)
    assert "only 2 training voxel(s), 10 needed" in message
    assert "72 in the grid, 72 inside all masks, 72 finite, 8 with 1 < C00 < 2" in message
    assert "2 off the edges" in message and "--phantom-erode" in message


def test_percentile_rule():
    rng = np.random.default_rng(2)
    c00 = np.linspace(0.2, 3.0, 60).reshape(5, 4, 3)
    source = coeff_maps(c00, rng)
    mask = np.ones(c00.shape, dtype=bool)
    invivo = rng.uniform(0.5, 2.5, 5000)
    threshold = np.percentile(invivo, 30.0)
    selected = select_training_voxels(
        source, source, mask, mask, rule="percentile", invivo_c00=invivo, min_voxels=1, erode=0,
        partial_volume=False,
    )
    np.testing.assert_array_equal(selected, c00 > threshold)
    assert c00_bounds("percentile", invivo_c00=invivo)[0] == pytest.approx(threshold)
    with pytest.raises(ValueError, match="invivo_c00"):
        select_training_voxels(source, source, mask, mask, rule="percentile")
    with pytest.raises(ValueError, match="unknown voxel rule"):
        select_training_voxels(source, source, mask, mask, rule="median")


def test_rescans_must_be_inside_and_finite():
    rng = np.random.default_rng(3)
    c00 = np.full((3, 3, 2), 1.5)
    source = coeff_maps(c00, rng)
    mask = np.ones(c00.shape, dtype=bool)
    rescan = source.copy()
    rescan[0, 0, 0, 3] = np.inf
    rescan_mask = mask.copy()
    rescan_mask[1, 1, 1] = False
    selection = voxel_selection(
        source, source, mask, mask, rescans=[(rescan, rescan_mask)], erode=0
    )
    assert selection.counts["mask"] == 17 and selection.counts["finite"] == 16
    with pytest.raises(ValueError, match="equal shapes"):
        voxel_selection(source, source[..., :15], mask, mask)


def scan(subject: str, session: str, acq: str | None, bval: float) -> PhantomScan:
    name = Path(f"sub-{subject}_ses-{session}_acq-{acq}_{bval:g}.nii.gz")
    site = session.rstrip("0123456789")
    return PhantomScan(subject, session, site, acq, bval, name, name, name, name, 8)


def pairs_of(phantoms, protocols) -> list[PhantomPair]:
    out = []
    for phantom in phantoms:
        for acq, bval in protocols:
            for src in ("GE1", "GE2"):
                out.append(
                    PhantomPair(
                        phantom,
                        bval,
                        acq,
                        scan(phantom, src, acq, bval),
                        scan(phantom, "Prisma1", acq, bval),
                    )
                )
    return out


def test_block_validation_spreads_over_every_part_of_the_grid():
    grid = (40, 40, 8)
    val = block_validation(grid, block=4, fraction=0.2, seed=0)
    assert val.shape == grid and 0.1 < val.mean() < 0.3
    # whole 4-voxel blocks: constant within each block
    blocks = val.reshape(10, 4, 10, 4, 2, 4)
    assert np.all(blocks.min(axis=(1, 3, 5)) == blocks.max(axis=(1, 3, 5)))
    # a 5-voxel vial anywhere has training voxels; deterministic for a seed
    for x in range(0, 35, 5):
        assert (~val[x : x + 5, x : x + 5]).any()
    np.testing.assert_array_equal(val, block_validation(grid, block=4, fraction=0.2, seed=0))
    assert (val != block_validation(grid, block=4, fraction=0.2, seed=1)).any()


def test_scaled_erosion_keeps_the_core_of_small_vials():
    sel = np.zeros((30, 30, 4), bool)
    sel[2:12, 2:12] = True  # a 10-voxel vial: one voxel peeled
    sel[20:23, 20:23] = True  # a 3-voxel vial: only its centre line is deep enough
    sel[26:28, 2:4] = True  # a 2-voxel vial: nothing is deeper, all kept
    out = scaled_erosion(sel, 1)
    assert out[3:11, 3:11].all() and not out[2, 2:12].any()
    assert out[21, 21].all() and out[20:23, 20:23].sum() == 4
    assert out[26:28, 2:4].all()
    np.testing.assert_array_equal(scaled_erosion(sel, 0), sel)
    rows = component_counts(sel, out)
    assert [r["voxels"] for r in rows] == [400, 36, 16]
    assert [r["kept"] for r in rows] == [256, 4, 16]


def test_partial_volume_voxels_flag_walls_between_two_selected_materials():
    rng = np.random.default_rng(0)
    c00 = np.full((20, 20, 4), 1.2) + rng.normal(0, 0.01, (20, 20, 4))
    c00[5:15, 5:15] = 1.8 + rng.normal(0, 0.01, (10, 10, 4))  # a vial in a selected bath
    c00[5:15, 4] = 1.5  # the partial-volume wall
    flagged = partial_volume_voxels(c00, np.ones(c00.shape, bool))
    assert flagged[5:15, 4].mean() > 0.9
    assert flagged[8:12, 8:12].mean() < 0.05 and flagged[0:3, 0:3].mean() < 0.05


# --- gather_pair_arrays on small NIfTIs ---------------------------------------------

GRID = (24, 24, 12)
AFFINE = np.diag([-2.0, 2.0, 3.0, 1.0])
AFFINE[:3, 3] = [23.0, -23.0, -16.5]


def phantom_images(shift_mm=(0.0, 0.0, 0.0), gain=1.0, noise=0.0, seed=0):
    """b0, SH map (45) and mask of an asymmetric object moved by ``shift_mm``."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in GRID], indexing="ij"), -1)
    world = ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3] - np.asarray(shift_mm)
    rng = np.random.default_rng(seed)

    def gauss(centre, width):
        return np.exp(-0.5 * (((world - np.asarray(centre)) / np.asarray(width)) ** 2).sum(-1))

    body = gauss((0, 0, 0), (12, 9, 20))
    spots = gauss((6, -4, 0), (3, 3, 20)) + 0.7 * gauss((-5, 5, 0), (2, 4, 20))
    b0 = 1000 * body + 600 * spots + rng.normal(0, noise * 10, GRID)
    coeffs = np.empty((*GRID, 45))
    coeffs[..., 0] = 0.4 + 1.2 * body + 0.5 * spots
    for k in range(1, 45):
        coeffs[..., k] = 0.05 * np.sin(0.1 * k * world[..., 0] + 0.07 * world[..., 1] + k)
    coeffs = gain * coeffs + rng.normal(0, noise * 0.01, coeffs.shape)
    return b0, coeffs, body > 0.2


def write_scan(
    folder: Path, session: str, b0, coeffs, mask, *, order: int = 8, dw=None
) -> PhantomScan:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"sub-phantom01_ses-{session}_acq-b1000"
    if dw is None:  # the attenuation the SH map describes: C00 = 2 sqrt(pi) mean E
        dw = b0 * np.clip(coeffs[..., 0], 0, None) / (2 * np.sqrt(np.pi))
    dwi = np.stack([b0, b0 * 1.01, 0.95 * dw, 1.05 * dw], -1).astype(np.float32)
    files = {
        "dwi": Path(f"{stem}_space-dwi_desc-preproc_dwi.nii.gz"),
        "bval": Path(f"{stem}_space-dwi_desc-preproc_dwi.bval"),
        "mask": Path(f"{stem}_space-dwi_desc-brain_mask.nii.gz"),
        "sh": Path(f"{stem}_model-sh_param-coeffs_dwimap.nii.gz"),
    }
    nb.save(nb.Nifti1Image(dwi, AFFINE), files["dwi"])
    files["bval"].write_text("0 5 1000 1000\n")
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), AFFINE), files["mask"])
    n = sh.n_coeffs(order)
    nb.save(nb.Nifti1Image(coeffs[..., :n].astype(np.float32), AFFINE), files["sh"])
    site = session.rstrip("0123456789")
    return PhantomScan(
        "phantom01", session, site, "b1000", 1000.0,
        files["sh"], files["mask"], files["dwi"], files["bval"], order,
    )  # fmt: skip


@pytest.fixture(scope="module")
def nifti_pair(tmp_path_factory) -> PhantomPair:
    folder = tmp_path_factory.mktemp("pair")
    source = write_scan(folder, "GE1", *phantom_images(noise=1.0, seed=1))
    rescan = write_scan(folder, "GE2", *phantom_images((0.6, -0.4, 0.0), noise=1.0, seed=2))
    target = write_scan(folder, "Prisma1", *phantom_images((2.0, 1.0, 0.0), gain=1.1, seed=3))
    target_rescan = write_scan(
        folder, "Prisma2", *phantom_images((-1.0, 0.5, 0.0), gain=1.1, seed=4), order=6
    )
    return PhantomPair("phantom01", 1000.0, "b1000", source, target, rescan, target_rescan)


def test_load_mean_b0(nifti_pair):
    b0, affine = load_mean_b0(nifti_pair.source.preproc_dwi, nifti_pair.source.bval_file)
    dwi = np.asarray(nb.load(nifti_pair.source.preproc_dwi).dataobj)
    np.testing.assert_allclose(b0, dwi[..., :2].mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(affine, AFFINE)


def test_gather_pair_arrays_aligns_the_scans(nifti_pair):
    cache = RegistrationCache()
    arrays = gather_pair_arrays(nifti_pair, registrations=cache)
    n = arrays.n_voxels
    assert not arrays.excluded
    assert arrays.source.shape == arrays.target.shape == arrays.source_rescan.shape == (n, 45)
    assert arrays.target_rescan.shape == (n, 45) and arrays.source.dtype == np.float32
    # smooth blobs, not vials: the partial-volume test drops most of their slopes
    assert n == arrays.counts["homogeneous"] > 0 and arrays.counts["interior"] >= 100
    assert list(arrays.counts) == [
        "grid", "mask", "finite", "window", "interior", "homogeneous"
    ]  # fmt: skip
    assert arrays.validation.shape == (n,) and 0 < arrays.validation.sum() < n
    assert all(r.accepted for r in arrays.registrations.values())
    assert set(arrays.registrations) == {"target", "target_rescan", "source_rescan"}
    np.testing.assert_allclose(
        arrays.registrations["target"].translation_mm, [2.0, 1.0, 0.0], atol=0.5
    )
    # after registration the target is the source object scaled by the site gain
    ratio = arrays.target[:, 0] / arrays.source[:, 0]
    assert np.median(np.abs(ratio - 1.1)) < 0.02
    assert np.median(np.abs(arrays.source_rescan[:, 0] - arrays.source[:, 0])) < 0.02
    # the order-6 rescan is zero-padded to 45 coefficients
    assert not arrays.target_rescan[:, 28:].any() and arrays.target_rescan[:, 1:28].any()
    assert len(cache.results) == 3  # one registration per scan pair
    again = gather_pair_arrays(nifti_pair, registrations=cache)
    np.testing.assert_array_equal(again.target, arrays.target)


def test_gather_pair_arrays_excludes_an_unregistrable_pair(nifti_pair, tmp_path):
    b0, coeffs, mask = phantom_images()
    noise = np.abs(np.random.default_rng(5).normal(0, 300, GRID))
    bad_target = write_scan(tmp_path, "Prisma9", noise, coeffs, mask, dw=noise[::-1] * 0.3)
    bad = PhantomPair("phantom01", 1000.0, "b1000", nifti_pair.source, bad_target)
    arrays = gather_pair_arrays(bad)
    assert arrays.excluded and arrays.n_voxels == 0
    assert "correlation" in arrays.excluded or "empty" in arrays.excluded
    assert not arrays.registrations["target"].accepted
