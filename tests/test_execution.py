"""Nipype execution: plugin files, crash collection and summaries, resumable runs."""

from __future__ import annotations

import logging

import pytest
from nipype import config as nipype_config
from nipype.interfaces.base import CommandLine
from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_harmony.cli.run import main
from bids_harmony.errors import InputDatasetError
from bids_harmony.workflows.execution import (
    ProcessingError,
    choose_plugin,
    ensure_bidsignore,
    load_plugin_file,
    new_log_dir,
    nipype_settings,
    run_workflow,
)
from bids_harmony.workflows.participant import wf_name


def test_plugin_file_slurm(tmp_path):
    path = tmp_path / "slurm.yml"
    path.write_text("plugin: slurm\nplugin_args:\n  sbatch_args: --time=2:00:00 --mem=8G\n"
                    "  max_jobs: 20\n")  # fmt: skip
    plugin, args = choose_plugin(path, nprocs=4, n_runs=10, callback=print)
    assert plugin == "SLURM"
    assert args == {"sbatch_args": "--time=2:00:00 --mem=8G", "max_jobs": 20,
                    "status_callback": print}  # fmt: skip


def test_plugin_defaults(tmp_path):
    path = tmp_path / "multiproc.yml"
    path.write_text("plugin: MultiProc\n")
    plugin, args = choose_plugin(path, nprocs=3, n_runs=1, callback=None)
    assert plugin == "MultiProc" and args["n_procs"] == 3
    assert choose_plugin(None, nprocs=4, n_runs=2, callback=None)[0] == "MultiProc"
    assert choose_plugin(None, nprocs=4, n_runs=1, callback=None)[0] == "Linear"
    assert choose_plugin(None, nprocs=1, n_runs=5, callback=None)[0] == "Linear"
    graph = tmp_path / "graph.yml"
    graph.write_text("plugin: SLURMGraph\n")
    assert "status_callback" not in choose_plugin(graph, 1, 1, callback=print)[1]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("plugin: [unclosed", "cannot read the YAML"),
        ("- a list\n", "needs a 'plugin' key"),
        ("plugin: Slurmy\n", "unknown plugin 'Slurmy'.*SLURM"),
        ("plugin: SGE\nplugin_args: [1, 2]\n", "'plugin_args' must be a mapping"),
    ],
)
def test_bad_plugin_files(tmp_path, text, match):
    path = tmp_path / "plugin.yml"
    path.write_text(text)
    with pytest.raises(InputDatasetError, match=match) as err:
        load_plugin_file(path)
    assert str(path) in str(err.value)


def test_bad_plugin_file_from_the_cli(small_bids, tmp_path, caplog):
    path = tmp_path / "plugin.yml"
    path.write_text("plugin: Nonsense\n")
    out = tmp_path / "out"
    code = main([str(small_bids), str(out), "participant", "--use-plugin", str(path),
                 "-w", str(tmp_path / "work")])  # fmt: skip
    assert code == 2 and "unknown plugin 'Nonsense'" in caplog.text
    assert not list(out.rglob("*.nii.gz"))


def test_crash_summary_names_the_run_and_the_tool_output(tmp_path):
    log_dir = new_log_dir(tmp_path / "out")
    nipype_config.update_config(nipype_settings(log_dir))
    prefix = "sub-01_ses-GE1_dwi"
    top = pe.Workflow(name="top", base_dir=str(tmp_path / "work"))
    run_wf = pe.Workflow(name=wf_name(prefix))
    tool = CommandLine(
        "sh", args="-c 'echo starting; echo \"EDDY:::  ERROR: inconsistent acqp\" >&2; exit 3'"
    )
    failing = pe.Node(tool, name="eddy")
    ok = pe.Node(IdentityInterface(fields=["x"]), name="other")
    ok.inputs.x = 1
    run_wf.add_nodes([failing, ok])
    top.add_nodes([run_wf])
    with pytest.raises(ProcessingError) as err:
        run_workflow(top, plugin="Linear", plugin_args={}, log_dir=log_dir,
                     names={wf_name(prefix): prefix})  # fmt: skip
    message = str(err.value)
    assert f"{prefix}: node eddy failed" in message
    assert "EDDY:::  ERROR: inconsistent acqp" in message
    assert "--work-dir" in message and str(log_dir) in message
    summary = (log_dir / "crash_summary.txt").read_text()
    assert prefix in summary and "crash file:" in summary
    assert len(list(log_dir.glob("crash-*.txt"))) == 1


def test_bidsignore(tmp_path):
    (tmp_path / ".bidsignore").write_text("extra/\n")
    ensure_bidsignore(tmp_path)
    ensure_bidsignore(tmp_path)
    assert (tmp_path / ".bidsignore").read_text() == "extra/\nlogs/\n"


def test_bad_input_found_in_a_node_exits_2_with_a_crash_summary(
    small_bids, tmp_path, caplog, capsys, monkeypatch
):
    # What only processing finds (here a truncated image, with the input checks
    # switched off) is the input's fault: exit 2, our message, no traceback.
    monkeypatch.setattr("bids_harmony.bids.discovery.check_runs", lambda *a, **k: [])
    caplog.set_level(logging.INFO, logger="bids_harmony")
    dwi = next(small_bids.rglob("*_dwi.nii.gz"))
    dwi.write_bytes(dwi.read_bytes()[:-2000])
    out = tmp_path / "out"
    plugin = tmp_path / "linear.yml"
    plugin.write_text("plugin: Linear\n")
    code = main([str(small_bids), str(out), "participant", "--preproc", "python",
                 "--use-plugin", str(plugin), "-w", str(tmp_path / "work")])  # fmt: skip
    assert code == 2
    (summary,) = out.glob("logs/*/crash_summary.txt")
    text = summary.read_text()
    assert "sub-01_ses-A: node preprocess_python failed" in text
    assert f"BadImageError: {dwi}" in text  # our message, naming the file
    assert "bad input found during processing" in caplog.text
    assert "Traceback" not in caplog.text + capsys.readouterr().err
    assert "logs/" in (out / ".bidsignore").read_text()
    assert "with Linear" in caplog.text


def test_failed_node_exits_1(small_bids, tmp_path, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr("bids_harmony.dmri.preprocess.check_finite", broken)
    out = tmp_path / "out"
    code = main([str(small_bids), str(out), "participant", "--preproc", "python",
                 "-w", str(tmp_path / "work")])  # fmt: skip
    assert code == 1
    (summary,) = out.glob("logs/*/crash_summary.txt")
    assert "a bug, not bad input" in summary.read_text()
    assert "processing failed" in caplog.text


def test_tool_error_of_older_nipype_crash_files(tmp_path):
    (tmp_path / "crash-1-node.txt").write_text(
        "Node: wf.run_sub_02_dwi.fsl_preproc_wf.topup\n"
        "Traceback:\nRuntimeError: Command:\ntopup --imain=b0s\nStandard output:\n\n"
        "Standard error:\ntopup: image dimensions must be a multiple of the subsampling\n"
        "Return code: 1\n"
    )
    from bids_harmony.workflows.execution import crash_summary

    text = crash_summary(tmp_path, {"run_sub_02_dwi": "sub-02_dwi"})
    assert text.startswith("sub-02_dwi: node topup failed")
    assert "    topup: image dimensions must be a multiple of the subsampling" in text


def test_unwritable_output_dir_says_how_to_fix_it(small_bids, tmp_path, caplog, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    # Running as root here: the permission check cannot fail for real, so deny it.
    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    code = main([str(small_bids), str(out), "participant", "-w", str(tmp_path / "work")])
    assert code == 2
    assert f"output directory {out} is not writable (Permission denied)" in caplog.text
    assert "docker run -u $(id -u):$(id -g)" in caplog.text and "uid" in caplog.text
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_rerun_with_the_same_work_dir_resumes(tmp_path, monkeypatch):
    from bids_harmony.dmri import preprocess
    from tests.conftest import make_bids

    bids = make_bids(tmp_path / "bids", sessions=("A", "B"))
    check_finite = preprocess.check_finite

    def fails_on_b(data, *, name):  # a failure of session B's processing (a full disk, say)
        if "ses-B" in str(name):
            raise RuntimeError("No space left on device")
        check_finite(data, name=name)

    monkeypatch.setattr(preprocess, "check_finite", fails_on_b)
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(bids), str(out), "participant", "--preproc", "python", "--nprocs", "1",
            "--no-gfa", "-w", str(work)]  # fmt: skip
    assert main(args) == 1
    (done,) = work.rglob("run_sub_01_ses_A/fit_sh/result_fit_sh.pklz")
    stamp = done.stat().st_mtime_ns
    assert list(out.rglob("sub-01_ses-A*_dwimap.nii.gz"))
    assert not list(out.rglob("sub-01_ses-B*_dwimap.nii.gz"))
    monkeypatch.setattr(preprocess, "check_finite", check_finite)
    assert main(args) == 0
    assert done.stat().st_mtime_ns == stamp  # session A came from the work directory
    assert list(out.rglob("sub-01_ses-B*_dwimap.nii.gz"))


def test_read_only_output_dir(small_bids, tmp_path, caplog, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    out = tmp_path / "out"
    assert main([str(small_bids), str(out), "participant", "-w", str(tmp_path / "w")]) == 2
    assert "is on a read-only file system" in caplog.text and "without ':ro'" in caplog.text
