"""Tests of the simulator's phantom zoo: designs, scenarios and their CLI options."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from bids_harmony.cli.simulate import main as simulate_main
from bids_harmony.simulate import (
    DESIGNS,
    ZOO,
    PhantomScenario,
    PhantomSpec,
    ScenarioError,
    draw_phantom,
    read_phantom_state,
    read_pose,
    read_spec,
    regenerate_noiseless,
    simulate_session,
    simulate_study,
)
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.phantom import phantom_tissue, temperature_factor
from bids_harmony.simulate.phantom_nist import PVP_LEVELS
from bids_harmony.simulate.study import SIZES, keyed_rng, phantom_grid
from bids_harmony.simulate.tissue import Pose
from bids_harmony.simulate.zoo import reposition_pose

SESSIONS = ("GE1", "GE2", "Prisma1", "Prisma2")
HUMANS = ("01", "02", "03")
IN_PLANE = np.ones((3, 3, 1), bool)  # erosion within slices (tiny phantoms have 4 slices)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory):
    """Every zoo scenario at tiny size (noise-free images only where a test reads them)."""
    base = tmp_path_factory.mktemp("zoo")
    return {
        name: simulate_study(
            base / name,
            size="tiny",
            seed=0,
            scenario=name,
            write_noiseless=name == "temperature",
        )
        for name in ZOO
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _exit_code(argv: list[str]) -> int:
    try:
        return simulate_main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


@pytest.mark.parametrize("name", list(ZOO))
def test_scenario_dataset_is_valid_bids(zoo, name):
    bids = pytest.importorskip("bids")
    from bids_harmony.bids.discovery import discover

    info, scenario = zoo[name], ZOO[name]
    designs = scenario.phantom_designs(SIZES["tiny"].n_phantoms)
    phantoms = tuple(f"phantom{i:02d}" for i in range(1, len(designs) + 1))
    assert info.phantoms == phantoms and info.subjects == HUMANS
    layout = bids.BIDSLayout(info.root, validate=True)
    assert sorted(layout.get_subjects()) == sorted(phantoms + HUMANS)
    assert sorted(layout.get_sessions()) == sorted(SESSIONS)
    protocols = scenario.protocols or SIZES["tiny"].phantom_protocols
    for sub in phantoms + HUMANS:
        files = layout.get(subject=sub, suffix="dwi", extension=".nii.gz")
        acqs = protocols if sub.startswith("phantom") else ("multishell",)
        assert sorted(f.entities["acquisition"] for f in files) == sorted(acqs * 4)
    study = discover(info.root)
    assert study.phantoms == list(phantoms)
    sim = json.loads((info.ground_truth / "simulation.json").read_text())
    assert PhantomScenario.from_dict(sim["scenario"]) == scenario
    assert f"Phantom scenario `{name}`" in (info.root / "README").read_text()
    for sub, design in zip(phantoms, designs, strict=True):
        assert read_spec(info.root, sub)[1].design == design


def test_default_scenario_is_the_study_without_scenario(zoo, tmp_path):
    plain = simulate_study(tmp_path / "plain", size="tiny", seed=0, write_noiseless=False)
    ours = zoo["default"].root
    files = sorted(p.relative_to(plain.root) for p in plain.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    for rel in files:
        assert _sha(plain.root / rel) == _sha(ours / rel), rel


def test_humans_are_the_same_in_every_scenario(zoo):
    ref = zoo["default"].root
    for name, info in zoo.items():
        for ses in SESSIONS:
            pose = f"sourcedata/simulation/sub-01/ses-{ses}/sub-01_ses-{ses}_pose.json"
            assert _sha(info.root / pose) == _sha(ref / pose), name
            dwi = bw.dwi_path(info.root, "01", ses, "multishell", ".nii.gz")
            same = _sha(dwi) == _sha(bw.dwi_path(ref, "01", ses, "multishell", ".nii.gz"))
            # only a scenario's coil change touches the humans' images
            assert same == (ZOO[name].bias(ses.rstrip("12")) == 1.0), (name, ses)


def test_bias_field_scales_the_written_site(zoo):
    def params(name, site):
        path = zoo[name].ground_truth / f"site-{site}_params.json"
        return json.loads(path.read_text())

    ge, ref = params("bias", "GE"), params("default", "GE")
    assert ge["coil_periphery"] == pytest.approx(3 * ref["coil_periphery"], abs=1e-6)
    assert np.allclose(ge["coil_tilt"], 3 * np.asarray(ref["coil_tilt"]), atol=1e-6)
    assert params("bias", "Prisma") == params("default", "Prisma")
    assert {k: v for k, v in ge.items() if not k.startswith("coil_")} == {
        k: v for k, v in ref.items() if not k.startswith("coil_")
    }


def test_repositioned_poses_in_range_and_in_view(zoo):
    root = zoo["repositioned"].root
    grid, _ = read_spec(root, "phantom01")
    assert grid.shape[2] == 16
    for sub in ("phantom01", "phantom02"):
        poses = [read_pose(root, sub, ses) for ses in SESSIONS]
        assert len(set(poses)) == 4
        for ses, pose in zip(SESSIONS, poses, strict=True):
            assert max(abs(a) for a in pose.angles_deg[:2]) <= 8.0
            assert abs(pose.angles_deg[2]) <= 25.0
            assert max(map(abs, pose.translation_mm)) <= 20.0
            state = read_phantom_state(root, sub, ses)
            assert state["repositioned"] is True and state["temperature_delta_c"] == 0.0
            labels = _load(bw.gt_dir(root, sub, ses) / f"sub-{sub}_ses-{ses}_dseg.nii.gz")
            edge = np.ones(labels.shape[:2], bool)
            edge[1:-1, 1:-1] = False
            assert not labels[edge].any(), (sub, ses)  # container inside the field of view


def test_reposition_pose_keeps_container_in_demo_view():
    scenario = ZOO["repositioned"]
    grid = phantom_grid("demo", scenario)
    assert grid.shape[2] * grid.voxel_size[2] >= 50.0
    spec = draw_phantom(1, keyed_rng(0, 99), n_vials=13)
    angles = []
    for i in range(6):
        pose = reposition_pose(scenario, keyed_rng(0, 99, i), grid, spec.container_radius_mm)
        angles.append(pose.angles_deg)
        labels = phantom_tissue(spec, grid, pose).labels
        assert not labels[[0, -1]].any() and not labels[:, [0, -1]].any()
        assert max(map(abs, pose.translation_mm)) <= 20.0
    # at demo size the tilt fits the view: no reduction needed, so tilts reach several degrees
    assert max(abs(a) for ang in angles for a in ang[:2]) > 3.0


def test_temperature_scales_phantom_diffusivities(zoo):
    one = {"seed": 0, "protocols": ("b1000",)}
    warm = simulate_session("phantom01", "Prisma1", scenario="temperature", **one)
    cold = simulate_session("phantom01", "Prisma1", scenario="default", **one)
    factor = temperature_factor(1.5)
    assert warm.temperature_delta_c == 1.5 and factor == pytest.approx(1.036)
    assert np.array_equal(warm.tissue.d_par, cold.tissue.d_par * np.float32(factor))
    assert warm.pose == cold.pose
    # a bath voxel away from the vials: b=1000 attenuation follows exp(-b D (1 + 0.024 dT))
    spec = cold.spec
    bath = binary_erosion(cold.tissue.labels == 1, IN_PLANE, iterations=2)
    run_w, run_c = warm.runs[0], cold.runs[0]
    b = run_c.bvals
    dwi, b0 = (b > 900) & (b < 1100), b < 50
    e_w = run_w.noiseless[bath][:, dwi] / run_w.noiseless[bath][:, b0].mean(-1, keepdims=True)
    e_c = run_c.noiseless[bath][:, dwi] / run_c.noiseless[bath][:, b0].mean(-1, keepdims=True)
    expected = np.exp(-1000.0 * spec.bath_d * factor) / np.exp(-1000.0 * spec.bath_d)
    assert np.median(e_w / e_c) == pytest.approx(expected, rel=3e-3)
    # the other site's phantoms are untouched
    ge_w = simulate_session("phantom01", "GE1", scenario="temperature", **one)
    ge_c = simulate_session("phantom01", "GE1", **one)
    assert np.array_equal(ge_w.runs[0].image, ge_c.runs[0].image)


def test_regenerate_honours_the_session_temperature(zoo):
    root = zoo["temperature"].root
    assert read_phantom_state(root, "phantom02", "Prisma2")["temperature_delta_c"] == 1.5
    assert read_phantom_state(root, "phantom02", "GE2")["temperature_delta_c"] == 0.0
    written = _load(bw.noiseless_path(root, "phantom02", "Prisma2", "multishell"))
    regen = regenerate_noiseless(root, "phantom02", "Prisma2", "multishell")
    assert np.allclose(regen, written, rtol=1e-5, atol=1e-3)
    nominal = regenerate_noiseless(
        root, "phantom02", "Prisma2", "multishell", temperature_delta_c=0
    )
    assert not np.allclose(nominal, written, rtol=1e-3)
    # session truth maps include the temperature: bath MD is 3.6 % higher than nominal
    gt = bw.gt_dir(root, "phantom02")
    md_ses = _load(gt / "ses-Prisma2" / "sub-phantom02_ses-Prisma2_desc-truth_MD.nii.gz")
    spec = read_spec(root, "phantom02")[1]
    labels = _load(gt / "ses-Prisma2" / "sub-phantom02_ses-Prisma2_dseg.nii.gz")
    bath = binary_erosion(labels == 1, IN_PLANE)
    assert np.median(md_ses[bath]) == pytest.approx(spec.bath_d * 1.036, rel=1e-4)


def test_session_alone_equals_scenario_study(zoo):
    root = zoo["nist-fibre"].root
    for sub, ses, acq in (("phantom02", "GE2", "b2000"), ("phantom01", "Prisma1", "b1000")):
        data = simulate_session(sub, ses, seed=0, scenario="nist-fibre", protocols=(acq,))
        assert np.array_equal(
            _load(bw.dwi_path(root, sub, ses, acq, ".nii.gz")), data.runs[0].image
        )
        assert read_pose(root, sub, ses) == data.pose


@pytest.mark.parametrize("design", list(DESIGNS))
def test_designs_round_trip_json(design):
    grid = SIZES["demo"].phantom_grid
    spec = draw_phantom(2, keyed_rng(5, 1, 0, 2), n_vials=13, design=design, grid=grid)
    assert spec.design == design
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["type"] == "phantom"
    assert PhantomSpec.from_dict(data) == spec
    data.pop("design")
    assert PhantomSpec.from_dict(data).design == "mixed"  # JSON written before designs


def test_default_design_draws_as_before():
    a = draw_phantom(1, keyed_rng(0, 4, 0, 1), n_vials=7)
    b = draw_phantom(1, keyed_rng(0, 4, 0, 1), n_vials=7, design="mixed")
    assert a == b and a.design == "mixed" and a.container_radius_mm == 74.0
    assert {v.kind for v in a.vials} == {"pvp", "fibre", "crossing"}


def test_nist_design_is_isotropic_with_13_vials():
    grid = SIZES["demo"].phantom_grid
    spec = draw_phantom(1, keyed_rng(0, 1), n_vials=7, design="nist", grid=grid)
    assert len(spec.vials) == 13 and spec.bath_d == 1.1e-3
    assert spec.container_radius_mm == 90.0
    assert all(v.kind == "pvp" and v.fibre_fraction == 0.0 for v in spec.vials)
    assert all(v.radius_mm == 8.0 for v in spec.vials)
    d = np.array([v.d_iso for v in spec.vials])
    assert d.min() < 0.14e-3 and d.max() > 1.08e-3
    assert len(PVP_LEVELS) == 9 and len({v.d_iso for v in spec.vials}) == 13
    order = np.argsort(d)
    assert np.all(np.diff([spec.vials[i].t1 for i in order]) > 0)  # more PVP, shorter T1
    tissue = phantom_tissue(spec, grid, Pose())
    assert np.all(tissue.fractions[:, 2:] == 0)
    fa, _ = tissue.true_fa_md()
    assert fa.max() < 1e-4
    assert set(np.unique(tissue.labels)) == set(range(15))
    # the tiny grid (162 mm field of view) gets a shrunken copy; small vials are 1.5 voxels
    tiny = SIZES["tiny"].phantom_grid
    small = draw_phantom(1, keyed_rng(0, 1), n_vials=7, design="nist", grid=tiny)
    assert small.container_radius_mm <= 0.9 * 81.0 + 1e-6
    nist_small = draw_phantom(1, keyed_rng(0, 1), n_vials=7, design="nist-small", grid=grid)
    assert nist_small.vials[0].radius_mm == pytest.approx(1.5 * 3.4375, abs=1e-3)


def test_fibre_design_has_only_tubes():
    spec = draw_phantom(2, keyed_rng(0, 2), n_vials=13, design="fibre")
    kinds = [v.kind for v in spec.vials]
    assert set(kinds) == {"fibre", "crossing"} and kinds.count("crossing") >= 6
    for vial in spec.vials:
        assert vial.fibre_fraction > 0.5
        if vial.kind == "crossing":
            cos = abs(np.dot(*np.asarray(vial.fibre_axes)))
            assert 44.0 <= np.degrees(np.arccos(cos)) <= 90.0
    assert 1.9e-3 < spec.bath_d < 2.2e-3  # water at room temperature


def test_scenario_validation(tmp_path):
    with pytest.raises(ScenarioError, match="unknown phantom design"):
        PhantomScenario("x", designs=("nist", "agar"))
    with pytest.raises(ScenarioError, match="reposition_mm"):
        PhantomScenario("x", reposition_mm=-1.0)
    with pytest.raises(ScenarioError, match="given twice"):
        PhantomScenario("x", bias_field=(("GE", 2.0), ("GE", 3.0)))
    bad_site = PhantomScenario("x", temperature_delta_c=(("Skyra", 1.0),))
    with pytest.raises(ScenarioError, match="Skyra"):
        simulate_study(tmp_path / "out", scenario=bad_site)
    with pytest.raises(ScenarioError, match="unknown protocol"):
        simulate_study(tmp_path / "out", scenario=PhantomScenario("x", protocols=("b3000",)))
    assert not (tmp_path / "out").exists()


def test_cli_list_scenarios(capsys):
    assert simulate_main(["--list-scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(ZOO)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--scenario", "zebra"], "--scenario"),
        (["--phantom", "nist,agar"], "--phantom"),
        (["--phantom", ""], "--phantom"),
        (["--phantom-protocols", "b3000"], "--phantom-protocols"),
        (["--reposition", "-1", "5"], "--reposition"),
        (["--reposition", "500", "5"], "--reposition"),
        (["--tilt", "-2"], "--tilt"),
        (["--temperature-delta", "Skyra=1"], "--temperature-delta"),
        (["--temperature-delta", "Prisma"], "--temperature-delta"),
        (["--temperature-delta", "Prisma=99"], "--temperature-delta"),
        (["--bias-field", "GE=-1"], "--bias-field"),
        (["--bias-field", "GE=x"], "--bias-field"),
        (["--phantom-slices", "0"], "--phantom-slices"),
    ],
)
def test_cli_bad_values_exit_2(tmp_path, capsys, args, option):
    out = tmp_path / "out"
    assert _exit_code([str(out), *args]) == 2
    err = capsys.readouterr().err
    assert option in err and "error" in err
    assert not out.exists()


def test_cli_needs_out_unless_listing(capsys):
    assert _exit_code(["--scenario", "bias"]) == 2
    assert "OUT" in capsys.readouterr().err


def test_cli_options_compose_with_the_preset(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(out), "--scenario", "temperature", "--phantom", "nist", "--no-noiseless"]
    argv += ["--phantom-protocols", "b1000", "--reposition", "2", "3", "--bias-field", "GE=2"]
    assert simulate_main(argv) == 0
    assert "phantom scenario: temperature+custom" in capsys.readouterr().out
    sim = json.loads((bw.gt_dir(out) / "simulation.json").read_text())
    scenario = sim["scenario"]
    assert scenario["designs"] == ["nist"] and scenario["protocols"] == ["b1000"]
    assert scenario["temperature_delta_c"] == {"Prisma": 1.5}
    assert scenario["bias_field"] == {"GE": 2.0}
    assert (scenario["reposition_mm"], scenario["reposition_deg"]) == (2.0, 3.0)
    assert sim["phantoms"] == ["phantom01"]
    assert sorted({r["acq"] for r in sim["runs"] if r["subject"] == "phantom01"}) == ["b1000"]
