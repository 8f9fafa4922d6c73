"""Features ComBat leaves as they are, and why.

The location/scale model needs, per feature, finite values and a variance to
standardize by, in every site.  A feature without them is copied through unchanged
(never turned into NaN, as a division by a zero variance would) and reported.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["Untouched", "untouched_reasons"]


class Untouched(enum.IntEnum):
    """Why a feature was left as it is (``CombatModel.untouched_reason``)."""

    HARMONIZED = 0
    NONFINITE = 1  # a NaN or infinite value in some sample
    CONSTANT = 2  # the same value in every sample
    SITE_CONSTANT = 3  # the same value in every sample of some site: no scale to estimate
    NO_RESIDUAL = 4  # site and covariates explain it exactly: nothing to standardize by


def untouched_reasons(data: np.ndarray, site_index: np.ndarray, n_sites: int) -> np.ndarray:
    """:class:`Untouched` code per feature: the first reason that applies.

    Parameters
    ----------
    data : ndarray, shape (n_samples, n_features)
    site_index : ndarray of int, shape (n_samples,)
        Site of each sample, ``0 .. n_sites - 1``.
    n_sites : int

    Returns
    -------
    ndarray of int8, shape (n_features,)
        ``NO_RESIDUAL`` is not decided here: it needs the regression of the fit.
    """
    reason = np.zeros(data.shape[1], np.int8)
    finite = np.isfinite(data).all(axis=0)
    reason[~finite] = Untouched.NONFINITE
    ok = finite.copy()
    constant = ok & (data == data[:1]).all(axis=0)
    reason[constant] = Untouched.CONSTANT
    ok &= ~constant
    for i in range(n_sites):
        rows = data[site_index == i]
        flat = ok & (rows == rows[:1]).all(axis=0)
        reason[flat] = Untouched.SITE_CONSTANT
        ok &= ~flat
    return reason
