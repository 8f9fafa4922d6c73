"""The ``group`` level: scan-rescan vs inter-scanner variability, per harmonization method.

For every source site → target site and raw ``acq`` (a *scenario*): select the
traveling subjects (:mod:`bids_harmony.bids.group_inputs`) and build one Nipype
workflow (:func:`init_scenario_wf`): a study FA template from the target-site
sessions (or ``--template``), one node per session registering its FA to it,
LinearRISH fitted in template space and applied per source session (unless a
trained ``rish`` model already wrote ``desc-rish`` outputs), FA/MD/GFA of the raw
and harmonized data (every evaluated method with outputs:
:data:`bids_harmony.evaluation.evaluated.EVALUATED_METHODS`) warped to the
template per session, CSD fibre directions per source session (HARP), and the
standard-error maps, tables and t-tests per scenario
(:mod:`bids_harmony.interfaces.group_level`); when the sessions have DKI maps,
their inter-scanner CV and NRMSEs before/after the DKI CNN
(:mod:`bids_harmony.workflows.group_dki`).  Sessions run in parallel
with ``--nprocs`` (or on a cluster with ``--use-plugin``); a rerun with the same
``--work-dir`` reuses finished nodes.  The figures, tables and the
self-contained ``OUT/group/report.html`` are written last, in this process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bids_harmony.bids.discovery import Study
from bids_harmony.bids.group_inputs import Selection
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, InputDatasetError, NoDataError
from bids_harmony.evaluation.evaluated import METHODS, by_name
from bids_harmony.evaluation.scenario import ScenarioResult
from bids_harmony.evaluation.wording import scenario_title
from bids_harmony.interfaces.group_level import SessionMaps
from bids_harmony.workflows.group_dki import add_dki_nodes, dki_report_parts, dki_results
from bids_harmony.workflows.group_outputs import (
    ScenarioSessions,
    session_table,
    write_group_outputs,
)
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

if TYPE_CHECKING:
    from nipype.pipeline.engine import Node, Workflow

LOGGER = logging.getLogger(__name__)
#: Harmonization methods the group level can evaluate, in the tables' order.
EVALUATED = METHODS
#: The maps a method must have written for every source session and shell to be
#: evaluated without being asked (HARP: its SH too, for the fibre comparison).
MAP_KINDS = ("fa", "md", "gfa")
NOTES = (
    "Standard errors follow Jeong et al. (2026) Eq. 2: scan-rescan with K = 2 sessions "
    "per site, inter-scanner with K = 4 (two sessions at each site).",
    "Summaries exclude CSF (mean target-site MD > 1.5 µm²/ms); WM is FA >= 0.3, GM the "
    "rest of the brain; ROIs are these classes cut by a 3 x 3 x 3 grid of blocks.",
)
RISH_IN_GROUP = (
    "LinearRISH is trained on the same traveling subjects it is evaluated on: its "
    "numbers are a best case, while HARP saw phantoms only."
)
COMBAT_IN_GROUP = (
    "ComBat was fitted on the cohort's sessions, which include these traveling subjects: "
    "its numbers are those of subjects it saw, not of unseen ones."
)


def group_sites(config: Config, study: Study) -> tuple[str, list[str]]:
    """Target site (``--target-site`` or the models' cards) and the source sites."""
    from bids_harmony.workflows.train import choose_sites

    target = config.target_site
    if not target:
        cards = sorted((config.output_dir / "models").glob("*_tgt-*.json"))
        targets = {json.loads(p.read_text()).get("target_site") for p in cards}
        if len(targets) != 1:
            raise BidsHarmonyError(
                "the 'group' level needs --target-site (no single target in "
                f"{config.output_dir / 'models'}); sites: {', '.join(study.sites)}."
            )
        target = targets.pop()
    return choose_sites(dataclasses.replace(config, target_site=target), study.sites)


def resolve_template(value: str | Path) -> Path:
    """A template file, or a TemplateFlow name (``NAME`` or ``NAME:res-2``) found locally.

    TemplateFlow is looked up in ``$TEMPLATEFLOW_HOME`` only (no download at run
    time): an FA image (``desc-FA``) if the template has one, else its T1w (the
    registration's Mattes metric copes with the contrast difference).
    """
    path = Path(value)
    if path.is_file():
        return path
    import os

    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    name, _, res = str(value).partition(":res-")
    try:
        from templateflow import api
    except Exception as err:  # pragma: no cover - templateflow is a dependency
        raise InputDatasetError(
            f"--template {value}: not a file, and TemplateFlow: {err}"
        ) from err
    home = os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")
    if name not in api.templates():
        raise InputDatasetError(
            f"--template {value}: not a file, and no TemplateFlow template {name!r} in "
            f"{home} (available: {', '.join(api.templates()) or 'none'}). Pre-fetch it "
            "(the container does at build time) or give a NIfTI file."
        )
    query = {"resolution": int(res)} if res else {}
    for extra in ({"desc": "FA"}, {"desc": None, "suffix": "T1w"}):
        found = api.get(name, extension=".nii.gz", **{"suffix": "T1w", **extra, **query})
        found = [found] if isinstance(found, (str, Path)) else sorted(found)
        found = [Path(f) for f in found if Path(f).is_file()]
        if found:
            return found[0]
    raise InputDatasetError(
        f"--template {value}: TemplateFlow template {name!r} has no local FA or T1w image "
        f"{'at resolution ' + res if res else ''} in {home}."
    )


@dataclass(frozen=True)
class Scenario:
    """One source → target comparison of one protocol, ready to build its workflow.

    ``source``/``target`` are subject-major (two sessions per traveling subject);
    ``labels`` the shells fitted in every session, ``ref`` the shell whose FA map
    is registered; ``methods`` the harmonized outputs evaluated, ``rish_fit``
    whether LinearRISH is fitted here (no trained model applied it); ``template``
    the ``--template`` file (``None``: a study template is built).
    """

    selection: Selection
    source: list[SessionMaps]
    target: list[SessionMaps]
    labels: list[str]
    ref: str
    stem: str
    methods: tuple[str, ...] = ()
    rish_fit: bool = False
    template: Path | None = None

    @property
    def sessions(self) -> list[SessionMaps]:
        return [*self.source, *self.target]


def scenario_sessions(config: Config, sel: Selection) -> Scenario:
    """The sessions and shells of a scenario from the participant outputs."""
    from bids_harmony.bids.group_inputs import run_shells

    src_runs = [r for s in sel.subjects for r in sel.sessions[s][sel.source]]
    tgt_runs = [r for s in sel.subjects for r in sel.sessions[s][sel.target]]
    shells = {r.prefix: {m.label: m for m in run_shells(config.output_dir, r)}
              for r in [*src_runs, *tgt_runs]}  # fmt: skip
    fitted = set.intersection(*(set(by_label) for by_label in shells.values()))
    labels = sorted(fitted, key=lambda label: float(label[1:]))  # fitted in every run
    if not labels:
        raise NoDataError(
            "the traveling subjects' sessions have no complete participant outputs in "
            f"{config.output_dir}; run: bids-harmony {config.bids_dir} {config.output_dir} "
            "participant"
        )
    ref = min(labels, key=lambda s: abs(float(s[1:]) - 1000.0))

    def session(run) -> SessionMaps:
        maps = shells[run.prefix]
        return SessionMaps(
            key=run.prefix, subject=run.subject,
            label=f"sub-{run.subject}" + (f" ses-{run.session}" if run.session else ""),
            mask=maps[ref].outputs.mask(required=True), shells=maps,
        )  # fmt: skip

    stem = f"src-{sel.source}_tgt-{sel.target}" + (f"_acq-{sel.acq}" if sel.acq else "")
    template = resolve_template(config.template) if config.template is not None else None
    return Scenario(sel, [session(r) for r in src_runs], [session(r) for r in tgt_runs],
                    labels, ref, stem, template=template)  # fmt: skip


def choose_methods(config: Config, scen: Scenario) -> Scenario:
    """Which methods a scenario evaluates: ``--methods``, or every one with outputs.

    HARP needs ``desc-harp`` outputs of every source session and shell; LinearRISH
    is read from ``desc-rish`` outputs when a trained ``rish`` model applied it at
    the participant level, and otherwise fitted here on the traveling subjects;
    ComBat needs ``desc-combat`` FA, MD and GFA maps of every source session and
    shell (the participant level writes them for every session of a site a ComBat
    model maps; the target site's sessions keep their own maps, as for HARP).
    A method asked for with ``--methods`` whose outputs are missing is an error.
    """
    from bids_harmony.methods.catalog import MODELS_DIR, model_stem

    wanted = config.methods or EVALUATED
    has_harp = all(s.shells[lb].harp for s in scen.source for lb in scen.labels)
    # every other method: its desc-<method> FA/MD/GFA maps (ComBat)
    missing = {m: missing_maps(scen, m) for m in EVALUATED if m not in ("harp", "rish")}
    sel = scen.selection
    rish_model = (config.output_dir / MODELS_DIR
                  / f"{model_stem(sel.source, sel.target, method='rish', acq=sel.acq)}.json")
    rish_trained = rish_model.is_file() and all(
        _from_model(s.shells[lb].outputs.shell_map(lb, kind, "rish"), rish_model)
        for s in scen.source for lb in scen.labels for kind in ("fa", "md", "gfa")
    )  # fmt: skip
    available = {"harp": has_harp, "rish": True, **{m: not p for m, p in missing.items()}}
    methods = [m for m in EVALUATED if m in wanted and available[m]]
    if "harp" in wanted and not has_harp and config.methods:
        raise NoDataError(
            f"--methods harp: the {sel.source} sessions have no HARP outputs (desc-harp); "
            "run 'train' and then 'participant' first."
        )
    for m, absent in missing.items():
        if m in wanted and absent and config.methods:
            cmd = f"bids-harmony {config.bids_dir} {config.output_dir}"
            shown = ", ".join(p.name for p in absent[:3])
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise NoDataError(
                f"--methods {m}: the {sel.source} sessions have no complete "
                f"{by_name(m).display} outputs (desc-{m} FA, MD and GFA maps of every shell): "
                f"missing {shown}{more}. Run '{cmd} train --method {m} --target-site "
                f"{sel.target}' and then '{cmd} participant' first."
            )
    return dataclasses.replace(scen, methods=tuple(methods),
                               rish_fit="rish" in methods and not rish_trained)  # fmt: skip


def missing_maps(scen: Scenario, method: str, kinds: Sequence[str] = MAP_KINDS) -> list[Path]:
    """The ``desc-<method>`` maps a scenario's source sessions lack (complete: with sidecar)."""
    return [
        s.shells[lb].file(kind, method)
        for s in scen.source for lb in scen.labels for kind in kinds
        if s.shells[lb].outputs.shell_map(lb, kind, method) is None
    ]  # fmt: skip


def _from_model(path: Path | None, model_card: Path) -> bool:
    """Whether a ``desc-rish`` map exists and its sidecar names the trained model.

    The group level's own LinearRISH fit writes ``desc-rish`` maps too; those do
    not count as the model's outputs.
    """
    if path is None:
        return False
    sidecar = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
    try:
        harmonization = json.loads(sidecar.read_text()).get("Harmonization", {})
    except (OSError, ValueError):
        return False
    return str(harmonization.get("ModelFile", "")).endswith(model_card.stem + ".safetensors")


def _name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


def common_space_wf(workflow: Workflow, config: Config, scen: Scenario) -> tuple[Node, Node]:
    """Add the template and per-session registration nodes to ``workflow``.

    Returns the node whose ``template`` output is the template file and a Merge
    node whose ``out`` lists the sessions' transforms (``None``: rejected) in the
    order of :attr:`Scenario.sessions`.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.common_space import BuildFATemplate, RegisterToTemplate

    space = pe.Node(niu.IdentityInterface(fields=["template"]), name="common_space")
    if scen.template is not None:
        space.inputs.template = str(scen.template)
    else:
        fa = [s.shells[scen.ref].raw["fa"] for s in scen.target]
        build = pe.Node(BuildFATemplate(fa_files=[str(f) for f in fa], seed=config.seed),
                        name="fa_template")  # fmt: skip
        workflow.connect(build, "out_file", space, "template")
    transforms = pe.Node(niu.Merge(len(scen.sessions), no_flatten=True), name="transforms")
    excluded = pe.Node(niu.Merge(len(scen.sessions)), name="excluded")
    for k, session in enumerate(scen.sessions, start=1):
        reg = pe.Node(
            RegisterToTemplate(fa_file=str(session.shells[scen.ref].raw["fa"]),
                               seed=config.seed, transform=config.group_transform,
                               label=session.label),
            name=_name("register", session.key),
        )  # fmt: skip
        workflow.connect([(space, reg, [("template", "template_file")]),
                          (reg, transforms, [("transform", f"in{k}")]),
                          (reg, excluded, [("excluded", f"in{k}")])])  # fmt: skip
    return space, transforms


def init_scenario_wf(config: Config, scen: Scenario) -> Workflow:
    """The group-level workflow of one scenario (see the module docstring)."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from bids_harmony.interfaces.group_level import (
        ApplyRish,
        EvaluateScenario,
        FibreErrors,
        FitRish,
        WarpMaps,
    )

    workflow = pe.Workflow(name=_name("group", scen.stem))
    space, transforms = common_space_wf(workflow, config, scen)
    # CSD threads per node: the cores left per parallel node (all of them when serial)
    threads = config.omp_nthreads or max(1, config.nprocs // min(config.nprocs,
                                                                len(scen.sessions)))
    n_src = len(scen.source)
    warped = pe.Node(niu.Merge(len(scen.sessions)), name="warped")
    warps = []
    fibres = pe.Node(niu.Merge(max(1, n_src * len(scen.labels)), no_flatten=True),
                     name="fibres")  # fmt: skip
    if scen.rish_fit:
        fit = pe.Node(FitRish(source=scen.source, target=scen.target, labels=scen.labels),
                      name="fit_rish")  # fmt: skip
        workflow.connect([(space, fit, [("template", "template_file")]),
                          (transforms, fit, [("out", "transforms")])])  # fmt: skip
    for k, session in enumerate(scen.sessions):
        is_source = k < n_src
        select = pe.Node(niu.Select(index=[k]), name=_name("transform", session.key))
        warp = pe.Node(WarpMaps(session=session, labels=scen.labels,
                                methods=list(scen.methods) if is_source else []),
                       name=_name("warp", session.key))  # fmt: skip
        warps.append(warp)
        workflow.connect([(transforms, select, [("out", "inlist")]),
                          (select, warp, [("out", "transform")]),
                          (space, warp, [("template", "template_file")]),
                          (warp, warped, [("out_file", f"in{k + 1}")])])  # fmt: skip
        if is_source and scen.rish_fit:
            apply = pe.Node(ApplyRish(session=session, labels=scen.labels,
                                      b_tolerance=config.b_tolerance,
                                      b0_threshold=config.b0_threshold, n_threads=threads),
                            name=_name("rish", session.key), n_procs=threads)  # fmt: skip
            workflow.connect([(fit, apply, [("scales", "scales"), ("subjects", "subjects")]),
                              (select, apply, [("out", "transform")]),
                              (space, apply, [("template", "template_file")]),
                              (apply, warp, [("written", "after")])])  # fmt: skip
        if is_source and _fibre_methods(scen):
            for j, label in enumerate(scen.labels):
                fibre = pe.Node(FibreErrors(session=session, label=label, n_threads=threads),
                                name=_name("fibres", session.key, label),
                                n_procs=threads)  # fmt: skip
                workflow.connect(fibre, "errors", fibres, f"in{k * len(scen.labels) + j + 1}")
    evaluate = pe.Node(EvaluateScenario(sessions_source=scen.source, sessions_target=scen.target,
                                        labels=scen.labels, methods=list(scen.methods)),
                       name="evaluate")  # fmt: skip
    workflow.connect([(transforms, evaluate, [("out", "transforms")]),
                      (warped, evaluate, [("out", "warped")])])  # fmt: skip
    if _fibre_methods(scen):
        workflow.connect(fibres, "out", evaluate, "fibres")
    add_dki_nodes(workflow, scen, warps, transforms, warped)  # when the sessions have DKI maps
    return workflow


def _fibre_methods(scen: Scenario) -> list[str]:
    """The scenario's methods whose fibre orientations are evaluated (HARP's DWI)."""
    return [m for m in scen.methods if by_name(m).fibres]


#: Steps counted in the progress lines: node-name word -> verb.
GROUP_STEPS = {"register": "registered", "warp": "warped", "evaluate": "evaluated"}


def _results(graph, scenarios: dict[str, Scenario]) -> tuple[list[ScenarioResult], list]:
    """Scenario results and excluded sessions from the executed graph."""
    by_wf: dict[str, dict[str, object]] = {}
    for node in graph.nodes():
        wf = node.fullname.split(".")[-2] if "." in node.fullname else ""
        if node.name in ("evaluate", "excluded", "fa_template"):
            by_wf.setdefault(wf, {})[node.name] = node.result.outputs
    results, excluded = [], []
    for wf, scen in scenarios.items():
        outputs = by_wf.get(wf, {})
        excluded += [tuple(m.split(": ", 1)) for m in outputs["excluded"].out if m]
        ev = outputs["evaluate"]
        if not ev.shells:
            LOGGER.warning("No traveling subject left for %s -> %s.", scen.selection.source,
                           scen.selection.target)  # fmt: skip
            continue
        results.append(ScenarioResult(
            stem=scen.stem, labels=scen.labels, subjects=list(ev.subjects),
            template=scen.template or Path(outputs["fa_template"].out_file),
            methods=list(scen.methods),
            shells=dict(ev.shells),
        ))  # fmt: skip
    return results, excluded


def method_plan(config: Config, scenarios: Sequence[Scenario]) -> str | None:
    """What the level will and will not compare when no method has outputs, else ``None``.

    "No outputs": no scenario has HARP outputs (``desc-harp``), ComBat outputs
    (``desc-combat``) nor the outputs of a trained LinearRISH model, so at best
    LinearRISH is fitted here on the traveling subjects.  Also ``None`` when
    ``--methods`` left HARP out on purpose.
    """
    if config.methods and "harp" not in config.methods:
        return None
    if any("harp" in s.methods or "combat" in s.methods
           or ("rish" in s.methods and not s.rish_fit) for s in scenarios):  # fmt: skip
        missing = [scenario_title(s.stem) for s in scenarios if "harp" not in s.methods]
        return (f"No HARP outputs for {'; '.join(missing)}: HARP is compared in the other "
                "scenarios only; run 'train' and then 'participant' for these."
                if missing else None)  # fmt: skip
    fitted = any(s.rish_fit for s in scenarios)
    will = (
        "LinearRISH, fitted here on the traveling subjects (a best case: it is evaluated on "
        "the subjects it was fitted on), against no harmonization"
        if fitted
        else "inter-scanner against scan-rescan variability without harmonization only"
    )
    cmd = f"bids-harmony {config.bids_dir} {config.output_dir}"
    return (
        f"No harmonization model has outputs in {config.output_dir}: no HARP outputs "
        "(desc-harp), no ComBat outputs (desc-combat) and no trained LinearRISH model. This "
        "group level will compare "
        f"{will}. It will NOT evaluate HARP: to compare HARP, run '{cmd} train' and then "
        f"'{cmd} participant' before 'group'."
    )


def _scenario_sessions(scen: Scenario) -> ScenarioSessions:
    sel = scen.selection
    return ScenarioSessions(scen.stem, [
        (s.label, s.subject, site, role)
        for role, site, group in (("source", sel.source, scen.source),
                                  ("target", sel.target, scen.target))
        for s in group
    ])  # fmt: skip


@releases_locks
def run_group(config: Config) -> int:
    """Run the group level; returns the exit code."""

    from bids_harmony.bids.citation import CITATION_MD
    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.workflows.boilerplate import cite_group
    from bids_harmony.workflows.execution import (
        level_workflow,
        run_steps,
    )
    from bids_harmony.workflows.group_cohort import report_parts, run_cohort_checks
    from bids_harmony.workflows.run import discover_study

    start = time.perf_counter()
    study = discover_study(config)
    target, sources = group_sites(config, study)
    config = dataclasses.replace(config, target_site=target)
    group_dir = config.output_dir / "group"
    excluded: list[tuple[str, ...]] = []
    notes = list(NOTES)
    workflow, log_dir = level_workflow(config, "bids_harmony_group_wf")
    scenarios: dict[str, Scenario] = {}
    for source in sources:
        for sel in select_traveling(study, source, target):
            excluded.extend(tuple(item.split(": ", 1)) for item in sel.skipped)
            if len(sel.subjects) < 2:
                notes.append(
                    f"{source} -> {target}"
                    + (f" acq-{sel.acq}" if sel.acq else "")
                    + f": {len(sel.subjects)} traveling subject(s) with two sessions at each site; "
                    "the evaluation needs at least 2" + ("" if sel.subjects else ": skipped")
                )
                if not sel.subjects:
                    continue
            scen = choose_methods(config, scenario_sessions(config, sel))
            if "harp" not in scen.methods:
                notes.append(f"{source}: no HARP outputs; run 'train' then 'participant'.")
            if scen.rish_fit:
                notes.append(RISH_IN_GROUP)
            elif "rish" in scen.methods:
                notes.append(f"{source}: LinearRISH from the trained model (train --method rish), "
                             "applied at the participant level.")  # fmt: skip
            if "combat" in scen.methods:
                notes.append(COMBAT_IN_GROUP)
            sub = init_scenario_wf(config, scen)
            workflow.add_nodes([sub])
            scenarios[sub.name] = scen
    cohort_models = sorted((config.output_dir / "models").glob("combat_tgt-*.safetensors"))
    if not scenarios and not cohort_models:
        raise NoDataError(
            "no traveling subject has two sessions at the source and at the target site; "
            "the group level needs at least one (two or more for meaningful numbers), or a "
            "ComBat model (train --method combat) for the cohort checks. "
            + " ".join(f"{who}: {why}." for who, why in excluded)
        )
    warning = method_plan(config, list(scenarios.values())) if scenarios else None
    if warning:  # before the long steps: the user can stop and train first
        LOGGER.warning(warning)
    n_steps = sum(2 * len(s.sessions) + 1 for s in scenarios.values())
    LOGGER.info("Group level: %d scenario(s), %d ComBat model(s) for the cohort checks",
                len(scenarios), len(cohort_models))  # fmt: skip
    hold_locks(config, level_keys(config, study))
    results, dki = [], {}
    if scenarios:
        graph = run_steps(workflow, config, log_dir, n_steps, GROUP_STEPS)
        results, failed = _results(graph, scenarios)
        excluded += failed
        dki = dki_results(graph, scenarios)
    cohort = run_cohort_checks(config, study, group_dir) if cohort_models else []
    if not results and not cohort:
        raise NoDataError(
            "no traveling subject is left after registration to the template, and no ComBat "
            "model has outputs for its cohort checks. "
            + " ".join(f"{who}: {why}." for who, why in excluded)
        )
    cohort_tables, cohort_figures, cohort_notes = report_parts(cohort)
    notes += cohort_notes
    dki_tables, dki_figures, dki_notes = dki_report_parts(
        dki, group_dir, config.output_dir / "models", {k: scenario_title(k) for k in dki})
    cohort_tables.update(dki_tables)
    cohort_figures.update(dki_figures)
    notes += dki_notes
    evaluated = list(scenarios.values())
    rish = ("fitted" if any(s.rish_fit for s in evaluated) else
            "model" if any("rish" in s.methods for s in evaluated) else "none")  # fmt: skip
    methods = cite_group(config, target=target, sources=sources,
                         harp=any("harp" in r.methods for r in results), rish=rish,
                         traveling=bool(results),
                         combat=any("combat" in r.methods for r in results),
                         cohort=bool(cohort))  # fmt: skip
    sessions = session_table(
        [_scenario_sessions(s) for s in evaluated],
        {r.stem: r.subjects for r in results},
        excluded,
    )
    html = write_group_outputs(
        group_dir, results, title=f"bids_harmony group report: harmonization to {target}",
        sessions=sessions, notes=notes, warning=warning,
        models_dir=config.output_dir / "models", methods=methods,
        methods_file=config.output_dir / CITATION_MD,
        extra_tables=cohort_tables, extra_figures=cohort_figures,
    )  # fmt: skip
    LOGGER.info("Group level finished in %.1f s; report: %s", time.perf_counter() - start, html)
    return 0

