"""Group-level figures: standard-error maps (HARP Figure 2) and ROI box plots (Figures 3-4).

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas
(no pyplot global state, no display needed, safe from threads), rendered to
memory and written atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bids_harmony.bids.io import atomic_path
from bids_harmony.evaluation.evaluated import EVALUATED_METHODS, condition
from bids_harmony.evaluation.tables import CONDITIONS, METRICS, condition_key

__all__ = [
    "CONDITION_COLORS",
    "DISPLAY_SCALE",
    "bracket_levels",
    "map_slices",
    "roi_boxplot_figure",
    "standard_error_figure",
]

CONDITION_COLORS: dict[str, str] = {
    "sr_source": "#d62728", "sr_target": "#e6b800", "inter_none": "#1f77b4",
    **{condition(m.name): m.colour for m in EVALUATED_METHODS},
}  # fmt: skip
"""Box colours as in the paper: red, gold, blue; HARP purple, LinearRISH green (each method's
colour is in :data:`bids_harmony.evaluation.evaluated.EVALUATED_METHODS`; ComBat orange)."""

DISPLAY_SCALE: dict[str, tuple[float, str]] = {
    "FA": (1e3, "×10⁻³"), "GFA": (1e3, "×10⁻³"), "MD": (1e6, "×10⁻⁶ mm²/s"),
}  # fmt: skip
"""Factor and unit label used to display standard errors (as in the paper's tables)."""

_LABELS = dict(CONDITIONS)
_LABEL_BOX = {"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0}  # legible over the map


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


def _slice_counts(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """Finite voxels per axial slice over ``volumes`` (which must agree in axial size)."""
    nz = volumes[0].shape[2]
    counts = np.zeros(nz)
    for v in volumes:
        if v.shape[2] != nz:
            raise ValueError(f"maps differ in axial size: {v.shape} vs {volumes[0].shape}")
        counts += np.isfinite(v).sum(axis=(0, 1))
    return counts


def map_slices(volumes: Sequence[np.ndarray], n: int = 3) -> list[int]:
    """Axial slices to show: ``n`` spread evenly over the slices that hold brain.

    Parameters
    ----------
    volumes : sequence of ndarray, shape (X, Y, Z)
        Maps with NaN outside the brain.
    n : int
        Number of slices; 1 gives the slice with most finite voxels (ties: the
        one nearest the middle).

    Returns
    -------
    list of int
        Increasing, at the fractions 1/(n+1), ..., n/(n+1) of the brain's axial
        extent (every slice of a brain at most ``n`` slices thick).

    >>> v = np.full((2, 2, 20), np.nan)
    >>> v[..., 4:17] = 1.0
    >>> map_slices([v]), map_slices([v], n=1)
    ([7, 10, 13], [9])
    """
    counts = _slice_counts(volumes)
    nz = counts.size
    if n == 1:
        best = np.flatnonzero(counts == counts.max())
        return [int(best[np.argmin(np.abs(best - (nz - 1) / 2))])]
    inside = np.flatnonzero(counts > 0)
    lo, hi = (int(inside[0]), int(inside[-1])) if inside.size else (0, nz - 1)
    if hi - lo + 1 <= n:  # a thin brain: all its slices
        return list(range(lo, hi + 1))
    picks = [math.floor(lo + (hi - lo) * (k + 1) / (n + 1) + 0.5) for k in range(n)]
    return sorted(set(picks))


def standard_error_figure(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    out_png: str | os.PathLike[str],
    *,
    slice_index: int | Sequence[int] | None = None,
    n_slices: int = 3,
    titles: Mapping[str, str] | None = None,
) -> Path:
    """Grid of voxel-wise standard-error maps at several axial slices, like HARP Figure 2.

    Parameters
    ----------
    maps : mapping
        ``{metric: {condition: 3-D array}}`` in template space, NaN outside the brain.
        Rows are metrics (FA, MD, GFA first), one per slice; columns the
        conditions present in any metric (SR source, SR target, No harmonization,
        then the methods: HARP, LinearRISH, ComBat).
    out_png : path
        Output PNG, written atomically.
    slice_index : int or sequence of int, optional
        Axial (third-axis) slice(s); default :func:`map_slices` with ``n_slices``.
    n_slices : int
        Number of slices when ``slice_index`` is not given.
    titles : mapping, optional
        Column titles by condition key or label, replacing the default labels.

    Returns
    -------
    Path
        ``out_png``.  The rows of a metric share a colour scale from 0 to the
        99th percentile of the finite values of its maps, with one colour bar, in
        the display units of :data:`DISPLAY_SCALE` (FA/GFA ×10⁻³, MD ×10⁻⁶ mm²/s).
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
    if slice_index is None:
        zs = map_slices(volumes, n_slices)
    else:
        zs = [int(slice_index)] if np.isscalar(slice_index) else [int(z) for z in slice_index]
    _slice_counts(volumes)  # the axial sizes must agree

    n_rows = len(rows) * len(zs)
    fig = Figure(figsize=(1.9 * len(cols) + 1.2, 1.9 * n_rows + 0.4), layout="constrained")
    axes = fig.subplots(n_rows, len(cols), squeeze=False)
    for i, (metric, r) in enumerate(rows.items()):
        scale, unit = DISPLAY_SCALE.get(metric, (1.0, ""))
        r = {key: v * scale for key, v in r.items()}
        finite = np.concatenate([v[np.isfinite(v)] for v in r.values()])
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
        vmax = vmax if math.isfinite(vmax) and vmax > 0 else 1.0
        image = None
        metric_axes = axes[i * len(zs) : (i + 1) * len(zs)]
        for row_axes, z in zip(metric_axes, zs, strict=True):
            for j, key in enumerate(cols):
                ax = row_axes[j]
                ax.set_xticks([])
                ax.set_yticks([])
                if ax is axes[0, j]:
                    ax.set_title(col_titles[key], fontsize=9)
                if j == 0:  # inside the panel: a y-label is clipped next to equal-aspect images
                    ax.text(0.03, 0.97, f"{metric}\nz = {z}", transform=ax.transAxes,
                            color="white", fontsize=9, fontweight="bold", va="top",
                            ha="left", zorder=3, bbox=_LABEL_BOX)  # fmt: skip
                if key not in r:
                    ax.set_axis_off()
                    continue
                sl = np.ma.masked_invalid(r[key][:, :, z].T)
                image = ax.imshow(sl, origin="lower", cmap="viridis", vmin=0.0, vmax=vmax,
                                  interpolation="nearest")  # fmt: skip
                ax.set_facecolor("black")
        label = f"σₑ {metric} [{unit}]" if unit else f"σₑ {metric}"
        fig.colorbar(image, ax=list(metric_axes.ravel()), shrink=0.9, label=label)
    where = f"axial slice {zs[0]}" if len(zs) == 1 else f"axial slices {', '.join(map(str, zs))}"
    fig.suptitle(f"Standard error σₑ, {where}", fontsize=10)
    return _save_png(fig, out_png, dpi=110)


def _stars(p: float) -> str:
    if not math.isfinite(p) or p >= 0.05:
        return "n.s."
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


def bracket_levels(spans: Sequence[tuple[float, float]]) -> list[int]:
    """Stacking level (1 = lowest) of each significance bracket, so that none overlap.

    Brackets are placed narrowest first, each on the lowest level where it
    neither overlaps nor touches a bracket already there (two brackets that share
    a box would otherwise meet at its tick).

    Parameters
    ----------
    spans : sequence of (x0, x1)
        Horizontal extent of each bracket (box positions).

    Returns
    -------
    list of int
        The level of each bracket, in the order given.

    >>> bracket_levels([(3, 5), (3, 4), (4, 5), (1, 2)])
    [3, 1, 2, 1]
    """
    order = sorted(range(len(spans)), key=lambda i: (abs(spans[i][1] - spans[i][0]), spans[i]))
    placed: dict[int, list[tuple[float, float]]] = {}
    levels = [0] * len(spans)
    for i in order:
        x0, x1 = sorted(spans[i])
        level = 1
        while any(x0 <= b1 and b0 <= x1 for b0, b1 in placed.get(level, [])):
            level += 1
        placed.setdefault(level, []).append((x0, x1))
        levels[i] = level
    return levels


def _brackets(
    sig: Mapping[tuple[str, str, str], float], metric: str, pos: Mapping[str, int], show_ns: bool
) -> list[tuple[float, float, float, int]]:
    """``(x0, x1, p, level)`` of the brackets drawn on one metric's axes."""
    kept = [(min(pos[a], pos[b]), max(pos[a], pos[b]), p) for (m, a, b), p in sig.items()
            if m == metric and a in pos and b in pos and (p < 0.05 or show_ns)]  # fmt: skip
    levels = bracket_levels([(x0, x1) for x0, x1, _ in kept])
    return [(x0, x1, p, level) for (x0, x1, p), level in zip(kept, levels, strict=True)]


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
    sig = {(m, condition_key(a), condition_key(b)): float(p)
           for (m, a, b), p in (significance or {}).items()}  # fmt: skip
    data: dict[str, dict[str, np.ndarray]] = {}
    for metric in metrics:
        scale = DISPLAY_SCALE.get(metric, (1.0, ""))[0]
        data[metric] = {}
        for key, v in _by_condition(roi_values[metric]).items():
            arr = np.asarray(v, dtype=float).ravel()
            data[metric][key] = arr[np.isfinite(arr)] * scale
    brackets = {
        m: _brackets(sig, m, {k: i + 1 for i, k in enumerate(d) if d[k].size}, show_ns)
        for m, d in data.items()
    }
    n_levels = max((lv for b in brackets.values() for *_, lv in b), default=0)
    # Each level gets ~0.2 in of height, enough for its stars above its line: the
    # figure grows with the levels, and a level's share of the axes is set from that.
    fig = Figure(figsize=(3.2 * len(metrics) + 0.5, 3.6 + 0.2 * n_levels), layout="constrained")
    step = 0.2 / (2.0 + 0.2 * n_levels)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    present: set[str] = set()
    for ax, metric in zip(axes, metrics, strict=True):
        unit = DISPLAY_SCALE.get(metric, (1.0, ""))[1]
        pos = {key: i + 1 for i, key in enumerate(data[metric])}
        drawn = {k: v for k, v in data[metric].items() if v.size}
        if drawn:
            bp = ax.boxplot(list(drawn.values()), positions=[pos[k] for k in drawn],
                            widths=0.6, patch_artist=True)  # fmt: skip
            for patch, key in zip(bp["boxes"], drawn, strict=True):
                patch.set_facecolor(CONDITION_COLORS[key])
                patch.set_alpha(0.85)
            for med in bp["medians"]:
                med.set_color("black")
        present.update(data[metric])
        ax.set_xticks(list(pos.values()), [_LABELS[k] for k in pos], rotation=40, ha="right",
                      fontsize=8)  # fmt: skip
        ax.set_xlim(0.4, len(pos) + 0.6)
        ax.set_title(metric)
        ax.set_ylabel(f"σₑ [{unit}]" if unit else "σₑ")
        levels = max((lv for *_, lv in brackets[metric]), default=0)
        if not levels:
            continue
        bottom, data_top = ax.get_ylim()
        height = (data_top - bottom) / (1.0 - levels * step - 0.04)  # axes range with brackets
        for x0, x1, p, level in brackets[metric]:
            y = data_top + ((level - 1) * step + 0.025) * height
            tip = 0.012 * height
            ax.plot([x0, x0, x1, x1], [y - tip, y, y, y - tip], color="k", lw=0.8)
            ax.text((x0 + x1) / 2, y, _stars(p), ha="center", va="bottom", fontsize=8)
        ax.set_ylim(bottom, bottom + height)
    handles = [Patch(facecolor=CONDITION_COLORS[k], label=_LABELS[k]) for k, _ in CONDITIONS
               if k in present]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(f"ROI-wise standard error, {tissue}", fontsize=10)
    return _save_png(fig, out_png, dpi=110)
