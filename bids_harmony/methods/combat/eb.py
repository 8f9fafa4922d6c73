"""Empirical-Bayes estimates of one site's location and scale effects (Johnson et al., 2007).

ComBat standardizes every feature :math:`g` (see :mod:`.model`) so that, within site
:math:`i`, :math:`Z_{ijg} \\sim N(\\gamma_{ig}, \\delta^2_{ig})`.  The per-feature
estimates

.. math::

    \\hat\\gamma_{ig} = \\frac{1}{n_i}\\sum_j Z_{ijg}, \\qquad
    \\hat\\delta^2_{ig} = \\frac{1}{n_i - 1}\\sum_j (Z_{ijg} - \\hat\\gamma_{ig})^2

are noisy when :math:`n_i` is small; empirical Bayes borrows strength across the
features of the site.  The functions take one site's standardized data ``z`` of shape
``(n_i, n_features)`` and return :math:`(\\gamma^*_i, \\delta^{2*}_i)`, each of shape
``(n_features,)``.

References
----------
Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression data
using empirical Bayes methods. Biostatistics 8 (2007) 118-127.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "InverseGammaPrior",
    "NormalPrior",
    "nonparametric_eb",
    "parametric_eb",
    "site_estimates",
]

LOGGER = logging.getLogger(__name__)

#: Relative change at which the parametric iteration stops (sva's and neuroCombat's).
CONVERGENCE = 1e-4
MAX_ITERATIONS = 10_000
#: Bytes of the (block, n_features) likelihood matrix of the non-parametric estimate.
_BLOCK_BYTES = 32 * 2**20


def site_estimates(z: np.ndarray, *, mean_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature location and scale of one site, before shrinkage.

    Parameters
    ----------
    z : ndarray, shape (n_i, n_features)
        The site's standardized data, ``n_i >= 2``.
    mean_only : bool
        :math:`\\hat\\delta^2 = 1` (location only).

    Returns
    -------
    gamma_hat, delta2_hat : ndarray, shape (n_features,)
    """
    gamma_hat = z.mean(axis=0)
    delta2_hat = np.ones(z.shape[1]) if mean_only else z.var(axis=0, ddof=1)
    return gamma_hat, delta2_hat


@dataclass(frozen=True)
class NormalPrior:
    """:math:`\\gamma_{ig} \\sim N(\\bar\\gamma_i, \\bar\\tau^2_i)`, moments across features."""

    mean: float
    var: float

    @classmethod
    def fit(cls, gamma_hat: np.ndarray) -> NormalPrior:
        """Method of moments on ``gamma_hat`` (n_features,)."""
        return cls(float(np.mean(gamma_hat)), float(np.var(gamma_hat, ddof=1)))


@dataclass(frozen=True)
class InverseGammaPrior:
    """:math:`\\delta^2_{ig} \\sim \\Gamma^{-1}(\\lambda_i, \\theta_i)` by the method of moments.

    With :math:`m` and :math:`s^2` the mean and variance of :math:`\\hat\\delta^2_{ig}`
    across features, :math:`\\lambda = m^2/s^2 + 2` and :math:`\\theta = m(\\lambda - 1)`
    (an inverse gamma has mean :math:`\\theta/(\\lambda - 1)` and variance
    :math:`\\theta^2/((\\lambda - 1)^2(\\lambda - 2))`).
    """

    shape: float
    scale: float

    @classmethod
    def fit(cls, delta2_hat: np.ndarray) -> InverseGammaPrior:
        """Method of moments on ``delta2_hat`` (n_features,)."""
        m, s2 = float(np.mean(delta2_hat)), float(np.var(delta2_hat, ddof=1))
        if s2 == 0.0:  # every feature has the same scale: a point prior
            return cls(np.inf, np.inf)
        shape = (2.0 * s2 + m**2) / s2
        return cls(shape, (m * s2 + m**3) / s2)


def parametric_eb(
    z: np.ndarray,
    *,
    mean_only: bool = False,
    tol: float = CONVERGENCE,
    max_iter: int = MAX_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means under normal / inverse-gamma priors (Johnson 2007, Sect. 3.1).

    Iterates, from :math:`(\\hat\\gamma, \\hat\\delta^2)`,

    .. math::

        \\gamma^*_{ig} = \\frac{n_i \\bar\\tau^2_i \\hat\\gamma_{ig} + \\delta^{2*}_{ig}
        \\bar\\gamma_i}{n_i \\bar\\tau^2_i + \\delta^{2*}_{ig}}, \\qquad
        \\delta^{2*}_{ig} = \\frac{\\theta_i + \\frac12 \\sum_j (Z_{ijg} - \\gamma^*_{ig})^2}
        {n_i/2 + \\lambda_i - 1}

    until the largest relative change of either is below ``tol``.  With
    ``mean_only``, :math:`\\delta^{2*} = 1` and
    :math:`\\gamma^* = (\\bar\\tau^2 \\hat\\gamma + \\bar\\gamma)/(\\bar\\tau^2 + 1)`, the
    posterior mean with :math:`n_i \\to 1, \\delta^2 \\to 1` that sva and neuroCombat use.

    Parameters
    ----------
    z : ndarray, shape (n_i, n_features)
        One site's standardized data; ``n_features >= 2`` (the priors' moments).
    mean_only : bool
    tol : float
        Stopping rule of sva's ``it.sol`` (the maximum over features of
        :math:`|\\Delta\\gamma|/\\gamma` and :math:`|\\Delta\\delta^2|/\\delta^2`, signed
        denominators as there), so that the estimates reproduce the reference
        implementations' to well below ``tol``.
    max_iter : int
        Iterations after which it stops anyway, with a warning in the log.

    Returns
    -------
    gamma_star, delta2_star : ndarray, shape (n_features,)
    """
    n = z.shape[0]
    gamma_hat, delta2_hat = site_estimates(z, mean_only=mean_only)
    g_prior = NormalPrior.fit(gamma_hat)
    if mean_only:
        gamma = (g_prior.var * gamma_hat + g_prior.mean) / (g_prior.var + 1.0)
        return gamma, np.ones_like(gamma)
    d_prior = InverseGammaPrior.fit(delta2_hat)
    tau_n = n * g_prior.var
    if not np.isfinite(d_prior.shape):  # a point prior: every scale is known, no iteration
        return (tau_n * gamma_hat + delta2_hat * g_prior.mean) / (tau_n + delta2_hat), delta2_hat
    gamma, delta2 = gamma_hat, delta2_hat
    # sum_j (z_j - g)^2 = ss + n (zbar - g)^2: no (n_i, n_features) array per iteration
    ss = ((z - gamma_hat) ** 2).sum(axis=0)
    change = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            g_new = (tau_n * gamma_hat + delta2 * g_prior.mean) / (tau_n + delta2)
            sum2 = ss + n * (gamma_hat - g_new) ** 2
            d_new = (0.5 * sum2 + d_prior.scale) / (n / 2.0 + d_prior.shape - 1.0)
            change = max(np.max(np.abs(g_new - gamma) / gamma),
                         np.max(np.abs(d_new - delta2) / delta2))  # fmt: skip
            gamma, delta2 = g_new, d_new
            if not change > tol:  # NaN (0/0 where nothing changed) stops too, as in sva
                break
        else:
            LOGGER.warning(
                "ComBat: the parametric empirical-Bayes estimates did not converge "
                "in %d iterations (last relative change %.2g).",
                max_iter,
                change,
            )
    return gamma, delta2


def nonparametric_eb(
    z: np.ndarray, *, mean_only: bool = False, block_bytes: int = _BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means under the empirical distribution of the other features' estimates
    (Johnson 2007, Sect. 3.2 and supplement).

    For feature :math:`g`, the prior is the set of pairs
    :math:`(\\hat\\gamma_{ik}, \\hat\\delta^2_{ik})_{k \\ne g}` with equal mass, so the
    posterior mean is a weighted average with weights the likelihood of the
    feature's data under each pair:

    .. math::

        w_{gk} \\propto (2\\pi\\hat\\delta^2_{ik})^{-n_i/2}
        \\exp\\Big(-\\frac{\\sum_j (Z_{ijg} - \\hat\\gamma_{ik})^2}{2\\hat\\delta^2_{ik}}\\Big),
        \\qquad \\gamma^*_{ig} = \\sum_{k \\ne g} w_{gk}\\hat\\gamma_{ik}, \\quad
        \\delta^{2*}_{ig} = \\sum_{k \\ne g} w_{gk}\\hat\\delta^2_{ik}.

    The weights are normalized in the log domain, so that a large :math:`n_i`, whose
    likelihoods underflow, still gives finite estimates.  Cost
    :math:`O(n_\\mathrm{features}^2)`: for ROI tables, not voxel-wise maps.

    Parameters
    ----------
    z : ndarray, shape (n_i, n_features)
        One site's standardized data; ``n_features >= 2``.
    mean_only : bool
        :math:`\\hat\\delta^2 = 1` in the likelihood and :math:`\\delta^{2*} = 1`.
    block_bytes : int
        Memory of one block of the likelihood matrix.

    Returns
    -------
    gamma_star, delta2_star : ndarray, shape (n_features,)
    """
    n, n_features = z.shape
    gamma_hat, delta2_hat = site_estimates(z, mean_only=mean_only)
    ss = ((z - gamma_hat) ** 2).sum(axis=0)
    log_norm = -0.5 * n * np.log(delta2_hat)  # 2 pi cancels in the normalization
    gamma = np.empty(n_features)
    delta2 = np.empty(n_features)
    step = max(1, block_bytes // (8 * n_features))
    for start in range(0, n_features, step):
        rows = np.arange(start, min(start + step, n_features))
        sum2 = ss[rows, None] + n * (gamma_hat[rows, None] - gamma_hat[None, :]) ** 2
        log_w = log_norm - sum2 / (2.0 * delta2_hat)
        log_w[np.arange(rows.size), rows] = -np.inf  # leave the feature itself out
        log_w -= log_w.max(axis=1, keepdims=True)
        w = np.exp(log_w)
        w /= w.sum(axis=1, keepdims=True)
        gamma[rows] = w @ gamma_hat
        delta2[rows] = w @ delta2_hat
    if mean_only:
        delta2[:] = 1.0
    return gamma, delta2
