"""Workflow graphs built from small BIDS layouts (no execution)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bids_harmony.bids.discovery import discover
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError
from bids_harmony.workflows.participant import init_participant_wf, wf_name
from bids_harmony.workflows.run import resolve_backend
from tests.conftest import make_bids


def make_config(bids: Path, tmp_path: Path, **kwargs) -> Config:
    return Config(bids_dir=bids, output_dir=tmp_path / "out", analysis_level="participant",
                  work_dir=tmp_path / "work", **kwargs)  # fmt: skip


def test_one_subworkflow_per_run(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"), sessions=("A", "B"))
    study = discover(bids)
    wf = init_participant_wf(study, make_config(bids, tmp_path, omp_nthreads=2), backend="python")
    names = set(wf.list_node_names())
    for run in study.runs:
        for node in ("preprocess_python", "fit_sh", "metrics", "ds_participant"):
            assert f"{wf_name(run.prefix)}.{node}" in names
    metrics = wf.get_node(f"{wf_name(study.runs[0].prefix)}.metrics")
    assert metrics.inputs.n_threads == 2 and metrics.n_procs == 2
    assert metrics.inputs.sh_order == 8


def test_flags_reach_the_python_backend(tmp_path):
    bids = make_bids(tmp_path / "bids")
    study = discover(bids)
    config = make_config(bids, tmp_path, denoise="mppca", remove_gibbs=True, omp_nthreads=1)
    wf = init_participant_wf(study, config, backend="python")
    prep = wf.get_node(f"{wf_name(study.runs[0].prefix)}.preprocess_python")
    assert prep.inputs.denoise == "mppca" and prep.inputs.remove_gibbs
    wf = init_participant_wf(study, config, backend="none")
    prep = wf.get_node(f"{wf_name(study.runs[0].prefix)}.preprocess_none")
    assert prep.inputs.denoise == "none" and not prep.inputs.remove_gibbs


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    assert resolve_backend("auto") == "python"
    assert resolve_backend("none") == "none"
    with pytest.raises(BidsHarmonyError, match="FSL"):
        resolve_backend("fsl")


def test_dki_node_only_for_runs_that_hold_the_fit(tmp_path, caplog):
    import logging

    import numpy as np

    from tests.conftest import fibonacci_directions

    bids = make_bids(tmp_path / "bids", sessions=("A", "B"))
    # ses-B: the same 32 volumes as two shells of 15 directions each
    stem = bids / "sub-01" / "ses-B" / "dwi" / "sub-01_ses-B_dwi"
    bvals = np.r_[0, 0, np.full(15, 1000), np.full(15, 2000)]
    bvecs = np.vstack([np.zeros((2, 3)), fibonacci_directions(30)])
    stem.with_suffix(".bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    stem.with_suffix(".bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in bvecs[:, i]) for i in range(3)) + "\n"
    )
    study = discover(bids)
    single, multi = (wf_name(run.prefix) for run in study.runs)
    with caplog.at_level(logging.INFO, logger="bids_harmony"):
        wf = init_participant_wf(study, make_config(bids, tmp_path, omp_nthreads=2),
                                 backend="none")  # fmt: skip
    names = set(wf.list_node_names())
    assert f"{multi}.fit_dki" in names and f"{multi}.ds_dki" in names
    assert f"{single}.fit_dki" not in names
    assert wf.get_node(f"{multi}.fit_dki").inputs.n_procs == 2
    assert "DKI needs two non-zero shells; sub-01_ses-A has one (b=1000)." in caplog.text
    wf = init_participant_wf(study, make_config(bids, tmp_path, omp_nthreads=2, dki=False),
                             backend="none")  # fmt: skip
    assert not [name for name in wf.list_node_names() if "dki" in name]
