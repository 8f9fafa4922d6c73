"""Thin interfaces around the FSL backend: FSL's input files, and its outputs made ours.

The FSL tools themselves run through :mod:`nipype.interfaces.fsl`
(:func:`bids_harmony.workflows.fsl_preproc.init_fsl_preproc_wf`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_harmony.interfaces.dmri import load_image, read_table, save_like, write_table


class _PrepareInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw DWI series")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    pe_dir = traits.Str(mandatory=True, desc="BIDS PhaseEncodingDirection of the run")
    readout_time = traits.Float(mandatory=True, desc="total readout time of the run (s)")
    reverse = traits.List(
        traits.Dict, desc="reverse phase-encoding images: path, pe_dir, readout_time, volumes"
    )
    b0_threshold = traits.Float(50.0, usedefault=True)
    max_b0s = traits.Int(3, usedefault=True, desc="b0s of the run given to TOPUP, at most")


class _PrepareOutputSpec(TraitedSpec):
    acqparams = File(exists=True, desc="--acqp rows: the run's b0s, then the reverse images")
    index = File(exists=True, desc="--index: row 1 for every volume of the run")
    b0_pair = File(desc="4-D b0s with both phase encodings, for TOPUP (with reverse images)")
    out_bval = File(exists=True, desc="b-values as checked at discovery")
    out_bvec = File(exists=True, desc="unit b-vectors (zeros on b0s), FSL layout")


class PrepareFslInputs(SimpleInterface):
    """Write eddy's ``--acqp``/``--index`` files and TOPUP's b0 stack.

    Row 1 of ``acqparams`` is the run's own phase encoding, so that ``index`` is
    all ones; with reverse images, TOPUP reads the same file, one row per volume
    of ``b0_pair`` (the run's b0s first).  eddy gets the gradient table as the
    python backend reads it (unit b-vectors, zeros on b0s): scanners write
    vectors of norm 0.99 or noise on b0s, which eddy would take at face value.
    """

    input_spec = _PrepareInputSpec
    output_spec = _PrepareOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.dmri.acqparams import acquisition_parameters, pick_b0s, write_acqparams
        from bids_harmony.dmri.gradients import validate_gradients

        cwd = Path(runtime.cwd)
        img = nb.load(self.inputs.in_file)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        bvals, bvecs = validate_gradients(
            bvals, bvecs, img.shape[3], name=self.inputs.in_bvec,
            b0_threshold=self.inputs.b0_threshold,
        )  # fmt: skip
        self._results["out_bval"], self._results["out_bvec"] = write_table(
            bvals, bvecs, cwd / "eddy_gradients"
        )
        pe_dirs, readouts = [self.inputs.pe_dir], [self.inputs.readout_time]
        if self.inputs.reverse:
            picks = pick_b0s(bvals, self.inputs.b0_threshold, self.inputs.max_b0s)
            if picks.size == 0:
                raise ValueError(
                    f"{self.inputs.in_file}: no b0 volume (b < {self.inputs.b0_threshold:g}) "
                    "to pair with the reverse phase-encoding images for TOPUP."
                )
            volumes = [np.asarray(img.dataobj[..., int(i)], dtype=np.float32) for i in picks]
            pe_dirs, readouts = pe_dirs * len(volumes), readouts * len(volumes)
            for image in self.inputs.reverse:
                other = nb.load(image["path"])
                for index in image["volumes"]:
                    data = other.dataobj if other.ndim == 3 else other.dataobj[..., int(index)]
                    volumes.append(np.asarray(data, dtype=np.float32))
                    pe_dirs.append(image["pe_dir"])
                    readouts.append(float(image["readout_time"]))
            # TOPUP sees the images in the run's grid: field maps share it (checked at
            # discovery) and only their voxel values are used.
            self._results["b0_pair"] = save_like(
                np.stack(volumes, axis=-1), img, cwd / "b0_pair.nii.gz"
            )
        rows = acquisition_parameters(pe_dirs, readouts)
        self._results["acqparams"] = write_acqparams(cwd / "acqparams.txt", rows)
        index = cwd / "index.txt"
        index.write_text(" ".join(["1"] * bvals.size) + "\n")
        self._results["index"] = str(index)
        return runtime


class _FinalizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="eddy's corrected series")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True, desc="eddy's rotated b-vectors")
    in_mask = File(exists=True, mandatory=True, desc="bet's brain mask")
    report = traits.Dict(mandatory=True, desc="Steps and MaskMethod of the FSL graph")


class _FinalizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="preprocessed DWI series, uncompressed for fast reading")
    out_derivative = File(exists=True, desc="the same series as written to the derivatives")
    out_bval = File(exists=True)
    out_bvec = File(exists=True)
    out_mask = File(exists=True)
    out_report = File(exists=True)


class FslFinalize(SimpleInterface):
    """eddy's outputs as the python backend gives them: float32, checked, clipped at 0.

    eddy's spline resampling rings to small negative intensities at edges, which
    the log-signal fits downstream cannot take.
    """

    input_spec = _FinalizeInputSpec
    output_spec = _FinalizeOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.dmri import preprocess

        cwd = Path(runtime.cwd)
        img, data = load_image(self.inputs.in_file)
        preprocess.check_finite(data, name=self.inputs.in_file)
        negative = int(np.count_nonzero(data < 0))
        np.maximum(data, 0, out=data)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        self._results["out_file"] = save_like(data, img, cwd / "preproc_dwi.nii")
        self._results["out_derivative"] = save_like(data, img, cwd / "preproc_dwi.nii.gz")
        self._results["out_bval"], self._results["out_bvec"] = write_table(
            bvals, bvecs, cwd / "preproc_dwi"
        )
        _, mask = load_image(self.inputs.in_mask)
        self._results["out_mask"] = save_like(mask > 0, img, cwd / "mask.nii.gz", dtype=np.uint8)
        report = dict(self.inputs.report)
        report["NegativeValuesClipped"] = negative
        path = cwd / "preproc_report.json"
        path.write_text(json.dumps(report, indent=2))
        self._results["out_report"] = str(path)
        return runtime
