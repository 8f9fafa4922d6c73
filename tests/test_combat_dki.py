"""ComBat of the DKI maps (interfaces.combat_dki): fitted with FA/MD/GFA when every
session has them, applied at the participant level as native desc-combat DKI maps, the
reference site unchanged; a model without DKI features harmonizes no DKI map.

Tiny sessions written in tmp_path; the registration to the template is the identity
(monkeypatched), so a test runs in seconds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.derivatives import DKI_PARAMS, RunNames, sidecar_path
from bids_harmony.bids.io import write_json
from bids_harmony.dmri.dki import RANGES
from bids_harmony.interfaces import combat_dki
from bids_harmony.interfaces.combat import (
    KINDS,
    CohortSession,
    CombatOptions,
    FitCombatModel,
    apply_to_run,
)

SHAPE = (8, 8, 6)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
LABELS = ["b1000", "b2000"]
SITES = {"Prisma": ("Prisma1", "Prisma2", "Prisma3"), "GE": ("GE1", "GE2", "GE3")}
#: The GE site's multiplicative effect on every map (kurtosis more than diffusion).
EFFECT = {"mk": 1.3, "ak": 1.3, "rk": 1.3, "kfa": 1.1}


def _save(root: Path, relpath: Path, array: np.ndarray) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.asarray(array, np.float32), AFFINE), path)
    write_json(root / sidecar_path(relpath), {})
    return path


def _maps(site: str, rng: np.random.Generator, base: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, values in base.items():
        factor = EFFECT.get(name.split("/")[-1], 1.05) if site == "GE" else 1.0
        out[name] = values * factor * (1 + 0.02 * rng.standard_normal(SHAPE))
    out["dki/fa"] = np.clip(out["dki/fa"], 0, 1)
    out["dki/kfa"] = np.clip(out["dki/kfa"], 0, 1)
    return out


@pytest.fixture
def cohort(tmp_path):
    """Six sessions (3 Prisma, 3 GE) of one subject each: participant outputs and the
    template-space ``.npz`` of WarpMaps (identity warp)."""
    rng = np.random.default_rng(0)
    base = {}
    for label in LABELS:
        base |= {f"{label}/fa": 0.2 + 0.5 * rng.random(SHAPE), f"{label}/md": np.full(SHAPE, 8e-4),
                 f"{label}/gfa": 0.1 + 0.3 * rng.random(SHAPE)}  # fmt: skip
    base |= {f"dki/{p}": np.full(SHAPE, 8e-4) for p in ("md", "ad", "rd")}
    base |= {"dki/fa": base["b1000/fa"], "dki/kfa": 0.3 + 0.3 * rng.random(SHAPE),
             "dki/mk": 0.8 + 0.2 * rng.random(SHAPE), "dki/ak": np.full(SHAPE, 0.7),
             "dki/rk": 1.0 + 0.2 * rng.random(SHAPE)}  # fmt: skip
    out = tmp_path / "out"
    runs, warped, sessions = [], [], []
    for k, (site, labels) in enumerate(SITES.items()):
        for j, ses in enumerate(labels):
            subject = f"{k}{j}"
            entities = {"subject": subject, "session": ses, "acquisition": "ms"}
            run = SimpleNamespace(entities=entities, shells=(1000.0, 2000.0), site=site,
                                  subject=subject, session=ses, dwi=Path(f"{ses}.nii.gz"),
                                  prefix=f"sub-{subject}_ses-{ses}_acq-ms")  # fmt: skip
            names = RunNames.of_run(run)
            maps = _maps(site, rng, base)
            _save(out, names.mask(), np.ones(SHAPE))
            for label in LABELS:
                for kind in (*KINDS, "sh"):
                    _save(out, names.shell_map(label, kind), maps.get(f"{label}/{kind}",
                                                                       np.ones(SHAPE)))
            for p in DKI_PARAMS:
                _save(out, names.dki_map(p), maps[f"dki/{p}"])
            arrays = {"mask": np.ones(SHAPE, bool),
                      **{f"{name}/none": value for name, value in maps.items()}}  # fmt: skip
            np.savez(tmp_path / f"{run.prefix}.npz", **arrays)
            runs.append(run)
            warped.append(str(tmp_path / f"{run.prefix}.npz"))
            sessions.append(CohortSession(run.prefix, run.prefix, subject, site))
    template = _save(tmp_path, Path("template.nii.gz"), base["b1000/fa"])
    return SimpleNamespace(out=out, runs=runs, warped=warped, sessions=sessions,
                           template=template, tmp=tmp_path)  # fmt: skip


def _fit(cohort, warped, stem="combat_tgt-Prisma_acq-ms") -> Path:
    node = FitCombatModel(warped=warped, sessions=cohort.sessions, labels=LABELS, ref="b1000",
                          options=CombatOptions(ref_site="Prisma"),
                          template_file=str(cohort.template),
                          models_dir=str(cohort.out / "models"), stem=stem,
                          card={"target_site": "Prisma", "space": "studyFA"})  # fmt: skip
    node.base_dir = str(cohort.tmp / "work")
    return Path(node.run(cwd=str(cohort.tmp)).outputs.out_file)


@pytest.fixture
def identity_warps(monkeypatch):
    """Registration to the template: the identity (the sessions are already aligned)."""
    from bids_harmony.registration import common_space, warps

    def load(image, transform, template, **kwargs):
        return image if isinstance(image, np.ndarray) else np.asarray(nb.load(image).dataobj,
                                                                         np.float32)

    monkeypatch.setattr(common_space, "register_to_template", lambda *a, **k: "identity")
    monkeypatch.setattr(warps, "to_template", load)
    monkeypatch.setattr(warps, "from_template", load)


def _dki(out: Path, run, method=None) -> dict[str, np.ndarray]:
    names = RunNames.of_run(run)
    return {p: np.asarray(nb.load(out / names.dki_map(p, method)).dataobj) for p in DKI_PARAMS}


def test_combat_fits_and_applies_the_dki_maps(cohort, identity_warps):
    model_file = _fit(cohort, cohort.warped)
    card = json.loads(model_file.with_suffix(".json").read_text())
    assert [m for m in card["features"]["maps"] if m.startswith("dki/")] == [
        f"dki/{p}" for p in DKI_PARAMS]
    for run in cohort.runs:
        apply_to_run(model_file, cohort.out, run, {}, cohort.tmp / run.prefix)
    prisma = [r for r in cohort.runs if r.site == "Prisma"]
    ge = [r for r in cohort.runs if r.site == "GE"]
    for run in prisma:  # the reference site: unchanged
        raw, harmonized = _dki(cohort.out, run), _dki(cohort.out, run, "combat")
        assert all(np.array_equal(raw[p], harmonized[p]) for p in DKI_PARAMS)
    mk = {site: np.mean([_dki(cohort.out, r, m)["mk"].mean() for r in runs])
          for site, runs, m in (("prisma", prisma, None), ("ge", ge, None),
                                ("ge_combat", ge, "combat"))}  # fmt: skip
    assert mk["ge"] > 1.2 * mk["prisma"]
    assert abs(mk["ge_combat"] - mk["prisma"]) < 0.03 * mk["prisma"]
    maps = _dki(cohort.out, ge[0], "combat")
    assert all(RANGES[p][0] <= maps[p].min() and maps[p].max() <= RANGES[p][1]
               for p in DKI_PARAMS)  # fmt: skip
    path = cohort.out / RunNames.of_run(ge[0]).dki_map("mk", "combat")
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["Harmonization"]["Method"] == "combat"
    assert sidecar["Sources"][0].endswith("_model-dki_param-mk_dwimap.nii.gz")
    assert sidecar["Units"] == "arbitrary" and sidecar["ClippedToRange"] == [0.0, 3.0]


def test_a_model_without_dki_features_harmonizes_no_dki_map(cohort, identity_warps, caplog):
    caplog.set_level(logging.INFO, logger="bids_harmony")
    # one session without DKI maps: the DKI maps are left out of the model
    first = dict(np.load(cohort.warped[0]))
    lacking = str(cohort.tmp / "lacking.npz")
    np.savez(lacking, **{k: v for k, v in first.items() if not k.startswith("dki/")})
    model_file = _fit(cohort, [lacking, *cohort.warped[1:]])
    assert "1 of 6 sessions have no DKI maps" in caplog.text
    assert not combat_dki.dki_params(json.loads(model_file.with_suffix(".json").read_text())
                                     ["features"]["maps"])  # fmt: skip
    run = next(r for r in cohort.runs if r.site == "GE")
    written = apply_to_run(model_file, cohort.out, run, {}, cohort.tmp / "apply")
    assert written and not any("model-dki" in p.name for p in written)


def test_feature_names():
    names = ["b1000/fa", "b2000/md", "dki/mk", "dki/fa"]
    assert combat_dki.shell_labels(names) == ["b1000", "b2000"]
    assert combat_dki.dki_params(names) == ["fa", "mk"]
    assert combat_dki.is_dki("dki/md") and not combat_dki.is_dki("b1000/md")
