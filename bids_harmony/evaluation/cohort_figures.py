"""Figures of the cohort checks of :mod:`.cohort`: site-effect p-values, site
classification accuracy, and covariate slopes, before and after harmonization.

As in :mod:`.figures`: drawn on a :class:`matplotlib.figure.Figure` with the Agg
canvas (no pyplot state), written atomically as PNG.  Conditions are named by the
caller (``"No harmonization"``, ``"ComBat"``, ...); those of :data:`.tables.CONDITIONS`
get their colours of :data:`.figures.CONDITION_COLORS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from bids_harmony.evaluation.figures import CONDITION_COLORS, _save_png
from bids_harmony.evaluation.tables import condition_key

__all__ = ["classifier_accuracy_figure", "pvalue_histogram_figure", "slope_figure"]

_BEFORE_COLOR = CONDITION_COLORS["inter_none"]
_METHOD_COLORS = {"combat": "#ff7f0e", "combat-gam": "#8c564b", "combat_gam": "#8c564b",
                  "before": _BEFORE_COLOR, "unharmonized": _BEFORE_COLOR}  # fmt: skip
_OTHER_COLORS = ("#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939")
_MAX_POINTS = 5000  # scatter points drawn per condition (an even subsample beyond)


def _colors(names: list[str]) -> dict[str, str]:
    """Colour of each condition: its paper colour (:data:`.figures.CONDITION_COLORS`) or
    ComBat's orange when it has one, else the next of a spare palette."""
    out, spare = {}, iter(_OTHER_COLORS * (1 + len(names) // len(_OTHER_COLORS)))
    for name in names:
        try:
            out[name] = CONDITION_COLORS[condition_key(name)]
        except KeyError:
            out[name] = _METHOD_COLORS.get(name.strip().lower()) or next(spare)
    return out


def _finite(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def pvalue_histogram_figure(
    p_before: ArrayLike,
    p_after: Mapping[str, ArrayLike],
    out_png: str | os.PathLike[str],
    *,
    alpha: float = 0.05,
    bins: int = 20,
    title: str = "Site effect per feature (F-test)",
) -> Path:
    """Histograms of the per-feature site-effect p-values, before and after each method.

    One panel per method: the p-values before harmonization (grey outline) and after
    (filled), as densities, with the uniform density 1 expected without a site effect
    and the level ``alpha`` marked; the legend gives the fraction below ``alpha``.

    Parameters
    ----------
    p_before : array_like, shape (n_features,)
        From :func:`.cohort.site_effect_pvalues` on the unharmonized data.
    p_after : mapping
        ``{method: p-values after it}``.
    out_png : path
    alpha, bins, title
        Level marked, number of bins on [0, 1], figure title.

    Returns
    -------
    Path
        ``out_png``.  Non-finite p-values (untestable features) are left out.
    """
    if not p_after:
        raise ValueError("no p-values after harmonization to draw")
    before = _finite(p_before)
    names = list(p_after)
    colors = _colors(names)
    fig = Figure(figsize=(3.2 * len(names) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False, sharey=True)[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, name in zip(axes, names, strict=True):
        after = _finite(p_after[name])
        for values, label, kw in (
            (before, "before", {"histtype": "step", "color": _BEFORE_COLOR, "lw": 1.5}),
            (after, "after", {"color": colors[name], "alpha": 0.6}),
        ):
            if values.size:
                frac = float((values < alpha).mean())
                ax.hist(values, bins=edges, density=True, label=f"{label}: {frac:.0%} < {alpha:g}",
                        **kw)  # fmt: skip
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.axvline(alpha, color="k", ls=":", lw=0.8)
        ax.set_xlim(0.0, 1.0)
        ax.set_title(name)
        ax.set_xlabel("p-value")
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("density")
    fig.suptitle(title, fontsize=10)
    return _save_png(fig, out_png, dpi=110)


def classifier_accuracy_figure(
    results: Mapping[str, Mapping[str, object] | float],
    out_png: str | os.PathLike[str],
    *,
    chance: float | None = None,
    title: str = "Site prediction accuracy (cross-validated)",
) -> Path:
    """Bars of the site-classification accuracy per condition, with the chance level.

    Parameters
    ----------
    results : mapping
        ``{condition: result of .cohort.site_classifier_accuracy}`` (its
        ``fold_accuracies`` are drawn as dots), or ``{condition: accuracy}``.
    out_png : path
    chance : float, optional
        The chance level (dashed line); default the ``chance`` of the results.
    title : str

    Returns
    -------
    Path
        ``out_png``.
    """
    if not results:
        raise ValueError("no accuracies to draw")
    names = list(results)
    colors = _colors(names)
    acc, folds = [], []
    for name in names:
        r = results[name]
        acc.append(float(r["accuracy"] if isinstance(r, Mapping) else r))
        folds.append(list(r.get("fold_accuracies", ())) if isinstance(r, Mapping) else [])
        if chance is None and isinstance(r, Mapping) and "chance" in r:
            chance = float(r["chance"])
    fig = Figure(figsize=(1.1 * len(names) + 1.8, 3.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x, acc, width=0.6, color=[colors[n] for n in names], alpha=0.85)
    for i, (a, f) in enumerate(zip(acc, folds, strict=True)):
        if f:
            label = "folds" if not any(folds[:i]) else None
            ax.plot(np.full(len(f), i) + np.linspace(-0.15, 0.15, len(f)), f, "k.", ms=4,
                    label=label)  # fmt: skip
        ax.text(i, max([a, *f]) + 0.02, f"{a:.2f}", ha="center", va="bottom", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=1.0, label=f"chance ({chance:.2f})")
    if chance is not None or any(folds):
        fig.legend(loc="outside lower center", ncol=2, fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.12)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    return _save_png(fig, out_png, dpi=110)


def slope_figure(
    truth: ArrayLike | float,
    slopes: Mapping[str, ArrayLike],
    out_png: str | os.PathLike[str],
    *,
    name: str = "age",
    title: str | None = None,
) -> Path:
    """Estimated covariate slopes against the true ones, per condition.

    One panel per condition (e.g. before harmonization with site in the model, after
    each method): per-feature slope estimate against the truth, the identity line,
    and the means over features marked by a cross.

    Parameters
    ----------
    truth : array_like, shape (n_features,), or float
        True slope of each feature (or of all).
    slopes : mapping
        ``{condition: slopes from .cohort.covariate_slopes}``.
    out_png : path
    name : str
        Covariate name for the labels.
    title : str, optional

    Returns
    -------
    Path
        ``out_png``.  At most 5000 evenly spaced features per panel are drawn.
    """
    if not slopes:
        raise ValueError("no slopes to draw")
    names = list(slopes)
    colors = _colors(names)
    fig = Figure(figsize=(3.0 * len(names) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False, sharex=True, sharey=True)[0]
    for ax, cond in zip(axes, names, strict=True):
        est = np.asarray(slopes[cond], dtype=float).ravel()
        true = np.broadcast_to(np.asarray(truth, dtype=float), est.shape)
        ok = np.isfinite(est) & np.isfinite(true)
        est, true = est[ok], true[ok]
        pick = np.linspace(0, est.size - 1, min(est.size, _MAX_POINTS)).astype(int)
        ax.scatter(true[pick], est[pick], s=4, alpha=0.4, color=colors[cond], lw=0)
        if est.size:
            ax.plot(true.mean(), est.mean(), "kx", ms=8, mew=2, label="mean")
            lo, hi = float(min(true.min(), est.min())), float(max(true.max(), est.max()))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="identity")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_title(cond)
        ax.set_xlabel(f"true {name} slope")
    axes[0].set_ylabel(f"estimated {name} slope")
    fig.suptitle(title or f"Effect of {name} per feature", fontsize=10)
    return _save_png(fig, out_png, dpi=110)
