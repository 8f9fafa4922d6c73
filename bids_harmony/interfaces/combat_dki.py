"""ComBat of the DKI maps (Tong et al. 2020, §2.3.4), beside FA/MD/GFA of every shell.

A session's eight participant-level DKI maps (``model-dki_param-<x>``, one fit of all
shells) are warped to the template like its per-shell maps and become ComBat features
named ``dki/<param>`` (:func:`dki_feature`); ``train --method combat`` fits them when
every session of the protocol has them.  At the participant level
:func:`native_dki` writes a run's ``desc-combat`` DKI maps the way
:mod:`bids_harmony.interfaces.combat` writes its native FA/MD/GFA: the native map plus
the template-space ComBat correction warped back, inside the brain mask, then clipped
to the DKI fit's physical ranges (:data:`bids_harmony.dmri.dki.RANGES`).

A model file without ``dki/`` features (older, or fitted on sessions without DKI maps)
harmonizes no DKI map; a run without DKI maps is harmonized without them
(:func:`without_dki`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.derivatives import DKI_PARAMS

LOGGER = logging.getLogger(__name__)
#: The shell-label slot of the DKI features' names (``dki/mk``).
DKI = "dki"


def dki_feature(param: str) -> str:
    """The ComBat feature name of a DKI map.

    >>> dki_feature("mk")
    'dki/mk'
    """
    return f"{DKI}/{param}"


def is_dki(name: str) -> bool:
    """Whether a feature name is a DKI map's (``dki/<param>``), not a shell's."""
    return name.split("/", 1)[0] == DKI


def shell_labels(names: Sequence[str]) -> list[str]:
    """The shell labels of a model's feature names, by b-value (DKI features left out)."""
    labels = {name.split("/", 1)[0] for name in names if not is_dki(name)}
    return sorted(labels, key=lambda s: float(s[1:]))


def dki_params(names: Sequence[str]) -> list[str]:
    """The DKI maps among a model's feature names, in :data:`DKI_PARAMS` order."""
    present = {name.split("/", 1)[1] for name in names if is_dki(name)}
    return [p for p in DKI_PARAMS if p in present]


def has_dki_maps(outputs: Any) -> bool:
    """Whether a run (its :class:`~bids_harmony.bids.reader.RunOutputs`) has all 8 DKI maps."""
    return len(outputs.dki_maps()) == len(DKI_PARAMS)


def without_dki(model: Any) -> Any:
    """The :class:`~bids_harmony.methods.combat.maps.CombatMaps` with its DKI models dropped."""
    return replace(model, voxel={k: v for k, v in model.voxel.items() if not is_dki(k)},
                   region={k: v for k, v in model.region.items() if not is_dki(k)})  # fmt: skip


def stacked_features(
    paths: Sequence[Path], labels: Sequence[str], kinds: Sequence[str]
) -> dict[str, np.ndarray]:
    """The sessions' template-space maps (WarpMaps ``.npz``) stacked per feature.

    Per-shell maps ``<label>/<kind>`` always; the DKI maps ``dki/<param>`` when every
    session has them (else INFO: ComBat leaves them out).  One array is read at a time
    from each file, so the peak memory is the stacked maps (``n_sessions x n_maps x
    template voxels x 4`` bytes), not twice that.
    """
    names = [f"{label}/{kind}" for label in labels for kind in kinds]
    keys = {name: f"{name}/none" for name in names}
    with_dki = []
    for path in paths:
        with np.load(path) as data:
            with_dki.append(all(f"{dki_feature(p)}/none" in data.files for p in DKI_PARAMS))
    if all(with_dki):
        keys.update({dki_feature(p): f"{dki_feature(p)}/none" for p in DKI_PARAMS})
    elif any(with_dki):
        LOGGER.info("ComBat: %d of %d sessions have no DKI maps; the DKI maps are left out.",
                    with_dki.count(False), len(with_dki))  # fmt: skip
    maps = {}
    for name, key in keys.items():
        arrays = []
        for path in paths:
            with np.load(path) as data:
                arrays.append(np.asarray(data[key], np.float32))
        maps[name] = np.stack(arrays)
    return maps


def warp_dki(outputs: Any, params: Sequence[str], transform: Any, template: Path
             ) -> dict[str, np.ndarray]:
    """A run's DKI maps in template space, ``dki/<param>`` -> (1, X, Y, Z)."""
    from bids_harmony.registration.warps import to_template

    return {dki_feature(p): to_template(outputs.dki_map(p, required=True), transform,
                                        template)[None] for p in params}  # fmt: skip


def native_dki(
    names: Any,
    root: Path,
    outputs: Any,
    params: Sequence[str],
    warped: Mapping[str, np.ndarray],
    harmonized: Mapping[str, np.ndarray],
    feature_mask: np.ndarray,
    mask_native: np.ndarray,
    transform: Any,
    template: Path,
    common: Mapping[str, Any],
    model_uri: str,
) -> list[tuple[Path, dict]]:
    """Write a run's native ``desc-combat`` DKI maps; ``(path, sidecar)`` per map.

    The caller writes the sidecars last (a file with a sidecar is complete).
    """
    import nibabel as nb

    from bids_harmony.bids.derivatives import bids_uri
    from bids_harmony.bids.io import save_nifti
    from bids_harmony.dmri.dki import DESCRIPTIONS, RANGES, UNITS
    from bids_harmony.registration.warps import native_correction

    out = []
    for param in params:
        name = dki_feature(param)
        raw = nb.load(outputs.dki_map(param, required=True))
        delta = np.where(feature_mask, harmonized[name][0] - warped[name][0], 0.0)
        native = native_correction(raw.dataobj, delta, transform, template, mask_native)
        low, high = RANGES[param]
        inside = mask_native & np.isfinite(native)
        clipped = int(np.count_nonzero(inside & ((native < low) | (native > high))))
        native = np.clip(np.where(np.isfinite(native), native, 0.0), low, high)
        path = root / names.dki_map(param, "combat")
        save_nifti(nb.Nifti1Image(native.astype(np.float32), raw.affine), path)
        out.append((path, {
            **common, "Sources": [bids_uri("", names.dki_map(param)), bids_uri("", names.mask()),
                                  model_uri],
            "Description": f"ComBat-harmonized {DESCRIPTIONS[param]}: the native DKI map plus "
            "the template-space ComBat correction warped back, inside the mask",
            "Units": UNITS[param],
            "ClippedToRange": [low, high],
            "ClippedVoxels": {"total": clipped, "of": int(mask_native.sum())},
        }))  # fmt: skip
    return out
