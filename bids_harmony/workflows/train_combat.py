"""``train --method combat``: ComBat models of parameter maps from a cohort.

Every human session of every site (one model per raw ``acq`` protocol) is used:
a study FA template is built from the target-site sessions (or ``--template``),
every session's FA is registered to it and its FA, MD and GFA maps of every shell
(and its 8 DKI maps when every session has them) warped there (one node per
session, in parallel), and
:class:`~bids_harmony.interfaces.combat.FitCombatModel` fits the model with the
covariates of ``--combat-covariates`` (from ``participants.tsv`` /
``sessions.tsv``) kept and ``--target-site`` as the reference site, whose data
ComBat leaves unchanged.  The participant level applies the model to sessions of
the fitted sites (e.g. patients, when the model was fitted on controls).

Everything that can be checked before the long steps is: the covariates of every
session, two sites with two sessions each, a covariate confounded with site, the
variant's own needs (a dry fit on a 3-feature table).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bids_harmony.config import Config
from bids_harmony.errors import MissingOutputError, NoDataError
from bids_harmony.interfaces.combat import CohortSession, CombatOptions
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

LOGGER = logging.getLogger(__name__)
#: Steps counted in the progress lines: node-name word -> verb.
COMBAT_STEPS = {"register": "registered", "warp": "warped", "fit": "fitted"}


def _name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


def space_label(config: Config) -> str:
    """The ``space-`` label of the template-space outputs."""
    if config.template is None:
        return "studyFA"
    name = Path(str(config.template)).name.split(".")[0].split(":")[0]
    return re.sub(r"[^A-Za-z0-9]", "", name) or "template"


def combat_options(config: Config, target: str) -> CombatOptions:
    """The ComBat settings of ``config`` (``--combat-*``), with the target as reference."""
    return CombatOptions(
        variant=config.combat_variant,
        eb=config.combat_eb,
        mean_only=config.combat_mean_only,
        smooth=config.combat_smooth,
        categorical=config.combat_categorical,
        covariates=config.combat_covariates,
        ref_site=target,
    )


def cohort_sessions(config: Config, runs: Sequence) -> list[CohortSession]:
    """The runs as :class:`CohortSession` with their covariates (errors name the files)."""
    from bids_harmony.bids.covariates import read_covariates

    names = config.combat_covariates
    values = read_covariates(config.bids_dir, [(r.subject, r.session) for r in runs], names)
    return [
        CohortSession(key=r.prefix, subject=r.subject, site=r.site,
                      label=f"sub-{r.subject}" + (f" ses-{r.session}" if r.session else ""),
                      covariates={n: values[n][i] for n in names})
        for i, r in enumerate(runs)
    ]  # fmt: skip


def dry_fit(options: CombatOptions, sessions: Sequence[CohortSession], seed: int) -> None:
    """Fit the variant on a random 3-feature table: every check of the real fit, at once."""
    from bids_harmony.interfaces.combat import fit_function

    data = np.random.default_rng(seed).normal(size=(len(sessions), 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_function(options, sessions)(data)
    for message in dict.fromkeys(str(w.message) for w in caught):
        LOGGER.warning("%s", message)


def _protocols(study, target: str) -> dict[str | None, list]:
    """Human runs per raw ``acq`` protocol."""
    by_acq: dict[str | None, list] = {}
    for run in study.runs:
        if not run.is_phantom:
            by_acq.setdefault(run.entities.get("acquisition"), []).append(run)
    if not by_acq:
        raise NoDataError("ComBat is fitted on human sessions; the data has none.")
    return by_acq


def _scenario(config: Config, runs: list, target: str, stem: str):
    """The sessions' maps as a group-level :class:`Scenario` (target sessions last)."""
    from bids_harmony.bids.group_inputs import run_shells
    from bids_harmony.interfaces.group_level import SessionMaps
    from bids_harmony.workflows.group import Scenario, resolve_template

    shells = {r.prefix: {m.label: m for m in run_shells(config.output_dir, r)} for r in runs}
    empty = [r.prefix for r in runs if not shells[r.prefix]]
    if empty:
        raise MissingOutputError(
            f"no participant outputs (SH, FA, MD and GFA maps; ComBat harmonizes FA, MD and "
            f"GFA, so not with --no-gfa) in {config.output_dir} for "
            f"{len(empty)} run(s): {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; "
            f"run: bids-harmony {config.bids_dir} {config.output_dir} participant"
        )
    labels = sorted(set.intersection(*(set(s) for s in shells.values())),
                    key=lambda label: float(label[1:]))  # fmt: skip
    if not labels:
        raise NoDataError(f"{stem}: no shell was fitted in every run; ComBat needs the same "
                          "maps in every session.")  # fmt: skip
    ref = min(labels, key=lambda s: abs(float(s[1:]) - 1000.0))

    def session(run) -> SessionMaps:
        maps = shells[run.prefix]
        return SessionMaps(key=run.prefix, subject=run.subject,
                           label=f"sub-{run.subject}" + (f" ses-{run.session}" if run.session
                                                         else ""),
                           mask=maps[ref].outputs.mask(required=True), shells=maps)  # fmt: skip

    template = resolve_template(config.template) if config.template is not None else None
    source = [session(r) for r in runs if r.site != target]
    target_maps = [session(r) for r in runs if r.site == target]
    return Scenario(None, source, target_maps, labels, ref, stem, template=template)  # type: ignore[arg-type]


@releases_locks
def run_train_combat(config: Config) -> int:
    """Fit and save one ComBat model per protocol; the exit code."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.combat import FitCombatModel
    from bids_harmony.interfaces.group_level import WarpMaps
    from bids_harmony.methods.catalog import MODELS_DIR
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.group import common_space_wf
    from bids_harmony.workflows.train import training_sites, write_description

    study, target, _ = training_sites(config)
    options = combat_options(config, target)
    if config.combat_atlas is not None:
        from bids_harmony.interfaces.combat import check_atlas

        check_atlas(config.combat_atlas)
    workflow, log_dir = level_workflow(config, "bids_harmony_train_combat_wf")
    n_steps, planned, with_dki = 0, [], False
    for acq, runs in sorted(_protocols(study, target).items(), key=lambda kv: str(kv[0])):
        stem = f"combat_tgt-{target}" + (f"_acq-{acq}" if acq else "")
        if target not in {r.site for r in runs}:
            LOGGER.warning("%s: no %s session of this protocol; no ComBat model.", stem, target)
            continue
        scen = _scenario(config, runs, target, stem)
        order = {r.prefix: r for r in runs}
        sessions = cohort_sessions(config, [order[s.key] for s in scen.sessions])
        LOGGER.info("%s: %d session(s) (%s); covariates: %s; variant %s", stem,
                    len(sessions), ", ".join(f"{k}: {v}" for k, v in _counts(sessions).items()),
                    ", ".join(options.covariates) or "none", options.variant)  # fmt: skip
        dry_fit(options, sessions, config.seed)
        sub = pe.Workflow(name=_name("combat", acq or "all"))
        space, transforms = common_space_wf(sub, config, scen)
        dki = _with_dki(scen.sessions, stem)
        with_dki = with_dki or dki
        warped = pe.Node(niu.Merge(len(scen.sessions)), name="warped")
        for k, session in enumerate(scen.sessions):
            select = pe.Node(niu.Select(index=[k]), name=_name("transform", session.key))
            warp = pe.Node(WarpMaps(session=session, labels=scen.labels, methods=[], dki=dki),
                           name=_name("warp", session.key))  # fmt: skip
            sub.connect([(transforms, select, [("out", "inlist")]),
                         (select, warp, [("out", "transform")]),
                         (space, warp, [("template", "template_file")]),
                         (warp, warped, [("out_file", f"in{k + 1}")])])  # fmt: skip
        card = {
            "target_site": target, "sites": sorted({s.site for s in sessions}), "acq": acq,
            "shells": scen.labels, "space": space_label(config), "seed": config.seed,
            "template": str(config.template) if config.template else
            f"study FA template of the {target} sessions",
            "regions": str(config.combat_atlas.name) if config.combat_atlas else
            "WM/GM of the cohort's mean maps cut by a 3x3x3 grid",
            "registration": f"ANTs {config.group_transform} of each session's FA "
            f"(shell {scen.ref})",
            "covariates": {name: "numeric" if all(isinstance(s.covariates[name], float)
                                                  for s in sessions) else "categorical"
                           for name in options.covariates},
        }  # fmt: skip
        fit = pe.Node(FitCombatModel(sessions=sessions, labels=scen.labels, ref=scen.ref,
                                     options=options, models_dir=str(config.output_dir
                                                                     / MODELS_DIR),
                                     stem=stem, card=card,
                                     atlas_file=str(config.combat_atlas or "")),
                      name="fit_combat", run_without_submitting=True)  # fmt: skip
        sub.connect([(warped, fit, [("out", "warped")]),
                     (space, fit, [("template", "template_file")])])  # fmt: skip
        workflow.add_nodes([sub])
        n_steps += 2 * len(scen.sessions) + 1
        planned.append(stem)
    if not planned:
        raise NoDataError(f"no protocol has human sessions at the target site {target}.")
    hold_locks(config, level_keys(config, study))
    write_description(config)
    run_steps(workflow, config, log_dir, n_steps, COMBAT_STEPS)
    from bids_harmony.workflows.boilerplate import combat_train_paragraph
    from bids_harmony.workflows.references import software_versions, write_level_citation

    paragraph = combat_train_paragraph(
        target=target, sites=study.sites, covariates=options.covariates,
        n_sessions=sum(not r.is_phantom for r in study.runs), variant=options.variant,
        eb=options.eb, dki=with_dki,
    )  # fmt: skip
    write_level_citation(config.output_dir, "train", [paragraph], software_versions("antspyx"))
    for stem in planned:
        LOGGER.info("Saved %s", config.output_dir / MODELS_DIR / f"{stem}.safetensors")
    return 0


def _with_dki(sessions: Sequence, stem: str) -> bool:
    """Whether every session has its 8 DKI maps (then ComBat harmonizes them too)."""
    from bids_harmony.interfaces.combat_dki import has_dki_maps

    has = [has_dki_maps(next(iter(s.shells.values())).outputs) for s in sessions]
    if any(has) and not all(has):
        LOGGER.info("%s: %d of %d sessions have no DKI maps; ComBat leaves the DKI maps out.",
                    stem, has.count(False), len(has))  # fmt: skip
    return all(has)


def _counts(sessions: Sequence[CohortSession]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in sessions:
        counts[s.site] = counts.get(s.site, 0) + 1
    return dict(sorted(counts.items()))
