"""The verdict of the group level: did each harmonization method work, in plain words.

Per scenario, shell, metric (FA, MD, GFA), tissue (WM, GM, whole brain) and
method, the inter-scanner standard error after harmonization, σ_method, is
compared with the one without harmonization, σ_none, and with the scan-rescan
floor σ_sr = max(σ_sr,source, σ_sr,target) (HARP Eq. 2; Jeong et al. §2.6):

- *change* = 100 (σ_method − σ_none) / σ_none, in %: negative when the method
  brought inter-scanner variability down, toward scan-rescan;
- *excess* = 100 (σ − σ_sr) / σ_sr, in %: how far above scan-rescan, before and
  after (the tables' ``pct_*`` columns);
- *significance*: the paired t-test across ROIs of method vs none the tables
  already hold (WM, GM); for the whole brain, the same test over the ROIs of both
  tissues together (the whole-brain σ itself is a mean over voxels, one number).

The label (:func:`judge`) is "better" for a significant decrease (p < ``alpha``),
"worse" for a significant increase, "no significant change" otherwise, and
"not tested" where no test could be run (fewer than two ROIs).  Numbers in,
rows and sentences out (the paragraphs over many rows:
:mod:`bids_harmony.evaluation.verdict_summary`); :func:`write_verdict` is the only
function that writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_harmony.evaluation.evaluated import EVALUATED_METHODS, condition
from bids_harmony.evaluation.tables import METRIC_UNITS, METRICS, TISSUES, write_table
from bids_harmony.evaluation.variability import PairedTest, paired_ttest, percentage_difference
from bids_harmony.evaluation.wording import (
    METHOD_NAMES,
    TISSUE_WORDS,
)

__all__ = [
    "ALPHA",
    "COLOURS",
    "LABELS",
    "Verdict",
    "duel_methods",
    "format_p",
    "judge",
    "method_duels",
    "percent_words",
    "shell_verdicts",
    "verdict_frame",
    "write_verdict",
]

ALPHA = 0.05
"""Significance level of the paired tests."""

LABELS: tuple[str, ...] = ("better", "no significant change", "worse", "not tested")

COLOURS: dict[str, str] = {
    "better": "#c8e6c9", "no significant change": "#e0e0e0", "worse": "#ffcdd2",
    "not tested": "#f5f5f5",
}  # fmt: skip
"""Background colour of each label: green, grey, red, light grey."""

METHODS: tuple[str, ...] = tuple(m.name for m in EVALUATED_METHODS)
"""Methods judged, in the report's order (:data:`.evaluated.EVALUATED_METHODS`)."""

_TISSUE_ORDER = (*TISSUES, "brain")


@dataclass(frozen=True)
class Verdict:
    """One judged comparison (a row of ``group/verdict.tsv``)."""

    scenario: str
    shell: str
    metric: str
    tissue: str
    method: str
    sigma_scan_rescan: float
    sigma_none: float
    sigma_method: float
    excess_none: float
    excess_method: float
    change: float
    pvalue: float
    n_rois: int
    label: str
    colour: str
    sentence: str


def judge(
    change: float, pvalue: float, *, alpha: float = ALPHA, mean_difference: float | None = None
) -> str:
    """Label of one comparison of a method with no harmonization.

    Parameters
    ----------
    change : float
        Relative change of the inter-scanner error, % (negative: lower error).
    pvalue : float
        Two-sided p-value of the paired test method vs none (NaN: not tested).
    alpha : float
        Significance level.
    mean_difference : float, optional
        Mean over ROIs of method minus none.  When given and of the other sign
        than ``change`` (the whole-brain mean over voxels and the ROI test
        disagree), the result is not called significant either way.

    Returns
    -------
    str
        One of :data:`LABELS`.

    >>> judge(-31.0, 0.002), judge(12.0, 0.04), judge(-5.0, 0.3), judge(4.0, math.nan)
    ('better', 'worse', 'no significant change', 'not tested')
    """
    if not (math.isfinite(change) and math.isfinite(pvalue)):
        return "not tested"
    agrees = mean_difference is None or not math.isfinite(mean_difference) or (
        np.sign(mean_difference) == np.sign(change))  # fmt: skip
    if pvalue >= alpha or change == 0 or not agrees:
        return "no significant change"
    return "better" if change < 0 else "worse"


def format_p(p: float) -> str:
    """``p = 0.002``, ``p < 0.001`` or ``p n/a``.

    >>> format_p(0.0213), format_p(2e-5), format_p(float("nan"))
    ('p = 0.021', 'p < 0.001', 'p n/a')
    """
    if not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.01 else f"p = {p:.3f}".rstrip("0")


def percent_words(x: float) -> str:
    """The size of a percentage for a sentence (no sign).

    >>> percent_words(-31.4), percent_words(4.23)
    ('31 %', '4.2 %')
    """
    if not math.isfinite(x):
        return "n/a %"
    return f"{abs(x):.0f} %" if abs(x) >= 10 else f"{abs(x):.1f} %"


def _excess(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{percent_words(x)} above scan-rescan" if x > 0 else "at scan-rescan level"


def _sentence(
    method: str, metric: str, tissue: str, label: str, v: Mapping[str, float], alpha: float
) -> str:
    """One plain-words sentence for a row."""
    name = METHOD_NAMES.get(method, method)
    where = f"{metric} in {TISSUE_WORDS.get(tissue, tissue)}"
    p, size = format_p(v["pvalue"]), percent_words(v["change"])
    after = f"{_excess(v['excess_method'])}, was {_excess(v['excess_none'])}"
    if label == "better":
        return f"{name} reduced the inter-scanner error of {where} by {size} ({p}): now {after}."
    if label == "worse":
        return (
            f"{name} made {where} worse: the inter-scanner error rose by {size} ({p}): now {after}."
        )
    sign = "+" if v["change"] > 0 else "−"
    if label == "not tested":
        why = "not tested: too few ROIs"
    elif v["pvalue"] < alpha:  # significant, but the ROIs moved the other way on average
        why = "the ROI test points the other way: inconclusive"
    else:
        why = "not significant"
    return f"{name} changed the inter-scanner error of {where} by {sign}{size} ({p}, {why})."


def _sigma(stats: Mapping[str, Any], key: str) -> float:
    value = stats.get(key)
    if value is None:
        return math.nan
    mean = value[0] if isinstance(value, tuple | list) else value
    return math.nan if mean is None else float(mean)


def _whole_brain_test(
    roi_errors: Mapping[str, Any] | None, metric: str, a: str, b: str
) -> PairedTest:
    """Paired test over the ROIs of every tissue (NaN when the ROI errors are missing)."""
    per_tissue = (roi_errors or {}).get(metric, {})
    pairs = [(e[a], e[b]) for e in per_tissue.values() if a in e and b in e]
    if not pairs:
        return PairedTest(math.nan, math.nan, 0, math.nan)
    return paired_ttest(np.concatenate([np.ravel(x) for x, _ in pairs]),
                        np.concatenate([np.ravel(y) for _, y in pairs]))  # fmt: skip


def _cases(
    table2: Mapping[str, Any],
    table3: Mapping[str, Any],
    ttests: Mapping[tuple, Any],
    roi_errors: Mapping[str, Any] | None,
    a: str,
    b: str,
) -> list[tuple[str, str, Mapping[str, Any], Any]]:
    """``(metric, tissue, condition stats, test a vs b)`` in table order (WM, GM, brain)."""
    metrics = [m for m in METRICS if m in table2 or m in table3]
    metrics += [m for m in [*table2, *table3] if m not in metrics]
    out = []
    for metric in dict.fromkeys(metrics):
        for tissue in _TISSUE_ORDER:
            if tissue == "brain":
                stats = table2.get(metric)
                test = _whole_brain_test(roi_errors, metric, a, b) if stats else None
            else:
                stats = table3.get(metric, {}).get(tissue)
                test = ttests.get((metric, tissue, (a, b)))
            if stats:
                out.append((metric, tissue, stats, test))
    return out


def _test_values(test: Any) -> tuple[float, float, int]:
    """``(pvalue, mean_difference, n)`` of a PairedTest or mapping (NaN when absent)."""
    if test is None:
        return math.nan, math.nan, 0
    get = test.get if isinstance(test, Mapping) else lambda f: getattr(test, f, None)
    p, d, n = get("pvalue"), get("mean_difference"), get("n")
    return (math.nan if p is None else float(p), math.nan if d is None else float(d),
            0 if n is None else int(n))  # fmt: skip


def shell_verdicts(
    *,
    scenario: str,
    shell: str,
    table2: Mapping[str, Mapping[str, Any]],
    table3: Mapping[str, Mapping[str, Mapping[str, Any]]],
    ttests: Mapping[tuple, Any],
    roi_errors: Mapping[str, Any] | None = None,
    alpha: float = ALPHA,
) -> list[Verdict]:
    """Judge every method of one shell of one scenario.

    Parameters
    ----------
    scenario, shell : str
        Scenario stem (``src-A_tgt-B[_acq-C]``) and shell label (``b1000``).
    table2 : mapping
        ``{metric: {condition key: (mean, sd)}}`` whole-brain standard errors
        (:func:`bids_harmony.evaluation.maps.summarize`).
    table3 : mapping
        ``{metric: {tissue: {condition key: (mean, sd)}}}`` ROI standard errors.
    ttests : mapping
        ``{(metric, tissue, (a, b)): PairedTest}``, with ``(inter_<method>, inter_none)``.
    roi_errors : mapping, optional
        ``{metric: {tissue: {condition key: per-ROI errors}}}`` for the
        whole-brain test; without it whole-brain rows are "not tested".
    alpha : float
        Significance level.

    Returns
    -------
    list of Verdict
        Metric, then tissue (WM, GM, whole brain), then method (HARP, LinearRISH,
        ComBat: the order of :data:`METHODS`); only the methods with numbers.
    """
    rows = []
    for method in METHODS:
        key = condition(method)
        for metric, tissue, stats, test in _cases(table2, table3, ttests, roi_errors, key,
                                                  "inter_none"):  # fmt: skip
            none, after = _sigma(stats, "inter_none"), _sigma(stats, key)
            if not (math.isfinite(none) and math.isfinite(after)):
                continue
            sr_source, sr_target = _sigma(stats, "sr_source"), _sigma(stats, "sr_target")
            p, diff, n = _test_values(test)
            v = {
                "sigma_scan_rescan": float(np.fmax(sr_source, sr_target)),
                "sigma_none": none, "sigma_method": after,
                "excess_none": float(percentage_difference(none, sr_source, sr_target)),
                "excess_method": float(percentage_difference(after, sr_source, sr_target)),
                "change": 100.0 * (after - none) / none if none else math.nan,
                "pvalue": p,
            }  # fmt: skip
            label = judge(v["change"], p, alpha=alpha, mean_difference=diff)
            rows.append(Verdict(scenario=scenario, shell=shell, metric=metric, tissue=tissue,
                                method=method, **v, n_rois=n, label=label,
                                colour=COLOURS[label],
                                sentence=_sentence(method, metric, tissue, label, v,
                                                   alpha)))  # fmt: skip
    order = {m: i for i, m in enumerate(METRICS)}
    return sorted(
        rows,
        key=lambda r: (
            order.get(r.metric, len(order)),
            _TISSUE_ORDER.index(r.tissue),
            METHODS.index(r.method),
        ),
    )


def method_duels(
    *,
    table2: Mapping[str, Any],
    table3: Mapping[str, Any],
    ttests: Mapping[tuple, Any],
    roi_errors: Mapping[str, Any] | None = None,
    alpha: float = ALPHA,
    methods: tuple[str, str] = ("harp", "rish"),
) -> dict[str, int]:
    """Head to head of two methods in one shell (default HARP and LinearRISH).

    Parameters
    ----------
    table2, table3, ttests, roi_errors : mapping
        As for :func:`shell_verdicts`; ``ttests`` with ``(inter_<a>, inter_<b>)``.
    alpha : float
        Significance level.
    methods : pair of str
        The two methods ``(a, b)``, ``a`` before ``b`` in :data:`METHODS` (the
        order of the t-tests' pairs).

    Returns
    -------
    dict
        ``n`` comparisons (metric × tissue) with both methods, ``a`` and ``b``
        (the methods' names): how many each had the lower inter-scanner error,
        and ``<a>_significant``/``<b>_significant``: of those, how many with
        p < ``alpha`` (paired test across ROIs).
    """
    a, b = methods
    out = {"n": 0, a: 0, b: 0, f"{a}_significant": 0, f"{b}_significant": 0}
    for _, _, stats, test in _cases(table2, table3, ttests, roi_errors, condition(a),
                                    condition(b)):  # fmt: skip
        sigma_a, sigma_b = _sigma(stats, condition(a)), _sigma(stats, condition(b))
        if not (math.isfinite(sigma_a) and math.isfinite(sigma_b)) or sigma_a == sigma_b:
            continue
        out["n"] += 1
        winner = a if sigma_a < sigma_b else b
        out[winner] += 1
        p, diff, _ = _test_values(test)
        # diff is a minus b: negative when a is lower
        if math.isfinite(p) and p < alpha and (diff < 0) == (winner == a):
            out[f"{winner}_significant"] += 1
    return out


def duel_methods(duel: Mapping[str, int]) -> tuple[str, str]:
    """The two methods of a :func:`method_duels` result, in its order."""
    names = [k for k in duel if k != "n" and not k.endswith("_significant")]
    if len(names) != 2:
        raise ValueError(f"not a head-to-head of two methods: {sorted(duel)}")
    return names[0], names[1]


_DICTIONARY: dict[str, Any] = {
    "Description": "Did each harmonization method bring inter-scanner variability toward "
    "scan-rescan? One row per scenario, shell, metric, tissue and method (HARP Eq. 2 "
    "standard errors; paired t-tests across ROIs, method vs no harmonization).",
    "Alpha": ALPHA,
    "scenario": {"Description": "Source -> target site and protocol (src-<site>_tgt-<site>"
                 "[_acq-<label>])."},
    "shell": {"Description": "Shell label (b-value in s/mm^2)."},
    "metric": {"Description": "Diffusion metric (FA, MD or GFA)."},
    "units": {"Description": "Units of the metric and of the standard errors ('1': none)."},
    "tissue": {"Description": "WM or GM (mean over ROIs) or brain (whole brain without CSF, "
               "mean over voxels)."},
    "method": {"Description": "Harmonization method.",
               "Levels": {m.name: m.display for m in EVALUATED_METHODS}},
    "sigma_scan_rescan": {"Description": "max(scan-rescan standard error at the source site, "
                          "at the target site).", "Units": "see 'units'"},
    "sigma_none": {"Description": "Inter-scanner standard error without harmonization.",
                   "Units": "see 'units'"},
    "sigma_method": {"Description": "Inter-scanner standard error after the method.",
                     "Units": "see 'units'"},
    "excess_none": {"Description": "100*(sigma_none - sigma_scan_rescan)/sigma_scan_rescan.",
                    "Units": "%"},
    "excess_method": {"Description": "100*(sigma_method - sigma_scan_rescan)/"
                      "sigma_scan_rescan.", "Units": "%"},
    "change": {"Description": "100*(sigma_method - sigma_none)/sigma_none: negative when the "
               "method lowered inter-scanner variability.", "Units": "%"},
    "pvalue": {"Description": "Two-sided p-value of the paired t-test across ROIs of the "
               "method vs no harmonization (whole brain: the ROIs of WM and GM together)."},
    "n_rois": {"Description": "Number of ROIs in the paired test."},
    "label": {"Description": "Verdict at the significance level 'Alpha'.",
              "Levels": {"better": "significantly lower inter-scanner error",
                         "no significant change": "p >= Alpha",
                         "worse": "significantly higher inter-scanner error",
                         "not tested": "fewer than two ROIs"}},
    "colour": {"Description": "Display colour of the label in the report (hex RGB)."},
    "sentence": {"Description": "The row in plain words."},
}  # fmt: skip


def verdict_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """The verdict rows as a table (columns of :class:`Verdict`, plus ``units``)."""
    columns = [*Verdict.__dataclass_fields__]
    columns.insert(columns.index("tissue"), "units")
    rows = [{**asdict(v), "units": METRIC_UNITS.get(v.metric, "n/a")} for v in verdicts]
    df = pd.DataFrame(rows, columns=columns)
    df["n_rois"] = df["n_rois"].astype("Int64")
    return df


def write_verdict(verdicts: Sequence[Verdict], path_tsv: str | os.PathLike[str]) -> Path:
    """Write ``group/verdict.tsv`` and its JSON data dictionary, atomically."""
    write_table(verdict_frame(verdicts), path_tsv, _DICTIONARY)
    return Path(path_tsv)
