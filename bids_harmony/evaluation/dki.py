"""Evaluation of harmonized DKI maps as in Tong et al. (2020) §2.3 (issue 15, part 5).

Numerics only: arrays of one DKI measure in a common (template) space in, numbers
out.  A traveling subject has two sessions at the source site and two at the
reference (target) site; arrays are subject-major, shape (N, 2, X, Y, Z).

*Before* means the raw DKI fits at both sites.  *After* means the ``desc-dkicnn``
maps for the source sessions and the **raw** fits for the reference sessions (the
network predicts the reference scanner's maps; the reference sessions are not
passed through a network).  *After, both sites* (``after_all``, when the reference
sessions have ``desc-dkicnn`` maps of the reference site's own network, trained on
its rescans, as in the paper) uses the networks' maps at both sites.

- Inter-scanner coefficient of variation, voxel-wise over the K = 4 sessions of a
  subject (:func:`cv_map`), ``CV(v) = SD_k(y_k(v)) / mean_k(y_k(v))`` with the
  sample standard deviation (ddof = 1); averaged over the WM voxels of each subject,
  then over subjects (:func:`inter_scanner_cv`).
- NRMSE-to-reference per ROI (:func:`nrmse`),
  ``NRMSE(x, r) = sqrt(mean_ROI (x - r)^2) / mean_ROI r``: source session j against
  reference session j of the same subject (j = 1, 2), averaged over the two pairs
  (:func:`nrmse_to_reference`).  The paper does not give its normalisation; we use
  the reference's mean in the ROI.
- Scan-rescan NRMSE within a site: session 2 against session 1
  (:func:`scan_rescan_nrmse`).
- Percent reduction ``100 (before - after) / before`` (:func:`percent_reduction`).

Other harmonization methods' DKI maps of the same source sessions (LinearRISH:
DKI refitted on its rebuilt DWI; ComBat: the DKI maps harmonized as features),
the paper's §2.3.4 comparison, are evaluated the same way as *after* (reference
sessions raw) and come as columns ``after_<method>`` and
``reduction_<method>_percent`` (:func:`method_column`, :func:`reduction_column`).

ROIs are the group level's (:func:`bids_harmony.evaluation.maps.tissue_classes` and
:func:`~bids_harmony.evaluation.maps.block_rois`), built from the mean DKI FA and MD
of the reference sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bids_harmony.evaluation.maps import TISSUE_LABELS, block_rois, tissue_classes

#: Relative size below which a mean counts as zero (CV and NRMSE are then NaN).
EPS = 1e-12
#: The measures of :func:`evaluate_measure`, in the table's order.
MEASURES = ("cv_inter", "nrmse_ref", "nrmse_sr_source", "nrmse_sr_target")


def cv_map(values: np.ndarray) -> np.ndarray:
    """Voxel-wise coefficient of variation over sessions.

    Parameters
    ----------
    values : ndarray, shape (K, X, Y, Z)
        One subject's K sessions.

    Returns
    -------
    ndarray, shape (X, Y, Z)
        ``SD / mean`` over the K sessions (sample SD, ddof = 1); NaN where the mean
        is not positive or a value is not finite.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    sd = values.std(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sd / mean
    return np.where(np.isfinite(mean) & (mean > EPS), out, np.nan)


def inter_scanner_cv(source: np.ndarray, target: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Per-subject mean WM inter-scanner CV over the four sessions of each subject.

    Parameters
    ----------
    source, target : ndarray, shape (N, 2, X, Y, Z)
    wm : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    ndarray, shape (N,)
        Mean of :func:`cv_map` over the finite WM voxels (NaN: none); the study
        value is the mean over subjects.
    """
    out = np.full(source.shape[0], np.nan)
    for i in range(source.shape[0]):
        cv = cv_map(np.concatenate([source[i], target[i]], axis=0))[wm]
        cv = cv[np.isfinite(cv)]
        if cv.size:
            out[i] = float(cv.mean())
    return out


def nrmse(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """``sqrt(mean((x - ref)^2)) / mean(ref)`` over the finite voxels of ``mask``.

    Parameters
    ----------
    x, ref : ndarray, shape (X, Y, Z)
    mask : ndarray of bool, shape (X, Y, Z)

    Returns
    -------
    float
        NaN when no voxel is left or the reference mean is not positive.
    """
    keep = mask & np.isfinite(x) & np.isfinite(ref)
    if not keep.any():
        return float("nan")
    a, r = np.asarray(x, np.float64)[keep], np.asarray(ref, np.float64)[keep]
    mean = r.mean()
    if not mean > EPS:
        return float("nan")
    return float(np.sqrt(np.mean((a - r) ** 2)) / mean)


def _roi_nrmse(x: np.ndarray, ref: np.ndarray, rois: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    return np.array([nrmse(x, ref, rois == i) for i in ids])


def nrmse_to_reference(
    source: np.ndarray, target: np.ndarray, rois: np.ndarray, ids: Sequence[int]
) -> np.ndarray:
    """NRMSE of each subject's source sessions to its reference sessions, per ROI.

    Parameters
    ----------
    source, target : ndarray, shape (N, 2, X, Y, Z)
        Source session j is compared with reference session j of the same subject.
    rois : ndarray of int, shape (X, Y, Z)
    ids : sequence of int
        ROI labels.

    Returns
    -------
    ndarray, shape (N, len(ids))
        The mean of the two pairs' :func:`nrmse`.
    """
    return np.array([
        _nanmean_rows(np.array([_roi_nrmse(source[i, j], target[i, j], rois, ids)
                                for j in (0, 1)]).T)
        for i in range(source.shape[0])
    ]).reshape(source.shape[0], len(ids))  # fmt: skip


def scan_rescan_nrmse(values: np.ndarray, rois: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """NRMSE of session 2 to session 1 of each subject at one site, per ROI.

    Parameters
    ----------
    values : ndarray, shape (N, 2, X, Y, Z)

    Returns
    -------
    ndarray, shape (N, len(ids))
    """
    return np.array([_roi_nrmse(values[i, 1], values[i, 0], rois, ids)
                     for i in range(values.shape[0])]).reshape(values.shape[0], len(ids))


def percent_reduction(before: float, after: float) -> float:
    """``100 (before - after) / before`` (NaN when ``before`` is not positive)."""
    if not (np.isfinite(before) and np.isfinite(after) and before > 0):
        return float("nan")
    return float(100.0 * (before - after) / before)


def dki_rois(brain: np.ndarray, target_fa: np.ndarray, target_md: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes and block ROIs from the reference sessions' DKI FA and MD.

    ``target_fa``, ``target_md``: shape (N, 2, X, Y, Z); their means over sessions
    define the classes (:func:`~bids_harmony.evaluation.maps.tissue_classes`).
    """
    fa = np.mean(target_fa, axis=(0, 1))
    md = np.mean(target_md, axis=(0, 1))
    tissue = tissue_classes(brain, fa, md)
    return tissue, block_rois(tissue)


def evaluate_measure(
    source: np.ndarray,
    after: np.ndarray | None,
    target: np.ndarray,
    tissue: np.ndarray,
    rois: np.ndarray,
    after_target: np.ndarray | None = None,
) -> list[dict]:
    """:func:`_evaluate` of one measure, with ``after_all`` (both sites through their
    networks: ``after`` and ``after_target``) and ``reduction_all_percent`` columns
    (NaN without ``after_target``)."""
    rows = _evaluate(source, after, target, tissue, rois)
    both = (_evaluate(source, after, after_target, tissue, rois)
            if after is not None and after_target is not None else None)  # fmt: skip
    for k, row in enumerate(rows):
        value = float("nan") if both is None else both[k]["after"]
        if both is not None and row["measure"] == "nrmse_sr_target":
            value = both[k]["before"]  # the reference site's rescans through its network
        row["after_all"] = value
        row["reduction_all_percent"] = percent_reduction(row["before"], value)
    return rows


def _evaluate(
    source: np.ndarray,
    after: np.ndarray | None,
    target: np.ndarray,
    tissue: np.ndarray,
    rois: np.ndarray,
) -> list[dict]:
    """Every statistic of one DKI measure, before and after harmonization.

    Parameters
    ----------
    source : ndarray, shape (N, 2, X, Y, Z)
        Raw source-site maps.
    after : ndarray, shape (N, 2, X, Y, Z), or None
        ``desc-dkicnn`` maps of the same source sessions (None: "after" is NaN).
    target : ndarray, shape (N, 2, X, Y, Z)
        Raw reference-site maps (used unchanged for "after").
    tissue, rois : ndarray, shape (X, Y, Z)
        :func:`dki_rois`.

    Returns
    -------
    list of dict
        Rows with ``measure`` (:data:`MEASURES`), ``region`` (``WM``/``GM``: the
        tissue class as one region for the CV, the mean over its ROIs for the
        NRMSEs; ``roi-<label>``: one ROI), ``subject`` (an index as str, or
        ``mean``), ``before``, ``after``, ``reduction_percent``.
    """
    n = source.shape[0]
    rows: list[dict] = []

    def add(measure, region, before, aft):
        for i in range(n):
            rows.append(_row(measure, region, str(i), before[i], aft[i]))
        rows.append(_row(measure, region, "mean", _nanmean_rows(np.asarray(before)[None])[0],
                         _nanmean_rows(np.asarray(aft)[None])[0]))  # fmt: skip

    nan = np.full(n, np.nan)
    for name, code in TISSUE_LABELS.items():
        mask = tissue == code
        if not mask.any():
            continue
        add("cv_inter", name, inter_scanner_cv(source, target, mask),
            nan if after is None else inter_scanner_cv(after, target, mask))  # fmt: skip
    ids = [int(i) for i in np.unique(rois[rois > 0])]
    if not ids:
        return rows
    pairs = {
        "nrmse_ref": (nrmse_to_reference(source, target, rois, ids),
                      None if after is None else nrmse_to_reference(after, target, rois, ids)),
        "nrmse_sr_source": (scan_rescan_nrmse(source, rois, ids),
                            None if after is None else scan_rescan_nrmse(after, rois, ids)),
        "nrmse_sr_target": (scan_rescan_nrmse(target, rois, ids),
                            scan_rescan_nrmse(target, rois, ids)),
    }  # fmt: skip
    roi_tissue = np.array([i // 1000 for i in ids])
    for measure, (before, aft) in pairs.items():
        aft = np.full_like(before, np.nan) if aft is None else aft
        for name, code in TISSUE_LABELS.items():
            cols = roi_tissue == code
            if cols.any():
                add(measure, name, _nanmean_rows(before[:, cols]), _nanmean_rows(aft[:, cols]))
        for k, label in enumerate(ids):
            add(measure, f"roi-{label}", before[:, k], aft[:, k])
    return rows


def method_column(method: str) -> str:
    """The column of another method's values.

    >>> method_column("combat"), reduction_column("combat")
    ('after_combat', 'reduction_combat_percent')
    """
    return f"after_{method}"


def reduction_column(method: str) -> str:
    """The column of another method's percent reduction (see :func:`method_column`)."""
    return f"reduction_{method}_percent"


def evaluate_dki(
    source: Mapping[str, np.ndarray],
    after: Mapping[str, np.ndarray] | None,
    target: Mapping[str, np.ndarray],
    brain: np.ndarray,
    after_target: Mapping[str, np.ndarray] | None = None,
    others: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> list[dict]:
    """:func:`evaluate_measure` for every DKI parameter, ROIs from the reference DKI FA/MD.

    ``source``, ``after`` (or None), ``target`` and ``after_target`` (the reference
    sessions' network maps, or None) map a parameter (``md`` … ``kfa``) to
    (N, 2, X, Y, Z) arrays; ``brain`` (X, Y, Z) bool.  ``others`` maps another
    method (``rish``, ``combat``) to its maps of the source sessions, evaluated
    like ``after`` (reference sessions raw): columns :func:`method_column` and
    :func:`reduction_column`.  Rows gain ``param``.
    """
    tissue, rois = dki_rois(brain, target["fa"], target["md"])
    rows = []
    for param, values in source.items():
        aft = None if after is None else after.get(param)
        aft_t = None if after_target is None else after_target.get(param)
        measured = evaluate_measure(values, aft, target[param], tissue, rois, aft_t)
        for method, maps in (others or {}).items():
            other = _evaluate(values, maps.get(param), target[param], tissue, rois)
            for row, row_other in zip(measured, other, strict=True):
                row[method_column(method)] = row_other["after"]
                row[reduction_column(method)] = row_other["reduction_percent"]
        rows.extend({"param": param, **row} for row in measured)
    return rows


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[0], np.nan)
    for i, row in enumerate(a):
        row = row[np.isfinite(row)]
        if row.size:
            out[i] = row.mean()
    return out


def _row(measure: str, region: str, subject: str, before: float, after: float) -> dict:
    before, after = float(before), float(after)
    return {"measure": measure, "region": region, "subject": subject, "before": before,
            "after": after, "reduction_percent": percent_reduction(before, after)}
