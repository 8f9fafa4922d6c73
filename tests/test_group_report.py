"""Group-level tables, figures and HTML report (synthetic inputs, fast)."""

from __future__ import annotations

import json
import math
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from bids_harmony import __version__
from bids_harmony.evaluation.figures import bracket_levels, map_slices
from bids_harmony.evaluation.report import (
    format_number,
    roi_boxplot_figure,
    standard_error_figure,
    write_html_report,
)
from bids_harmony.evaluation.tables import (
    condition_key,
    table2,
    table3,
    table4,
    ttests_table,
    write_table,
)
from bids_harmony.evaluation.variability import PairedTest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BEST_CASE = "LinearRISH is trained on the traveling subjects it is evaluated on (best case)"


def _summary2() -> dict:
    return {
        "MD": {"SR source": (8e-6, 1e-6), "SR target": (10e-6, 2e-6),
               "No harmonization": (20e-6, 3e-6), "HARP": (11e-6, 1e-6)},
        "FA": {"SR source": (10.0, 1.0), "SR target": (8.0, 1.0),
               "No harmonization": (12.0, 2.0), "LinearRISH": (9.0, 1.0),
               "HARP": (10.0, 1.5)},
    }  # fmt: skip


def _maps(rng: np.random.Generator, shape=(8, 9, 5)) -> dict:
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    out = {}
    for metric, scale in (("FA", 0.02), ("MD", 2e-5), ("GFA", 0.01)):
        out[metric] = {}
        for cond in ("SR source", "SR target", "No harmonization", "LinearRISH", "HARP"):
            v = rng.gamma(2.0, scale, shape)
            v[~brain] = np.nan
            out[metric][cond] = v
    return out


def _roi_values(rng: np.random.Generator, conditions=None) -> dict:
    conditions = conditions or ("SR source", "SR target", "No harmonization", "LinearRISH",
                                "HARP")  # fmt: skip
    return {m: {c: rng.gamma(3.0, s, 40) for c in conditions}
            for m, s in (("FA", 0.005), ("MD", 5e-6), ("GFA", 0.003))}  # fmt: skip


def _check_png(path, min_side=200) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side and max(img.shape[:2]) < 5000
    return img


def _no_temp(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_table2_percentages_and_missing_condition():
    df = table2(_summary2())
    assert list(df["metric"]) == ["FA", "MD"]  # paper order, not input order
    fa = df.set_index("metric").loc["FA"]
    assert fa["pct_none"] == pytest.approx(20.0)  # (12 - max(10, 8)) / 10
    assert fa["pct_rish"] == pytest.approx(-10.0)
    assert fa["pct_harp"] == pytest.approx(0.0)
    assert fa["inter_none_sd"] == 2.0
    md = df.set_index("metric").loc["MD"]
    assert math.isnan(md["inter_rish"]) and math.isnan(md["pct_rish"])
    assert md["pct_none"] == pytest.approx(100.0)
    assert md["units"] == "mm^2/s" and fa["units"] == "1"
    assert condition_key("No harmonization") == "inter_none" == condition_key("inter_none")
    assert condition_key("ComBat") == "inter_combat" == condition_key("combat")
    with pytest.raises(KeyError):
        condition_key("MISPEL")


def test_write_table_tsv_and_dictionary(tmp_path):
    df = table2(_summary2())
    out = tmp_path / "group" / "desc-wholebrain_stderr.tsv"
    write_table(df, out, {"Description": "Table 2", "metric": {"Description": "Metric name"}})
    lines = out.read_text().splitlines()
    header = lines[0].split("\t")
    assert header == list(df.columns)
    md = dict(zip(header, lines[2].split("\t"), strict=True))
    assert md["inter_rish"] == "n/a" and md["pct_rish"] == "n/a"
    assert float(md["sr_source"]) == 8e-6  # full precision, no rounding
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["Description"] == "Table 2"
    assert meta["metric"] == {"Description": "Metric name"}
    assert set(df.columns) <= set(meta)
    assert all("Description" in meta[c] for c in df.columns)
    assert "mm^2/s" in meta["sr_source"]["Units"]
    _no_temp(out.parent)
    with pytest.raises(ValueError):
        write_table(df, tmp_path / "x.csv", {})


def test_table3_table4_ttests(tmp_path):
    roi = {"FA": {"GM": {"HARP": (1.0, 0.1)}, "WM": {"SR source": (2.0, 0.5),
                                                      "SR target": (1.0, 0.2),
                                                      "HARP": (3.0, 0.1)}}}  # fmt: skip
    t3 = table3(roi)
    assert list(zip(t3["metric"], t3["tissue"], strict=True)) == [("FA", "WM"), ("FA", "GM")]
    assert t3.loc[0, "pct_harp"] == pytest.approx(50.0)
    assert math.isnan(t3.loc[1, "pct_harp"])
    t4 = table4({"source vs HARP": {"mean": 12.5, "median": 9.0, "p95": 40.0, "n": 321},
                 "source vs none": {"angular_error_mean": 15.0,
                                    "angular_error_median": 11.0, "n_voxels": 300}})  # fmt: skip
    assert list(t4["n_voxels"]) == [321, 300]
    assert t4.loc[0, "angular_error_mean"] == 12.5 and math.isnan(t4.loc[1, "angular_error_p95"])
    tt = ttests_table({
        ("FA", "WM", ("HARP", "No harmonization")): PairedTest(-3.2, 0.004, 40, -1e-3),
        ("MD", "GM", "HARP vs LinearRISH"): {"statistic": 1.0, "pvalue": 0.3, "n": 38,
                                             "mean_difference": 2e-7},
    })  # fmt: skip
    assert list(tt["comparison"]) == ["HARP vs No harmonization", "HARP vs LinearRISH"]
    assert tt.loc[0, "pvalue"] == 0.004 and tt.loc[1, "n"] == 38
    for name, df in (("t3", t3), ("t4", t4), ("tt", tt)):
        write_table(df, tmp_path / f"{name}.tsv", {})
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert set(df.columns) <= set(meta)
    assert "n/a" in (tmp_path / "t4.tsv").read_text()
    _no_temp(tmp_path)


def test_standard_error_figure(tmp_path):
    rng = np.random.default_rng(0)
    maps = _maps(rng)
    out = tmp_path / "figs" / "stderr.png"
    assert standard_error_figure(maps, out) == out
    full = _check_png(out)
    # Missing columns (no LinearRISH anywhere, one map missing in a row) are skipped.
    for metric in maps:
        del maps[metric]["LinearRISH"]
    del maps["GFA"]["SR target"]
    out2 = tmp_path / "figs" / "stderr_norish.png"
    standard_error_figure(maps, out2, slice_index=2, titles={"HARP": "HARP (ours)"})
    narrow = _check_png(out2)
    assert narrow.shape[1] < full.shape[1]
    assert narrow.shape[0] < full.shape[0]  # one slice, the default three
    assert map_slices(list(maps["FA"].values())) == [1, 2, 3]  # brain in slices 1-3
    _no_temp(out.parent)


def test_roi_boxplot_figure(tmp_path):
    rng = np.random.default_rng(1)
    vals = _roi_values(rng)
    vals["FA"]["HARP"][:3] = np.nan  # non-finite ROIs are ignored
    sig = {("FA", "HARP", "No harmonization"): 1e-4, ("MD", "HARP", "LinearRISH"): 0.02,
           ("GFA", "HARP", "SR source"): 0.5}  # fmt: skip
    out = tmp_path / "roi_wm.png"
    roi_boxplot_figure(vals, out, tissue="WM", significance=sig)
    _check_png(out)
    out2 = tmp_path / "roi_gm.png"
    roi_boxplot_figure(_roi_values(rng, ("SR source", "SR target", "HARP")), out2, tissue="GM",
                       significance={("FA", "HARP", "LinearRISH"): 0.01})  # fmt: skip
    _check_png(out2)
    # Three brackets on the same boxes (GM in the demo): stacked, none on the same level
    # as one it touches; the figure grows to hold them.
    three = {(m, a, b): p for m in ("FA", "MD", "GFA") for (a, b), p in (
        (("HARP", "No harmonization"), 1e-4), (("LinearRISH", "No harmonization"), 0.003),
        (("HARP", "LinearRISH"), 0.02))}  # fmt: skip
    out3 = tmp_path / "roi_three.png"
    roi_boxplot_figure(_roi_values(rng), out3, tissue="GM", significance=three)
    assert _check_png(out3).shape[0] > _check_png(out).shape[0]
    assert bracket_levels([(3, 5), (3, 4), (4, 5)]) == [3, 1, 2]
    assert bracket_levels([(1, 2), (3, 4)]) == [1, 1]  # apart: one level
    _no_temp(tmp_path)


def test_format_number():
    assert format_number(12.345) == "12.3"
    assert format_number(0.012345) == "0.0123"
    assert format_number(-45.67) == "-45.7"
    assert format_number(1.234e-8) == "1.23e-08"
    assert format_number(float("nan")) == "n/a"
    assert format_number(np.int64(7)) == "7"
    assert format_number(9.99999) == "10.0" and format_number(99.96) == "100"


def test_html_report(tmp_path):
    rng = np.random.default_rng(2)
    figs = tmp_path / "figures"
    f1 = standard_error_figure(_maps(rng), figs / "stderr.png")
    f2 = roi_boxplot_figure(_roi_values(rng), figs / "roi.png", tissue="WM")
    t2 = table2(_summary2())
    t4 = table4({"source vs HARP": {"mean": 12.5, "median": 9.0, "n": 321}})
    out = tmp_path / "report" / "group_report.html"
    write_html_report(
        out,
        title="Harmonization <evaluation>",
        sections={"Data": "Two sites & two sessions.\n\nSecond paragraph."},
        tables={"Table 2: whole brain": t2, "Table 4: fibre preservation": t4},
        figures={"Figure 2: standard error maps": f1, "Figure 3: WM ROIs": f2},
        notes=["<script>alert(1)</script>", BEST_CASE],
        excluded={"sub-01/ses-02": "motion > 3 mm"},
    )
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text and "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "Harmonization &lt;evaluation&gt;" in text and "&amp; two sessions" in text
    assert text.count("data:image/png;base64,") == 2
    assert __version__ in text and "How to read this" in text
    assert "Table 2: whole brain" in text and "Table 4: fibre preservation" in text
    assert text.count("<table>") == 2
    # FA ×10⁻³: 12 -> 12000; MD ×10⁻⁶ mm²/s: 20e-6 -> 20.0 with pct in parentheses.
    assert "12000 ± 2000 (20.0%)" in text and "20.0 ± 3.00 (100%)" in text
    assert "×10⁻⁶ mm²/s" in text and "321" in text
    assert "sub-01/ses-02" in text and "motion &gt; 3 mm" in text
    assert BEST_CASE in text
    _no_temp(out.parent)


def test_html_report_rejects_non_png(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError):
        write_html_report(tmp_path / "r.html", title="t", sections={}, tables={},
                          figures={"bad": bad}, notes=[])  # fmt: skip
    assert not (tmp_path / "r.html").exists()
    _no_temp(tmp_path)


def _three_method_result(tmp_path):
    """A scenario evaluated by :func:`evaluate_shells` with HARP, LinearRISH and ComBat.

    Three subjects on a 12³ grid: FA rises along x (WM beyond the middle), the source
    site adds an offset; HARP removes 60 % of it, LinearRISH 30 %, ComBat 90 %.
    """
    import nibabel as nb

    from bids_harmony.evaluation.scenario import ScenarioResult, evaluate_shells

    rng = np.random.default_rng(5)
    shape, n = (12, 12, 12), 3
    fa = np.broadcast_to(np.linspace(0.1, 0.6, shape[0])[:, None, None], shape)
    truth = {"fa": fa, "md": 0.8e-3 + 0.1e-3 * (0.6 - fa), "gfa": 0.8 * fa}
    offset = {"fa": 0.05, "md": 0.1e-3, "gfa": 0.04}
    noise = {"fa": 0.01, "md": 0.02e-3, "gfa": 0.008}
    kept = {"none": 1.0, "harp": 0.4, "rish": 0.7, "combat": 0.1}
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    source, target = [], []
    for subject in range(n):
        anatomy = {k: v * (1 + 0.02 * subject) for k, v in truth.items()}
        for _ in range(2):
            tgt, src = {"mask": mask}, {"mask": mask}
            for metric, base in anatomy.items():
                tgt[f"b1000/{metric}/none"] = base + rng.normal(0, noise[metric], shape)
                scan = rng.normal(0, noise[metric], shape)
                for method, share in kept.items():
                    src[f"b1000/{metric}/{method}"] = base + share * offset[metric] + scan
            source.append(src)
            target.append(tgt)
    methods = ["harp", "rish", "combat"]
    shells = evaluate_shells(source, target, n, ["b1000"], methods, {})
    template = tmp_path / "template.nii.gz"
    nb.save(nb.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), template)
    return ScenarioResult(stem="src-GE_tgt-Prisma", labels=["b1000"],
                          subjects=["01", "02", "03"], template=template, methods=methods,
                          shells=shells)  # fmt: skip


def test_group_outputs_with_harp_rish_and_combat(tmp_path):
    """ComBat is a column, a box, a verdict method and a head-to-head like the others."""
    import pandas as pd

    from bids_harmony.workflows.group import COMBAT_IN_GROUP
    from bids_harmony.workflows.group_outputs import write_group_outputs

    result = _three_method_result(tmp_path)
    summary = result.shells["b1000"]
    assert set(summary.maps["FA"]) >= {"inter_harp", "inter_rish", "inter_combat"}
    tests = {(a, b) for (_, _, (a, b)) in summary.ttests}
    assert {("inter_combat", "inter_none"), ("inter_harp", "inter_combat"),
            ("inter_rish", "inter_combat"), ("inter_harp", "inter_rish")} <= tests  # fmt: skip
    group = tmp_path / "group"
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "CITATION.md").write_text("# Methods\n\nText.\n")
    html = write_group_outputs(
        group, [result], title="t", sessions=pd.DataFrame(columns=["session", "status"]),
        notes=[COMBAT_IN_GROUP], warning=None, models_dir=tmp_path / "models",
        methods="# M\n\nThe methods.", methods_file=tmp_path / "logs" / "CITATION.md",
    )  # fmt: skip
    key = "src-GE_tgt-Prisma_b1000"
    t2 = pd.read_csv(group / f"{key}_table2.tsv", sep="\t").set_index("metric")
    assert {"inter_combat", "inter_combat_sd", "pct_combat"} <= set(t2.columns)
    fa = t2.loc["FA"]
    # ComBat left 10 % of the site offset, HARP 40 %, LinearRISH 70 %
    assert fa["inter_combat"] < fa["inter_harp"] < fa["inter_rish"] < fa["inter_none"]
    assert fa["pct_combat"] < fa["pct_none"]
    meta = json.loads((group / f"{key}_table2.json").read_text())
    assert "ComBat" in meta["inter_combat"]["Description"] and meta["pct_combat"]["Units"] == "%"
    t3 = pd.read_csv(group / f"{key}_table3.tsv", sep="\t")
    assert t3["inter_combat"].notna().all()
    tt = pd.read_csv(group / f"{key}_ttests.tsv", sep="\t")
    assert "inter_combat vs inter_none" in set(tt["comparison"])
    assert (group / f"{key}_desc-intercombat_stat-stderr_fa.nii.gz").is_file()
    for png in (f"{key}_stderr.png", f"{key}_roi-WM.png", f"{key}_roi-GM.png"):
        _check_png(group / png)
    verdicts = pd.read_csv(group / "verdict.tsv", sep="\t")
    assert list(dict.fromkeys(verdicts["method"])) == ["harp", "rish", "combat"]
    combat = verdicts[verdicts["method"] == "combat"]
    assert len(combat) == 9 and combat["sentence"].str.startswith("ComBat").all()
    assert (combat["change"] < 0).all()
    levels = json.loads((group / "verdict.json").read_text())["method"]["Levels"]
    assert levels["combat"] == "ComBat"
    text = html.read_text(encoding="utf-8")
    assert "<th>ComBat σₑ</th>" in text and "ComBat vs none (inter-scanner)" in text
    verdict_part = text[text.index(">Verdict</h2>") : text.index(">How to read this</h2>")]
    assert "GE → Prisma: ComBat" in verdict_part
    # one head to head per pair of methods
    assert "ComBat was better than HARP in" in verdict_part
    assert "ComBat was better than LinearRISH in" in verdict_part
    assert "HARP was better than LinearRISH in" in verdict_part
    assert "which include these traveling subjects" in text
    assert "desc-combat (ComBat)" in text
