"""ComBat from the CLI on the simulated cohort: train -> participant -> group, and bad input.

One module-scoped pipeline on ``bids-harmony-simulate --cohort 4 --size tiny``
(3 sites x 4 subjects, ages confounded with site): participant, ``train --method
combat --target-site Prisma --combat-covariates age sex``, participant (applies the
model), group.  The bad-input cases stop before anything is written (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.cli.run import main

pytestmark = pytest.mark.slow
TARGET = "Prisma"
MODEL = f"combat_tgt-{TARGET}_acq-multishell"
TRAIN = ["train", "--method", "combat", "--target-site", TARGET,
         "--combat-covariates", "age", "sex"]  # fmt: skip


def _cli(bids: Path, out: Path, work: Path, *args: str) -> int:
    return main([str(bids), str(out), *args, "--preproc", "none", "-w", str(work),
                 "--nprocs", "2"])  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from bids_harmony.cli.simulate import main as simulate

    root = tmp_path_factory.mktemp("combat")
    bids, out, work = root / "bids", root / "out", root / "work"
    assert simulate([str(bids), "--cohort", "4", "--size", "tiny", "--seed", "0"]) == 0
    assert _cli(bids, out, work, "participant") == 0
    raw = _snapshot(out)
    assert _cli(bids, out, work, *TRAIN) == 0
    assert _cli(bids, out, work, "participant") == 0
    assert _cli(bids, out, work, "group") == 0  # the target site from the model's card
    return bids, out, work, raw


def test_train_writes_a_model_with_its_card(cohort):
    from bids_harmony.methods.combat.maps import load_combat_maps

    _, out, _, _ = cohort
    model, card = load_combat_maps(out / "models" / f"{MODEL}.safetensors")
    assert card["method"] == "combat" and card["target_site"] == TARGET
    assert card["sessions_per_site"] == {"Prisma": 4, "SIGNAPremier": 4, "Skyra": 4}
    assert card["covariates"] == {"age": "numeric", "sex": "categorical"}
    assert card["combat"]["Variant"] == "combat" and card["combat"]["ReferenceSite"] == TARGET
    shells = {m for m in model.maps if not m.startswith("dki/")}
    assert shells == {f"{b}/{k}" for b in ("b1000", "b2000") for k in ("fa", "md", "gfa")}
    dki = set(model.maps) - shells  # the 8 DKI maps when every session has them
    assert dki in (set(), {f"dki/{p}" for p in ("md", "ad", "rd", "fa", "mk", "ak", "rk", "kfa")})
    assert model.mask.sum() == card["features"]["voxels"] > 100
    assert card["features"]["regions"] == model.region_ids.size > 5
    assert card["sha256"] and (out / "logs" / "CITATION.md").is_file()


def test_participant_writes_combat_maps_and_keeps_the_reference_site_bit_for_bit(cohort):
    _, out, _, _ = cohort
    changed = 0
    for native in sorted(
        out.glob("sub-*/ses-*/dwi/*b1000_desc-combat_model-tensor_param-fa_dwimap.nii.gz")
    ):
        raw_native = Path(str(native).replace("_desc-combat", ""))
        space = Path(str(native).replace("b1000_desc-combat", "b1000_space-studyFA_desc-combat"))
        space_raw = Path(str(space).replace("_desc-combat", ""))
        sidecar = json.loads(native.with_name(native.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Harmonization"]["Method"] == "combat"
        assert sidecar["Harmonization"]["ModelFile"] == f"bids::models/{MODEL}.safetensors"
        arrays = [np.asarray(nb.load(p).dataobj) for p in (native, raw_native, space, space_raw)]
        assert all(np.isfinite(a).all() for a in arrays)
        if "ses-Prisma" in native.name:  # the reference site: unchanged, bit for bit
            assert np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[2], arrays[3])
        else:
            changed += not np.array_equal(arrays[2], arrays[3])
    assert changed == 8
    tables = sorted(out.glob("sub-*/ses-*/dwi/*_space-studyFA_desc-combat_regions.tsv"))
    assert len(tables) == 12
    header = tables[0].read_text().splitlines()[0]
    assert header == "region\tmap\tbefore\tafter"


def test_no_site_effect_is_left_once_age_and_sex_are_accounted_for(cohort):
    """In-sample, voxel-wise: the F-test of site adjusted for age and sex finds many voxels
    before ComBat and none after.  (Comparing raw site means would be wrong: ages differ
    between sites and ComBat keeps the age effect.)"""
    from bids_harmony.bids.covariates import read_covariates
    from bids_harmony.evaluation.cohort import site_effect_pvalues
    from bids_harmony.methods.combat.maps import load_combat_maps

    bids, out, _, _ = cohort
    model, _ = load_combat_maps(out / "models" / f"{MODEL}.safetensors")
    for kind in ("fa", "md"):
        data: dict[str, list[np.ndarray]] = {"": [], "_desc-combat": []}
        keys, sites = [], []
        for desc in data:
            name = f"b1000_space-studyFA{desc}_model-tensor_param-{kind}_dwimap.nii.gz"
            pattern = f"sub-*/ses-*/dwi/*{name}"
            for path in sorted(out.glob(pattern)):
                data[desc].append(np.asarray(nb.load(path).dataobj, np.float64)[model.mask])
                if desc == "":
                    sub, ses = path.name.split("_")[:2]
                    keys.append((sub[4:], ses[4:]))
                    sites.append(ses[4:-1])
        covariates = read_covariates(bids, keys, ["age", "sex"])
        before = site_effect_pvalues(np.stack(data[""]), sites, covariates)
        after = site_effect_pvalues(np.stack(data["_desc-combat"]), sites, covariates)
        assert np.nanmean(after < 0.05) <= 0.01, kind
        # 12 sessions, 7 residual degrees of freedom: the FA site effects are strong enough
        # to show voxel by voxel, those on MD are weaker than the subjects' differences
        assert np.nanmean(before < 0.05) > (0.06 if kind == "fa" else np.nanmean(after < 0.05))


def test_group_reports_the_cohort_checks(cohort):
    import pandas as pd

    _, out, _, _ = cohort
    table = pd.read_csv(out / "group" / "combat_cohort.tsv", sep="\t")
    assert set(table["map"]) == {"b1000_fa", "b1000_md", "b2000_fa", "b2000_md"}
    assert (table["n_sessions"] == 12).all() and (table["n_in_sample"] == 12).all()
    assert (table["site_effect_after"] <= 0.01).all()
    fa = table.set_index("map").loc["b1000_fa"]
    assert fa["site_effect_before"] > 0.06
    assert fa["age_slope_after"] < 0 and fa["classifier_chance"] == pytest.approx(1 / 3)
    report = (out / "group" / "report.html").read_text()
    assert "ComBat cohort checks" in report and "in-sample and optimistic" in report
    assert "site classifier" in (out / "logs" / "CITATION.md").read_text()
    assert json.loads((out / "group" / "combat_cohort.json").read_text())["site_effect_after"]


def test_unseen_site_is_refused_at_the_participant_level(cohort, tmp_path, caplog):
    bids, out, _, _ = cohort
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    card_path = out2 / "models" / f"{MODEL}.json"
    card = json.loads(card_path.read_text())
    card["sites"] = ["Prisma", "SIGNAPremier"]  # as if Skyra had not been in the fit
    card_path.write_text(json.dumps(card))
    before = _snapshot(out2)
    assert _cli(bids, out2, tmp_path / "w", "participant") == 2
    assert "ComBat cannot harmonize an unseen site: Skyra" in caplog.text
    assert "train --method combat" in caplog.text
    assert _snapshot(out2) == before and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("case", "args", "edit", "message"),
    [
        ("one site", ["--participant-label", "05", "06", "07", "08"], None,
         "only the target site"),
        ("single session at a site", ["--participant-label", "01", "05", "06", "09", "10"],
         None, "fewer than 2 samples"),
        ("covariate column missing", ["--combat-covariates", "weight"], None,
         "covariate column(s) weight not found"),
        ("covariate value missing", [], "n/a", "covariate 'age' has no value for 1 session"),
        ("covariate confounded with site", ["--combat-covariates", "age", "room"], "room",
         "confounded with site"),
        ("smooth without gam", ["--combat-smooth", "age"], None, "--combat-variant gam"),
    ],
)  # fmt: skip
def test_bad_training_input_exits_2_and_writes_nothing(cohort, tmp_path, caplog, case, args,
                                                       edit, message):  # fmt: skip
    bids, out, _, _ = cohort
    if edit:
        copy = tmp_path / "bids"
        shutil.copytree(bids, copy, ignore=shutil.ignore_patterns("sourcedata"))
        tsv = copy / "participants.tsv"
        lines = tsv.read_text().splitlines()
        if edit == "n/a":
            cells = lines[1].split("\t")
            cells[lines[0].split("\t").index("age")] = "n/a"
            lines[1] = "\t".join(cells)
        else:  # a column that names the scanner room: the site itself
            lines = [lines[0] + "\troom"] + [
                line + "\t" + ("A" if int(line.split("\t")[0][4:]) <= 4 else
                               "B" if int(line.split("\t")[0][4:]) <= 8 else "C")
                for line in lines[1:]
            ]  # fmt: skip
        tsv.write_text("\n".join(lines) + "\n")
        bids = copy
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    shutil.rmtree(out2 / "models")
    before = _snapshot(out2)
    train = TRAIN if "--combat-covariates" not in args else TRAIN[:-3]
    assert _cli(bids, out2, tmp_path / "w", *train, *args) == 2, case
    assert message in caplog.text, caplog.text[-2000:]
    assert "Traceback" not in caplog.text
    assert _snapshot(out2) == before and not (tmp_path / "w").exists()
