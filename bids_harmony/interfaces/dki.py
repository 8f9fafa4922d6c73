"""Nipype interfaces of the DKI fit (:mod:`bids_harmony.dmri.dki`) and its sink.

:class:`FitDKI` loads a preprocessed run, calls :func:`~bids_harmony.dmri.dki.dki_fit`
and saves the maps in the node directory with a JSON summary; :class:`DkiSink`
places them in the derivatives dataset with their sidecars
(:func:`bids_harmony.bids.outputs.dki_derivatives`), atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_harmony.interfaces.dmri import RunNamedInterface, load_image, read_table, save_like

LOGGER = logging.getLogger(__name__)


class _FitDKIInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="preprocessed DWI series")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    run_name = traits.Str("", usedefault=True, desc="the run's BIDS prefix, for messages")
    b_tolerance = traits.Float(50.0, usedefault=True)
    b0_threshold = traits.Float(50.0, usedefault=True)
    n_procs = traits.Int(1, usedefault=True, desc="processes of the fit")


class _FitDKIOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="JSON: maps, fit method, shells, ranges, clip counts")


class FitDKI(RunNamedInterface):
    """MD, AD, RD, FA, MK, AK, RK and KFA of a multi-shell run, clipped to physical ranges."""

    input_spec = _FitDKIInputSpec
    output_spec = _FitDKIOutputSpec

    def _run_interface(self, runtime):
        img, data = load_image(self.inputs.in_file)
        _, mask = load_image(self.inputs.in_mask)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        name = self.inputs.run_name or Path(self.inputs.in_file).name
        summary = fit_and_save(data, bvals, bvecs, mask > 0, img, Path(runtime.cwd), name=name,
                               b_tolerance=self.inputs.b_tolerance,
                               b0_threshold=self.inputs.b0_threshold,
                               n_procs=self.inputs.n_procs)  # fmt: skip
        out = Path(runtime.cwd) / "dki.json"
        out.write_text(json.dumps(summary, indent=2))
        self._results["out_json"] = str(out)
        return runtime


def fit_and_save(data, bvals, bvecs, mask, like, folder: Path, *, name: str,
                 b_tolerance: float, b0_threshold: float, n_procs: int = 1) -> dict:
    """The participant level's DKI fit of one signal: fit (timed), the clipping log line,
    the maps saved in ``folder`` with the geometry of ``like`` (``dki_<param>.nii.gz``),
    and their :func:`dki_summary` (shared by the raw, combined-run and harmonized fits)."""
    from bids_harmony.dmri import dki

    start = time.perf_counter()
    result = dki.dki_fit(data, bvals, bvecs, mask=mask, name=name, b_tolerance=b_tolerance,
                         b0_threshold=b0_threshold, n_procs=n_procs)  # fmt: skip
    seconds = time.perf_counter() - start
    log_clipping(result, seconds)
    files = {p: save_like(m, like, folder / f"dki_{p}.nii.gz") for p, m in result.maps.items()}
    return dki_summary(result, files, seconds)


def dki_summary(result, files: dict[str, str], seconds: float) -> dict:
    """What :func:`bids_harmony.bids.outputs.dki_derivatives` needs of a fit: the saved
    ``files`` (param -> path) and the fit's method, shells, ranges and clip counts."""
    from bids_harmony.dmri import dki

    return {
        "files": files,
        "fit_method": result.fit_method,
        "shells": list(result.shells),
        "n_volumes": result.n_volumes,
        "n_voxels": result.n_voxels,
        "ranges": {p: list(r) for p, r in result.ranges.items()},
        "clipped": result.clipped,
        "units": dict(dki.UNITS),
        "descriptions": dict(dki.DESCRIPTIONS),
        "seconds": round(seconds, 3),
    }


def log_clipping(result, seconds: float) -> None:
    """One line per run: the fit and how many voxels each map had clipped."""
    parts = []
    for param, counts in result.clipped.items():
        total = sum(counts.values())
        if total:
            share = 100.0 * total / max(result.n_voxels, 1)
            parts.append(f"{param.upper()} {total} ({share:.1f}%)")
    shells = ", ".join(f"{b:g}" for b in result.shells)
    LOGGER.info(
        "DKI (%s, b=0 and b=%s, %d voxels, %.1f s); clipped to physical ranges: %s.",
        result.fit_method, shells, result.n_voxels, seconds, "; ".join(parts) or "none",
    )  # fmt: skip


class _DkiSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    run_info = traits.Dict(mandatory=True, desc="entities, sources, site of the raw run")
    params = traits.Dict(mandatory=True, desc="settings recorded in every sidecar")
    dki_json = File(exists=True, mandatory=True)
    written = traits.List(traits.Str, desc="the participant sink's files (ordering only)")


class _DkiSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written in the output dataset")


class DkiSink(SimpleInterface):
    """Write one run's DKI maps atomically with their sidecars."""

    input_spec = _DkiSinkInputSpec
    output_spec = _DkiSinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import write_derivatives
        from bids_harmony.bids.outputs import dki_derivatives

        derivatives = dki_derivatives(
            self.inputs.run_info,
            json.loads(Path(self.inputs.dki_json).read_text()),
            self.inputs.params,
        )
        written = write_derivatives(Path(self.inputs.output_dir), derivatives)
        self._results["out_files"] = [str(p) for p in written]
        return runtime
