"""The ComBat family behind one interface: fit, apply, and models as tensors.

=================  ==========================================================  =========
variant            model                                                       module
=================  ==========================================================  =========
``combat``         location/scale site effects, linear covariates              :mod:`.model`
``gam``            the same with smooth (spline) covariate effects              :mod:`.splines`
``covbat``         ComBat, then the site effects on the residual covariance     :mod:`.covbat`
``longitudinal``   ComBat with a random subject intercept (repeated sessions)  :mod:`.longitudinal`
=================  ==========================================================  =========

:func:`variant_to_tensors` turns any fitted model into named arrays and a JSON
configuration holding the variant's name; :func:`variant_from_tensors` inverts it
exactly.  A plain ComBat (or GAM) model keeps the keys it had before the variants
existed, and a configuration without ``variant`` is read as plain ComBat.  The
first ComBat step of CovBat and longitudinal ComBat is stored under the same tensor
names as a plain model; CovBat's ComBat of the scores under ``scores.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bids_harmony.methods.combat.covbat import CovbatModel, apply_covbat, fit_covbat
from bids_harmony.methods.combat.design import CovariateEncoding, CovariatesLike
from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.longitudinal import (
    LongitudinalCombatModel,
    apply_longitudinal_combat,
    fit_longitudinal_combat,
)
from bids_harmony.methods.combat.model import EB_VARIANTS, CombatModel, apply_combat, fit_combat
from bids_harmony.methods.combat.steps import check_eb

__all__ = [
    "VARIANTS",
    "VariantModel",
    "apply_variant",
    "fit_variant",
    "variant_from_tensors",
    "variant_of",
    "variant_to_tensors",
]

VARIANTS: tuple[str, ...] = ("combat", "gam", "covbat", "longitudinal")
VariantModel = CombatModel | CovbatModel | LongitudinalCombatModel

#: Arrays of a :class:`CombatModel` stored as tensors (the rest is its JSON config).
_ARRAYS = ("alpha", "beta", "gamma_star", "delta2_star", "sigma", "untouched_reason")


def variant_of(model: object) -> str:
    """The variant name of a fitted model (``gam``: a ComBat model with smooth covariates)."""
    if isinstance(model, CovbatModel):
        return "covbat"
    if isinstance(model, LongitudinalCombatModel):
        return "longitudinal"
    if isinstance(model, CombatModel):
        return "gam" if model.encoding.smooth else "combat"
    raise CombatInputError(f"not a ComBat-family model: {type(model).__name__}.")


def fit_variant(
    variant: str,
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    subjects: Sequence[object] | np.ndarray | None = None,
    ref_site: object | None = None,
    eb: str = "parametric",
    mean_only: bool = False,
    smooth: Sequence[str | int] = (),
    categorical: Sequence[str | int] = (),
    **options: Any,
) -> VariantModel:
    """Fit one variant of ComBat.

    Parameters
    ----------
    variant : {"combat", "gam", "covbat", "longitudinal"}
    data : ndarray, shape (n_samples, n_features)
    sites : sequence, shape (n_samples,)
    covariates : array or mapping or None
        Effects to keep (see :class:`~bids_harmony.methods.combat.CovariateEncoding`).
    subjects : sequence, shape (n_samples,), optional
        Subject of each sample: required by ``longitudinal``, refused by the others.
    ref_site, eb, mean_only, categorical
        As :func:`~bids_harmony.methods.combat.fit_combat`.
    smooth : sequence of str or int
        Smooth covariates: required by ``gam``, refused by ``combat``, optional for
        ``covbat`` and ``longitudinal``.
    **options
        Variant-specific: ``smooth_df``; ``variance``, ``n_components``, ``score_eb``,
        ``std_var`` (``covbat``, see :func:`~.covbat.fit_covbat`).

    Returns
    -------
    CombatModel, CovbatModel or LongitudinalCombatModel

    Raises
    ------
    CombatInputError
        An unknown variant, options that do not fit it (``gam`` without ``smooth``,
        ``longitudinal`` without ``subjects``), or as the variant's fit.
    """
    if variant not in VARIANTS:
        raise CombatInputError(f"unknown ComBat variant {variant!r}; choose from {VARIANTS}.")
    check_eb(eb)
    if variant == "gam" and not smooth:
        raise CombatInputError(
            "ComBat-GAM needs the covariates whose effect is smooth (smooth=('age',))."
        )
    if variant == "combat" and smooth:
        raise CombatInputError(
            f"smooth covariates {list(smooth)} make ComBat-GAM: use variant 'gam'."
        )
    if variant != "longitudinal":
        _refuse_subjects(subjects, variant)
    allowed = {"smooth_df"} | (
        {"variance", "n_components", "score_eb", "std_var"} if variant == "covbat" else set()
    )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CombatInputError(f"options {unknown} do not apply to variant {variant!r}.")
    common: dict[str, Any] = dict(ref_site=ref_site, eb=eb, mean_only=mean_only,
                                  categorical=categorical, smooth=smooth, **options)  # fmt: skip
    if variant == "covbat":
        return fit_covbat(data, sites, covariates, **common)
    if variant == "longitudinal":
        return fit_longitudinal_combat(data, sites, covariates, subjects=subjects, **common)
    return fit_combat(data, sites, covariates, **common)


def _refuse_subjects(subjects: object, variant: str) -> None:
    if subjects is not None:
        raise CombatInputError(
            f"subjects are modelled by the 'longitudinal' variant only, not {variant!r}."
        )


def apply_variant(
    model: VariantModel,
    data: np.ndarray,
    sites: Sequence[object] | np.ndarray,
    covariates: CovariatesLike = None,
    *,
    subjects: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Harmonize samples of the fitted sites with any variant's model.

    ``subjects`` is used by longitudinal models only (each sample its own subject when
    None) and refused by the others.  Returns ``(n_samples, n_features)``, the
    reference site's samples bit for bit.
    """
    if isinstance(model, LongitudinalCombatModel):
        return apply_longitudinal_combat(model, data, sites, covariates, subjects=subjects)
    _refuse_subjects(subjects, variant_of(model))
    if isinstance(model, CovbatModel):
        return apply_covbat(model, data, sites, covariates)
    if isinstance(model, CombatModel):
        return apply_combat(model, data, sites, covariates)
    raise CombatInputError(f"not a ComBat-family model: {type(model).__name__}.")


def _combat_to_tensors(model: CombatModel, prefix: str = "") -> tuple[dict[str, np.ndarray],
                                                                       dict[str, Any]]:  # fmt: skip
    tensors = {prefix + name: np.asarray(getattr(model, name)) for name in _ARRAYS}
    config: dict[str, Any] = {
        "sites": list(model.sites),
        "ref_site": model.ref_site,
        "eb": model.eb,
        "mean_only": bool(model.mean_only),
        "covariates": model.encoding.to_config(),
        "n_per_site": [int(n) for n in model.n_per_site],
        "n_features": model.n_features,
    }
    return tensors, config


def _combat_from_tensors(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], prefix: str = ""
) -> CombatModel:
    missing = [prefix + name for name in _ARRAYS if prefix + name not in tensors]
    sites = [str(s) for s in config.get("sites", [])]
    if missing or len(sites) < 2 or config.get("eb") not in EB_VARIANTS:
        raise CombatInputError(
            f"not a ComBat model: tensors {missing} missing, or no sites / variant in "
            "its configuration."
        )
    ref = config.get("ref_site")
    encoding = CovariateEncoding.from_config(config.get("covariates") or {})
    n_features = int(config.get("n_features", -1))
    n_columns = len(encoding.column_names)
    shapes = {"alpha": (n_features,), "beta": (n_columns, n_features),
              "gamma_star": (len(sites), n_features), "delta2_star": (len(sites), n_features),
              "sigma": (n_features,), "untouched_reason": (n_features,)}  # fmt: skip
    wrong = [f"{prefix}{k} {tuple(tensors[prefix + k].shape)} != {v}" for k, v in shapes.items()
             if tuple(tensors[prefix + k].shape) != v]  # fmt: skip
    if wrong:
        raise CombatInputError(f"ComBat model tensors of the wrong shape: {wrong}.")
    floats = {k: np.asarray(tensors[prefix + k], np.float64) for k in _ARRAYS[:-1]}
    return CombatModel(
        sites=tuple(sites),
        n_per_site=np.asarray(config.get("n_per_site", []), np.int64),
        untouched_reason=np.asarray(tensors[prefix + "untouched_reason"], np.int8),
        encoding=encoding,
        ref_site=None if ref is None else str(ref),
        eb=str(config["eb"]),
        mean_only=bool(config.get("mean_only", False)),
        **floats,
    )


def variant_to_tensors(model: VariantModel) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Named arrays and a JSON-serializable configuration (with ``variant``) of a model;
    :func:`variant_from_tensors` inverts it exactly."""
    variant = variant_of(model)
    if isinstance(model, CombatModel):
        tensors, config = _combat_to_tensors(model)
        return tensors, {"variant": variant, **config}
    tensors, config = _combat_to_tensors(model.combat)
    config["variant"] = variant
    if isinstance(model, CovbatModel):
        score_tensors, score_config = _combat_to_tensors(model.scores, "scores.")
        tensors.update(score_tensors)
        config["scores"] = score_config
        config["n_components"] = model.n_components
        for name in ("center", "scale", "loadings", "explained"):
            tensors[name] = np.asarray(getattr(model, name))
    else:
        for name in ("site_alpha", "tau2", "sigma2_within"):
            tensors[name] = np.asarray(getattr(model, name))
    return tensors, config


def variant_from_tensors(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, Any]
) -> VariantModel:
    """Rebuild a model from :func:`variant_to_tensors` output (no ``variant``: ComBat).

    Raises
    ------
    CombatInputError
        An unknown variant, or tensors missing or of the wrong shape.
    """
    variant = str(config.get("variant", "combat"))
    if variant not in VARIANTS:
        raise CombatInputError(f"unknown ComBat variant {variant!r} in the model configuration.")
    combat = _combat_from_tensors(tensors, config)
    if variant in ("combat", "gam"):
        return combat
    n = combat.n_features
    if variant == "covbat":
        k = int(config.get("n_components", -1))
        shapes = {"center": (n,), "scale": (n,), "loadings": (n, k), "explained": (k,)}
    else:
        shapes = {"site_alpha": (len(combat.sites), n), "tau2": (n,), "sigma2_within": (n,)}
    wrong = [f"{name} {None if name not in tensors else tuple(tensors[name].shape)} != {shape}"
             for name, shape in shapes.items()
             if name not in tensors or tuple(tensors[name].shape) != shape]  # fmt: skip
    if wrong:
        raise CombatInputError(f"{variant} model tensors missing or of the wrong shape: {wrong}.")
    arrays = {name: np.asarray(tensors[name], np.float64) for name in shapes}
    if variant == "covbat":
        scores = _combat_from_tensors(tensors, config.get("scores") or {}, "scores.")
        return CovbatModel(combat=combat, scores=scores, **arrays)
    return LongitudinalCombatModel(combat=combat, **arrays)
