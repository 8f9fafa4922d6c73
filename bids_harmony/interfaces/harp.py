"""Nipype interface applying a HARP model to one run (thin: load, call, save)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    TraitedSpec,
    traits,
)

from bids_harmony.interfaces.dmri import (
    RunNamedInterface,
    load_image,
    read_table,
    save_like,
    write_table,
)


class _HarmonizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="preprocessed DWI of a source-site run")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    shells_json = File(exists=True, mandatory=True, desc="per-shell SH fits (FitSH)")
    model_file = File(exists=True, mandatory=True, desc="HARP model (.safetensors)")
    expect = traits.Dict(desc="SH convention the model card must match")
    b0_threshold = traits.Float(50.0, usedefault=True)
    device = traits.Str("cpu", usedefault=True)
    n_threads = traits.Int(1, usedefault=True)
    run_name = traits.Str("", usedefault=True, desc="the run's BIDS prefix, for messages")


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="harmonized DWI series")
    out_bval = File(exists=True)
    out_bvec = File(exists=True)
    out_json = File(exists=True, desc="JSON list: harmonized SH and scale maps per shell")


class HarpHarmonize(RunNamedInterface):
    """Harmonized SH, per-band scale maps and harmonized DWI of one run."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        import torch

        from bids_harmony.dmri.sh import ShellFit
        from bids_harmony.methods.harp import load_model
        from bids_harmony.methods.harp.apply import harmonize_dwi, harmonize_fits

        torch.set_num_threads(max(1, self.inputs.n_threads))
        model, _ = load_model(self.inputs.model_file, expect=self.inputs.expect or None)
        img, data = load_image(self.inputs.in_file)
        _, mask = load_image(self.inputs.in_mask)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        shells = json.loads(Path(self.inputs.shells_json).read_text())
        fits = [
            ShellFit(
                bval=entry["bval"],
                order=entry["order"],
                coeffs=load_image(entry["file"])[1],
                indices=np.asarray(entry["indices"], dtype=int),
                lowered=entry["lowered"],
            )
            for entry in shells
        ]
        harmonized, scales = harmonize_fits(fits, model, mask=mask > 0, device=self.inputs.device)
        dwi = harmonize_dwi(data, bvals, bvecs, harmonized, b0_threshold=self.inputs.b0_threshold)
        cwd = Path(runtime.cwd)
        self._results["out_file"] = save_like(dwi, img, cwd / "harmonized_dwi.nii.gz")
        self._results["out_bval"], self._results["out_bvec"] = write_table(
            bvals, bvecs, cwd / "harmonized_dwi"
        )
        entries = []
        for entry, fit, scale in zip(shells, harmonized, scales, strict=True):
            label = entry["label"]
            entries.append(
                {
                    **{k: entry[k] for k in ("bval", "label", "order", "n_directions", "lowered")},
                    "file": save_like(fit.coeffs, img, cwd / f"harmonized_sh_{label}.nii.gz"),
                    "scales": save_like(scale, img, cwd / f"scales_{label}.nii.gz"),
                }
            )
        out = cwd / "harmonized_shells.json"
        out.write_text(json.dumps(entries, indent=2))
        self._results["out_json"] = str(out)
        return runtime
