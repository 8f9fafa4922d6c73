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
    from bids_harmony.dmri import sh

    entities = dict(run["entities"])
    folder = session_dir(entities)
    common = {"Site": run["site"], "Phantom": bool(run["is_phantom"]), **_provenance(params)}

    raw = [bids_uri("raw", run[key]) for key in ("source", "bval", "bvec")]
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

    n_shells = len(shells)
    raw_acq = entities.get("acq")
    for shell in shells:
        acq = shell_acq(raw_acq, shell["label"], n_shells)
        ents = {**entities, "acq": acq}
        out.append(
            Derivative(
                source=Path(shell["file"]),
                relpath=folder
                / bids_name({**ents, "model": "sh", "param": "coeffs"}, "dwimap", ".nii.gz"),
                sidecar={
                    **common,
                    "Description": (
                        "Real even spherical-harmonic coefficients of the b0-normalized, "
                        "b_ref-power-mapped signal of one shell (HARP convention)."
                    ),
                    "Sources": [preproc_uri, mask_uri],
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

    for entry in metrics:
        acq = shell_acq(raw_acq, entry["label"], n_shells)
        ents = {**entities, "acq": acq}
        shell_sources = [preproc_uri, mask_uri]
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
                        "Description": description,
                        "Units": units,
                        "Sources": shell_sources,
                        "Model": model_desc,
                        "ShellBValue": entry["bval"],
                    },
                )
            )
    return out
