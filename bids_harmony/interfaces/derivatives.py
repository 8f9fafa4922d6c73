"""Nipype interface that places participant derivatives into the output dataset."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    run_info = traits.Dict(mandatory=True, desc="entities, sources, site of the raw run")
    params = traits.Dict(mandatory=True, desc="settings recorded in every sidecar")
    dwi_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    preproc_report = File(exists=True, mandatory=True)
    shells_json = File(exists=True, mandatory=True)
    metrics_json = File(exists=True, mandatory=True)


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written in the output dataset")


class ParticipantSink(SimpleInterface):
    """Write one run's derivatives atomically with their sidecars."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    # Outputs live outside the work directory: always write them again.
    always_run = True

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import write_derivatives
        from bids_harmony.bids.outputs import participant_derivatives

        prep = {
            "dwi": self.inputs.dwi_file,
            "bval": self.inputs.bval_file,
            "bvec": self.inputs.bvec_file,
            "mask": self.inputs.mask_file,
            "report": json.loads(Path(self.inputs.preproc_report).read_text()),
        }
        derivatives = participant_derivatives(
            self.inputs.run_info,
            prep,
            json.loads(Path(self.inputs.shells_json).read_text()),
            json.loads(Path(self.inputs.metrics_json).read_text()),
            self.inputs.params,
        )
        written = write_derivatives(Path(self.inputs.output_dir), derivatives)
        self._results["out_files"] = [str(p) for p in written]
        return runtime


class _HarmonizedSinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True)
    run_info = traits.Dict(mandatory=True)
    params = traits.Dict(mandatory=True)
    model_info = traits.Dict(mandatory=True, desc="file, sha256, source_site, target_site")
    dwi_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    shells_json = File(exists=True, mandatory=True)
    metrics_json = File(exists=True, mandatory=True)


class HarmonizedSink(SimpleInterface):
    """Write one run's HARP-harmonized derivatives atomically with their sidecars."""

    input_spec = _HarmonizedSinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import write_derivatives
        from bids_harmony.bids.outputs import harmonized_derivatives

        derivatives = harmonized_derivatives(
            self.inputs.run_info,
            {"dwi": self.inputs.dwi_file, "bval": self.inputs.bval_file,
             "bvec": self.inputs.bvec_file},
            json.loads(Path(self.inputs.shells_json).read_text()),
            json.loads(Path(self.inputs.metrics_json).read_text()),
            self.inputs.params,
            self.inputs.model_info,
        )  # fmt: skip
        written = write_derivatives(Path(self.inputs.output_dir), derivatives)
        self._results["out_files"] = [str(p) for p in written]
        return runtime
