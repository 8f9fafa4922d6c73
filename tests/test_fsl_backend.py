"""FSL backend wired into the participant level: reverse phase-encoding discovery,
per-run plans, graphs and command lines, FSL's input files; all without FSL."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.discovery import discover
from bids_harmony.cli.run import main
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, InputDatasetError
from bids_harmony.interfaces.fsl import FslFinalize, PrepareFslInputs
from bids_harmony.workflows.fsl_preproc import fsl_run_plan
from bids_harmony.workflows.participant import init_participant_wf, wf_name
from bids_harmony.workflows.run import resolve_backend
from tests.conftest import make_bids, write_run

PE = {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.0646}


def _epi(folder: Path, name: str, meta: dict, shape=(10, 10, 6), n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(1).uniform(100, 200, (*shape, n)).astype(np.float32)
    path = folder / f"{name}_epi.nii.gz"
    nb.save(nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    (folder / f"{name}_epi.json").write_text(json.dumps(meta))
    return path


def _study_with_fieldmaps(root: Path) -> Path:
    """sub-01 ses-A: a dwi run (j-) with field maps of every kind next to it."""
    make_bids(root)
    dwi_dir = root / "sub-01" / "ses-A" / "dwi"
    # make_bids's run has no phase encoding: rewrite its sidecar.
    sidecar = dwi_dir / "sub-01_ses-A_dwi.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **PE,
                                   "B0FieldSource": "pepolar"}))  # fmt: skip
    fmap = root / "sub-01" / "ses-A" / "fmap"
    target = "ses-A/dwi/sub-01_ses-A_dwi.nii.gz"
    _epi(fmap, "sub-01_ses-A_dir-PA_run-1", {"PhaseEncodingDirection": "j",
         "TotalReadoutTime": 0.0646, "IntendedFor": target})  # fmt: skip
    _epi(fmap, "sub-01_ses-A_dir-PA_run-2", {"PhaseEncodingDirection": "j",
         "IntendedFor": [f"bids::sub-01/{target}"]}, n=1)  # fmt: skip
    _epi(fmap, "sub-01_ses-A_dir-PA_run-3", {"PhaseEncodingDirection": "j",
         "B0FieldIdentifier": "pepolar"})  # fmt: skip
    # Not usable: same direction, another grid, intended for something else.
    _epi(fmap, "sub-01_ses-A_dir-AP_run-4", {"PhaseEncodingDirection": "j-",
         "IntendedFor": target})  # fmt: skip
    _epi(fmap, "sub-01_ses-A_dir-PA_run-5", {"PhaseEncodingDirection": "j",
         "IntendedFor": target}, shape=(12, 10, 6))  # fmt: skip
    _epi(fmap, "sub-01_ses-A_dir-PA_run-6", {"PhaseEncodingDirection": "j",
         "IntendedFor": "ses-A/dwi/other_dwi.nii.gz"})  # fmt: skip
    return root


def test_reverse_pe_from_intended_for_uris_and_b0_field_ids(tmp_path, caplog):
    study = discover(_study_with_fieldmaps(tmp_path / "bids"), validate=False)
    (run,) = study.runs
    names = [image.path.name for image in run.reverse_pe]
    assert names == [f"sub-01_ses-A_dir-PA_run-{i}_epi.nii.gz" for i in (1, 2, 3)]
    assert [image.volumes for image in run.reverse_pe] == [(0, 1), (0,), (0, 1)]
    assert {image.kind for image in run.reverse_pe} == {"epi"}
    assert "reverse phase-encoding b0s (for topup): 1 run(s)" in study.summary()
    assert "run-5_epi.nii.gz has voxel grid (12, 10, 6)" in caplog.text


def test_field_map_with_bvals_gives_only_its_b0s(tmp_path, caplog):
    root = _study_with_fieldmaps(tmp_path / "bids")
    fmap = root / "sub-01" / "ses-A" / "fmap"
    _epi(fmap, "sub-01_ses-A_dir-PA_run-1", {"PhaseEncodingDirection": "j",
         "IntendedFor": "ses-A/dwi/sub-01_ses-A_dwi.nii.gz"}, n=4)  # fmt: skip
    (fmap / "sub-01_ses-A_dir-PA_run-1_epi.bval").write_text("0 1000 5 1000\n")
    (fmap / "sub-01_ses-A_dir-PA_run-3_epi.bval").write_text("0 0 0\n")  # 2 volumes
    (fmap / "sub-01_ses-A_dir-PA_run-2_epi.bval").write_text("b0\n")  # not numeric
    (run,) = discover(root, validate=False).runs
    volumes = {image.path.name: image.volumes for image in run.reverse_pe}
    assert volumes["sub-01_ses-A_dir-PA_run-1_epi.nii.gz"] == (0, 2)
    assert "sub-01_ses-A_dir-PA_run-3_epi.nii.gz" not in volumes
    assert "has 3 values for 2 volumes" in caplog.text
    assert "sub-01_ses-A_dir-PA_run-2_epi.nii.gz" not in volumes
    assert "run-2_epi.bval is not a numeric table" in caplog.text


def test_reverse_pe_from_dir_pairs(tmp_path):
    root = make_bids(tmp_path / "bids", sessions=())
    rng = np.random.default_rng(0)
    folder = root / "sub-01" / "dwi"
    write_run(folder, "sub-01_dir-AP", rng=rng, n_b0=5, metadata=PE)
    write_run(folder, "sub-01_dir-PA", rng=rng, n_b0=2,
              metadata={"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.0646})  # fmt: skip
    write_run(folder, "sub-01_acq-other_dir-PA", rng=rng, metadata={"PhaseEncodingDirection": "j"})
    study = discover(root)
    runs = {run.dwi.name: run for run in study.runs}
    (ap,) = runs["sub-01_dir-AP_dwi.nii.gz"].reverse_pe
    assert ap.path.name == "sub-01_dir-PA_dwi.nii.gz" and ap.kind == "dwi" and ap.volumes == (0, 1)
    (pa,) = runs["sub-01_dir-PA_dwi.nii.gz"].reverse_pe
    assert pa.path.name == "sub-01_dir-AP_dwi.nii.gz" and pa.volumes == (0, 2, 4)  # 3 of 5 b0s
    assert runs["sub-01_acq-other_dir-PA_dwi.nii.gz"].reverse_pe == ()


def test_run_plan_needs_phase_encoding(small_bids):
    (run, *_) = discover(small_bids).runs
    with pytest.raises(InputDatasetError, match=r"sub-01_ses-A_dwi.json: PhaseEncodingDirection "
                       r"is missing.*--preproc python"):  # fmt: skip
        fsl_run_plan(run, b_tolerance=50, b0_threshold=50)


def test_run_plan_settings(tmp_path, caplog):
    root = make_bids(tmp_path / "bids", sessions=())
    write_run(root / "sub-01" / "dwi", "sub-01_acq-odd", rng=np.random.default_rng(0),
              shape=(11, 10, 6), n_dirs=64, metadata={"PhaseEncodingDirection": "i"})  # fmt: skip
    runs = {run.dwi.name: run for run in discover(root).runs}
    plan = fsl_run_plan(runs["sub-01_acq-odd_dwi.nii.gz"], b_tolerance=50, b0_threshold=50)
    assert plan["topup_config"] == "b02b0_1.cnf" and plan["slm"] == "none"
    assert plan["readout_time"] == 0.05 and "no readout time" in caplog.text
    fmaps = discover(_study_with_fieldmaps(tmp_path / "fm"), validate=False).runs[0]
    plan = fsl_run_plan(fmaps, b_tolerance=50, b0_threshold=50)
    assert plan["topup_config"] == "b02b0.cnf" and plan["slm"] == "linear"  # 30 directions
    # run-2 has no readout time and takes the run's.
    assert [r["readout_time"] for r in plan["reverse"]] == [0.0646] * 3


def test_fsl_graph_and_command_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    root = _study_with_fieldmaps(tmp_path / "bids")
    study = discover(root, validate=False)
    config = Config(bids_dir=root, output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", omp_nthreads=2)  # fmt: skip
    wf = init_participant_wf(study, config, backend="fsl")
    run = wf_name(study.runs[0].prefix)
    names = set(wf.list_node_names())
    for node in ("fsl_inputs", "fsl_preproc_wf.topup", "fsl_preproc_wf.eddy",
                 "fsl_preproc_wf.bet", "preprocess_fsl", "fit_sh", "ds_participant"):  # fmt: skip
        assert f"{run}.{node}" in names
    eddy = wf.get_node(f"{run}.fsl_preproc_wf.eddy")
    for name in ("in_file", "in_bval", "in_bvec", "in_acqp", "in_index", "in_mask"):
        setattr(eddy.inputs, name, str(study.runs[0].dwi))
    eddy.inputs.in_topup_fieldcoef = str(study.runs[0].dwi)
    eddy.inputs.in_topup_movpar = str(study.runs[0].bval)
    cmd = eddy.interface.cmdline
    for flag in ("--repol", "--data_is_shelled", "--slm=linear", "--topup="):
        assert flag in cmd
    assert eddy.interface.inputs.environ["OMP_NUM_THREADS"] == "2" and eddy.n_procs == 2
    topup = wf.get_node(f"{run}.fsl_preproc_wf.topup")
    assert topup.inputs.config == "b02b0.cnf"
    report = wf.get_node(f"{run}.preprocess_fsl").inputs.report
    assert report["Steps"][0]["ReversePhaseEncoding"][0] == "sub-01_ses-A_dir-PA_run-1_epi.nii.gz"
    sink = wf.get_node(f"{run}.ds_participant")
    assert sink.inputs.run_info["fieldmaps"][0] == (
        "sub-01/ses-A/fmap/sub-01_ses-A_dir-PA_run-1_epi.nii.gz"
    )


def test_prepare_fsl_inputs_stacks_b0s_and_writes_acqparams(tmp_path):
    root = _study_with_fieldmaps(tmp_path / "bids")
    (run,) = discover(root, validate=False).runs
    plan = fsl_run_plan(run, b_tolerance=50, b0_threshold=50)
    node = PrepareFslInputs(in_file=str(run.dwi), in_bval=str(run.bval), in_bvec=str(run.bvec),
                            pe_dir=plan["pe_dir"], readout_time=plan["readout_time"],
                            reverse=plan["reverse"])  # fmt: skip
    out = node.run(cwd=str(tmp_path)).outputs
    stack = nb.load(out.b0_pair)
    # the run's 2 b0s, then 2 + 1 + 2 field-map volumes
    assert stack.shape == (10, 10, 6, 2 + 2 + 1 + 2)
    np.testing.assert_allclose(
        stack.get_fdata()[..., 0], nb.load(run.dwi).get_fdata()[..., 0], rtol=1e-6
    )
    rows = np.loadtxt(out.acqparams)
    np.testing.assert_allclose(rows[:2], [[0, -1, 0, 0.0646]] * 2)
    np.testing.assert_allclose(rows[2:], [[0, 1, 0, 0.0646]] * 5)
    assert Path(out.index).read_text().split() == ["1"] * run.n_volumes


def test_prepare_without_reverse_pe_has_one_row(small_bids, tmp_path):
    (run, *_) = discover(small_bids).runs
    bvec = np.loadtxt(run.bvec)
    bvec[:, 0] = [0.01, 0.0, 0.0]  # noise on a b0 vector
    bvec[:, -1] *= 0.995  # a norm of 0.995
    noisy = tmp_path / "noisy.bvec"
    np.savetxt(noisy, bvec)
    node = PrepareFslInputs(in_file=str(run.dwi), in_bval=str(run.bval), in_bvec=str(noisy),
                            pe_dir="i", readout_time=0.05)  # fmt: skip
    out = node.run(cwd=str(tmp_path)).outputs
    assert Path(out.acqparams).read_text() == "1 0 0 0.05\n"
    assert not out.b0_pair
    cleaned = np.loadtxt(out.out_bvec)
    assert cleaned.shape == bvec.shape and not cleaned[:, 0].any()
    np.testing.assert_allclose(np.linalg.norm(cleaned[:, -1]), 1.0, atol=1e-6)


def test_finalize_clips_negatives_and_keeps_rotated_bvecs(small_bids, tmp_path):
    (run, *_) = discover(small_bids).runs
    img = nb.load(run.dwi)
    data = img.get_fdata().astype(np.float32)
    data[0, 0, 0, :3] = -5.0
    eddy_out = tmp_path / "eddy_corrected.nii.gz"
    nb.save(nb.Nifti1Image(data, img.affine), eddy_out)
    mask = tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image((data[..., 0] > 100).astype(np.uint8), img.affine), mask)
    rotated = np.loadtxt(run.bvec)
    rotated[:, 2:] = rotated[:, 2:] * np.array([[-1], [1], [1]])
    bvec = tmp_path / "rotated.bvec"
    np.savetxt(bvec, rotated)
    node = FslFinalize(in_file=str(eddy_out), in_bval=str(run.bval), in_bvec=str(bvec),
                       in_mask=str(mask), report={"Steps": []})  # fmt: skip
    out = node.run(cwd=str(tmp_path)).outputs
    final = nb.load(out.out_derivative).get_fdata()
    assert final.min() >= 0 and final[0, 0, 0, 0] == 0
    np.testing.assert_allclose(np.loadtxt(out.out_bvec), rotated, atol=1e-6)
    assert json.loads(Path(out.out_report).read_text())["NegativeValuesClipped"] == 3


def test_fsl_requested_but_missing(monkeypatch, small_bids, tmp_path, caplog):
    monkeypatch.delenv("FSLDIR", raising=False)
    caplog.set_level(logging.INFO, logger="bids_harmony")
    with pytest.raises(BidsHarmonyError, match=r"FSLDIR.*fslconda.*--preproc python"):
        resolve_backend("fsl")
    assert resolve_backend("auto") == "python"
    assert "FSL not used" in caplog.text
    out = tmp_path / "out"
    code = main([str(small_bids), str(out), "participant", "--preproc", "fsl",
                 "-w", str(tmp_path / "work")])  # fmt: skip
    assert code == 2
    assert "--preproc fsl: FSL is not usable" in caplog.text
    assert not any(out.rglob("*.nii.gz"))


def test_fsl_run_failure_names_the_session(tmp_path, monkeypatch, caplog):
    """Without FSL the graph runs up to the first FSL tool; the report names the run.

    FSL is declared present (the availability check is what is bypassed, no output
    is faked): the python nodes before FSL run for real, then the FSL tool fails.
    """
    from bids_harmony.workflows import fsl_preproc

    monkeypatch.setattr(fsl_preproc, "fsl_available", lambda: (True, "FSL (test)"))
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    root = _study_with_fieldmaps(tmp_path / "bids")
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(root), str(out), "participant", "--preproc", "fsl", "--skip-bids-validation",
                 "--nprocs", "1", "-w", str(work)])  # fmt: skip
    assert code == 1
    (prepared,) = work.rglob("fsl_inputs/b0_pair.nii.gz")
    assert nb.load(prepared).shape[3] == 7
    (summary,) = out.glob("logs/*/crash_summary.txt")
    text = summary.read_text()
    assert text.startswith("sub-01_ses-A: node topup failed")
    assert "topup" in caplog.text and "crash_summary.txt" not in text
    assert not list(out.rglob("*_dwimap.nii.gz"))
