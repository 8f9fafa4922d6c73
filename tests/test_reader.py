"""The derivatives reader (bids.reader) finds what the writer (bids.outputs) writes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bids_harmony.bids.derivatives import RunNames, write_derivatives
from bids_harmony.bids.outputs import harmonized_derivatives, participant_derivatives
from bids_harmony.bids.reader import RunOutputs
from bids_harmony.errors import MissingOutputError


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


def write_run(out: Path, work: Path, entities: dict[str, str], bvals: list[float]) -> list[Path]:
    """Participant + HARP outputs of one run through the real writer (empty files)."""
    labels = [f"b{int(b)}" for b in bvals]
    run = {
        "entities": entities,
        "n_shells": len(bvals),
        "source": "sub-x/dwi/sub-x_dwi.nii.gz",
        "bval": "sub-x/dwi/sub-x_dwi.bval",
        "bvec": "sub-x/dwi/sub-x_dwi.bvec",
        "site": "GE",
        "is_phantom": False,
    }
    prep = {k: _touch(work / f"prep.{k}") for k in ("dwi", "bval", "bvec", "mask")}
    shells = [
        {"label": lb, "bval": b, "order": 8, "n_directions": 30, "lowered": False,
         "file": _touch(work / f"sh_{lb}.nii.gz"), "scales": _touch(work / f"s_{lb}.nii.gz")}
        for lb, b in zip(labels, bvals, strict=True)
    ]  # fmt: skip
    metrics = [
        {"label": lb, "bval": b, **{k: _touch(work / f"{k}_{lb}.nii.gz") for k in ("fa", "md")},
         "gfa": _touch(work / f"gfa_{lb}.nii.gz")}
        for lb, b in zip(labels, bvals, strict=True)
    ]  # fmt: skip
    raw_shells = [{k: v for k, v in s.items() if k != "scales"} for s in shells]
    harmonized = {k: prep[k] for k in ("bval", "bvec")} | {"dwi": _touch(work / "h.nii.gz")}
    model = {"file": "harp_src-GE_tgt-Prisma.safetensors", "sha256": "0" * 64,
             "source_site": "GE", "target_site": "Prisma"}  # fmt: skip
    derivatives = participant_derivatives(run, prep, raw_shells, metrics, {})
    derivatives += harmonized_derivatives(run, harmonized, shells, metrics, {}, model)
    return write_derivatives(out, derivatives)


@pytest.mark.parametrize(
    ("entities", "bvals"),
    [
        ({"sub": "01", "ses": "GE1", "acq": "multishell"}, [1000.0, 2000.0]),
        ({"sub": "01", "acq": "b1000", "run": "2"}, [1000.0]),  # acq is the shell label
        ({"sub": "02", "ses": "A"}, [1000.0, 3000.0]),
    ],
    ids=["multishell", "single-shell-no-session", "no-acq"],
)
def test_reader_finds_every_file_the_writer_writes(tmp_path, entities, bvals):
    out = tmp_path / "out"
    written = write_run(out, tmp_path / "work", entities, bvals)
    reader = RunOutputs.from_entities(out, entities, bvals)
    assert reader.files() == sorted(written)
    assert reader.methods() == ["harp"]
    labels = [f"b{int(b)}" for b in bvals]
    assert reader.shells() == reader.shells("harp", kinds=("sh", "fa", "md", "gfa")) == labels
    for label in labels:
        assert reader.sh(label) in written and reader.sh(label, "harp") in written
        assert reader.map(label, "csd", "gfa", "harp") == reader.shell_map(label, "gfa", "harp")
        assert "_desc-harp_model-harp_param-scales_dwimap" in reader.scales(label).name
        assert reader.shell_map(label, "fa") == reader.map(float(label[1:]), "tensor", "fa")
    preproc, harp = reader.preproc(), reader.dwi("harp")
    assert preproc.dwi.name.endswith("_space-dwi_desc-preproc_dwi.nii.gz")
    assert harp.dwi.name.endswith("_desc-harp_dwi.nii.gz") and harp.bvec.is_file()
    sidecar = json.loads(reader.sh(labels[0], "harp").with_suffix("").with_suffix(".json")
                         .read_text())  # fmt: skip
    assert sidecar["Harmonization"]["Method"] == "harp"
    assert sidecar["Harmonization"]["Description"].startswith("HARP")
    assert reader.mask() == out / RunNames(entities, len(bvals)).mask()


def test_names_of_a_discovered_run():
    run = SimpleNamespace(
        entities={"subject": "01", "session": "GE1", "acquisition": "b1000", "run": 1},
        shells=(1000.0,),
    )
    names = RunNames.of_run(run)
    assert names.prefix == "sub-01_ses-GE1_acq-b1000_run-1"
    assert names.folder == Path("sub-01/ses-GE1/dwi")
    assert names.shell_map("b1000", "sh").name == (
        "sub-01_ses-GE1_acq-b1000_run-1_model-sh_param-coeffs_dwimap.nii.gz"
    )
    assert names.scales("b1000", "rish").name == (
        "sub-01_ses-GE1_acq-b1000_run-1_desc-rish_model-rish_param-scales_dwimap.nii.gz"
    )
    assert names.dwi("harp", ".bval").name == "sub-01_ses-GE1_acq-b1000_run-1_desc-harp_dwi.bval"
    reader = RunOutputs.of_run("/out", run)
    assert reader.shell_labels == ("b1000",) and reader.folder == Path("/out/sub-01/ses-GE1/dwi")


def test_absent_incomplete_and_wrong_requests(tmp_path):
    reader = RunOutputs.from_entities(tmp_path, {"sub": "01", "ses": "A"}, [1000.0, 2000.0])
    assert reader.mask() is None and reader.preproc() is None and reader.sh("b1000") is None
    assert reader.shells() == [] and reader.methods() == [] and reader.files() == []
    with pytest.raises(
        MissingOutputError, match=r"sub-01_ses-A_space-dwi_desc-brain_mask.*missing"
    ):
        reader.mask(required=True)
    # an image whose sidecar was never written is an interrupted write
    image = tmp_path / reader.names.shell_map("b1000", "fa")
    _touch(image)
    assert reader.shell_map("b1000", "fa") is None
    with pytest.raises(MissingOutputError, match="incomplete"):
        reader.shell_map("b1000", "fa", required=True)
    _touch(tmp_path / reader.names.shell_map("b1000", "fa", extension=".json"))
    assert reader.shell_map("b1000", "fa") == image
    # a DWI series needs its gradient files too
    for ext in (".nii.gz", ".json", ".bval"):
        _touch(tmp_path / reader.names.dwi(extension=ext))
    assert reader.preproc() is None
    with pytest.raises(MissingOutputError, match=r"\.bvec"):
        reader.preproc(required=True)
    with pytest.raises(ValueError, match="no shell b3000; its shells: b1000, b2000"):
        reader.sh("b3000")
    with pytest.raises(ValueError, match="not a BIDS label"):
        reader.sh("b1000", "har_p")
    with pytest.raises(ValueError, match="reserved"):
        reader.dwi("preproc")


def test_methods_found_from_maps_alone(tmp_path):
    """LinearRISH writes per-shell maps and scales, no DWI; the reader still finds it."""
    reader = RunOutputs.from_entities(tmp_path, {"sub": "01", "ses": "A", "acq": "ms"}, [1000.0])
    for relpath in (reader.names.shell_map("b1000", "sh", "rish"),
                    reader.names.scales("b1000", "rish")):  # fmt: skip
        _touch(tmp_path / relpath)
        _touch(tmp_path / relpath.with_name(relpath.name.replace(".nii.gz", ".json")))
    _touch(tmp_path / reader.names.folder / "sub-01_ses-A_acq-msb1000_desc-x_y_dwimap.nii.gz")
    assert reader.methods() == ["rish"]
    assert (
        reader.sh("b1000", "rish").name
        == "sub-01_ses-A_acq-msb1000_desc-rish_model-sh_param-coeffs_dwimap.nii.gz"
    )
    assert reader.shells("rish") == ["b1000"] and reader.shells() == []
    assert reader.shell_maps("sh", "rish") == {"b1000": reader.sh("b1000", "rish")}
    assert len(reader.files()) == 4


def test_group_inputs_read_through_the_reader(tmp_path):
    from bids_harmony.bids.group_inputs import KINDS, run_shells

    out = tmp_path / "out"
    entities = {"sub": "01", "ses": "GE1", "acq": "multishell"}
    write_run(out, tmp_path / "work", entities, [1000.0, 2000.0])
    run = SimpleNamespace(
        entities={"subject": "01", "session": "GE1", "acquisition": "multishell"},
        shells=(1000.0, 2000.0),
    )
    shells = run_shells(out, run)
    assert [m.label for m in shells] == ["b1000", "b2000"]
    for m in shells:
        assert set(m.raw) == set(m.harp) == set(KINDS)
        assert all(p.is_file() for p in [*m.raw.values(), *m.harp.values()])
        assert m.file("fa", "rish").name.endswith("_desc-rish_model-tensor_param-fa_dwimap.nii.gz")
        assert m.outputs.mask() is not None
