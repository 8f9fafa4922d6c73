"""Group-level result tables (HARP Tables 2-4) as DataFrames and BIDS-style TSV files.

Every table is a plain :class:`pandas.DataFrame` with a default integer index;
the identifying columns (``metric``, ``tissue``, ...) come first.  Values are
kept at full precision: rounding and the ×10⁻³ / ×10⁻⁶ display scaling belong
to the HTML report (:mod:`bids_harmony.evaluation.report`).

:func:`write_table` writes a tab-separated file with ``n/a`` for missing
values (as BIDS requires) and a JSON data dictionary describing every column.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from bids_harmony.bids.io import write_json, write_text
from bids_harmony.evaluation.evaluated import EVALUATED_METHODS, condition, pct_column
from bids_harmony.evaluation.variability import percentage_difference

__all__ = [
    "COLUMN_DESCRIPTIONS",
    "CONDITIONS",
    "METRICS",
    "METRIC_UNITS",
    "PCT_COLUMNS",
    "TISSUES",
    "condition_key",
    "data_dictionary",
    "table2",
    "table3",
    "table4",
    "ttests_table",
    "write_table",
]

METRICS: tuple[str, ...] = ("FA", "MD", "GFA")
"""Metrics in the order of the paper's tables."""

TISSUES: tuple[str, ...] = ("WM", "GM")

METRIC_UNITS: dict[str, str] = {"FA": "1", "MD": "mm^2/s", "GFA": "1"}
"""Units of each metric (and of its standard error); ``"1"`` means dimensionless."""

CONDITIONS: tuple[tuple[str, str], ...] = (
    ("sr_source", "SR source"),
    ("sr_target", "SR target"),
    ("inter_none", "No harmonization"),
    *((condition(m.name), m.display) for m in EVALUATED_METHODS),
)
"""``(column key, display label)`` of the evaluated conditions, in table order: scan-rescan
at both sites, inter-scanner without harmonization, then after each method of
:data:`bids_harmony.evaluation.evaluated.EVALUATED_METHODS` (HARP, LinearRISH, ComBat)."""

PCT_COLUMNS: dict[str, str] = {
    "inter_none": "pct_none", **{condition(m.name): pct_column(m.name) for m in EVALUATED_METHODS},
}  # fmt: skip
"""Percentage-difference column of each inter-scanner condition."""

_ALIASES: dict[str, str] = {
    **{key: key for key, _ in CONDITIONS},
    **{label.lower(): key for key, label in CONDITIONS},
    "none": "inter_none", "no_harmonization": "inter_none", "nohar": "inter_none",
    **{alias: condition(m.name) for m in EVALUATED_METHODS for alias in (m.name, *m.aliases)},
}  # fmt: skip

_UNITS_NOTE = "mm^2/s for MD; dimensionless for FA and GFA (see the 'units' column)"

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "metric": {"Description": "Diffusion metric (FA, MD or GFA)."},
    "units": {"Description": "Units of the metric and of its standard error ('1': none)."},
    "tissue": {"Description": "Tissue class over which ROIs are averaged (WM or GM)."},
    "sr_source": {"Description": "Scan-rescan standard error (HARP Eq. 2) at the source site.",
                  "Units": _UNITS_NOTE},
    "sr_target": {"Description": "Scan-rescan standard error (HARP Eq. 2) at the target site.",
                  "Units": _UNITS_NOTE},
    "inter_none": {"Description": "Inter-scanner standard error without harmonization.",
                   "Units": _UNITS_NOTE},
    **{condition(m.name): {"Description": "Inter-scanner standard error after "
                           f"{m.display} harmonization.", "Units": _UNITS_NOTE}
       for m in EVALUATED_METHODS},
    **{pct: {"Description": f"Percentage difference of {key} relative to "
             "max(sr_source, sr_target): 100*(inter - max)/max.", "Units": "%"}
       for key, pct in PCT_COLUMNS.items()},
    "scenario": {"Description": "Compared pair of data sets (e.g. source vs HARP-harmonized)."},
    "angular_error_mean": {"Description": "Mean angular error between principal CSD peaks "
                           "over white-matter voxels.", "Units": "deg"},
    "angular_error_median": {"Description": "Median angular error between principal CSD "
                             "peaks over white-matter voxels.", "Units": "deg"},
    "angular_error_p95": {"Description": "95th percentile of the angular error between "
                          "principal CSD peaks over white-matter voxels.", "Units": "deg"},
    "n_voxels": {"Description": "Number of voxels with a valid angular error."},
    "comparison": {"Description": "Compared conditions, 'A vs B' (difference is A minus B)."},
    "statistic": {"Description": "Paired t statistic across ROIs (scipy.stats.ttest_rel)."},
    "pvalue": {"Description": "Two-sided p-value of the paired t-test."},
    "n": {"Description": "Number of ROIs with finite values in both conditions."},
    "mean_difference": {"Description": "Mean over ROIs of A minus B (standard errors).",
                        "Units": _UNITS_NOTE},
}  # fmt: skip
for _key, _ in CONDITIONS:
    COLUMN_DESCRIPTIONS[f"{_key}_sd"] = {
        "Description": f"Standard deviation (over voxels or ROIs) of {_key}.",
        "Units": _UNITS_NOTE,
    }


def condition_key(name: str) -> str:
    """Column key (``sr_source``, ..., ``inter_combat``) of a condition key or label."""
    text = str(name).strip().lower()
    key = _ALIASES.get(text, _ALIASES.get(text.replace("-", "_").replace(" ", "_")))
    if key is None:
        labels = ", ".join(repr(label) for _, label in CONDITIONS)
        raise KeyError(f"unknown condition {name!r}; expected one of {labels}")
    return key


def _ordered(names: Any, preferred: tuple[str, ...]) -> list[str]:
    """``names`` with those in ``preferred`` first, in that order, then the rest."""
    names = list(names)
    return [n for n in preferred if n in names] + [n for n in names if n not in preferred]


def _mean_sd(value: Any) -> tuple[float, float]:
    """``(mean, sd)`` from a pair, or a scalar mean (SD NaN); ``None`` becomes NaN."""
    if isinstance(value, tuple | list):
        mean, sd = (list(value) + [None, None])[:2]
    else:
        mean, sd = value, None
    return (
        math.nan if mean is None else float(mean),
        math.nan if sd is None else float(sd),
    )


def _condition_columns(conditions: Mapping[str, Any]) -> dict[str, float]:
    """Mean, SD and percentage-difference columns for one row."""
    given = {condition_key(name): _mean_sd(v) for name, v in conditions.items()}
    nan = (math.nan, math.nan)
    row: dict[str, float] = {}
    for key, _ in CONDITIONS:
        row[key] = given.get(key, nan)[0]
    for key, _ in CONDITIONS:
        row[f"{key}_sd"] = given.get(key, nan)[1]
    for key, pct in PCT_COLUMNS.items():
        row[pct] = float(percentage_difference(row[key], row["sr_source"], row["sr_target"]))
    return row


def table2(summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Whole-brain (CSF excluded) mean standard errors, as HARP Table 2.

    Parameters
    ----------
    summary : mapping
        ``{metric: {condition: (mean, sd)}}``; conditions by key or label
        (``"SR source"``, ``"SR target"``, ``"No harmonization"``, ``"HARP"``,
        ``"LinearRISH"``, ``"ComBat"``).  Missing conditions become NaN.

    Returns
    -------
    DataFrame
        One row per metric (FA, MD, GFA first): ``metric``, ``units``, the
        condition means of :data:`CONDITIONS`, their ``*_sd`` and the ``pct_*``
        columns of :data:`PCT_COLUMNS` (``pct_none``, ``pct_harp``, ...).
    """
    rows = [
        {"metric": m, "units": METRIC_UNITS.get(m, "n/a"), **_condition_columns(summary[m])}
        for m in _ordered(summary, METRICS)
    ]
    return pd.DataFrame(rows, columns=_columns(("metric", "units")))


def table3(roi_summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Mean ± SD over ROIs of the ROI-wise standard errors, as HARP Table 3.

    Parameters
    ----------
    roi_summary : mapping
        ``{metric: {tissue: {condition: (mean, sd)}}}`` with tissue in WM, GM.

    Returns
    -------
    DataFrame
        One row per (metric, tissue): ``metric``, ``tissue``, ``units`` and the
        same condition columns as :func:`table2`.
    """
    rows = []
    for m in _ordered(roi_summary, METRICS):
        for tissue in _ordered(roi_summary[m], TISSUES):
            rows.append({"metric": m, "tissue": tissue, "units": METRIC_UNITS.get(m, "n/a"),
                         **_condition_columns(roi_summary[m][tissue])})  # fmt: skip
    return pd.DataFrame(rows, columns=_columns(("metric", "tissue", "units")))


def _columns(ids: tuple[str, ...]) -> list[str]:
    keys = [key for key, _ in CONDITIONS]
    return [*ids, *keys, *(f"{k}_sd" for k in keys), *PCT_COLUMNS.values()]


def table4(fibre_summary: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Fibre-orientation preservation (angular error of principal peaks), HARP Table 4.

    Parameters
    ----------
    fibre_summary : mapping
        ``{scenario_label: {"angular_error_mean": ..., "angular_error_median": ...,
        "n_voxels": ...}}``; the keys of
        :func:`bids_harmony.evaluation.fibers.summarize_angular_error`
        (``mean``, ``median``, ``p95``, ``n``) are accepted too.

    Returns
    -------
    DataFrame
        ``scenario``, ``angular_error_mean``, ``angular_error_median``,
        ``n_voxels`` (and ``angular_error_p95`` when any scenario has it).
    """
    alias = {"mean": "angular_error_mean", "median": "angular_error_median",
             "p95": "angular_error_p95", "n": "n_voxels"}  # fmt: skip
    rows = []
    for label, stats in fibre_summary.items():
        row: dict[str, Any] = {"scenario": str(label)}
        for k, v in stats.items():
            col = alias.get(k, k)
            row[col] = v
        rows.append(row)
    cols = ["scenario", "angular_error_mean", "angular_error_median", "n_voxels"]
    if any("angular_error_p95" in r for r in rows):
        cols.insert(3, "angular_error_p95")
    df = pd.DataFrame(rows, columns=cols)
    df["n_voxels"] = df["n_voxels"].astype("Int64")
    return df


def ttests_table(results: Mapping[tuple[str, str, Any], Any]) -> pd.DataFrame:
    """Paired t-tests across ROIs between conditions.

    Parameters
    ----------
    results : mapping
        ``{(metric, tissue, comparison): result}`` where ``comparison`` is a
        string or a pair ``(condition_a, condition_b)`` (written ``"A vs B"``)
        and ``result`` is a :class:`~bids_harmony.evaluation.variability.PairedTest`
        or a mapping with ``statistic``, ``pvalue``, ``n``, ``mean_difference``.

    Returns
    -------
    DataFrame
        ``metric``, ``tissue``, ``comparison``, ``statistic``, ``pvalue``, ``n``,
        ``mean_difference``.
    """
    fields = ("statistic", "pvalue", "n", "mean_difference")
    rows = []
    for (metric, tissue, comparison), res in results.items():
        if not isinstance(comparison, str):
            comparison = " vs ".join(str(c) for c in comparison)
        get = res.get if isinstance(res, Mapping) else lambda f, r=res: getattr(r, f, None)
        values = {f: get(f) for f in fields}
        rows.append({"metric": metric, "tissue": tissue, "comparison": comparison, **values})
    df = pd.DataFrame(rows, columns=["metric", "tissue", "comparison", *fields])
    for f in ("statistic", "pvalue", "mean_difference"):
        df[f] = pd.to_numeric(df[f], errors="coerce").astype(float)
    df["n"] = pd.to_numeric(df["n"], errors="coerce").astype("Int64")
    return df


def data_dictionary(
    df: pd.DataFrame, dictionary: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """JSON data dictionary with an entry for every column of ``df``.

    Entries in ``dictionary`` take precedence; other columns get the entry of
    :data:`COLUMN_DESCRIPTIONS`, or a generic description naming the column.
    Top-level keys of ``dictionary`` that are not columns (e.g.
    ``"Description"``) are kept as they are.
    """
    out: dict[str, Any] = dict(dictionary or {})
    for col in df.columns:
        if col not in out:
            out[col] = dict(COLUMN_DESCRIPTIONS.get(col, {"Description": f"Column {col}."}))
    return out


def write_table(
    df: pd.DataFrame, path_tsv: str | os.PathLike[str], dictionary: Mapping[str, Any]
) -> None:
    """Write ``df`` as a BIDS-style TSV and its JSON data dictionary, both atomically.

    Parameters
    ----------
    df : DataFrame
        Written without its index; NaN/NA as ``n/a``; floats at full precision.
    path_tsv : path
        Output file, must end with ``.tsv``; the dictionary goes to the same
        name with ``.json``.
    dictionary : mapping
        Column entries (``{"Description": ..., "Units": ...}``) and optional
        top-level keys; completed by :func:`data_dictionary`.
    """
    path = Path(path_tsv)
    if path.suffix != ".tsv":
        raise ValueError(f"table path must end with .tsv; got {path}")
    text = df.to_csv(sep="\t", na_rep="n/a", index=False, lineterminator="\n")
    write_json(path.with_suffix(".json"), data_dictionary(df, dictionary))
    write_text(path, text)
