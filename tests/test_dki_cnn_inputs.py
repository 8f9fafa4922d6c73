"""``train --method dki-cnn`` refuses bad inputs before anything is written (exit 2):
single-shell runs, too few traveling subjects, shells the sites do not share, missing
participant outputs; and its workflow registers each training pair in its own node.

The studies are the tiny simulated one (kurtosis signal) with edited ``.bval`` files:
the checks read the study's index, not the images, so no participant level is run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bids_harmony.cli.run import main
from bids_harmony.config import Config
from bids_harmony.errors import MissingOutputError, NoDataError
from bids_harmony.workflows.train_dki import (
    MIN_SUBJECTS,
    check_participant_outputs,
    plan_networks,
    run_train_dki,
)

GE, PRISMA = "SIGNAPremier", "Prisma"
HUMANS = ("01", "02", "03")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from bids_harmony.cli.simulate import main as simulate

    bids = tmp_path_factory.mktemp("dkiin") / "bids"
    assert simulate([str(bids), "--size", "tiny", "--human-signal", "kurtosis",
                     "--no-noiseless"]) == 0  # fmt: skip
    shutil.rmtree(bids / "sourcedata", ignore_errors=True)
    for phantom in bids.glob("sub-phantom*"):  # fewer files to index
        shutil.rmtree(phantom)
    table = bids / "participants.tsv"
    table.write_text("".join(line for line in table.read_text().splitlines(keepends=True)
                             if not line.startswith("sub-phantom")))  # fmt: skip
    return bids


def _copy(dataset: Path, dest: Path, bvals=None, drop: tuple[str, ...] = ()) -> Path:
    """The dataset with its images linked, ``bvals(path, values) -> values`` applied to the
    human runs' ``.bval`` files and the ``drop`` folders removed."""
    shutil.copytree(dataset, dest, copy_function=os.symlink)
    for folder in drop:
        shutil.rmtree(dest / folder)
    for path in sorted(dest.glob("sub-0*/ses-*/dwi/*.bval")):
        values = np.loadtxt(path)
        new = bvals(path, values.copy()) if bvals else values
        path.unlink()
        path.write_text(" ".join(f"{v:g}" for v in new) + "\n")
    return dest


def _config(bids: Path, tmp_path: Path, **kw) -> Config:
    kw.setdefault("participant_label", HUMANS)
    return Config(bids_dir=bids, output_dir=tmp_path / "out", analysis_level="train",
                  work_dir=tmp_path / "work", target_site=PRISMA, method="dki-cnn",
                  skip_bids_validation=True, device="cpu", **kw)  # fmt: skip


def _plans(config: Config):
    from bids_harmony.workflows.run import discover_study

    study = discover_study(config)
    return plan_networks(study, PRISMA, [GE], b_tolerance=config.b_tolerance)


def _at(session: str, old: float, new: float):
    """Move the shell ``old`` of the runs of ``ses-<session>*`` to ``new`` (jitter kept)."""

    def edit(path: Path, values: np.ndarray) -> np.ndarray:
        if f"_ses-{session}" in path.name:
            values[np.abs(values - old) <= 20] += new - old
        return values

    return edit


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_single_shell_runs_are_named_with_their_shells(dataset, tmp_path):
    bids = _copy(dataset, tmp_path / "bids", _at("GE", 2000, 1000))
    config = _config(bids, tmp_path)
    plans, skipped = _plans(config)
    assert not [p for p in plans if p.source == GE]
    text = " ".join(skipped)
    assert "DKI needs two non-zero shells" in text
    assert "sub-01_ses-GE1_acq-multishell has b=1000 only" in text
    with pytest.raises(NoDataError, match="two non-zero shells"):
        run_train_dki(config)
    assert _nothing_written(tmp_path)


def test_too_few_traveling_subjects_say_how_many_and_why(dataset, tmp_path):
    bids = _copy(dataset, tmp_path / "bids", drop=("sub-02/ses-GE2",))
    config = _config(bids, tmp_path, participant_label=("01", "02"))
    plans, skipped = _plans(config)
    assert plans == []
    line = next(s for s in skipped if s.startswith(f"{GE} -> {PRISMA}"))
    assert "1 subject(s) (sub-01)" in line and f"needs at least {MIN_SUBJECTS}" in line
    assert f"sub-02 acq-multishell: 1 session(s) at {GE}, 2 at {PRISMA}" in line
    with pytest.raises(NoDataError, match=f"needs at least {MIN_SUBJECTS}"):
        run_train_dki(config)
    assert _nothing_written(tmp_path)


def test_shells_the_sites_do_not_share_are_reported_by_site(dataset, tmp_path):
    bids = _copy(dataset, tmp_path / "bids", _at("GE", 2000, 3000))
    config = _config(bids, tmp_path)
    plans, skipped = _plans(config)
    assert not [p for p in plans if p.source == GE]
    assert (f"{GE} sessions have b=1000, 3000; {PRISMA} sessions have b=1000, 2000: only 1 "
            "shell(s) in common (tolerance 50 s/mm²)") in " ".join(skipped)  # fmt: skip


def test_shells_match_within_the_b_tolerance(dataset, tmp_path):
    bids = _copy(dataset, tmp_path / "bids", _at("Prisma", 2000, 2040))
    plans, skipped = _plans(_config(bids, tmp_path))
    source = next(p for p in plans if p.source == GE)
    assert source.shells == [1000.0, 2000.0]  # the source site's b-values
    assert len(source.pairs) == 6 and source.registration_shell == 1000.0
    plans, skipped = _plans(_config(bids, tmp_path, b_tolerance=30.0))
    assert not [p for p in plans if p.source == GE]
    assert (f"{PRISMA} sessions have b=1000, 2040: only 1 shell(s) in common (tolerance 30 "
            "s/mm²)") in " ".join(skipped)  # fmt: skip


def test_shells_one_site_lacks_are_dropped_with_a_warning(dataset, tmp_path, caplog):
    def third_shell(path: Path, values: np.ndarray) -> np.ndarray:
        if "ses-GE" in path.name:  # every other b=2000 volume to b=3000
            idx = np.flatnonzero(np.abs(values - 2000) <= 20)[::2]
            values[idx] += 1000
        return values

    bids = _copy(dataset, tmp_path / "bids", third_shell)
    with caplog.at_level(logging.WARNING):
        plans, skipped = _plans(_config(bids, tmp_path))
    source = next(p for p in plans if p.source == GE)
    assert source.shells == [1000.0, 2000.0]
    assert f"left out: {GE} b=3000" in caplog.text and "2 shells in common" in caplog.text


def _fake_outputs(config: Config, runs, dki: bool) -> None:
    """Empty files where the participant level writes what the DKI CNN reads."""
    from bids_harmony.bids.derivatives import DKI_PARAMS, sidecar_path
    from bids_harmony.bids.reader import RunOutputs

    for run in runs:
        out = RunOutputs.of_run(config.output_dir, run)
        names = [out.names.dwi(None), out.names.mask()]
        names += [out.names.shell_map(label, kind) for label in out.shell_labels
                  for kind in ("sh", "fa")]  # fmt: skip
        names += [out.names.dki_map(p) for p in DKI_PARAMS] if dki else []
        for name in names:
            for path in (out.root / name, out.root / sidecar_path(name)):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        stem = out.root / sidecar_path(out.names.dwi(None))
        stem.with_suffix(".bval").touch()
        stem.with_suffix(".bvec").touch()


def test_missing_participant_outputs_are_listed_before_training(dataset, tmp_path):
    bids = _copy(dataset, tmp_path / "bids")
    config = _config(bids, tmp_path)
    plans, _ = _plans(config)
    assert {(p.source, len(p.pairs)) for p in plans} == {(GE, 6), (PRISMA, 6)}
    with pytest.raises(MissingOutputError) as err:
        check_participant_outputs(config, plans)
    text = str(err.value)
    assert "12 run(s) lack the network's inputs" in text and "no DKI maps" in text
    assert "without --no-dki" in text
    assert f"bids-harmony {bids} {config.output_dir} participant" in text

    # SH and FA maps everywhere, DKI maps nowhere (participant --no-dki)
    runs = {r.prefix: r for p in plans for pair in p.pairs for r in (pair.source, pair.target)}
    _fake_outputs(config, runs.values(), dki=False)
    with pytest.raises(MissingOutputError) as err:
        check_participant_outputs(config, plans)
    text = str(err.value)
    assert "lack the network's inputs" not in text
    assert "6 reference-site run(s) have no DKI maps" in text
    assert "sub-01_ses-Prisma1_acq-multishell" in text and "without --no-dki" in text
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([str(bids), str(config.output_dir), "train", "--method", "dki-cnn",
                 "--target-site", PRISMA, "--participant-label", *HUMANS, "-w",
                 str(config.work_dir), "--skip-bids-validation"]) == 2  # fmt: skip
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (config.output_dir / "models").exists()

    # with the DKI maps: nothing is missing, and each pair gets its own registration node
    _fake_outputs(config, runs.values(), dki=True)
    check_participant_outputs(config, plans)
    from bids_harmony.workflows.train_dki import _name, _plan_workflow

    plan = next(p for p in plans if p.source == GE)
    sub = _plan_workflow(config, plan, ["03"], "cpu")
    names = sorted(sub.list_node_names())
    assert names.count("train") == 1
    assert [n for n in names if n.startswith("register_")] == sorted(
        _name("register", pair.source.prefix) for pair in plan.pairs)  # fmt: skip


def test_the_cli_exits_2_and_writes_nothing_on_a_shell_mismatch(dataset, tmp_path, caplog):
    bids = _copy(dataset, tmp_path / "bids", _at("GE", 2000, 3000))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code = main([str(bids), str(out), "train", "--method", "dki-cnn", "--target-site", PRISMA,
                 "-w", str(tmp_path / "work"), "--participant-label", *HUMANS])  # fmt: skip
    assert code == 2
    assert "only 1 shell(s) in common" in caplog.text and "b=1000, 3000" in caplog.text
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "work").exists()


def test_a_pair_whose_registration_fails_is_reported_not_raised(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bids_harmony.interfaces import dki_cnn
    from bids_harmony.registration.common_space import RegistrationFailedError

    def fail(*args, **kwargs):
        raise RegistrationFailedError("FA correlation 0.1 after registration")

    monkeypatch.setattr(dki_cnn, "reference_labels", fail)
    fa = tmp_path / "fa.nii.gz"
    fa.touch()
    run = SimpleNamespace(prefix="sub-01_ses-A")
    pair = dki_cnn.TrainingPair("01", run, SimpleNamespace(prefix="sub-01_ses-B"))
    node = dki_cnn.RegisterDkiLabels(pair=pair, in_files=[str(fa)], output_dir=str(tmp_path),
                                     stem="dkicnn_x")  # fmt: skip
    monkeypatch.chdir(tmp_path)
    result = node.run(cwd=str(tmp_path))
    assert result.outputs.labels_file == ""
    assert "FA correlation 0.1" in result.outputs.failure


def test_training_reads_the_registered_labels_and_lists_the_pairs_left_out(
    tmp_path, monkeypatch
):
    from types import SimpleNamespace

    from bids_harmony.interfaces import dki_cnn
    from bids_harmony.methods import registry

    fitted = {}

    class FakeMethod:
        def fit(self, inputs, labels, **options):
            fitted.update(labels=labels, held_out=options["held_out"], seed=options["seed"])
            return SimpleNamespace(training={})

        def save(self, model, stem, card):
            fitted["card"] = card
            return Path(f"{stem}.safetensors")

    monkeypatch.setattr(registry, "get_method", lambda name: FakeMethod())
    mask = np.ones((2, 2, 2), bool)
    x = np.zeros((2, 2, 2, 3), np.float32)
    monkeypatch.setattr(dki_cnn, "run_inputs", lambda out, run, spec: (x, mask))
    monkeypatch.setattr(dki_cnn, "label_mask", lambda out, run, y, m: m)
    pairs, files, failures = [], [], []
    for k, subject in enumerate(["01", "02", "03"]):
        source, ref = (SimpleNamespace(prefix=f"sub-{subject}_ses-{s}") for s in ("GE1", "P1"))
        pairs.append(dki_cnn.TrainingPair(subject, source, ref))
        path = tmp_path / f"labels{k}.npy"
        np.save(path, np.full((2, 2, 2, 8), k, np.float32))
        files.append("" if subject == "02" else str(path))
        failures.append("FA correlation 0.1" if subject == "02" else "")
    node = dki_cnn.TrainDkiCnn(pairs=pairs, labels_files=files, failures=failures,
                               held_out=["03"], output_dir=str(tmp_path),
                               models_dir=str(tmp_path / "models"), stem="dkicnn_x",
                               shells=[1000.0, 2000.0], card={}, seed=7)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    node.run(cwd=str(tmp_path))
    assert [float(y[0, 0, 0, 0]) for y in fitted["labels"]] == [0.0, 2.0]
    assert fitted["held_out"] == [1] and fitted["seed"] == 7
    card = fitted["card"]
    assert card["training_pairs"] == ["sub-01_ses-GE1 <- sub-01_ses-P1",
                                      "sub-03_ses-GE1 <- sub-03_ses-P1"]  # fmt: skip
    assert card["pairs_left_out"] == [
        "sub-02_ses-GE1 <- sub-02_ses-P1: registration failed (FA correlation 0.1)"]

    # the held-out subject's only pair left out: nothing to stop early on
    files[2], failures[2] = "", "ANTs failed"
    node.inputs.labels_files, node.inputs.failures = files, failures
    with pytest.raises(NoDataError, match="after registration 1 pair"):
        node.run(cwd=str(tmp_path))
