"""ComBat: cohort-trained removal of additive and multiplicative site effects per feature.

- :func:`fit_combat`, :func:`apply_combat`, :func:`combat`, :class:`CombatModel`
  (:mod:`.model`): the location/scale model with covariates kept, a reference site,
  and empirical-Bayes (parametric, non-parametric) or no shrinkage.
- :func:`parametric_eb`, :func:`nonparametric_eb` (:mod:`.eb`): one site's shrunken
  estimates.
- :class:`CovariateEncoding` (:mod:`.design`): covariates as design-matrix columns.
- :class:`Untouched` (:mod:`.untouched`): why a feature was left as it is.

Arrays only: reading maps, ROI tables and ``participants.tsv`` belongs to the levels.
"""

from bids_harmony.methods.combat.design import CovariateEncoding
from bids_harmony.methods.combat.eb import nonparametric_eb, parametric_eb
from bids_harmony.methods.combat.errors import (
    CombatError,
    CombatInputError,
    ConfoundedCovariateError,
    SmallSiteWarning,
    TooFewSamplesError,
    UnseenSiteError,
)
from bids_harmony.methods.combat.model import (
    EB_VARIANTS,
    MIN_RELIABLE_SAMPLES,
    CombatModel,
    apply_combat,
    combat,
    fit_combat,
)
from bids_harmony.methods.combat.untouched import Untouched

__all__ = [
    "EB_VARIANTS",
    "MIN_RELIABLE_SAMPLES",
    "CombatError",
    "CombatInputError",
    "CombatModel",
    "ConfoundedCovariateError",
    "CovariateEncoding",
    "SmallSiteWarning",
    "TooFewSamplesError",
    "UnseenSiteError",
    "Untouched",
    "apply_combat",
    "combat",
    "fit_combat",
    "nonparametric_eb",
    "parametric_eb",
]
