"""HTML report of one HARP training: registration, voxels, band test, losses, scales.

:func:`write_train_report` turns a model card (the ``training`` block that the
train level records) plus optional in-memory arrays (registration overlays,
sampled scales) into one self-contained page: figures are drawn with the Agg
canvas, embedded as ``data:image/png;base64`` URIs, and the page needs no
external file, font or script.  Every section degrades to a sentence naming
what is missing, so cards written by older versions still get a report.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import bids_harmony
from bids_harmony.bids.io import write_text
from bids_harmony.evaluation.report import format_number

__all__ = ["MAX_VIEWS", "SECTIONS", "PairView", "ScaleSamples", "write_train_report"]

MAX_VIEWS = 12
"""Registration overlays drawn at most (the page stays readable and small)."""

SECTIONS = ("Registration", "Training voxels", "Per-band signal/noise test", "Loss curves",
            "Learned scales vs C00")  # fmt: skip
"""Section headings, in page order."""

_SCALE_PANEL = "Mean validation scale per band"
_MAX_POINTS = 5000  # scatter points per band; more only hides the density
_esc = html.escape


@dataclass(frozen=True)
class PairView:
    """Registration overlay of one phantom scan pair (2-D slices on the source grid).

    Attributes
    ----------
    label : str
        E.g. ``"sub-phantom01 acq-multishell: ses-GE1 -> ses-Prisma1"``.
    fixed : ndarray, shape (X, Y)
        Source contrast slice (mean diffusion attenuation, 0..1).
    moving_before, moving_after : ndarray, shape (X, Y)
        Target contrast resampled with the identity and with the found transform.
    selected : ndarray of bool, shape (X, Y), optional
        Training voxels of this slice (outlined).
    """

    label: str
    fixed: np.ndarray
    moving_before: np.ndarray
    moving_after: np.ndarray
    selected: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Fail at construction, where the caller's mistake is visible, not mid-report.
        shape = np.shape(self.fixed)
        if len(shape) != 2:
            raise ValueError(f"{self.label}: fixed must be 2-D; got shape {shape}")
        others = [self.moving_before, self.moving_after]
        others += [] if self.selected is None else [self.selected]
        if any(np.shape(a) != shape for a in others):
            raise ValueError(f"{self.label}: all slices must have the shape {shape}")


@dataclass(frozen=True)
class ScaleSamples:
    """Learned scales on (a sample of) the training voxels.

    Attributes
    ----------
    c00 : ndarray, shape (N,)
        Source C00.
    scales : ndarray, shape (N, n_bands)
        HARP scales per band (orders 0, 2, 4, ...).
    baseline : ndarray, shape (n_bands,), optional
        One global scale per band (a baseline).
    """

    c00: np.ndarray
    scales: np.ndarray
    baseline: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, shape = np.shape(self.c00), np.shape(self.scales)
        if len(n) != 1 or len(shape) != 2 or shape[0] != n[0]:
            raise ValueError(f"need c00 (N,) and scales (N, n_bands); got {n} and {shape}")
        if self.baseline is not None and np.shape(self.baseline) != (shape[1],):
            raise ValueError(f"baseline must have shape ({shape[1]},)")


def _floats(value: Any) -> np.ndarray:
    """1-D float array from a card list; ``null``/non-numbers become NaN."""
    if not isinstance(value, Sequence | np.ndarray) or isinstance(value, str):
        return np.empty(0)
    return np.array([_num(v) for v in value], dtype=float)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return math.nan
    return float(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _fmt(value: Any) -> str:
    return "n/a" if value is None else format_number(value)


def _png_uri(fig: Figure) -> str:
    """Render ``fig`` with Agg to an in-memory PNG data URI."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(fig: Figure, caption: str) -> str:
    return (f'<figure><img alt="{_esc(caption, quote=True)}" src="{_png_uri(fig)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")  # fmt: skip


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]],
           classes: Sequence[str] | None = None) -> str:  # fmt: skip
    """HTML table of already formatted cells (escaped here)."""
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _set_yscale(ax: Any, values: Sequence[np.ndarray]) -> None:
    # Noise-aware losses and band SNRs can be <= 0, which a log axis would drop silently.
    finite = np.concatenate([v[np.isfinite(v)] for v in values] or [np.empty(0)])
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    elif finite.size:
        ax.set_yscale("symlog", linthresh=max(float(np.abs(finite[finite != 0]).min(
            initial=1.0)), 1e-12))


def _header(card: Mapping[str, Any], training: Mapping[str, Any]) -> list[str]:
    source, target = card.get("source_site", "?"), card.get("target_site", "?")
    created = next((str(d[k]) for d in (card, training) for k in ("created", "date", "trained_at")
                    if d.get(k)), "not recorded")  # fmt: skip
    versions = card.get("software_versions")
    versions = (", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
                if isinstance(versions, Mapping) and versions else "not recorded")  # fmt: skip
    pairs = training.get("pairs")
    if isinstance(pairs, list):
        used = [_map(p) for p in pairs if not _map(p).get("excluded")]
        n_val = sum(p.get("role") == "validation" for p in used)
        verdict = (f"Trained on {len(used)} pair(s)" + (f" ({n_val} for validation)" if n_val
                   else "") + f", {len(pairs) - len(used)} excluded")  # fmt: skip
    else:
        verdict = "Training pairs not recorded"
    verdict += f"; validation loss {_fmt(training.get('final_validation_loss'))}"
    held = training.get("held_bands")
    if isinstance(held, list):
        verdict += "; bands held at 1: " + (", ".join(f"l={h}" for h in held) or "none")
    else:
        verdict += "; held bands not recorded"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [f"<h1>HARP training: {_esc(str(source))} → {_esc(str(target))}</h1>",
            f'<p class="verdict">{_esc(verdict)}.</p>',
            f'<p class="meta">Trained: {_esc(created)}. Software: {_esc(versions)}. '
            f"Report by bids_harmony {_esc(bids_harmony.__version__)} on {now}.</p>"]  # fmt: skip


def _registration(training: Mapping[str, Any], views: Sequence[PairView]) -> list[str]:
    parts = [f"<h2>{SECTIONS[0]}</h2>"]
    if isinstance(training.get("registration"), str):  # the method, in current cards
        parts.append(f"<p>Method: {_esc(training['registration'])}.</p>")
    pairs = [p for p in _list(training.get("pairs")) if isinstance(p, Mapping)]
    rows, classes = [], []
    for p in pairs:
        regs = _map(p.get("registration"))
        entries = [(k, _map(regs[k])) for k in ("target", "source_rescan") if _map(regs.get(k))]
        for what, reg in entries or [("target", {})]:
            scan = _map(p.get(what))
            status = "accepted" if reg.get("accepted", True) else f"rejected: {reg.get('reason')}"
            if p.get("excluded"):
                status = f"excluded: {p['excluded']}"
            translation = _floats(reg.get("translation_mm"))
            voxels = _map(p.get("voxels"))
            rows.append([
                str(p.get("phantom", "?")), str(p.get("protocol", "?")),
                _fmt(p.get("shell_bval")), str(p.get("role", "")),
                str(_map(p.get("source")).get("session", "?")),
                f"{what.replace('_', ' ')} ses-{scan.get('session', '?')}",
                f"{_fmt(reg.get('similarity_before'))} → {_fmt(reg.get('similarity_after'))}",
                ", ".join(f"{t:.2f}" for t in translation) if translation.size else "n/a",
                _fmt(reg.get("rotation_deg")),
                " / ".join(_fmt(voxels.get(k)) for k in ("selected", "train", "validation")),
                status])  # fmt: skip
            classes.append("excluded" if status != "accepted" else "")
    if rows:
        parts.append(_table(["Phantom", "Protocol", "Shell (s/mm²)", "Role", "Source session",
                             "Registered scan", "Similarity before → after",
                             "Translation (mm)", "Rotation (deg)",
                             "Voxels selected / train / validation", "Status"], rows, classes))
    else:
        parts.append(_missing("The card records no training pairs (older card)."))
    if not views:
        parts.append(_missing("No registration overlays were passed to the report."))
        return parts
    shown = list(views)[:MAX_VIEWS]
    caption = ("Per pair: source contrast with training voxels outlined (cyan); then source "
               "(red) over target (green) before and after registration, aligned = yellow")
    if len(views) > len(shown):
        caption += f"; first {len(shown)} of {len(views)} pairs"
    parts.append(_figure(_overlay_figure(shown), caption))
    return parts


def _unit(a: np.ndarray) -> np.ndarray:
    """Scale to 0..1 by the 99th percentile so contrasts of both scanners show alike."""
    a = np.nan_to_num(np.asarray(a, dtype=float), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.percentile(a, 99)) if a.size else 0.0
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


def _overlay_figure(views: Sequence[PairView]) -> Figure:
    per_row = 2  # two pairs (six panels) per row keeps panels legible on a page
    nrows = math.ceil(len(views) / per_row)
    fig = Figure(figsize=(11, 2.1 * nrows + 0.3), layout="constrained")
    axes = fig.subplots(nrows, 3 * per_row, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, v in enumerate(views):
        row, col = divmod(i, per_row)
        fixed = _unit(v.fixed)
        for j, (title, img) in enumerate((
            ("source", np.stack([fixed] * 3, -1)),
            ("before", np.stack([fixed, _unit(v.moving_before), np.zeros_like(fixed)], -1)),
            ("after", np.stack([fixed, _unit(v.moving_after), np.zeros_like(fixed)], -1)),
        )):  # fmt: skip
            ax = axes[row, 3 * col + j]
            ax.imshow(img.transpose(1, 0, 2), origin="lower", interpolation="nearest")
            label = v.label.replace("$", r"\$")  # a "$" would start matplotlib mathtext
            ax.set_title(f"{label}\n{title}" if j == 0 else title, fontsize=6)
            sel = None if v.selected is None else np.asarray(v.selected, dtype=bool)
            if sel is not None and j != 1 and sel.any() and not sel.all():
                ax.contour(sel.T.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    return fig


def _voxels(training: Mapping[str, Any]) -> list[str]:
    parts = [f"<h2>{SECTIONS[1]}</h2>"]
    sel = _map(training.get("voxel_selection"))
    facts = [f"{k.replace('_', ' ')} {sel[k]}" for k in ("rule", "c00_window", "erode") if k in sel]
    facts += [f"{label}: {training[k]}" for k, label in (("n_train_voxels", "training voxels"),
              ("n_validation_voxels", "validation voxels")) if k in training]  # fmt: skip
    if val := _map(training.get("validation")):
        facts.append("validation split: " + ", ".join(f"{k} {v}" for k, v in val.items()))
    if facts:
        parts.append(f"<p>{_esc('; '.join(facts))}.</p>")
    raw = _components(_map(sel.get("by_phantom")))
    rows = [[str(ph), str(c.get("component", "?")), _fmt(c.get("voxels")), _fmt(c.get("kept")),
             str(c.get("centroid_vox", "n/a"))] for ph, c in raw]  # fmt: skip
    if not rows:
        parts.append(_missing("The card records no per-phantom component counts (older card)."))
    else:
        parts.append(_table(["Phantom", "Component", "Voxels", "Kept", "Centroid (voxel)"], rows))
        fig = Figure(figsize=(min(11, 3 + 0.35 * len(rows)), 3.2), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(rows))
        for key, color, width in (("voxels", "#bbb", 0.8), ("kept", "#1f77b4", 0.5)):
            counts = np.nan_to_num([_num(c.get(key)) for _, c in raw])
            ax.bar(x, counts, width=width, color=color, label=key.replace("voxels", "in component"))
        ax.set_xticks(x, [f"{r[0]} #{r[1]}" for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("voxels")
        ax.legend(fontsize=8)
        parts.append(_figure(fig, "Training voxels per phantom component (vial/tube)"))
    return parts


def _components(by_phantom: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(phantom, component record) pairs from ``voxel_selection.by_phantom``."""
    out = []
    for phantom, info in by_phantom.items():
        out += [(str(phantom), c) for c in _list(_map(info).get("components")) if _map(c)]
    return out


def _bands(training: Mapping[str, Any]) -> list[str]:
    parts = [f"<h2>{SECTIONS[2]}</h2>"]
    snr, noise = _floats(training.get("band_snr")), _floats(training.get("noise_fraction"))
    n = max(snr.size, noise.size)
    if not n:
        parts.append(_missing("The card records no per-band signal/noise test (older card, "
                              "or trained without a source rescan)."))  # fmt: skip
        return parts
    snr, noise = (np.pad(a, (0, n - a.size), constant_values=np.nan) for a in (snr, noise))
    orders = 2 * np.arange(n)
    held = {_num(h) for h in _list(training.get("held_bands"))}
    threshold = _num(_map(training.get("recipe")).get("min_band_snr"))
    parts.append(_table(["Order l", "Band SNR", "Noise share", "Scale"],
                        [[str(o), _fmt(s), _fmt(f), "held at 1" if o in held else "learned"]
                         for o, s, f in zip(orders, snr, noise, strict=True)]))  # fmt: skip
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    colors = ["#999" if o in held else "#1f77b4" for o in orders]
    ax1.bar(orders, np.nan_to_num(snr), width=1.4, color=colors)
    _set_yscale(ax1, [snr])
    if math.isfinite(threshold):
        ax1.axhline(threshold, color="#d62728", ls="--", label=f"threshold {threshold:g}")
        ax1.legend(fontsize=8)
    ticks = [f"{o}\nheld" if o in held else str(o) for o in orders]
    ax1.set_xticks(orders, ticks)
    ax1.set(xlabel="SH order l", ylabel="noise-corrected power / SE",
            title="Band signal/noise test (grey: held at 1)")  # fmt: skip
    ax2.bar(orders, np.nan_to_num(noise), width=1.4, color=colors)
    ax2.set_xticks(orders, ticks)
    ax2.set(ylim=(0, 1), xlabel="SH order l", ylabel="noise share of power",
            title="Noise share per band")  # fmt: skip
    parts.append(_figure(fig, "Per-band signal/noise test and noise share"))
    return parts


def _losses(training: Mapping[str, Any]) -> list[str]:
    parts = [f"<h2>{SECTIONS[3]}</h2>"]
    hist = _map(training.get("history"))
    curves = {k: _floats(v) for k, v in hist.items() if k != "iteration"}
    totals = {k: curves[k] for k in ("train_total", "val_total") if k in curves and curves[k].size}
    if not totals:
        parts.append(_missing("The card records no training history (older card)."))
        return parts
    it = _floats(hist.get("iteration"))
    bands = sorted({int(m[2]) for k in curves if (m := re.fullmatch(r"(train|val)_l(\d+)", k))})
    scales = sorted(int(m[1]) for k in curves if (m := re.fullmatch(r"val_scale_l(\d+)", k)))
    panels = [("Total objective (dashed: validation)", totals)]
    panels += [("Objective per band (solid train, dashed validation)",
                {f"{s}_l{b}": curves[f"{s}_l{b}"] for b in bands for s in ("train", "val")
                 if f"{s}_l{b}" in curves})] if bands else []  # fmt: skip
    panels += [(_SCALE_PANEL, {f"val_scale_l{b}": curves[f"val_scale_l{b}"] for b in scales})
               ] if scales else []  # fmt: skip
    fig = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
    for ax, (title, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels,
                                  strict=True):  # fmt: skip
        for name, y in lines.items():
            x = it if it.size == y.size else np.arange(1, y.size + 1)
            b = re.search(r"_l(\d+)$", name)
            color = f"C{int(b[1]) // 2}" if b else None
            dashed = name.startswith("val_") and title != _SCALE_PANEL
            ax.plot(x, y, ls="--" if dashed else "-", color=color,
                    label=name.replace("val_scale_", ""))  # fmt: skip
        if title == _SCALE_PANEL:
            ax.axhline(1.0, color="k", lw=0.6)
        else:
            _set_yscale(ax, list(lines.values()))
        ax.set(title=title, xlabel="iteration")
        ax.legend(fontsize=6, ncol=2)
        ax.title.set_fontsize(8)
    if not scales:
        parts.append(_missing("No per-band validation scales in the history."))
    parts.append(_figure(fig, "Training and validation loss; mean validation scale per band"))
    return parts


def _scales(training: Mapping[str, Any], samples: ScaleSamples | None) -> list[str]:
    parts = [f"<h2>{SECTIONS[4]}</h2>"]
    if samples is None:
        parts.append(_missing("No scale samples were passed to the report."))
        return parts
    c00 = np.asarray(samples.c00, dtype=float)
    scales = np.asarray(samples.scales, dtype=float)
    baseline = (_floats(training.get("baseline_scales")) if samples.baseline is None
                else np.asarray(samples.baseline, dtype=float))  # fmt: skip
    total = c00.size
    if c00.size > _MAX_POINTS:  # a fixed-seed subsample keeps the page small and reproducible
        keep = np.sort(np.random.default_rng(0).choice(c00.size, _MAX_POINTS, replace=False))
        c00, scales = c00[keep], scales[keep]
    n = scales.shape[1]
    if not n or not total:
        parts.append(_missing("The scale samples are empty."))
        return parts
    held = {_num(h) for h in _list(training.get("held_bands"))}
    fig = Figure(figsize=(min(11, 2.4 * n + 0.5), 2.8), layout="constrained")
    for b, ax in enumerate(fig.subplots(1, n, squeeze=False)[0]):
        ax.scatter(c00, scales[:, b], s=3, alpha=0.4, color=f"C{b}", rasterized=True)
        ax.axhline(1.0, color="#888", lw=0.5)
        if b < baseline.size and math.isfinite(baseline[b]):
            ax.axhline(baseline[b], color="k", ls="--", label=f"baseline {baseline[b]:.3g}")
            ax.legend(fontsize=6)
        ax.set(xlabel="source C00", title=f"l={2 * b}" + (" (held)" if 2 * b in held else ""))
        ax.set_ylabel("scale" if b == 0 else "")
    caption = f"Learned scale vs source C00 on {c00.size} of {total} sampled training voxels"
    if not baseline.size:
        parts.append(_missing("No baseline global scales recorded."))
    parts.append(_figure(fig, caption + "; dashed: global baseline scale"))
    return parts


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid "
          "#bbb;padding:.2em .5em;text-align:right}th{background:#eee}td:first-child"
          "{text-align:left}tr.excluded{background:#fdd}img{max-width:100%}.meta{color:#555}"
          ".verdict{font-weight:bold}.missing{color:#a35d00;font-style:italic}"
          "figcaption{font-style:italic}")  # fmt: skip


def write_train_report(
    path: str | os.PathLike[str],
    card: Mapping[str, object],
    views: Sequence[PairView] = (),
    samples: ScaleSamples | None = None,
) -> Path:
    """Write one self-contained HTML page to check a HARP training.

    Parameters
    ----------
    path : path
        Output ``.html`` (e.g. ``OUT/models/harp_src-GE_tgt-Prisma.html``); written
        atomically, so an existing report is replaced only once the new page is complete.
    card : mapping
        The model card; its ``training`` block supplies pairs, registration quality,
        voxel counts, the band test, loss history and baseline scales.  Any key may
        be missing: its section then says so.
    views : sequence of PairView
        Registration overlays; the first :data:`MAX_VIEWS` are drawn.
    samples : ScaleSamples, optional
        Learned scales vs source C00 on training voxels.

    Returns
    -------
    Path
        ``path``.
    """
    training = _map(card.get("training"))
    title = f"HARP training {card.get('source_site', '?')} → {card.get('target_site', '?')}"
    parts = [*_header(card, training), *_registration(training, views), *_voxels(training),
             *_bands(training), *_losses(training), *_scales(training, samples)]  # fmt: skip
    doc = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
           f"<title>{_esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
           + "\n".join(parts) + "\n</body>\n</html>\n")  # fmt: skip
    return write_text(path, doc)
