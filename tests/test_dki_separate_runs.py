"""DKI of shells acquired as separate runs (issue 15): discovery, b0 normalisation,
alignment, and the participant level on a study simulated with ``--shells-as-runs``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.dki_runs import plan_dki
from bids_harmony.dmri import dki
from bids_harmony.dmri.dki_runs import RunArrays, align_runs, combined_dki_fit
from bids_harmony.simulate import simulate_session
from bids_harmony.simulate.kurtosis import true_dki_maps
from bids_harmony.simulate.tissue import Pose

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
SEED = 4
DKI = ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, dtype=float)


def _wm(tissue) -> np.ndarray:
    """Voxels of the support that are >= 90 % white matter."""
    fractions = np.zeros(tissue.grid.shape + tissue.fractions.shape[1:], dtype=np.float32)
    fractions[tissue.support] = tissue.fractions
    return (fractions[..., 2:].sum(-1) > 0.9) & tissue.mask


def _arrays(session, mask, *, shift_mm=(0.0, 0.0, 0.0), gain=1.0) -> list[RunArrays]:
    """The session's runs as arrays; the second one's header shifted, its signal scaled."""
    out = []
    for k, run in enumerate(session.runs):
        affine = session.tissue.grid.affine.copy()
        data = run.image.astype(np.float32)
        if k == 1:
            affine[:3, 3] += shift_mm
            data = data * np.float32(gain)
        out.append(RunArrays(data, affine, run.bvals, run.bvecs, mask, run.acq))
    return out


# --------------------------------------------------------------------------- discovery


def _run(acq, shells, *, session="A", run=None, n=30):
    i = np.arange(n) + 0.5
    z, phi = 1 - i / n, i * np.pi * (3 - np.sqrt(5))
    g = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    bvals = np.r_[0.0, np.repeat(shells, n)]
    bvecs = np.r_[np.zeros((1, 3)), np.tile(g, (len(shells), 1))]
    entities = {"subject": "01", "session": session, "acquisition": acq}
    if run is not None:
        entities["run"] = run
    prefix = "_".join(f"{k[:3]}-{v}" for k, v in entities.items())
    return SimpleNamespace(dwi=Path(prefix + "_dwi.nii.gz"), prefix=prefix, subject="01",
                           session=session, site="S", entities=entities, bvals=bvals,
                           bvecs=bvecs, shells=tuple(shells))  # fmt: skip


def test_plan_combines_single_shell_runs_that_differ_only_in_acq():
    runs = [_run("b2000", [2000.0]), _run("b1000", [1000.0]),  # combined, lowest b first
            _run("x", [1000.0], session="B"), _run("y", [1000.0], session="B"),  # same shell
            _run("b1000", [1000.0], session="C"), _run("b2000", [2000.0], session="C", run="2"),
            _run("b1000", [1000.0], session="D"), _run("ms", [1000.0, 2000.0], session="D")]
    plan = plan_dki(runs)
    assert [[r.prefix for r in g.runs] for g in plan.groups] == [
        ["sub-01_ses-A_acq-b1000", "sub-01_ses-A_acq-b2000"]]
    assert plan.groups[0].shells == (1000.0, 2000.0)
    notes = {path.name.split("_dwi")[0]: why for path, why in plan.notes.items()}
    assert "has the same shell" in notes["sub-01_ses-B_acq-x"]
    assert "differs from it only in acq" in notes["sub-01_ses-C_acq-b1000"]
    assert "differs from it only in acq" in notes["sub-01_ses-C_acq-b2000_run-2"]
    assert "has a multi-shell run" in notes["sub-01_ses-D_acq-b1000"]
    assert set(plan.alone) == {runs[-1].dwi}


def test_workflow_graph_of_a_combined_session(tmp_path):
    """Skeleton BIDS: the combined fit sits in the first run's workflow, after both sinks."""
    from bids_harmony.bids.discovery import discover
    from bids_harmony.config import Config
    from bids_harmony.workflows.participant import init_participant_wf, wf_name
    from tests.conftest import make_bids, write_run

    bids = make_bids(tmp_path / "bids", sessions=("A",))
    folder = bids / "sub-01" / "ses-A" / "dwi"
    for path in folder.glob("sub-01_ses-A_dwi.*"):
        path.unlink()
    rng = np.random.default_rng(0)
    for bval in (1000.0, 2000.0):
        write_run(folder, f"sub-01_ses-A_acq-b{bval:g}", rng=rng, bval=bval)
    study = discover(bids)
    config = Config(bids_dir=bids, output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "work", omp_nthreads=2)  # fmt: skip
    wf = init_participant_wf(study, config, backend="none")
    first, second = (wf_name(f"sub-01_ses-A_acq-b{b}") for b in (1000, 2000))
    names = set(wf.list_node_names())
    assert {f"{first}.fit_dki_runs", f"{first}.ds_dki_runs"} <= names
    assert not [n for n in names if n.startswith(second) and "dki" in n]
    assert not [n for n in names if n.endswith(".fit_dki")]
    fit = wf.get_node(f"{first}.fit_dki_runs")
    assert [r["source"] for r in fit.inputs.runs] == [
        f"sub-01/ses-A/dwi/sub-01_ses-A_acq-b{b}_dwi.nii.gz" for b in (1000, 2000)]
    assert fit.inputs.n_procs == 2
    flat = wf._create_flat_graph()
    edges = {(u.fullname.split(".", 1)[1], v.fullname.split(".", 1)[1]) for u, v in flat.edges()}
    assert (f"{second}.outputnode", f"{first}.dki_runs_written") in edges
    assert (f"{first}.ds_participant", f"{first}.dki_runs_written") in edges


# --------------------------------------------------------------------------- numerics


@pytest.fixture(scope="module")
def tiny_session():
    """Subject 01, ses-GE1, tiny: b1000 and b2000 runs in one pose, and the multi-shell run."""
    kwargs = {"size": "tiny", "seed": SEED, "human_signal": "kurtosis"}
    runs = simulate_session("01", "GE1", protocols=("b1000", "b2000"), **kwargs)
    multi = simulate_session("01", "GE1", protocols=("multishell",), **kwargs)
    return runs, multi


def test_b0_normalisation_makes_a_scaled_run_irrelevant(tiny_session):
    session, _ = tiny_session
    mask = session.tissue.mask
    plain = combined_dki_fit(_arrays(session, mask), [None, None])
    scaled = combined_dki_fit(_arrays(session, mask, gain=1.7), [None, None])
    wm = _wm(session.tissue)
    for param in DKI:
        np.testing.assert_allclose(scaled.maps[param], plain.maps[param], rtol=1e-4,
                                   atol=1e-4 * dki.RANGES[param][1], err_msg=param)  # fmt: skip
    # without the normalisation a joint fit of the raw runs is badly off
    runs = _arrays(session, mask, gain=1.7)
    naive = dki.dki_fit(np.concatenate([r.data for r in runs], axis=-1),
                        np.concatenate([r.bvals for r in runs]),
                        np.concatenate([r.bvecs for r in runs]), mask=mask)  # fmt: skip
    for param in ("mk", "md"):
        good = np.median(plain.maps[param][wm])
        assert abs(np.median(naive.maps[param][wm]) - good) > 0.2 * good, param


def test_combined_fit_matches_the_multi_shell_run(tiny_session):
    """Same pose, no motion: the combined fit is as good as the single multi-shell run's."""
    session, multi = tiny_session
    mask, wm = session.tissue.mask, _wm(session.tissue)
    combined = combined_dki_fit(_arrays(session, mask), [None, None])
    run = multi.runs[0]
    single = dki.dki_fit(run.image.astype(np.float32), run.bvals, run.bvecs, mask=mask)
    truth = true_dki_maps(session.tissue)
    # measured (seed 4, WM medians): MK 0.884 combined, 0.832 multi-shell run, 0.927 truth;
    # the runs' own TEs (59 and 72 ms vs 72 ms) weight the compartments a little differently
    for param, margin in (("md", 0.03), ("fa", 0.03), ("mk", 0.1)):
        ours, theirs = np.median(combined.maps[param][wm]), np.median(single.maps[param][wm])
        true = np.median(truth[param][wm])
        assert abs(ours - theirs) < margin * theirs, (param, ours, theirs)
        assert abs(ours - true) < abs(theirs - true) + 0.02 * true, (param, ours, theirs, true)


def _pose_matrix(pose: Pose) -> np.ndarray:
    """Object-to-scanner transform in world (RAS) mm: the simulator's grids are LAS."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    return flip @ pose.matrix @ flip


def test_misaligned_run_is_registered_and_its_gradients_rotated():
    """A head that moved between the runs (and a 6 mm header shift on top) is corrected."""
    session = simulate_session("01", "GE1", size="demo", seed=SEED, human_signal="kurtosis",
                               shells_as_runs=True)  # fmt: skip
    moved = session.runs[1].pose
    assert moved is not None and moved != session.pose
    shift = np.array([6.0, 0.0, 0.0])
    mask, wm = session.tissue.mask, _wm(session.tissue)
    runs = _arrays(session, mask, shift_mm=shift)
    (result,) = align_runs(runs, seed=SEED)
    # reference-to-run world transform: the head's motion, then the header shift
    expected = _pose_matrix(moved) @ np.linalg.inv(_pose_matrix(session.pose))
    expected[:3, 3] += shift
    assert np.linalg.norm(result.translation_mm - expected[:3, 3]) < 1.0, result.translation_mm
    residual = result.transform[:3, :3] @ expected[:3, :3].T
    assert np.degrees(np.arccos(np.clip((np.trace(residual) - 1) / 2, -1, 1))) < 1.0
    truth = true_dki_maps(session.tissue)

    def error(maps, param):
        return np.median(np.abs(maps[param][wm] - truth[param][wm])) / np.median(truth[param][wm])

    aligned = combined_dki_fit(runs, [None, result.transform])
    unaligned = combined_dki_fit(runs, [None, None])
    # measured (seed 4, median |error| / truth in WM): MK 0.17 aligned vs 0.36 not; MD 0.038
    # vs 0.043; FA 0.09 vs 0.12
    assert error(aligned.maps, "mk") < 0.8 * error(unaligned.maps, "mk") and error(
        aligned.maps, "mk") < 0.25  # fmt: skip
    assert error(aligned.maps, "md") < error(unaligned.maps, "md") + 0.002
    assert error(aligned.maps, "md") < 0.08


# --------------------------------------------------------------------------- end to end


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def separate_runs(tmp_path_factory):
    """``bids-harmony-simulate --shells-as-runs`` (tiny, kurtosis, b2000 gain 1.3), then the
    participant level of sub-01 ses-GE1 with ``--preproc none``."""
    from bids_harmony.cli.run import main
    from bids_harmony.cli.simulate import main as simulate_main

    root = tmp_path_factory.mktemp("separate")
    bids, out = root / "bids", root / "out"
    args = [str(bids), "--seed", str(SEED), "--scenario", "single", "--human-signal",
            "kurtosis", "--shells-as-runs", "--run-gain", "1.3", "--no-noiseless"]  # fmt: skip
    assert simulate_main(args) == 0
    messages = _Messages()
    logger = logging.getLogger("bids_harmony.workflows.dki_runs")
    logger.addHandler(messages)
    try:
        code = main([str(bids), str(out), "participant", "--participant-label", "01",
                     "--session-label", "GE1", "--preproc", "none", "-w", str(root / "work"),
                     "--nprocs", "2"])  # fmt: skip
    finally:
        logger.removeHandler(messages)
    return bids, out, code, messages.lines


def test_simulated_runs_are_separate_with_their_own_b0s(separate_runs):
    bids, *_ = separate_runs
    folder = bids / "sub-01" / "ses-GE1" / "dwi"
    assert sorted(p.name for p in folder.glob("*_dwi.nii.gz")) == [
        "sub-01_ses-GE1_acq-b1000_dwi.nii.gz", "sub-01_ses-GE1_acq-b2000_dwi.nii.gz"]
    for acq, shell in (("b1000", 1000), ("b2000", 2000)):
        bvals = np.loadtxt(folder / f"sub-01_ses-GE1_acq-{acq}_dwi.bval")
        assert (bvals < 50).sum() >= 1 and set(np.round(bvals[bvals >= 50], -2)) == {shell}
    record = json.loads((bids / "sourcedata" / "simulation" / "simulation.json").read_text())
    assert record["shells_as_runs"] and record["run_gain"] == 1.3
    poses = {r["acq"]: r.get("pose") for r in record["runs"] if r["subject"] == "01"}
    assert poses["b1000"] is None and poses["b2000"] is not None
    # the noise-free signal of the moved run, regenerated from the ground truth
    from bids_harmony.simulate import regenerate_noiseless

    session = simulate_session("01", "GE1", size="tiny", seed=SEED, human_signal="kurtosis",
                               shells_as_runs=True, run_gain=1.3)  # fmt: skip
    np.testing.assert_allclose(regenerate_noiseless(bids, "01", "GE1", "b2000"),
                               session.runs[1].noiseless, rtol=1e-5, atol=1e-3)  # fmt: skip
    assert list((bids / "sub-phantom01" / "ses-GE1" / "dwi").glob("*acq-multishell_dwi.nii.gz"))


def test_participant_combines_the_runs(separate_runs):
    bids, out, code, lines = separate_runs
    assert code == 0
    folder = out / "sub-01" / "ses-GE1" / "dwi"
    prefix = "sub-01_ses-GE1_acq-b1000"
    assert not list(folder.glob("*acq-b2000_model-dki*"))
    assert any("sub-01_ses-GE1_acq-b1000 (b=1000) and sub-01_ses-GE1_acq-b2000 (b=2000)" in line
               and "combined" in line for line in lines), lines  # fmt: skip
    mask = _load(folder / f"{prefix}_space-dwi_desc-brain_mask.nii.gz") > 0
    maps = {}
    for param in DKI:
        maps[param] = _load(folder / f"{prefix}_model-dki_param-{param}_dwimap.nii.gz")
        meta = json.loads((folder / f"{prefix}_model-dki_param-{param}_dwimap.json").read_text())
        assert meta["CombinedRuns"] == [
            f"bids:raw:sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-{acq}_dwi.nii.gz"
            for acq in ("b1000", "b2000")
        ]
        registration = meta["CombinedRunsRegistration"]
        assert "Rigid" in registration["Method"] and len(registration["Transforms"]) == 1
        assert registration["Transforms"][0]["B0CorrelationAfter"] >= 0.7
        assert meta["Model"]["Parameters"]["ShellBValues"] == [1000.0, 2000.0]
        assert len(meta["Sources"]) == 4
        assert 0 < meta["ClippedVoxels"]["of"] <= mask.sum()
        assert np.all(maps[param][~mask] == 0)
    methods = (out / "logs" / "CITATION.md").read_text()
    assert "combined for DKI" in methods

    # WM MK/MD against the same session's multi-shell run, fitted here, and the truth
    truth_dir = bids / "sourcedata" / "simulation" / "sub-01" / "ses-GE1"
    wm = (_load(truth_dir / "sub-01_ses-GE1_dseg.nii.gz") == 3) & mask
    multi = simulate_session("01", "GE1", size="tiny", seed=SEED, human_signal="kurtosis",
                             protocols=("multishell",)).runs[0]  # fmt: skip
    single = dki.dki_fit(multi.image.astype(np.float32), multi.bvals, multi.bvecs, mask=mask)
    for param, margin in (("md", 0.05), ("mk", 0.15)):
        truth = np.median(_load(truth_dir / f"sub-01_ses-GE1_desc-truth_model-dki_param-"
                                f"{param}_dwimap.nii.gz")[wm])  # fmt: skip
        ours, theirs = np.median(maps[param][wm]), np.median(single.maps[param][wm])
        assert abs(ours - theirs) < margin * theirs, (param, ours, theirs, truth)
        assert abs(ours - truth) < 0.35 * truth, (param, ours, truth)


def test_reader_finds_the_combined_maps(separate_runs):
    from bids_harmony.bids.discovery import discover
    from bids_harmony.bids.reader import RunOutputs

    bids, out, _, _ = separate_runs
    runs = {r.prefix: r for r in discover(bids).runs}
    first = RunOutputs.of_run(out, runs["sub-01_ses-GE1_acq-b1000"])
    assert sorted(first.dki_maps()) == sorted(DKI)
    assert RunOutputs.of_run(out, runs["sub-01_ses-GE1_acq-b2000"]).dki_maps() == {}


def test_runs_that_cannot_be_aligned_are_skipped_with_a_warning(separate_runs, tmp_path, caplog):
    """An unrelated b0 in the second run: a WARNING naming the files, no maps, no crash."""
    import shutil

    from bids_harmony.interfaces.dki import DkiSink
    from bids_harmony.interfaces.dki_runs import FitCombinedDKI
    from bids_harmony.workflows.dki_runs import group_specs

    bids, out, _, _ = separate_runs
    copy = tmp_path / "out"
    shutil.copytree(out / "sub-01", copy / "sub-01")
    second = copy / "sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-b2000_space-dwi_desc-preproc_dwi.nii.gz"
    img = nb.load(second)
    noise = np.random.default_rng(0).uniform(0, 1000, img.shape).astype(np.float32)
    nb.save(nb.Nifti1Image(noise, img.affine, img.header), second)
    from bids_harmony.bids.discovery import discover
    from bids_harmony.bids.dki_runs import plan_dki

    runs = [r for r in discover(bids).runs if r.subject == "01" and r.session == "GE1"]
    (group,) = plan_dki(runs).groups
    node = FitCombinedDKI(output_dir=str(copy), runs=group_specs(group, bids))
    (tmp_path / "node").mkdir()
    (tmp_path / "sink").mkdir()
    with caplog.at_level(logging.WARNING, logger="bids_harmony"):
        result = node.run(cwd=str(tmp_path / "node"))
    summary = json.loads(Path(result.outputs.out_json).read_text())
    assert summary["files"] == {} and "skipped" in summary
    assert "cannot be aligned" in caplog.text and "acq-b2000_space-dwi_desc-preproc" in caplog.text
    run_info = {"entities": {"sub": "01", "ses": "GE1", "acq": "b1000"}, "n_shells": 1,
                "site": "GE", "is_phantom": False}  # fmt: skip
    sink = DkiSink(output_dir=str(tmp_path / "empty"), run_info=run_info, params={},
                   dki_json=result.outputs.out_json)  # fmt: skip
    assert sink.run(cwd=str(tmp_path / "sink")).outputs.out_files == []


def test_gradients_of_a_rotated_run_are_rotated_into_the_first_runs_frame():
    """Noise-free, uniform tissue: the head turned 30 degrees in the second run (LAS grids);
    with the exact transform the combined fit equals a fit of both shells in one frame."""
    from dipy.sims.voxel import multi_tensor
    from scipy.spatial.transform import Rotation

    from bids_harmony.dmri.sh_rotation import bvec_frame

    i = np.arange(30) + 0.5
    z, phi = 1 - i / 30, i * np.pi * (3 - np.sqrt(5))
    g = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [7.0, -7.0, -7.0]  # LAS, centre at the world origin
    frame = bvec_frame(affine)
    axis = np.array([0.6, 0.8, 0.0])
    rotation = Rotation.from_euler("xyz", [10.0, -5.0, 30.0], degrees=True).as_matrix()
    evals = np.array([[1.7e-3, 0.3e-3, 0.3e-3], [1.0e-3, 0.9e-3, 0.9e-3]])

    def signal(bval, world_dirs, fibre):
        bvals = np.r_[0.0, np.full(len(world_dirs), bval)]
        bvecs = np.r_[np.zeros((1, 3)), world_dirs]
        from dipy.core.gradients import gradient_table

        angles = [np.degrees([np.arccos(fibre[2]), np.arctan2(fibre[1], fibre[0])])] * 2
        values, _ = multi_tensor(gradient_table(bvals, bvecs=bvecs), evals, S0=1000.0,
                                 angles=angles, fractions=[60, 40], snr=None)  # fmt: skip
        return np.broadcast_to(values, (8, 8, 8, values.size)).astype(np.float32)

    bvecs_file = g @ frame  # .bvec rows whose world directions are g
    run1 = signal(1000.0, g, axis)
    run2 = signal(2000.0, g, rotation @ axis)  # the head turned: the fibre turned with it
    mask = np.ones((8, 8, 8), dtype=bool)
    table = np.r_[np.zeros((1, 3)), bvecs_file]
    runs = [RunArrays(run1, affine, np.r_[0.0, [1000.0] * 30], table, mask, "b1000"),
            RunArrays(run2, affine, np.r_[0.0, [2000.0] * 30], table, mask, "b2000")]
    transform = np.eye(4)
    transform[:3, :3] = rotation  # reference point p -> R p in the second run
    combined = combined_dki_fit(runs, [None, transform])
    # the same measurements in the first run's frame: the second shell probed the head
    # along Rᵀg; normalised the same way
    turned = g @ rotation  # rows Rᵀg
    both = np.concatenate([np.ones((8, 8, 8, 2), np.float32), run1[..., 1:] / 1000.0,
                           signal(2000.0, turned, axis)[..., 1:] / 1000.0], axis=-1)  # fmt: skip
    reference = dki.dki_fit(both, np.r_[0.0, 0.0, [1000.0] * 30, [2000.0] * 30],
                            np.r_[np.zeros((2, 3)), bvecs_file, turned @ frame])  # fmt: skip
    centre = (slice(3, 5),) * 3
    for param in ("fa", "mk", "ak", "rk", "md"):
        np.testing.assert_allclose(combined.maps[param][centre], reference.maps[param][centre],
                                   rtol=1e-4, err_msg=param)  # fmt: skip
    # without the rotation (identity transform) the two shells disagree about the fibre
    unrotated = combined_dki_fit(runs, [None, None])
    assert abs(unrotated.maps["ak"][4, 4, 4] - reference.maps["ak"][4, 4, 4]) > 0.05
