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
from bids_harmony.methods.combat.design import CovariateEncoding
from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.model import EB_VARIANTS, CombatModel, apply_combat, fit_combat

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

#: Arrays of a :class:`CombatModel` stored as tensors (the rest is its JSON config).
_ARRAYS = ("alpha", "beta", "gamma_star", "delta2_star", "sigma", "untouched_reason")


class CombatMethod(HarmonizationMethod[CombatModel]):
    """ComBat: location/scale site effects estimated on a cohort, removed per feature.

    A cohort method has no source/target pair: ``fit(data, sites, covariates=...,
    ref_site=..., eb=..., mean_only=..., categorical=...)`` takes the cohort's features
    ``(n_samples, n_features)`` as ``source`` and their site labels ``(n_samples,)`` as
    ``target`` (see :func:`~bids_harmony.methods.combat.fit_combat`);
    ``apply(model, data, sites=..., covariates=...)`` harmonizes samples of the fitted
    sites (:func:`~bids_harmony.methods.combat.apply_combat`).
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

    def fit(self, source: np.ndarray, target: np.ndarray, **options: object) -> CombatModel:
        """``source``: data (n_samples, n_features); ``target``: sites (n_samples,)."""
        return fit_combat(source, target, **options)  # type: ignore[arg-type]

    def apply(self, model: CombatModel, data: np.ndarray, **options: object) -> np.ndarray:
        """Options ``sites`` (required, one per row of ``data``) and ``covariates``."""
        if "sites" not in options:
            raise CombatInputError("ComBat's apply needs the site of every sample (sites=...).")
        return apply_combat(model, data, options["sites"], options.get("covariates"))  # type: ignore[arg-type]

    def example(self, seed: int = 0) -> Example:
        return _example(seed)

    def to_tensors(self, model: CombatModel) -> tuple[dict[str, np.ndarray], Config]:
        tensors = {name: np.asarray(getattr(model, name)) for name in _ARRAYS}
        config: Config = {
            "sites": list(model.sites),
            "ref_site": model.ref_site,
            "eb": model.eb,
            "mean_only": bool(model.mean_only),
            "covariates": model.encoding.to_config(),
            "n_per_site": [int(n) for n in model.n_per_site],
            "n_features": model.n_features,
        }
        return tensors, config

    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> CombatModel:
        missing = [name for name in _ARRAYS if name not in tensors]
        sites = [str(s) for s in config.get("sites", [])]  # type: ignore[attr-defined]
        if missing or len(sites) < 2 or config.get("eb") not in EB_VARIANTS:
            raise CombatInputError(
                f"not a ComBat model: tensors {missing} missing, or no sites / variant in "
                "its configuration."
            )
        ref = config.get("ref_site")
        encoding = CovariateEncoding.from_config(config.get("covariates") or {})  # type: ignore[arg-type]
        n_features = int(config.get("n_features", -1))  # type: ignore[call-overload]
        n_columns = len(encoding.column_names)
        shapes = {"alpha": (n_features,), "beta": (n_columns, n_features),
                  "gamma_star": (len(sites), n_features),
                  "delta2_star": (len(sites), n_features),
                  "sigma": (n_features,), "untouched_reason": (n_features,)}  # fmt: skip
        wrong = [f"{k} {tuple(tensors[k].shape)} != {v}" for k, v in shapes.items()
                 if tuple(tensors[k].shape) != v]  # fmt: skip
        if wrong:
            raise CombatInputError(f"ComBat model tensors of the wrong shape: {wrong}.")
        floats = {k: np.asarray(tensors[k], np.float64) for k in _ARRAYS[:-1]}
        return CombatModel(
            sites=tuple(sites),
            n_per_site=np.asarray(config.get("n_per_site", []), np.int64),
            untouched_reason=np.asarray(tensors["untouched_reason"], np.int8),
            encoding=encoding,
            ref_site=None if ref is None else str(ref),
            eb=str(config["eb"]),
            mean_only=bool(config.get("mean_only", False)),
            **floats,
        )


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
