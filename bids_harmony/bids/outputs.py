"""What the participant level writes: names and sidecars of every derivative.

Kept apart from the workflow so the output contract can be read (and tested)
in one place.  Inputs are plain dictionaries produced by the interfaces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bids_harmony.bids.derivatives import (
    Derivative,
    bids_name,
    bids_uri,
    session_dir,
    shell_acq,
    software_versions,
)


def _provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "SoftwareVersions": software_versions(),
        "Parameters": dict(params),
    }


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
        ``entities`` (short keys of the raw file name), ``source`` (raw dwi path
        relative to the BIDS root), ``bval``/``bvec`` (relative), ``site``,
        ``is_phantom``.
    prep : mapping
        ``dwi``, ``bval``, ``bvec``, ``mask`` files and ``report`` (dict).
    shells, metrics : sequence of mapping
        Per-shell entries written by the FitSH and DiffusionMetrics interfaces.
    params : mapping
        Run settings recorded in every sidecar.
    """

    entities = dict(run["entities"])
    folder = session_dir(entities)
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}

    raw = [bids_uri("raw", run[key]) for key in ("source", "bval", "bvec")]
    raw += [bids_uri("raw", fieldmap) for fieldmap in run.get("fieldmaps", [])]
    preproc_name = bids_name({**entities, "space": "dwi", "desc": "preproc"}, "dwi", ".nii.gz")
    mask_name = bids_name({**entities, "space": "dwi", "desc": "brain"}, "mask", ".nii.gz")
    preproc_uri = bids_uri("", folder / preproc_name)  # "bids::" is this dataset
    mask_uri = bids_uri("", folder / mask_name)
    report = dict(prep.get("report", {}))

    out = [
        Derivative(
            source=Path(prep["dwi"]),
            relpath=folder / preproc_name,
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
            relpath=folder / mask_name,
            sidecar={
                **common,
                "Description": "Brain (or phantom) mask.",
                "Type": "Brain",
                "Sources": [preproc_uri],
                "Method": report.get("MaskMethod", ""),
            },
        ),
    ]

    out += shell_maps(entities, shells, metrics, common, [preproc_uri, mask_uri], params)
    return out


def shell_maps(
    entities: Mapping[str, str],
    shells: Sequence[Mapping[str, Any]],
    metrics: Sequence[Mapping[str, Any]],
    common: Mapping[str, Any],
    sources: list[str],
    params: Mapping[str, Any],
    *,
    desc: str | None = None,
    shell_extra: Mapping[str, Any] | None = None,
) -> list[Derivative]:
    """Per-shell SH coefficients, HARP scale maps (when present) and DTI/CSD maps."""
    from bids_harmony.dmri import sh

    folder = session_dir(entities)
    n_shells = len(shells)
    raw_acq = entities.get("acq")
    extra = dict(shell_extra or {})
    out = []

    def shell_entities(label: str) -> dict[str, str | None]:
        return {**entities, "acq": shell_acq(raw_acq, label, n_shells), "desc": desc}

    for shell in shells:
        ents = shell_entities(shell["label"])
        out.append(
            Derivative(
                source=Path(shell["file"]),
                relpath=folder
                / bids_name({**ents, "model": "sh", "param": "coeffs"}, "dwimap", ".nii.gz"),
                sidecar={
                    **common,
                    **extra,
                    "Description": (
                        "Real even spherical-harmonic coefficients of the b0-normalized, "
                        "b_ref-power-mapped signal of one shell (HARP convention)."
                    ),
                    "Sources": sources,
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
        if "scales" in shell:
            out.append(
                Derivative(
                    source=Path(shell["scales"]),
                    relpath=folder
                    / bids_name({**ents, "model": "harp", "param": "scales"}, "dwimap", ".nii.gz"),
                    sidecar={
                        **common,
                        **extra,
                        "Description": "HARP per-band scale factors s_l (volumes: l = 0, 2, "
                        "4, ...); harmonized C_lm = s_l * C_lm.",
                        "Sources": sources,
                        "ShellBValue": shell["bval"],
                    },
                )
            )

    for entry in metrics:
        ents = shell_entities(entry["label"])
        tensor = {
            "Description": "Diffusion tensor, weighted least squares (dipy TensorModel)",
            "Parameters": {"ShellBValue": entry["bval"], "IncludesB0": True},
        }
        maps = [
            ("tensor", "fa", tensor, "Fractional anisotropy", "arbitrary"),
            ("tensor", "md", tensor, "Mean diffusivity", "mm^2/s"),
        ]
        if "gfa" in entry:
            csd = {
                "Description": "Constrained spherical deconvolution (single shell, single "
                "tissue); GFA of the fODF",
                "Parameters": {"ShellBValue": entry["bval"], "MaxOrder": params.get("sh_order")},
            }
            maps.append(("csd", "gfa", csd, "Generalized fractional anisotropy", "arbitrary"))
        for model, param, model_desc, description, units in maps:
            out.append(
                Derivative(
                    source=Path(entry[param]),
                    relpath=folder
                    / bids_name({**ents, "model": model, "param": param}, "dwimap", ".nii.gz"),
                    sidecar={
                        **common,
                        **extra,
                        "Description": description,
                        "Units": units,
                        "Sources": sources,
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
) -> list[Derivative]:
    """Every HARP-harmonized derivative of one source-site run.

    ``harmonized`` holds the ``dwi``/``bval``/``bvec`` files; ``model`` the
    model file name, its sha256 and the source/target sites.
    """
    entities = dict(run["entities"])
    folder = session_dir(entities)
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}
    preproc = bids_uri("", folder / bids_name({**entities, "space": "dwi", "desc": "preproc"},
                                              "dwi", ".nii.gz"))  # fmt: skip
    harmonization = {
        "Harmonization": {
            "Method": "HARP (Jeong et al., 2026): phantom-trained voxel-wise network "
            "scaling SH coefficients per order band",
            "ModelFile": bids_uri("", Path("models") / model["file"]),
            "ModelSHA256": model["sha256"],
            "SourceSite": model["source_site"],
            "TargetSite": model["target_site"],
        }
    }
    dwi_name = bids_name({**entities, "desc": "harmonized"}, "dwi", ".nii.gz")
    out = [
        Derivative(
            source=Path(harmonized["dwi"]),
            relpath=folder / dwi_name,
            companions={".bval": Path(harmonized["bval"]), ".bvec": Path(harmonized["bvec"])},
            sidecar={
                **common,
                **harmonization,
                "Description": "DWI rebuilt from HARP-harmonized SH coefficients with the "
                "original gradient table; b0 volumes unchanged.",
                "Sources": [preproc],
            },
        )
    ]
    sources = [bids_uri("", folder / dwi_name)]
    out += shell_maps(entities, shells, metrics, common, sources, params,
                      desc="harmonized", shell_extra=harmonization)  # fmt: skip
    return out
