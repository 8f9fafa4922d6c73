"""Provenance of the outputs: dataset description, software versions, sidecar sources."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bids_harmony.bids import derivatives
from bids_harmony.bids.derivatives import (
    RunNames,
    dataset_description,
    detect_container,
    software_versions,
    write_dataset_description,
)
from bids_harmony.bids.outputs import (
    harmonized_derivatives,
    harmonized_sources,
    participant_derivatives,
)
from bids_harmony.workflows.references import how_to_acknowledge

CONTAINER_VARIABLES = (
    "BIDS_HARMONY_CONTAINER_IMAGE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER",
)  # fmt: skip


# ----------------------------------------------------------- dataset description


def test_how_to_acknowledge_is_written_with_the_references(tmp_path):
    path = write_dataset_description(tmp_path / "out", tmp_path / "bids",
                                     acknowledge=how_to_acknowledge())  # fmt: skip
    text = json.loads(path.read_text())["HowToAcknowledge"]
    assert "Jeong H" in text and "HARmonizing in-vivo diffusion MRI" in text
    assert "https://doi.org/10.1016/j.neuroimage.2018.08.073" in text  # LinearRISH
    assert "Garyfallidis E" in text and "CITATION.cff" in text
    # without one, the description still says where the references are
    assert "logs/CITATION.md" in dataset_description(tmp_path / "bids")["HowToAcknowledge"]


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: no container variable, no /.dockerenv, a plain cgroup, no venv."""
    for name in CONTAINER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/\n")
    monkeypatch.setattr(derivatives, "DOCKER_ENV_FILE", tmp_path / "dockerenv")
    monkeypatch.setattr(derivatives, "CGROUP_FILE", cgroup)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)

    class Machine:
        def docker(self) -> None:
            (tmp_path / "dockerenv").touch()

        def docker_cgroup(self) -> None:
            cgroup.write_text("12:pids:/docker/4f2a9c\n0::/\n")

        def venv(self) -> None:
            monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))

        def env(self, name: str, value: str) -> None:
            monkeypatch.setenv(name, value)

    return Machine()


def test_no_container_outside_one(machine, tmp_path):
    assert detect_container() is None
    assert "Container" not in dataset_description(tmp_path)["GeneratedBy"][0]


def test_a_venv_inside_a_docker_machine_is_no_container(machine, tmp_path):
    machine.docker()
    machine.venv()
    assert detect_container() is None
    assert "Container" not in dataset_description(tmp_path)["GeneratedBy"][0]


@pytest.mark.parametrize("how", ["dockerenv", "cgroup"])
def test_docker(machine, how):
    machine.docker() if how == "dockerenv" else machine.docker_cgroup()
    assert detect_container() == {"Type": "docker"}


def test_our_docker_image(machine):
    # the image's package lives in /opt/venv; its variable says it is ours
    machine.docker()
    machine.venv()
    machine.env("BIDS_HARMONY_CONTAINER_IMAGE", "bids_harmony:0.1.0")
    assert detect_container() == {"Type": "docker", "Tag": "bids_harmony:0.1.0"}


@pytest.mark.parametrize(("variable", "kind"), [("SINGULARITY_CONTAINER", "singularity"),
                                                ("APPTAINER_CONTAINER", "apptainer")])  # fmt: skip
def test_singularity_and_apptainer(machine, tmp_path, variable, kind):
    machine.venv()  # whatever Python runs inside
    machine.env(variable, "/images/bids_harmony_0.1.0.sif")
    assert detect_container() == {"Type": kind, "Tag": "bids_harmony_0.1.0.sif"}
    machine.env("BIDS_HARMONY_CONTAINER_IMAGE", "bids_harmony:0.1.0")
    desc = dataset_description(tmp_path)
    assert desc["GeneratedBy"][0]["Container"] == {"Type": kind, "Tag": "bids_harmony:0.1.0"}


def test_software_versions_include_torch():
    versions = software_versions()
    assert {"bids_harmony", "dipy", "nipype", "torch"} <= set(versions)


# ------------------------------------------------------------ sidecar sources


def _sidecars(tmp_path: Path) -> dict[str, dict]:
    """Sidecars of one two-shell run and its HARP outputs, by output name (no file written)."""
    labels, bvals = ["b1000", "b2000"], [1000.0, 2000.0]
    run = {"entities": {"sub": "01", "ses": "GE1", "acq": "ms"}, "n_shells": 2,
           "source": "sub-01/ses-GE1/dwi/x_dwi.nii.gz", "bval": "x.bval", "bvec": "x.bvec",
           "site": "GE", "is_phantom": False}  # fmt: skip
    work = tmp_path / "work"
    prep = {k: str(work / f"prep.{k}") for k in ("dwi", "bval", "bvec", "mask")}
    shells = [{"label": lb, "bval": b, "order": 8, "n_directions": 30, "lowered": False,
               "file": str(work / f"sh_{lb}.nii.gz"), "scales": str(work / f"s_{lb}.nii.gz")}
              for lb, b in zip(labels, bvals, strict=True)]  # fmt: skip
    metrics = [{"label": lb, "bval": b, "fa": "fa", "md": "md", "gfa": "gfa"}
               for lb, b in zip(labels, bvals, strict=True)]  # fmt: skip
    model = {"file": "harp_src-GE_tgt-Prisma.safetensors", "sha256": "ab" * 32,
             "source_site": "GE", "target_site": "Prisma"}  # fmt: skip
    raw_shells = [{k: v for k, v in s.items() if k != "scales"} for s in shells]
    items = participant_derivatives(run, prep, raw_shells, metrics, {})
    items += harmonized_derivatives(run, {"dwi": "h", "bval": "h", "bvec": "h"}, shells,
                                    metrics, {}, model)  # fmt: skip
    return {item.relpath.name: dict(item.sidecar) for item in items}


def test_harmonized_sidecars_name_their_inputs_only(tmp_path):
    sidecars = _sidecars(tmp_path)
    harmonized = {name: s for name, s in sidecars.items() if "_desc-harp_" in name}
    assert len(harmonized) == 1 + 2 * 5  # DWI; per shell SH, scales, FA, MD, GFA
    model = "bids::models/harp_src-GE_tgt-Prisma.safetensors"
    mask = "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-ms_space-dwi_desc-brain_mask.nii.gz"
    preproc = "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-ms_space-dwi_desc-preproc_dwi.nii.gz"
    for name, sidecar in harmonized.items():
        sources = sidecar["Sources"]
        assert not [s for s in sources if "desc-harp" in s], (name, sources)
        assert model in sources and mask in sources, name
        assert sidecar["Harmonization"]["ModelSHA256"] == "ab" * 32
        assert len(set(sources)) == len(sources), name
        # every source is an output of this dataset (or the model), none is missing
        for source in sources:
            assert source == model or source.removeprefix("bids::").rsplit("/")[-1] in sidecars
    dwi = harmonized["sub-01_ses-GE1_acq-ms_desc-harp_dwi.nii.gz"]["Sources"]
    assert dwi == [
        preproc,
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-msb1000_model-sh_param-coeffs_dwimap.nii.gz",
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-msb2000_model-sh_param-coeffs_dwimap.nii.gz",
        mask, model,
    ]
    sh = harmonized["sub-01_ses-GE1_acq-msb2000_desc-harp_model-sh_param-coeffs_dwimap.nii.gz"]
    assert sh["Sources"] == [
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-msb2000_model-sh_param-coeffs_dwimap.nii.gz",
        mask, model,
    ]
    fa = harmonized["sub-01_ses-GE1_acq-msb1000_desc-harp_model-tensor_param-fa_dwimap.nii.gz"]
    assert fa["Sources"][0] == preproc and "acq-msb1000_model-sh" in fa["Sources"][1]


def test_unharmonized_sidecars_are_unchanged(tmp_path):
    sidecars = _sidecars(tmp_path)
    preproc = sidecars["sub-01_ses-GE1_acq-ms_space-dwi_desc-preproc_dwi.nii.gz"]
    assert preproc["Sources"][0] == "bids:raw:sub-01/ses-GE1/dwi/x_dwi.nii.gz"
    sh = sidecars["sub-01_ses-GE1_acq-msb1000_model-sh_param-coeffs_dwimap.nii.gz"]
    assert [s.rsplit("_", 1)[-1] for s in sh["Sources"]] == ["dwi.nii.gz", "mask.nii.gz"]


def test_linear_rish_without_a_model_file():
    # scales fitted by the group level on the spot: no model file to name
    names = RunNames({"sub": "01", "ses": "GE1"}, 1)
    sources = harmonized_sources(names, "b1000", "gfa", None)
    assert sources == [
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-preproc_dwi.nii.gz",
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz",
        "bids::sub-01/ses-GE1/dwi/sub-01_ses-GE1_space-dwi_desc-brain_mask.nii.gz",
    ]
