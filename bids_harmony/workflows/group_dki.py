"""The group level's DKI evaluation (issue 15, part 5; Tong et al. 2020 §2.3).

When every traveling-subject session of a scenario has its 8 participant-level DKI
maps (``model-dki_param-<x>``), :func:`add_dki_nodes` asks the scenario's
:class:`~bids_harmony.interfaces.group_level.WarpMaps` nodes to warp them into the
template too, and adds an :class:`~bids_harmony.interfaces.group_level.EvaluateDki`
node: WM inter-scanner CV, NRMSE-to-reference per ROI and scan-rescan NRMSE
(:mod:`bids_harmony.evaluation.dki`), *before* (raw maps at both sites) and, when
every source session has ``desc-dkicnn`` maps, *after* (``desc-dkicnn`` for the
source sessions, raw for the reference sessions).  LinearRISH (DKI refitted on its
rebuilt DWI) and ComBat (the DKI maps as features) on the same sessions are compared
beside it when every source session has their ``desc-rish`` / ``desc-combat`` DKI maps
(or LinearRISH is fitted here, :func:`other_methods`), as in the paper's §2.3.4: the
same statistics with the reference sessions raw, columns ``after_rish`` /
``after_combat``.  :func:`dki_report_parts` writes ``group/<scenario>_dki.tsv``
(+ ``.json``) and returns the report's tables, figures and notes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bids_harmony.bids.derivatives import DKI_PARAMS

if TYPE_CHECKING:
    import pandas as pd

LOGGER = logging.getLogger(__name__)
#: The ``desc`` of the DKI CNN's maps (:mod:`bids_harmony.interfaces.dki_cnn`).
DKI_METHOD = "dkicnn"
KURTOSIS = ("mk", "ak", "rk", "kfa")
#: The other methods compared on the DKI maps (``desc-<name>``), in the table's order.
OTHER_METHODS = ("rish", "combat")
NOTE = (
    "DKI (Tong et al. 2020 §2.3): 'before' is the raw DKI fit at both sites; 'after' is the "
    "DKI CNN's desc-dkicnn maps for the source sessions and the raw fit for the reference "
    "sessions (after_all: the reference sessions through the reference site's own network "
    "too, when it has maps). CV = SD/mean over a subject's 4 sessions per voxel (sample SD), "
    "mean over WM "
    "voxels (reference DKI FA >= 0.3, MD <= 1.5 µm²/ms), then over subjects; NRMSE = "
    "RMS difference / reference mean per ROI (source session j vs reference session j; "
    "scan-rescan: session 2 vs 1), mean over the tissue's ROIs. Subjects the network was "
    "trained on are in-sample (column in_training)."
)
#: The note of the comparison, with the methods' display names.
COMPARISON_NOTE = (
    "DKI, methods compared (Tong et al. 2020 §2.3.4, Fig. 9): {methods} on the same "
    "source sessions, reference sessions raw (after_<method> columns). LinearRISH "
    "harmonizes each shell's SH coefficients and DKI is refitted on the rebuilt DWI; "
    "ComBat harmonizes the eight DKI maps in the template space and the correction is "
    "warped back. ComBat and LinearRISH were fitted on these traveling subjects too (as in "
    "the paper): their numbers are in-sample, like the DKI CNN's on its training subjects."
)


def dki_plan(source: Sequence, target: Sequence) -> tuple[bool, str, str]:
    """Whether a scenario's sessions have DKI maps, and the methods evaluated after.

    ``source``/``target``: the scenario's
    :class:`~bids_harmony.interfaces.group_level.SessionMaps`.  Returns
    ``(False, "", "")`` unless every session has its 8 raw DKI maps; then the
    source sessions' method is :data:`DKI_METHOD` when every source session has its
    8 ``desc-dkicnn`` maps, else ``""`` (before only), and the reference sessions'
    likewise (the reference site's own network; used for ``after_all`` only).
    """

    def complete(session, method=None) -> bool:
        outputs = next(iter(session.shells.values())).outputs
        return len(outputs.dki_maps(method)) == len(DKI_PARAMS)

    if not source or not all(complete(s) for s in [*source, *target]):
        return False, "", ""
    method = DKI_METHOD if all(complete(s, DKI_METHOD) for s in source) else ""
    target_method = DKI_METHOD if method and all(complete(s, DKI_METHOD) for s in target) else ""
    return True, method, target_method


def other_methods(scen) -> list[str]:
    """The methods of :data:`OTHER_METHODS` compared on the scenario's DKI maps.

    Those whose ``desc-<method>`` DKI maps every source session has, and LinearRISH
    when the group level fits it (its :class:`~bids_harmony.interfaces.group_level.ApplyRish`
    nodes write them before the sessions are warped).
    """

    def complete(session, method) -> bool:
        outputs = next(iter(session.shells.values())).outputs
        return len(outputs.dki_maps(method)) == len(DKI_PARAMS)

    return [m for m in OTHER_METHODS
            if (m == "rish" and getattr(scen, "rish_fit", False))
            or all(complete(s, m) for s in scen.source)]  # fmt: skip


def add_dki_nodes(workflow, scen, warps: Sequence, transforms, warped) -> bool:
    """Warp the DKI maps and evaluate them in the scenario's workflow (when it has them).

    ``warps``: the WarpMaps nodes in :attr:`Scenario.sessions` order; ``transforms``
    and ``warped``: the scenario's Merge nodes.  Returns whether nodes were added.
    """
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.group_level import EvaluateDki

    has_dki, method, target_method = dki_plan(scen.source, scen.target)
    if not has_dki:
        return False
    others = other_methods(scen)
    for k, warp in enumerate(warps):
        own = [method, *others] if k < len(scen.source) else [target_method]
        warp.inputs.dki = True
        warp.inputs.dki_methods = [m for m in own if m]
    node = pe.Node(EvaluateDki(sessions_source=scen.source, sessions_target=scen.target,
                               method=method, target_method=target_method, methods=others),
                   name="dki_evaluate")  # fmt: skip
    workflow.connect([(transforms, node, [("out", "transforms")]),
                      (warped, node, [("out", "warped")])])  # fmt: skip
    return True


def dki_results(graph, scenarios: Mapping) -> dict[str, list[dict]]:
    """Scenario stem -> EvaluateDki rows, from the executed graph."""
    out = {}
    for node in graph.nodes():
        if node.name != "dki_evaluate" or "." not in node.fullname:
            continue
        scen = scenarios.get(node.fullname.split(".")[-2])
        rows = node.result.outputs.rows if scen is not None else None
        if rows:
            out[scen.stem] = list(rows)
    return out


def held_out(models_dir: Path, stem: str) -> list[str] | None:
    """Subjects (without ``sub-``) the scenario's DKI CNN held out (None: no card)."""
    card = models_dir / f"{DKI_METHOD}_{stem}.json"
    try:
        subjects = json.loads(card.read_text())["held_out_subjects"]
    except (OSError, ValueError, KeyError):
        return None
    return [s.removeprefix("sub-") for s in subjects]


def dki_frame(rows: Sequence[Mapping], held: Sequence[str] | None) -> pd.DataFrame:
    """The rows as a table with ``in_training`` (per subject; n/a for means or no card)."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    training = [
        pd.NA if held is None or s == "mean" else s not in held for s in frame["subject"]
    ]
    frame.insert(frame.columns.get_loc("subject") + 1, "in_training",
                 pd.array(training, dtype="boolean"))  # fmt: skip
    return frame


def dki_report_parts(
    results: Mapping[str, list[dict]], group_dir: Path, models_dir: Path, titles: Mapping
) -> tuple[dict, dict, list[str]]:
    """Write ``<scenario>_dki.tsv`` per scenario; the report's tables, figures and notes."""
    import pandas as pd

    from bids_harmony.evaluation.dki import method_column, reduction_column
    from bids_harmony.evaluation.evaluated import display_name
    from bids_harmony.evaluation.tables import write_table

    tables, figures, notes, compared, cnn = {}, {}, [], set(), False
    for stem, rows in results.items():
        held = held_out(models_dir, stem)
        frame = dki_frame(rows, held)
        others = [m for m in OTHER_METHODS if method_column(m) in frame.columns]
        compared.update(others)
        cnn = cnn or bool(frame["after"].notna().any())
        write_table(frame, group_dir / f"{stem}_dki.tsv", dictionary(others))
        wm = frame[frame["region"] == "WM"]
        shown = [wm[wm["subject"] == "mean"].assign(subjects="all")]
        values = {"after": "reduction_percent", "after_all": "reduction_all_percent",
                  **{method_column(m): reduction_column(m) for m in others}}  # fmt: skip
        if held:
            sub = wm[wm["subject"].isin(held)]
            cols = ["before", *values]
            mean = sub.groupby(["param", "measure"], sort=False)[cols].mean().reset_index()
            shown.append(mean.assign(subjects="held out: " + ", ".join(held), region="WM"))
        table = pd.concat(shown, ignore_index=True)
        columns = ["subjects", "param", "measure", "before"]
        for col, reduction in values.items():
            if table[col].isna().all():
                continue
            table[reduction] = 100 * (table["before"] - table[col]) / table["before"]
            columns += [col, reduction]
        table = table[columns]
        title = titles.get(stem, stem)
        tables[f"DKI, WM: {title}"] = table
        try:
            figures[f"DKI: WM inter-scanner CV per method, {title}"] = cv_figure(
                wm[wm["subject"] == "mean"], group_dir / "figures" / f"{stem}_dki_cv.png")
        except Exception as err:  # noqa: BLE001 - a figure never fails the level
            LOGGER.warning("DKI figure of %s not drawn: %s", stem, err)
    if results:
        notes.append(NOTE)
    if compared:
        names = [*(["the DKI CNN"] if cnn else []),
                 *(display_name(m) for m in OTHER_METHODS if m in compared)]
        notes.append(COMPARISON_NOTE.format(methods=", ".join(names)))
    return tables, figures, notes


def cv_figure(wm: pd.DataFrame, out_png: Path) -> Path:
    """Bars of the mean WM inter-scanner CV per DKI parameter, one per method side by
    side (raw, DKI CNN, LinearRISH, ComBat: those with values), as the paper's Fig. 9."""
    import numpy as np
    from matplotlib.figure import Figure

    from bids_harmony.evaluation.dki import method_column
    from bids_harmony.evaluation.evaluated import by_name, display_name

    cv = wm[wm["measure"] == "cv_inter"].set_index("param")
    params = [p for p in DKI_PARAMS if p in cv.index]
    bars = [("before", "raw", "#7f7f7f"), ("after", "DKI CNN", "#1f77b4")]
    bars += [(method_column(m), display_name(m), by_name(m).colour) for m in OTHER_METHODS]
    bars = [b for b in bars if b[0] in cv.columns and cv[b[0]].notna().any()]
    fig = Figure(figsize=(6.0 + 0.6 * max(0, len(bars) - 2), 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(params))
    width = 0.8 / len(bars)
    for k, (col, label, colour) in enumerate(bars):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, [cv.loc[p, col] for p in params],
               width=width, label=label, color=colour)  # fmt: skip
    ax.set_xticks(x, [p.upper() for p in params])
    ax.set_ylabel("WM inter-scanner CV")
    ax.legend(fontsize=8)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    return out_png


def dictionary(others: Sequence[str] = ()) -> dict[str, object]:
    """The table's data dictionary, with the columns of the ``others`` methods compared."""
    from bids_harmony.evaluation.dki import method_column, reduction_column
    from bids_harmony.evaluation.evaluated import display_name

    out = dict(DICTIONARY)
    for m in others:
        how = {"rish": "DKI refitted on the DWI rebuilt by LinearRISH (desc-rish)",
               "combat": "the DKI maps harmonized by ComBat (desc-combat)"}.get(m, f"desc-{m}")
        out[method_column(m)] = {
            "Description": f"Value with {display_name(m)}: {how} for the source sessions, "
            "raw fits for the reference sessions (fitted on these traveling subjects too)."
        }
        out[reduction_column(m)] = {
            "Description": f"100 (before - {method_column(m)}) / before.", "Units": "%"
        }
    return out


DICTIONARY: dict[str, object] = {
    "Description": "DKI maps of the traveling subjects in the scenario's template space: "
    "inter-scanner CV and NRMSEs before and after the DKI CNN (Tong et al. 2020 §2.3), and "
    "after LinearRISH / ComBat when their DKI maps exist (after_<method>, §2.3.4). "
    "Before: raw DKI fits at both sites. After: desc-dkicnn maps for the source sessions, "
    "raw fits for the reference sessions.",
    "param": {"Description": "DKI map: md ad rd fa mk ak rk kfa."},
    "measure": {
        "Description": "cv_inter: voxel-wise SD/mean (sample SD) over a subject's 4 sessions, "
        "mean over the region's voxels; nrmse_ref: sqrt(mean((source - reference)^2)) / "
        "mean(reference) per ROI, source session j vs reference session j, mean of the 2 "
        "pairs; nrmse_sr_source / nrmse_sr_target: the same, session 2 vs session 1 at one "
        "site (target: raw before and after)."
    },
    "region": {
        "Description": "WM / GM: the tissue class (reference DKI FA >= 0.3 / below, CSF "
        "excluded); for NRMSEs the mean over its ROIs. roi-<label>: one ROI (tissue * 1000 + "
        "block of a 3 x 3 x 3 grid)."
    },
    "subject": {"Description": "A subject label, or 'mean' (mean over subjects)."},
    "in_training": {
        "Description": "Whether the DKI CNN was trained on this subject (from the model "
        "card); n/a for means or without a card."
    },
    "before": {"Description": "Value without harmonization."},
    "after": {"Description": "Value with the DKI CNN (n/a: no desc-dkicnn maps)."},
    "reduction_percent": {
        "Description": "100 (before - after) / before.", "Units": "%"
    },
    "after_all": {
        "Description": "Value with both sites' sessions through their networks: "
        "desc-dkicnn for the source sessions and the reference site's own network (trained "
        "on its rescans, as in Tong et al.) for the reference sessions (n/a: no such maps)."
    },
    "reduction_all_percent": {
        "Description": "100 (before - after_all) / before.", "Units": "%"
    },
}
