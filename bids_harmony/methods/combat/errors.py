"""Errors and warnings of ComBat: bad input is a :class:`BidsHarmonyError` (exit code 2)."""

from __future__ import annotations

from bids_harmony.errors import BidsHarmonyError

__all__ = [
    "CombatError",
    "CombatInputError",
    "ConfoundedCovariateError",
    "SmallSiteWarning",
    "TooFewSamplesError",
    "UnseenSiteError",
]


class CombatError(BidsHarmonyError, ValueError):
    """Data that ComBat cannot fit or apply to."""


class CombatInputError(CombatError):
    """Arrays of the wrong shape, missing covariate values, an unknown reference site."""


class TooFewSamplesError(CombatError):
    """A site with fewer than two samples, or fewer than two sites."""


class ConfoundedCovariateError(CombatError):
    """A covariate that site (or the other covariates) determines: its effect cannot be
    told apart from the site effect (the design matrix is rank-deficient)."""


class UnseenSiteError(CombatError):
    """Samples of a site that the model was not fitted on."""


class SmallSiteWarning(UserWarning):
    """A site with fewer samples than ComBat's estimates need to be reliable."""
