"""ComBat as a :class:`~bids_harmony.methods.base.HarmonizationMethod`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bids_harmony.methods.base import (
    Config,
    Example,
    HarmonizationMethod,
    Harmonizes,
    Reference,
    TrainsFrom,
)
from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.model import fit_combat
from bids_harmony.methods.combat.variants import (
    VariantModel,
    apply_variant,
    fit_variant,
    variant_from_tensors,
    variant_to_tensors,
)

JOHNSON = Reference(
    short="Johnson et al., 2007",
    text="Johnson WE, Li C, Rabinovic A. Adjusting batch effects in microarray expression "
    "data using empirical Bayes methods. Biostatistics 8 (2007) 118-127.",
    doi="10.1093/biostatistics/kxj037",
)
FORTIN_DTI = Reference(
    short="Fortin et al., 2017",
    text="Fortin JP, Parker D, Tunc B, et al. Harmonization of multi-site diffusion tensor "
    "imaging data. NeuroImage 161 (2017) 149-170.",
    doi="10.1016/j.neuroimage.2017.08.047",
)
FORTIN_CT = Reference(
    short="Fortin et al., 2018",
    text="Fortin JP, Cullen N, Sheline YI, et al. Harmonization of cortical thickness "
    "measurements across scanners and sites. NeuroImage 167 (2018) 104-120.",
    doi="10.1016/j.neuroimage.2017.11.024",
)


class CombatMethod(HarmonizationMethod[VariantModel]):
    """ComBat: location/scale site effects estimated on a cohort, removed per feature.

    A cohort method has no source/target pair: ``fit(data, sites, covariates=...,
    ref_site=..., eb=..., mean_only=..., categorical=...)`` takes the cohort's features
    ``(n_samples, n_features)`` as ``source`` and their site labels ``(n_samples,)`` as
    ``target`` (see :func:`~bids_harmony.methods.combat.fit_combat`);
    ``apply(model, data, sites=..., covariates=...)`` harmonizes samples of the fitted
    sites (:func:`~bids_harmony.methods.combat.apply_combat`).  With ``variant=``
    (``"combat"``, ``"gam"``, ``"covbat"``, ``"longitudinal"``) ``fit`` goes through
    :func:`~bids_harmony.methods.combat.fit_variant` (``subjects=...`` for the
    longitudinal one, also at ``apply``); every variant's model saves and loads.
    """

    name = "combat"
    title = "ComBat"
    trains_from = TrainsFrom.COHORT
    harmonizes = Harmonizes.PARAMETER_MAPS
    description = (
        "ComBat modelled each feature (a voxel of a parameter map in a common space, or "
        "a region's mean) as a grand mean plus the effects of the biological covariates, "
        "an additive site effect and a multiplicative site effect on the residual "
        "variation; the site effects were estimated on the whole cohort with empirical-"
        "Bayes shrinkage across features and removed, while the covariate effects were "
        "kept."
    )
    references = (JOHNSON, FORTIN_DTI, FORTIN_CT)

    def fit(self, source: np.ndarray, target: np.ndarray, **options: object) -> VariantModel:
        """``source``: data (n_samples, n_features); ``target``: sites (n_samples,)."""
        if "variant" in options:
            variant = str(options.pop("variant"))
            return fit_variant(variant, source, target, **options)  # type: ignore[arg-type]
        return fit_combat(source, target, **options)  # type: ignore[arg-type]

    def apply(self, model: VariantModel, data: np.ndarray, **options: object) -> np.ndarray:
        """Options ``sites`` (required, one per row of ``data``), ``covariates`` and,
        for a longitudinal model, ``subjects``."""
        if "sites" not in options:
            raise CombatInputError("ComBat's apply needs the site of every sample (sites=...).")
        return apply_variant(model, data, options["sites"], options.get("covariates"),  # type: ignore[arg-type]
                             subjects=options.get("subjects"))  # type: ignore[arg-type]  # fmt: skip

    def example(self, seed: int = 0) -> Example:
        return _example(seed)

    def to_tensors(self, model: VariantModel) -> tuple[dict[str, np.ndarray], Config]:
        return variant_to_tensors(model)

    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> VariantModel:
        return variant_from_tensors(tensors, config)


def _example(seed: int) -> Example:
    """Three sites of 30 subjects, 40 FA-like features; site A is the reference.

    Each feature is :math:`\\alpha_v + \\text{age}\\,\\beta_v + \\sigma\\varepsilon`
    (ages differ between sites), measured at site :math:`i` with an additive shift
    :math:`\\gamma_{iv}` and a scale :math:`\\delta_{iv}` of the residual (none at A).
    The truth of new subjects is their value without the site effect.
    """
    rng = np.random.default_rng(seed)
    n_features, sigma = 40, 0.03
    alpha = rng.uniform(0.4, 0.8, n_features)
    slope = rng.normal(-0.003, 0.001, n_features)  # per year
    gamma = np.vstack([np.zeros(n_features), rng.normal(0.0, 0.05, (2, n_features))])
    delta = np.vstack([np.ones(n_features), rng.uniform(0.6, 1.6, (2, n_features))])
    age_range = {"A": (20.0, 50.0), "B": (30.0, 60.0), "C": (40.0, 70.0)}

    def cohort(per_site: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        sites = np.repeat(list(age_range), per_site)
        age = np.concatenate([rng.uniform(*age_range[s], per_site) for s in age_range])
        eps = sigma * rng.standard_normal((sites.size, n_features))
        index = np.searchsorted(list(age_range), sites)
        truth = alpha + age[:, None] * slope + eps
        observed = alpha + age[:, None] * slope + gamma[index] + delta[index] * eps
        return observed, sites, age, truth

    train, train_sites, train_age, _ = cohort(30)
    new, new_sites, new_age, truth = cohort(10)
    return Example(
        train, train_sites, {"covariates": {"age": train_age}, "ref_site": "A"},
        new, {"sites": new_sites, "covariates": {"age": new_age}}, truth=truth,
    )  # fmt: skip
