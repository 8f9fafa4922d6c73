"""DTI and CSD-GFA maps on closed-form tensors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel
from dipy.reconst.dti import TensorModel
from scipy.spatial.transform import Rotation

from bids_harmony.dmri import metrics
from bids_harmony.dmri.gradients import group_shells
from bids_harmony.errors import BadGradientsError
from tests.conftest import hemisphere

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

PROLATE = (1.7e-3, 0.3e-3, 0.3e-3)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(4242)


def table(shells=(1000.0, 2000.0), n_dirs=60):
    bvals = np.r_[0.0, 5.0, np.repeat(shells, n_dirs)]
    bvecs = np.r_[np.zeros((2, 3)), np.tile(hemisphere(n_dirs), (len(shells), 1))]
    return bvals, bvecs


def tensor_signal(bvals, bvecs, evals, rotation=None, s0=100.0):
    rot = np.eye(3) if rotation is None else rotation
    tensor = rot @ np.diag(evals) @ rot.T
    return s0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))


def test_choose_shell():
    shells = group_shells(np.array([0, 700, 700, 1300, 1300, 3000]))
    assert metrics.choose_shell(shells).label == "b700"  # tie: the lower one
    assert metrics.choose_shell(shells, 2500).label == "b3000"
    with pytest.raises(BadGradientsError):
        metrics.choose_shell([])


def test_known_tensor_fa_md(rng):
    bvals, bvecs = table()
    rots = Rotation.random(4, random_state=rng).as_matrix()
    voxels = [tensor_signal(bvals, bvecs, PROLATE, r) for r in rots]
    voxels += [tensor_signal(bvals, bvecs, (0.8e-3,) * 3), np.zeros(bvals.size)]
    data = np.stack(voxels).reshape(3, 2, 1, -1)
    mask = np.ones((3, 2, 1), bool)
    mask[2, 1, 0] = False
    maps = metrics.tensor_metrics(data, bvals, bvecs, mask=mask)
    assert set(maps) == {"fa", "md", "ad", "rd"}
    fa, md = maps["fa"].ravel(), maps["md"].ravel()
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in maps.values())
    np.testing.assert_allclose(fa[:4], 0.7990, atol=1e-3)  # FA of (1.7, 0.3, 0.3)e-3
    np.testing.assert_allclose(md[:4], 0.7667e-3, rtol=1e-3)
    np.testing.assert_allclose(maps["ad"].ravel()[:4], 1.7e-3, rtol=1e-3)
    np.testing.assert_allclose(maps["rd"].ravel()[:4], 0.3e-3, rtol=1e-3)
    assert fa[4] < 1e-3 and md[4] == pytest.approx(0.8e-3, rel=1e-3)
    assert fa[5] == 0 and md[5] == 0  # outside the mask


def test_shell_selection():
    """Biexponential signal: the apparent MD depends on the shell used."""
    bvals, bvecs = table(shells=(1000.0, 3000.0))
    signal = 0.7 * tensor_signal(bvals, bvecs, (1.0e-3,) * 3) + 0.3 * tensor_signal(
        bvals, bvecs, (0.1e-3,) * 3
    )
    data = signal.reshape(1, 1, 1, -1)
    md1000 = metrics.tensor_metrics(data, bvals, bvecs)["md"].item()
    md3000 = metrics.tensor_metrics(data, bvals, bvecs, shell=3000)["md"].item()
    b = bvals[2]
    assert md1000 == pytest.approx(-np.log(signal[2] / 100.0) / b, rel=1e-4)
    assert md3000 < md1000
    with pytest.raises(BadGradientsError, match="no shell at b=2000"):
        metrics.tensor_metrics(data, bvals, bvecs, shell=2000)


def test_wls_matches_dipy(rng):
    bvals, bvecs = table(shells=(1000.0,))
    gtab = gradient_table(bvals, bvecs=bvecs)
    rots = Rotation.random(200, random_state=rng).as_matrix()
    evals = rng.uniform(0.2e-3, 2.0e-3, (200, 3))
    signal = np.stack([tensor_signal(bvals, bvecs, e, r) for e, r in zip(evals, rots, strict=True)])
    noisy = np.hypot(signal + rng.normal(0, 4, signal.shape), rng.normal(0, 4, signal.shape))
    noisy[:5, 10:20] = 0.0  # signal dropouts hit the minimum-signal floor
    ours = metrics.wls_tensor_evals(noisy, gtab)
    ref = TensorModel(gtab, fit_method="WLS").fit(noisy).evals
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-12)


def test_gfa_single_fibre_vs_isotropic(rng):
    bvals, bvecs = table(shells=(1000.0,))
    rots = Rotation.random(300, random_state=rng).as_matrix()
    fibres = np.stack([tensor_signal(bvals, bvecs, PROLATE, r) for r in rots])
    iso = np.stack([tensor_signal(bvals, bvecs, (0.9e-3,) * 3)] * 20)
    data = np.concatenate([fibres, iso]).reshape(32, 10, 1, -1)
    gfa = metrics.gfa_csd(data, bvals, bvecs, n_threads=1).ravel()
    assert gfa.dtype == np.float32
    assert gfa[:300].min() > 0.5
    assert gfa[300:].max() < 0.02


def test_gfa_agrees_with_dipy_and_respects_mask(rng):
    bvals, bvecs = table(shells=(1000.0, 2000.0))
    rots = Rotation.random(120, random_state=rng).as_matrix()
    half = [
        0.5 * tensor_signal(bvals, bvecs, PROLATE, r) + 0.5 * tensor_signal(bvals, bvecs, PROLATE)
        for r in rots
    ]
    clean = np.stack(half)
    noisy = np.hypot(clean + rng.normal(0, 3, clean.shape), rng.normal(0, 3, clean.shape))
    data = noisy.reshape(12, 10, 1, -1)
    mask = np.ones((12, 10, 1), bool)
    mask[0] = False
    response = (np.array(PROLATE), 100.0)
    result = metrics.csd_fodf(data, bvals, bvecs, mask=mask, shell=2000, response=response)
    gfa = metrics.gfa_csd(data, bvals, bvecs, mask=mask, shell=2000, response=response)
    assert result.order == 8 and result.bval == 2000 and result.coeffs.shape == (12, 10, 1, 45)
    sel = np.r_[0, 1, np.flatnonzero(bvals == 2000)]
    gtab = gradient_table(bvals[sel], bvecs=bvecs[sel])
    ref = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=8).fit(noisy[:, sel])
    np.testing.assert_allclose(gfa.reshape(-1)[10:], ref.gfa[10:], atol=0.02)
    assert not gfa[0].any()


def test_gfa_fallback_and_lowered_order(rng, caplog):
    bvals, bvecs = table(shells=(1000.0,), n_dirs=30)
    iso = np.stack([tensor_signal(bvals, bvecs, (0.9e-3,) * 3)] * 8).reshape(2, 2, 2, -1)
    iso = iso + rng.normal(0, 0.5, iso.shape)
    with caplog.at_level(logging.WARNING):
        result = metrics.csd_fodf(iso, bvals, bvecs, n_threads=1)
    assert result.n_response_voxels == 0 and result.order == 6
    assert "default single-fibre response" in caplog.text
    assert "order lowered from 8 to 6" in caplog.text
    assert np.isfinite(metrics.gfa_csd(iso, bvals, bvecs, fa=np.zeros((2, 2, 2)))).all()
