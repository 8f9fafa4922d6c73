"""Group-level figures (HARP Figures 2-4) and a self-contained HTML report.

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas
(no pyplot global state, no display needed, safe from threads), rendered to
memory and written atomically.  The HTML report embeds the figures as
``data:image/png;base64`` URIs and uses no external resources.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

import bids_harmony
from bids_harmony.bids.io import atomic_path, write_text
from bids_harmony.evaluation.tables import CONDITIONS, METRICS, PCT_COLUMNS, condition_key

__all__ = [
    "CONDITION_COLORS",
    "DISPLAY_SCALE",
    "format_number",
    "markdown_html",
    "roi_boxplot_figure",
    "standard_error_figure",
    "write_html_report",
]

CONDITION_COLORS: dict[str, str] = {
    "sr_source": "#d62728", "sr_target": "#e6b800", "inter_none": "#1f77b4",
    "inter_rish": "#2ca02c", "inter_harp": "#9467bd",
}  # fmt: skip
"""Box colours as in the paper: red, gold, blue, green, purple."""

DISPLAY_SCALE: dict[str, tuple[float, str]] = {
    "FA": (1e3, "×10⁻³"), "GFA": (1e3, "×10⁻³"), "MD": (1e6, "×10⁻⁶ mm²/s"),
}  # fmt: skip
"""Factor and unit label used to display standard errors (as in the paper's tables)."""

_LABELS = dict(CONDITIONS)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _save_png(fig: Figure, out_png: str | os.PathLike[str], dpi: int) -> Path:
    """Render ``fig`` to memory with Agg and write the PNG atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(out_png)


def _metric_order(names: Any) -> list[str]:
    names = list(names)
    return [m for m in METRICS if m in names] + [m for m in names if m not in METRICS]


def _by_condition(per_metric: Mapping[str, Any]) -> dict[str, Any]:
    """Re-key a ``{condition: value}`` mapping by condition key, in table order."""
    given = {condition_key(c): v for c, v in per_metric.items() if v is not None}
    return {key: given[key] for key, _ in CONDITIONS if key in given}


def _best_slice(volumes: Sequence[np.ndarray]) -> int:
    """Axial slice with the most finite voxels over ``volumes``; ties go to the middle."""
    nz = volumes[0].shape[2]
    counts = np.zeros(nz)
    for v in volumes:
        if v.shape[2] != nz:
            raise ValueError(f"maps differ in axial size: {v.shape} vs {volumes[0].shape}")
        counts += np.isfinite(v).sum(axis=(0, 1))
    best = np.flatnonzero(counts == counts.max())
    return int(best[np.argmin(np.abs(best - (nz - 1) / 2))])


def standard_error_figure(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    out_png: str | os.PathLike[str],
    *,
    slice_index: int | None = None,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """Grid of voxel-wise standard-error maps, like HARP Figure 2.

    Parameters
    ----------
    maps : mapping
        ``{metric: {condition: 3-D array}}`` in template space, NaN outside the brain.
        Rows are metrics (FA, MD, GFA first); columns the conditions present in any
        metric (SR source, SR target, No harmonization, LinearRISH, HARP).
    out_png : path
        Output PNG, written atomically.
    slice_index : int, optional
        Axial (third-axis) slice; default the slice with most finite voxels
        over all maps (the one nearest the middle on ties).
    titles : mapping, optional
        Column titles by condition key or label, replacing the default labels.

    Returns
    -------
    Path
        ``out_png``.  Each row shares a colour scale from 0 to the 99th
        percentile of the finite values of its maps, with one colour bar, in the
        display units of :data:`DISPLAY_SCALE` (FA/GFA ×10⁻³, MD ×10⁻⁶ mm²/s).
    """
    rows = {m: _by_condition(maps[m]) for m in _metric_order(maps)}
    rows = {m: {c: np.asarray(v, dtype=float) for c, v in r.items()} for m, r in rows.items() if r}
    if not rows:
        raise ValueError("no maps to draw")
    for m, r in rows.items():
        for c, v in r.items():
            if v.ndim != 3:
                raise ValueError(f"map {m}/{c} must be 3-D; got shape {v.shape}")
    cols = [key for key, _ in CONDITIONS if any(key in r for r in rows.values())]
    col_titles = {key: _LABELS[key] for key in cols}
    col_titles.update({condition_key(k): str(t) for k, t in (titles or {}).items()})
    volumes = [v for r in rows.values() for v in r.values()]
    z = _best_slice(volumes) if slice_index is None else int(slice_index)

    fig = Figure(figsize=(2.2 * len(cols) + 1.2, 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, (metric, r) in enumerate(rows.items()):
        scale, unit = DISPLAY_SCALE.get(metric, (1.0, ""))
        r = {key: v * scale for key, v in r.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in r.values()])
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        vmax = vmax if math.isfinite(vmax) and vmax > 0 else 1.0
        image = None
        for j, key in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_titles[key], fontsize=9)
            if j == 0:  # inside the panel: a y-label is clipped next to equal-aspect images
                ax.text(0.03, 0.97, metric, transform=ax.transAxes, color="white",
                        fontsize=10, fontweight="bold", va="top", ha="left")  # fmt: skip
            if key not in r:
                ax.set_axis_off()
                continue
            sl = np.ma.masked_invalid(r[key][:, :, z].T)
            image = ax.imshow(sl, origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                              interpolation="nearest")  # fmt: skip
            ax.set_facecolor("black")
        label = f"σₑ {metric} [{unit}]" if unit else f"σₑ {metric}"
        fig.colorbar(image, ax=list(axes[i, :]), shrink=0.9, label=label)
    fig.suptitle(f"Standard error σₑ, axial slice {z}", fontsize=10)
    return _save_png(fig, out_png, dpi=110)


def _stars(p: float) -> str:
    if not math.isfinite(p) or p >= 0.05:
        return "n.s."
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


def roi_boxplot_figure(
    roi_values: Mapping[str, Mapping[str, np.ndarray]],
    out_png: str | os.PathLike[str],
    *,
    tissue: str,
    significance: Mapping[tuple[str, str, str], float] | None = None,
    show_ns: bool = False,
) -> Path:
    """Box plots of per-ROI standard errors per metric, like HARP Figures 3-4.

    Parameters
    ----------
    roi_values : mapping
        ``{metric: {condition: 1-D array of per-ROI standard errors}}``;
        non-finite values are ignored.  Values are shown in the display units of
        :data:`DISPLAY_SCALE` (FA/GFA ×10⁻³, MD ×10⁻⁶ mm²/s).
    out_png : path
        Output PNG, written atomically.
    tissue : str
        Tissue label for the title (e.g. ``"WM"``).
    significance : mapping, optional
        ``{(metric, condition_a, condition_b): pvalue}``; a bracket with
        ``*``/``**``/``***`` (p < .05/.01/.001) is drawn above the boxes.
    show_ns : bool
        Also draw brackets marked ``n.s.`` for p ≥ .05.

    Returns
    -------
    Path
        ``out_png``.
    """
    metrics = [m for m in _metric_order(roi_values) if _by_condition(roi_values[m])]
    if not metrics:
        raise ValueError("no ROI values to draw")
    fig = Figure(figsize=(3.2 * len(metrics) + 0.5, 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    sig = {(m, condition_key(a), condition_key(b)): float(p)
           for (m, a, b), p in (significance or {}).items()}  # fmt: skip
    present: set[str] = set()
    for ax, metric in zip(axes, metrics, strict=True):
        scale, unit = DISPLAY_SCALE.get(metric, (1.0, ""))
        data = {}
        for key, v in _by_condition(roi_values[metric]).items():
            arr = np.asarray(v, dtype=float).ravel()
            data[key] = arr[np.isfinite(arr)] * scale
        pos = {key: i + 1 for i, key in enumerate(data)}
        drawn = {k: v for k, v in data.items() if v.size}
        if drawn:
            bp = ax.boxplot(list(drawn.values()), positions=[pos[k] for k in drawn],
                            widths=0.6, patch_artist=True)  # fmt: skip
            for patch, key in zip(bp["boxes"], drawn, strict=True):
                patch.set_facecolor(CONDITION_COLORS[key])
                patch.set_alpha(0.85)
            for med in bp["medians"]:
                med.set_color("black")
        present.update(data)
        ax.set_xticks(list(pos.values()), [_LABELS[k] for k in pos], rotation=40, ha="right",
                      fontsize=8)  # fmt: skip
        ax.set_xlim(0.4, len(pos) + 0.6)
        ax.set_title(metric)
        ax.set_ylabel(f"σₑ [{unit}]" if unit else "σₑ")
        values = np.concatenate(list(drawn.values())) if drawn else np.array([0.0, 1.0])
        top, span = float(values.max()), float(np.ptp(values)) or 1.0
        level = 0
        for (m, a, b), p in sig.items():
            if m != metric or a not in drawn or b not in drawn or (p >= 0.05 and not show_ns):
                continue
            level += 1
            y = top + span * 0.08 * level
            x0, x1 = sorted((pos[a], pos[b]))
            ax.plot([x0, x0, x1, x1], [y - span * 0.02, y, y, y - span * 0.02], color="k", lw=0.8)
            ax.text((x0 + x1) / 2, y, _stars(p), ha="center", va="bottom", fontsize=8)
        if level:
            ax.set_ylim(top=top + span * 0.08 * (level + 1.2))
    handles = [Patch(facecolor=CONDITION_COLORS[k], label=_LABELS[k]) for k, _ in CONDITIONS
               if k in present]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"ROI-wise standard error, {tissue}", fontsize=10)
    return _save_png(fig, out_png, dpi=110)


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
}  # fmt: skip


def _table_html(caption: str, df: pd.DataFrame) -> str:
    """HTML table; σₑ columns scaled per metric and shown as mean ± SD (pct %)."""
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
                text = f"{metric} [{unit}]" if unit else metric
            elif c in _LABELS or c == "mean_difference":
                num = pd.to_numeric(v, errors="coerce")
                text = format_number(float(num) * scale if pd.notna(num) else math.nan)
                sd = row.get(f"{c}_sd") if f"{c}_sd" in merged else None
                if sd is not None and pd.notna(sd):
                    text += f" ± {format_number(float(sd) * scale)}"
                pct_col = PCT_COLUMNS.get(c, "")
                pct = row.get(pct_col) if pct_col in merged else None
                if pct is not None and pd.notna(pct):
                    text += f" ({format_number(float(pct))}%)"
            else:
                text = format_number(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table>\n<caption>{html.escape(caption)}</caption>\n<thead><tr>{head}</tr></thead>'
            f"\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>")  # fmt: skip


def _figure_html(caption: str, path: str | os.PathLike[str]) -> str:
    data = Path(path).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"not a PNG file: {path}")
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure>\n<img alt="{html.escape(caption, quote=True)}" '
            f'src="data:image/png;base64,{b64}">\n'
            f"<figcaption>{html.escape(caption)}</figcaption>\n</figure>")  # fmt: skip


_HOW_TO_READ = (
    "The standard error σₑ (HARP Eq. 2) is the pooled within-subject standard deviation of "
    "a metric. Scan-rescan σₑ (two sessions at one site; SR source, SR target) is the "
    "variability that remains without any scanner change and is the floor harmonization can "
    "hope to reach. Inter-scanner σₑ (two sessions at each of the two sites) is reported "
    "without harmonization, after LinearRISH and after HARP; lower is better. The percentage "
    "in parentheses is (σ_inter − max(σ_sr,source, σ_sr,target)) / max(…) × 100: values near "
    "0% mean the inter-scanner variability is as low as the scan-rescan variability. Tables "
    "show σₑ scaled for readability: FA and GFA ×10⁻³ (dimensionless), MD ×10⁻⁶ mm²/s; "
    "whole-brain values exclude CSF; ROI values are mean ± SD over ROIs. Angular errors "
    "(degrees) compare principal CSD peaks of source and harmonized data in white matter. "
    "The maps compared are the participant outputs without desc (no harmonization), with "
    "desc-harp (HARP) and with desc-rish (LinearRISH, written by this group level)."
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
        m = re.fullmatch(r"harp_src-(.+)_tgt-(.+)", page.stem)
        label = f"{m[1]} → {m[2]}" if m else page.stem
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
        Excluded sessions ``{session: reason}``; listed (or "None") in the report.
    models_dir : path, optional
        Folder of the HARP models (``OUT/models``); its ``*.html`` training reports
        are linked, relative to ``out_html``, under "HARP training".
    methods : str, optional
        The methods text (Markdown of ``OUT/logs/CITATION.md``), shown under
        "Methods" (:func:`markdown_html`).

    Returns
    -------
    Path
        ``out_html``.  All text is escaped with :func:`html.escape`.
    """
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>",
             f'<p class="meta">bids_harmony {esc(bids_harmony.__version__)} — '
             f"{esc(bids_harmony.CODE_URL)}</p>",
             "<h2>How to read this</h2>", f"<p>{esc(_HOW_TO_READ)}</p>"]  # fmt: skip
    for heading, text in (sections or {}).items():
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts += [f"<p>{esc(p.strip())}</p>" for p in str(text).split("\n\n") if p.strip()]
    if tables:
        parts.append("<h2>Tables</h2>")
        parts += [_table_html(caption, df) for caption, df in tables.items()]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(caption, path) for caption, path in figures.items()]
    parts += _training_links(out_html, models_dir)
    if methods:
        parts += ["<h2>Methods</h2>", markdown_html(methods)]
    parts.append("<h2>Notes</h2>")
    items = [f"<li>{esc(str(n))}</li>" for n in notes or ()]
    parts.append(f"<ul>{''.join(items)}</ul>" if items else "<p>None.</p>")
    parts.append("<h2>Excluded sessions</h2>")
    pairs = list(excluded.items()) if isinstance(excluded, Mapping) else list(excluded or ())
    items = [f"<li><b>{esc(str(s))}</b>: {esc(str(r))}</li>" for s, r in pairs]
    parts.append(f"<ul>{''.join(items)}</ul>" if items else "<p>None.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}caption{font-weight:bold;"
             "text-align:left;padding:.3em 0}th,td{border:1px solid #bbb;padding:.25em .6em;"
             "text-align:right}th{background:#eee}td:first-child{text-align:left}"
             "img{max-width:100%}.meta{color:#555}figcaption{font-style:italic}")  # fmt: skip
    doc = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
           + "\n".join(parts) + "\n</body>\n</html>\n")  # fmt: skip
    return write_text(out_html, doc)
