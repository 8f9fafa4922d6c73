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
from dataclasses import dataclass, replace
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


def _shell_files(output_dir: Path, run: object, kind: str) -> dict[float, Path]:
    """A run's complete per-shell maps of one kind (``sh``, ``fa``), by b-value."""
    from bids_harmony.bids.reader import RunOutputs

    maps = RunOutputs.of_run(output_dir, run).shell_maps(kind)
    return {float(label[1:]): path for label, path in maps.items()}


def run_inputs(output_dir: Path, run: object, spec) -> tuple[np.ndarray, np.ndarray]:
    """The network inputs ``(X, Y, Z, C)`` of a run and its brain mask, from its outputs."""
    import nibabel as nb

    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.errors import MissingOutputError
    from bids_harmony.methods.dki_cnn.inputs import dki_inputs_from_sh

    outputs = RunOutputs.of_run(output_dir, run)
    shells = _shell_files(output_dir, run, "sh")
    if not shells:
        raise MissingOutputError(f"{run.dwi}: no participant outputs (SH maps) in {output_dir}; "
                                 "run the participant level first.")  # fmt: skip
    coeffs = {b: np.asarray(nb.load(path).dataobj, np.float32) for b, path in shells.items()}
    mask = np.asarray(nb.load(outputs.mask(required=True)).dataobj) > 0
    preproc = outputs.preproc(required=True)
    bvals, _ = read_gradients(preproc.bval, preproc.bvec)
    dwi = nb.load(preproc.dwi)
    b0 = [i for i, b in enumerate(bvals) if b <= 50.0]
    mean_b0 = np.mean([np.asarray(dwi.dataobj[..., i], np.float32) for i in b0], axis=0)
    return dki_inputs_from_sh(coeffs, spec, mean_b0=mean_b0, mask=mask), mask


def label_mask(output_dir: Path, run: object, labels: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
    """The brain voxels whose registered labels agree with the run's own DKI fit
    (:func:`~bids_harmony.methods.dki_cnn.labels.consistent_labels`); ``mask`` when the
    run has no DKI maps of its own (fitted with ``--no-dki``), with an INFO line."""
    import nibabel as nb

    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.methods.dki_cnn.labels import consistent_labels
    from bids_harmony.methods.dki_cnn.network import MAP_NAMES

    own = RunOutputs.of_run(output_dir, run).dki_maps()
    if "md" not in own or "fa" not in own:
        LOGGER.info("%s has no DKI maps of its own: every brain voxel's label is used.",
                    run.prefix)  # fmt: skip
        return mask
    md, fa = MAP_NAMES.index("MD"), MAP_NAMES.index("FA")
    own_md, own_fa = (np.asarray(nb.load(own[k]).dataobj, np.float64) for k in ("md", "fa"))
    return consistent_labels(labels[..., md], labels[..., fa], own_md, own_fa, mask)


#: How the training voxels are chosen (the model card's ``label_voxels``).
LABEL_RULE = ("brain voxels where the registered label agrees with the source session's own "
              "DKI fit: |MD - MD_own| < 0.25 MD_own and |FA - FA_own| < 0.15 (tissue borders "
              "that registration and partial volume mix are left out of the loss)")  # fmt: skip


def _fa_near(output_dir: Path, run: object, shell: float, b_tolerance: float) -> Path:
    """The run's FA map of the shell nearest ``shell`` (within ``b_tolerance``)."""
    from bids_harmony.dmri.gradients import nearest_shell
    from bids_harmony.errors import MissingOutputError

    fa = _shell_files(output_dir, run, "fa")
    nearest = nearest_shell(fa, shell, b_tolerance)
    if nearest is None:
        raise MissingOutputError(f"{run.dwi}: no FA map of b={shell:g} in {output_dir}; run the "
                                 "participant level first.")  # fmt: skip
    return fa[nearest]


def reference_labels(output_dir: Path, pair: TrainingPair, work: Path, seed: int, *,
                     shell: float = 1000.0, b_tolerance: float = 50.0) -> np.ndarray:  # fmt: skip
    """The reference session's DKI maps on the source session's grid ``(X, Y, Z, 8)``.

    The FA maps of ``shell`` (each run's shell within ``b_tolerance`` of it) are registered
    with ANTs SyN, or an affine registration when SyN is refused; RegistrationFailedError
    when both are."""
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
            "multi-shell runs unless --no-dki); the reference scanner's DKI maps are the labels; "
            "run the participant level without --no-dki."
        )
    fa = _fa_near(output_dir, pair.source, shell, b_tolerance)
    fa_ref = _fa_near(output_dir, pair.target, shell, b_tolerance)
    try:
        tr = register_to_template(fa_ref, fa, work, seed=seed, transform="SyN")
    except RegistrationFailedError as err:
        # rescans that are already close can make SyN fit noise (its acceptance test then
        # refuses it): an affine registration is the fallback, then the pair is left out
        LOGGER.info("%s; trying an affine registration.", err)
        tr = register_to_template(fa_ref, fa, work / "affine", seed=seed, transform="Affine")
    return np.stack([to_template(maps[n], tr, fa) for n in names], axis=-1)


def _pair_name(pair: TrainingPair) -> str:
    return f"{pair.source.prefix} <- {pair.target.prefix}"


class _RegisterInputSpec(BaseInterfaceInputSpec):
    pair = traits.Any(mandatory=True, desc="the TrainingPair")
    in_files = traits.List(File(exists=True), mandatory=True,
                           desc="the files read (FA maps, DKI maps): they key the cache")
    output_dir = traits.Str(mandatory=True)
    shell = traits.Float(1000.0, usedefault=True, desc="b-value of the FA maps registered")
    b_tolerance = traits.Float(50.0, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    stem = traits.Str("", usedefault=True, desc="the network, for messages")


class _RegisterOutputSpec(TraitedSpec):
    labels_file = traits.Str(desc="the labels (X, Y, Z, 8) on the source grid (.npy); '' when "
                             "the pair is left out")  # fmt: skip
    failure = traits.Str(desc="why the pair is left out ('' when registered)")


class RegisterDkiLabels(SimpleInterface):
    """One training pair: the reference session's DKI maps warped onto the source session
    (:func:`reference_labels`), saved in the node's folder; a pair whose registration fails
    is reported (``failure``), not an error."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.registration.common_space import RegistrationFailedError

        pair, cwd = self.inputs.pair, Path(runtime.cwd)
        try:
            y = reference_labels(Path(self.inputs.output_dir), pair, cwd / "registration",
                                 self.inputs.seed, shell=self.inputs.shell,
                                 b_tolerance=self.inputs.b_tolerance)  # fmt: skip
        except RegistrationFailedError as err:
            LOGGER.warning("DKI CNN %s: pair %s left out: %s", self.inputs.stem,
                           _pair_name(pair), err)  # fmt: skip
            self._results.update(labels_file="", failure=str(err) or "registration failed")
            return runtime
        path = cwd / "labels.npy"
        np.save(path, y.astype(np.float32))
        self._results.update(labels_file=str(path), failure="")
        return runtime


class _TrainInputSpec(BaseInterfaceInputSpec):
    pairs = traits.List(traits.Any, mandatory=True, desc="TrainingPair per source session")
    labels_files = traits.List(traits.Str, mandatory=True,
                               desc="per pair: its labels (RegisterDkiLabels), '' if left out")
    failures = traits.List(traits.Str, desc="per pair: why it is left out ('' if not)")
    held_out = traits.List(traits.Str, mandatory=True, desc="subjects held out")
    output_dir = traits.Str(mandatory=True)
    models_dir = traits.Str(mandatory=True)
    stem = traits.Str(mandatory=True)
    shells = traits.List(traits.Float, mandatory=True)
    b_tolerance = traits.Float(50.0, usedefault=True)
    card = traits.Dict(mandatory=True)
    seed = traits.Int(0, usedefault=True)
    max_minutes = traits.Float(15.0, usedefault=True)
    max_epochs = traits.Int(0, usedefault=True, desc="at most this many epochs (0: the recipe's)")
    device = traits.Str("cpu", usedefault=True)


class _TrainOutputSpec(TraitedSpec):
    out_file = traits.Str(desc="the model file")


class TrainDkiCnn(SimpleInterface):
    """Build the inputs, train on the registered pairs, and write the model (module
    docstring)."""

    input_spec = _TrainInputSpec
    output_spec = _TrainOutputSpec
    always_run = True  # the model lives outside the work directory

    def _run_interface(self, runtime):
        from bids_harmony.bids.derivatives import software_versions
        from bids_harmony.errors import NoDataError
        from bids_harmony.methods.dki_cnn.inputs import InputSpec
        from bids_harmony.methods.dki_cnn.training import DEFAULT_RECIPE
        from bids_harmony.methods.registry import get_method

        spec = InputSpec(tuple(self.inputs.shells), b_tolerance=self.inputs.b_tolerance)
        out = Path(self.inputs.output_dir)
        files = list(self.inputs.labels_files)
        if len(files) != len(self.inputs.pairs):
            raise ValueError(f"{len(files)} labels file(s) for {len(self.inputs.pairs)} pairs")
        failures = list(self.inputs.failures) if self.inputs.failures else [""] * len(files)
        inputs, labels, masks, held, kept_share = [], [], [], [], []
        pairs, left_out = [], []
        for pair, path, failure in zip(self.inputs.pairs, files, failures, strict=True):
            if not path:
                left_out.append((pair, failure))
                continue
            y = np.load(path)
            x, mask = run_inputs(out, pair.source, spec)
            pairs.append(pair)
            inputs.append(x)
            labels.append(np.where(mask[..., None], y, np.nan).astype(np.float32))
            kept = label_mask(out, pair.source, y, mask)
            kept_share.append(round(float(kept.sum()) / max(int(mask.sum()), 1), 4))
            masks.append(kept)
            if pair.subject in self.inputs.held_out:
                held.append(len(pairs) - 1)
        if not held or len(held) == len(pairs):
            raise NoDataError(
                f"DKI CNN {self.inputs.stem}: after registration {len(pairs)} pair(s) are left "
                f"({len(held)} held out); training needs pairs to train on and held-out ones."
            )
        method = get_method("dki-cnn")
        recipe = (replace(DEFAULT_RECIPE, max_epochs=self.inputs.max_epochs)
                  if self.inputs.max_epochs > 0 else DEFAULT_RECIPE)
        model = method.fit(inputs, labels, masks=masks, held_out=held, seed=self.inputs.seed,
                           max_minutes=self.inputs.max_minutes, device=self.inputs.device,
                           spec=spec, recipe=recipe)  # fmt: skip
        card = {**self.inputs.card, "software_versions": software_versions(),
                "training_pairs": [_pair_name(p) for p in pairs],
                "pairs_left_out": [f"{_pair_name(p)}: registration failed"
                                   + (f" ({why})" if why else "")
                                   for p, why in left_out],
                "label_voxels": {"rule": LABEL_RULE, "kept_share_of_brain": dict(zip(
                    [_pair_name(p) for p in pairs], kept_share, strict=True))}}  # fmt: skip
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
