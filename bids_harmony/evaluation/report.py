"""The self-contained HTML group report.

The report opens with the verdict (:mod:`bids_harmony.evaluation.report_verdict`),
then the sessions, tables and figures (:mod:`bids_harmony.evaluation.figures`,
whose functions are re-exported here), the training reports and the methods text.
Figures are embedded as ``data:image/png;base64`` URIs; no external resources.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import bids_harmony
from bids_harmony.bids.io import write_text
from bids_harmony.evaluation.evaluated import EVALUATED_METHODS
from bids_harmony.evaluation.figures import (
    CONDITION_COLORS,
    DISPLAY_SCALE,
    roi_boxplot_figure,
    standard_error_figure,
)
from bids_harmony.evaluation.report_verdict import VERDICT_CSS, verdict_html
from bids_harmony.evaluation.tables import CONDITIONS, PCT_COLUMNS
from bids_harmony.evaluation.verdict import Verdict
from bids_harmony.evaluation.wording import comparison_words, scenario_title

__all__ = [
    "CONDITION_COLORS",
    "DISPLAY_SCALE",
    "format_number",
    "markdown_html",
    "roi_boxplot_figure",
    "standard_error_figure",
    "write_html_report",
]

_LABELS = dict(CONDITIONS)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def format_number(value: Any) -> str:
    """Three significant digits (fixed notation for ordinary magnitudes); ``n/a`` for missing."""
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if not isinstance(value, float | np.floating):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return "n/a" if math.isnan(v) else str(v)
    if v == 0:
        return "0"
    r = float(f"{v:.3g}")  # round first so 9.9999 gives "10.0", not "10.00"
    if 1e-3 <= abs(r) < 1e5:
        decimals = max(0, 2 - math.floor(math.log10(abs(r))))
        return f"{r:.{decimals}f}"
    return f"{v:.2e}"


_HEADERS = {
    **{key: f"{label} σₑ" for key, label in CONDITIONS},
    "metric": "Metric [display unit of σₑ]", "tissue": "Tissue", "scenario": "Scenario",
    "angular_error_mean": "Mean angular error (deg)",
    "angular_error_median": "Median angular error (deg)",
    "angular_error_p95": "95th percentile angular error (deg)", "n_voxels": "Voxels",
    "comparison": "Comparison", "statistic": "t", "pvalue": "p", "n": "ROIs",
    "mean_difference": "Mean difference [display unit of σₑ]",
    "session": "Session", "site": "Site", "role": "Role", "status": "Status",
    "reason": "Reason",
}  # fmt: skip


def _table_html(caption: str, df: pd.DataFrame, *, text: bool = False) -> str:
    """HTML table; σₑ columns scaled per metric and shown as mean ± SD (pct %).

    ``text``: a table of words (left-aligned cells), e.g. the sessions.
    """
    cols = list(df.columns)
    merged = {f"{k}_sd" for k, _ in CONDITIONS if k in cols and f"{k}_sd" in cols}
    merged |= {p for k, p in PCT_COLUMNS.items() if k in cols and p in cols}
    shown = [c for c in cols if c not in merged and not (c == "units" and "metric" in cols)]
    head = "".join(f"<th>{html.escape(_HEADERS.get(c, str(c)))}</th>" for c in shown)
    body = []
    for _, row in df.iterrows():
        metric = str(row["metric"]) if "metric" in cols else ""
        scale, unit = DISPLAY_SCALE.get(metric, (1.0, ""))
        cells = []
        for c in shown:
            v = row[c]
            if c == "metric":
                value = f"{metric} [{unit}]" if unit else metric
            elif c == "comparison":  # "inter_harp vs inter_none" -> "HARP vs none (...)"
                value = comparison_words(str(v))
            elif c in _LABELS or c == "mean_difference":
                num = pd.to_numeric(v, errors="coerce")
                value = format_number(float(num) * scale if pd.notna(num) else math.nan)
                sd = row.get(f"{c}_sd") if f"{c}_sd" in merged else None
                if sd is not None and pd.notna(sd):
                    value += f" ± {format_number(float(sd) * scale)}"
                pct_col = PCT_COLUMNS.get(c, "")
                pct = row.get(pct_col) if pct_col in merged else None
                if pct is not None and pd.notna(pct):
                    value += f" ({format_number(float(pct))}%)"
            else:
                value = format_number(v)
            cells.append(f"<td>{html.escape(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    tag = '<table class="text">' if text else "<table>"
    return (f"{tag}\n<caption>{html.escape(caption)}</caption>\n<thead><tr>{head}</tr></thead>"
            f"\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")  # fmt: skip


def _figure_html(caption: str, path: str | os.PathLike[str]) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"not a PNG file: {path}")
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure>\n<img alt="{html.escape(caption, quote=True)}" '
            f'src="data:image/png;base64,{b64}">\n'
            f"<figcaption>{html.escape(caption)}</figcaption>\n</figure>")  # fmt: skip


def _words(names: Sequence[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


_HOW_TO_READ = (
    "The standard error σₑ (HARP Eq. 2) is the pooled within-subject standard deviation of "
    "a metric. Scan-rescan σₑ (two sessions at one site; SR source, SR target) is the "
    "variability that remains without any scanner change and is the floor harmonization can "
    "hope to reach. Inter-scanner σₑ (two sessions at each of the two sites) is reported "
    "without harmonization and after each evaluated method "
    f"({_words([m.display for m in EVALUATED_METHODS])}, where they have outputs); lower is "
    "better. The percentage "
    "in parentheses is (σ_inter − max(σ_sr,source, σ_sr,target)) / max(…) × 100: values near "
    "0% mean the inter-scanner variability is as low as the scan-rescan variability. Tables "
    "show σₑ scaled for readability: FA and GFA ×10⁻³ (dimensionless), MD ×10⁻⁶ mm²/s; "
    "whole-brain values exclude CSF; ROI values are mean ± SD over ROIs. Angular errors "
    "(degrees) compare principal CSD peaks of source and harmonized data in white matter "
    f"({_words([m.display for m in EVALUATED_METHODS if m.fibres])} only: the other methods' "
    "harmonized fibre directions are not evaluated). "
    "The maps compared are the participant outputs without desc (no harmonization) and with "
    f"{_words([f'desc-{m.name} ({m.display})' for m in EVALUATED_METHODS])}; desc-rish maps "
    "are written by this group level unless a trained LinearRISH model applied them."
)


_CODE_SPAN = re.compile(r"(`[^`\n]+`)")
_INLINE = (
    (re.compile(r"\*\*([^*\n]+)\*\*"), r"<b>\1</b>"),
    (re.compile(r"(?<![*\w])\*([^*\n]+)\*(?![*\w])"), r"<i>\1</i>"),
    (re.compile(r"(https?://[^\s<>\"]*[^\s<>\".,;:)])"), r'<a href="\1">\1</a>'),
)
_LIST_ITEM = re.compile(r"^(?:[-*]|\d+\.)\s+")


def _inline_html(text: str) -> str:
    """Escaped text with `code`, **bold**, *italic* and bare URLs as links."""
    out = []
    for i, piece in enumerate(_CODE_SPAN.split(text)):
        if i % 2:
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        piece = html.escape(piece, quote=False)
        for pattern, repl in _INLINE:
            piece = pattern.sub(repl, piece)
        out.append(piece)
    return "".join(out)


def markdown_html(text: str) -> str:
    """The small Markdown of the methods text as HTML (all text escaped).

    Blocks are separated by blank lines: ``#`` headings (a leading level-1 heading
    is dropped, the report gives its own; ``##`` becomes ``<h3>``), lists
    (``-`` or ``1.`` items) and paragraphs.
    """
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    if blocks and re.match(r"#\s", blocks[0]):
        blocks = blocks[1:]
    parts = []
    for block in blocks:
        lines = block.splitlines()
        heading = re.match(r"(#{1,4})\s+(.*)", block)
        if heading and len(lines) == 1:
            level = min(len(heading[1]) + 1, 6)
            parts.append(f"<h{level}>{_inline_html(heading[2])}</h{level}>")
        elif all(_LIST_ITEM.match(line) for line in lines):
            tag = "ol" if lines[0][0].isdigit() else "ul"
            items = "".join(f"<li>{_inline_html(_LIST_ITEM.sub('', ln))}</li>" for ln in lines)
            parts.append(f"<{tag}>{items}</{tag}>")
        else:
            parts.append(f"<p>{_inline_html(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(parts)


def _training_links(
    out_html: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None
) -> list[str]:
    """"HARP training" section linking the training reports in ``models_dir``, if any."""
    found = Path(models_dir).glob("*.html") if models_dir is not None else ()
    pages = sorted(p for p in found if not p.name.startswith("."))  # not half-written .tmp-
    if not pages:
        return []
    items = []
    for page in pages:
        # Relative, so the link survives moving or archiving the whole output folder.
        href = Path(os.path.relpath(page, Path(out_html).parent)).as_posix()
        m = re.fullmatch(r"[a-z]+_(src-.+)", page.stem)  # <method>_src-<S>_tgt-<T>[_acq-<A>]
        label = scenario_title(m[1]) if m else page.stem
        items.append(f'<li><a href="{html.escape(urllib.parse.quote(href), quote=True)}">'
                     f"{html.escape(label)}</a></li>")  # fmt: skip
    return ["<h2>HARP training</h2>",
            "<p>Training reports (registration, voxels, band test, losses, scales):</p>",
            f"<ul>{''.join(items)}</ul>"]  # fmt: skip


def write_html_report(
    out_html: str | os.PathLike[str],
    *,
    title: str,
    sections: Mapping[str, str] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    figures: Mapping[str, str | os.PathLike[str]] | None = None,
    notes: Sequence[str] | None = None,
    excluded: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    methods: str | None = None,
    verdicts: Sequence[Verdict] | None = None,
    duels: Mapping[tuple[str, ...], Mapping[str, int]] | None = None,
    warning: str | None = None,
    sessions: pd.DataFrame | None = None,
    methods_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Write one self-contained HTML report (no external CSS, JS, fonts or images).

    Parameters
    ----------
    out_html : path
        Output file, written atomically.
    title : str
        Page title and heading.
    sections : mapping, optional
        ``{heading: text}`` free-text sections (blank lines separate paragraphs).
    tables : mapping, optional
        ``{caption: DataFrame}`` from :mod:`bids_harmony.evaluation.tables`.
    figures : mapping, optional
        ``{caption: PNG path}``; each PNG is embedded as a base64 data URI.
    notes : sequence of str, optional
        Caveats listed under "Notes".
    excluded : mapping or sequence of pairs, optional
        Excluded sessions ``{session: reason}``; listed (or "None") in the report
        when no ``sessions`` table is given.
    models_dir : path, optional
        Folder of the HARP models (``OUT/models``); its ``*.html`` training reports
        are linked, relative to ``out_html``, under "HARP training".
    methods : str, optional
        The methods text (Markdown of ``OUT/logs/CITATION.md``), shown under
        "Methods" (:func:`markdown_html`).
    verdicts : sequence of Verdict, optional
        The judged comparisons (:func:`bids_harmony.evaluation.verdict.shell_verdicts`);
        when given (even empty), "Verdict" is the first section
        (:func:`bids_harmony.evaluation.report_verdict.verdict_html`).
    duels : mapping, optional
        ``{(scenario, shell[, a, b]): method_duels(...)}`` for the verdict's summary.
    warning : str, optional
        Shown above everything else (e.g. which methods could not be compared).
    sessions : DataFrame, optional
        Every session with its status (included or excluded) and why, under "Sessions".
    methods_file : path, optional
        ``OUT/logs/CITATION.md``, linked (relative to ``out_html``) under "Methods".

    Returns
    -------
    Path
        ``out_html``.  All text is escaped with :func:`html.escape`.
    """
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>",
             f'<p class="meta">bids_harmony {esc(bids_harmony.__version__)} — '
             f"{esc(bids_harmony.CODE_URL)}</p>"]  # fmt: skip
    if warning:
        parts.append(f'<p class="warning"><b>Warning:</b> {esc(warning)}</p>')
    if verdicts is not None:
        parts += verdict_html(verdicts, duels)
    parts += ["<h2>How to read this</h2>", f"<p>{esc(_HOW_TO_READ)}</p>"]
    for heading, text in (sections or {}).items():
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts += [f"<p>{esc(p.strip())}</p>" for p in str(text).split("\n\n") if p.strip()]
    if sessions is not None:
        counts = dict(sessions["status"].value_counts()) if "status" in sessions else {}
        order = ["included", "excluded", *sorted(set(counts) - {"included", "excluded"})]
        summary = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
        parts += ["<h2>Sessions</h2>", _table_html(f"Sessions ({summary or 'none'})", sessions,
                                                   text=True)]  # fmt: skip
    if tables:
        parts.append("<h2>Tables</h2>")
        parts += [_table_html(caption, df) for caption, df in tables.items()]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(caption, path) for caption, path in figures.items()]
    parts += _training_links(out_html, models_dir)
    if methods or methods_file:
        parts.append("<h2>Methods</h2>")
    if methods_file:
        href = Path(os.path.relpath(methods_file, Path(out_html).parent)).as_posix()
        link = esc(urllib.parse.quote(href), quote=True)
        parts.append(f'<p>Methods text to adapt for a paper: <a href="{link}">{esc(href)}</a>.</p>')
    if methods:
        parts.append(markdown_html(methods))
    parts.append("<h2>Notes</h2>")
    items = [f"<li>{esc(str(n))}</li>" for n in notes or ()]
    parts.append(f"<ul>{''.join(items)}</ul>" if items else "<p>None.</p>")
    if sessions is None:
        parts.append("<h2>Excluded sessions</h2>")
        pairs = list(excluded.items()) if isinstance(excluded, Mapping) else list(excluded or ())
        items = [f"<li><b>{esc(str(s))}</b>: {esc(str(r))}</li>" for s, r in pairs]
        parts.append(f"<ul>{''.join(items)}</ul>" if items else "<p>None.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}caption{font-weight:bold;"
             "text-align:left;padding:.3em 0}th,td{border:1px solid #bbb;padding:.25em .6em;"
             "text-align:right}th{background:#eee}td:first-child{text-align:left}"
             "img{max-width:100%}.meta{color:#555}figcaption{font-style:italic}"
             "table.text td{text-align:left}" + VERDICT_CSS)  # fmt: skip
    doc = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
           + "\n".join(parts) + "\n</body>\n</html>\n")  # fmt: skip
    return write_text(out_html, doc)
