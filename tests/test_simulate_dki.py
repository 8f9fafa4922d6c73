"""Kurtosis-bearing human signal, its DKI ground truth and the b=3000 option (issue 15)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import get_sphere
from dipy.reconst.dki import DiffusionKurtosisModel
from dipy.sims.voxel import multi_tensor_dki

from bids_harmony.cli.simulate import HUMAN_SIGNALS as CLI_HUMAN_SIGNALS
from bids_harmony.cli.simulate import main as simulate_main
from bids_harmony.simulate import Pose, object_tissue, read_pose, read_spec, simulate_session
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.gradients import effective_gradients
from bids_harmony.simulate.kurtosis import (
    DKI_PARAMS,
    cumulant_tensors,
    dki_metrics,
    mixture_pools,
    true_dki_maps,
)
from bids_harmony.simulate.signal_model import mixture_signal
from bids_harmony.simulate.study import HUMAN_SIGNALS, object_grid, subject_spec

INF = np.inf
KURT = {"human_signal": "kurtosis"}


@pytest.fixture(scope="module")
def demo_brain():
    """Subject 01 of the demo study in the reference pose, and its DKI truth (~2 s)."""
    spec = subject_spec("01", "demo", 0, human_signal="kurtosis")
    tissue = object_tissue(spec, object_grid(spec, "demo"), Pose())
    return tissue, true_dki_maps(tissue)


@pytest.fixture(scope="module")
def study3(tmp_path_factory):
    """A tiny study with the third shell, written by the CLI (one phantom, ~10 s)."""
    root = tmp_path_factory.mktemp("dki") / "bids"
    args = [str(root), "--seed", "5", "--shells", "1000", "2000", "3000", "--scenario", "single"]
    args += ["--human-signal", "kurtosis"]
    assert simulate_main(args) == 0
    return root


def _fractions(tissue):
    out = np.zeros(tissue.grid.shape + tissue.fractions.shape[1:], dtype=np.float32)
    out[tissue.support] = tissue.fractions
    return out


def test_truth_per_tissue_is_plausible(demo_brain):
    tissue, maps = demo_brain
    f = _fractions(tissue)
    wm = f[..., 2:].sum(-1) > 0.95
    coherent = wm & (f[..., 3] < 0.01)  # one fibre population
    gm = (tissue.labels == 2) & (f[..., 1] > 0.9)
    csf = f[..., 0] > 0.98
    assert coherent.sum() > 1000 and gm.sum() > 200 and csf.sum() > 50
    med = {
        name: {k: float(np.median(maps[k][sel])) for k in DKI_PARAMS}
        for name, sel in (("wm", wm), ("gm", gm), ("csf", csf), ("coherent", coherent))
    }
    # measured: WM MK 0.93 AK 0.42 RK 3.1; GM MK 0.76; CSF 0
    assert 0.75 < med["wm"]["mk"] < 1.25
    assert 0.65 < med["gm"]["mk"] < 0.95
    assert med["csf"]["mk"] < 0.01 and med["csf"]["kfa"] < 0.01
    assert med["wm"]["mk"] > med["gm"]["mk"] > med["csf"]["mk"]
    assert med["coherent"]["rk"] > 1.5 * med["coherent"]["ak"] > 0.3
    assert np.mean(maps["rk"][coherent] > maps["ak"][coherent]) > 0.95
    assert med["wm"]["kfa"] > 0.5 > med["gm"]["kfa"]
    # D is the mean tensor of the FA/MD truth maps
    fa, md = tissue.true_fa_md()
    inside = tissue.mask
    assert np.allclose(maps["fa"][inside], fa[inside], atol=1e-5)
    assert np.allclose(maps["md"][inside], md[inside], rtol=1e-5, atol=1e-9)
    assert np.all(maps["mk"][~inside] == 0) and np.all(maps["mk"][inside] >= 0)


def test_cumulant_tensors_match_dipy_multi_tensor_dki():
    rng = np.random.default_rng(3)
    dirs = rng.standard_normal((30, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    gtab = gradient_table(np.r_[0.0, np.full(30, 1000.0)], bvecs=np.r_[np.zeros((1, 3)), dirs])
    mevals = np.array([[2.4e-3, 0.0, 0.0], [1.0e-3, 0.6e-3, 0.6e-3], [3e-3, 3e-3, 3e-3]])
    angles = [(30.0, 40.0), (30.0, 40.0), (0.0, 0.0)]
    fractions = [45.0, 40.0, 15.0]
    _, dt_ref, kt_ref = multi_tensor_dki(
        gtab, mevals, S0=1.0, angles=angles, fractions=fractions, snr=None
    )
    th, ph = np.deg2rad(np.array(angles)).T
    axes = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    tensors = np.stack(
        [
            m[1] * np.eye(3) + (m[0] - m[1]) * np.outer(u, u)
            for m, u in zip(mevals, axes, strict=True)
        ]
    )
    dt, kt = cumulant_tensors(np.array([fractions]) / 100.0, tensors[None])
    assert np.allclose(dt[0][[0, 0, 1, 0, 1, 2], [0, 1, 1, 2, 2, 2]], dt_ref, rtol=1e-12)
    assert np.allclose(kt[0], kt_ref, rtol=1e-10, atol=1e-12)


def test_truth_is_the_low_b_limit_of_dipy_dki_fits(demo_brain):
    """dipy's DKI fit of the simulator's noiseless site-free signal converges to the truth.

    The truth is the exact second cumulant; a fit on shells up to ``b_max`` also absorbs
    the higher cumulants, an error that falls with ``b_max`` (measured median relative
    error of MK: 11 % at 2000, 0.5 % at 500 s/mm²). So the fit on a dense scheme with
    b_max = 500 (4 shells x 100 directions, float32 signal) must be within 2 % (median
    over 300 brain voxels, AK 3 %) and far closer than at b_max = 2000.
    """
    tissue, _ = demo_brain
    rng = np.random.default_rng(0)
    voxels = rng.choice(np.flatnonzero(tissue.mask[tissue.support]), 300, replace=False)
    truth = dki_metrics(*cumulant_tensors(*mixture_pools(tissue, voxels)))
    weights = (tissue.fractions * tissue.proton_density)[voxels]
    pools = tuple(x[voxels] for x in tissue.pool_diffusivities(tissue.d_par, tissue.d_perp))
    dirs = get_sphere(name="repulsion200").vertices[:100]
    errors = {}
    for b_max in (500.0, 2000.0):
        bvals = np.r_[0.0, np.repeat(np.linspace(b_max / 4, b_max, 4), len(dirs))]
        bvecs = np.r_[np.zeros((1, 3)), np.tile(dirs, (4, 1))]
        b_eff, g_eff, is_b0 = effective_gradients(bvals, bvecs, b_scale=0.0, gain=np.eye(3))
        signal = mixture_signal(
            weights,
            tissue.d_par[voxels],
            tissue.d_perp[voxels],
            tissue.directions[voxels],
            b_eff,
            g_eff,
            is_b0,
            pools,
        )
        model = DiffusionKurtosisModel(gradient_table(bvals, bvecs=bvecs), fit_method="OLS")
        fit = model.fit(signal.astype(np.float64))
        fitted = {
            "md": fit.md,
            "mk": fit.mk(min_kurtosis=-INF, max_kurtosis=INF),
            "ak": fit.ak(min_kurtosis=-INF, max_kurtosis=INF),
            "rk": fit.rk(min_kurtosis=-INF, max_kurtosis=INF),
        }
        errors[b_max] = {
            k: float(np.median(np.abs(fitted[k] - truth[k]) / np.mean(truth[k]))) for k in fitted
        }
        errors[b_max]["kfa"] = float(np.median(np.abs(fit.kfa - truth["kfa"])))
    low, high = errors[500.0], errors[2000.0]
    assert low["md"] < 1e-3 and low["mk"] < 0.02 and low["rk"] < 0.02 and low["ak"] < 0.03
    assert low["kfa"] < 0.01
    assert high["mk"] > 5 * low["mk"]


def test_two_pools_keep_the_mean_tensor_and_b0(tmp_path):
    kurt = simulate_session("02", "GE1", size="tiny", seed=1, human_signal="kurtosis")
    gauss = simulate_session("02", "GE1", size="tiny", seed=1)  # the default
    assert kurt.tissue.has_pools and not gauss.tissue.has_pools
    assert np.array_equal(kurt.tissue.true_fa_md()[0], gauss.tissue.true_fa_md()[0])
    run_k, run_g = kurt.runs[0], gauss.runs[0]
    b0 = run_k.bvals < 50  # GE writes b0 as 0: the pools do not change S0
    assert np.allclose(run_k.noiseless[..., b0], run_g.noiseless[..., b0], rtol=1e-5, atol=1e-3)
    # more signal at high b where the water is restricted (positive kurtosis)
    wm = kurt.tissue.labels == 3
    hi = run_k.bvals > 1900
    assert np.mean(run_k.noiseless[wm][:, hi]) > 1.03 * np.mean(run_g.noiseless[wm][:, hi])
    assert HUMAN_SIGNALS == CLI_HUMAN_SIGNALS


def test_third_shell_run_and_its_truth(study3):
    root = study3
    for sub in ("01", "phantom01"):  # scenario 'single': the phantom's one protocol too
        names = sorted(p.name for p in (root / f"sub-{sub}" / "ses-GE1" / "dwi").glob("*.bval"))
        assert names == [f"sub-{sub}_ses-GE1_acq-multishell3_dwi.bval"]
    for ses in ("GE1", "Prisma2"):
        bvals, _ = bw.read_table(root, "01", ses, "multishell3")
        assert sorted(set(np.round(bvals[bvals > 50], -3))) == [1000.0, 2000.0, 3000.0]
        assert np.sum(bvals > 50) == 180
        sidecar = json.loads(bw.dwi_path(root, "01", ses, "multishell3", ".json").read_text())
        multishell_te = {"GE1": 0.0724, "Prisma2": 0.061}[ses]
        assert sidecar["EchoTime"] > multishell_te
    sim = json.loads((bw.gt_dir(root) / "simulation.json").read_text())
    assert sim["shells"] == [1000.0, 2000.0, 3000.0] and sim["human_signal"] == "kurtosis"
    assert "b=1000, b=2000 and b=3000" in " ".join((root / "README").read_text().split())
    # the DKI truth of a session is that of the written spec and pose
    grid, spec = read_spec(root, "02")
    tissue = object_tissue(spec, grid, read_pose(root, "02", "Prisma1"))
    maps = true_dki_maps(tissue)
    for param in DKI_PARAMS:
        path = bw.dki_truth_path(root, "02", "Prisma1", param)
        img = nib.load(path)
        assert np.allclose(img.affine, grid.affine)
        assert np.array_equal(np.asanyarray(img.dataobj), maps[param]), param
    for sub in ("01", "02", "03"):
        for ses in ("GE1", "GE2", "Prisma1", "Prisma2"):
            assert all(bw.dki_truth_path(root, sub, ses, p).is_file() for p in DKI_PARAMS)
    assert not list((bw.gt_dir(root, "phantom01")).rglob("*model-dki*"))


def test_deterministic_with_seed():
    a = simulate_session("03", "Prisma1", size="tiny", seed=5, shells=(1000, 2000, 3000), **KURT)
    b = simulate_session("03", "Prisma1", size="tiny", seed=5, shells=(1000, 2000, 3000), **KURT)
    c = simulate_session("03", "Prisma1", size="tiny", seed=6, shells=(1000, 2000, 3000), **KURT)
    assert a.runs[0].acq == "multishell3" and a.runs[0].image.shape[-1] == 195
    assert np.array_equal(a.runs[0].image, b.runs[0].image)
    assert not np.array_equal(a.runs[0].image, c.runs[0].image)
    assert a.spec == b.spec and a.spec != c.spec


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--shells", "1000", "2500"], "--shells"),
        (["--shells", "1000"], "--shells"),
        (["--shells", "x"], "--shells"),
        (["--human-signal", "stick"], "--human-signal"),
        (["--cohort", "4", "--shells", "1000", "2000", "3000"], "--shells"),
        (["--cohort", "4", "--human-signal", "kurtosis"], "--human-signal"),
    ],
)
def test_bad_values_exit_2_naming_the_option(tmp_path, capsys, args, option):
    with pytest.raises(SystemExit) as info:
        simulate_main([str(tmp_path / "out"), *args])
    assert info.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
