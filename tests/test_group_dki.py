"""The group level's DKI evaluation pieces (bids_harmony.workflows.group_dki, EvaluateDki)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from bids_harmony.bids.derivatives import DKI_PARAMS
from bids_harmony.interfaces.group_level import EvaluateDki, SessionMaps
from bids_harmony.workflows import group_dki


def _session(subject: str, key: str, methods=(None,)) -> SessionMaps:
    maps = {m: {p: f"{key}_{m}_{p}" for p in DKI_PARAMS} for m in methods}
    outputs = SimpleNamespace(dki_maps=lambda method=None: maps.get(method, {}))
    return SessionMaps(key=key, subject=subject, label=key, mask=None,
                       shells={"b1000": SimpleNamespace(outputs=outputs)})  # fmt: skip


def test_dki_plan_needs_raw_maps_everywhere_and_dkicnn_for_after():
    src = [_session("01", "a", (None, "dkicnn")), _session("01", "b", (None, "dkicnn"))]
    tgt = [_session("01", "c"), _session("01", "d")]
    assert group_dki.dki_plan(src, tgt) == (True, "dkicnn", "")
    src_raw = [_session("01", "a"), _session("01", "b", (None, "dkicnn"))]
    assert group_dki.dki_plan(src_raw, tgt) == (True, "", "")
    assert group_dki.dki_plan(src, [*tgt[:1], _session("01", "d", ())]) == (False, "", "")
    tgt_cnn = [_session("01", "c", (None, "dkicnn")), _session("01", "d", (None, "dkicnn"))]
    assert group_dki.dki_plan(src, tgt_cnn) == (True, "dkicnn", "dkicnn")


def _warped(tmp_path, name, scale, rng, others=None):
    """A session's WarpMaps file; ``others``: method -> scale of its DKI maps' kurtosis."""
    arrays = {"mask": np.ones((6, 6, 6), bool)}
    base = {p: 1.0 + 0.2 * rng.random((6, 6, 6)) for p in DKI_PARAMS}
    base["fa"][:3] = 0.5
    base["fa"][3:] = 0.1
    base["md"][:] = 0.8e-3
    for p in DKI_PARAMS:
        factor = scale if p in group_dki.KURTOSIS else 1.0
        arrays[f"dki/{p}/none"] = base[p] * factor
        arrays[f"dki/{p}/dkicnn"] = base[p]
        for method, other in (others or {}).items():
            arrays[f"dki/{p}/{method}"] = base[p] * (other if p in group_dki.KURTOSIS else 1.0)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


def test_evaluate_dki_interface_and_report_parts(tmp_path):
    src = [_session(s, f"{s}{k}") for s in ("01", "02") for k in "ab"]
    tgt = [_session(s, f"{s}{k}") for s in ("01", "02") for k in "cd"]
    warped = [_warped(tmp_path, s.key, 1.3, np.random.default_rng(int(s.subject)))
              for s in src] + [_warped(tmp_path, s.key, 1.0, np.random.default_rng(
                  int(s.subject))) for s in tgt]  # fmt: skip
    node = EvaluateDki(sessions_source=src, sessions_target=tgt, transforms=[object()] * 8,
                       warped=warped, method="dkicnn", target_method="dkicnn")  # fmt: skip
    node.base_dir = str(tmp_path / "work")
    rows = node.run(cwd=str(tmp_path)).outputs.rows
    cv = next(r for r in rows if (r["param"], r["measure"], r["region"], r["subject"])
              == ("mk", "cv_inter", "WM", "mean"))  # fmt: skip
    assert cv["before"] > 0.1 and cv["after"] == 0.0 and cv["reduction_percent"] == 100
    assert cv["after_all"] == 0.0 and cv["reduction_all_percent"] == 100
    assert {r["subject"] for r in rows} == {"01", "02", "mean"}

    models = tmp_path / "models"
    models.mkdir()
    stem = "src-GE_tgt-Prisma_acq-ms"
    (models / f"dkicnn_{stem}.json").write_text(json.dumps({"held_out_subjects": ["sub-02"]}))
    tables, figures, notes = group_dki.dki_report_parts({stem: rows}, tmp_path / "group",
                                                        models, {stem: "GE to Prisma"})
    frame = pd.read_csv(tmp_path / "group" / f"{stem}_dki.tsv", sep="\t")
    assert set(frame["in_training"].dropna()) == {True, False}
    assert (tmp_path / "group" / f"{stem}_dki.json").is_file()
    table = tables["DKI, WM: GE to Prisma"]
    assert set(table["subjects"]) == {"all", "held out: 02"}
    assert "reduction_all_percent" in table.columns
    assert len(notes) == 1 and "desc-dkicnn" in notes[0]
    assert all(p.is_file() for p in figures.values())


def test_other_methods_need_maps_of_every_source_session_or_a_group_rish_fit():
    src = [_session("01", "a", (None, "combat", "rish")), _session("01", "b", (None, "combat"))]
    assert group_dki.other_methods(SimpleNamespace(source=src, rish_fit=False)) == ["combat"]
    assert group_dki.other_methods(SimpleNamespace(source=src, rish_fit=True)) == [
        "rish", "combat"]


def test_rish_and_combat_columns_beside_the_dki_cnn(tmp_path):
    from bids_harmony.evaluation.dki import method_column

    src = [_session(s, f"{s}{k}") for s in ("01", "02") for k in "ab"]
    tgt = [_session(s, f"{s}{k}") for s in ("01", "02") for k in "cd"]
    warped = [_warped(tmp_path, s.key, 1.3, np.random.default_rng(int(s.subject)),
                      others={"rish": 1.3, "combat": 1.1}) for s in src]
    warped += [_warped(tmp_path, s.key, 1.0, np.random.default_rng(int(s.subject)))
               for s in tgt]  # fmt: skip
    node = EvaluateDki(sessions_source=src, sessions_target=tgt, transforms=[object()] * 8,
                       warped=warped, method="dkicnn",
                       methods=["rish", "combat", "harp"])  # harp: no maps, left out
    node.base_dir = str(tmp_path / "work")
    rows = node.run(cwd=str(tmp_path)).outputs.rows
    cv = next(r for r in rows if (r["param"], r["measure"], r["region"], r["subject"])
              == ("mk", "cv_inter", "WM", "mean"))  # fmt: skip
    assert cv[method_column("rish")] == cv["before"] > cv[method_column("combat")] > cv["after"]
    assert method_column("harp") not in cv

    stem = "src-GE_tgt-Prisma_acq-ms"
    tables, figures, notes = group_dki.dki_report_parts({stem: rows}, tmp_path / "group",
                                                        tmp_path / "models", {stem: "GE"})
    frame = pd.read_csv(tmp_path / "group" / f"{stem}_dki.tsv", sep="\t")
    assert {"after", "after_rish", "after_combat", "reduction_combat_percent"} <= set(frame)
    sidecar = json.loads((tmp_path / "group" / f"{stem}_dki.json").read_text())
    assert "LinearRISH" in sidecar["after_rish"]["Description"]
    table = tables["DKI, WM: GE"]
    assert list(table.columns) == ["subjects", "param", "measure", "before", "after",
                                   "reduction_percent", "after_rish", "reduction_rish_percent",
                                   "after_combat", "reduction_combat_percent"]
    assert any("LinearRISH, ComBat" in n and "traveling subjects too" in n for n in notes)
    assert all(p.is_file() for p in figures.values())
