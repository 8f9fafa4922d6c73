"""SH coefficient bookkeeping: counts, orders and order bands (RISH features).

Even (antipodally symmetric) real SH up to order :math:`L` have
:math:`(L+1)(L+2)/2` coefficients ordered by order :math:`l` then degree
:math:`m = -l..l` (dipy's ``sph_harm_ind_list``), so band :math:`l` occupies
``[n_coeffs(l - 2) : n_coeffs(l)]``: for :math:`L = 8`, ``[0:1], [1:6], [6:15],
[15:28], [28:45]``.  Re-exported by :mod:`bids_harmony.dmri.sh`.
"""

from __future__ import annotations

import numpy as np

from bids_harmony.errors import BadGradientsError

MAX_ORDER = 8
MIN_DIRECTIONS = 6


def n_coeffs(order: int) -> int:
    """Number of even SH coefficients up to ``order``: :math:`(L+1)(L+2)/2`.

    >>> n_coeffs(8)
    45
    """
    check_order(order)
    return (order + 1) * (order + 2) // 2


def order_from_n_coeffs(n: int) -> int:
    """Inverse of :func:`n_coeffs`.

    >>> order_from_n_coeffs(28)
    6
    """
    for order in range(0, 64, 2):
        if n_coeffs(order) == n:
            return order
        if n_coeffs(order) > n:
            break
    raise ValueError(f"{n} is not the number of coefficients of an even SH order.")


def sh_order_for_directions(n_directions: int, max_order: int = MAX_ORDER) -> int:
    """Largest even order ``L <= max_order`` with ``n_coeffs(L) <= n_directions``.

    >>> sh_order_for_directions(60), sh_order_for_directions(30), sh_order_for_directions(15)
    (8, 6, 4)
    """
    check_order(max_order)
    if n_directions < MIN_DIRECTIONS:
        raise BadGradientsError(
            f"a shell with {n_directions} directions cannot be represented with spherical "
            f"harmonics; at least {MIN_DIRECTIONS} are needed (order 2)."
        )
    order = max_order
    while order > 2 and n_coeffs(order) > n_directions:
        order -= 2
    return order


def band_orders(order: int = MAX_ORDER) -> list[int]:
    """Orders of the bands: ``[0, 2, ..., order]``."""
    check_order(order)
    return list(range(0, order + 1, 2))


def band_slices(order: int = MAX_ORDER) -> list[slice]:
    """Coefficient slice of each band.

    >>> band_slices(4)
    [slice(0, 1, None), slice(1, 6, None), slice(6, 15, None)]
    """
    return [slice(n_coeffs(ell) - (2 * ell + 1), n_coeffs(ell)) for ell in band_orders(order)]


def rish_features(coeffs: np.ndarray, order: int | None = None) -> np.ndarray:
    r"""Rotation-invariant SH features: energy of each order band.

    .. math:: \mathrm{RISH}_l = \sum_{m=-l}^{l} c_{lm}^2

    Parameters
    ----------
    coeffs : ndarray, shape (..., n_coeffs)
    order : int, optional
        Inferred from the last dimension when omitted.

    Returns
    -------
    ndarray, shape (..., order / 2 + 1)
    """
    coeffs = np.asarray(coeffs)
    if order is None:
        order = order_from_n_coeffs(coeffs.shape[-1])
    if coeffs.shape[-1] != n_coeffs(order):
        raise ValueError(f"order {order} needs {n_coeffs(order)} coefficients, got {coeffs.shape}")
    dtype = np.result_type(coeffs.dtype, np.float32)
    squared = np.square(coeffs, dtype=dtype)
    return np.stack([squared[..., s].sum(axis=-1) for s in band_slices(order)], axis=-1)


def pad_coeffs(coeffs: np.ndarray, order: int = MAX_ORDER) -> np.ndarray:
    """Zero-pad lower-order coefficients to ``n_coeffs(order)`` (e.g. for the network)."""
    coeffs = np.asarray(coeffs)
    n = n_coeffs(order)
    if coeffs.shape[-1] > n:
        raise ValueError(f"cannot pad {coeffs.shape[-1]} coefficients to {n}.")
    order_from_n_coeffs(coeffs.shape[-1])
    pad = [(0, 0)] * (coeffs.ndim - 1) + [(0, n - coeffs.shape[-1])]
    return np.pad(coeffs, pad)


def check_order(order: int) -> None:
    if int(order) != order or order < 0 or order % 2:
        raise ValueError(f"SH order must be an even integer >= 0, got {order!r}.")
