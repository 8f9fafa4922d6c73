"""Nipype interfaces of ComBat: fit on a cohort (``train``), apply to a run (``participant``).

``train --method combat`` warps every human session's FA, MD and GFA maps (and its
DKI maps, :mod:`.combat_dki`) to a template (the group level's
:class:`~bids_harmony.interfaces.group_level.WarpMaps`),
then :class:`FitCombatModel` fits one model per map on the voxels inside nearly every
session's brain and one on the region means, and writes
``OUT/models/combat_tgt-<T>[_acq-<A>].safetensors`` with its card.

At the participant level :class:`ApplyCombatModel` registers a run's FA map to the
model's template, warps its maps there, removes its site's effects, and writes

- ``space-<S>_desc-combat`` maps (template space) and the unharmonized maps
  resampled there (``space-<S>``, no ``desc``), so cohort analyses use both;
- ``desc-combat`` maps in the run's native space: the native map plus the ComBat
  correction warped back (a correction, not the resampled map, so native detail is
  kept), inside the brain mask;
- ``space-<S>_desc-combat_regions.tsv``: region means before and after.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

LOGGER = logging.getLogger(__name__)
#: The ``desc-`` entity of ComBat outputs.
METHOD = "combat"
KINDS = ("fa", "md", "gfa")


@dataclass(frozen=True)
class CombatOptions:
    """How ComBat is fitted: the variant and its options (``train --combat-*``)."""

    variant: str = "combat"
    eb: str = "parametric"
    mean_only: bool = False
    smooth: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    covariates: tuple[str, ...] = ()
    ref_site: str | None = None

    def describe(self) -> dict[str, object]:
        return {"Variant": self.variant, "EmpiricalBayes": self.eb,
                "MeanOnly": self.mean_only, "SmoothCovariates": list(self.smooth),
                "Covariates": list(self.covariates), "ReferenceSite": self.ref_site}  # fmt: skip


@dataclass(frozen=True)
class CohortSession:
    """One session of the cohort: its key (run prefix), label, subject, site, covariates."""

    key: str
    label: str
    subject: str
    site: str
    covariates: dict[str, float | str] = field(default_factory=dict)


def _columns(sessions: Sequence[CohortSession], names: Sequence[str]) -> dict[str, list]:
    return {name: [s.covariates[name] for s in sessions] for name in names}


def fit_function(options: CombatOptions, sessions: Sequence[CohortSession]):
    """``fit(data) -> model`` for a ``(n_sessions, n_features)`` table of ``sessions``."""
    from bids_harmony.methods.combat.variants import fit_variant

    sites = [s.site for s in sessions]
    subjects = [s.subject for s in sessions]
    covariates = _columns(sessions, options.covariates) or None

    subjects = subjects if options.variant == "longitudinal" else None

    def fit(data: np.ndarray):
        return fit_variant(options.variant, data, sites, covariates, subjects=subjects,
                           ref_site=options.ref_site, eb=options.eb,  # type: ignore[arg-type]
                           mean_only=options.mean_only, smooth=options.smooth,
                           categorical=options.categorical)  # fmt: skip

    return fit


def apply_function(options: CombatOptions, sessions: Sequence[CohortSession]):
    """``apply(model, data) -> harmonized`` for a table of ``sessions``."""
    from bids_harmony.methods.combat.variants import apply_variant

    sites = [s.site for s in sessions]
    subjects = [s.subject for s in sessions]
    covariates = _columns(sessions, options.covariates) or None

    def apply(model, data: np.ndarray) -> np.ndarray:
        from bids_harmony.methods.combat.variants import variant_of

        who = subjects if variant_of(model) == "longitudinal" else None
        return apply_variant(model, data, sites, covariates, subjects=who)

    return apply


def cohort_regions(mask: np.ndarray, mean_fa: np.ndarray, mean_md: np.ndarray) -> np.ndarray:
    """The group level's regions (WM/GM cut by a 3x3x3 grid; CSF left out) of a cohort."""
    from bids_harmony.evaluation.maps import block_rois, tissue_classes

    return block_rois(tissue_classes(mask, mean_fa, mean_md))


def atlas_regions(atlas_file: Path, template_img) -> np.ndarray:
    """An integer label image resampled (nearest neighbour) to the template's grid."""
    import nibabel as nb
    from nibabel.processing import resample_from_to

    atlas = nb.load(atlas_file)
    if atlas.shape[:3] == template_img.shape[:3] and np.allclose(atlas.affine,
                                                                 template_img.affine):  # fmt: skip
        data = np.asarray(atlas.dataobj)
    else:
        data = np.asarray(resample_from_to(atlas, (template_img.shape[:3], template_img.affine),
                                           order=0).dataobj)  # fmt: skip
    return np.rint(data[..., 0] if data.ndim == 4 else data).astype(np.int32)


def check_atlas(atlas_file: Path) -> None:
    """An atlas that can define regions: a 3-D image of non-negative integer labels."""
    import nibabel as nb

    from bids_harmony.errors import BadImageError

    try:
        data = np.asarray(nb.load(atlas_file).dataobj)
    except Exception as err:  # nibabel raises several types for unreadable images
        raise BadImageError(
            f"--combat-atlas {atlas_file}: not a readable NIfTI image ({err})."
        ) from err
    data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3 or not np.isfinite(data).all() or (data < 0).any() or not np.allclose(
            data, np.rint(data)) or not (data > 0).any():  # fmt: skip
        raise BadImageError(
            f"--combat-atlas {atlas_file}: must be a 3-D image of non-negative integer region "
            f"labels with at least one region (shape {data.shape})."
        )


class _FitInputSpec(BaseInterfaceInputSpec):
    warped = traits.List(traits.Any, mandatory=True, desc=".npz of WarpMaps, per session")
    sessions = traits.List(traits.Any, mandatory=True, desc="CohortSession per session")
    labels = traits.List(traits.Str, mandatory=True, desc="shell labels")
    ref = traits.Str(mandatory=True, desc="shell whose FA/MD define the regions")
    options = traits.Any(mandatory=True, desc="CombatOptions")
    template_file = File(exists=True, mandatory=True)
    models_dir = traits.Str(mandatory=True)
    stem = traits.Str(mandatory=True)
    card = traits.Dict(mandatory=True)
    atlas_file = traits.Str("", usedefault=True, desc="label image (--combat-atlas) or ''")


class _FitOutputSpec(TraitedSpec):
    out_file = traits.Str(desc="the model file")


class FitCombatModel(SimpleInterface):
    """Fit ComBat on the cohort's template-space maps and write the model."""

    input_spec = _FitInputSpec
    output_spec = _FitOutputSpec
    always_run = True  # the model lives outside the work directory

    def _run_interface(self, runtime):
        import nibabel as nb

        from bids_harmony.bids.derivatives import software_versions
        from bids_harmony.bids.io import sha256_file
        from bids_harmony.interfaces.combat_dki import stacked_features
        from bids_harmony.methods.combat.errors import SmallSiteWarning, TooFewSamplesError
        from bids_harmony.methods.combat.maps import (
            feature_mask,
            fit_combat_maps,
            save_combat_maps,
            sessions_of,
        )

        kept, paths, masks = [], [], []
        for session, path in zip(self.inputs.sessions, self.inputs.warped, strict=True):
            with np.load(path) as data:
                if "mask" not in data.files:  # registration rejected
                    LOGGER.warning("ComBat: %s left out (registration to the template failed).",
                                   session.label)  # fmt: skip
                    continue
                masks.append(data["mask"])
            kept.append(session)
            paths.append(path)
        sites = sessions_of([s.site for s in kept])
        few = [f"{site} ({n})" for site, n in sites.items() if n < 2]
        if len(sites) < 2 or few:
            raise TooFewSamplesError(
                f"after registration ComBat has sessions of {len(sites)} site(s) "
                f"({', '.join(f'{k}: {v}' for k, v in sites.items())}); it needs two sites "
                "with two sessions each" + (f" (too few: {', '.join(few)})" if few else "") + "."
            )
        template_img = nb.load(self.inputs.template_file)
        mask = feature_mask(np.stack(masks))
        ref = self.inputs.ref
        # FA/MD/GFA of every shell and, when every session has them, the 8 DKI maps
        maps = stacked_features(paths, self.inputs.labels, KINDS)
        if self.inputs.atlas_file:
            regions = atlas_regions(Path(self.inputs.atlas_file), template_img)
        else:
            regions = cohort_regions(mask, maps[f"{ref}/fa"].mean(axis=0),
                                     maps[f"{ref}/md"].mean(axis=0))  # fmt: skip
        regions = np.where(mask, regions, 0).astype(np.int32)  # features: inside the mask
        options: CombatOptions = self.inputs.options
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = fit_combat_maps(maps, template=np.asarray(template_img.dataobj),
                                    affine=template_img.affine, mask=mask, regions=regions,
                                    fit=fit_function(options, kept))  # fmt: skip
        # the small-site warning was given before the long steps (the dry fit)
        for message in dict.fromkeys(str(w.message) for w in caught
                                     if not issubclass(w.category, SmallSiteWarning)):  # fmt: skip
            LOGGER.warning("%s", message)
        card = {
            **self.inputs.card,
            "sessions_per_site": sites,
            "training_sessions": [s.label for s in kept],
            "features": {"maps": model.maps, "voxels": int(mask.sum()),
                         "regions": int(model.region_ids.size),
                         "voxel_rule": "template voxels inside the brain mask of at least "
                         "90% of the sessions",
                         "region_rule": f"labels of {Path(self.inputs.atlas_file).name} "
                         "inside the feature voxels" if self.inputs.atlas_file else
                         "WM (FA >= 0.3) and GM of the cohort's mean maps, CSF "
                         "(MD > 1.5 um2/ms) left out, each cut by a 3x3x3 grid"},
            "untouched_features": {name: _untouched(m) for name, m in model.voxel.items()},
            "combat": options.describe(),
            "template_sha256": sha256_file(Path(self.inputs.template_file)),
            "software_versions": software_versions(),
        }  # fmt: skip
        path = save_combat_maps(Path(self.inputs.models_dir) / self.inputs.stem, model, card)
        self._results["out_file"] = str(path)
        return runtime


def _untouched(model: object) -> dict[str, int]:
    base = getattr(model, "combat", model)  # CovBat and others wrap a ComBat model
    summary = getattr(base, "untouched_summary", None)
    return summary() if callable(summary) else {}


class _ApplyInputSpec(BaseInterfaceInputSpec):
    model_file = File(exists=True, mandatory=True, desc="combat_tgt-*.safetensors")
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    run = traits.Any(mandatory=True, desc="the DwiRun")
    covariates = traits.Dict(desc="the run's covariate values, by name")
    written = traits.List(traits.Str, desc="the run's participant outputs (orders the node)")
    seed = traits.Int(0, usedefault=True)
    transform = traits.Enum("SyN", "Affine", usedefault=True)


class _ApplyOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written")


class ApplyCombatModel(SimpleInterface):
    """Harmonize one run's maps with a ComBat model (see the module docstring)."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec
    always_run = True  # writes into the output dataset

    def _run_interface(self, runtime):
        self._results["out_files"] = [str(p) for p in apply_to_run(
            Path(self.inputs.model_file), Path(self.inputs.output_dir), self.inputs.run,
            dict(self.inputs.covariates), Path(runtime.cwd), seed=self.inputs.seed,
            transform=self.inputs.transform)]  # fmt: skip
        return runtime


def apply_to_run(
    model_file: Path,
    output_dir: Path,
    run: object,
    covariates: Mapping[str, float | str],
    work: Path,
    *,
    seed: int = 0,
    transform: str = "SyN",
) -> list[Path]:
    """Write the ComBat outputs of one run (see the module docstring); the files written."""
    import nibabel as nb

    from bids_harmony.bids.group_inputs import run_shells
    from bids_harmony.bids.io import save_nifti
    from bids_harmony.errors import NoDataError
    from bids_harmony.interfaces.combat_dki import (
        dki_params,
        has_dki_maps,
        shell_labels,
        warp_dki,
        without_dki,
    )
    from bids_harmony.methods.combat.maps import apply_combat_maps, load_combat_maps
    from bids_harmony.registration.common_space import register_to_template
    from bids_harmony.registration.warps import to_template

    model, card = load_combat_maps(model_file)
    template = work / "model_template.nii.gz"
    save_nifti(nb.Nifti1Image(model.template, model.affine), template)
    shells = {m.label: m for m in run_shells(output_dir, run)}
    labels = shell_labels(model.maps)
    missing = [label for label in labels if label not in shells]
    if missing:
        raise NoDataError(
            f"{model_file.name} harmonizes shells {', '.join(labels)}, but {run.dwi} has no "
            f"participant outputs of {', '.join(missing)} (shells fitted: "
            f"{', '.join(shells) or 'none'})."
        )
    ref = min(labels, key=lambda s: abs(float(s[1:]) - 1000.0))
    tr = register_to_template(shells[ref].raw["fa"], template, work / "transforms",
                              seed=seed, transform=transform)  # fmt: skip
    warped = {f"{label}/{kind}": to_template(shells[label].raw[kind], tr, template)[None]
              for label in labels for kind in KINDS}  # fmt: skip
    params = dki_params(model.maps)  # none in a model fitted without DKI maps
    if params and not has_dki_maps(shells[ref].outputs):
        LOGGER.info("ComBat: %s has no DKI maps; its other maps are harmonized.", run.prefix)
        model, params = without_dki(model), []
    warped.update(warp_dki(shells[ref].outputs, params, tr, template))
    options = CombatOptions(covariates=tuple(covariates))
    session = CohortSession(run.prefix, run.prefix, run.subject, run.site, dict(covariates))
    harmonized, before, after = apply_combat_maps(model, warped, apply_function(options, [session]))
    return _write(run, output_dir, model_file, card, model, labels, shells, tr, template,
                  warped, harmonized, before, after)  # fmt: skip


def _write(run, output_dir, model_file, card, model, labels, shells, tr, template,
           warped, harmonized, before, after) -> list[Path]:  # fmt: skip
    import nibabel as nb

    from bids_harmony.bids.derivatives import bids_uri, sidecar_path, software_versions
    from bids_harmony.bids.io import save_nifti, sha256_file, write_json, write_text
    from bids_harmony.interfaces.combat_dki import dki_params, native_dki
    from bids_harmony.registration.warps import native_correction

    space = str(card.get("space", "cohort"))
    names = shells[labels[0]].outputs.names
    root = Path(output_dir)
    model_uri = f"bids::models/{model_file.name}"
    harmonization = {
        "Method": METHOD, "ModelFile": model_uri, "ModelSHA256": sha256_file(model_file),
        "Variant": card.get("combat", {}).get("Variant"), "Site": run.site,
        "TargetSite": card.get("target_site"),
        "Description": "ComBat (Fortin et al., 2017): site effects estimated on a cohort "
        "removed per voxel in the model's template space, covariate effects kept",
    }  # fmt: skip
    common = {"Harmonization": harmonization, "SoftwareVersions": software_versions(),
              "Space": space, "Template": card.get("template")}  # fmt: skip
    written: list[tuple[Path, dict]] = []
    mask_native = np.asarray(nb.load(shells[labels[0]].outputs.mask(required=True)).dataobj) > 0
    for label in labels:
        for kind in KINDS:
            name = f"{label}/{kind}"
            raw_native = nb.load(shells[label].raw[kind])
            source = bids_uri("", names.shell_map(label, kind))
            for method, array in ((None, warped[name][0]), (METHOD, harmonized[name][0])):
                path = root / names.space_map(label, kind, space, method)
                save_nifti(nb.Nifti1Image(np.asarray(array, np.float32), model.affine), path)
                written.append((path, {
                    **common, "Sources": [source, model_uri], "ShellBValue": float(label[1:]),
                    "Description": f"{kind.upper()} of shell {label} in the {space} template "
                    + ("space, ComBat-harmonized" if method else "space, not harmonized"),
                    **({} if method else {"Harmonization": None}),
                }))  # fmt: skip
            delta = np.where(model.mask, harmonized[name][0] - warped[name][0], 0.0)
            native = native_correction(raw_native.dataobj, delta, tr, template, mask_native)
            path = root / names.shell_map(label, kind, METHOD)
            save_nifti(nb.Nifti1Image(native.astype(np.float32), raw_native.affine), path)
            written.append((path, {
                **common, "Sources": [source, bids_uri("", names.mask()), model_uri],
                "ShellBValue": float(label[1:]),
                "Description": f"ComBat-harmonized {kind.upper()} of shell {label}: the native "
                "map plus the template-space ComBat correction warped back, inside the mask",
            }))  # fmt: skip
    written += native_dki(names, root, shells[labels[0]].outputs, dki_params(model.maps),
                          warped, harmonized, model.mask, mask_native, tr, template, common,
                          model_uri)  # fmt: skip
    table = root / names.regions(space, METHOD)
    lines = ["region\tmap\tbefore\tafter"]
    for name in before:
        for rid, b, a in zip(model.region_ids, before[name][0], after[name][0], strict=True):
            lines.append(f"{int(rid)}\t{name.replace('/', '_')}\t{b:.6g}\t{a:.6g}")
    write_text(table, "\n".join(lines) + "\n")
    written.append((table, {
        **common, "Sources": [model_uri], "Description": "Region means of the maps in the "
        "template space before and after ComBat (the region model of the ComBat file)",
        "region": {"Description": "region label in the model's regions (tissue * 1000 + block; "
                   "tissue 1 = WM, 2 = GM)"},
        "map": {"Description": "<shell>_<map>, or dki_<param> (a DKI map)"},
        "before": {"Description": "mean of the unharmonized map in the region"},
        "after": {"Description": "the region mean harmonized by the region-level ComBat model"},
    }))  # fmt: skip
    for path, sidecar in written:  # sidecars last: a file with a sidecar is complete
        write_json(sidecar_path(path), {k: v for k, v in sidecar.items() if v is not None})
    LOGGER.info("ComBat: harmonized %s (%s%s)", run.prefix, ", ".join(labels),
                ", DKI" if dki_params(model.maps) else "")  # fmt: skip
    return [p for p, _ in written]
