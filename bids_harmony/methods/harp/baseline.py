r"""A global per-band scale: the simplest phantom-trained harmonization (a baseline).

One scale per SH order band for the whole phantom, fitted on the same registered
phantom voxels as HARP and debiased for noise with the source rescan:

.. math:: \hat g_l = \frac{\sum_{v, m \in l} C_{lm}(v)\, T_{lm}(v)}
                          {\sum_{v, m \in l} C_{lm}(v)\, C'_{lm}(v)}

The numerator estimates :math:`g_l E[a^2]` and the denominator :math:`E[a^2]`
(the noise of two scans is independent), so, unlike least squares
(:math:`\sum CT / \sum C^2`), noisy high orders are not shrunk.  Without a rescan
the denominator is :math:`\sum C^2` (regression dilution).  A voxel-wise network
must beat this to be worth its parameters (issue: HARP on unseen phantom studies).
Apply it with :func:`bids_harmony.methods.harp.network.apply_band_scales` (the scales broadcast).
"""

from __future__ import annotations

import numpy as np

from bids_harmony.dmri.bands import band_orders, band_slices, order_from_n_coeffs

__all__ = ["SCALE_LIMITS", "fit_band_scales"]

#: A global band scale outside these limits is not a scanner difference.
SCALE_LIMITS = (0.5, 1.5)


def fit_band_scales(
    source: np.ndarray,
    target: np.ndarray,
    source_rescan: np.ndarray | None = None,
    *,
    min_snr: float = 5.0,
) -> np.ndarray:
    """Noise-debiased global scale per band.

    Parameters
    ----------
    source, target : ndarray, shape (N, n)
        Paired coefficients.
    source_rescan : ndarray, shape (N, n), optional
    min_snr : float
        Bands whose noise-corrected power :math:`\\sum CC'` or cross-site product
        :math:`\\sum CT` is below this many standard errors get scale 1 (no
        measurable signal); the others are clipped to ``SCALE_LIMITS``.

    Returns
    -------
    ndarray, shape (n_bands,)
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    order = order_from_n_coeffs(source.shape[1])
    scales = np.ones(len(band_orders(order)))
    for i, band in enumerate(band_slices(order)):
        c, t = source[:, band], target[:, band]
        if source_rescan is None:
            denom_terms = (c * c).sum(axis=1)
        else:
            denom_terms = (c * np.asarray(source_rescan, dtype=np.float64)[:, band]).sum(axis=1)
        num_terms = (c * t).sum(axis=1)
        if len(denom_terms) < 2:
            continue
        root_n = np.sqrt(len(denom_terms))
        denom, num = denom_terms.sum(), num_terms.sum()
        # both sums must be measured: an isotropic phantom has no l >= 2 signal, and a
        # ratio of two noise sums is anything (-0.12 on a NIST-like phantom)
        if denom > min_snr * denom_terms.std() * root_n and num > min_snr * (
            num_terms.std() * root_n
        ):
            scales[i] = float(np.clip(num / denom, *SCALE_LIMITS))
    return scales
