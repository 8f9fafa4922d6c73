"""Tests of the study simulator (``bids_harmony.simulate``) and its CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel
from dipy.sims.voxel import multi_tensor

from bids_harmony.cli.simulate import main as simulate_main
from bids_harmony.simulate import (
    Grid,
    Pose,
    object_tissue,
    read_pose,
    read_spec,
    read_tissue,
    regenerate_noiseless,
    simulate_session,
    simulate_study,
    site_params,
    subject_spec,
)
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.gradients import effective_gradients
from bids_harmony.simulate.signal_model import mixture_signal, noiseless_signal

SESSIONS = ("GE1", "GE2", "Prisma1", "Prisma2")
PHANTOM_ACQS = ("b1000", "b2000", "multishell")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return simulate_study(tmp_path_factory.mktemp("tiny") / "bids", size="tiny", seed=0)


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _dti(signal, bvals, bvecs, mask, shell=1000.0):
    sel = (bvals < 50) | (np.abs(bvals - shell) < 50)
    gtab = gradient_table(bvals[sel], bvecs=bvecs[sel], b0_threshold=50)
    fit = TensorModel(gtab).fit(np.asarray(signal, dtype=float)[..., sel], mask=mask)
    return fit.fa, fit.md


def test_study_layout(study):
    assert study.sites == ("GE", "Prisma")
    assert study.phantoms == ("phantom01", "phantom02")
    assert study.subjects == ("01", "02", "03")
    assert study.sessions == SESSIONS
    assert len(study.runs) == 2 * 4 * len(PHANTOM_ACQS) + 3 * 4
    desc = json.loads((study.root / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.9.0" and desc["DatasetType"] == "raw"
    assert desc["GeneratedBy"][0]["Name"] == "bids_harmony"
    assert (study.root / "README").is_file()
    rows = (study.root / "participants.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["participant_id", "species", "phantom", "age", "sex"]
    assert "sub-phantom01\tphantom\ttrue\tn/a\tn/a" in rows
    assert any(r.startswith("sub-01\thomo sapiens\tfalse\t") for r in rows)


def test_valid_bids_and_tables(study):
    bids = pytest.importorskip("bids")
    layout = bids.BIDSLayout(study.root, validate=True)
    files = layout.get(suffix="dwi", extension=".nii.gz", return_type="filename")
    assert sorted(map(Path, files)) == sorted(r.dwi for r in study.runs)
    sidecars = {}
    for run in study.runs:
        img = nib.load(run.dwi)
        assert img.get_data_dtype() == np.int16
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.header.get_zooms()[:3], np.abs(np.diag(img.affine)[:3]))
        bvals = np.loadtxt(run.bval, ndmin=1)
        bvecs = np.loadtxt(run.bvec, ndmin=2)
        assert bvals.shape == (img.shape[3],) and bvecs.shape == (3, img.shape[3])
        dwi = bvals > 50
        assert np.allclose(np.linalg.norm(bvecs[:, dwi], axis=0), 1.0, atol=1e-5)
        b0 = {"GE": 0.0, "Prisma": 5.0}[run.site]
        assert np.all(bvals[~dwi] == b0)
        assert np.all(np.abs(bvals[dwi] - np.round(bvals[dwi], -3)) <= 5)
        sidecars[run.site] = json.loads(run.sidecar.read_text())
    for key in ("Manufacturer", "ManufacturersModelName", "DeviceSerialNumber"):
        assert sidecars["GE"][key] != sidecars["Prisma"][key]
    for side in sidecars.values():
        for key in (
            "EchoTime",
            "RepetitionTime",
            "MagneticFieldStrength",
            "TotalReadoutTime",
            "PhaseEncodingDirection",
            "SliceThickness",
        ):
            assert key in side
        assert 0.04 < side["EchoTime"] < 0.12


def test_site_gradient_tables_differ(study):
    ge = [r for r in study.runs if r.subject == "phantom01" and r.acq == "b1000"]
    vecs = {r.site: np.loadtxt(r.bvec)[:, np.loadtxt(r.bval) > 50] for r in ge}
    assert vecs["GE"].shape == vecs["Prisma"].shape == (3, 60)
    assert not np.allclose(np.abs(vecs["GE"]), np.abs(vecs["Prisma"]))


def test_deterministic_per_seed():
    a = simulate_session("phantom01", "GE1", size="tiny", seed=3, protocols=("b1000",))
    b = simulate_session("phantom01", "GE1", size="tiny", seed=3, protocols=("b1000",))
    c = simulate_session("phantom01", "GE1", size="tiny", seed=4, protocols=("b1000",))
    assert np.array_equal(a.runs[0].image, b.runs[0].image)
    assert not np.array_equal(a.runs[0].image, c.runs[0].image)
    assert a.site == b.site and a.site != c.site


def test_session_equals_study_session(study):
    data = simulate_session("02", "Prisma1", size="tiny", seed=0)
    run = data.runs[0]
    path = bw.dwi_path(study.root, "02", "Prisma1", run.acq, ".nii.gz")
    assert np.array_equal(_load(path), run.image)


def test_noiseless_wm_fa_realistic(study):
    gt = bw.gt_dir(study.root, "01", "GE1")
    labels = _load(gt / "sub-01_ses-GE1_dseg.nii.gz")
    clean = _load(bw.noiseless_path(study.root, "01", "GE1", "multishell"))
    bvals, bvecs = bw.read_table(study.root, "01", "GE1", "multishell")
    assert sorted(set(np.round(bvals[bvals > 50], -3))) == [1000.0, 2000.0]
    fa, md = _dti(clean, bvals, bvecs, labels > 0)
    wm, gm = labels == 3, labels == 2
    assert wm.sum() > 100 and gm.sum() > 20
    assert 0.35 < np.median(fa[wm]) < 0.8
    assert 0.6e-3 < np.median(md[wm]) < 1.0e-3
    assert np.median(fa[gm]) < 0.25
    true_fa = _load(gt / "sub-01_ses-GE1_desc-truth_FA.nii.gz")
    assert abs(np.median(true_fa[wm]) - np.median(fa[wm])) < 0.1
    # SNR of b0 in WM is realistic
    b0 = clean[..., bvals < 50].mean(-1)
    snr = np.median(b0[wm]) / site_params("GE", 0).noise_sigma
    assert 15 < snr < 45


def test_site_effects_beyond_noise(study):
    root = study.root
    bvals, bvecs = bw.read_table(root, "01", "GE1", "multishell")
    mask = _load(bw.gt_dir(root, "01", "GE1") / "sub-01_ses-GE1_dseg.nii.gz")
    ge = _load(bw.noiseless_path(root, "01", "GE1", "multishell"))
    prisma = regenerate_noiseless(root, "01", "GE1", "multishell", site="Prisma")
    fa_ge, md_ge = _dti(ge, bvals, bvecs, mask > 0)
    fa_pr, md_pr = _dti(prisma, bvals, bvecs, mask > 0)
    wm = mask == 3
    site_md = abs(np.median(md_ge[wm]) / np.median(md_pr[wm]) - 1)
    site_fa = np.median(np.abs(fa_ge[wm] - fa_pr[wm]))
    # scan-rescan at one site: noisy images of two sessions
    noisy = [_load(bw.dwi_path(root, "01", s, "multishell", ".nii.gz")) for s in ("GE1", "GE2")]
    masks = [
        _load(bw.gt_dir(root, "01", s) / f"sub-01_ses-{s}_dseg.nii.gz") for s in ("GE1", "GE2")
    ]
    mds = [
        np.median(_dti(n, bvals, bvecs, m > 0)[1][m == 3])
        for n, m in zip(noisy, masks, strict=True)
    ]
    rescan_md = abs(mds[0] / mds[1] - 1)
    assert site_md > 0.02 and site_md > 2 * rescan_md
    assert site_fa > 0.005
    # normalized signals differ systematically, not only by a scale factor
    b0_ge, b0_pr = ge[..., bvals < 50].mean(-1), prisma[..., bvals < 50].mean(-1)
    e_ge = ge[wm][:, bvals > 50] / b0_ge[wm][:, None]
    e_pr = prisma[wm][:, bvals > 50] / b0_pr[wm][:, None]
    assert np.sqrt(np.mean((e_ge - e_pr) ** 2)) > 0.005


def test_scan_rescan_differs_only_by_noise_and_pose(study):
    root = study.root
    grid, spec = read_spec(root, "01")
    pose1, pose2 = read_pose(root, "01", "GE1"), read_pose(root, "01", "GE2")
    assert pose1 != pose2
    assert max(map(abs, pose2.angles_deg)) <= 3 and max(map(abs, pose2.translation_mm)) <= 4
    ge1 = _load(bw.noiseless_path(root, "01", "GE1", "multishell"))
    bvals, bvecs = bw.read_table(root, "01", "GE2", "multishell")
    same_pose = noiseless_signal(
        object_tissue(spec, grid, pose1), site_params("GE", 0), bvals, bvecs, protocol="multishell"
    )
    assert np.allclose(same_pose, ge1, rtol=1e-5, atol=1e-3)
    noisy1 = _load(bw.dwi_path(root, "01", "GE1", "multishell", ".nii.gz")).astype(float)
    noisy2 = _load(bw.dwi_path(root, "01", "GE2", "multishell", ".nii.gz")).astype(float)
    assert not np.array_equal(noisy1, noisy2)
    resid = noisy1 - ge1
    brain = ge1[..., 0] > 200
    assert 0.5 < np.std(resid[brain]) / site_params("GE", 0).noise_sigma < 1.5
    # phantoms are positioned consistently: sub-voxel shift only
    for ses in SESSIONS:
        pose = read_pose(root, "phantom01", ses)
        assert pose.angles_deg == (0.0, 0.0, 0.0)
        assert np.all(
            np.abs(pose.translation_mm)
            <= 0.5 * np.asarray(read_spec(root, "phantom01")[0].voxel_size)
        )


def test_ground_truth_and_regeneration(study):
    root = study.root
    gt = bw.gt_dir(root)
    assert (gt / "README.md").is_file() and (gt / "simulation.json").is_file()
    for site in study.sites:
        params = json.loads((gt / f"site-{site}_params.json").read_text())
        assert params["label"] == site and "b_scale" in params and "noise_sigma" in params
    for sub in ("phantom02", "03"):
        base = bw.gt_dir(root, sub)
        for suffix in (
            "spec.json",
            "tissue.npz",
            "dseg.nii.gz",
            "desc-brain_mask.nii.gz",
            "desc-truth_FA.nii.gz",
            "desc-truth_MD.nii.gz",
        ):
            assert (base / f"sub-{sub}_{suffix}").is_file()
    grid, spec = read_spec(root, "03")
    stored = read_tissue(bw.gt_dir(root, "03") / "sub-03_tissue.npz")
    fresh = object_tissue(spec, grid, Pose())
    for name, arr in fresh.arrays().items():
        assert np.array_equal(arr, getattr(stored, name)), name
    labels = stored.labels
    assert set(np.unique(labels)) == {0, 1, 2, 3} and stored.mask[labels > 0].all()
    for sub, ses, acq in (("03", "Prisma2", "multishell"), ("phantom02", "GE2", "b2000")):
        regen = regenerate_noiseless(root, sub, ses, acq)
        assert np.allclose(
            regen, _load(bw.noiseless_path(root, sub, ses, acq)), rtol=1e-5, atol=1e-3
        )


def test_mixture_signal_matches_dipy_multi_tensor():
    rng = np.random.default_rng(7)
    bvals = np.r_[0.0, np.full(30, 1000.0), np.full(30, 2500.0)]
    dirs = rng.standard_normal((60, 3))
    bvecs = np.r_[np.zeros((1, 3)), dirs / np.linalg.norm(dirs, axis=1, keepdims=True)]
    gtab = gradient_table(bvals, bvecs=bvecs)
    b_eff, g_eff, is_b0 = effective_gradients(bvals, bvecs, b_scale=0.0, gain=np.eye(3))
    fractions = np.array([[0.2, 0.1, 0.4, 0.3]])
    d_par = np.array([[3e-3, 0.9e-3, 1.7e-3, 1.5e-3]])
    d_perp = np.array([[3e-3, 0.7e-3, 0.3e-3, 0.5e-3]])
    angles = [(0.0, 0.0), (30.0, 40.0), (90.0, 10.0), (45.0, 120.0)]
    th, ph = np.deg2rad(np.array(angles)).T
    axes = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    ours = mixture_signal(fractions, d_par, d_perp, axes[None], b_eff, g_eff, is_b0)[0]
    mevals = np.stack([d_par[0], d_perp[0], d_perp[0]], axis=1)
    ref, _ = multi_tensor(
        gtab, mevals, S0=1.0, angles=angles, fractions=fractions[0] * 100, snr=None
    )
    assert np.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_cli(study, tmp_path, capsys):
    out = tmp_path / "cli"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    assert simulate_main([str(out), "--size", "tiny", "--seed", "0"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (out / "dataset_description.json").exists()
    assert simulate_main([str(out), "--size", "tiny", "--seed", "0", "--force"]) == 0
    assert "Simulated BIDS study" in capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "keep me\n"
    # same seed: byte-identical files
    ours = sorted(p.relative_to(study.root) for p in study.root.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert ours == sorted(set(theirs) - {Path("notes.txt")})
    for rel in ours:
        assert (study.root / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_cli_help_is_light(capsys):
    with pytest.raises(SystemExit) as exc:
        simulate_main(["--help"])
    assert exc.value.code == 0
    assert "--size" in capsys.readouterr().out


def test_pose_rotates_object_and_fibres_not_table():
    spec = subject_spec("02", "tiny", 0)
    grid = Grid((20, 20, 12), (11.0, 11.0, 11.0))
    ref = object_tissue(spec, grid, Pose())
    rot = object_tissue(spec, grid, Pose((0.0, 0.0, 90.0), (0.0, 0.0, 0.0)))
    # p = R q with R a +90 degree turn about z: posed[i, j] = reference[j, n - 1 - i]
    assert np.array_equal(rot.labels, ref.labels.transpose(1, 0, 2)[::-1])
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    frac_ref = ref.to_volume(ref.fractions).transpose(1, 0, 2, 3)[::-1]
    assert np.allclose(rot.to_volume(rot.fractions), frac_ref, atol=1e-5)
    dirs_ref = ref.to_volume(ref.directions[:, 2]).transpose(1, 0, 2, 3)[::-1] @ turn.T
    dirs_rot = rot.to_volume(rot.directions[:, 2])
    assert np.allclose(np.abs(np.sum(dirs_rot * dirs_ref, axis=-1))[rot.labels == 3], 1, atol=1e-4)


def test_phantoms_have_many_orientations_and_crossings():
    crossings, d_iso, n_axes = 0, [], 0
    for name in ("phantom01", "phantom02"):
        spec = subject_spec(name, "tiny", 0)
        axes = []
        for vial in spec.vials:
            if vial.kind == "pvp":
                d_iso.append(vial.d_iso)
                continue
            axes.append(vial.fibre_axes[0])
            if vial.kind == "crossing":
                crossings += 1
                cos = abs(np.dot(*np.asarray(vial.fibre_axes)))
                assert np.degrees(np.arccos(cos)) >= 44
        axes = np.asarray(axes)
        cos = np.abs(axes @ axes.T)[np.triu_indices(len(axes), 1)]
        assert np.degrees(np.arccos(cos.max())) > 15  # distinct orientations per phantom
        n_axes += len(axes)
    assert n_axes >= 8 and crossings >= 3
    assert max(d_iso) / min(d_iso) > 2


def test_nifti_stream_matches_nibabel(tmp_path):
    rng = np.random.default_rng(1)
    data = np.asfortranarray(rng.integers(0, 3000, (4, 5, 6, 3)).astype(np.int16))
    affine = Grid((4, 5, 6), (2.0, 2.0, 2.5)).affine
    path = bw.write_nifti(tmp_path / "x.nii.gz", data, affine, tr_s=3.7)
    img = nib.load(path)
    assert np.array_equal(np.asanyarray(img.dataobj), data)
    assert np.allclose(img.affine, affine) and np.linalg.det(affine) < 0
    assert img.header.get_zooms() == (2.0, 2.0, 2.5, 3.7)
    ref = nib.Nifti1Image(data, affine)
    ref.set_qform(affine, code=1)
    ref.set_sform(affine, code=1)
    ref.header.set_xyzt_units("mm", "sec")
    ref.header.set_zooms((2.0, 2.0, 2.5, 3.7))
    assert gzip.decompress(path.read_bytes()) == ref.to_bytes()
    assert not list(tmp_path.glob(".*partial"))
