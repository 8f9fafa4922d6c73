"""What the participant level writes: names and sidecars of every derivative.

Kept apart from the workflow so the output contract can be read (and tested)
in one place.  Inputs are plain dictionaries produced by the interfaces.  Every
name comes from :class:`~bids_harmony.bids.derivatives.RunNames`, which the
reader (:class:`bids_harmony.bids.reader.RunOutputs`) uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bids_harmony.bids.derivatives import (
    Derivative,
    RunNames,
    bids_uri,
    software_versions,
)

#: What ``Harmonization.Description`` says of HARP in the sidecars.
HARP_DESCRIPTION = (
    "HARP (Jeong et al., 2026): phantom-trained voxel-wise network scaling SH "
    "coefficients per order band"
)


def _provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "SoftwareVersions": software_versions(),
        "Parameters": dict(params),
    }


def harmonized_sources(
    names: RunNames, label: str, kind: str, model_uri: str | None = None
) -> list[str]:
    """``Sources`` of a harmonized per-shell map: its inputs, never a harmonized output.

    A harmonized output derives from the unharmonized SH coefficients of its shell,
    the mask and the model file (BIDS URI; None when the scales were fitted on the
    spot); the maps recomputed from the rebuilt DWI (``fa``, ``md``, ``gfa``) also
    from the preprocessed DWI, whose b0 volumes and gradients the rebuilt one keeps.
    Naming the harmonized DWI instead would make provenance circular: that DWI is
    itself rebuilt from the harmonized coefficients.

    Examples
    --------
    >>> names = RunNames({"sub": "01", "acq": "b1000"}, 1)
    >>> harmonized_sources(names, "b1000", "sh", "bids::models/harp.safetensors")
    ... # doctest: +NORMALIZE_WHITESPACE
    ['bids::sub-01/dwi/sub-01_acq-b1000_model-sh_param-coeffs_dwimap.nii.gz',
     'bids::sub-01/dwi/sub-01_acq-b1000_space-dwi_desc-brain_mask.nii.gz',
     'bids::models/harp.safetensors']
    """
    dwi = [] if kind in ("sh", "scales") else [bids_uri("", names.dwi())]
    model = [model_uri] if model_uri else []
    return [*dwi, bids_uri("", names.shell_map(label, "sh")), bids_uri("", names.mask()), *model]


def run_names(run: Mapping[str, Any], shells: Sequence[Mapping[str, Any]]) -> RunNames:
    """Names of a run's derivatives; ``run["n_shells"]`` (shells of the raw run) decides
    the per-shell ``acq``, falling back to the number of fitted ``shells``."""
    return RunNames(dict(run["entities"]), int(run.get("n_shells", len(shells))))


def participant_derivatives(
    run: Mapping[str, Any],
    prep: Mapping[str, str],
    shells: Sequence[Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
) -> list[Derivative]:
    """List every participant-level derivative of one run.

    Parameters
    ----------
    run : mapping
        ``entities`` (short keys of the raw file name), ``n_shells`` (shells of
        the raw run), ``source`` (raw dwi path relative to the BIDS root),
        ``bval``/``bvec`` (relative), ``site``, ``is_phantom``.
    prep : mapping
        ``dwi``, ``bval``, ``bvec``, ``mask`` files and ``report`` (dict).
    shells, metrics : sequence of mapping
        Per-shell entries written by the FitSH and DiffusionMetrics interfaces.
    params : mapping
        Run settings recorded in every sidecar.
    """

    names = run_names(run, shells)
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}

    raw = [bids_uri("raw", run[key]) for key in ("source", "bval", "bvec")]
    raw += [bids_uri("raw", fieldmap) for fieldmap in run.get("fieldmaps", [])]
    preproc_uri = bids_uri("", names.dwi())  # "bids::" is this dataset
    mask_uri = bids_uri("", names.mask())
    report = dict(prep.get("report", {}))

    out = [
        Derivative(
            source=Path(prep["dwi"]),
            relpath=names.dwi(),
            companions={".bval": Path(prep["bval"]), ".bvec": Path(prep["bvec"])},
            sidecar={
                **common,
                "Description": "Diffusion-weighted series after preprocessing.",
                "Sources": raw,
                "PreprocessingBackend": params.get("preproc"),
                "PreprocessingSteps": report.get("Steps", []),
                "SkullStripped": False,
            },
        ),
        Derivative(
            source=Path(prep["mask"]),
            relpath=names.mask(),
            sidecar={
                **common,
                "Description": "Brain (or phantom) mask.",
                "Type": "Brain",
                "Sources": [preproc_uri],
                "Method": report.get("MaskMethod", ""),
            },
        ),
    ]

    out += shell_maps(names, shells, metrics, common, [preproc_uri, mask_uri], params)
    return out


def shell_maps(
    names: RunNames,
    shells: Sequence[Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any]],
    common: Mapping[str, Any],
    sources: Sequence[str] | Callable[[str, str], Sequence[str]],
    params: Mapping[str, Any],
    *,
    method: str | None = None,
    shell_extra: Mapping[str, Any] | None = None,
) -> list[Derivative]:
    """Per-shell SH coefficients, scale maps of ``method`` (when present) and DTI/CSD maps.

    ``method=None`` names the unharmonized maps, ``"harp"`` those of HARP-harmonized
    data (``desc-harp``).  ``sources``: the ``Sources`` of every map, or a function of
    (shell label, kind: ``sh``, ``scales``, ``fa``, ``md`` or ``gfa``) that gives them.
    """
    from bids_harmony.dmri import sh

    extra = dict(shell_extra or {})
    out = []

    def sources_of(label: str, kind: str) -> list[str]:
        return list(sources(label, kind) if callable(sources) else sources)

    for shell in shells:
        out.append(
            Derivative(
                source=Path(shell["file"]),
                relpath=names.shell_map(shell["label"], "sh", method),
                sidecar={
                    **common,
                    **extra,
                    "Description": (
                        "Real even spherical-harmonic coefficients of the b0-normalized, "
                        "b_ref-power-mapped signal of one shell (HARP convention)."
                    ),
                    "Sources": sources_of(shell["label"], "sh"),
                    "Model": {
                        "Description": "HARP spherical-harmonic representation of one shell",
                        "Parameters": {
                            "Normalization": "E = S / mean(b0), clipped to [0, 1]",
                            "PowerMap": "E' = E ** (ReferenceBValue / ShellBValue)",
                            "ReferenceBValue": sh.B_REF,
                            "LaplaceBeltramiLambda": sh.LB_LAMBDA,
                            "Fit": "regularized least squares",
                        },
                    },
                    "OrientationEncoding": {
                        "Type": "sh",
                        "SphericalHarmonicBasis": sh.SH_BASIS,
                        "SphericalHarmonicBasisLegacy": sh.SH_LEGACY,
                        "SphericalHarmonicDegree": shell["order"],
                        "EncodingAxis": 3,
                    },
                    "ShellBValue": shell["bval"],
                    "NumberOfDirections": shell["n_directions"],
                    "OrderLowered": shell["lowered"],
                },
            )
        )
        if "scales" in shell and method is not None:
            out.append(
                Derivative(
                    source=Path(shell["scales"]),
                    relpath=names.scales(shell["label"], method),
                    sidecar={
                        **common,
                        **extra,
                        "Description": "HARP per-band scale factors s_l (volumes: l = 0, 2, "
                        "4, ...); harmonized C_lm = s_l * C_lm.",
                        "Sources": sources_of(shell["label"], "scales"),
                        "ShellBValue": shell["bval"],
                    },
                )
            )

    for entry in metrics:
        tensor = {
            "Description": "Diffusion tensor, weighted least squares (dipy TensorModel)",
            "Parameters": {"ShellBValue": entry["bval"], "IncludesB0": True},
        }
        maps = [
            ("fa", tensor, "Fractional anisotropy", "arbitrary"),
            ("md", tensor, "Mean diffusivity", "mm^2/s"),
        ]
        if "gfa" in entry:
            csd = {
                "Description": "Constrained spherical deconvolution (single shell, single "
                "tissue); GFA of the fODF",
                "Parameters": {"ShellBValue": entry["bval"], "MaxOrder": params.get("sh_order")},
            }
            maps.append(("gfa", csd, "Generalized fractional anisotropy", "arbitrary"))
        for kind, model_desc, description, units in maps:
            out.append(
                Derivative(
                    source=Path(entry[kind]),
                    relpath=names.shell_map(entry["label"], kind, method),
                    sidecar={
                        **common,
                        **extra,
                        "Description": description,
                        "Units": units,
                        "Sources": sources_of(entry["label"], kind),
                        "Model": model_desc,
                        "ShellBValue": entry["bval"],
                    },
                )
            )
    return out


def harmonized_derivatives(
    run: Mapping[str, Any],
    harmonized: Mapping[str, str],
    shells: Sequence[Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    model: Mapping[str, Any],
    *,
    method: str = "harp",
    description: str = HARP_DESCRIPTION,
) -> list[Derivative]:
    """Every harmonized derivative of one source-site run (``desc-<method>``).

    ``harmonized`` holds the ``dwi``/``bval``/``bvec`` files; ``model`` the
    model file name, its sha256 and the source/target sites.  The sidecars'
    ``Harmonization`` names the ``method`` and gives its ``description``.

    ``Sources`` name the inputs only (:func:`harmonized_sources`); the rebuilt
    DWI's are the preprocessed DWI, every shell's unharmonized coefficients, the
    mask and the model file (its sha256 in ``Harmonization.ModelSHA256``).
    """
    names = run_names(run, shells)
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}
    model_uri = bids_uri("", Path("models") / model["file"])

    def sources(label: str, kind: str) -> list[str]:
        return harmonized_sources(names, label, kind, model_uri)

    # the rebuilt DWI: the preprocessed one (b0 volumes, gradients), every shell's
    # unharmonized coefficients, the mask and the model
    raw_sh = [bids_uri("", names.shell_map(shell["label"], "sh")) for shell in shells]
    dwi_sources = [bids_uri("", names.dwi()), *raw_sh, bids_uri("", names.mask()), model_uri]
    harmonization = {
        "Harmonization": {
            "Method": method,
            "Description": description,
            "ModelFile": model_uri,
            "ModelSHA256": model["sha256"],
            "SourceSite": model["source_site"],
            "TargetSite": model["target_site"],
        }
    }
    out = [
        Derivative(
            source=Path(harmonized["dwi"]),
            relpath=names.dwi(method),
            companions={".bval": Path(harmonized["bval"]), ".bvec": Path(harmonized["bvec"])},
            sidecar={
                **common,
                **harmonization,
                "Description": "DWI rebuilt from HARP-harmonized SH coefficients with the "
                "original gradient table; b0 volumes unchanged.",
                "Sources": dwi_sources,
            },
        )
    ]
    out += shell_maps(names, shells, metrics, common, sources, params,
                      method=method, shell_extra=harmonization)  # fmt: skip
    return out


def dki_derivatives(
    run: Mapping[str, Any],
    dki: Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    method: str | None = None,
) -> list[Derivative]:
    """The DKI maps of one run (``model-dki_param-<x>``), one sidecar each.

    Parameters
    ----------
    run : mapping
        As for :func:`participant_derivatives` (``entities``, ``n_shells``, ``site``,
        ``is_phantom``).
    dki : mapping
        Written by :class:`~bids_harmony.interfaces.dki.FitDKI`: ``files`` (param ->
        image), ``fit_method``, ``shells`` (b-values), ``n_volumes``, ``n_voxels``,
        ``ranges`` and ``clipped`` (param -> ``below``/``above``/``nonfinite`` counts),
        ``units``, ``descriptions``; when several runs were fitted together
        (:class:`~bids_harmony.interfaces.dki_runs.FitCombinedDKI`): ``runs`` (the raw
        runs combined, relative paths: ``CombinedRuns``), ``sources`` (their
        preprocessed DWIs and masks, relative to the derivatives) and
        ``registration`` (how they were aligned: ``CombinedRunsRegistration``).
    params : mapping
        Run settings recorded in every sidecar.
    method : str, optional
        ``desc-<method>`` of maps fitted on harmonized data.
    """
    if not dki["files"]:  # a combined fit skipped (runs that could not be aligned)
        return []
    names = RunNames(dict(run["entities"]), int(run.get("n_shells", 0)))
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}
    sources = [bids_uri("", names.dwi(method)), bids_uri("", names.mask())]
    if dki.get("sources"):
        sources = [bids_uri("", p) for p in dki["sources"]]
    model = {
        "Description": "Diffusion kurtosis imaging (Jensen et al., 2005): diffusion and "
        "kurtosis tensors fitted to the b0 volumes and every shell",
        "Parameters": {
            "FitMethod": dki["fit_method"],
            "FitMethodDescription": "weighted linear least squares, weights = squared "
            "signal predicted by an ordinary least-squares fit (Veraart et al., 2013), as "
            f'dipy DiffusionKurtosisModel(fit_method="{dki["fit_method"]}")',
            "ShellBValues": list(dki["shells"]),
            "NumberOfVolumes": dki["n_volumes"],
            "KurtosisFormula": "analytical (Tabesh et al., 2011)",
        },
    }
    out = []
    for param, path in dki["files"].items():
        low, high = dki["ranges"][param]
        counts = dict(dki["clipped"][param])
        sidecar = {
            **common,
            "Description": dki["descriptions"][param],
            "Units": dki["units"][param],
            "Sources": sources,
            "Model": model,
            "ClippedToRange": [low, high],
            "ClippedVoxels": {
                **counts,
                "total": sum(counts.values()),
                "of": dki["n_voxels"],
            },  # fmt: skip
        }
        if dki.get("runs"):
            sidecar["CombinedRuns"] = [bids_uri("raw", p) for p in dki["runs"]]
        if dki.get("registration"):
            sidecar["CombinedRunsRegistration"] = dki["registration"]
        out.append(Derivative(source=Path(path), relpath=names.dki_map(param, method),
                              sidecar=sidecar))  # fmt: skip
    return out
