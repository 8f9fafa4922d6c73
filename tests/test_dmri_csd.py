"""Batched CSD against dipy's per-voxel ConstrainedSphericalDeconvModel."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
from scipy.spatial.transform import Rotation

from bids_harmony.dmri import csd
from tests.conftest import hemisphere

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

EVALS = np.array([1.7e-3, 0.3e-3, 0.3e-3])
RESPONSE = (EVALS, 100.0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(777)


def table(n_dirs=60, bval=1000.0):
    bvals = np.r_[0.0, 0.0, np.full(n_dirs, bval)]
    bvecs = np.r_[np.zeros((2, 3)), hemisphere(n_dirs)]
    return gradient_table(bvals, bvecs=bvecs)


def fibres(gtab, rng, n, *, crossing=0.5, snr=30.0):
    """Single and crossing prolate tensors, random orientations, Rician noise."""
    rot = Rotation.random(2 * n, random_state=rng).as_matrix()
    g, b = gtab.bvecs, gtab.bvals
    out = np.empty((n, b.size))
    for v in range(n):
        s = np.zeros(b.size)
        weights = (0.5, 0.5) if rng.random() < crossing else (1.0, 0.0)
        for w, r in zip(weights, rot[2 * v : 2 * v + 2], strict=True):
            tensor = r @ np.diag(EVALS) @ r.T
            s += w * np.exp(-b * np.einsum("ni,ij,nj->n", g, tensor, g))
        out[v] = 100.0 * s
    sigma = 100.0 / snr
    return np.hypot(out + rng.normal(0, sigma, out.shape), rng.normal(0, sigma, out.shape))


def test_agrees_with_dipy(rng):
    gtab = table()
    signal = fibres(gtab, rng, 300)
    ref = ConstrainedSphericalDeconvModel(gtab, RESPONSE, sh_order_max=8).fit(signal)
    model = csd.BatchedCSD(gtab, RESPONSE, sh_order=8)
    coeffs = model.fit(signal[:, model.dwi_index], n_threads=1, chunk_size=128)
    gfa = csd.sh_gfa(coeffs)
    np.testing.assert_allclose(gfa, ref.gfa, atol=2e-3)
    assert np.median(np.abs(gfa - ref.gfa)) < 1e-5
    close = np.all(np.isclose(coeffs, ref.shm_coeff, rtol=1e-4, atol=1e-6), axis=1)
    assert close.mean() > 0.95  # a few voxels take another path near the threshold


def test_threads_and_chunks_do_not_change_the_result(rng):
    gtab = table()
    dwi = fibres(gtab, rng, 200)[:, 2:]
    model = csd.BatchedCSD(gtab, RESPONSE)
    one = model.fit(dwi, n_threads=1, chunk_size=200)
    many = model.fit(dwi, n_threads=2, chunk_size=64)
    np.testing.assert_allclose(many, one, atol=1e-4 * np.abs(one).max())


def test_zero_signal_and_scale(rng):
    gtab = table()
    dwi = fibres(gtab, rng, 20)[:, 2:]
    dwi[3] = 0.0
    model = csd.BatchedCSD(gtab, RESPONSE)
    coeffs = model.fit(dwi, n_threads=1)
    assert not coeffs[3].any() and csd.sh_gfa(coeffs)[3] == 0.0
    np.testing.assert_allclose(model.fit(5.0 * dwi, n_threads=1), 5.0 * coeffs, rtol=1e-6)


def test_isotropic_signal_has_zero_gfa():
    gtab = table()
    dwi = 100.0 * np.exp(-1000.0 * 0.8e-3) * np.ones((3, 60))
    coeffs = csd.BatchedCSD(gtab, RESPONSE).fit(dwi, n_threads=1)
    np.testing.assert_allclose(csd.sh_gfa(coeffs), 0.0, atol=1e-3)


def test_lower_order(rng):
    gtab = table(n_dirs=30)
    signal = fibres(gtab, rng, 50, snr=50)
    model = csd.BatchedCSD(gtab, RESPONSE, sh_order=6)
    coeffs = model.fit(signal[:, model.dwi_index], n_threads=1)
    ref = ConstrainedSphericalDeconvModel(gtab, RESPONSE, sh_order_max=6).fit(signal)
    assert coeffs.shape == (50, 28)
    np.testing.assert_allclose(csd.sh_gfa(coeffs), ref.gfa, atol=2e-3)


def test_sh_gfa_matches_dipy(rng):
    gtab = table()
    ref = ConstrainedSphericalDeconvModel(gtab, RESPONSE).fit(fibres(gtab, rng, 10))
    np.testing.assert_allclose(csd.sh_gfa(ref.shm_coeff), ref.gfa, rtol=1e-6)


def test_estimate_response(rng, caplog):
    gtab = table()
    signal = fibres(gtab, rng, 400, crossing=0.0, snr=100)
    fa = np.full(400, 0.8)
    (evals, s0), n_used = csd.estimate_response(gtab, signal, fa)
    assert n_used == 400
    np.testing.assert_allclose(evals, EVALS, rtol=0.05)
    assert s0 == pytest.approx(100.0, rel=0.02)
    with caplog.at_level(logging.WARNING, logger="bids_harmony.dmri.csd"):
        (evals, s0), n_used = csd.estimate_response(gtab, signal[:10], fa[:10] * 0.1)
    assert n_used == 0 and "default" in caplog.text
    np.testing.assert_allclose(evals, csd.DEFAULT_RESPONSE_EVALS)
