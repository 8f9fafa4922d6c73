"""ComBat of parameter maps in a common space, and of their region means.

A cohort's maps (FA, MD, GFA of each shell), warped to one template, become two
kinds of features per map:

- *voxels*: the values inside a feature mask (the template voxels that are inside
  the brain of nearly every session), one ComBat model per map, as in Fortin et al.
  (2017) for DTI maps;
- *regions*: the mean of the map in each region of interest, one ComBat model per
  map on the ``(n_sessions, n_regions)`` table.

:class:`CombatMaps` holds the template, the mask, the regions and every fitted model;
:func:`fit_combat_maps` fits it, :func:`apply_combat_maps` harmonizes new sessions of
the fitted sites.  The models are those of :mod:`.variants` (ComBat, ComBat-GAM,
CovBat, longitudinal ComBat): the caller binds the variant and its options in the
``fit``/``apply`` callables.  Arrays only: warping and files belong to the levels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.variants import variant_from_tensors, variant_to_tensors
from bids_harmony.methods.model_file import load_tensors, save_tensors

__all__ = [
    "CombatMaps",
    "apply_combat_maps",
    "feature_mask",
    "fit_combat_maps",
    "load_combat_maps",
    "maps_from_tensors",
    "maps_to_tensors",
    "region_means",
    "save_combat_maps",
]

#: Share of the sessions whose brain mask must hold a template voxel for it to be a feature.
MIN_COVERAGE = 0.9

#: A fitted model of one feature table (any variant of :mod:`.variants`).
Model = object
FitFn = Callable[[np.ndarray], Model]
ApplyFn = Callable[[Model, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class CombatMaps:
    """ComBat models of maps in a template space.

    Attributes
    ----------
    template : ndarray, shape (X, Y, Z)
        The template image (e.g. the study FA template), float32.
    affine : ndarray, shape (4, 4)
        Its voxel-to-world affine.
    mask : ndarray of bool, shape (X, Y, Z)
        The voxels that are features.
    regions : ndarray of int32, shape (X, Y, Z)
        Region labels (0: none); the region tables' columns are ``region_ids``.
    region_ids : ndarray of int64, shape (n_regions,)
    voxel : dict of str to model
        One model per map name (e.g. ``"b1000/fa"``), features = ``mask`` voxels in C order.
    region : dict of str to model
        One model per map name, features = region means.
    """

    template: np.ndarray
    affine: np.ndarray
    mask: np.ndarray
    regions: np.ndarray
    region_ids: np.ndarray
    voxel: dict[str, Model] = field(default_factory=dict)
    region: dict[str, Model] = field(default_factory=dict)

    @property
    def maps(self) -> list[str]:
        """The map names, e.g. ``["b1000/fa", "b1000/md"]``."""
        return list(self.voxel)


def feature_mask(masks: np.ndarray, min_coverage: float = MIN_COVERAGE) -> np.ndarray:
    """Template voxels inside at least ``min_coverage`` of the sessions' masks.

    Parameters
    ----------
    masks : ndarray of bool, shape (n_sessions, X, Y, Z)

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)
    """
    masks = np.asarray(masks, dtype=bool)
    return masks.mean(axis=0) >= min_coverage - 1e-12


def region_means(maps: np.ndarray, regions: np.ndarray, region_ids: np.ndarray) -> np.ndarray:
    """Mean of each map in each region.

    Parameters
    ----------
    maps : ndarray, shape (n_sessions, X, Y, Z)
    regions : ndarray of int, shape (X, Y, Z)
    region_ids : ndarray of int, shape (n_regions,)

    Returns
    -------
    ndarray, shape (n_sessions, n_regions)
        NaN for a region without a finite value.
    """
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    labels = np.asarray(regions).ravel()
    out = np.full((flat.shape[0], len(region_ids)), np.nan)
    for r, rid in enumerate(region_ids):
        values = flat[:, labels == rid]
        finite = np.isfinite(values)
        count = finite.sum(axis=1)
        total = np.where(finite, values, 0.0).sum(axis=1)
        out[count > 0, r] = total[count > 0] / count[count > 0]
    return out


def _check_maps(maps: Mapping[str, np.ndarray], shape: tuple[int, ...]) -> int:
    sizes = set()
    for name, array in maps.items():
        if array.ndim != 4 or array.shape[1:] != shape:
            raise CombatInputError(
                f"map {name}: shape {array.shape} is not (n_sessions, *{shape}) (the template "
                "grid): maps must be warped to the model's template first."
            )
        sizes.add(array.shape[0])
    if len(sizes) != 1:
        raise CombatInputError(f"maps of different numbers of sessions: {sorted(sizes)}.")
    return sizes.pop()


def fit_combat_maps(
    maps: Mapping[str, np.ndarray],
    *,
    template: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    regions: np.ndarray,
    fit: FitFn,
) -> CombatMaps:
    """Fit one model per map on the voxels of ``mask`` and one on the region means.

    Parameters
    ----------
    maps : mapping of str to ndarray, shape (n_sessions, X, Y, Z)
        The cohort's maps on the template grid, same sessions in the same order.
    template, affine, mask, regions
        See :class:`CombatMaps`.
    fit : callable
        ``fit(data) -> model`` for a ``(n_sessions, n_features)`` table; the sites,
        covariates and variant are bound by the caller.

    Returns
    -------
    CombatMaps
    """
    mask = np.asarray(mask, dtype=bool)
    _check_maps(maps, mask.shape)
    if not mask.any():
        raise CombatInputError(
            "no template voxel is inside the brain masks of the sessions: the maps do not "
            "overlap after registration (check the registrations to the template)."
        )
    region_ids = np.unique(regions[regions > 0]).astype(np.int64)
    voxel, region = {}, {}
    for name, array in maps.items():
        voxel[name] = fit(array[:, mask])
        if region_ids.size:
            region[name] = fit(region_means(array, regions, region_ids))
    return CombatMaps(np.asarray(template, np.float32), np.asarray(affine, np.float64), mask,
                      np.asarray(regions, np.int32), region_ids, voxel, region)  # fmt: skip


def apply_combat_maps(
    model: CombatMaps, maps: Mapping[str, np.ndarray], apply: ApplyFn
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Harmonize maps of sessions of the fitted sites.

    Parameters
    ----------
    model : CombatMaps
    maps : mapping of str to ndarray, shape (n_sessions, X, Y, Z)
        On the template grid; every map of ``model.maps``.
    apply : callable
        ``apply(model, data) -> harmonized`` for a ``(n_sessions, n_features)`` table
        (sites and covariates bound by the caller).

    Returns
    -------
    harmonized : dict of str to ndarray, shape (n_sessions, X, Y, Z)
        The maps with the voxels of ``model.mask`` harmonized, the others unchanged.
    regions_before, regions_after : dict of str to ndarray, shape (n_sessions, n_regions)
        Region means before, and harmonized by the region model.
    """
    missing = [name for name in model.maps if name not in maps]
    if missing:
        raise CombatInputError(f"maps {missing} of the ComBat model are missing.")
    _check_maps({k: maps[k] for k in model.maps}, model.mask.shape)
    harmonized, before, after = {}, {}, {}
    for name in model.maps:
        array = np.asarray(maps[name])
        out = np.array(array, dtype=np.float32 if array.dtype != np.float64 else np.float64)
        out[:, model.mask] = apply(model.voxel[name], array[:, model.mask])
        harmonized[name] = out
        if name in model.region:
            before[name] = region_means(array, model.regions, model.region_ids)
            after[name] = apply(model.region[name], before[name])
    return harmonized, before, after


def _tensor(array: np.ndarray) -> torch.Tensor:
    # float64 stays float64 (saved with keep_float64): the site estimates are applied at
    # the precision they were fitted with.
    return torch.from_numpy(np.ascontiguousarray(array))


def maps_to_tensors(model: CombatMaps) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Named tensors and a JSON configuration of a :class:`CombatMaps` (exact round trip)."""
    tensors = {
        "template": _tensor(model.template), "affine": _tensor(model.affine),
        "mask": _tensor(model.mask.astype(np.uint8)), "regions": _tensor(model.regions),
        "region_ids": _tensor(model.region_ids),
    }  # fmt: skip
    config: dict[str, object] = {"maps": model.maps, "voxel": {}, "region": {}}
    for kind in ("voxel", "region"):
        for name, sub in getattr(model, kind).items():
            arrays, sub_config = variant_to_tensors(sub)
            config[kind][name] = sub_config  # type: ignore[index]
            tensors.update({f"{kind}.{name}.{k}": _tensor(np.asarray(v))
                            for k, v in arrays.items()})  # fmt: skip
    return tensors, config


def maps_from_tensors(
    tensors: Mapping[str, np.ndarray], config: Mapping[str, object]
) -> CombatMaps:
    """Rebuild a :class:`CombatMaps` from :func:`maps_to_tensors` output."""
    needed = ("template", "affine", "mask", "regions", "region_ids")
    if any(k not in tensors for k in needed) or not isinstance(config.get("voxel"), dict):
        raise CombatInputError("not a ComBat maps model: template, mask or models missing.")
    models: dict[str, dict[str, Model]] = {"voxel": {}, "region": {}}
    for kind in models:
        for name, sub_config in dict(config.get(kind) or {}).items():  # type: ignore[call-overload]
            prefix = f"{kind}.{name}."
            arrays = {k[len(prefix):]: np.asarray(v) for k, v in tensors.items()
                      if k.startswith(prefix)}  # fmt: skip
            models[kind][name] = variant_from_tensors(arrays, sub_config)
    return CombatMaps(
        np.asarray(tensors["template"], np.float32), np.asarray(tensors["affine"], np.float64),
        np.asarray(tensors["mask"]).astype(bool), np.asarray(tensors["regions"], np.int32),
        np.asarray(tensors["region_ids"], np.int64), models["voxel"], models["region"],
    )  # fmt: skip


def save_combat_maps(path: str | Path, model: CombatMaps, card: Mapping[str, object]) -> Path:
    """Write a :class:`CombatMaps` as a model file (safetensors + JSON card)."""
    tensors, config = maps_to_tensors(model)
    return save_tensors(
        path, tensors, {"config": config, **card}, method="combat", keep_float64=True
    )


def load_combat_maps(path: str | Path) -> tuple[CombatMaps, dict[str, object]]:
    """Read a model file written by :func:`save_combat_maps` (verified; no code executed)."""
    tensors, card = load_tensors(path, method="combat")
    config = card.get("config")
    if not isinstance(config, dict):
        raise CombatInputError(f"{path}: the model card has no ComBat configuration.")
    return maps_from_tensors({k: v.numpy() for k, v in tensors.items()}, config), card


def sessions_of(sites: Sequence[str]) -> dict[str, int]:
    """Sessions per site, sorted by site (for model cards)."""
    names, counts = np.unique(np.asarray(sites, dtype=object).astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}
