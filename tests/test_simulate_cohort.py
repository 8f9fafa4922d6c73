"""Tests of the simulated cohort study (``bids-harmony-simulate --cohort N``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_harmony.cli.simulate import main as simulate_main
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate import regenerate_noiseless, simulate_cohort, true_age_slope
from bids_harmony.simulate.brain import brain_tissue
from bids_harmony.simulate.cohort import (
    SITE_MAP_EFFECTS,
    SiteMapEffect,
    age_spec,
    cohort_brain,
    draw_design,
    population_spec,
    reference_spec,
    region_means,
    site_tissue,
)
from bids_harmony.simulate.layout import get_size
from bids_harmony.simulate.tissue import Pose

SITES = ("GE", "Prisma", "Skyra")
N = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "bids"
    assert simulate_main([str(root), "--cohort", str(N), "--size", "tiny", "--seed", "1"]) == 0
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fobj:
        return list(csv.DictReader(fobj, delimiter="\t"))


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _cohort_json(root: Path) -> dict:
    return json.loads((bw.gt_dir(root) / "cohort.json").read_text())


def test_participants_tsv_has_age_and_sex(cohort):
    rows = _rows(cohort / "participants.tsv")
    assert list(rows[0]) == ["participant_id", "species", "phantom", "age", "sex"]
    assert [r["participant_id"] for r in rows] == [f"sub-{i:02d}" for i in range(1, 13)]
    assert {r["phantom"] for r in rows} == {"false"}
    assert all(18 <= int(r["age"]) <= 72 for r in rows)
    sites = {s["participant_id"]: s["site"] for s in _cohort_json(cohort)["subjects"]}
    for site in SITES:  # sex balanced within each site
        sexes = sorted(r["sex"] for r in rows if sites[r["participant_id"]] == site)
        assert sexes == ["F", "F", "M", "M"]
    doc = json.loads((cohort / "participants.json").read_text())
    assert doc["age"]["Units"] == "year" and set(doc["sex"]["Levels"]) == {"F", "M"}


def test_layout_one_session_per_subject_no_phantoms(cohort):
    assert not list(cohort.glob("sub-phantom*"))
    sim = json.loads((bw.gt_dir(cohort) / "simulation.json").read_text())
    assert sim["study"] == "cohort" and sim["phantoms"] == [] and sim["sites"] == list(SITES)
    assert len(sim["runs"]) == 3 * N
    models = {"GE": "SIGNA Premier", "Prisma": "Prisma", "Skyra": "Skyra"}
    for subject in _cohort_json(cohort)["subjects"]:
        sub, ses, site = subject["participant_id"], subject["session_id"], subject["site"]
        assert ses == f"ses-{site}1"
        assert [p.name for p in (cohort / sub).glob("ses-*")] == [ses]
        table = _rows(cohort / sub / f"{sub}_sessions.tsv")
        assert [(r["session_id"], r["site"]) for r in table] == [(ses, site)]
        sidecar = cohort / sub / ses / "dwi" / f"{sub}_{ses}_acq-multishell_dwi.json"
        assert json.loads(sidecar.read_text())["ManufacturersModelName"] == models[site]
    assert "cohort" in (cohort / "README").read_text()


def test_ages_confounded_with_site(cohort):
    subjects = _cohort_json(cohort)["subjects"]
    means = [np.mean([s["age"] for s in subjects if s["site"] == site]) for site in SITES]
    assert means[0] + 8 < means[1] < means[2] - 8
    assert np.allclose(means, [30, 45, 60], atol=3)
    ages = {r["participant_id"]: int(r["age"]) for r in _rows(cohort / "participants.tsv")}
    assert all(ages[s["participant_id"]] == s["age"] for s in subjects)
    # larger cohorts: overlapping ranges, stratified means
    big = draw_design(20, SITES, seed=5)
    ranges = [[s.age for s in big if s.site == site] for site in SITES]
    assert max(ranges[0]) > min(ranges[1]) and max(ranges[1]) > min(ranges[2])
    assert np.allclose([np.mean(r) for r in ranges], [30, 45, 60], atol=1)
    assert [s.label for s in big][:2] == ["01", "02"] and big[-1].label == "60"


def test_deterministic_per_seed(tmp_path):
    files = {}
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        root = simulate_cohort(tmp_path / name, 2, sites=("Prisma", "GE"), seed=seed).root
        files[name] = {
            p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }
    assert files["a"] == files["b"]
    assert files["a"].keys() == files["c"].keys()
    dwi = Path("sub-01/ses-Prisma1/dwi/sub-01_ses-Prisma1_acq-multishell_dwi.nii.gz")
    assert files["a"][dwi] != files["c"][dwi]


def test_truth_files_present_and_on_the_scan_grid(cohort):
    for subject in _cohort_json(cohort)["subjects"]:
        sub, ses = subject["participant_id"][4:], subject["session_id"][4:]
        raw = nib.load(bw.dwi_path(cohort, sub, ses, "multishell", ".nii.gz"))
        base = bw.gt_dir(cohort, sub, ses)
        for desc in ("desc-truth_FA", "desc-truth_MD", "desc-truthsite_FA", "desc-truthsite_MD"):
            img = nib.load(base / f"sub-{sub}_ses-{ses}_{desc}.nii.gz")
            assert img.shape == raw.shape[:3] and np.allclose(img.affine, raw.affine)
        clean = base / f"sub-{sub}_ses-{ses}_acq-multishell_desc-noiseless_dwi.nii.gz"
        assert nib.load(clean).shape == raw.shape
        assert (bw.gt_dir(cohort, sub) / f"sub-{sub}_desc-truth_FA.nii.gz").is_file()
        _, spec = bw.read_spec(cohort, sub)
        assert (spec.age, spec.sex) == (subject["age"], subject["sex"])
    # the written noise-free run is what regeneration gives (map-level site effects too)
    again = regenerate_noiseless(cohort, "05", "Prisma1", "multishell")
    written = bw.noiseless_path(cohort, "05", "Prisma1", "multishell")
    assert np.array_equal(again, _load(written))


def test_truth_wm_fa_falls_and_md_rises_at_the_documented_slope(cohort):
    slopes = _cohort_json(cohort)["age_effect"]["true_slope_per_year"]
    fa_slope, md_slope = true_age_slope(cohort, "FA", "WM"), true_age_slope(cohort, "MD")
    assert fa_slope == slopes["WM"]["FA"] and md_slope == slopes["WM"]["MD"]
    assert -2e-3 < fa_slope < -3e-4 and 5e-7 < md_slope < 4e-6
    grid = get_size("tiny").human_grid
    _, spec = bw.read_spec(cohort, "01")
    base = reference_spec(spec)
    assert age_spec(base, spec.age).wm_d_perp == pytest.approx(spec.wm_d_perp, rel=1e-12)
    at = {
        a: region_means(brain_tissue(age_spec(base, a), grid, Pose()))["WM"] for a in (30, 45, 60)
    }
    # MD exactly linear in age, FA nearly; this subject's slope close to the cohort's
    assert at[45]["MD"] - at[30]["MD"] == pytest.approx(at[60]["MD"] - at[45]["MD"], rel=1e-4)
    assert (at[60]["MD"] - at[30]["MD"]) / 30 == pytest.approx(md_slope, rel=0.1)
    assert (at[60]["FA"] - at[30]["FA"]) / 30 == pytest.approx(fa_slope, rel=0.2)
    # the written site-free truth of the subjects follows the slope across the cohort
    subjects = _cohort_json(cohort)["subjects"]
    ages = np.array([s["age"] for s in subjects], dtype=float)
    md = np.array([s["truth_wm_md"] for s in subjects])
    assert np.polyfit(ages, md, 1)[0] > 0


def _relative_change(cohort: Path, metric: str, site: str) -> tuple[list, list]:
    """Per subject of ``site``: truthsite/truth − 1 and u (normalized position) in GM+WM."""
    out, pos = [], []
    for subject in _cohort_json(cohort)["subjects"]:
        if subject["site"] != site:
            continue
        sub, ses = subject["participant_id"][4:], subject["session_id"][4:]
        base = bw.gt_dir(cohort, sub, ses) / f"sub-{sub}_ses-{ses}"
        truth = _load(Path(f"{base}_desc-truth_{metric}.nii.gz"))
        biased = _load(Path(f"{base}_desc-truthsite_{metric}.nii.gz"))
        tissue = np.isin(_load(Path(f"{base}_dseg.nii.gz")), (2, 3))
        grid, spec = bw.read_spec(cohort, sub)
        q = bw.read_pose(cohort, sub, ses).to_object(grid.coordinates(tissue))
        pos.append((q - np.asarray(spec.centre_mm)) / np.asarray(spec.semi_axes_mm))
        out.append(biased[tissue] / truth[tissue] - 1.0)
    return out, pos


def test_site_effect_on_the_maps_varies_by_region(cohort):
    # GE: radial diffusivity +5 % at the centre (lower FA) rising anteriorly (+0.06 per u_y)
    fa_change, _ = _relative_change(cohort, "FA", "GE")
    assert np.mean(np.concatenate(fa_change)) < -0.02
    for site, axis in (("GE", 1), ("Prisma", 0), ("Skyra", 2)):
        change, pos = _relative_change(cohort, "MD", site)
        gradient = np.array(SITE_MAP_EFFECTS[site].perp_shift[1])[axis]
        for rel, u in zip(change, pos, strict=True):
            high, low = rel[u[:, axis] > 0.3].mean(), rel[u[:, axis] < -0.3].mean()
            assert np.sign(high - low) == np.sign(gradient), (site, high, low)
    # site-free truth is the same whatever the site: the maps differ only by site
    subjects = _cohort_json(cohort)["subjects"]
    shift = {
        site: np.mean([s["site_wm_md"] / s["truth_wm_md"] for s in subjects if s["site"] == site])
        for site in SITES
    }
    assert shift["GE"] > shift["Skyra"] > shift["Prisma"]


def test_site_tissue_location_and_scale():
    grid = get_size("tiny").human_grid
    design = draw_design(2, ("GE", "Prisma"), seed=0)
    spec = cohort_brain(design[0], 0)
    pose = Pose((1.0, -2.0, 0.5), (1.0, 2.0, -3.0))
    truth = brain_tissue(spec, grid, pose)
    pop = brain_tissue(population_spec(spec), grid, pose)
    zero = (0.0, (0.0, 0.0, 0.0))
    scaled = site_tissue(truth, pop, spec, pose, SiteMapEffect("x", zero, zero, (2.0, zero[1])))
    dev, dev2 = truth.d_perp - pop.d_perp, scaled.d_perp - pop.d_perp
    assert np.allclose(dev2[:, 1:], 2 * dev[:, 1:], atol=1e-9)
    assert np.array_equal(scaled.d_perp[:, 0], truth.d_perp[:, 0])  # free water unchanged
    assert np.abs(dev[:, 2]).max() > 1e-5  # the subject does deviate from the population
    shifted = site_tissue(
        truth, pop, spec, pose, SiteMapEffect("x", (0.1, (0.0, 0.0, 0.0)), zero, (1.0, zero[1]))
    )
    assert np.allclose(shifted.d_par[:, 1:], 1.1 * truth.d_par[:, 1:], rtol=1e-6)
    assert np.array_equal(shifted.d_perp, truth.d_perp)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--cohort", "1"], "--cohort"),
        (["--cohort", "0"], "--cohort"),
        (["--cohort", "x"], "--cohort"),
        (["--cohort", "3", "--cohort-sites", "GE,Achieva"], "--cohort-sites"),
        (["--cohort", "3", "--cohort-sites", "GE"], "--cohort-sites"),
        (["--cohort", "3", "--cohort-sites", "GE,GE"], "--cohort-sites"),
        (["--cohort-sites", "GE,Prisma"], "--cohort-sites"),
        (["--cohort", "3", "--phantom", "nist"], "--phantom"),
        (["--cohort", "3", "--scenario", "bias"], "--scenario"),
    ],
)
def test_cli_bad_values_exit_2(tmp_path, capsys, args, option):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        simulate_main([str(out), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "error" in err
    assert not out.exists()


def test_cli_help_names_the_cohort_options(capsys):
    with pytest.raises(SystemExit):
        simulate_main(["--help"])
    text = capsys.readouterr().out
    assert "--cohort N" in text and "--cohort-sites" in text and "cohort-only" in text


def test_valid_bids_and_discovered_sites(cohort):
    bids = pytest.importorskip("bids")
    from bids_harmony.bids.discovery import discover

    layout = bids.BIDSLayout(cohort, validate=True)
    assert len(layout.get_subjects()) == 3 * N
    assert sorted(layout.get_sessions()) == ["GE1", "Prisma1", "Skyra1"]
    study = discover(cohort)
    assert study.phantoms == [] and study.site_source == "sidecar"
    assert study.sites == ["Prisma", "SIGNAPremier", "Skyra"]
