"""The DKI CNN (Tong et al., 2020) at the train and participant levels.

``train --method dki-cnn``: for every traveling subject, each source-site session is
paired with the subject's first reference-site session.  The reference session's FA is
registered to the source session's FA (ANTs SyN) and its eight DKI maps (the
participant level's fits) are warped onto the source grid: those are the labels.  The
source session's inputs are its per-shell SH coefficients evaluated on fixed directions
(:func:`~bids_harmony.methods.dki_cnn.inputs.dki_inputs_from_sh`), so the network does
not depend on the scanner's gradient table.  :class:`TrainDkiCnn` trains one network per
source site with the last subjects held out for early stopping and writes
``models/dkicnn_src-<S>_tgt-<T>[_acq-<A>].safetensors``.

``participant``: :class:`ApplyDkiCnnModel` computes a source-site run's inputs the same
way and writes the network's maps as ``model-dki_param-<x>_desc-dkicnn`` with sidecars.
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
    traits,
)

LOGGER = logging.getLogger(__name__)
#: The ``desc-`` entity of the network's outputs.
DESC = "dkicnn"


@dataclass(frozen=True)
class TrainingPair:
    """One source session and the reference session of the same subject."""

    subject: str
    source: object  # DwiRun
    target: object  # DwiRun


def run_inputs(output_dir: Path, run: object, spec) -> tuple[np.ndarray, np.ndarray]:
    """The network inputs ``(X, Y, Z, C)`` of a run and its brain mask, from its outputs."""
    import nibabel as nb

    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.bids.group_inputs import run_shells
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.errors import MissingOutputError
    from bids_harmony.methods.dki_cnn.inputs import dki_inputs_from_sh

    outputs = RunOutputs.of_run(output_dir, run)
    shells = run_shells(output_dir, run)
    if not shells:
        raise MissingOutputError(f"{run.dwi}: no participant outputs (SH maps) in {output_dir}; "
                                 "run the participant level first.")  # fmt: skip
    coeffs = {m.bval: np.asarray(nb.load(m.raw["sh"]).dataobj, np.float32) for m in shells}
    mask = np.asarray(nb.load(outputs.mask(required=True)).dataobj) > 0
    preproc = outputs.preproc(required=True)
    bvals, _ = read_gradients(preproc.bval, preproc.bvec)
    dwi = nb.load(preproc.dwi)
    b0 = [i for i, b in enumerate(bvals) if b <= 50.0]
    mean_b0 = np.mean([np.asarray(dwi.dataobj[..., i], np.float32) for i in b0], axis=0)
    return dki_inputs_from_sh(coeffs, spec, mean_b0=mean_b0, mask=mask), mask


def reference_labels(output_dir: Path, pair: TrainingPair, work: Path, seed: int) -> np.ndarray:
    """The reference session's DKI maps on the source session's grid ``(X, Y, Z, 8)``."""
    from bids_harmony.bids.group_inputs import run_shells
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.errors import MissingOutputError
    from bids_harmony.methods.dki_cnn.network import MAP_NAMES
    from bids_harmony.registration.common_space import (
        RegistrationFailedError,
        register_to_template,
    )
    from bids_harmony.registration.warps import to_template

    maps = RunOutputs.of_run(output_dir, pair.target).dki_maps()
    names = [m.lower() for m in MAP_NAMES]
    if any(n not in maps for n in names):
        raise MissingOutputError(
            f"{pair.target.dwi}: no DKI maps in {output_dir} (the participant level fits DKI on "
            "multi-shell runs unless --no-dki); the reference scanner's DKI maps are the labels."
        )
    fa = {m.label: m.raw["fa"] for m in run_shells(output_dir, pair.source)}
    fa_ref = {m.label: m.raw["fa"] for m in run_shells(output_dir, pair.target)}
    label = min(set(fa) & set(fa_ref), key=lambda s: abs(float(s[1:]) - 1000.0))
    try:
        tr = register_to_template(fa_ref[label], fa[label], work, seed=seed, transform="SyN")
    except RegistrationFailedError as err:
        # rescans that are already close can make SyN fit noise (its acceptance test then
        # refuses it): an affine registration is the fallback, then the pair is left out
        LOGGER.info("%s; trying an affine registration.", err)
        tr = register_to_template(fa_ref[label], fa[label], work / "affine", seed=seed,
                                  transform="Affine")  # fmt: skip
    return np.stack([to_template(maps[n], tr, fa[label]) for n in names], axis=-1)


class _TrainInputSpec(BaseInterfaceInputSpec):
    pairs = traits.List(traits.Any, mandatory=True, desc="TrainingPair per source session")
    held_out = traits.List(traits.Str, mandatory=True, desc="subjects held out")
    output_dir = traits.Str(mandatory=True)
    models_dir = traits.Str(mandatory=True)
    stem = traits.Str(mandatory=True)
    shells = traits.List(traits.Float, mandatory=True)
    card = traits.Dict(mandatory=True)
    seed = traits.Int(0, usedefault=True)
    max_minutes = traits.Float(15.0, usedefault=True)
    device = traits.Str("cpu", usedefault=True)


class _TrainOutputSpec(TraitedSpec):
    out_file = traits.Str(desc="the model file")


class TrainDkiCnn(SimpleInterface):
    """Register the labels, build the inputs, train, and write the model (module docstring)."""

    input_spec = _TrainInputSpec
    output_spec = _TrainOutputSpec
    always_run = True  # the model lives outside the work directory

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import software_versions
        from bids_harmony.methods.dki_cnn.inputs import InputSpec
        from bids_harmony.methods.registry import get_method

        spec = InputSpec(tuple(self.inputs.shells))
        out = Path(self.inputs.output_dir)
        inputs, labels, masks, held = [], [], [], []
        from bids_harmony.errors import NoDataError
        from bids_harmony.registration.common_space import RegistrationFailedError

        pairs, left_out = [], []
        for k, pair in enumerate(self.inputs.pairs):
            try:
                y = reference_labels(out, pair, Path(runtime.cwd) / f"pair{k}",
                                     self.inputs.seed)  # fmt: skip
            except RegistrationFailedError as err:
                LOGGER.warning("DKI CNN %s: pair %s <- %s left out: %s", self.inputs.stem,
                               pair.source.prefix, pair.target.prefix, err)  # fmt: skip
                left_out.append(pair)
                continue
            x, mask = run_inputs(out, pair.source, spec)
            pairs.append(pair)
            inputs.append(x)
            labels.append(np.where(mask[..., None], y, np.nan).astype(np.float32))
            masks.append(mask)
            if pair.subject in self.inputs.held_out:
                held.append(len(pairs) - 1)
        if not held or len(held) == len(pairs):
            raise NoDataError(
                f"DKI CNN {self.inputs.stem}: after registration {len(pairs)} pair(s) are left "
                f"({len(held)} held out); training needs pairs to train on and held-out ones."
            )
        method = get_method("dki-cnn")
        model = method.fit(inputs, labels, masks=masks, held_out=held, seed=self.inputs.seed,
                           max_minutes=self.inputs.max_minutes, device=self.inputs.device,
                           spec=spec)  # fmt: skip
        card = {**self.inputs.card, "software_versions": software_versions(),
                "training_pairs": [f"{p.source.prefix} <- {p.target.prefix}" for p in pairs],
                "pairs_left_out": [f"{p.source.prefix} <- {p.target.prefix}: registration "
                                   "failed" for p in left_out]}  # fmt: skip
        path = method.save(model, Path(self.inputs.models_dir) / self.inputs.stem, card)
        LOGGER.info("DKI CNN %s: %s", self.inputs.stem, model.training)
        self._results["out_file"] = str(path)
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    model_file = File(exists=True, mandatory=True, desc="dkicnn_src-*_tgt-*.safetensors")
    output_dir = traits.Str(mandatory=True)
    run = traits.Any(mandatory=True, desc="the DwiRun")
    written = traits.List(traits.Str, desc="the run's participant outputs (orders the node)")


class _ApplyOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str)


class ApplyDkiCnnModel(SimpleInterface):
    """Write a source-site run's ``desc-dkicnn`` DKI maps."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec
    always_run = True  # writes into the output dataset

    def _run_interface(self, runtime):
        self._results["out_files"] = [str(p) for p in apply_to_run(
            Path(self.inputs.model_file), Path(self.inputs.output_dir), self.inputs.run)]
        return runtime


def apply_to_run(model_file: Path, output_dir: Path, run: object) -> list[Path]:
    """The network's maps of one run, written with sidecars; the files written."""
    import nibabel as nb

    from bids_harmony.bids.derivatives import bids_uri, sidecar_path, software_versions
    from bids_harmony.bids.io import save_nifti, sha256_file, write_json
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.methods.dki_cnn.network import MAP_NAMES
    from bids_harmony.methods.registry import get_method

    method = get_method("dki-cnn")
    model, card = method.load(model_file)
    x, mask = run_inputs(output_dir, run, model.spec)
    maps = method.apply(model, x, mask=mask)
    outputs = RunOutputs.of_run(output_dir, run)
    affine = nb.load(outputs.mask(required=True)).affine
    model_uri = f"bids::models/{model_file.name}"
    written = []
    for k, name in enumerate(MAP_NAMES):
        path = Path(output_dir) / outputs.names.dki_map(name.lower(), DESC)
        save_nifti(nb.Nifti1Image(maps[..., k].astype(np.float32), affine), path)
        written.append(path)
    for k, path in enumerate(written):  # sidecars last: a file with a sidecar is complete
        write_json(sidecar_path(path), {
            "Description": f"{MAP_NAMES[k]} predicted by the DKI CNN as the reference scanner "
            f"{card.get('target_site')} would measure it",
            "Units": "mm^2/s" if MAP_NAMES[k] in ("MD", "AD", "RD") else "arbitrary",
            "Sources": [bids_uri("", outputs.names.dwi()), bids_uri("", outputs.names.mask()),
                        model_uri],
            "Harmonization": {"Method": "dki-cnn", "ModelFile": model_uri,
                              "ModelSHA256": sha256_file(model_file),
                              "SourceSite": card.get("source_site"),
                              "TargetSite": card.get("target_site")},
            "SoftwareVersions": software_versions(),
        })  # fmt: skip
    LOGGER.info("DKI CNN: %s -> desc-%s maps", run.prefix, DESC)
    return written


def held_out_subjects(subjects: Sequence[str]) -> list[str]:
    """The last quarter of the subjects (at least one), for early stopping."""
    n = max(1, round(len(subjects) / 4))
    return list(subjects[-n:])
