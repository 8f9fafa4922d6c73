"""The group report's verdict: decisions on crafted numbers, verdict.tsv, the report's
first section, the session table and the warning of a group level without any model.

Fast (no pipeline): the figures and the report of these inputs are tested in
tests/test_group_report.py; here only what the verdict adds.
"""

from __future__ import annotations

import doctest
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bids_harmony.config import Config
from bids_harmony.evaluation import evaluated, figures, verdict, wording
from bids_harmony.evaluation.report import write_html_report
from bids_harmony.evaluation.tables import ttests_table
from bids_harmony.evaluation.variability import paired_ttest
from bids_harmony.evaluation.verdict import (
    COLOURS,
    judge,
    method_duels,
    shell_verdicts,
    write_verdict,
)
from bids_harmony.evaluation.verdict_summary import summary_paragraphs
from bids_harmony.workflows.group import method_plan
from bids_harmony.workflows.group_outputs import ScenarioSessions, session_table

STEM = "src-SIGNAPremier_tgt-Prisma_acq-multishell"
N_ROIS = 24


def _shell(rng: np.random.Generator, factors: dict) -> dict:
    """Summaries of one shell whose ROI errors are built from known factors.

    Scan-rescan ≈ 1 (×scale), no harmonization ≈ 1.5, and each method's error is
    ``factors[method][(metric, tissue)]`` times no harmonization (default 1.0, with
    zero-mean ROI noise: no significant change), as :func:`maps.summarize` returns them.
    """
    table2, table3, ttests, roi_errors = {}, {}, {}, {}
    for metric, scale in (("FA", 0.01), ("MD", 1e-5), ("GFA", 0.005)):
        for tissue in ("WM", "GM"):
            sr = scale * rng.gamma(20.0, 1 / 20, N_ROIS)
            none = 1.5 * sr
            errs = {"sr_source": sr, "sr_target": 0.9 * sr, "inter_none": none}
            for method, per_case in factors.items():
                factor = per_case.get((metric, tissue), 1.0)
                # unchanged: ROI noise of mean exactly 0 (t = 0, p = 1), not a chance "better"
                noise = rng.normal(0.0, 0.05 * scale, N_ROIS) if factor == 1.0 else np.zeros(N_ROIS)
                errs[f"inter_{method}"] = none * factor + (noise - noise.mean())
            roi_errors.setdefault(metric, {})[tissue] = errs
            table3.setdefault(metric, {})[tissue] = {
                k: (float(v.mean()), float(v.std())) for k, v in errs.items()
            }
            for a, b in evaluated.comparisons():
                if a in errs and b in errs:
                    ttests[(metric, tissue, (a, b))] = paired_ttest(errs[a], errs[b])
        # whole brain: the mean of the two tissues stands for the mean over voxels
        table2[metric] = {
            k: (float(np.mean([table3[metric][t][k][0] for t in ("WM", "GM")])), 0.0)
            for k in table3[metric]["WM"]
        }
    return {"table2": table2, "table3": table3, "ttests": ttests, "roi_errors": roi_errors}


def _crafted(rng=None) -> dict:
    """HARP: FA in WM 30 % lower, MD in GM 12 % higher; LinearRISH 40 % lower everywhere."""
    rng = rng or np.random.default_rng(7)
    everywhere = {(m, t): 0.6 for m in ("FA", "MD", "GFA") for t in ("WM", "GM")}
    return _shell(rng, {"harp": {("FA", "WM"): 0.7, ("MD", "GM"): 1.12}, "rish": everywhere})


def _by_case(rows) -> dict:
    return {(r.metric, r.tissue, r.method): r for r in rows}


def test_judge_on_crafted_numbers():
    assert judge(-31.0, 0.002) == "better"
    assert judge(12.0, 0.04) == "worse"
    assert judge(12.0, 0.2) == judge(-40.0, 0.06) == "no significant change"
    assert judge(-3.0, 0.3, alpha=0.5) == "better"  # the level is a parameter
    assert judge(5.0, math.nan) == "not tested"
    # A significant test that disagrees with the change in direction is not a verdict.
    assert judge(-10.0, 0.001, mean_difference=+1e-4) == "no significant change"
    assert set(COLOURS) == set(verdict.LABELS)


def test_a_method_that_raises_the_error_is_worse_one_that_lowers_it_better():
    rows = shell_verdicts(scenario=STEM, shell="b1000", **_crafted())
    case = _by_case(rows)
    worse = case[("MD", "GM", "harp")]
    assert worse.label == "worse" and worse.colour == COLOURS["worse"]
    assert worse.change == pytest.approx(12.0, abs=0.5) and worse.pvalue < 0.05
    assert worse.excess_method > worse.excess_none > 0
    assert worse.sentence.startswith("HARP made MD in GM worse") and "12 %" in worse.sentence
    better = case[("FA", "WM", "harp")]
    assert better.label == "better" and better.colour == COLOURS["better"]
    assert better.change == pytest.approx(-30.0, abs=0.5) and better.n_rois == N_ROIS
    assert "reduced the inter-scanner error of FA in WM by 30 %" in better.sentence
    same = case[("GFA", "WM", "harp")]
    assert same.label == "no significant change" and "not significant" in same.sentence
    # Whole brain: change from table 2, test over the ROIs of both tissues.
    brain = case[("FA", "brain", "harp")]
    assert brain.n_rois == 2 * N_ROIS and brain.tissue == "brain"
    assert all(case[(m, t, "rish")].label == "better" for m in ("FA", "MD", "GFA")
               for t in ("WM", "GM", "brain"))  # fmt: skip
    # Order: metric, tissue (WM, GM, whole brain), method (HARP, LinearRISH).
    assert [(r.metric, r.tissue, r.method) for r in rows[:3]] == [
        ("FA", "WM", "harp"), ("FA", "WM", "rish"), ("FA", "GM", "harp")]  # fmt: skip
    assert len(rows) == 3 * 3 * 2


def test_no_method_no_row_and_no_test_not_tested():
    numbers = _crafted()
    only_none = {m: {t: {k: v for k, v in c.items() if k in ("sr_source", "sr_target",
                                                              "inter_none")}
                     for t, c in per.items()} for m, per in numbers["table3"].items()}  # fmt: skip
    assert shell_verdicts(scenario=STEM, shell="b1000", table2={}, table3=only_none,
                          ttests={}) == []  # fmt: skip
    rows = shell_verdicts(scenario=STEM, shell="b1000", table2=numbers["table2"],
                          table3=numbers["table3"], ttests={})  # fmt: skip
    assert {r.label for r in rows} == {"not tested"}


def test_a_significant_test_against_the_change_is_inconclusive():
    """Whole brain: the mean over voxels fell 10 % but the ROI errors rose 10 %."""
    none = 0.01 * np.random.default_rng(0).gamma(20.0, 1 / 20, 30)
    roi = {"FA": {"WM": {"inter_none": none, "inter_harp": 1.1 * none}}}
    table2 = {"FA": {"sr_source": 0.005, "sr_target": 0.004, "inter_none": 0.010,
                     "inter_harp": 0.009}}  # fmt: skip
    (row,) = shell_verdicts(scenario=STEM, shell="b1000", table2=table2, table3={},
                            ttests={}, roi_errors=roi)  # fmt: skip
    assert row.tissue == "brain" and row.change == pytest.approx(-10.0) and row.pvalue < 0.05
    assert row.label == "no significant change" and "points the other way" in row.sentence
    assert row.sigma_scan_rescan == 0.005 and row.excess_none == pytest.approx(100.0)


def test_summary_says_what_worked_what_did_not_and_which_method_won():
    numbers = _crafted()
    rows = shell_verdicts(scenario=STEM, shell="b1000", **numbers)
    duel = method_duels(**numbers)
    assert duel["n"] == 9 and duel["rish"] == 9 and duel["rish_significant"] == 9
    text = "\n".join(summary_paragraphs(rows, {(STEM, "b1000"): duel}))
    assert "SIGNA Premier → Prisma, multi-shell protocol: HARP had mixed results" in text
    assert "It reduced the inter-scanner error of FA in WM by 30 %" in text
    assert re.search(r"It made MD in GM worse by 1[12] % \(p [=<] 0\.0\d*\)", text), text
    assert "LinearRISH brought inter-scanner variability down in every comparison" in text
    assert ("b = 1000 s/mm²: LinearRISH was better than HARP in 9 of 9 comparisons"
            in text)  # fmt: skip
    # A method that only made things worse says so (the whole brain follows its WM).
    bad = _shell(np.random.default_rng(3), {"harp": {("FA", "WM"): 1.3}})
    only_worse = summary_paragraphs(shell_verdicts(scenario=STEM, shell="b2000", **bad))
    assert only_worse == [
        f"{wording.scenario_title(STEM)}: HARP did not help: it made 2 of 9 comparisons "
        "worse and none better (no significant change in 7). It made FA in WM worse by 30 % "
        "(p < 0.001); FA in the whole "
        "brain worse by 15 % (p < 0.001)."
    ]


def test_verdict_tsv_and_sidecar(tmp_path):
    rows = shell_verdicts(scenario=STEM, shell="b1000", **_crafted())
    rows[0] = verdict.Verdict(**{**rows[0].__dict__, "pvalue": math.nan})
    out = write_verdict(rows, tmp_path / "group" / "verdict.tsv")
    df = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert len(df) == len(rows) and df.loc[0, "pvalue"] == "n/a"
    assert {"scenario", "shell", "metric", "units", "tissue", "method", "change", "pvalue",
            "label", "colour", "sentence"} <= set(df.columns)  # fmt: skip
    assert "worse" in set(df["label"]) and "better" in set(df["label"])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert set(df.columns) <= set(meta) and meta["Alpha"] == verdict.ALPHA
    assert meta["change"]["Units"] == "%" and "worse" in meta["label"]["Levels"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def _sessions() -> pd.DataFrame:
    selected = ScenarioSessions(STEM, [
        ("sub-01 ses-GE1", "01", "SIGNAPremier", "source"),
        ("sub-01 ses-Prisma1", "01", "Prisma", "target"),
        ("sub-03 ses-GE2", "03", "SIGNAPremier", "source"),
        ("sub-03 ses-Prisma1", "03", "Prisma", "target"),
    ])  # fmt: skip
    excluded = [
        ("sub-03 ses-GE2", "FA correlation 0.8 -> 0.1"),
        ("sub-04 acq-multishell", "1 session(s) at SIGNAPremier, 2 at Prisma"),
    ]
    return session_table([selected], {STEM: ["01"]}, excluded)


def test_session_table_says_who_was_left_out_and_why():
    df = _sessions().set_index("session")
    assert df.loc["sub-01 ses-GE1", "status"] == "included"
    assert df.loc["sub-01 ses-GE1", "site"] == "SIGNA Premier"
    assert df.loc["sub-03 ses-GE2", "reason"] == "FA correlation 0.8 -> 0.1"
    assert "another session of sub-03" in df.loc["sub-03 ses-Prisma1", "reason"]
    assert df.loc["sub-04 acq-multishell", "status"] == "excluded"
    assert (
        df.loc["sub-01 ses-Prisma1", "scenario"] == "SIGNA Premier → Prisma, multi-shell protocol"
    )


def test_report_opens_with_the_verdict(tmp_path):
    numbers = _crafted()
    rows = shell_verdicts(scenario=STEM, shell="b1000", **numbers)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "CITATION.md").write_text("# Methods\n\nText.\n")
    out = tmp_path / "group" / "report.html"
    tests = ttests_table(numbers["ttests"])
    write_html_report(
        out, title="t", verdicts=rows, duels={(STEM, "b1000"): method_duels(**numbers)},
        warning="No harmonization model has outputs <here>.", sessions=_sessions(),
        tables={"T-tests": tests}, methods="# M\n\nThe methods.",
        methods_file=tmp_path / "logs" / "CITATION.md",
    )  # fmt: skip
    text = out.read_text(encoding="utf-8")
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", text)
    assert headings[0] == "Verdict" and headings[1] == "How to read this"
    assert text.index('class="warning"') < text.index(">Verdict</h2>")
    assert "No harmonization model has outputs &lt;here&gt;." in text
    verdict_part = text[text.index(">Verdict</h2>") : text.index(">How to read this</h2>")]
    assert "HARP had mixed results" in verdict_part
    assert "LinearRISH was better than HARP in 9 of 9 comparisons" in verdict_part
    assert (
        "<caption>SIGNA Premier → Prisma, multi-shell protocol, b = 1000 s/mm²</caption>"
        in verdict_part
    )
    # The MD/GM/HARP row: red, labelled "worse"; FA/WM/HARP: green, "better".
    cells = re.findall(r'<td class="label" style="background:(#\w+)" title="([^"]*)">([^<]+)</td>',
                       verdict_part)  # fmt: skip
    assert len(cells) == len(rows)
    by_sentence = {title.split(" by ")[0]: (colour, label) for colour, title, label in cells}
    assert by_sentence["HARP made MD in GM worse: the inter-scanner error rose"] == (
        COLOURS["worse"], "worse")  # fmt: skip
    assert by_sentence["HARP reduced the inter-scanner error of FA in WM"] == (
        COLOURS["better"], "better")  # fmt: skip
    # Readable t-test rows, the session table, the link to the methods text.
    assert "HARP vs none (inter-scanner)" in text and "inter_harp vs inter_none" not in text
    assert "<h2>Sessions</h2>" in text and "FA correlation 0.8 -&gt; 0.1" in text
    assert "Sessions (2 included, 3 excluded)" in text
    assert '<a href="../logs/CITATION.md">' in text and "Excluded sessions" not in text


def test_report_without_any_method_says_so(tmp_path):
    out = write_html_report(tmp_path / "r.html", title="t", verdicts=[])
    text = out.read_text(encoding="utf-8")
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", text)[0] == "Verdict"
    assert "No harmonization method was evaluated" in text


def _config(**kwargs) -> Config:
    return Config(bids_dir="/data/bids", output_dir="/data/out", analysis_level="group",
                  work_dir="/tmp/w", **kwargs)  # fmt: skip


def test_group_without_any_model_warns_what_it_will_and_will_not_compare():
    fitted_here = SimpleNamespace(stem=STEM, methods=("rish",), rish_fit=True)
    text = method_plan(_config(), [fitted_here])
    assert "LinearRISH, fitted here on the traveling subjects" in text
    assert "will NOT evaluate HARP" in text
    assert "'bids-harmony /data/bids /data/out train'" in text and "participant'" in text
    nothing = SimpleNamespace(stem=STEM, methods=(), rish_fit=False)
    assert "without harmonization only" in method_plan(_config(methods=("harp",)), [nothing])
    # Any method with outputs: no warning; HARP left out on purpose: no warning.
    harp = SimpleNamespace(stem=STEM, methods=("harp", "rish"), rish_fit=True)
    trained_rish = SimpleNamespace(stem=STEM, methods=("rish",), rish_fit=False)
    assert method_plan(_config(), [harp]) is None
    assert method_plan(_config(methods=("rish",)), [fitted_here]) is None
    # HARP missing for one scenario only: named.
    other = SimpleNamespace(stem="src-GE_tgt-Prisma", methods=("rish",), rish_fit=True)
    assert "No HARP outputs for GE → Prisma" in method_plan(_config(), [harp, other])
    assert method_plan(_config(), [trained_rish]).startswith("No HARP outputs for SIGNA")


def test_titles_and_test_names_in_words():
    assert wording.scenario_title(f"{STEM}", "b1000") == (
        "SIGNA Premier → Prisma, multi-shell protocol, b = 1000 s/mm²")  # fmt: skip
    assert (
        wording.comparison_words("inter_harp vs inter_rish") == "HARP vs LinearRISH (inter-scanner)"
    )
    assert wording.comparison_words("sr_source vs inter_none").startswith("scan-rescan")
    assert wording.scenario_title("not a stem") == "not a stem"


def _crafted_three(rng=None) -> dict:
    """As :func:`_crafted`, plus ComBat: 50 % lower everywhere but GFA in GM (unchanged)."""
    rng = rng or np.random.default_rng(7)
    everywhere = {(m, t): 0.6 for m in ("FA", "MD", "GFA") for t in ("WM", "GM")}
    combat = {**{case: 0.5 for case in everywhere}, ("GFA", "GM"): 1.0}
    return _shell(rng, {"harp": {("FA", "WM"): 0.7, ("MD", "GM"): 1.12}, "rish": everywhere,
                        "combat": combat})  # fmt: skip


def test_combat_is_judged_and_compared_like_the_other_methods(tmp_path):
    numbers = _crafted_three()
    rows = shell_verdicts(scenario=STEM, shell="b1000", **numbers)
    assert len(rows) == 3 * 3 * 3
    assert [r.method for r in rows[:3]] == ["harp", "rish", "combat"]  # registry order
    case = _by_case(rows)
    assert case[("FA", "WM", "combat")].label == "better"
    assert case[("FA", "WM", "combat")].sentence.startswith("ComBat reduced the inter-scanner")
    assert case[("GFA", "GM", "combat")].label == "no significant change"
    duels = {(STEM, "b1000", a, b): method_duels(**numbers, methods=(a, b))
             for a, b in (("harp", "rish"), ("harp", "combat"), ("rish", "combat"))}  # fmt: skip
    # ComBat is lower than LinearRISH but in GFA in GM and the whole brain (GM unchanged)
    assert duels[(STEM, "b1000", "rish", "combat")]["combat"] == 7
    assert verdict.duel_methods(duels[(STEM, "b1000", "harp", "combat")]) == ("harp", "combat")
    text = "\n".join(summary_paragraphs(rows, duels))
    assert "SIGNA Premier → Prisma, multi-shell protocol: ComBat helped in 8 of 9" in text
    assert "LinearRISH was better than HARP in 9 of 9 comparisons" in text
    assert "b = 1000 s/mm²: ComBat was better than LinearRISH in 7 of 9 comparisons" in text
    # The report: ComBat rows in the verdict table, its readable t-tests.
    out = write_html_report(tmp_path / "r.html", title="t", verdicts=rows, duels=duels,
                            tables={"T-tests": ttests_table(numbers["ttests"])})  # fmt: skip
    html_text = out.read_text(encoding="utf-8")
    assert html_text.count("<td>ComBat</td>") == 9
    assert "HARP vs ComBat (inter-scanner)" in html_text
    assert "LinearRISH vs ComBat (inter-scanner)" in html_text
    # verdict.tsv names ComBat among the methods
    tsv = write_verdict(rows, tmp_path / "verdict.tsv")
    meta = json.loads(tsv.with_suffix(".json").read_text())
    assert meta["method"]["Levels"] == {"harp": "HARP", "rish": "LinearRISH", "combat": "ComBat"}


def test_one_registry_names_colours_and_orders_the_methods():
    from bids_harmony.evaluation import maps, tables

    names = [m.name for m in evaluated.EVALUATED_METHODS]
    assert names == ["harp", "rish", "combat"] == list(verdict.METHODS)
    assert wording.METHOD_NAMES["combat"] == "ComBat"
    assert (
        wording.comparison_words("inter_combat vs inter_none") == "ComBat vs none (inter-scanner)"
    )
    assert [k for k, _ in tables.CONDITIONS][3:] == ["inter_harp", "inter_rish", "inter_combat"]
    assert tables.PCT_COLUMNS["inter_combat"] == "pct_combat"
    assert figures.CONDITION_COLORS["inter_combat"] == evaluated.by_name("combat").colour
    assert len(set(figures.CONDITION_COLORS.values())) == len(figures.CONDITION_COLORS)
    assert ("inter_combat", "inter_none") in maps.COMPARISONS
    assert [m.name for m in evaluated.EVALUATED_METHODS if m.fibres] == ["harp"]
    with pytest.raises(KeyError, match="not an evaluated method"):
        evaluated.by_name("mispel")


@pytest.mark.parametrize("module", [wording, verdict, figures, evaluated])
def test_doctests(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
