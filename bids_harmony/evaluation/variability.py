"""Group-level scanner variability: scan-rescan and inter-scanner standard error.

Following HARP (Jeong et al.), §2.6, Eq. 2, the *standard error* of a measure
``y`` over ``N`` subjects each measured ``K`` times is the pooled
within-subject standard deviation

.. math::

    \\sigma_e^2 = \\frac{1}{N(K-1)} \\sum_{i=1}^{N} \\sum_{j=1}^{K}
                  (y_{ij} - \\bar{y}_i)^2

with :math:`\\bar{y}_i` the mean of subject ``i`` over its ``K`` measurements.
Scan-rescan uses ``K = 2`` (two sessions at one site); inter-scanner uses
``K = 4`` (two sessions at each of two sites).  It is computed voxel-wise on
maps in a common template space and on ROI-averaged values.

Everything here works on in-memory arrays; no file I/O.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "PairedTest",
    "inter_scanner_error",
    "masked_mean",
    "paired_ttest",
    "percentage_difference",
    "roi_means",
    "roi_standard_errors",
    "scan_rescan_error",
    "standard_error",
]


def standard_error(values: ArrayLike) -> NDArray[np.float64]:
    """Pooled within-subject standard deviation, HARP Eq. 2.

    .. math::

        \\sigma_e = \\sqrt{\\frac{1}{N(K-1)} \\sum_{i=1}^{N} \\sum_{j=1}^{K}
                    (y_{ij} - \\bar{y}_i)^2}

    Parameters
    ----------
    values : array_like, shape (N, K, ...)
        ``values[i, j]`` is measurement ``j`` of subject ``i``; trailing axes
        (voxels, ROIs, ...) are treated independently.  Requires ``N >= 1``
        and ``K >= 2``.

    Returns
    -------
    sigma_e : ndarray, shape (...)
        Standard error per trailing element (0-d array for ``(N, K)`` input).
        An element where any of the ``N * K`` values is NaN is NaN.

    Raises
    ------
    ValueError
        If ``values`` has fewer than 2 dimensions, ``N < 1`` or ``K < 2``.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim < 2:
        raise ValueError(
            f"values must have shape (N subjects, K repeats, ...); got shape {y.shape}"
        )
    n, k = y.shape[:2]
    if n < 1:
        raise ValueError(f"need at least 1 subject (N >= 1); got N={n}")
    if k < 2:
        raise ValueError(f"need at least 2 repeated measurements (K >= 2); got K={k}")
    dev = y - y.mean(axis=1, keepdims=True)
    variance = np.sum(dev * dev, axis=(0, 1)) / (n * (k - 1))
    return np.sqrt(variance)


def scan_rescan_error(values: ArrayLike) -> NDArray[np.float64]:
    """Scan-rescan standard error: Eq. 2 with ``K = 2`` sessions at one site.

    Parameters
    ----------
    values : array_like, shape (N, 2, ...)
        Two sessions per subject at the same site.

    Returns
    -------
    sigma_sr : ndarray, shape (...)
        See :func:`standard_error`.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim < 2 or y.shape[1] != 2:
        raise ValueError(
            f"scan-rescan values must have shape (N, 2, ...) (two sessions); got {y.shape}"
        )
    return standard_error(y)


def inter_scanner_error(source: ArrayLike, target: ArrayLike) -> NDArray[np.float64]:
    """Inter-scanner standard error: Eq. 2 with ``K = 4`` (2 sessions x 2 sites).

    Parameters
    ----------
    source, target : array_like, shape (N, 2, ...)
        The two sessions of each subject at the source and at the target site;
        subject ``i`` must be the same person in both arrays.

    Returns
    -------
    sigma_inter : ndarray, shape (...)
        :func:`standard_error` of the ``(N, 4, ...)`` stack
        ``[source_1, source_2, target_1, target_2]``.
    """
    src = np.asarray(source, dtype=np.float64)
    tgt = np.asarray(target, dtype=np.float64)
    for name, arr in (("source", src), ("target", tgt)):
        if arr.ndim < 2 or arr.shape[1] != 2:
            raise ValueError(f"{name} must have shape (N, 2, ...) (two sessions); got {arr.shape}")
    if src.shape != tgt.shape:
        raise ValueError(f"source and target shapes differ: {src.shape} vs {tgt.shape}")
    return standard_error(np.concatenate([src, tgt], axis=1))


def percentage_difference(
    inter: ArrayLike, sr_source: ArrayLike, sr_target: ArrayLike
) -> NDArray[np.float64]:
    """Inter-scanner error relative to the larger scan-rescan error, in percent.

    .. math::

        100 \\cdot \\frac{\\sigma_{inter} - \\max(\\sigma_{sr,s}, \\sigma_{sr,t})}
                         {\\max(\\sigma_{sr,s}, \\sigma_{sr,t})}

    Inputs broadcast elementwise.  A zero denominator (or any NaN input) gives
    NaN; no floating-point warnings are emitted.

    Returns
    -------
    pct : ndarray
        Broadcast shape of the inputs (0-d array for scalar inputs).
    """
    inter_a = np.asarray(inter, dtype=np.float64)
    denom = np.maximum(np.asarray(sr_source, np.float64), np.asarray(sr_target, np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = (inter_a - denom) / denom * 100.0
    return np.where(denom == 0, np.nan, pct)


def masked_mean(map_: ArrayLike, mask: ArrayLike) -> float:
    """Mean of the finite values of ``map_`` where ``mask`` is true (NaN if none)."""
    m = np.asarray(map_, dtype=np.float64)
    msk = np.asarray(mask)
    if msk.dtype != bool:
        raise ValueError(f"mask must be boolean; got dtype {msk.dtype}")
    if m.shape != msk.shape:
        raise ValueError(f"map and mask shapes differ: {m.shape} vs {msk.shape}")
    vals = m[msk]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def _as_labels(labels: ArrayLike) -> NDArray[np.int64]:
    lab = np.asarray(labels)
    if np.issubdtype(lab.dtype, np.integer):
        return lab.astype(np.int64)
    if (
        np.issubdtype(lab.dtype, np.floating)
        and np.all(np.isfinite(lab))
        and np.all(lab == np.round(lab))
    ):
        return lab.astype(np.int64)
    raise ValueError(f"labels must hold integer values; got dtype {lab.dtype}")


def roi_means(
    values: ArrayLike, labels: ArrayLike, label_ids: Sequence[int]
) -> NDArray[np.float64]:
    """Per-ROI mean of the finite values of spatial maps.

    Parameters
    ----------
    values : array_like, shape (..., X, Y, Z)
        Maps with any leading axes; the trailing axes must equal ``labels.shape``.
    labels : array_like of int, shape (X, Y, Z)
        Label volume (integer-valued floats are accepted).
    label_ids : sequence of int
        The ROIs to average, in output order.

    Returns
    -------
    means : ndarray, shape (..., n_rois)
        Mean over the voxels with ``labels == label_ids[r]`` whose value is
        finite; NaN where there are none.
    """
    lab = _as_labels(labels)
    v = np.asarray(values, dtype=np.float64)
    ids = np.asarray(label_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"label_ids must be a 1-D sequence; got shape {ids.shape}")
    if lab.ndim == 0 or v.ndim < lab.ndim or v.shape[v.ndim - lab.ndim :] != lab.shape:
        raise ValueError(f"trailing axes of values {v.shape} must match labels shape {lab.shape}")
    lead = v.shape[: v.ndim - lab.ndim]
    flat = v.reshape(-1, lab.size)
    flat_lab = lab.ravel()
    out = np.full((flat.shape[0], ids.size), np.nan)
    for r, roi in enumerate(ids):
        sub = flat[:, flat_lab == roi]
        finite = np.isfinite(sub)
        count = finite.sum(axis=1)
        total = np.where(finite, sub, 0.0).sum(axis=1)
        ok = count > 0
        out[ok, r] = total[ok] / count[ok]
    return out.reshape(*lead, ids.size)


def roi_standard_errors(
    values: ArrayLike, labels: ArrayLike, label_ids: Sequence[int]
) -> NDArray[np.float64]:
    """Eq. 2 on ROI-averaged values.

    Each measurement is first averaged within each ROI (:func:`roi_means`),
    then :func:`standard_error` is applied across subjects and repeats.

    Parameters
    ----------
    values : array_like, shape (N, K, X, Y, Z)
    labels : array_like of int, shape (X, Y, Z)
    label_ids : sequence of int

    Returns
    -------
    sigma_e : ndarray, shape (n_rois,)
        NaN for an ROI whose mean is undefined in any measurement.
    """
    v = np.asarray(values, dtype=np.float64)
    lab = np.asarray(labels)
    if v.ndim != 2 + lab.ndim:
        raise ValueError(
            f"values must have shape (N, K, *labels.shape) = (N, K, "
            f"{', '.join(map(str, lab.shape))}); got {v.shape}"
        )
    return standard_error(roi_means(v, lab, label_ids))


@dataclass(frozen=True)
class PairedTest:
    """Result of :func:`paired_ttest`."""

    statistic: float
    pvalue: float
    n: int
    mean_difference: float


def paired_ttest(a: ArrayLike, b: ArrayLike) -> PairedTest:
    """Paired t-test of ``a`` vs ``b`` (e.g. per-ROI errors before/after).

    Pairs where either value is non-finite are dropped.  With fewer than 2
    valid pairs, ``statistic`` and ``pvalue`` are NaN (``n`` is still reported;
    ``mean_difference`` is NaN when ``n == 0``).

    Returns
    -------
    PairedTest
        ``statistic`` and ``pvalue`` from :func:`scipy.stats.ttest_rel`
        (two-sided), ``n`` valid pairs, ``mean_difference = mean(a - b)``.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D of equal length; got {x.shape} and {y.shape}")
    valid = np.isfinite(x) & np.isfinite(y)
    x, y = x[valid], y[valid]
    n = int(valid.sum())
    mean_diff = float(np.mean(x - y)) if n else float("nan")
    if n < 2:
        return PairedTest(float("nan"), float("nan"), n, mean_diff)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(x, y)
    return PairedTest(float(res.statistic), float(res.pvalue), n, mean_diff)
