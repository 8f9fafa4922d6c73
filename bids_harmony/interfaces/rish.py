"""LinearRISH baseline of the group level: fit in the common space, apply natively.

For each shell, the RISH features of every traveling subject's sessions are
warped to the template; site templates and per-band scale maps
:math:`\\sqrt{\\overline{RISH}_{tgt} / \\overline{RISH}_{src}}` are computed there
(:class:`~bids_harmony.methods.rish.LinearRISH`), warped back to each source
session and applied to its SH coefficients.  The DWI is rebuilt from the scaled
coefficients (b0 volumes unchanged) and FA/MD/GFA recomputed (and the DKI maps,
refitted on the rebuilt multi-shell DWI); everything is
written next to the participant outputs with ``desc-rish``, named by
:class:`~bids_harmony.bids.derivatives.RunNames` like every participant output.  As in the HARP
paper, the model is trained on the same traveling subjects it is evaluated on
(the best case for LinearRISH).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from bids_harmony.bids.derivatives import bids_uri, sidecar_path, software_versions
from bids_harmony.bids.group_inputs import ShellMaps
from bids_harmony.bids.io import save_nifti, write_json
from bids_harmony.bids.outputs import harmonized_sources
from bids_harmony.dmri.bands import order_from_n_coeffs, rish_features
from bids_harmony.methods.rish.linear_rish import apply_rish_scales
from bids_harmony.methods.rish.method import RishMethod, RishModel
from bids_harmony.registration.warps import from_template, to_template

LOGGER = logging.getLogger(__name__)
#: The ``desc-`` entity of LinearRISH outputs and ``Harmonization.Method`` of their sidecars.
METHOD = "rish"
#: ``Harmonization.Description`` of their sidecars.
DESCRIPTION = (
    "LinearRISH (Karayumak et al., 2019): per-band RISH scale maps "
    "sqrt(mean RISH target / mean RISH source) from traveling subjects in a common space"
)


def _load(path: Path) -> tuple[np.ndarray, nb.Nifti1Image]:
    img = nb.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img


def fit_rish_model(
    source: Sequence[ShellMaps],
    target: Sequence[ShellMaps],
    masks: Mapping[str, Path],
    transforms: Mapping[str, Any],
    template_file: Path,
    *,
    shell: str,
) -> RishModel:
    """The LinearRISH model of one shell, fitted in template space.

    ``masks`` and ``transforms`` are keyed by the run prefix (``run.prefix``).
    """

    def warped(maps: Sequence[ShellMaps]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        rish, inside = [], []
        for m in maps:
            coeffs, _ = _load(m.raw["sh"])
            tr = transforms[m.run.prefix]
            rish.append(
                to_template(rish_features(coeffs), tr, template_file, reference=m.raw["fa"])
            )
            mask = to_template(
                masks[m.run.prefix], tr, template_file, interpolator="nearestNeighbor"
            )
            inside.append(mask > 0.5)
        return rish, inside

    src_rish, src_masks = warped(source)
    tgt_rish, tgt_masks = warped(target)
    return RishMethod().fit(src_rish, tgt_rish, source_masks=src_masks,  # type: ignore[arg-type]
                            target_masks=tgt_masks, shell=shell)  # fmt: skip


def apply_to_run(
    shells: Sequence[ShellMaps],
    scales: Mapping[str, np.ndarray],
    transform: Any,
    template_file: Path,
    *,
    mask_file: Path,
    subjects: Sequence[str],
    b_tolerance: float,
    b0_threshold: float,
    model: Mapping[str, str] | None = None,
    n_threads: int | None = None,
    dki: bool | None = None,
) -> dict[str, dict[str, Path]]:
    """Harmonize one source run with template-space ``scales`` (per shell label).

    ``model`` (``ModelFile``, ``ModelSHA256``, ``SourceSite``, ``TargetSite``) is
    given when the scales come from a trained model applied at the participant
    level; without it the sidecars say the scales were fitted by the group level
    on the subjects they are evaluated on.  ``n_threads``: CSD threads (GFA).
    ``dki``: also fit DKI on the rebuilt DWI and write ``desc-rish`` DKI maps
    (:func:`~bids_harmony.interfaces.dki_harmonized.write_harmonized_dki`) when its
    table holds the fit and every shell was harmonized; None: when the run has raw
    DKI maps (the participant level fitted DKI on it).

    Returns ``{shell label: {"sh"|"fa"|"md"|"gfa"|"scales": written path}}`` and,
    with DKI maps, ``{"dki": {param: written path}}``.
    """
    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.dmri import metrics as dm
    from bids_harmony.dmri.sh import ShellFit, reconstruct_dwi

    outputs = shells[0].outputs
    preproc = outputs.preproc(required=True)
    bvals, bvecs = read_gradients(preproc.bval, preproc.bvec)
    data, img = _load(preproc.dwi)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    fits, native_scales = [], {}
    for m in shells:
        coeffs, _ = _load(m.raw["sh"])
        # warp the deviation from 1: outside the template's field of view the warp
        # fills 0, which must mean "no change", not "scale to 0"
        native = 1.0 + from_template(scales[m.label] - 1.0, transform, template_file)
        native = np.where(mask[..., None], native, 1.0).astype(np.float32)
        native_scales[m.label] = native
        harmonized = apply_rish_scales(coeffs, native).astype(np.float32)
        indices = np.flatnonzero((np.abs(bvals - m.bval) <= b_tolerance) & (bvals > b0_threshold))
        fits.append(ShellFit(m.bval, order_from_n_coeffs(coeffs.shape[-1]), harmonized, indices))
    dwi = reconstruct_dwi(fits, bvals, bvecs, data, b0_threshold=b0_threshold)
    model_uri = str(model["ModelFile"]) if model else None
    common = {
        "Harmonization": {
            "Method": METHOD,
            "Description": DESCRIPTION,
            "TrainingSubjects": [f"sub-{s}" for s in subjects],
            **(dict(model) if model else {
                "Note": "Trained on the traveling subjects it is evaluated on "
                "(best case, as in Jeong et al. 2026)."}),
        },
        "SoftwareVersions": software_versions(),
    }
    written: dict[str, dict[str, Path]] = {}
    for m, fit in zip(shells, fits, strict=True):
        tensor = dm.tensor_metrics(
            dwi,
            bvals,
            bvecs,
            mask=mask,
            shell=m.bval,
            b_tolerance=b_tolerance,
            b0_threshold=b0_threshold,
        )
        gfa = dm.gfa_csd(
            dwi,
            bvals,
            bvecs,
            mask=mask,
            shell=m.bval,
            fa=tensor["fa"],
            b_tolerance=b_tolerance,
            b0_threshold=b0_threshold,
            n_threads=n_threads,
        )
        arrays = {
            "sh": fit.coeffs,
            "fa": tensor["fa"],
            "md": tensor["md"],
            "gfa": gfa,
            "scales": native_scales[m.label],
        }
        out: dict[str, Path] = {}
        for kind, array in arrays.items():
            relpath = (
                outputs.names.shell_map(m.label, kind, METHOD)
                if kind != "scales"
                else outputs.names.scales(m.label, METHOD)
            )
            path = outputs.root / relpath
            save_nifti(nb.Nifti1Image(np.asarray(array, np.float32), img.affine), path)
            out[kind] = path
        for kind, path in out.items():  # sidecars last
            write_json(
                sidecar_path(path),
                {
                    **common,
                    "Sources": harmonized_sources(outputs.names, m.label, kind, model_uri),
                    "ShellBValue": m.bval,
                    "Description": f"LinearRISH-harmonized {kind} of shell {m.label}",
                },
            )
        written[m.label] = out
    LOGGER.info("LinearRISH: harmonized %s (%s)", outputs.names.prefix, ", ".join(written))
    if bool(outputs.dki_maps()) if dki is None else dki:
        from bids_harmony.interfaces.dki_harmonized import write_harmonized_dki

        names = outputs.names
        sources = [bids_uri("", names.dwi()), *(bids_uri("", names.shell_map(m.label, "sh"))
                                                for m in shells), bids_uri("", names.mask()),
                   *([model_uri] if model_uri else [])]  # inputs, as harmonized_sources
        files = write_harmonized_dki(
            outputs, shells[0].run, dwi, bvals, bvecs, mask, img.affine, method=METHOD,
            harmonized_shells=[m.bval for m in shells], harmonization=common["Harmonization"],
            sources=sources,
            b_tolerance=b_tolerance, b0_threshold=b0_threshold, n_procs=n_threads or 1,
        )  # fmt: skip
        maps = [p for p in files if p.name.endswith(".nii.gz")]
        if maps:
            written["dki"] = {p.name.split("param-")[1].split("_")[0]: p for p in maps}
    return written
