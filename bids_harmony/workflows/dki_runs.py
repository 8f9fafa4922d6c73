"""Participant level: which runs get DKI, and the nodes of the combined single-shell fit.

:func:`dki_plan` decides (:func:`bids_harmony.bids.dki_runs.plan_dki`) and says in
the log what happens to every run that cannot be fitted alone;
:func:`connect_combined_dki` adds the combined fit of one group of runs
(:class:`~bids_harmony.interfaces.dki_runs.FitCombinedDKI` then
:class:`~bids_harmony.interfaces.dki.DkiSink`) to the workflow of the group's
first run, after the participant sinks of every run of the group.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_harmony.bids.dki_runs import DkiPlan, DkiRunGroup, plan_dki

LOGGER = logging.getLogger(__name__)
#: Combinations named one line each; more get one summary line.
LISTED_GROUPS = 4

#: The methods paragraph of a combined fit (after the DKI paragraph).
COMBINED_DESC = (
    "Single-shell runs of one session that differed only in their acquisition label "
    "(each shell acquired as its own series) were combined for DKI: each run's "
    "diffusion-weighted volumes were divided by its own mean b = 0 image, the other runs "
    "were rigidly registered to the lowest-b run on their mean b = 0 images (ANTs "
    "[@syn], Mattes mutual information), their normalised volumes resampled trilinearly "
    "onto its grid and their gradient directions rotated accordingly; diffusion and "
    "kurtosis tensors [@dki] were fitted to the concatenated normalised signal by weighted "
    "linear least squares [@dkiwls] (DIPY), giving MD, AD, RD, FA, MK, AK, RK (analytical "
    "formulas [@tabesh]) and kurtosis FA, clipped to physical ranges."
)


def dki_plan(runs: Any, *, b_tolerance: float, b0_threshold: float) -> DkiPlan:
    """:func:`~bids_harmony.bids.dki_runs.plan_dki`, and the log lines that explain it.

    Every combination gets one INFO line naming its runs (more than
    :data:`LISTED_GROUPS`: one line for all).  Single-shell runs
    that are not combined get one INFO line saying why (a summary when there
    are several); a multi-shell run whose directions cannot hold the fit, a
    WARNING each (unexpected).
    """
    plan = plan_dki(runs, b_tolerance=b_tolerance, b0_threshold=b0_threshold)
    for support in plan.unfit.values():
        LOGGER.warning("%s No DKI maps for it.", support.reason)
    if len(plan.groups) > LISTED_GROUPS:
        group = plan.groups[0]
        LOGGER.info(
            "DKI needs two non-zero shells: in %d sessions single-shell runs that differ only "
            "in acq are combined (aligned on their b0s, each normalised by its own b0), e.g. "
            "%s; the DKI maps are named after the lowest-b run (%s).",
            len(plan.groups), group.names(), group.first.prefix,
        )  # fmt: skip
    for group in plan.groups if len(plan.groups) <= LISTED_GROUPS else ():
        LOGGER.info(
            "DKI needs two non-zero shells: the single-shell runs %s differ only in acq and "
            "are combined (aligned on their b0s, each normalised by its own b0); their DKI "
            "maps are named after %s.", group.names(), group.first.prefix,
        )  # fmt: skip
    if not plan.notes:
        return plan
    by_path = {run.dwi: run for run in runs}
    by_reason: dict[str, list[str]] = {}
    for dwi, why in plan.notes.items():
        by_reason.setdefault(why, []).append(by_path[dwi].prefix)
    if len(plan.notes) == 1:
        ((dwi, why),) = plan.notes.items()
        shells = by_path[dwi].shells
        have = f"one (b={shells[0]:g})" if shells else "none"
        LOGGER.info("DKI needs two non-zero shells; %s has %s. It is not combined with "
                    "another run: %s. No DKI maps for it.", by_path[dwi].prefix, have,
                    why)  # fmt: skip
        return plan
    reasons = "; ".join(
        f"{len(names)} runs (e.g. {names[0]}): {why}" if len(names) > 1 else f"{names[0]}: {why}"
        for why, names in sorted(by_reason.items(), key=lambda item: -len(item[1]))
    )
    LOGGER.info("DKI needs two non-zero shells; %d single-shell runs are not combined with "
                "another run and get no DKI maps: %s.", len(plan.notes), reasons)  # fmt: skip
    return plan


def group_specs(group: DkiRunGroup, bids_dir: Path) -> list[dict[str, Any]]:
    """The ``runs`` input of :class:`~bids_harmony.interfaces.dki_runs.FitCombinedDKI`."""
    from bids_harmony.bids.derivatives import raw_entities

    out = []
    for run in group.runs:
        try:
            source = Path(run.dwi).relative_to(bids_dir).as_posix()
        except ValueError:
            source = str(run.dwi)
        out.append({"entities": raw_entities(run.entities),
                    "shells": [float(b) for b in run.shells], "source": source})  # fmt: skip
    return out


def connect_combined_dki(
    workflow: pe.Workflow,
    run_wfs: dict[Path, pe.Workflow],
    group: DkiRunGroup,
    *,
    bids_dir: Path,
    output_dir: str,
    run_info: dict[str, Any],
    params: dict[str, Any],
    b_tolerance: float,
    b0_threshold: float,
    n_procs: int,
    seed: int,
    mem_gb: float,
) -> None:
    """Add the combined DKI fit of ``group`` to its first run's workflow.

    The nodes (``dki_runs_written``, ``fit_dki_runs``, ``ds_dki_runs``) live in
    the first run's workflow (the progress lines count them with that run); the
    other runs' ``outputnode.out_files`` are connected to them from ``workflow``,
    the top-level workflow holding every run's.

    Parameters
    ----------
    run_wfs : dict of Path to Workflow
        Run workflow (:func:`~bids_harmony.workflows.participant.init_dwi_run_wf`)
        per raw ``dwi`` path, already added to ``workflow``.
    run_info : dict
        The first run's (its names, entities and site go in the sidecars).
    mem_gb : float
        Memory of one run (the fit holds every run's volumes).
    """
    from bids_harmony.interfaces.dki import DkiSink
    from bids_harmony.interfaces.dki_runs import FitCombinedDKI

    first = run_wfs[group.first.dwi]
    first.__postdesc__ = (getattr(first, "__postdesc__", "") or "") + "\n\n" + COMBINED_DESC
    written = pe.Node(niu.Merge(len(group.runs)), name="dki_runs_written",
                      run_without_submitting=True)  # fmt: skip
    fit = pe.Node(
        FitCombinedDKI(
            output_dir=output_dir, runs=group_specs(group, bids_dir),
            run_name=" + ".join(r.prefix for r in group.runs), b_tolerance=b_tolerance,
            b0_threshold=b0_threshold, n_procs=n_procs, seed=seed,
        ),
        name="fit_dki_runs", mem_gb=mem_gb * (len(group.runs) + 1), n_procs=n_procs,
    )  # fmt: skip
    sink = pe.Node(DkiSink(output_dir=output_dir, run_info=run_info, params=params),
                   name="ds_dki_runs", run_without_submitting=True)  # fmt: skip
    first.connect([
        (first.get_node("ds_participant"), written, [("out_files", "in1")]),
        (written, fit, [("out", "written")]),
        (fit, sink, [("out_json", "dki_json")]),
        (written, sink, [("out", "written")]),
    ])  # fmt: skip
    for i, run in enumerate(group.runs[1:], start=2):
        workflow.connect(run_wfs[run.dwi], "outputnode.out_files", first, f"dki_runs_written.in{i}")
