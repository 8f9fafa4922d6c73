"""Nipype interface of the combined DKI fit of single-shell runs (:mod:`.dmri.dki_runs`).

:class:`FitCombinedDKI` reads the runs' preprocessed DWIs and masks from the
derivatives dataset (after their sinks), aligns the other runs' mean b0 images
rigidly to the first run's (:func:`bids_harmony.registration.rigid.register_rigid`),
calls :func:`~bids_harmony.dmri.dki_runs.combine_runs` and
:func:`~bids_harmony.dmri.dki.dki_fit`, and saves the maps in the node directory
with the JSON summary that :class:`~bids_harmony.interfaces.dki.DkiSink` writes
under the first run's names.  When the b0 images cannot be aligned it logs a
WARNING naming the files and writes a summary without maps: the session gets no
DKI maps, and the participant level goes on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, TraitedSpec, traits

from bids_harmony.interfaces.dmri import RunNamedInterface, load_image, read_table

LOGGER = logging.getLogger(__name__)

#: Smallest share of the first run's mask that every run must cover after alignment.
MIN_OVERLAP = 0.5
#: What the sidecars say about the registration.
REGISTRATION_METHOD = (
    "antsRegistration (antspyx) Rigid, Mattes mutual information, on the mean b0 images: "
    "every other run to the first (lowest-b) run; normalised volumes resampled "
    "trilinearly onto the first run's grid, gradient directions rotated by the rigid "
    "rotation"
)
NORMALISATION = (
    "each run's diffusion-weighted volumes divided by its own mean b0; the fit sees "
    "b0 volumes equal to 1"
)


class _FitCombinedDKIInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    runs = traits.List(
        traits.Dict, mandatory=True,
        desc="per run, lowest b first: entities (short keys), shells (b-values), source "
        "(the raw run, relative to the BIDS root)",
    )  # fmt: skip
    written = traits.List(traits.Str, desc="the runs' sinks' files (ordering, cache key)")
    run_name = traits.Str("", usedefault=True, desc="the runs, for messages")
    b_tolerance = traits.Float(50.0, usedefault=True)
    b0_threshold = traits.Float(50.0, usedefault=True)
    n_procs = traits.Int(1, usedefault=True, desc="processes of the fit")
    seed = traits.Int(0, usedefault=True, desc="seed of the registration")


class _FitCombinedDKIOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="JSON as FitDKI's, with runs, sources, registration")


class FitCombinedDKI(RunNamedInterface):
    """DKI maps of single-shell runs of one session, combined on the first run's grid."""

    input_spec = _FitCombinedDKIInputSpec
    output_spec = _FitCombinedDKIOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.bids.reader import RunOutputs
        from bids_harmony.dmri.dki_runs import RunArrays, combine_runs
        from bids_harmony.interfaces.dki import fit_and_save

        runs, images, sources = [], [], []
        for spec in self.inputs.runs:
            outputs = RunOutputs.from_entities(self.inputs.output_dir, spec["entities"],
                                               spec["shells"])  # fmt: skip
            files = outputs.preproc(required=True)
            mask_path = outputs.mask(required=True)
            img, data = load_image(str(files.dwi))
            _, mask = load_image(str(mask_path))
            bvals, bvecs = read_table(str(files.bval), str(files.bvec))
            runs.append(RunArrays(data, img.affine, bvals, bvecs, mask > 0, files.dwi.name))
            images.append(img)
            sources += [outputs.names.dwi().as_posix(), outputs.names.mask().as_posix()]
        name = self.inputs.run_name or " + ".join(r.name for r in runs)
        cwd = Path(runtime.cwd)
        summary = {"files": {}, "runs": [s["source"] for s in self.inputs.runs],
                   "sources": sources}  # fmt: skip
        try:
            transforms, records = self._align(runs)
            signal, bvals, bvecs, mask = combine_runs(
                runs, transforms, b0_threshold=self.inputs.b0_threshold
            )
            covered = int(mask.sum()) / max(int(runs[0].mask.sum()), 1)
            if covered < MIN_OVERLAP:
                raise _Unaligned(f"after alignment the runs overlap on {100 * covered:.0f}% "
                                 "of the first run's mask")  # fmt: skip
        except _Unaligned as err:
            LOGGER.warning(
                "DKI of the combined runs skipped: the b0 images of %s cannot be aligned "
                "(%s). Check that the runs show the same head and that their b0 images are "
                "not empty or corrupted. No DKI maps for this session.",
                ", ".join(r.name for r in runs), err,
            )  # fmt: skip
            summary["skipped"] = str(err)
            return self._write(cwd, summary, runtime)
        del runs
        summary.update(fit_and_save(signal, bvals, bvecs, mask, images[0], cwd, name=name,
                                    b_tolerance=self.inputs.b_tolerance,
                                    b0_threshold=self.inputs.b0_threshold,
                                    n_procs=self.inputs.n_procs))  # fmt: skip
        summary["registration"] = {
            "Method": REGISTRATION_METHOD,
            "Normalisation": NORMALISATION,
            "Reference": summary["runs"][0],
            "Transforms": records,
        }
        return self._write(cwd, summary, runtime)

    def _align(self, runs):
        """Reference-to-run transforms (identity first) and their records."""
        from bids_harmony.dmri.dki_runs import align_runs
        from bids_harmony.errors import RegistrationError

        try:
            results = align_runs(runs, seed=self.inputs.seed,
                                 b0_threshold=self.inputs.b0_threshold)  # fmt: skip
        except (RegistrationError, ValueError) as err:
            # register_rigid's advice is about phantoms; ours is in the WARNING
            raise _Unaligned(str(err).split(" Check that", 1)[0].rstrip(".")) from err
        records = [
            {
                "Run": spec["source"],
                "ReferenceToRunTransform": np.round(result.transform, 6).tolist(),
                "TranslationMm": np.round(result.translation_mm, 3).tolist(),
                "RotationDeg": round(result.rotation_deg, 3),
                "B0CorrelationBefore": round(result.corr_before, 4),
                "B0CorrelationAfter": round(result.corr_after, 4),
            }
            for result, spec in zip(results, self.inputs.runs[1:], strict=True)
        ]
        return [None] + [result.transform for result in results], records

    def _write(self, cwd: Path, summary: dict, runtime):
        out = cwd / "dki.json"
        out.write_text(json.dumps(summary, indent=2))
        self._results["out_json"] = str(out)
        return runtime


class _Unaligned(Exception):
    """The runs' b0 images cannot be aligned (the session is skipped with a WARNING)."""
