"""FSL backend: graphs, command lines and helpers, checked without FSL installed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.dmri.acqparams import (
    acquisition_parameters,
    total_readout_time,
    write_acqparams,
)
from bids_harmony.workflows import fsl_preproc
from bids_harmony.workflows.fsl_preproc import (
    eddy_command,
    fsl_available,
    init_fsl_preproc_wf,
    mean_b0_file,
)


@pytest.fixture
def no_fsl(monkeypatch, tmp_path):
    """No FSL, an empty PATH folder of our own, outputs relative to tmp_path."""
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    monkeypatch.delenv("FSLDIR", raising=False)
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def files(no_fsl):
    names = {
        "dwi": "dwi.nii.gz", "bval": "dwi.bval", "bvec": "dwi.bvec", "acqparams": "acqp.txt",
        "index": "index.txt", "b0_pair": "b0_pair.nii.gz", "mask": "mask.nii.gz",
        "mean": "mean_b0.nii.gz", "fieldcoef": "b0_pair_base_fieldcoef.nii.gz",
        "movpar": "b0_pair_base_movpar.txt", "sh": "sh.nii.gz", "mat": "flirt.mat",
    }  # fmt: skip
    paths = {}
    for key, name in names.items():
        (no_fsl / name).touch()
        paths[key] = str(no_fsl / name)
    return paths


def fake_which(available: set[str]):
    def which(name, *args, **kwargs):
        return f"/opt/fsl/bin/{name}" if name in available else None

    return which


def edges(wf) -> set[tuple[str, str, str, str]]:
    """(source node, destination node, source field, destination field) of a graph."""
    return {
        (src.name, dst.name, out, inp)
        for src, dst, data in wf._graph.edges(data=True)
        for out, inp in data["connect"]
    }


def set_eddy_inputs(node, files, *, topup: bool) -> None:
    node.inputs.in_file, node.inputs.in_mask = files["dwi"], files["mask"]
    node.inputs.in_acqp, node.inputs.in_index = files["acqparams"], files["index"]
    node.inputs.in_bvec, node.inputs.in_bval = files["bvec"], files["bval"]
    if topup:
        node.inputs.in_topup_fieldcoef = files["fieldcoef"]
        node.inputs.in_topup_movpar = files["movpar"]


# --------------------------------------------------------------------------- graphs

COMMON_EDGES = {
    ("inputnode", "eddy", "dwi", "in_file"),
    ("inputnode", "eddy", "bval", "in_bval"),
    ("inputnode", "eddy", "bvec", "in_bvec"),
    ("inputnode", "eddy", "acqparams", "in_acqp"),
    ("inputnode", "eddy", "index", "in_index"),
    ("bet", "eddy", "mask_file", "in_mask"),
    ("mean_b0", "bet", "out_file", "in_file"),
    ("eddy", "outputnode", "out_corrected", "dwi_preproc"),
    ("eddy", "outputnode", "out_rotated_bvecs", "bvec_rotated"),
    ("inputnode", "outputnode", "bval", "bval"),
    ("bet", "outputnode", "mask_file", "mask"),
}


def test_graph_with_reverse_pe(no_fsl):
    wf = init_fsl_preproc_wf(has_reverse_pe=True, use_gpu=False)
    assert set(wf.list_node_names()) == {
        "inputnode", "topup", "mean_b0", "bet", "eddy", "outputnode",
    }  # fmt: skip
    assert edges(wf) == COMMON_EDGES | {
        ("inputnode", "topup", "b0_pair", "in_file"),
        ("inputnode", "topup", "acqparams", "encoding_file"),
        ("topup", "mean_b0", "out_corrected", "in_file"),
        ("topup", "eddy", "out_fieldcoef", "in_topup_fieldcoef"),
        ("topup", "eddy", "out_movpar", "in_topup_movpar"),
    }
    inputnode = wf.get_node("inputnode")
    assert set(inputnode.inputs.copyable_trait_names()) == {
        "dwi", "bval", "bvec", "acqparams", "index", "b0_pair",
    }  # fmt: skip
    outputnode = wf.get_node("outputnode")
    assert set(outputnode.outputs.copyable_trait_names()) == {
        "dwi_preproc", "bvec_rotated", "bval", "mask",
    }  # fmt: skip


def test_graph_without_reverse_pe(no_fsl):
    wf = init_fsl_preproc_wf(has_reverse_pe=False, use_gpu=False, b0_threshold=80.0)
    names = set(wf.list_node_names())
    assert names == {"inputnode", "mean_b0", "bet", "eddy", "outputnode"}
    assert not any("topup" in name for name in names)
    assert edges(wf) == COMMON_EDGES | {
        ("inputnode", "mean_b0", "dwi", "in_file"),
        ("inputnode", "mean_b0", "bval", "in_bval"),
    }
    assert wf.get_node("mean_b0").inputs.b0_threshold == 80.0


def test_build_needs_no_inputs_or_fsl(no_fsl):
    """Graphs build without files or FSL: nothing runs at build time."""
    before = set(os.listdir(no_fsl))
    for reverse in (True, False):
        wf = init_fsl_preproc_wf(name=f"wf_{reverse}", has_reverse_pe=reverse, omp_nthreads=3)
        eddy = wf.get_node("eddy")
        assert eddy.interface.cmd == "eddy"  # default name: no eddy binary here
        assert eddy.inputs.num_threads == 3 and eddy.n_procs == 3
        assert eddy.interface.inputs.environ["OMP_NUM_THREADS"] == "3"
    assert set(os.listdir(no_fsl)) == before


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize("reverse", [True, False])
def test_eddy_command_line(files, reverse):
    wf = init_fsl_preproc_wf(has_reverse_pe=reverse, use_gpu=False)
    eddy = wf.get_node("eddy")
    set_eddy_inputs(eddy, files, topup=reverse)
    cmdline = eddy.interface.cmdline
    assert cmdline.startswith("eddy ")
    for flag in (
        f"--imain={files['dwi']}",
        f"--mask={files['mask']}",
        f"--acqp={files['acqparams']}",
        f"--index={files['index']}",
        f"--bvecs={files['bvec']}",
        f"--bvals={files['bval']}",
        f"--out={Path.cwd() / 'eddy_corrected'}",
    ):
        assert flag in cmdline.split()
    if reverse:  # topup's output base name, without the _fieldcoef suffix
        assert f"--topup={Path(files['fieldcoef']).parent / 'b0_pair_base'}" in cmdline.split()
    else:
        assert "--topup" not in cmdline


def test_topup_mean_and_bet_command_lines(files):
    wf = init_fsl_preproc_wf(has_reverse_pe=True, use_gpu=False)
    topup = wf.get_node("topup")
    topup.inputs.in_file, topup.inputs.encoding_file = files["b0_pair"], files["acqparams"]
    cmdline = topup.interface.cmdline.split()
    assert cmdline[0] == "topup"
    assert "--config=b02b0.cnf" in cmdline
    assert f"--imain={files['b0_pair']}" in cmdline
    assert f"--datain={files['acqparams']}" in cmdline
    assert any(arg.startswith("--iout=") for arg in cmdline)  # corrected b0s for the mask

    mean_b0 = wf.get_node("mean_b0")
    mean_b0.inputs.in_file = files["b0_pair"]
    assert mean_b0.interface.cmdline.startswith(f"fslmaths {files['b0_pair']} -Tmean ")

    bet = wf.get_node("bet")
    bet.inputs.in_file = files["mean"]
    cmdline = bet.interface.cmdline
    # Nipype passes bet's input relative to the node folder (bet fails on long paths).
    assert cmdline.startswith(f"bet {os.path.relpath(files['mean'])} ")
    assert "-f 0.20 -m" in cmdline
    assert bet.interface.inputs.environ["FSLOUTPUTTYPE"] == "NIFTI_GZ"


def test_bet_without_reverse_pe(files):
    bet = init_fsl_preproc_wf(has_reverse_pe=False, use_gpu=False).get_node("bet")
    bet.inputs.in_file = files["mean"]
    assert "-f 0.20 -m" in bet.interface.cmdline


# --------------------------------------------------------------------------- eddy binary


def test_eddy_command_prefers_cuda_with_a_gpu(no_fsl, monkeypatch):
    monkeypatch.setattr(shutil, "which", fake_which({"eddy_cuda10.2", "eddy_cpu"}))
    assert eddy_command(gpu=True) == "eddy_cuda10.2"
    monkeypatch.setattr(fsl_preproc, "nvidia_gpu_present", lambda: True)
    assert eddy_command() == "eddy_cuda10.2"
    monkeypatch.setattr(fsl_preproc, "nvidia_gpu_present", lambda: False)
    assert eddy_command() == "eddy_cpu"
    assert eddy_command(gpu=False) == "eddy_cpu"


def test_eddy_command_order(no_fsl, monkeypatch):
    monkeypatch.setattr(fsl_preproc, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(shutil, "which", fake_which({"eddy_cuda10.2", "eddy_cuda11.0", "eddy"}))
    assert eddy_command() == "eddy_cuda11.0"
    monkeypatch.setattr(shutil, "which", fake_which({"eddy_cuda", "eddy_cuda11.0"}))
    assert eddy_command() == "eddy_cuda"
    assert eddy_command(gpu=False) == "eddy"  # no CPU build: the default name
    monkeypatch.setattr(shutil, "which", fake_which({"eddy_openmp", "eddy"}))
    assert eddy_command(gpu=True) == "eddy_openmp"  # GPU asked for, no CUDA build
    monkeypatch.setattr(shutil, "which", fake_which(set()))
    assert eddy_command() == "eddy"


def test_eddy_command_finds_versioned_cuda_on_path(no_fsl, monkeypatch):
    folder = no_fsl / "empty_bin"
    for name in ("eddy_cuda12.4", "eddy_cpu"):
        (folder / name).write_text("#!/bin/sh\nexit 1\n")
        (folder / name).chmod(0o755)
    assert eddy_command(gpu=True) == "eddy_cuda12.4"
    assert eddy_command(gpu=False) == "eddy_cpu"


def test_no_gpu_without_nvidia_smi(no_fsl):
    assert fsl_preproc.nvidia_gpu_present() is False


def test_workflow_uses_the_binary_found(files, monkeypatch):
    monkeypatch.setattr(shutil, "which", fake_which({"eddy_cuda10.2", "eddy_cpu"}))
    eddy = init_fsl_preproc_wf(has_reverse_pe=True, use_gpu=True, omp_nthreads=4).get_node("eddy")
    assert eddy.inputs.use_cuda is True and eddy.n_procs == 1
    set_eddy_inputs(eddy, files, topup=True)
    assert eddy.interface.cmdline.startswith("eddy_cuda10.2 --")

    eddy = init_fsl_preproc_wf(has_reverse_pe=False, use_gpu=False, omp_nthreads=4).get_node("eddy")
    assert eddy.inputs.use_cuda is False and eddy.n_procs == 4
    assert eddy.interface.inputs.environ["OMP_NUM_THREADS"] == "4"
    set_eddy_inputs(eddy, files, topup=False)
    assert eddy.interface.cmdline.startswith("eddy_cpu --")


# --------------------------------------------------------------------------- availability


def test_fsl_not_available_here(no_fsl):
    ok, message = fsl_available()
    assert ok is False
    assert "FSLDIR" in message and "bet" in message and "flirt" in message
    assert "eddy_cpu" in message
    assert "conda" in message and "fslconda" in message and "container" in message
    for package in ("fsl-topup", "fsl-eddy", "fsl-bet2", "fsl-flirt"):
        assert package in message


def write_script(path: Path, status: int) -> None:
    path.write_text(f"#!/bin/sh\nexit {status}\n")
    path.chmod(0o755)


def test_fsl_available_checks_that_binaries_run(no_fsl, monkeypatch):
    """Stand-in executables exercise the detection only (they produce nothing)."""
    folder = no_fsl / "empty_bin"
    fsldir = no_fsl / "fsl"
    (fsldir / "etc").mkdir(parents=True)
    (fsldir / "etc" / "fslversion").write_text("6.0.7.9:abc\n")
    for name in ("bet", "flirt", "eddy_cpu"):
        write_script(folder / name, 1)  # FSL tools exit 1 after printing their usage
    monkeypatch.setenv("FSLDIR", str(fsldir))
    ok, message = fsl_available()
    assert ok, message
    assert "FSL 6.0.7.9" in message and "topup not found" in message

    write_script(folder / "flirt", 127)  # e.g. a missing shared library
    ok, message = fsl_available()
    assert not ok and f"{folder / 'flirt'} does not run" in message


# --------------------------------------------------------------------------- acqparams


def test_acquisition_parameters_rows():
    rows = acquisition_parameters(["i", "i-", "j", "j-", "k", "k-"], [0.05] * 6)
    expected_vectors = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
    np.testing.assert_array_equal(rows[:, :3], expected_vectors)
    np.testing.assert_allclose(rows[:, 3], 0.05)
    assert rows.shape == (6, 4)


@pytest.mark.parametrize(
    ("pe_dirs", "times", "match"),
    [
        (["y-"], [0.05], "unknown PhaseEncodingDirection 'y-'"),
        (["j"], [0.0], "positive"),
        (["j"], [-0.05], "positive"),
        (["j"], [float("nan")], "positive"),
        (["j", "j-"], [0.05], "2 phase-encoding directions but 1 readout times"),
        ([], [], "no rows"),
    ],
)
def test_acquisition_parameters_errors(pe_dirs, times, match):
    with pytest.raises(ValueError, match=match):
        acquisition_parameters(pe_dirs, times)


def test_write_acqparams(tmp_path):
    rows = acquisition_parameters(["j-", "j"], [0.0646, 0.0646])
    path = write_acqparams(tmp_path / "acqparams.txt", rows)
    assert Path(path).read_text() == "0 -1 0 0.0646\n0 1 0 0.0646\n"
    np.testing.assert_allclose(np.loadtxt(path), rows)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        write_acqparams(tmp_path / "bad.txt", [[0, 1, 0]])


def test_total_readout_time_forms():
    assert total_readout_time({"TotalReadoutTime": 0.0646}) == 0.0646
    both = {"TotalReadoutTime": 0.05, "EffectiveEchoSpacing": 0.001, "ReconMatrixPE": 96}
    assert total_readout_time(both) == 0.05
    spacing = {"EffectiveEchoSpacing": 0.00069, "ReconMatrixPE": 96}
    assert total_readout_time(spacing) == pytest.approx(0.00069 * 95)
    assert total_readout_time(spacing, n_pe=128) == pytest.approx(0.00069 * 95)
    assert total_readout_time({"EffectiveEchoSpacing": 0.0005}, n_pe=101) == pytest.approx(0.05)


def test_total_readout_time_errors():
    with pytest.raises(ValueError) as err:
        total_readout_time({"PhaseEncodingDirection": "j-"})
    message = str(err.value)
    for field in ("TotalReadoutTime", "EffectiveEchoSpacing", "ReconMatrixPE"):
        assert field in message
    with pytest.raises(ValueError, match="lacks TotalReadoutTime, ReconMatrixPE"):
        total_readout_time({"EffectiveEchoSpacing": 0.0005})
    with pytest.raises(ValueError, match="lacks TotalReadoutTime, EffectiveEchoSpacing\\."):
        total_readout_time({"ReconMatrixPE": 96})
    with pytest.raises(ValueError, match="TotalReadoutTime must be a positive"):
        total_readout_time({"TotalReadoutTime": 0})
    with pytest.raises(ValueError, match="EffectiveEchoSpacing must be a positive"):
        total_readout_time({"EffectiveEchoSpacing": "fast", "ReconMatrixPE": 96})


# --------------------------------------------------------------------------- mean b0 node


def write_series(folder: Path) -> tuple[str, str, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.uniform(1, 100, size=(4, 4, 3, 5)).astype(np.float32)
    dwi = folder / "dwi.nii.gz"
    nb.save(nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), dwi)
    bval = folder / "dwi.bval"
    bval.write_text("0 1000 5 1000 2000\n")
    return str(dwi), str(bval), data[..., [0, 2]].mean(axis=-1)


def test_mean_b0_function(tmp_path, monkeypatch):
    dwi, bval, expected = write_series(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = mean_b0_file(dwi, bval, 50.0)
    np.testing.assert_allclose(nb.load(out).get_fdata(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no b0 volume"):
        mean_b0_file(dwi, bval, 0.0)


def test_mean_b0_node_runs(tmp_path, no_fsl):
    """The Function node is self-contained (Nipype runs its source in a fresh namespace)."""
    dwi, bval, expected = write_series(tmp_path)
    node = init_fsl_preproc_wf(has_reverse_pe=False, use_gpu=False).get_node("mean_b0")
    node.base_dir = str(tmp_path / "work")
    node.inputs.in_file, node.inputs.in_bval = dwi, bval
    result = node.run()
    np.testing.assert_allclose(nb.load(result.outputs.out_file).get_fdata(), expected, rtol=1e-6)
