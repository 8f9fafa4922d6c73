"""Nipype interfaces of the common FA space: the study template and session registration.

Used by the ``group`` level and by ``train --method rish``: one node builds the
FA template from the target-site sessions (:class:`BuildFATemplate`), one node per
session registers its FA map to it (:class:`RegisterToTemplate`, in parallel with
``--nprocs``).  A session whose registration is rejected is not an error: the
node reports it (``excluded``) and the level leaves the session out.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _TemplateInputSpec(BaseInterfaceInputSpec):
    fa_files = InputMultiObject(File(exists=True), mandatory=True, desc="session FA maps")
    seed = traits.Int(0, usedefault=True)


class _TemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="FA template (NIfTI)")


class BuildFATemplate(SimpleInterface):
    """Average the FA maps into a study FA template (:func:`build_fa_template`)."""

    input_spec = _TemplateInputSpec
    output_spec = _TemplateOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.registration.common_space import build_fa_template

        cwd = Path(runtime.cwd)
        self._results["out_file"] = str(
            build_fa_template([Path(f) for f in self.inputs.fa_files],
                              cwd / "template_FA.nii.gz", cwd, seed=self.inputs.seed)
        )  # fmt: skip
        return runtime


class _RegisterInputSpec(BaseInterfaceInputSpec):
    fa_file = File(exists=True, mandatory=True, desc="session FA map (moving)")
    template_file = File(exists=True, mandatory=True, desc="FA template (fixed)")
    seed = traits.Int(0, usedefault=True)
    transform = traits.Enum("SyN", "Affine", usedefault=True)
    label = traits.Str(mandatory=True, desc="the session, for messages (sub-X ses-Y)")


class _RegisterOutputSpec(TraitedSpec):
    transform = traits.Any(desc="SessionTransform, or None when the session is excluded")
    excluded = traits.Str(desc="why the session is left out ('' when registered)")


class RegisterToTemplate(SimpleInterface):
    """Register one session FA map to the template (:func:`register_to_template`)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.registration.common_space import (
            RegistrationFailedError,
            register_to_template,
        )

        try:
            result = register_to_template(
                Path(self.inputs.fa_file), Path(self.inputs.template_file),
                Path(runtime.cwd) / "transforms", seed=self.inputs.seed,
                transform=self.inputs.transform,
            )  # fmt: skip
        except RegistrationFailedError as err:
            self._results["transform"] = None
            self._results["excluded"] = f"{self.inputs.label}: {err}"
        else:
            self._results["transform"] = result
            self._results["excluded"] = ""
        return runtime
