"""Apply a trained LinearRISH model to one run at the participant level.

The model (``train --method rish``) holds per-shell scale maps on its FA
template.  The run's FA map (the shell nearest b = 1000) is registered to that
template (ANTs, as at the group level), the scales are warped back to the run's
grid and applied to its SH coefficients; the DWI is rebuilt and FA/MD/GFA
recomputed, and the DKI maps when ``dki`` (the run qualifies for DKI)
(:func:`bids_harmony.interfaces.rish.apply_to_run`), written with
``desc-rish`` next to the run's other outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _ApplyInputSpec(BaseInterfaceInputSpec):
    model_file = File(exists=True, mandatory=True, desc="rish_src-*_tgt-*.safetensors")
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    run = traits.Any(mandatory=True, desc="the DwiRun")
    written = traits.List(traits.Str, desc="the run's participant outputs (orders the node)")
    seed = traits.Int(0, usedefault=True)
    transform = traits.Enum("SyN", "Affine", usedefault=True)
    b_tolerance = traits.Float(mandatory=True)
    b0_threshold = traits.Float(mandatory=True)
    dki = traits.Bool(False, usedefault=True,
                      desc="also refit DKI on the rebuilt DWI (desc-rish DKI maps)")


class _ApplyOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="desc-rish files written")


class ApplyRishModel(SimpleInterface):
    """Register the run to the model's template and write its LinearRISH outputs."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec
    always_run = True  # writes into the output dataset

    def _run_interface(self, runtime):
        import nibabel as nb

        from bids_harmony.bids.group_inputs import run_shells
        from bids_harmony.bids.io import save_nifti, sha256_file
        from bids_harmony.errors import NoDataError
        from bids_harmony.interfaces.rish import apply_to_run
        from bids_harmony.methods.registry import get_method
        from bids_harmony.registration.common_space import register_to_template

        model_file = Path(self.inputs.model_file)
        model, card = get_method("rish").load(model_file)
        if model.reference is None or model.affine is None:
            raise NoDataError(f"{model_file}: the LinearRISH model has no FA template.")
        cwd = Path(runtime.cwd)
        template = cwd / "model_template_FA.nii.gz"
        save_nifti(nb.Nifti1Image(model.reference.astype(np.float32), model.affine), template)
        shells = {m.label: m for m in run_shells(Path(self.inputs.output_dir), self.inputs.run)}
        labels = [label for label in model.shells if label in shells]
        if not labels:
            raise NoDataError(
                f"{model_file}: model shells {', '.join(model.shells)} and the shells of "
                f"{self.inputs.run.dwi} ({', '.join(shells) or 'none'}) do not overlap."
            )
        ref = min(labels, key=lambda s: abs(float(s[1:]) - 1000.0))
        transform = register_to_template(shells[ref].raw["fa"], template, cwd / "transforms",
                                         seed=self.inputs.seed,
                                         transform=self.inputs.transform)  # fmt: skip
        written = apply_to_run(
            [shells[label] for label in labels], {k: model.scales[k] for k in labels},
            transform, template, mask_file=shells[ref].outputs.mask(required=True),
            subjects=[str(s).removeprefix("sub-") for s in card.get("training_subjects", [])],
            b_tolerance=self.inputs.b_tolerance, b0_threshold=self.inputs.b0_threshold,
            model={"ModelFile": f"bids::models/{model_file.name}",
                   "ModelSHA256": sha256_file(model_file),
                   "SourceSite": str(card.get("source_site")),
                   "TargetSite": str(card.get("target_site"))},
            dki=self.inputs.dki,
        )  # fmt: skip
        self._results["out_files"] = [str(p) for files in written.values()
                                      for p in files.values()]  # fmt: skip
        return runtime
