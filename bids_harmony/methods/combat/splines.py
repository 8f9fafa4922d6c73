"""Natural cubic regression splines: smooth covariate effects for ComBat-GAM.

ComBat-GAM (Pomponio et al., 2020) replaces the linear effect :math:`X\\beta_v` of a
covariate such as age by a smooth function :math:`f_v(\\text{age})`.  Here :math:`f_v`
is a natural cubic spline with :math:`K` knots :math:`\\xi_1 < \\dots < \\xi_K` at
quantiles of the covariate (Hastie, Tibshirani & Friedman, *The Elements of Statistical
Learning*, 2nd ed., 2009, eqs. 5.4-5.5): with

.. math::

    d_k(x) = \\frac{(x - \\xi_k)^3_+ - (x - \\xi_K)^3_+}{\\xi_K - \\xi_k},

the basis (without the constant, which the site intercepts absorb) is

.. math::

    N_1(x) = x, \\qquad N_{k+1}(x) = d_k(x) - d_{K-1}(x), \\quad k = 1, \\dots, K - 2,

:math:`K - 1` columns.  A natural spline is cubic between the knots and linear beyond
the boundary knots :math:`\\xi_1, \\xi_K`, so values outside the fitted range are
extrapolated linearly (not by a diverging cubic).  The effect is estimated by ordinary
least squares on these columns, for every feature with the same design: a regression
spline with fixed degrees of freedom, not a penalized smoothing spline (no
per-feature smoothing parameter), so the ComBat fit stays one least-squares solve.
The covariate is mapped to :math:`u = (x - \\xi_1)/(\\xi_K - \\xi_1)` first, which keeps
the cubes of order one and the design well conditioned.

References
----------
Pomponio R, Erus G, Habes M, et al. Harmonization of large MRI datasets for the
analysis of brain imaging patterns throughout the lifespan. NeuroImage 208 (2020) 116450.
Hastie T, Tibshirani R, Friedman J. The Elements of Statistical Learning, 2nd ed.
Springer (2009), Sect. 5.2.1.
"""

from __future__ import annotations

import numpy as np

from bids_harmony.methods.combat.errors import CombatInputError

__all__ = ["DEFAULT_DF", "natural_spline_basis", "quantile_knots"]

#: Degrees of freedom (columns) of a smooth covariate's basis by default.
DEFAULT_DF = 5


def quantile_knots(values: np.ndarray, df: int = DEFAULT_DF, *, name: str = "x") -> np.ndarray:
    """Knots of a natural cubic spline of ``df`` columns: ``df + 1`` quantiles.

    Parameters
    ----------
    values : ndarray, shape (n_samples,)
        The covariate at fit time (finite).
    df : int
        Columns of the basis, ``>= 1`` (1 is the linear term alone).
    name : str
        Covariate name, for the messages.

    Returns
    -------
    ndarray, shape (df + 1,)
        Quantiles at :math:`0, 1/df, \\dots, 1` (boundary knots at the range).

    Raises
    ------
    CombatInputError
        ``df < 1``, or fewer distinct values than knots (ties would merge knots).
    """
    if int(df) != df or df < 1:
        raise CombatInputError(f"a smooth covariate needs df >= 1 columns; got {df!r}.")
    values = np.asarray(values, dtype=np.float64)
    distinct = np.unique(values).size
    if distinct < df + 1:
        raise CombatInputError(
            f"smooth covariate {name!r} has {distinct} distinct values; a natural spline of "
            f"{df} columns needs at least {df + 1}. Use fewer columns (smooth_df) or a "
            "linear effect."
        )
    knots = np.quantile(values, np.linspace(0.0, 1.0, int(df) + 1))
    if np.any(np.diff(knots) <= 0):
        raise CombatInputError(
            f"smooth covariate {name!r}: its quantiles repeat (many tied values), so "
            f"{df + 1} distinct knots cannot be placed. Use fewer columns (smooth_df)."
        )
    return knots


def natural_spline_basis(values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The natural cubic spline basis of ``values`` (see the module docstring).

    Parameters
    ----------
    values : ndarray, shape (n_samples,)
    knots : ndarray, shape (K,)
        Increasing, ``K >= 2`` (from :func:`quantile_knots` at fit time).

    Returns
    -------
    ndarray, shape (n_samples, K - 1)
        ``float64``; the first column is the (rescaled) linear term.
    """
    knots = np.asarray(knots, dtype=np.float64)
    lo, hi = knots[0], knots[-1]
    u = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    xi = (knots - lo) / (hi - lo)

    def d(k: int) -> np.ndarray:
        cube = np.maximum(u - xi[k], 0.0) ** 3 - np.maximum(u - xi[-1], 0.0) ** 3
        return cube / (xi[-1] - xi[k])

    columns = [u]
    if knots.size > 2:
        last = d(knots.size - 2)
        columns += [d(k) - last for k in range(knots.size - 2)]
    return np.column_stack(columns)
