"""What the ``group`` level writes once its workflow has run: ``OUT/group/``.

Per scenario and shell: the standard-error maps (NIfTI), tables 2-3 and the
t-tests (TSV + JSON), the figures; for the whole level: the fibre table, the
verdict (``verdict.tsv`` + JSON, :mod:`bids_harmony.evaluation.verdict`), the
session table (``sessions.tsv`` + JSON) and the self-contained ``report.html``.
Everything is written atomically, in this process, from the scenarios' results.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from bids_harmony.evaluation.scenario import ScenarioResult

LOGGER = logging.getLogger(__name__)

__all__ = ["ScenarioSessions", "session_table", "write_group_outputs"]

_SESSIONS_DICTIONARY = {
    "Description": "Every session the group level considered: evaluated or not, and why.",
    "scenario": {"Description": "Source -> target site, protocol (empty: not assigned to one)."},
    "session": {"Description": "Participant and session labels."},
    "site": {"Description": "Site of the session."},
    "role": {"Description": "source or target site of the scenario."},
    "status": {"Description": "included or excluded."},
    "reason": {"Description": "Why the session was excluded (empty when included)."},
}


@dataclass(frozen=True)
class ScenarioSessions:
    """The sessions one scenario selected: ``(label, subject, site, role)`` each."""

    stem: str
    sessions: list[tuple[str, str, str, str]]


def session_table(
    scenarios: Sequence[ScenarioSessions],
    kept: Mapping[str, Sequence[str]],
    excluded: Sequence[Sequence[str]],
) -> pd.DataFrame:
    """Every session with its status (included or excluded) and why.

    Parameters
    ----------
    scenarios : sequence of ScenarioSessions
        The sessions each scenario selected.
    kept : mapping
        Scenario stem -> the subjects evaluated (all four sessions registered);
        a scenario missing here evaluated nobody.
    excluded : sequence of (who, why)
        Sessions left out at registration (``who``: a session label) and
        subjects left out at selection (``who``: ``sub-X [acq-Y]``); those not
        matching a selected session become rows of their own.

    Returns
    -------
    DataFrame
        ``scenario`` (readable title), ``session``, ``site``, ``role``,
        ``status``, ``reason``.
    """
    from bids_harmony.evaluation.wording import scenario_title, site_words

    why = {str(item[0]): str(item[1]) if len(item) > 1 else "" for item in excluded}
    rows, matched = [], set()
    for scen in scenarios:
        evaluated = set(kept.get(scen.stem, ()))
        for label, subject, site, role in scen.sessions:
            if label in why:
                status, reason = "excluded", why[label]
                matched.add(label)
            elif subject in evaluated:
                status, reason = "included", ""
            else:
                status = "excluded"
                reason = (
                    f"another session of sub-{subject} was excluded (all four are needed)"
                    if kept.get(scen.stem)
                    else "no subject was left to evaluate"
                )
            rows.append({"scenario": scenario_title(scen.stem), "session": label,
                         "site": site_words(site), "role": role, "status": status,
                         "reason": reason})  # fmt: skip
    rows += [{"scenario": "", "session": who, "site": "", "role": "", "status": "excluded",
              "reason": reason} for who, reason in why.items() if who not in matched]  # fmt: skip
    return pd.DataFrame(rows, columns=["scenario", "session", "site", "role", "status", "reason"])


def _write_maps(group_dir: Path, stem: str, maps, template: Path) -> None:
    import nibabel as nb

    from bids_harmony.bids.derivatives import group_map_name
    from bids_harmony.bids.io import save_nifti

    affine = nb.load(template).affine
    for metric, conditions in maps.items():
        for cond, array in conditions.items():
            name = group_map_name(stem, cond, metric)
            save_nifti(nb.Nifti1Image(array.astype(np.float32), affine), group_dir / name)


def _by_tissue(roi_errors) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for metric, per_tissue in roi_errors.items():
        for tissue, conditions in per_tissue.items():
            out.setdefault(tissue, {})[metric] = conditions
    return out


_TABLE_CAPTIONS = {
    "table2": "whole brain (CSF excluded), mean σₑ over voxels",
    "table3": "WM and GM, mean ± SD of the ROI σₑ",
    "ttests": "paired t-tests across ROIs",
}


def write_group_outputs(
    group_dir: Path,
    results: Sequence[ScenarioResult],
    *,
    title: str,
    sessions: pd.DataFrame,
    notes: Sequence[str],
    warning: str | None,
    models_dir: Path,
    methods: str,
    methods_file: Path,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
    extra_figures: Mapping[str, Path] | None = None,
) -> Path:
    """Write maps, tables, figures, the verdict, the session table and the report.

    Parameters
    ----------
    group_dir : Path
        ``OUT/group``.
    results : sequence of ScenarioResult
        The evaluated scenarios.
    title : str
        The report's title.
    sessions : DataFrame
        :func:`session_table`.
    notes : sequence of str
        The report's notes.
    warning : str or None
        Shown at the top of the report (what could not be compared).
    models_dir, methods_file : Path
        ``OUT/models`` (training reports linked) and ``OUT/logs/CITATION.md``.
    methods : str
        The methods text (Markdown).
    extra_tables, extra_figures : mapping, optional
        Tables and figures of other evaluations (ComBat's cohort checks), appended.

    Returns
    -------
    Path
        The report.
    """
    from bids_harmony.evaluation import report, tables
    from bids_harmony.evaluation import verdict as vd
    from bids_harmony.evaluation.evaluated import METHODS
    from bids_harmony.evaluation.verdict_summary import summary_paragraphs
    from bids_harmony.evaluation.wording import scenario_title

    figures, table_frames, fibre_rows = {}, {}, {}
    verdicts: list[vd.Verdict] = []
    duels: dict[tuple[str, ...], dict[str, int]] = {}
    for result in results:
        for label, summary in result.shells.items():
            key, heading = f"{result.stem}_{label}", scenario_title(result.stem, label)
            numbers = {"table2": summary.table2, "table3": summary.table3,
                       "ttests": summary.ttests, "roi_errors": summary.roi_errors}  # fmt: skip
            verdicts += vd.shell_verdicts(scenario=result.stem, shell=label, **numbers)
            present = [m for m in METHODS if m in result.methods]
            for pair in combinations(present, 2):  # head to head of every two methods
                duels[(result.stem, label, *pair)] = vd.method_duels(**numbers, methods=pair)
            _write_maps(group_dir, key, summary.maps, result.template)
            for name, frame in (
                ("table2", tables.table2(summary.table2)),
                ("table3", tables.table3(summary.table3)),
                ("ttests", tables.ttests_table(summary.ttests)),
            ):
                tables.write_table(frame, group_dir / f"{key}_{name}.tsv", {})
                table_frames[f"{heading}: {_TABLE_CAPTIONS[name]}"] = frame
            if summary.fibres is not None:
                fibre_rows[key] = summary.fibres
            figures[f"{heading}: standard-error maps"] = report.standard_error_figure(
                summary.maps, group_dir / f"{key}_stderr.png"
            )
            for tissue, roi_values in _by_tissue(summary.roi_errors).items():
                stars = {
                    (metric, a, b): test.pvalue
                    for (metric, t, (a, b)), test in summary.ttests.items()
                    if t == tissue
                }
                figures[f"{heading}: {tissue} ROIs"] = report.roi_boxplot_figure(
                    roi_values, group_dir / f"{key}_roi-{tissue}.png", tissue=tissue,
                    significance=stars,
                )  # fmt: skip
    if fibre_rows:
        frame = tables.table4(fibre_rows)
        tables.write_table(frame, group_dir / "table4_fibres.tsv", {})
        titles = {f"{r.stem}_{label}": scenario_title(r.stem, label)
                  for r in results for label in r.shells}  # fmt: skip
        shown = frame.assign(scenario=[titles.get(k, k) for k in frame["scenario"]])
        table_frames["Fibre orientation: source vs HARP (WM)"] = shown
    table_frames.update(extra_tables or {})
    figures.update(extra_figures or {})
    vd.write_verdict(verdicts, group_dir / "verdict.tsv")
    tables.write_table(sessions, group_dir / "sessions.tsv", _SESSIONS_DICTIONARY)
    for paragraph in summary_paragraphs(verdicts, duels):
        LOGGER.info("Verdict: %s", paragraph)
    return report.write_html_report(
        group_dir / "report.html",
        title=title,
        tables=table_frames,
        figures=figures,
        notes=list(dict.fromkeys(notes)),
        models_dir=models_dir,
        methods=methods,
        verdicts=verdicts,
        duels=duels,
        warning=warning,
        sessions=sessions,
        methods_file=methods_file,
    )
