"""Standard-error maps, tissue classes, ROIs and the summaries of the paper's tables.

Numerics only (arrays in template space).  Conditions, as in Jeong et al. §2.6:

=============  =====================================================
``sr_source``  scan-rescan, source site (Eq. 2, K = 2)
``sr_target``  scan-rescan, target site
``inter_none`` inter-scanner, no harmonization (K = 4)
``inter_rish`` inter-scanner, source sessions LinearRISH-harmonized
``inter_harp`` inter-scanner, source sessions HARP-harmonized (likewise
               ``inter_<method>`` for every method of
               :data:`bids_harmony.evaluation.evaluated.EVALUATED_METHODS`)
=============  =====================================================

Tissue classes without an atlas come from the mean target-site maps: CSF where
MD > 1.5 µm²/ms (excluded from every summary, as in the paper), WM where
FA >= 0.3, GM elsewhere in the brain.  ROIs are the tissue classes cut by a
regular grid of blocks (``blocks`` per axis) — coarse parcels so that per-ROI
standard errors can be compared with paired t-tests across ROIs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bids_harmony.evaluation.evaluated import METHODS, comparisons, condition
from bids_harmony.evaluation.variability import (
    inter_scanner_error,
    paired_ttest,
    roi_standard_errors,
    scan_rescan_error,
)

CSF_MD = 1.5e-3  # mm²/s
WM_FA = 0.3
TISSUE_LABELS = {"WM": 1, "GM": 2}
COMPARISONS = comparisons()
"""Paired t-tests: each method vs none, then each pair of methods (registry order)."""


def error_maps(source: Mapping[str, np.ndarray], target: np.ndarray) -> dict[str, np.ndarray]:
    """Voxel-wise standard errors of one metric for every available condition.

    Parameters
    ----------
    source : mapping
        ``none`` (required) and any evaluated method (``harp``, ``rish``,
        ``combat``): source-site values, shape (N, 2, X, Y, Z) — N subjects, two
        sessions.
    target : ndarray, shape (N, 2, X, Y, Z)

    Returns
    -------
    dict of condition -> ndarray (X, Y, Z)
    """
    out = {
        "sr_source": scan_rescan_error(source["none"]),
        "sr_target": scan_rescan_error(target),
        "inter_none": inter_scanner_error(source["none"], target),
    }
    for name in METHODS:
        if source.get(name) is not None:
            out[condition(name)] = inter_scanner_error(source[name], target)
    return out


def tissue_classes(brain: np.ndarray, mean_fa: np.ndarray, mean_md: np.ndarray) -> np.ndarray:
    """Labels 0 (outside or CSF), 1 (WM), 2 (GM) from mean FA/MD inside ``brain``."""
    labels = np.zeros(brain.shape, dtype=np.int16)
    keep = brain & np.isfinite(mean_fa) & np.isfinite(mean_md) & (mean_md <= CSF_MD)
    labels[keep & (mean_fa >= WM_FA)] = TISSUE_LABELS["WM"]
    labels[keep & (mean_fa < WM_FA)] = TISSUE_LABELS["GM"]
    return labels


def block_rois(tissue: np.ndarray, *, blocks: int = 3, min_voxels: int = 5) -> np.ndarray:
    """ROI labels: each tissue class cut by a ``blocks``³ grid over its bounding box.

    Labels are ``tissue * 1000 + block``; parcels with fewer than ``min_voxels``
    voxels are dropped (0).
    """
    rois = np.zeros(tissue.shape, dtype=np.int32)
    inside = np.nonzero(tissue > 0)
    if not inside[0].size:
        return rois
    index = np.zeros(inside[0].size, dtype=np.int32)
    for coords in inside:
        lo, hi = coords.min(), coords.max() + 1
        part = np.minimum((coords - lo) * blocks // max(hi - lo, 1), blocks - 1)
        index = index * blocks + part
    rois[inside] = tissue[inside].astype(np.int32) * 1000 + index
    ids, counts = np.unique(rois[inside], return_counts=True)
    for small in ids[counts < min_voxels]:
        rois[rois == small] = 0
    return rois


def summarize(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    values: Mapping[str, Mapping[str, np.ndarray]],
    target_values: Mapping[str, np.ndarray],
    tissue: np.ndarray,
    rois: np.ndarray,
) -> dict[str, dict]:
    """Table 2/3 summaries and paired t-tests.

    Parameters
    ----------
    maps : metric -> condition -> (X, Y, Z) standard-error map
    values : metric -> source variant (``none`` or a method) -> (N, 2, X, Y, Z)
    target_values : metric -> (N, 2, X, Y, Z)
    tissue, rois : label volumes (:func:`tissue_classes`, :func:`block_rois`)

    Returns
    -------
    dict with ``table2`` (metric -> condition -> (mean, sd) over brain voxels
    without CSF), ``table3`` (metric -> tissue -> condition -> (mean, sd) over
    ROIs), ``roi_errors`` (metric -> tissue -> condition -> per-ROI errors) and
    ``ttests`` ((metric, tissue, (a, b)) -> PairedTest).
    """
    brain = tissue > 0
    out: dict[str, dict] = {"table2": {}, "table3": {}, "roi_errors": {}, "ttests": {}}
    for metric, conditions in maps.items():
        out["table2"][metric] = {
            cond: _mean_sd(m[brain & np.isfinite(m)]) for cond, m in conditions.items()
        }
        per_tissue: dict[str, dict[str, np.ndarray]] = {}
        for name, code in TISSUE_LABELS.items():
            ids = [int(i) for i in np.unique(rois[(tissue == code) & (rois > 0)])]
            if not ids:
                continue
            src, tgt = values[metric], target_values[metric]
            errs = {
                "sr_source": roi_standard_errors(src["none"], rois, ids),
                "sr_target": roi_standard_errors(tgt, rois, ids),
                "inter_none": roi_standard_errors(np.concatenate([src["none"], tgt], 1), rois, ids),
            }
            for variant in METHODS:
                if src.get(variant) is not None:
                    joined = np.concatenate([src[variant], tgt], axis=1)
                    errs[condition(variant)] = roi_standard_errors(joined, rois, ids)
            per_tissue[name] = errs
            out["table3"].setdefault(metric, {})[name] = {
                cond: _mean_sd(v[np.isfinite(v)]) for cond, v in errs.items()
            }
            for a, b in COMPARISONS:
                if a in errs and b in errs:
                    out["ttests"][(metric, name, (a, b))] = paired_ttest(errs[a], errs[b])
        out["roi_errors"][metric] = per_tissue
    return out


def _mean_sd(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))
