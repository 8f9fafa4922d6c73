"""``train --method dki-cnn``: one DKI CNN per source site from traveling subjects.

For every source site → target (reference) site and raw ``acq`` protocol, the traveling
subjects (:func:`~bids_harmony.bids.group_inputs.select_traveling`) give one training
pair per source session: its inputs, and the reference session's DKI maps registered
to it.  Each pair is registered in its own node
(:class:`~bids_harmony.interfaces.dki_cnn.RegisterDkiLabels`, in parallel with
``--nprocs``), then :class:`~bids_harmony.interfaces.dki_cnn.TrainDkiCnn` trains on the
pairs that registered.  The last quarter of the subjects (at least one) is held out for
early stopping.  The network trains in this process (torch's thread pool does not
survive a fork), on ``--device``.

Everything that can be checked before the long steps is (:func:`plan_networks`,
:func:`check_participant_outputs`), before anything is written: enough traveling
subjects, two non-zero shells in every session, shells in common between the sites
(within ``--b-tolerance``), and the participant level's SH and DKI maps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_harmony.config import Config
from bids_harmony.dmri.gradients import B_TOLERANCE
from bids_harmony.errors import MissingOutputError, NoDataError
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

LOGGER = logging.getLogger(__name__)
STEPS = {"register": "registered", "train": "trained"}
#: Traveling subjects needed: one to train on, one held out.
MIN_SUBJECTS = 2
#: Non-zero shells the DKI fit (and the network's inputs) need.
MIN_SHELLS = 2
#: Runs named in one message before "..." (the count is given).
LISTED = 5


def _name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


def _bvals(shells: Iterable[float]) -> str:
    return ", ".join(f"{b:g}" for b in shells) or "none"


def _listed(names: Sequence[str]) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _near(bval: float, shells: Iterable[float], b_tolerance: float) -> bool:
    return any(abs(bval - b) <= b_tolerance for b in shells)


def _unique(runs: Iterable) -> list:
    """The runs in order, each once."""
    return list({r.prefix: r for r in runs}.values())


def common_shells(study, runs, b_tolerance: float = B_TOLERANCE) -> list[float]:
    """The non-zero shells (nominal b-values of the first run) every run has, within
    ``b_tolerance``."""
    runs = list(runs)
    if not runs:
        return []
    return [b for b in sorted(runs[0].shells)
            if all(_near(b, r.shells, b_tolerance) for r in runs[1:])]  # fmt: skip


def site_shells(runs: Sequence) -> str:
    """``GE sessions have b=1000, 2000; Prisma sessions have b=1000, 3000`` (runs of a
    site with different shells are named)."""
    by_site: dict[str, dict[tuple[float, ...], list[str]]] = {}
    for run in _unique(runs):
        by_site.setdefault(run.site, {}).setdefault(tuple(sorted(run.shells)), []).append(
            run.prefix
        )
    parts = []
    for site, sets in by_site.items():
        if len(sets) == 1:
            parts.append(f"{site} sessions have b={_bvals(next(iter(sets)))}")
        else:
            parts.append(f"{site} sessions have " + " or ".join(
                f"b={_bvals(s)} ({_listed(names)})" for s, names in sets.items()))  # fmt: skip
    return "; ".join(parts)


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

    @property
    def registration_shell(self) -> float:
        """The shell whose FA maps are registered (the one nearest b=1000)."""
        return min(self.shells, key=lambda b: abs(b - 1000.0))


def _plan(where: str, stem: str, source: str, target: str, acq: str | None,
          subjects: list[str], pairs: list, skipped: list[str], labels: str, *,
          b_tolerance: float = B_TOLERANCE, left: Sequence[str] = ()) -> Plan | None:  # fmt: skip
    """A :class:`Plan`, or None with the reason appended to ``skipped``."""
    if len(subjects) < MIN_SUBJECTS:
        named = f" ({', '.join(f'sub-{s}' for s in subjects)})" if subjects else ""
        why = f"; left out: {'; '.join(left[:LISTED])}" if left else ""
        more = f" ... ({len(left)} in all)" if len(left) > LISTED else ""
        skipped.append(f"{where}: {len(subjects)} subject(s){named} with the sessions it needs; "
                       f"the DKI CNN needs at least {MIN_SUBJECTS} (one to train on, one held "
                       f"out){why}{more}")  # fmt: skip
        return None
    runs = _unique(r for p in pairs for r in (p.source, p.target))
    single = [r for r in runs if len(r.shells) < MIN_SHELLS]
    if single:
        skipped.append(f"{where}: DKI needs two non-zero shells in every session, and the DKI "
                       "CNN needs them in one multi-shell run (its inputs are a run's per-shell "
                       "SH maps; shells acquired as separate runs, combined for the DKI fit, are "
                       "not supported); " + _listed([f"{r.prefix} has b={_bvals(r.shells)} only"
                                                   for r in single]))  # fmt: skip
        return None
    shells = common_shells(None, runs, b_tolerance)
    tolerance = f"tolerance {b_tolerance:g} s/mm²"
    if len(shells) < MIN_SHELLS:
        skipped.append(f"{where}: {site_shells(runs)}: only {len(shells)} shell(s) in common "
                       f"({tolerance}); DKI needs two non-zero shells in common")  # fmt: skip
        return None
    dropped: dict[str, list[float]] = {}
    for run in runs:
        for b in run.shells:
            if not _near(b, shells, b_tolerance) and b not in dropped.get(run.site, []):
                dropped.setdefault(run.site, []).append(b)
    if dropped:
        LOGGER.warning("%s: %s: training on the %d shells in common (b=%s, %s); left out: %s.",
                       where, site_shells(runs), len(shells), _bvals(shells), tolerance,
                       "; ".join(f"{site} b={_bvals(sorted(b))}"
                                 for site, b in dropped.items()))  # fmt: skip
    return Plan(stem, source, target, acq, subjects, pairs, shells, labels)


def plan_networks(study, target: str, sources: list[str], *,
                  b_tolerance: float = B_TOLERANCE) -> tuple[list[Plan], list[str]]:  # fmt: skip
    """One network per source site and ``acq`` (traveling subjects: each source session
    against the subject's first reference session), and one for the reference site itself
    (rescans: each reference session against the subject's next one), per ``acq`` that has a
    source network: the paper passes the reference scans through a network too, so every
    map is made the same way.  Networks that cannot be trained are left out, the reason
    in the second list (subjects, shells; nothing is read but the study's index)."""
    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.interfaces.dki_cnn import TrainingPair
    from bids_harmony.methods.catalog import model_stem

    plans, skipped = [], []
    for source in sources:
        selections = select_traveling(study, source, target)
        if not selections:
            skipped.append(f"{source} -> {target}: no human session at either site")
        for sel in selections:
            where = f"{source} -> {target}" + (f" acq-{sel.acq}" if sel.acq else "")
            pairs = [TrainingPair(s, run, sel.sessions[s][target][0])
                     for s in sel.subjects for run in sel.sessions[s][source]]  # fmt: skip
            plan = _plan(where, model_stem(source, target, method="dkicnn", acq=sel.acq),
                         source, target, sel.acq, sel.subjects, pairs, skipped,
                         TRAVELING_LABELS, b_tolerance=b_tolerance,
                         left=sel.skipped)  # fmt: skip
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
        left = [f"sub-{s}: 1 session at {target}" for s in sorted(rescans.get(acq, {}))
                if s not in runs]  # fmt: skip
        plan = _plan(where, model_stem(target, target, method="dkicnn", acq=acq), target,
                     target, acq, sorted(runs), pairs, skipped, RESCAN_LABELS,
                     b_tolerance=b_tolerance, left=left)  # fmt: skip
        plans += [plan] if plan else []
    return plans, skipped


def _shell_map(outputs, run, bval: float, kind: str, b_tolerance: float) -> Path | None:
    """A run's per-shell map of the shell within ``b_tolerance`` of ``bval``, or None."""
    from bids_harmony.dmri.gradients import nearest_shell

    shell = nearest_shell(run.shells, bval, b_tolerance)
    return None if shell is None else outputs.shell_map(shell, kind)


def check_participant_outputs(config: Config, plans: Sequence[Plan]) -> None:
    """Every participant output the plans read is there, or one MissingOutputError that
    lists the runs (before any network is trained or anything is written): the inputs'
    preprocessed DWI, mask and SH maps of the plan's shells; the FA maps registered; the
    reference sessions' DKI maps (the labels)."""
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.methods.dki_cnn import MAP_NAMES

    tol, params = config.b_tolerance, [m.lower() for m in MAP_NAMES]
    no_inputs: dict[str, list[float]] = {}
    no_fa: dict[str, float] = {}
    no_dki: list[str] = []
    for plan in plans:
        for run in _unique(p.source for p in plan.pairs):
            outputs = RunOutputs.of_run(config.output_dir, run)
            missing = [b for b in plan.shells if _shell_map(outputs, run, b, "sh", tol) is None]
            if missing or outputs.preproc() is None or outputs.mask() is None:
                no_inputs.setdefault(run.prefix, missing)
        for run in _unique(r for p in plan.pairs for r in (p.source, p.target)):
            outputs = RunOutputs.of_run(config.output_dir, run)
            if _shell_map(outputs, run, plan.registration_shell, "fa", tol) is None:
                no_fa.setdefault(run.prefix, plan.registration_shell)
        for run in _unique(p.target for p in plan.pairs):
            maps = RunOutputs.of_run(config.output_dir, run).dki_maps()
            if any(p not in maps for p in params) and run.prefix not in no_dki:
                no_dki.append(run.prefix)
    problems = []
    if no_inputs:
        problems.append(f"{len(no_inputs)} run(s) lack the network's inputs (preprocessed DWI, "
                        "mask, SH maps of every shell in common): " + _listed(
                            [f"{k}" + (f" (no SH maps of b={_bvals(v)})" if v else "")
                             for k, v in no_inputs.items()]))  # fmt: skip
    if no_fa:
        shells = _bvals(sorted(set(no_fa.values())))
        problems.append(f"{len(no_fa)} run(s) lack the FA map registered (b={shells}): "
                        + _listed(list(no_fa)))  # fmt: skip
    if no_dki:
        problems.append(f"{len(no_dki)} reference-site run(s) have no DKI maps (model-dki; the "
                        "reference scanner's DKI maps are the labels): " + _listed(no_dki))
    if problems:
        raise MissingOutputError(
            f"the DKI CNN cannot be trained from the participant outputs in {config.output_dir}: "
            + "; ".join(problems) + "; run the participant level (without --no-dki) on "
            f"these sessions first: bids-harmony {config.bids_dir} {config.output_dir} "
            "participant"
        )


TRAVELING_LABELS = ("reference-site DKI fit (participant level), registered to each source "
                    "session with ANTs SyN of the FA maps")  # fmt: skip
RESCAN_LABELS = ("the DKI fit of the subject's other reference-site session (rescan), "
                 "registered with ANTs SyN of the FA maps")  # fmt: skip


def label_files(output_dir: Path, pair, shell: float, b_tolerance: float) -> list[str]:
    """The files a pair's registration reads (node inputs: a rerun after the participant
    level rewrote them registers again)."""
    from bids_harmony.bids.reader import RunOutputs

    files = []
    for run in (pair.source, pair.target):
        outputs = RunOutputs.of_run(output_dir, run)
        files.append(str(_shell_map(outputs, run, shell, "fa", b_tolerance)))
    files += [str(p) for _, p in sorted(RunOutputs.of_run(output_dir, pair.target)
                                        .dki_maps().items())]  # fmt: skip
    return files


def _plan_workflow(config: Config, plan: Plan, held: list[str], device: str):
    """Register every pair (a node each), then train (:class:`TrainDkiCnn`)."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.dki_cnn import RegisterDkiLabels, TrainDkiCnn
    from bids_harmony.methods.catalog import MODELS_DIR

    sub = pe.Workflow(name=_name("dkicnn", plan.source, plan.target, plan.acq))
    labels = pe.Node(niu.Merge(len(plan.pairs)), name="labels")
    failures = pe.Node(niu.Merge(len(plan.pairs)), name="failures")
    for k, pair in enumerate(plan.pairs):
        register = pe.Node(RegisterDkiLabels(
            pair=pair, output_dir=str(config.output_dir), shell=plan.registration_shell,
            b_tolerance=config.b_tolerance, seed=config.seed, stem=plan.stem,
            in_files=label_files(config.output_dir, pair, plan.registration_shell,
                                 config.b_tolerance),
        ), name=_name("register", pair.source.prefix))  # fmt: skip
        sub.connect([(register, labels, [("labels_file", f"in{k + 1}")]),
                     (register, failures, [("failure", f"in{k + 1}")])])  # fmt: skip
    train = pe.Node(TrainDkiCnn(
        pairs=plan.pairs, held_out=held, output_dir=str(config.output_dir),
        models_dir=str(config.output_dir / MODELS_DIR), stem=plan.stem, shells=plan.shells,
        b_tolerance=config.b_tolerance, seed=config.seed, device=device,
        max_minutes=config.dki_max_minutes, max_epochs=config.dki_max_epochs or 0,
        card={"source_site": plan.source, "target_site": plan.target, "acq": plan.acq,
              "training_subjects": [f"sub-{s}" for s in plan.subjects if s not in held],
              "held_out_subjects": [f"sub-{s}" for s in held], "seed": config.seed,
              "labels": plan.labels},
    ), name="train", run_without_submitting=True)  # fmt: skip
    sub.connect([(labels, train, [("out", "labels_files")]),
                 (failures, train, [("out", "failures")])])  # fmt: skip
    return sub


@releases_locks
def run_train_dki(config: Config) -> int:
    """Train and save the DKI CNNs of :func:`plan_networks`; the exit code."""
    from bids_harmony.interfaces.dki_cnn import held_out_subjects
    from bids_harmony.methods.catalog import MODELS_DIR
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.run import resolve_device
    from bids_harmony.workflows.train import training_sites, write_description

    study, target, sources = training_sites(config)
    plans, skipped = plan_networks(study, target, sources, b_tolerance=config.b_tolerance)
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
    check_participant_outputs(config, plans)
    device = resolve_device(config.device)
    workflow, log_dir = level_workflow(config, "bids_harmony_train_dki_wf")
    for plan in plans:
        held = held_out_subjects(plan.subjects)
        workflow.add_nodes([_plan_workflow(config, plan, held, device)])
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
    run_steps(workflow, config, log_dir, sum(len(p.pairs) + 1 for p in plans), STEPS)
    from bids_harmony.methods.registry import get_method
    from bids_harmony.workflows.references import software_versions, write_level_citation

    text = get_method("dki-cnn").description.rstrip(".")
    write_level_citation(config.output_dir, "train", [f"{text} [@dki-cnn]."],
                         software_versions("antspyx"))  # fmt: skip
    for plan in plans:
        LOGGER.info("Saved %s", config.output_dir / MODELS_DIR / f"{plan.stem}.safetensors")
    return 0
