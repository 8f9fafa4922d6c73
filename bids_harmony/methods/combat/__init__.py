"""ComBat: cohort-trained removal of additive and multiplicative site effects per feature.

- :func:`fit_combat`, :func:`apply_combat`, :func:`combat`, :class:`CombatModel`
  (:mod:`.model`): the location/scale model with covariates kept, a reference site,
  and empirical-Bayes (parametric, non-parametric) or no shrinkage.
- :func:`parametric_eb`, :func:`nonparametric_eb` (:mod:`.eb`): one site's shrunken
  estimates.
- :class:`CovariateEncoding` (:mod:`.design`): covariates as design-matrix columns.
- :class:`Untouched` (:mod:`.untouched`): why a feature was left as it is.
- Variants (:mod:`.variants`: :func:`fit_variant`, :func:`apply_variant`,
  :func:`variant_to_tensors`, :func:`variant_from_tensors`): ComBat-GAM (smooth
  covariates, :mod:`.splines`), CovBat (:func:`fit_covbat`, :mod:`.covbat`) and
  longitudinal ComBat (:func:`fit_longitudinal_combat`, :mod:`.longitudinal`).

Arrays only: reading maps, ROI tables and ``participants.tsv`` belongs to the levels.
"""

from bids_harmony.methods.combat.covbat import CovbatModel, apply_covbat, fit_covbat
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
from bids_harmony.methods.combat.longitudinal import (
    LongitudinalCombatModel,
    apply_longitudinal_combat,
    fit_longitudinal_combat,
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
from bids_harmony.methods.combat.variants import (
    VARIANTS,
    apply_variant,
    fit_variant,
    variant_from_tensors,
    variant_of,
    variant_to_tensors,
)

__all__ = [
    "EB_VARIANTS",
    "MIN_RELIABLE_SAMPLES",
    "VARIANTS",
    "CombatError",
    "CombatInputError",
    "CombatModel",
    "ConfoundedCovariateError",
    "CovariateEncoding",
    "CovbatModel",
    "LongitudinalCombatModel",
    "SmallSiteWarning",
    "TooFewSamplesError",
    "UnseenSiteError",
    "Untouched",
    "apply_combat",
    "apply_covbat",
    "apply_longitudinal_combat",
    "apply_variant",
    "combat",
    "fit_combat",
    "fit_covbat",
    "fit_longitudinal_combat",
    "fit_variant",
    "nonparametric_eb",
    "parametric_eb",
    "variant_from_tensors",
    "variant_of",
    "variant_to_tensors",
]
