"""Phantom training pairs: matching across sites, rescans, and the error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bids_harmony.bids.derivatives import RunNames
from bids_harmony.bids.discovery import DwiRun, Study
from bids_harmony.bids.phantom_pairs import (
    PhantomPair,
    TrainingDataError,
    find_phantom_pairs,
    list_sites_with_phantoms,
    phantoms_by_site,
)
from bids_harmony.errors import BidsHarmonyError

SITES = {"GE1": "GE", "GE2": "GE", "Prisma1": "Prisma", "Prisma2": "Prisma"}


def make_run(root: Path, subject: str, session: str, acq: str | None, shells, *, site=None):
    """A discovered run (files need not exist) of a single- or multi-shell protocol."""
    acq_part = f"_acq-{acq}" if acq else ""
    folder = root / f"sub-{subject}" / f"ses-{session}" / "dwi"
    stem = f"sub-{subject}_ses-{session}{acq_part}_dwi"
    bvals = np.concatenate([[0.0]] + [np.full(6, b) for b in shells])
    entities = {"subject": subject, "session": session}
    if acq:
        entities["acquisition"] = acq
    return DwiRun(
        subject=subject,
        session=session,
        dwi=folder / f"{stem}.nii.gz",
        bval=folder / f"{stem}.bval",
        bvec=folder / f"{stem}.bvec",
        sidecar=None,
        metadata={},
        entities=entities,
        site=site or SITES[session],
        is_phantom=subject.startswith("phantom"),
        n_volumes=bvals.size,
        shape=(4, 4, 2, bvals.size),
        bvals=bvals,
        bvecs=np.zeros((bvals.size, 3)),
        shells=tuple(float(b) for b in shells),
    )


def write_outputs(out: Path, run: DwiRun, *, order: int = 8, skip: str | None = None) -> None:
    """Empty participant-level files of a run with the writer's names (and SH sidecars)."""
    names = RunNames.of_run(run)
    (out / names.folder).mkdir(parents=True, exist_ok=True)
    files = [names.dwi(), names.dwi(extension=".bval"), names.mask()]
    for bval in run.shells:
        label = f"b{int(bval)}"
        files.append(names.shell_map(label, "sh"))
        sidecar = {"ShellBValue": bval, "OrientationEncoding": {"SphericalHarmonicDegree": order}}
        (out / names.shell_map(label, "sh", extension=".json")).write_text(json.dumps(sidecar))
    for relpath in files:
        if relpath.name != skip:
            (out / relpath).write_bytes(b"")


def make_study(tmp_path: Path, runs, *, outputs: bool = True) -> tuple[Study, Path]:
    out = tmp_path / "out"
    if outputs:
        for run in runs:
            write_outputs(out, run)
    return Study(bids_dir=tmp_path / "bids", runs=tuple(runs), site_source="session"), out


def standard_runs(root: Path, phantoms=("phantom01",)):
    runs = []
    for phantom in phantoms:
        for session in SITES:
            runs.append(make_run(root, phantom, session, "b1000", [1000.0]))
            runs.append(make_run(root, phantom, session, "multishell", [1000.0, 2000.0]))
    runs.append(make_run(root, "01", "GE1", "multishell", [1000.0, 2000.0]))
    return runs


def test_cross_product_with_rescans(tmp_path):
    study, out = make_study(tmp_path, standard_runs(tmp_path / "bids"))
    pairs = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    # 3 protocol shells x 2 source sessions x 2 target sessions
    assert len(pairs) == 12
    keys = {(p.protocol, p.shell_bval) for p in pairs}
    assert keys == {("b1000", 1000.0), ("multishell", 1000.0), ("multishell", 2000.0)}
    for pair in pairs:
        assert isinstance(pair, PhantomPair)
        assert pair.source.site == "GE" and pair.target.site == "Prisma"
        assert pair.source_rescan is not None and pair.target_rescan is not None
        assert pair.source_rescan.session != pair.source.session
        assert pair.target_rescan.session != pair.target.session
        assert pair.source_rescan.sh_file != pair.source.sh_file
        assert pair.source.acq_raw == pair.target.acq_raw == pair.protocol
        assert pair.source.sh_file.is_file() and pair.target.mask_file.is_file()
        assert pair.source.sh_order == 8
    combos = {(p.source.session, p.target.session) for p in pairs}
    assert combos == {
        ("GE1", "Prisma1"),
        ("GE1", "Prisma2"),
        ("GE2", "Prisma1"),
        ("GE2", "Prisma2"),
    }
    multishell = [p for p in pairs if p.protocol == "multishell" and p.shell_bval == 2000.0]
    assert multishell[0].source.sh_file.name == (
        "sub-phantom01_ses-GE1_acq-multishellb2000_model-sh_param-coeffs_dwimap.nii.gz"
    )
    assert multishell[0].source.mask_file.name == (
        "sub-phantom01_ses-GE1_acq-multishell_space-dwi_desc-brain_mask.nii.gz"
    )
    single = [p for p in pairs if p.protocol == "b1000"][0]
    assert single.source.sh_file.name.startswith("sub-phantom01_ses-GE1_acq-b1000_model-sh")
    # the human subject never enters the pairs
    assert {p.phantom for p in pairs} == {"phantom01"}
    # deterministic order
    again = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    assert again == pairs


def test_single_session_per_site_has_no_rescan(tmp_path):
    root = tmp_path / "bids"
    runs = [make_run(root, "phantom01", s, None, [1000.0]) for s in ("GE1", "Prisma1", "Prisma2")]
    study, out = make_study(tmp_path, runs)
    pairs = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    assert len(pairs) == 2
    assert all(p.source_rescan is None and p.target_rescan is not None for p in pairs)
    assert pairs[0].protocol is None
    assert pairs[0].source.sh_file.name == (
        "sub-phantom01_ses-GE1_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz"
    )


def test_b_tolerance_and_acq_must_match(tmp_path):
    root = tmp_path / "bids"
    runs = [
        make_run(root, "phantom01", "GE1", "dti", [1000.0]),
        make_run(root, "phantom01", "Prisma1", "dti", [1030.0]),  # within 50
        make_run(root, "phantom01", "GE1", "hardi", [2000.0]),
        make_run(root, "phantom01", "Prisma1", "hardi", [2100.0]),  # outside 50
        make_run(root, "phantom01", "Prisma1", "other", [1000.0]),  # other acq label
    ]
    study, out = make_study(tmp_path, runs)
    pairs = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    assert [(p.protocol, p.source.shell_bval, p.target.shell_bval) for p in pairs] == [
        ("dti", 1000.0, 1030.0)
    ]
    wide = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma", b_tolerance=150)
    assert {p.protocol for p in wide} == {"dti", "hardi"}


def test_sites_with_phantoms(tmp_path):
    root = tmp_path / "bids"
    runs = standard_runs(root, phantoms=("phantom01", "phantom02"))
    runs.append(make_run(root, "02", "Philips1", None, [1000.0], site="Philips"))
    study, _ = make_study(tmp_path, runs, outputs=False)
    assert list_sites_with_phantoms(study) == ["GE", "Prisma"]
    assert phantoms_by_site(study)["GE"] == ["phantom01", "phantom02"]


def test_no_phantom_at_target_site(tmp_path):
    root = tmp_path / "bids"
    runs = [
        make_run(root, "phantom01", "GE1", "b1000", [1000.0]),
        make_run(root, "01", "Prisma1", "b1000", [1000.0]),
    ]
    study, out = make_study(tmp_path, runs)
    with pytest.raises(TrainingDataError) as info:
        find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    message = str(info.value)
    assert "no phantom was scanned at site Prisma" in message
    assert "GE: sub-phantom01" in message and "GE, Prisma" in message
    assert isinstance(info.value, BidsHarmonyError) and isinstance(info.value, ValueError)


def test_unknown_or_same_site(tmp_path):
    study, out = make_study(tmp_path, standard_runs(tmp_path / "bids"))
    with pytest.raises(TrainingDataError, match="'Siemens' is not in the study"):
        find_phantom_pairs(study, out, source_site="Siemens", target_site="Prisma")
    with pytest.raises(TrainingDataError, match="both"):
        find_phantom_pairs(study, out, source_site="GE", target_site="GE")


def test_unpairable_protocols_say_where_each_is(tmp_path):
    root = tmp_path / "bids"
    runs = [
        make_run(root, "phantom01", "GE1", "b1000", [1000.0]),
        make_run(root, "phantom01", "Prisma1", "b2000", [2000.0]),
    ]
    study, out = make_study(tmp_path, runs)
    with pytest.raises(TrainingDataError) as info:
        find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    message = str(info.value)
    assert "sub-phantom01 acq-b1000 b=1000 at GE" in message
    assert "sub-phantom01 acq-b2000 b=2000 at Prisma" in message


def test_partly_unpaired_protocols_warn(tmp_path, caplog):
    root = tmp_path / "bids"
    runs = standard_runs(root)
    runs.append(make_run(root, "phantom01", "GE1", "extra", [3000.0]))
    study, out = make_study(tmp_path, runs)
    pairs = find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    assert len(pairs) == 12
    assert "acq-extra b=3000 at GE" in caplog.text


def test_missing_derivatives_name_file_and_command(tmp_path):
    root = tmp_path / "bids"
    runs = standard_runs(root)
    study, out = make_study(tmp_path, runs, outputs=False)
    for run in runs:
        skip = None
        if run.session == "Prisma2" and run.entities["acquisition"] == "b1000":
            skip = "sub-phantom01_ses-Prisma2_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz"
        write_outputs(out, run, skip=skip)
    with pytest.raises(TrainingDataError) as info:
        find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")
    message = str(info.value)
    assert "sub-phantom01_ses-Prisma2_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz" in message
    assert f"bids-harmony {root} {out} participant --participant-label phantom01" in message


def test_nothing_processed_yet(tmp_path):
    study, out = make_study(tmp_path, standard_runs(tmp_path / "bids"), outputs=False)
    with pytest.raises(TrainingDataError, match="participant --participant-label phantom01"):
        find_phantom_pairs(study, out, source_site="GE", target_site="Prisma")


# --- the tiny simulated study through the participant level (slow) -----------------


@pytest.fixture(scope="module")
def tiny_phantoms(tiny_study):
    """Tiny study (seed 0) through the participant level (the first level of the
    session's demo, conftest): its outputs before any other level ran."""
    from bids_harmony.bids.discovery import discover

    return discover(tiny_study.bids), tiny_study.participant


@pytest.mark.slow
def test_tiny_study_pairs_registration_and_voxels(tiny_phantoms):
    from bids_harmony.interfaces.phantom_pairs import RegistrationCache, gather_pair_arrays
    from bids_harmony.simulate.study import get_size, session_pose

    study, out = tiny_phantoms
    source, target = "SIGNAPremier", "Prisma"
    assert list_sites_with_phantoms(study) == sorted([source, target])
    pairs = find_phantom_pairs(study, out, source_site=source, target_site=target)
    # 2 phantoms x (b1000, b2000, multishell b1000 + b2000) x 2 x 2 sessions
    assert len(pairs) == 32
    assert all(p.source_rescan is not None and p.target_rescan is not None for p in pairs)
    assert all(p.source.sh_order == p.target.sh_order == 8 for p in pairs)
    reverse = find_phantom_pairs(study, out, source_site=target, target_site=source)
    assert len(reverse) == 32 and reverse[0].source.site == target

    grid = get_size("tiny").phantom_grid
    flip = np.array([-1.0, 1.0, 1.0])  # poses are along the voxel axes, storage is LAS
    cache = RegistrationCache()
    for pair in pairs:
        arrays = gather_pair_arrays(pair, registrations=cache)
        assert not arrays.excluded
        assert arrays.counts["mask"] > 500 and arrays.n_voxels > 20
        assert np.isfinite(arrays.target).all() and arrays.source_rescan is not None
        for role in ("target", "source_rescan"):
            scan = getattr(pair, role)
            poses = [session_pose(pair.phantom, s.session, grid, 0) for s in (pair.source, scan)]
            truth = flip * (np.subtract(poses[1].translation_mm, poses[0].translation_mm))
            result = arrays.registrations[role]
            # in-plane within a quarter voxel (7 mm); vials run along z, so z is free
            assert np.abs(result.translation_mm[:2] - truth[:2]).max() < 0.25 * 7.0
            assert result.accepted and result.similarity_after > 0.7  # measured 0.79-0.99
            assert result.similarity_after >= result.similarity_before - 0.01
    registrations = list(cache.results)
    assert len(registrations) == 2 * 3 * 2 * 3  # phantoms x runs x source sessions x others
