"""``train --method dki-cnn``: one DKI CNN per source site from traveling subjects.

For every source site → target (reference) site and raw ``acq`` protocol, the traveling
subjects (:func:`~bids_harmony.bids.group_inputs.select_traveling`) give one training
pair per source session: its inputs, and the reference session's DKI maps registered
to it (:class:`~bids_harmony.interfaces.dki_cnn.TrainDkiCnn`).  The last quarter of
the subjects (at least one) is held out for early stopping.  The network trains in
this process (torch's thread pool does not survive a fork), on ``--device``.
"""

from __future__ import annotations

import logging
import re

from bids_harmony.config import Config
from bids_harmony.errors import NoDataError
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

LOGGER = logging.getLogger(__name__)
STEPS = {"train": "trained"}
#: Traveling subjects needed: one to train on, one held out.
MIN_SUBJECTS = 2


def _name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


def common_shells(study, runs) -> list[float]:
    """The non-zero shells every run has (nominal b-values)."""
    sets = [set(r.shells) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


@releases_locks
def run_train_dki(config: Config) -> int:
    """Train and save one DKI CNN per source site and protocol; the exit code."""
    from nipype.pipeline import engine as pe

    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.interfaces.dki_cnn import TrainDkiCnn, TrainingPair, held_out_subjects
    from bids_harmony.methods.catalog import MODELS_DIR, model_stem
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.run import resolve_device
    from bids_harmony.workflows.train import training_sites, write_description

    study, target, sources = training_sites(config)
    device = resolve_device(config.device)
    workflow, log_dir = level_workflow(config, "bids_harmony_train_dki_wf")
    planned, skipped = [], []
    for source in sources:
        for sel in select_traveling(study, source, target):
            where = f"{source} -> {target}" + (f" acq-{sel.acq}" if sel.acq else "")
            if len(sel.subjects) < MIN_SUBJECTS:
                skipped.append(f"{where}: {len(sel.subjects)} traveling subject(s) with "
                               f"sessions at both sites; the DKI CNN needs at least "
                               f"{MIN_SUBJECTS} (one to train on, one held out)")  # fmt: skip
                continue
            pairs = [TrainingPair(s, run, sel.sessions[s][target][0])
                     for s in sel.subjects for run in sel.sessions[s][source]]  # fmt: skip
            shells = common_shells(study, [r for p in pairs for r in (p.source, p.target)])
            if len(shells) < 2:
                skipped.append(f"{where}: shells {shells} in common; DKI needs two non-zero "
                               "shells at both sites")  # fmt: skip
                continue
            stem = model_stem(source, target, method="dkicnn", acq=sel.acq)
            held = held_out_subjects(sel.subjects)
            node = pe.Node(TrainDkiCnn(
                pairs=pairs, held_out=held, output_dir=str(config.output_dir),
                models_dir=str(config.output_dir / MODELS_DIR), stem=stem, shells=shells,
                seed=config.seed, device=device, max_minutes=config.dki_max_minutes,
                card={"source_site": source, "target_site": target, "acq": sel.acq,
                      "training_subjects": [f"sub-{s}" for s in sel.subjects if s not in held],
                      "held_out_subjects": [f"sub-{s}" for s in held], "seed": config.seed,
                      "labels": "reference-site DKI fit (participant level), registered to "
                      "each source session with ANTs SyN of the FA maps"},
            ), name=_name("train", source, sel.acq), run_without_submitting=True)  # fmt: skip
            workflow.add_nodes([node])
            planned.append(stem)
            LOGGER.info("%s: %d pair(s) of %d traveling subject(s), %s held out; shells %s",
                        where, len(pairs), len(sel.subjects), ", ".join(held),
                        shells)  # fmt: skip
    for line in skipped:
        LOGGER.warning("%s.", line)
    if not planned:
        raise NoDataError("no DKI CNN can be trained: " + "; ".join(skipped or [
            f"no traveling subject has sessions at a source site and at {target}"]) + ".")
    hold_locks(config, level_keys(config, study))
    write_description(config)
    run_steps(workflow, config, log_dir, len(planned), STEPS)
    from bids_harmony.methods.registry import get_method
    from bids_harmony.workflows.references import software_versions, write_level_citation

    text = get_method("dki-cnn").description.rstrip(".")
    write_level_citation(config.output_dir, "train", [f"{text} [@dki-cnn]."],
                         software_versions("antspyx"))  # fmt: skip
    for stem in planned:
        LOGGER.info("Saved %s", config.output_dir / MODELS_DIR / f"{stem}.safetensors")
    return 0
