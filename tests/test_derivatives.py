"""Derivative naming, atomic writes and the dataset description."""

from __future__ import annotations

import json

import pytest

from bids_harmony.bids import io
from bids_harmony.bids.derivatives import (
    bids_name,
    dataset_description,
    raw_entities,
    shell_acq,
    sidecar_path,
    write_dataset_description,
)
from bids_harmony.errors import OutputDirectoryError


def test_entity_order_follows_bids():
    name = bids_name(
        {"param": "fa", "model": "tensor", "acq": "b1000", "ses": "GE1", "sub": "01",
         "run": "2", "desc": "harp"},
        "dwimap", ".nii.gz",
    )  # fmt: skip
    assert (
        name == "sub-01_ses-GE1_acq-b1000_run-2_desc-harp_model-tensor_param-fa_dwimap.nii.gz"
    )


def test_unknown_entity_rejected():
    with pytest.raises(ValueError, match="unknown"):
        bids_name({"sub": "01", "bogus": "x"}, "dwi", ".nii.gz")


def test_raw_entities_maps_pybids_names():
    ents = raw_entities({"subject": "01", "session": "A", "acquisition": "b1000",
                         "suffix": "dwi", "extension": ".nii.gz", "run": 1})  # fmt: skip
    assert ents == {"sub": "01", "ses": "A", "acq": "b1000", "run": "1"}


def test_shell_acq():
    assert shell_acq(None, "b2000", 2) == "b2000"
    assert shell_acq("b1000", "b1000", 1) == "b1000"
    assert shell_acq("multishell", "b1000", 2) == "multishellb1000"


def test_sidecar_path():
    from pathlib import Path

    assert sidecar_path(Path("a/x_dwi.nii.gz")) == Path("a/x_dwi.json")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_dataset_description(tmp_path):
    desc = dataset_description(tmp_path / "bids")
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bids_harmony"
    assert desc["SourceDatasets"][0]["URL"].startswith("file://")
    path = write_dataset_description(tmp_path / "out", tmp_path / "bids")
    assert json.loads(path.read_text())["BIDSVersion"] == "1.9.0"
    # A second write keeps the first one.
    assert write_dataset_description(tmp_path / "out", tmp_path / "other") == path


def test_foreign_description_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(
        json.dumps({"GeneratedBy": [{"Name": "qsiprep"}]})
    )
    with pytest.raises(OutputDirectoryError, match="qsiprep"):
        write_dataset_description(out, tmp_path)
