"""End-to-end: the tiny simulated study through the participant level from the CLI."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.cli.run import main

pytestmark = pytest.mark.slow

NAME = re.compile(
    r"^sub-[A-Za-z0-9]+_ses-[A-Za-z0-9]+(_acq-[A-Za-z0-9]+)?"
    r"(_space-dwi_desc-(preproc_dwi|brain_mask)|_model-(sh_param-coeffs|tensor_param-(fa|md)"
    r"|csd_param-gfa|dki_param-(md|ad|rd|fa|mk|ak|rk|kfa))_dwimap)\.(nii\.gz|json|bval|bvec)$"
)
DKI = ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")


def expected_files(prefix: str, acq: str, shells: list[str]) -> set[str]:
    """What check_generated_files expects for one run (QSIPrep-style list)."""
    base = prefix.replace(f"_acq-{acq}", "")
    names = {
        f"{prefix}_space-dwi_desc-preproc_dwi{ext}"
        for ext in (".nii.gz", ".json", ".bval", ".bvec")
    } | {f"{prefix}_space-dwi_desc-brain_mask{ext}" for ext in (".nii.gz", ".json")}
    for shell in shells:
        shell_acq = acq if (acq == shell and len(shells) == 1) else f"{acq}{shell}"
        for kind in ("sh_param-coeffs", "tensor_param-fa", "tensor_param-md", "csd_param-gfa"):
            for ext in (".nii.gz", ".json"):
                names.add(f"{base.replace('_dwi', '')}_acq-{shell_acq}_model-{kind}_dwimap{ext}")
    if len(shells) >= 2:  # DKI: every shell together, the run's own acq
        names |= {f"{prefix}_model-dki_param-{p}_dwimap{ext}" for p in DKI
                  for ext in (".nii.gz", ".json")}  # fmt: skip
    return names


@pytest.fixture(scope="module")
def tiny_run(tiny_study, tmp_path_factory):
    """The tiny study (seed 0) through ``participant --nprocs 2``: the first level of the
    session's demo (conftest), its outputs before any other level ran."""
    root = tmp_path_factory.mktemp("e2e")
    return tiny_study.bids, tiny_study.participant, root, dict(tiny_study.codes)["participant"]


def test_exit_code_and_description(tiny_run):
    bids, out, _, code = tiny_run
    assert code == 0
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bids_harmony"
    methods = (out / "logs" / "CITATION.md").read_text()
    assert "(participant level)" in methods and "(train level)" not in methods
    assert "## References" in methods and "[@" not in methods


def test_expected_files_and_nothing_else(tiny_run):
    bids, out, _, _ = tiny_run
    human = out / "sub-01" / "ses-GE1" / "dwi"
    found = {p.name for p in human.iterdir()}
    assert found == expected_files(
        "sub-01_ses-GE1_acq-multishell", "multishell", ["b1000", "b2000"]
    )
    phantom = out / "sub-phantom01" / "ses-Prisma2" / "dwi"
    found = {p.name for p in phantom.iterdir()}
    for acq in ("b1000", "b2000"):
        assert expected_files(f"sub-phantom01_ses-Prisma2_acq-{acq}", acq, [acq]) <= found
    n_raw = len(list(bids.glob("sub-*/ses-*/dwi/*_dwi.nii.gz")))
    n_preproc = len(list(out.rglob("*_desc-preproc_dwi.nii.gz")))
    assert n_preproc == n_raw
    for path in out.rglob("sub-*/**/*"):
        if path.is_file():
            assert NAME.match(path.name), path.name
    assert not list(out.rglob(".tmp-*"))


def test_reader_finds_every_file_the_writer_wrote(tiny_run):
    """Round trip: bids.reader, given the discovered runs, finds every output file."""
    from bids_harmony.bids.discovery import discover
    from bids_harmony.bids.reader import RunOutputs

    bids, out, _, _ = tiny_run
    found = []
    for run in discover(bids).runs:
        reader = RunOutputs.of_run(out, run)
        assert reader.shells(kinds=("sh", "fa", "md", "gfa")) == list(reader.shell_labels)
        assert reader.preproc() is not None and reader.methods() == []
        found += reader.files()
    assert sorted(found) == sorted(p for p in out.glob("sub-*/**/*") if p.is_file())


def test_every_image_loads_and_has_sidecar(tiny_run):
    _, out, _, _ = tiny_run
    images = sorted(out.rglob("*.nii.gz"))
    assert images
    for path in images:
        data = np.asarray(nb.load(path).dataobj)
        assert np.all(np.isfinite(data)), path
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Sources"], path
        assert "bids_harmony" in sidecar["SoftwareVersions"]
        assert sidecar["Site"] in {"SIGNAPremier", "Prisma"}


def test_dki_maps(tiny_run):
    """Multi-shell runs get the 8 DKI maps within their ranges; single-shell runs none."""
    bids, out, _, _ = tiny_run
    d = out / "sub-02" / "ses-Prisma1" / "dwi"
    prefix = "sub-02_ses-Prisma1_acq-multishell"
    truth = bids / "sourcedata" / "simulation" / "sub-02" / "ses-Prisma1"
    seg = _load(truth / "sub-02_ses-Prisma1_dseg.nii.gz").astype(int)
    mask = _load(d / f"{prefix}_space-dwi_desc-brain_mask.nii.gz") > 0
    maps = {p: _load(d / f"{prefix}_model-dki_param-{p}_dwimap.nii.gz") for p in DKI}
    ranges = {"md": 3e-3, "ad": 3e-3, "rd": 3e-3, "fa": 1, "kfa": 1, "mk": 3, "ak": 3, "rk": 3}
    for param, values in maps.items():
        assert values.min() >= 0 and values.max() <= ranges[param] * (1 + 1e-6), param
        assert np.all(values[~mask] == 0), param
        meta = json.loads((d / f"{prefix}_model-dki_param-{param}_dwimap.json").read_text())
        assert meta["Model"]["Parameters"]["FitMethod"] == "WLS"
        assert meta["Model"]["Parameters"]["ShellBValues"] == [1000.0, 2000.0]
        assert meta["ClippedToRange"][1] == pytest.approx(ranges[param])
        assert meta["ClippedVoxels"]["of"] == int(mask.sum())
        assert meta["ClippedVoxels"]["total"] < meta["ClippedVoxels"]["of"]
    wm = (seg == 3) & mask
    assert 0.4e-3 < np.median(maps["md"][wm]) < 1.3e-3
    assert np.median(maps["fa"][wm]) > 0.3
    assert np.all(maps["ad"][mask] >= maps["rd"][mask] - 1e-9)
    phantom = out / "sub-phantom01" / "ses-Prisma2" / "dwi"
    assert not list(phantom.glob("*_acq-b1000_model-dki_*"))


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, dtype=float)


def _coverage(bids: Path, out: Path, session: Path) -> float:
    """Share of the simulated brain (the truth's segmentation) in a session's brain mask."""
    sub, ses = session.parent.name, session.name
    seg = _load(bids / "sourcedata" / "simulation" / sub / ses / f"{sub}_{ses}_dseg.nii.gz")
    mask = _load(next((session / "dwi").glob("*_space-dwi_desc-brain_mask.nii.gz"))) > 0
    return float((mask & (seg > 0)).sum() / (seg > 0).sum())


def test_metric_ranges_per_tissue(tiny_run):
    bids, out, _, _ = tiny_run
    truth = bids / "sourcedata" / "simulation" / "sub-02" / "ses-Prisma1"
    seg = _load(truth / "sub-02_ses-Prisma1_dseg.nii.gz").astype(int)
    d = out / "sub-02" / "ses-Prisma1" / "dwi"
    mask = _load(d / "sub-02_ses-Prisma1_acq-multishell_space-dwi_desc-brain_mask.nii.gz") > 0
    # the brain mask covers most of the brain: 82-91 % of it in each human session (seed 0)
    coverage = [_coverage(bids, out, path) for path in sorted(out.glob("sub-0*/ses-*"))]
    assert len(coverage) == 12 and min(coverage) > 0.8 and np.mean(coverage) > 0.85, coverage
    fa = _load(d / "sub-02_ses-Prisma1_acq-multishellb1000_model-tensor_param-fa_dwimap.nii.gz")
    md = _load(d / "sub-02_ses-Prisma1_acq-multishellb1000_model-tensor_param-md_dwimap.nii.gz")
    gfa = _load(d / "sub-02_ses-Prisma1_acq-multishellb1000_model-csd_param-gfa_dwimap.nii.gz")
    csf, gm, wm = ((seg == k) & mask for k in (1, 2, 3))
    assert 0.45 < np.median(fa[wm]) < 0.85
    assert np.median(fa[gm]) < 0.3
    assert 0.5e-3 < np.median(md[wm]) < 1.0e-3
    assert 0.6e-3 < np.median(md[gm]) < 1.6e-3
    if csf.sum() >= 5:
        assert np.median(md[csf]) > 1.5e-3
    assert np.median(gfa[wm]) > np.median(gfa[gm])
    assert np.all((fa >= 0) & (fa <= 1))


def test_sh_coefficients(tiny_run):
    _, out, _, _ = tiny_run
    d = out / "sub-01" / "ses-GE2" / "dwi"
    path = d / "sub-01_ses-GE2_acq-multishellb2000_model-sh_param-coeffs_dwimap.nii.gz"
    coeffs = _load(path)
    assert coeffs.shape[-1] == 45
    mask = _load(d / "sub-01_ses-GE2_acq-multishell_space-dwi_desc-brain_mask.nii.gz") > 0
    c00 = coeffs[..., 0][mask]
    assert np.all(c00 >= 0) and np.all(c00 <= np.sqrt(4 * np.pi) + 1e-3)
    meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert meta["ShellBValue"] == 2000
    assert meta["OrientationEncoding"]["SphericalHarmonicDegree"] == 8


def test_rerun_is_deterministic_and_resumes(tiny_run):
    bids, out, root, _ = tiny_run
    out2 = root / "out2"
    args = ["participant", "--participant-label", "01", "--session-label", "GE1", "--nprocs", "1"]
    assert main([str(bids), str(out2), args[0], "-w", str(root / "work2"), *args[1:]]) == 0
    for path in (out2 / "sub-01").rglob("*.nii.gz"):
        twin = out / path.relative_to(out2)
        assert _digest(path) == _digest(twin), path.name
    # Resuming in the same work dir reuses cached results and rewrites identical outputs.
    before = {p: _digest(p) for p in (out2 / "sub-01").rglob("*") if p.is_file()}
    assert main([str(bids), str(out2), args[0], "-w", str(root / "work2"), *args[1:]]) == 0
    assert before == {p: _digest(p) for p in (out2 / "sub-01").rglob("*") if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
