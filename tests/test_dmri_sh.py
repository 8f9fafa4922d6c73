"""SH fit and reconstruction in the HARP convention (closed-form signals)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.core.sphere import Sphere
from dipy.reconst.shm import QballModel, sf_to_sh
from scipy.spatial.transform import Rotation

from bids_harmony.dmri import sh
from bids_harmony.errors import BadGradientsError, BadImageError
from tests.conftest import hemisphere

EVALS = np.array([1.7e-3, 0.3e-3, 0.3e-3])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def tensor_attenuation(bvecs, bval, rotation=None, evals=EVALS):
    """Closed-form single-tensor attenuation exp(-b gᵀ D g)."""
    rot = np.eye(3) if rotation is None else rotation
    tensor = rot @ np.diag(evals) @ rot.T
    return np.exp(-bval * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))


def run_table(n_dirs=60, shells=(1000.0, 2000.0), b0s=(0.0, 5.0)):
    dirs = hemisphere(n_dirs)
    bvals = np.r_[np.asarray(b0s), np.repeat(shells, n_dirs)]
    bvecs = np.r_[np.zeros((len(b0s), 3)), np.tile(dirs, (len(shells), 1))]
    return bvals, bvecs


def tensor_volume(bvals, bvecs, rng, shape=(3, 4, 2), s0=800.0):
    """Voxels with random single-tensor orientations; b0s equal to s0."""
    n_vox = int(np.prod(shape))
    rots = Rotation.random(n_vox, random_state=rng).as_matrix()
    signal = np.empty((n_vox, bvals.size))
    for v in range(n_vox):
        tensor = rots[v] @ np.diag(EVALS) @ rots[v].T
        signal[v] = s0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))
    return signal.reshape(shape + (bvals.size,))


def test_band_layout_and_counts():
    assert sh.n_coeffs(8) == 45 and sh.n_coeffs(0) == 1
    assert sh.band_orders(8) == [0, 2, 4, 6, 8]
    expected = [slice(0, 1), slice(1, 6), slice(6, 15), slice(15, 28), slice(28, 45)]
    assert sh.band_slices(8) == expected
    assert sh.order_from_n_coeffs(45) == 8
    with pytest.raises(ValueError):
        sh.order_from_n_coeffs(44)
    with pytest.raises(ValueError):
        sh.n_coeffs(3)


@pytest.mark.parametrize(
    ("n_dirs", "order"), [(64, 8), (45, 8), (44, 6), (30, 6), (28, 6), (27, 4), (15, 4), (6, 2)]
)
def test_order_for_directions(n_dirs, order):
    assert sh.sh_order_for_directions(n_dirs) == order


def test_order_for_too_few_directions():
    with pytest.raises(BadGradientsError, match="at least 6"):
        sh.sh_order_for_directions(5)
    assert sh.sh_order_for_directions(60, max_order=4) == 4


def test_rish_features(rng):
    coeffs = rng.normal(size=(2, 3, 45)).astype(np.float32)
    rish = sh.rish_features(coeffs)
    assert rish.shape == (2, 3, 5) and rish.dtype == np.float32
    for band, sl in enumerate(sh.band_slices(8)):
        np.testing.assert_allclose(rish[..., band], (coeffs[..., sl] ** 2).sum(-1), rtol=1e-6)
    assert sh.rish_features(coeffs[..., :15]).shape == (2, 3, 3)
    with pytest.raises(ValueError):
        sh.rish_features(coeffs, order=6)


def test_rish_is_rotation_invariant(rng):
    dirs = hemisphere(90)
    model = sh.ShellSHModel(dirs, 1000.0)
    rots = Rotation.random(3, random_state=rng).as_matrix()
    rish = [
        sh.rish_features(model.fit(tensor_attenuation(dirs, 1000.0, r)[None], np.ones(1)))[0]
        for r in rots
    ]
    np.testing.assert_allclose(rish[1], rish[0], rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(rish[2], rish[0], rtol=2e-3, atol=1e-6)


def test_normalize_shell_clips_and_handles_zero_b0():
    signal = np.array([[50.0, 120.0, -3.0], [10.0, 10.0, 10.0]])
    with np.errstate(all="raise"):
        e = sh.normalize_shell(signal, np.array([100.0, 0.0]))
    np.testing.assert_allclose(e, [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert e.dtype == np.float32


def test_power_map_is_exact_for_monoexponential():
    dirs = hemisphere(30)
    e2000 = tensor_attenuation(dirs, 2000.0)
    np.testing.assert_allclose(sh.power_map(e2000, 2000.0), tensor_attenuation(dirs, 1000.0))
    np.testing.assert_allclose(sh.power_map(e2000, 1000.0), e2000)
    with pytest.raises(BadGradientsError):
        sh.power_map(e2000, 0.0)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_basis_is_the_authors_qball_basis():
    """HARP's test.py rebuilds signals with QballModel(gtab, sh_order=8).B."""
    bvals, bvecs = run_table(60, shells=(1000.0,))
    qball = QballModel(gradient_table(bvals, bvecs=bvecs), sh_order_max=8)
    model = sh.ShellSHModel(bvecs[2:], 1000.0)
    np.testing.assert_allclose(model.basis_matrix, qball.B, atol=1e-12)
    assert sh.SH_LEGACY is True and sh.SH_BASIS == "descoteaux07"


@pytest.mark.parametrize("bval", [1000.0, 2000.0])
def test_round_trip_single_tensor(bval, rng):
    dirs = hemisphere(60)
    rots = Rotation.random(5, random_state=rng).as_matrix()
    signal = 500.0 * np.stack([tensor_attenuation(dirs, bval, r) for r in rots])
    b0 = np.full(5, 500.0)
    model = sh.ShellSHModel(dirs, bval)
    coeffs = model.fit(signal, b0)
    assert coeffs.shape == (5, 45) and coeffs.dtype == np.float32
    np.testing.assert_allclose(model.predict(coeffs, b0), signal, atol=0.5e-3 * 500)
    new_dirs = Rotation.random(random_state=rng).apply(hemisphere(200))
    other = sh.ShellSHModel(new_dirs, bval)
    truth = 500.0 * np.stack([tensor_attenuation(new_dirs, bval, r) for r in rots])
    np.testing.assert_allclose(other.predict(coeffs, b0), truth, atol=0.01 * 500)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_fit_agrees_with_dipy_sf_to_sh(rng):
    dirs = hemisphere(64)
    signal = np.stack(
        [tensor_attenuation(dirs, 2000.0, r) for r in Rotation.random(4, random_state=rng)
         .as_matrix()]
    ) + rng.normal(0, 0.01, (4, 64))  # fmt: skip
    ours = sh.ShellSHModel(dirs, 2000.0).fit(signal, np.ones(4))
    expected = sf_to_sh(
        np.sqrt(np.clip(signal, 0, 1)), Sphere(xyz=dirs), sh_order_max=8,
        basis_type="descoteaux07", legacy=True, smooth=sh.LB_LAMBDA,
    )  # fmt: skip
    np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_model_rejects_bad_tables():
    with pytest.raises(BadGradientsError):
        sh.ShellSHModel(hemisphere(30), 1000.0, sh_order=8)
    with pytest.raises(BadGradientsError):
        sh.ShellSHModel(hemisphere(60), 0.0)
    with pytest.raises(BadGradientsError):
        sh.ShellSHModel(np.zeros((60, 3)), 1000.0)


def test_fit_shells_and_reconstruct(rng, caplog):
    bvals, bvecs = run_table(60)
    bvals = np.r_[bvals, np.full(30, 3000.0), np.full(4, 500.0)]
    bvecs = np.r_[bvecs, hemisphere(30), hemisphere(4)]
    data = tensor_volume(bvals, bvecs, rng)
    data[..., 1] *= 0.9  # two b0s: their mean is the reference
    data[0, 0, 0] = 0.0
    mask = np.ones(data.shape[:3], bool)
    mask[2, 3, 1] = False
    with caplog.at_level(logging.WARNING, logger="bids_harmony.dmri.sh"):
        fits = sh.fit_shells(data, bvals, bvecs, mask=mask)
    assert "lowered from 8 to 6" in caplog.text and "b500 skipped" in caplog.text
    assert [(f.label, f.order, f.lowered) for f in fits] == [
        ("b1000", 8, False), ("b2000", 8, False), ("b3000", 6, True)
    ]  # fmt: skip
    assert fits[2].coeffs.shape == (3, 4, 2, 28) and fits[0].coeffs.dtype == np.float32
    assert not fits[0].coeffs[2, 3, 1].any() and not fits[0].coeffs[0, 0, 0].any()
    e = data[1, 1, 1, 2:62] / data[1, 1, 1, :2].mean()
    single = sh.ShellSHModel(bvecs[2:62], 1000.0).fit(e[None], np.ones(1))[0]
    np.testing.assert_allclose(fits[0].coeffs[1, 1, 1], single, atol=1e-5)

    with caplog.at_level(logging.WARNING, logger="bids_harmony.dmri.sh"):
        rec = sh.reconstruct_dwi(fits, bvals, bvecs, data)
    assert "copied unchanged" in caplog.text
    assert rec.shape == data.shape and rec.dtype == np.float32
    np.testing.assert_array_equal(rec[..., :2], data[..., :2].astype(np.float32))
    np.testing.assert_array_equal(rec[..., -4:], data[..., -4:].astype(np.float32))
    inside = mask.copy()
    inside[0, 0, 0] = False
    b0 = data[..., :2].mean(-1, keepdims=True)
    np.testing.assert_allclose(rec[inside][:, 2:-4], data[inside][:, 2:-4], atol=2e-3 * b0.max())
    assert not rec[0, 0, 0].any()
    with pytest.raises(BadGradientsError):
        sh.reconstruct_dwi(fits, bvals, bvecs, data[..., :2])  # the b500 volumes are missing
    only_b0 = sh.reconstruct_dwi(fits[:2], bvals[:122], bvecs[:122], data[..., :2])
    np.testing.assert_allclose(only_b0, rec[..., :122], rtol=1e-6)


def test_fortran_ordered_input_gives_the_same_fit(rng):
    bvals, bvecs = run_table(48, shells=(1000.0,))
    data = tensor_volume(bvals, bvecs, rng, shape=(3, 2, 2))
    mask = rng.random(data.shape[:3]) > 0.3
    c_fit = sh.fit_shells(data, bvals, bvecs, mask=mask)[0]
    f_fit = sh.fit_shells(np.asfortranarray(data), bvals, bvecs, mask=mask)[0]
    np.testing.assert_allclose(c_fit.coeffs, f_fit.coeffs, atol=1e-6)
    rec_c = sh.reconstruct_dwi([c_fit], bvals, bvecs, data)
    rec_f = sh.reconstruct_dwi([f_fit], bvals, bvecs, np.asfortranarray(data))
    np.testing.assert_allclose(rec_c, rec_f, rtol=1e-5)


def test_fit_shells_errors():
    bvals, bvecs = run_table(10, shells=(1000.0,))
    with pytest.raises(BadImageError):
        sh.fit_shells(np.ones((2, 2, 12)), bvals, bvecs)
    with pytest.raises(BadGradientsError):
        sh.fit_shells(np.ones((2, 2, 2, 11)), bvals, bvecs)
    bvals4, bvecs4 = run_table(4, shells=(1000.0,))
    with pytest.raises(BadGradientsError, match="no diffusion-weighted shell"):
        sh.fit_shells(np.ones((2, 2, 2, 6)), bvals4, bvecs4)
    with pytest.raises(BadImageError):
        sh.fit_shells(np.ones((2, 2, 2, 12)), bvals, bvecs, mask=np.ones((2, 2), bool))


def test_pad_coeffs():
    padded = sh.pad_coeffs(np.ones((2, 28)))
    assert padded.shape == (2, 45) and padded[:, 28:].sum() == 0
