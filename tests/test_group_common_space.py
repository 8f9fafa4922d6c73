"""Common FA space of the group level: template, registration, warping (antspyx)."""

from __future__ import annotations

import json
import re

import nibabel as nb
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_harmony.errors import BidsHarmonyError, RegistrationError
from bids_harmony.registration.common_space import (
    RegistrationFailedError,
    SessionTransform,
    build_fa_template,
    fa_correlation,
    from_template,
    register_to_template,
    to_template,
)

SHAPE = (32, 32, 32)
VOXEL = 3.0


def grid_affine(shape=SHAPE, voxel=VOXEL) -> np.ndarray:
    """Radiological (LAS) affine centred on the world origin."""
    aff = np.diag([-voxel, voxel, voxel, 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def motion(angles_deg=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0), scale=1.0) -> np.ndarray:
    """World transform (mm) that moves the object."""
    mat = np.eye(4)
    mat[:3, :3] = scale * Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    mat[:3, 3] = shift
    return mat


def fa_phantom(move: np.ndarray | None = None, shape=SHAPE, affine=None) -> np.ndarray:
    """FA-like brain: an ellipsoid (FA 0.25) with brighter, asymmetric inner structures."""
    affine = grid_affine(shape) if affine is None else affine
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    inv = np.linalg.inv(np.eye(4) if move is None else move)
    p = world @ inv[:3, :3].T + inv[:3, 3]  # object coordinates of each voxel

    def soft(d2):  # smooth inside-indicator of {d2 < 1}
        return 1.0 / (1.0 + np.exp((np.sqrt(d2) - 1.0) * 12.0))

    brain = soft((p[..., 0] / 36) ** 2 + (p[..., 1] / 42) ** 2 + (p[..., 2] / 33) ** 2)
    callosum = soft((p[..., 0] / 22) ** 2 + ((p[..., 1] - 6) / 8) ** 2 + ((p[..., 2] - 8) / 5) ** 2)
    tract = soft(((p[..., 0] + 15) / 5) ** 2 + ((p[..., 1] + 4) / 20) ** 2 + (p[..., 2] / 6) ** 2)
    knob = soft(
        ((p[..., 0] - 14) / 7) ** 2 + ((p[..., 1] + 20) / 7) ** 2 + ((p[..., 2] + 12) / 7) ** 2
    )
    fa = 0.25 * brain + 0.45 * callosum + 0.35 * tract + 0.3 * knob
    fa[brain < 0.02] = 0.0
    return fa.astype(np.float32)


def save(path, data, affine=None):
    affine = grid_affine(data.shape[:3]) if affine is None else affine
    nb.save(nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))
    return path


def pearson_inside(a, b, mask):
    a = a[mask].astype(float) - a[mask].mean()
    b = b[mask].astype(float) - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """Base FA map (also the template of the registration tests) and moved copies."""
    folder = tmp_path_factory.mktemp("maps")
    return {
        "base": save(folder / "sub-01_ses-a_desc-FA_dwimap.nii.gz", fa_phantom()),
        "shifted": save(
            folder / "sub-02_ses-a_desc-FA_dwimap.nii.gz",
            fa_phantom(motion((0, 0, 6), shift=(6.0, -4.5, 3.0))),
        ),
        "rotated": save(
            folder / "sub-03_ses-a_desc-FA_dwimap.nii.gz",
            fa_phantom(motion((8, -6, 4), shift=(-6.0, 4.0, 3.0), scale=1.04)),
        ),
        "scaled": save(
            folder / "sub-04_ses-a_desc-FA_dwimap.nii.gz", fa_phantom(motion(scale=1.07))
        ),
    }


@pytest.fixture(scope="module")
def shifted_reg(maps, tmp_path_factory):
    out = tmp_path_factory.mktemp("xfm")
    return register_to_template(maps["shifted"], maps["base"], out, transform="Affine"), out


# ----------------------------------------------------------------------------- template


def test_build_template_similar_deterministic_cached(maps, tmp_path):
    files = [maps["base"], maps["rotated"], maps["scaled"]]
    first = build_fa_template(files, tmp_path / "a" / "tpl.nii.gz", tmp_path / "work", seed=3)
    assert first == tmp_path / "a" / "tpl.nii.gz" and first.is_file()
    tpl = nb.load(first)
    assert tpl.shape == SHAPE
    np.testing.assert_allclose(tpl.affine, grid_affine())
    data = tpl.get_fdata()
    assert fa_correlation(data, fa_phantom()) > 0.9
    record = json.loads((tmp_path / "a" / "tpl.json").read_text())
    assert [e["path"] for e in record["inputs"]] == [str(f.resolve()) for f in files]
    assert record["parameters"]["iterations"] == 2
    assert record["parameters"]["transform"] == "Affine"
    assert not list((tmp_path / "work").iterdir())  # scratch removed

    # cached: nothing is rewritten
    stamp = first.stat().st_mtime_ns
    again = build_fa_template(files, first, tmp_path / "work", seed=3)
    assert again == first and first.stat().st_mtime_ns == stamp

    # deterministic: an independent run gives the identical template
    other = build_fa_template(files, tmp_path / "b" / "tpl.nii.gz", tmp_path / "work", seed=3)
    np.testing.assert_array_equal(nb.load(other).get_fdata(), data)


def test_build_template_recomputes_on_changed_input_or_parameters(maps, tmp_path):
    files = [maps["base"], maps["shifted"]]
    out = tmp_path / "tpl.nii.gz"
    build_fa_template(files, out, tmp_path, iterations=0)
    stamp = out.stat().st_mtime_ns
    build_fa_template(files, out, tmp_path, iterations=1)  # parameters changed
    assert out.stat().st_mtime_ns != stamp
    assert json.loads((tmp_path / "tpl.json").read_text())["parameters"]["iterations"] == 1
    stamp = out.stat().st_mtime_ns
    changed = save(tmp_path / "copy.nii.gz", fa_phantom())
    build_fa_template([changed, files[1]], out, tmp_path, iterations=1)  # inputs changed
    assert out.stat().st_mtime_ns != stamp


def test_build_template_rejects_bad_arguments(maps, tmp_path):
    with pytest.raises(ValueError, match="transform"):
        build_fa_template([maps["base"]], tmp_path / "t.nii.gz", tmp_path, transform="Rigid")
    with pytest.raises(ValueError, match="at least one"):
        build_fa_template([], tmp_path / "t.nii.gz", tmp_path)
    with pytest.raises(BidsHarmonyError, match="not found"):
        build_fa_template([tmp_path / "missing.nii.gz"], tmp_path / "t.nii.gz", tmp_path)


# ----------------------------------------------------------------------------- registration


def test_register_recovers_shift_and_is_cached(maps, shifted_reg):
    reg, out = shifted_reg
    assert isinstance(reg, SessionTransform) and not reg.cached
    assert reg.fa_file == maps["shifted"]
    assert reg.correlation_after > 0.95
    assert reg.correlation_after > reg.correlation_before
    stem = "sub-02_ses-a_desc-FA_dwimap_to-template"
    assert [p.name for p in reg.forward] == [f"{stem}_0GenericAffine.mat"]
    assert [p.name for p in reg.inverse] == [f"{stem}_0GenericAffine.mat"]
    assert reg.inverse_invert == (True,)
    assert all(p.is_file() for p in reg.forward)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{stem}_0GenericAffine.mat", f"{stem}.json"]
    )

    template = nb.load(maps["base"]).get_fdata()
    moved = to_template(maps["shifted"], reg, maps["base"])
    assert moved.shape == SHAPE and moved.dtype == np.float32
    assert fa_correlation(template, moved) > 0.95
    # the same map given as an array on the session grid
    array = nb.load(maps["shifted"]).get_fdata(dtype=np.float32)
    np.testing.assert_allclose(to_template(array, reg, maps["base"]), moved, atol=1e-5)

    stamp = reg.forward[0].stat().st_mtime_ns
    again = register_to_template(maps["shifted"], maps["base"], out, transform="Affine")
    assert again.cached
    assert again.forward == reg.forward and again.inverse == reg.inverse
    assert again.correlation_after == pytest.approx(reg.correlation_after)
    assert reg.forward[0].stat().st_mtime_ns == stamp


def test_register_deterministic_and_cache_invalidated_by_parameters(maps, shifted_reg, tmp_path):
    import ants

    first, out = shifted_reg
    twin = register_to_template(maps["shifted"], maps["base"], tmp_path, transform="Affine")
    assert not twin.cached and twin.correlation_after == first.correlation_after
    np.testing.assert_array_equal(
        ants.read_transform(str(twin.forward[0])).parameters,
        ants.read_transform(str(first.forward[0])).parameters,
    )
    reg = register_to_template(maps["shifted"], maps["base"], out, transform="Affine", seed=1)
    assert not reg.cached and reg.correlation_after > 0.95
    record = json.loads(next(out.glob("*.json")).read_text())
    assert record["parameters"]["seed"] == 1
    assert record["inputs"]["fa"]["path"] == str(maps["shifted"].resolve())
    assert set(record["inputs"]["template"]) == {"path", "sha256"}


@pytest.mark.parametrize("transform", ["Affine", "SyN"])
def test_register_rotated_scaled(maps, tmp_path, transform):
    reg = register_to_template(maps["rotated"], maps["base"], tmp_path, transform=transform)
    assert reg.correlation_before < 0.9
    assert reg.correlation_after > 0.95
    if transform == "SyN":
        names = [p.name for p in reg.forward]
        assert names[0].endswith("_1Warp.nii.gz") and names[1].endswith("_0GenericAffine.mat")
        assert reg.inverse[1].name.endswith("_1InverseWarp.nii.gz")
        assert reg.inverse_invert == (True, False)
        back = from_template(nb.load(maps["base"]).get_fdata(), reg, maps["base"])
        native = nb.load(maps["rotated"]).get_fdata()
        assert pearson_inside(back, native, native > 0.05) > 0.95


def test_round_trip_3d_and_4d(maps, shifted_reg):
    reg, _ = shifted_reg
    native = nb.load(maps["shifted"]).get_fdata()  # float64
    inside = native > 0.2  # inside the object, away from the edge
    smooth = np.linspace(0.5, 1.5, SHAPE[0])[:, None, None] * np.ones(SHAPE)
    for x in (native, smooth):
        back = from_template(to_template(x, reg, maps["base"]), reg, maps["base"])
        assert back.shape == SHAPE and back.dtype == np.float64
        assert np.abs(back - x)[inside].mean() < 0.03 * np.abs(x[inside]).max()

    stack = np.stack([native, 2.0 * smooth, native * smooth], axis=-1).astype(np.float32)
    warped = to_template(stack, reg, maps["base"])
    assert warped.shape == (*SHAPE, 3) and warped.dtype == np.float32
    np.testing.assert_allclose(warped[..., 0], to_template(stack[..., 0], reg, maps["base"]))
    back = from_template(warped, reg, maps["base"])
    assert back.shape == (*SHAPE, 3)
    for c in range(3):
        err = np.abs(back[..., c] - stack[..., c])[inside]
        assert err.mean() < 0.03 * np.abs(stack[..., c][inside]).max()

    # nearest neighbour keeps labels
    labels = (native > 0.4).astype(np.float32)
    warped = to_template(labels, reg, maps["base"], interpolator="nearestNeighbor")
    assert set(np.unique(warped)) <= {0.0, 1.0}


def test_warp_rejects_bad_input(maps, shifted_reg):
    reg, _ = shifted_reg
    with pytest.raises(BidsHarmonyError, match="does not match"):
        to_template(np.zeros((10, 10, 10)), reg, maps["base"])
    with pytest.raises(BidsHarmonyError, match="NaN"):
        to_template(np.full(SHAPE, np.nan), reg, maps["base"])
    with pytest.raises(ValueError, match="interpolator"):
        from_template(np.zeros(SHAPE), reg, maps["base"], interpolator="cubic")


def test_register_noise_fails(maps, tmp_path):
    rng = np.random.default_rng(0)
    noise = save(tmp_path / "sub-09_ses-x_desc-FA_dwimap.nii.gz", rng.uniform(0, 1, SHAPE))
    with pytest.raises(RegistrationFailedError) as info:
        register_to_template(noise, maps["base"], tmp_path / "xfm", transform="Affine",
                             min_correlation=0.8)  # fmt: skip
    message = str(info.value)
    assert "sub-09_ses-x_desc-FA_dwimap.nii.gz" in message
    record = json.loads((tmp_path / "xfm" / "sub-09_ses-x_desc-FA_dwimap_to-template.json")
                        .read_text())  # fmt: skip
    for key in ("correlation_before", "correlation_after"):
        assert f"{record[key]:.3f}" in message
    assert len(re.findall(r"-?\d\.\d{3} (?:before|after)", message)) == 2
    assert isinstance(info.value, RegistrationError) and info.value.exit_code == 2
    # the failure is cached too: raised again without a new registration
    with pytest.raises(RegistrationFailedError, match="before"):
        register_to_template(noise, maps["base"], tmp_path / "xfm", transform="Affine",
                             min_correlation=0.8)  # fmt: skip


def test_register_unrelated_image_fails_high_threshold(maps, tmp_path):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    cube = (np.abs(ijk - 8).max(-1) < 5).astype(np.float32)  # a small cube in a corner
    other = save(tmp_path / "cube_FA.nii.gz", cube)
    with pytest.raises(RegistrationFailedError, match=r"cube_FA\.nii\.gz.*before.*after"):
        register_to_template(other, maps["base"], tmp_path, transform="Affine",
                             min_correlation=0.9)  # fmt: skip


def test_average_affine_drops_rotation_and_translation(tmp_path):
    import ants

    from bids_harmony.registration.template import _average_affine_no_rigid

    files = []
    for k, (angles, scales) in enumerate(
        [((10, 0, 5), (1.1, 0.9, 1.0)), ((-4, 8, 0), (0.9, 1.1, 1.2))]
    ):
        matrix = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(scales)
        tx = ants.create_ants_transform(matrix=matrix, center=(1.0, 2.0, 3.0 + 2 * k),
                                        translation=(5.0, -3.0, 1.0))  # fmt: skip
        files.append(str(tmp_path / f"t{k}.mat"))
        ants.write_transform(tx, files[-1])
    avg = _average_affine_no_rigid(files)
    params = np.asarray(avg.parameters)
    np.testing.assert_allclose(params[:9].reshape(3, 3), np.diag([1.0, 1.0, 1.1]), atol=1e-5)
    np.testing.assert_allclose(params[9:], 0.0, atol=1e-9)
    np.testing.assert_allclose(avg.fixed_parameters, (1.0, 2.0, 4.0))
