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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Plan:
    """One network to train: its pairs, held-out subjects, shells and card."""

    stem: str
    source: str
    target: str
    acq: str | None
    subjects: list[str]
    pairs: list
    shells: list[float]
    labels: str


def _plan(where: str, stem: str, source: str, target: str, acq: str | None,
          subjects: list[str], pairs: list, study, skipped: list[str],
          labels: str) -> Plan | None:  # fmt: skip
    """A :class:`Plan`, or None with the reason appended to ``skipped``."""
    if len(subjects) < MIN_SUBJECTS:
        skipped.append(f"{where}: {len(subjects)} subject(s) with the sessions it needs; the "
                       f"DKI CNN needs at least {MIN_SUBJECTS} (one to train on, one held "
                       "out)")  # fmt: skip
        return None
    shells = common_shells(study, [r for p in pairs for r in (p.source, p.target)])
    if len(shells) < 2:
        skipped.append(f"{where}: shells {shells} in common; DKI needs two non-zero shells in "
                       "every session")  # fmt: skip
        return None
    return Plan(stem, source, target, acq, subjects, pairs, shells, labels)


def plan_networks(study, target: str, sources: list[str]) -> tuple[list[Plan], list[str]]:
    """One network per source site and ``acq`` (traveling subjects: each source session
    against the subject's first reference session), and one for the reference site itself
    (rescans: each reference session against the subject's next one), per ``acq`` that has a
    source network: the paper passes the reference scans through a network too, so every
    map is made the same way."""
    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.interfaces.dki_cnn import TrainingPair
    from bids_harmony.methods.catalog import model_stem

    plans, skipped = [], []
    for source in sources:
        for sel in select_traveling(study, source, target):
            where = f"{source} -> {target}" + (f" acq-{sel.acq}" if sel.acq else "")
            pairs = [TrainingPair(s, run, sel.sessions[s][target][0])
                     for s in sel.subjects for run in sel.sessions[s][source]]  # fmt: skip
            plan = _plan(where, model_stem(source, target, method="dkicnn", acq=sel.acq),
                         source, target, sel.acq, sel.subjects, pairs, study, skipped,
                         TRAVELING_LABELS)  # fmt: skip
            plans += [plan] if plan else []
    rescans: dict[str | None, dict[str, list]] = {}
    for run in study.runs:
        if not run.is_phantom and run.site == target:
            rescans.setdefault(run.entities.get("acquisition"), {}).setdefault(
                run.subject, []).append(run)  # fmt: skip
    for acq in sorted({p.acq for p in plans}, key=str):
        runs = {s: sorted(r, key=lambda x: str(x.session)) for s, r in rescans.get(acq, {}).items()
                if len({x.session for x in r}) >= 2}  # fmt: skip
        pairs = [TrainingPair(s, r[i], r[(i + 1) % len(r)]) for s, r in sorted(runs.items())
                 for i in range(len(r))]  # fmt: skip
        where = f"{target} rescans" + (f" acq-{acq}" if acq else "")
        plan = _plan(where, model_stem(target, target, method="dkicnn", acq=acq), target,
                     target, acq, sorted(runs), pairs, study, skipped, RESCAN_LABELS)  # fmt: skip
        plans += [plan] if plan else []
    return plans, skipped


TRAVELING_LABELS = ("reference-site DKI fit (participant level), registered to each source "
                    "session with ANTs SyN of the FA maps")  # fmt: skip
RESCAN_LABELS = ("the DKI fit of the subject's other reference-site session (rescan), "
                 "registered with ANTs SyN of the FA maps")  # fmt: skip


@releases_locks
def run_train_dki(config: Config) -> int:
    """Train and save the DKI CNNs of :func:`plan_networks`; the exit code."""
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.dki_cnn import TrainDkiCnn, held_out_subjects
    from bids_harmony.methods.catalog import MODELS_DIR
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.run import resolve_device
    from bids_harmony.workflows.train import training_sites, write_description

    study, target, sources = training_sites(config)
    device = resolve_device(config.device)
    plans, skipped = plan_networks(study, target, sources)
    for line in skipped:
        LOGGER.warning("%s.", line)
    if not any(p.source != p.target for p in plans):
        raise NoDataError(
            "no DKI CNN can be trained: "
            + "; ".join(
                skipped or [f"no traveling subject has sessions at a source site and at {target}"]
            )
            + "."
        )
    workflow, log_dir = level_workflow(config, "bids_harmony_train_dki_wf")
    for plan in plans:
        held = held_out_subjects(plan.subjects)
        workflow.add_nodes([pe.Node(TrainDkiCnn(
            pairs=plan.pairs, held_out=held, output_dir=str(config.output_dir),
            models_dir=str(config.output_dir / MODELS_DIR), stem=plan.stem, shells=plan.shells,
            seed=config.seed, device=device, max_minutes=config.dki_max_minutes,
            card={"source_site": plan.source, "target_site": plan.target, "acq": plan.acq,
                  "training_subjects": [f"sub-{s}" for s in plan.subjects if s not in held],
                  "held_out_subjects": [f"sub-{s}" for s in held], "seed": config.seed,
                  "labels": plan.labels},
        ), name=_name("train", plan.source, plan.target, plan.acq),
            run_without_submitting=True)])  # fmt: skip
        LOGGER.info(
            "%s: %d pair(s) of %d subject(s), %s held out; shells %s",
            plan.stem,
            len(plan.pairs),
            len(plan.subjects),
            ", ".join(held),
            plan.shells,
        )
    hold_locks(config, level_keys(config, study))
    write_description(config)
    run_steps(workflow, config, log_dir, len(plans), STEPS)
    from bids_harmony.methods.registry import get_method
    from bids_harmony.workflows.references import software_versions, write_level_citation

    text = get_method("dki-cnn").description.rstrip(".")
    write_level_citation(config.output_dir, "train", [f"{text} [@dki-cnn]."],
                         software_versions("antspyx"))  # fmt: skip
    for plan in plans:
        LOGGER.info("Saved %s", config.output_dir / MODELS_DIR / f"{plan.stem}.safetensors")
    return 0
