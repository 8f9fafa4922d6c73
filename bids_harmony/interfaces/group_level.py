"""Nipype interfaces of the ``group`` level (per session and per scenario steps).

A *scenario* is one source site → target site comparison for one raw ``acq``
protocol (:class:`~bids_harmony.bids.group_inputs.Selection`).  After the common
space is set up (:mod:`bids_harmony.interfaces.common_space`):

- :class:`FitRish` (per scenario): LinearRISH scale maps in template space, from
  the traveling subjects' RISH features (when no participant-level ``desc-rish``
  outputs exist);
- :class:`ApplyRish` (per source session): the scales warped back and applied,
  ``desc-rish`` outputs written next to the participant outputs;
- :class:`FibreErrors` (per source session): CSD peak angle, source vs HARP;
- :class:`WarpMaps` (per session): FA/MD/GFA of every method and the mask into
  the template (and, when asked, the run's DKI maps, raw and ``desc-dkicnn``);
- :class:`EvaluateScenario` (per scenario): Eq. 2 standard-error maps, ROI
  tables and t-tests, as a :class:`ScenarioResult`;
- :class:`EvaluateDki` (per scenario with DKI maps): inter-scanner CV and NRMSEs of
  the DKI maps before/after the DKI CNN (:mod:`bids_harmony.workflows.group_dki`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_harmony.evaluation.scenario import METRICS, evaluate_shells
from bids_harmony.interfaces.dmri import RunNamedInterface

LOGGER = logging.getLogger("bids_harmony.workflows.group")
#: WM threshold of the fibre-orientation comparison.
WM_FA = 0.3


@dataclass(frozen=True)
class SessionMaps:
    """What the group level reads of one session: its shells' maps and mask.

    ``key`` is the run's BIDS prefix, ``label`` says ``sub-X ses-Y`` in messages,
    ``shells`` maps a shell label to the run's
    :class:`~bids_harmony.bids.group_inputs.ShellMaps`.
    """

    key: str
    subject: str
    label: str
    mask: Path
    shells: dict


def kept_subjects(
    source: Sequence[SessionMaps], target: Sequence[SessionMaps], transforms: Sequence[object]
) -> list[int]:
    """Indices of the subjects whose four sessions were all registered.

    ``source`` and ``target`` are subject-major (two sessions per subject);
    ``transforms`` is aligned with ``[*source, *target]`` (``None``: excluded).
    """
    n = len(source) // 2
    ok = [t is not None for t in transforms]
    return [i for i in range(n) if all(ok[2 * i: 2 * i + 2]) and all(
        ok[len(source) + 2 * i: len(source) + 2 * i + 2])]


def _load(path: Path) -> np.ndarray:
    import nibabel as nb

    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


# --------------------------------------------------------------------------- LinearRISH


class _FitRishInputSpec(BaseInterfaceInputSpec):
    source = traits.List(traits.Any, mandatory=True, desc="SessionMaps of source sessions")
    target = traits.List(traits.Any, mandatory=True, desc="SessionMaps of target sessions")
    transforms = traits.List(traits.Any, mandatory=True,
                             desc="SessionTransform or None, aligned with source + target")
    labels = traits.List(traits.Str, mandatory=True)
    template_file = File(exists=True, mandatory=True)


class _FitRishOutputSpec(TraitedSpec):
    model = traits.Any(desc="RishModel of every shell (None: no subject left)")
    scales = traits.Dict(desc="shell label -> template-space scale maps (X, Y, Z, n_bands)")
    subjects = traits.List(traits.Str, desc="the subjects it was fitted on")


class FitRish(SimpleInterface):
    """LinearRISH scale maps of every shell, fitted in template space."""

    input_spec = _FitRishInputSpec
    output_spec = _FitRishOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.interfaces.rish import fit_rish_model

        source, target = list(self.inputs.source), list(self.inputs.target)
        keep = kept_subjects(source, target, self.inputs.transforms)
        sessions = [*source, *target]
        transforms = {s.key: tr for s, tr in zip(sessions, self.inputs.transforms, strict=True)}
        masks = {s.key: s.mask for s in sessions}
        src = [source[2 * i + k] for i in keep for k in (0, 1)]
        tgt = [target[2 * i + k] for i in keep for k in (0, 1)]
        self._results["subjects"] = [source[2 * i].subject for i in keep]
        if not keep:
            self._results["model"], self._results["scales"] = None, {}
            return runtime
        model = None
        for label in self.inputs.labels:
            fitted = fit_rish_model(
                [s.shells[label] for s in src], [s.shells[label] for s in tgt],
                masks, transforms, Path(self.inputs.template_file), shell=label,
            )  # fmt: skip
            model = fitted if model is None else model.with_shells(fitted)
        self._results["model"] = model
        self._results["scales"] = dict(model.scales)
        return runtime


class _ApplyRishInputSpec(BaseInterfaceInputSpec):
    session = traits.Any(mandatory=True, desc="SessionMaps of a source session")
    scales = traits.Dict(mandatory=True, desc="shell label -> template-space scales")
    transform = traits.Any(mandatory=True, desc="SessionTransform of the session, or None")
    template_file = File(exists=True, mandatory=True)
    labels = traits.List(traits.Str, mandatory=True)
    subjects = traits.List(traits.Str, mandatory=True,
                           desc="training subjects (the session is skipped unless its own)")
    b_tolerance = traits.Float(mandatory=True)
    b0_threshold = traits.Float(mandatory=True)
    n_threads = traits.Int(1, usedefault=True, desc="CSD threads (GFA)")


class _ApplyRishOutputSpec(TraitedSpec):
    written = traits.Dict(desc="shell label -> kind -> written path")


class SessionNamedInterface(RunNamedInterface):
    """Messages logged while it runs name its ``session`` input's run (and shell)."""

    def run_label(self) -> str:
        session, label = self.inputs.session, getattr(self.inputs, "label", "")
        if not isdefined(session) or not isinstance(session, SessionMaps):
            return ""
        return f"{session.key} {label}" if isdefined(label) and label else session.key


class ApplyRish(SessionNamedInterface):
    """Harmonize one source session with LinearRISH (writes ``desc-rish`` outputs)."""

    input_spec = _ApplyRishInputSpec
    output_spec = _ApplyRishOutputSpec
    # Writes next to the participant outputs, outside the work directory.
    always_run = True

    def _run_interface(self, runtime):
        from bids_harmony.interfaces.rish import apply_to_run

        session: SessionMaps = self.inputs.session
        if self.inputs.transform is None or session.subject not in self.inputs.subjects:
            self._results["written"] = {}
            return runtime
        written = apply_to_run(
            [session.shells[label] for label in self.inputs.labels], self.inputs.scales,
            self.inputs.transform, Path(self.inputs.template_file), mask_file=session.mask,
            subjects=list(self.inputs.subjects), b_tolerance=self.inputs.b_tolerance,
            b0_threshold=self.inputs.b0_threshold, n_threads=self.inputs.n_threads,
        )  # fmt: skip
        self._results["written"] = {k: {kk: str(p) for kk, p in v.items()}
                                    for k, v in written.items()}  # fmt: skip
        return runtime


# --------------------------------------------------------------------------- fibres


class _FibreInputSpec(BaseInterfaceInputSpec):
    session = traits.Any(mandatory=True, desc="SessionMaps of a source session")
    label = traits.Str(mandatory=True, desc="shell label")
    n_threads = traits.Int(1, usedefault=True, desc="CSD threads")


class _FibreOutputSpec(TraitedSpec):
    errors = traits.Any(desc="(shell label, angular errors (deg) of the WM voxels)")


class FibreErrors(SessionNamedInterface):
    """Angle between principal CSD peaks of the source and the HARP DWI, in WM."""

    input_spec = _FibreInputSpec
    output_spec = _FibreOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.bids.gradients_io import read_gradients
        from bids_harmony.dmri.metrics import csd_fodf
        from bids_harmony.evaluation.fibers import angular_error_deg, principal_directions

        session: SessionMaps = self.inputs.session
        m = session.shells[self.inputs.label]
        fa = _load(m.raw["fa"])
        wm = fa >= WM_FA
        peaks = []
        for method in (None, "harp"):
            files = m.outputs.dwi(method, required=True)
            bvals, bvecs = read_gradients(files.bval, files.bvec)
            data = _load(files.dwi)
            result = csd_fodf(data, bvals, bvecs, mask=wm, shell=m.bval, fa=fa,
                              n_threads=self.inputs.n_threads)  # fmt: skip
            peaks.append(principal_directions(result.coeffs, mask=wm))
        self._results["errors"] = (self.inputs.label, angular_error_deg(*peaks)[wm])
        return runtime


# --------------------------------------------------------------------------- warps


class _WarpInputSpec(BaseInterfaceInputSpec):
    session = traits.Any(mandatory=True, desc="SessionMaps")
    transform = traits.Any(mandatory=True, desc="SessionTransform")
    template_file = File(exists=True, mandatory=True)
    labels = traits.List(traits.Str, mandatory=True)
    methods = traits.List(traits.Str, desc="harmonized outputs to warp (source sessions)")
    after = traits.Any(desc="only orders this node after the steps that write the maps")
    dki = traits.Bool(False, usedefault=True, desc="also warp the run's 8 raw DKI maps")
    dki_methods = traits.List(traits.Str, usedefault=True,
                              desc="and these methods' DKI maps (dkicnn, rish, combat; a "
                              "method's maps the session lacks are left out)")


class _WarpOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc=".npz: 'mask', '<label>/<metric>/<method|none>' and "
                    "(with dki) 'dki/<param>/<method|none>'")


class WarpMaps(SimpleInterface):
    """FA/MD/GFA (raw and per method), DKI maps when asked and the brain mask of a
    session, in template space."""

    input_spec = _WarpInputSpec
    output_spec = _WarpOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.registration.common_space import to_template

        session: SessionMaps = self.inputs.session
        tr, template = self.inputs.transform, Path(self.inputs.template_file)
        out = Path(runtime.cwd) / "warped.npz"
        if tr is None:  # registration rejected: the subject is left out
            np.savez(out)
            self._results["out_file"] = str(out)
            return runtime
        arrays = {"mask": to_template(session.mask, tr, template,
                                      interpolator="nearestNeighbor") > 0.5}  # fmt: skip
        for label in self.inputs.labels:
            maps = session.shells[label]
            for metric in METRICS:
                for method in [None, *self.inputs.methods]:
                    arrays[f"{label}/{metric}/{method or 'none'}"] = to_template(
                        maps.file(metric, method), tr, template
                    )
        if self.inputs.dki:
            from bids_harmony.bids.derivatives import DKI_PARAMS

            outputs = session.shells[self.inputs.labels[0]].outputs  # the run's (all shells)
            for method in [None, *self.inputs.dki_methods]:
                maps = outputs.dki_maps(method)  # e.g. no desc-rish maps: subject not kept
                if method is not None and len(maps) < len(DKI_PARAMS):
                    continue
                for param in DKI_PARAMS:
                    arrays[f"dki/{param}/{method or 'none'}"] = to_template(
                        maps.get(param) or outputs.dki_map(param, method, required=True), tr,
                        template,
                    )  # fmt: skip
        np.savez(out, **arrays)
        self._results["out_file"] = str(out)
        return runtime


# --------------------------------------------------------------------------- statistics


class _EvaluateInputSpec(BaseInterfaceInputSpec):
    sessions_source = traits.List(traits.Any, mandatory=True, desc="SessionMaps (source)")
    sessions_target = traits.List(traits.Any, mandatory=True, desc="SessionMaps (target)")
    transforms = traits.List(traits.Any, mandatory=True, desc="aligned with source + target")
    warped = traits.List(File(exists=True), mandatory=True,
                         desc="WarpMaps files, aligned with source + target")
    labels = traits.List(traits.Str, mandatory=True)
    methods = traits.List(traits.Str)
    fibres = traits.List(traits.Any, desc="(shell label, angular errors) per source session "
                         "and shell (HARP)")


class _EvaluateOutputSpec(TraitedSpec):
    shells = traits.Dict(desc="shell label -> ShellSummary (empty: no subject left)")
    subjects = traits.List(traits.Str, desc="the subjects evaluated")


class EvaluateScenario(SimpleInterface):
    """Scan-rescan and inter-scanner standard errors of one scenario (Eq. 2)."""

    input_spec = _EvaluateInputSpec
    output_spec = _EvaluateOutputSpec

    def _run_interface(self, runtime):
        fibres: dict[str, list[np.ndarray]] = {}
        for label, errors in self.inputs.fibres or []:
            fibres.setdefault(label, []).append(errors)
        source, target = list(self.inputs.sessions_source), list(self.inputs.sessions_target)
        keep = kept_subjects(source, target, self.inputs.transforms)
        self._results["subjects"] = [source[2 * i].subject for i in keep]
        if not keep:
            self._results["shells"] = {}
            return runtime
        warped = [Path(f) for f in self.inputs.warped]
        src = [warped[2 * i + k] for i in keep for k in (0, 1)]
        tgt = [warped[len(source) + 2 * i + k] for i in keep for k in (0, 1)]
        self._results["shells"] = evaluate_shells(
            [dict(np.load(f)) for f in src], [dict(np.load(f)) for f in tgt], len(keep),
            list(self.inputs.labels), list(self.inputs.methods), fibres,
        )  # fmt: skip
        return runtime


class _EvaluateDkiInputSpec(BaseInterfaceInputSpec):
    sessions_source = traits.List(traits.Any, mandatory=True, desc="SessionMaps (source)")
    sessions_target = traits.List(traits.Any, mandatory=True, desc="SessionMaps (target)")
    transforms = traits.List(traits.Any, mandatory=True, desc="aligned with source + target")
    warped = traits.List(File(exists=True), mandatory=True,
                         desc="WarpMaps files (with dki), aligned with source + target")
    method = traits.Str("", usedefault=True,
                        desc="the source sessions' harmonized DKI maps ('': before only)")
    target_method = traits.Str("", usedefault=True,
                               desc="the reference sessions' network DKI maps ('': none)")
    methods = traits.List(traits.Str, usedefault=True,
                          desc="other methods' DKI maps of the source sessions (rish, combat), "
                          "compared beside (left out where a kept session lacks them)")


class _EvaluateDkiOutputSpec(TraitedSpec):
    rows = traits.List(traits.Dict, desc="bids_harmony.evaluation.dki.evaluate_dki rows")


class EvaluateDki(SimpleInterface):
    """Inter-scanner CV and NRMSEs of the DKI maps, before and after (Tong et al. 2020)."""

    input_spec = _EvaluateDkiInputSpec
    output_spec = _EvaluateDkiOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import DKI_PARAMS
        from bids_harmony.evaluation.dki import evaluate_dki

        source, target = list(self.inputs.sessions_source), list(self.inputs.sessions_target)
        keep = kept_subjects(source, target, self.inputs.transforms)
        self._results["rows"] = []
        if not keep:
            return runtime
        warped = [Path(f) for f in self.inputs.warped]
        src = [dict(np.load(warped[2 * i + k])) for i in keep for k in (0, 1)]
        tgt = [dict(np.load(warped[len(source) + 2 * i + k])) for i in keep for k in (0, 1)]
        brain = np.stack([z["mask"] for z in [*src, *tgt]]).all(0)

        def stack(files, param, method):
            arrays = [z[f"dki/{param}/{method}"] for z in files]
            return np.stack(arrays).reshape(len(keep), 2, *arrays[0].shape)

        method, target_method = self.inputs.method, self.inputs.target_method
        others = [m for m in self.inputs.methods
                  if all(f"dki/{p}/{m}" in z for z in src for p in DKI_PARAMS)]  # fmt: skip
        for m in sorted(set(self.inputs.methods) - set(others)):
            LOGGER.warning("DKI evaluation: some sessions have no desc-%s DKI maps; %s is "
                           "not compared.", m, m)  # fmt: skip
        rows = evaluate_dki(
            {p: stack(src, p, "none") for p in DKI_PARAMS},
            {p: stack(src, p, method) for p in DKI_PARAMS} if method else None,
            {p: stack(tgt, p, "none") for p in DKI_PARAMS}, brain,
            {p: stack(tgt, p, target_method) for p in DKI_PARAMS} if target_method else None,
            {m: {p: stack(src, p, m) for p in DKI_PARAMS} for m in others},
        )  # fmt: skip
        subjects = [source[2 * i].subject for i in keep]
        for row in rows:
            if row["subject"] != "mean":
                row["subject"] = subjects[int(row["subject"])]
        self._results["rows"] = rows
        return runtime
