"""BIDS discovery on skeleton datasets written in tmp_path."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_harmony.bids.discovery import (
    DwiRun,
    Study,
    load_bids_filters,
    load_site_map,
    read_gradients,
    sanitize_label,
)
from bids_harmony.errors import (
    BadGradientsError,
    BadImageError,
    InputDatasetError,
    NoDataError,
)


def discover(*args, **kwargs) -> Study:
    """Discovery without the plausibility checks: these skeleton runs hold zeros and three
    directions on purpose (the checks have their own tests, test_input_checks.py)."""
    from bids_harmony.bids.discovery import discover as discover_checked

    kwargs.setdefault("checks", False)
    return discover_checked(*args, **kwargs)


BVALS = [0, 1000, 1000, 1000]
BVECS = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]  # file layout: 3 rows, one column per volume
PRISMA = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma"}
PREMIER = {"Manufacturer": "GE", "ManufacturersModelName": "SIGNA Premier"}


def write_gradients(stem: Path, bvals=None, bvecs=None) -> None:
    """Write ``<stem>.bval``/``<stem>.bvec`` (None: leave that file out)."""
    if bvals is not None:
        stem.with_name(stem.name + ".bval").write_text(" ".join(map(str, bvals)) + "\n")
    if bvecs is not None:
        rows = bvecs if isinstance(bvecs, str) else "\n".join(" ".join(map(str, r)) for r in bvecs)
        stem.with_name(stem.name + ".bvec").write_text(rows + "\n")


def add_run(
    root: Path,
    subject: str,
    session: str | None = None,
    *,
    entities: str = "",
    n_volumes: int | None = None,
    bvals=BVALS,
    bvecs=BVECS,
    sidecar: dict | None = None,
) -> Path:
    """Write one dMRI run (2x2x2xN NIfTI, gradients, optional sidecar); return the image."""
    folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else []) + [entities]
    stem = folder / ("_".join(p for p in parts if p) + "_dwi")
    n = n_volumes if n_volumes is not None else len(bvals if bvals is not None else BVALS)
    shape = (2, 2, 2, n) if n else (2, 2, 2)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), f"{stem}.nii.gz")
    write_gradients(stem, bvals, bvecs)
    if sidecar is not None:
        Path(f"{stem}.json").write_text(json.dumps(sidecar))
    return Path(f"{stem}.nii.gz")


def make_dataset(root: Path, participants: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "skeleton", "BIDSVersion": "1.9.0"}
    (root / "dataset_description.json").write_text(json.dumps(description))
    if participants is not None:
        (root / "participants.tsv").write_text(participants)
    return root


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "bids")


@pytest.fixture
def two_sites(bids: Path) -> Path:
    """Two subjects and a phantom, each scanned on a Prisma and a SIGNA Premier."""
    for subject in ("01", "02", "phantom1"):
        add_run(bids, subject, "GE1", entities="acq-b1000_run-1", sidecar=PREMIER)
        add_run(bids, subject, "SI1", entities="acq-b1000_run-1", sidecar=PRISMA)
    return bids


# --- runs, inheritance, summary ------------------------------------------------------------


def test_run_fields(two_sites: Path) -> None:
    study = discover(two_sites)
    assert isinstance(study, Study)
    assert study.subjects == ["01", "02", "phantom1"]
    run = study.runs_for(subject="sub-01", session="ses-GE1")[0]
    assert isinstance(run, DwiRun)
    assert run.prefix == "sub-01_ses-GE1_acq-b1000_run-1"
    assert run.rel_dir == Path("sub-01/ses-GE1/dwi")
    assert dict(run.entities) == {
        "subject": "01",
        "session": "GE1",
        "acquisition": "b1000",
        "run": "1",
    }
    assert run.dwi.is_absolute() and run.dwi.name == "sub-01_ses-GE1_acq-b1000_run-1_dwi.nii.gz"
    assert run.bval == run.dwi.with_name(run.prefix + "_dwi.bval")
    assert run.sidecar == run.dwi.with_name(run.prefix + "_dwi.json")
    assert run.metadata["ManufacturersModelName"] == "SIGNA Premier"
    assert (run.n_volumes, run.shape) == (4, (2, 2, 2, 4))
    assert run.bvecs.shape == (4, 3) and run.shells == (1000.0,)
    np.testing.assert_allclose(run.bvecs[1:], np.eye(3))
    with pytest.raises(ValueError):
        run.bvals[0] = 1.0  # read-only


def test_inherited_gradients_and_metadata(bids: Path) -> None:
    """dwi.bval/dwi.bvec/dwi.json at the root, a subject-level bvec for sub-01."""
    write_gradients(bids / "dwi", BVALS, BVECS)
    (bids / "dwi.json").write_text(json.dumps(PRISMA | {"DeviceSerialNumber": "1"}))
    subject_bvecs = [[0, -1, 0, 0], [0, 0, -1, 0], [0, 0, 0, -1]]
    add_run(bids, "01", "A", bvals=None, bvecs=None, n_volumes=4, sidecar={"EchoTime": 0.08})
    write_gradients(bids / "sub-01" / "sub-01_dwi", None, subject_bvecs)
    add_run(bids, "02", "A", bvals=None, bvecs=None, n_volumes=4)
    study = discover(bids)
    run1, run2 = study.runs_for(subject="01")[0], study.runs_for(subject="02")[0]
    assert run1.bval == run2.bval == bids / "dwi.bval"
    assert run1.bvec == bids / "sub-01" / "sub-01_dwi.bvec"
    assert run2.bvec == bids / "dwi.bvec"
    np.testing.assert_allclose(run1.bvecs[1:], -np.eye(3))
    assert run1.metadata["EchoTime"] == 0.08 and run1.metadata["DeviceSerialNumber"] == "1"
    assert run2.sidecar is None and run2.metadata["ManufacturersModelName"] == "Prisma"


def test_siemens_b0_and_jittered_bvalues_make_one_shell(bids: Path) -> None:
    bvals = [5, 995, 1005, 1000, 5]
    bvecs = [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]]
    add_run(bids, "01", bvals=bvals, bvecs=bvecs, sidecar=PRISMA)
    (run,) = discover(bids).runs
    assert run.shells == (1000.0,)
    assert run.session is None and run.rel_dir == Path("sub-01/dwi")
    assert np.all(run.bvecs[[0, 4]] == 0)


def test_summary_mentions_sites_subjects_and_shells(two_sites: Path) -> None:
    text = discover(two_sites).summary()
    for expected in ("Prisma", "SIGNAPremier", "sub-01", "sub-02", "ses-GE1", "b1000 x 3"):
        assert expected in text
    assert "phantoms: sub-phantom1" in text
    assert "1 b0" in text


def test_derivatives_sourcedata_and_code_are_ignored(bids: Path) -> None:
    add_run(bids, "01", "A", sidecar=PRISMA)
    for folder in ("derivatives/qsiprep", "sourcedata", "code"):
        add_run(bids / folder, "99", "A")
    assert discover(bids).subjects == ["01"]


def test_database_dir_holds_the_index(bids: Path, tmp_path: Path) -> None:
    add_run(bids, "01", "A", sidecar=PRISMA)
    database = tmp_path / "work" / "bids_db"
    assert len(discover(bids, database_dir=database).runs) == 1
    assert any(database.iterdir())
    assert len(discover(bids, database_dir=database).runs) == 1  # rebuilt, not stale


# --- sites -------------------------------------------------------------------------------------


def test_sites_from_two_models(two_sites: Path) -> None:
    study = discover(two_sites)
    assert study.site_source == "sidecar"
    assert study.sites == ["Prisma", "SIGNAPremier"]
    assert {r.site for r in study.runs_for(session="GE1")} == {"SIGNAPremier"}


def test_sites_same_model_different_serials(bids: Path) -> None:
    add_run(bids, "01", "A", sidecar=PRISMA | {"DeviceSerialNumber": "166038"})
    add_run(bids, "01", "B", sidecar=PRISMA | {"DeviceSerialNumber": "167019"})
    add_run(bids, "02", "A", sidecar=PRISMA | {"DeviceSerialNumber": "166038"})
    study = discover(bids)
    assert study.sites == ["PrismaSN6038", "PrismaSN7019"]
    assert study.runs_for(subject="02")[0].site == "PrismaSN6038"


def test_site_labels_do_not_depend_on_the_selection(bids: Path) -> None:
    """A participant-level run on sub-02 labels its site as a run on everyone does."""
    add_run(bids, "01", "A", sidecar=PRISMA | {"DeviceSerialNumber": "166038"})
    add_run(bids, "02", "A", sidecar=PRISMA | {"DeviceSerialNumber": "167019"})
    add_run(bids, "03", "A", sidecar={"EchoTime": 0.1})  # broken, but not selected
    assert discover(bids, participant_label="02").sites == ["PrismaSN7019"]


def test_sites_same_model_different_field_strengths(bids: Path) -> None:
    add_run(bids, "01", "A", sidecar=PRISMA | {"MagneticFieldStrength": 3})
    add_run(bids, "01", "B", sidecar=PRISMA | {"MagneticFieldStrength": 1.5})
    assert discover(bids).sites == ["Prisma1p5T", "Prisma3T"]


def test_manufacturer_when_model_is_absent(bids: Path) -> None:
    add_run(bids, "01", "A", sidecar={"Manufacturer": "Philips Medical Systems"})
    add_run(bids, "01", "B", sidecar=PREMIER)
    assert discover(bids).sites == ["PhilipsMedicalSystems", "SIGNAPremier"]


def test_sites_from_session_labels(bids: Path) -> None:
    add_run(bids, "01", "GE", sidecar={"EchoTime": 0.1})
    add_run(bids, "01", "Siemens")
    study = discover(bids)
    assert study.site_source == "session"
    assert study.sites == ["GE", "Siemens"]


def test_no_sessions_and_no_scanner_fields(bids: Path) -> None:
    add_run(bids, "01")
    study = discover(bids)
    assert (study.site_source, study.sites) == ("session", ["unknown"])


def test_site_map_overrides_sidecars(two_sites: Path, tmp_path: Path) -> None:
    site_map = tmp_path / "sites.tsv"
    site_map.write_text(
        "participant_id\tsession_id\tsite\n"
        "sub-01\tses-GE1\tGE site 1\n01\tSI1\tSiemens\n"
        "02\tGE1\tGE site 1\nsub-02\tSI1\tSiemens\nphantom1\tn/a\tPhantomLab\n"
    )
    assert load_site_map(site_map)[("01", "GE1")] == "GEsite1"
    study = discover(two_sites, site_map=site_map)
    assert study.site_source == "site-map"
    assert study.sites == ["GEsite1", "PhantomLab", "Siemens"]
    assert {r.site for r in study.runs_for(subject="phantom1")} == {"PhantomLab"}


def test_site_map_must_cover_every_session(two_sites: Path, tmp_path: Path) -> None:
    site_map = tmp_path / "sites.tsv"
    site_map.write_text("participant_id\tsession_id\tsite\n01\tGE1\tGE\n01\tSI1\tSI\n")
    with pytest.raises(InputDatasetError, match=r"sub-02/ses-GE1.*sub-phantom1/ses-SI1"):
        discover(two_sites, site_map=site_map)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("participant_id,session_id,site\n01,A,GE\n", "lacks the column.*tab-separated"),
        ("participant_id\tsession_id\n01\tA\n", "lacks the column.*site"),
        ("participant_id\tsession_id\tsite\n01\tA\tGE\n01\tA\tSI\n", "two sites"),
        ("participant_id\tsession_id\tsite\n01\tA\t--\n", "no ASCII letters"),
        ("participant_id\tsite\n01\tGE-1\n02\tGE 1\n", "both become the label 'GE1'"),
    ],
)
def test_bad_site_maps_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "sites.tsv"
    path.write_text(content)
    with pytest.raises(InputDatasetError, match=match) as info:
        load_site_map(path)
    assert str(path) in str(info.value)


def test_runs_of_one_session_from_two_scanners(bids: Path) -> None:
    add_run(bids, "01", "A", entities="run-1", sidecar=PRISMA)
    add_run(bids, "01", "A", entities="run-2", sidecar=PREMIER)
    with pytest.raises(InputDatasetError, match="sub-01/ses-A come from different scanners"):
        discover(bids)


def test_session_without_scanner_fields_among_others(bids: Path) -> None:
    add_run(bids, "01", "A", sidecar=PRISMA)
    add_run(bids, "01", "B")
    with pytest.raises(InputDatasetError, match="site of sub-01/ses-B.*--site-map"):
        discover(bids)


@pytest.mark.parametrize(("text", "label"), [("SIGNA Premier", "SIGNAPremier"), ("3.0T", "30T")])
def test_sanitize_label(text: str, label: str) -> None:
    assert sanitize_label(text) == label
    with pytest.raises(InputDatasetError, match="no ASCII letters"):
        sanitize_label(" -_ ")


# --- participants, sessions, phantoms ----------------------------------------------------------


@pytest.mark.parametrize("label", [["sub-01"], ["01"], "sub-01", ["01", "sub-01"]])
def test_participant_label_with_or_without_prefix(two_sites: Path, label) -> None:
    study = discover(two_sites, participant_label=label)
    assert study.subjects == ["01"] and len(study.runs) == 2


def test_unknown_participant_lists_existing_ones(two_sites: Path) -> None:
    with pytest.raises(NoDataError, match="sub-03 not found.*sub-01, sub-02, sub-phantom1"):
        discover(two_sites, participant_label=["01", "03"])


def test_session_label(two_sites: Path) -> None:
    study = discover(two_sites, session_label=["ses-GE1"])
    assert {r.session for r in study.runs} == {"GE1"} and study.sites == ["SIGNAPremier"]
    with pytest.raises(NoDataError, match="ses-XX not found.*ses-GE1, ses-SI1"):
        discover(two_sites, session_label="XX")


def test_phantoms_by_label_prefix(two_sites: Path) -> None:
    study = discover(two_sites)
    assert study.phantoms == ["phantom1"] and study.phantom_source == "label-prefix"
    assert all(r.is_phantom == (r.subject == "phantom1") for r in study.runs)


@pytest.mark.parametrize(
    "participants",
    [
        "participant_id\tphantom\nsub-01\tno\nsub-02\tYes\nsub-phantom1\tfalse\n",
        "participant_id\tspecies\nsub-01\thomo sapiens\n02\tPhantom\nsub-phantom1\thomo sapiens\n",
    ],
)
def test_phantoms_from_participants_tsv(two_sites: Path, participants: str) -> None:
    (two_sites / "participants.tsv").write_text(participants)
    study = discover(two_sites)
    assert study.phantoms == ["02"] and study.phantom_source == "participants.tsv"


def test_phantom_label_overrides(two_sites: Path) -> None:
    (two_sites / "participants.tsv").write_text("participant_id\tphantom\nsub-02\t1\n")
    study = discover(two_sites, phantom_label=["sub-01"])
    assert study.phantoms == ["01"] and study.phantom_source == "phantom-label"
    with pytest.raises(NoDataError, match="sub-07 not found"):
        discover(two_sites, phantom_label=["07"])


# --- datasets that cannot be used ---------------------------------------------------------------


def test_not_a_bids_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputDatasetError, match="does not exist"):
        discover(tmp_path / "missing")
    (tmp_path / "sub-01").mkdir()
    with pytest.raises(InputDatasetError, match="dataset_description.json is missing"):
        discover(tmp_path)
    with pytest.raises(InputDatasetError, match="participant folder"):
        discover(tmp_path / "sub-01")
    (tmp_path / "dataset_description.json").write_text('{"Name": "x",}')
    with pytest.raises(InputDatasetError, match="not valid JSON.*line 1"):
        discover(tmp_path)
    (tmp_path / "dataset_description.json").write_text('{"Name": "x"}')
    with pytest.raises(InputDatasetError, match="BIDSVersion.*--skip-bids-validation"):
        discover(tmp_path)


def test_no_dwi_runs(bids: Path) -> None:
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), anat / "sub-01_T1w.nii.gz")
    with pytest.raises(NoDataError, match=r"No dMRI runs found in .*_dwi\.nii\[\.gz\]"):
        discover(bids)


def test_invalid_names_hint_at_skipping_validation(bids: Path) -> None:
    add_run(bids, "01", "A", entities="foo-bar", sidecar=PRISMA)
    with pytest.raises(NoDataError, match="skip-bids-validation"):
        discover(bids)
    assert len(discover(bids, validate=False).runs) == 1


# --- gradients and images -------------------------------------------------------------------


def test_missing_bval(bids: Path) -> None:
    dwi = add_run(bids, "01", "A", bvals=None, n_volumes=4)
    with pytest.raises(BadGradientsError, match="No .bval file") as info:
        discover(bids)
    assert str(dwi) in str(info.value)
    assert "sub-01_ses-A_dwi.bval" in str(info.value)


@pytest.mark.parametrize(
    ("bvecs", "match"),
    [
        ("0 1 0 0\n0 0 one 0\n0 0 0 1", "not a numeric table"),
        ("0 1 0 0\n0 0 1 0", "2 row"),
        ("0 0 0\n1 0 0\n0 1 0\n0 0 1", "looks transposed"),
        ("  \n", "is empty"),
    ],
)
def test_malformed_bvec_names_the_file(bids: Path, bvecs: str, match: str) -> None:
    dwi = add_run(bids, "01", "A", bvecs=bvecs)
    with pytest.raises(BadGradientsError, match=match) as info:
        discover(bids)
    assert str(dwi).replace(".nii.gz", ".bvec") in str(info.value)


@pytest.mark.parametrize(
    ("bvals", "bvecs", "n_volumes", "match"),
    [
        (BVALS, BVECS, 5, "4 entries but the image has 5 volumes"),
        (BVALS, [[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], 4, r"volumes 2 \(\|g\|=0\)"),
        (BVALS, [[0, 1, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, 1]], 4, r"volumes 2 \(\|g\|=0.5\)"),
        ([1000, 1000, 1000], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], 3, "no b0 volume"),
    ],
    ids=["count", "zero-bvec", "non-unit-bvec", "no-b0"],
)
def test_inconsistent_gradient_tables(bids, bvals, bvecs, n_volumes, match) -> None:
    dwi = add_run(bids, "01", "A", bvals=bvals, bvecs=bvecs, n_volumes=n_volumes)
    with pytest.raises(BadGradientsError, match=match) as info:
        discover(bids)
    assert str(dwi) in str(info.value) and "--bids-filter-file" in str(info.value)


def test_three_dimensional_image(bids: Path) -> None:
    add_run(bids, "01", "A", bvals=[0], bvecs=[[0], [0], [0]], n_volumes=0)
    with pytest.raises(BadImageError, match="single 3-D volume"):
        discover(bids)


def test_unreadable_header(bids: Path) -> None:
    dwi = add_run(bids, "01", "A")
    dwi.write_bytes(b"not a nifti")
    with pytest.raises(BadImageError, match="Cannot read the NIfTI header") as info:
        discover(bids)
    assert str(dwi) in str(info.value)


def test_read_gradients(tmp_path: Path) -> None:
    write_gradients(tmp_path / "x", BVALS, BVECS)
    bvals, bvecs = read_gradients(tmp_path / "x.bval", tmp_path / "x.bvec")
    assert bvals.shape == (4,) and bvecs.shape == (4, 3)
    np.testing.assert_array_equal(bvecs[1:], np.eye(3))
    with pytest.raises(BadGradientsError, match="does not exist"):
        read_gradients(tmp_path / "y.bval", tmp_path / "x.bvec")
    write_gradients(tmp_path / "z", [0, 1000], None)
    with pytest.raises(BadGradientsError, match="2 b-values but .*x.bvec has 4"):
        read_gradients(tmp_path / "z.bval", tmp_path / "x.bvec")


# --- BIDS filter file ---------------------------------------------------------------------------


def test_bids_filter_file_selects_an_acquisition(bids: Path, tmp_path: Path) -> None:
    add_run(bids, "01", "A", entities="acq-b1000", sidecar=PRISMA)
    add_run(bids, "01", "A", entities="acq-b3000", bvals=[0, 3000, 3000, 3000], sidecar=PRISMA)
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"dwi": {"acquisition": "b3000"}}))
    (run,) = discover(bids, bids_filters=load_bids_filters(path)).runs
    assert run.entities["acquisition"] == "b3000" and run.shells == (3000.0,)
    assert len(discover(bids, bids_filters={"dwi": {"acquisition": "*"}}).runs) == 2
    with pytest.raises(NoDataError, match="acquisition"):
        discover(bids, bids_filters={"dwi": {"acquisition": "b5000"}})
    with pytest.raises(InputDatasetError, match="'acq' -> 'acquisition'"):
        discover(bids, bids_filters={"dwi": {"acq": "b1000"}})


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"dwi": {"acquisition": "b1000",}}', "not valid JSON"),
        ('{"bold": {"task": "rest"}}', "unknown key.*bold"),
        ('{"dwi": "b1000"}', "must map entity names"),
        ("[1]", "must be a JSON object"),
    ],
)
def test_bad_bids_filter_files_name_the_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "filter.json"
    path.write_text(content)
    with pytest.raises(InputDatasetError, match=match) as info:
        load_bids_filters(path)
    assert str(path) in str(info.value)


def test_bval_of_another_acquisition_is_not_inherited(bids: Path) -> None:
    """``sub-01_ses-A_acq-x_dwi.bval`` does not apply to ``sub-01_ses-A_dwi.nii.gz``."""
    add_run(bids, "01", "A", entities="acq-x", sidecar=PRISMA)
    add_run(bids, "01", "A", bvals=None, n_volumes=4, sidecar=PRISMA)
    with pytest.raises(BadGradientsError, match="No .bval file for .*sub-01_ses-A_dwi.nii.gz"):
        discover(bids)


def test_study_pickles_and_metadata_is_json(two_sites: Path) -> None:
    study = discover(two_sites)
    clone = pickle.loads(pickle.dumps(study))
    assert clone.sites == study.sites and clone.runs[0].prefix == study.runs[0].prefix
    json.dumps({**study.runs[0].metadata, **study.runs[0].entities})


def test_run_stored_twice(bids: Path) -> None:
    dwi = add_run(bids, "01", "A", sidecar=PRISMA)
    nib.save(nib.load(dwi), str(dwi).replace(".nii.gz", ".nii"))
    with pytest.raises(InputDatasetError, match="stored twice"):
        discover(bids)


def test_derivatives_dataset_as_input(tmp_path: Path) -> None:
    """Preprocessed inputs (e.g. QSIPrep): derivative entities in the file names."""
    root = tmp_path / "qsiprep"
    root.mkdir()
    description = {
        "Name": "QSIPrep outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsiprep"}],
    }
    (root / "dataset_description.json").write_text(json.dumps(description))
    add_run(root, "01", "A", entities="space-T1w_desc-preproc", sidecar=PRISMA)
    mask = root / "sub-01/ses-A/dwi/sub-01_ses-A_space-T1w_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), mask)
    (run,) = discover(root).runs
    assert run.prefix == "sub-01_ses-A_space-T1w_desc-preproc"
    assert run.entities["desc"] == "preproc" and run.entities["space"] == "T1w"


def test_most_specific_inherited_file_wins(bids: Path) -> None:
    write_gradients(bids / "dwi", BVALS, BVECS)
    write_gradients(bids / "acq-x_dwi", [0, 2000, 2000, 2000], None)
    add_run(bids, "01", "A", entities="acq-x_run-1", bvals=None, n_volumes=4, sidecar=PRISMA)
    add_run(bids, "01", "A", entities="acq-y_run-1", bvals=None, n_volumes=4, sidecar=PRISMA)
    study = discover(bids)
    assert [r.shells for r in study.runs] == [(2000.0,), (1000.0,)]
    assert study.runs[0].bval == bids / "acq-x_dwi.bval"
    write_gradients(bids / "run-1_dwi", BVALS, None)
    with pytest.raises(BadGradientsError, match="both apply to .*acq-x_run-1_dwi"):
        discover(bids)
