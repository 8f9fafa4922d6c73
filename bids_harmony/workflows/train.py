"""The ``train`` level: one model per (source site → target site) and method.

``--method harp`` (default) uses the participant-level derivatives of the phantom
sessions: it pairs phantom scans across sites
(:mod:`bids_harmony.bids.phantom_pairs`) and builds one Nipype workflow per site
pair (:func:`init_harp_train_wf`): a node per source session registers and samples
its pairs, a node trains (:mod:`bids_harmony.interfaces.harp_training`), a sink
writes ``OUT/models/harp_src-<S>_tgt-<T>.safetensors`` with its JSON model card
and training report.  Sessions and site pairs run in parallel with ``--nprocs``
(or on a cluster with ``--use-plugin``); a rerun with the same ``--work-dir``
reuses finished nodes.  ``--method rish``: :mod:`bids_harmony.workflows.train_rish`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_harmony.bids.discovery import Study
from bids_harmony.bids.phantom_pairs import PhantomPair, TrainingDataError
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, NoDataError
from bids_harmony.interfaces.harp_training import (
    VALIDATION_BLOCK,
    ModelSink,
    SampleOptions,
    SamplePhantomPairs,
    TrainHarpModel,
    TrainOptions,
    pair_files,
)
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

if TYPE_CHECKING:
    from nipype.pipeline.engine import Workflow

LOGGER = logging.getLogger(__name__)


def choose_sites(config: Config, sites: list[str]) -> tuple[str, list[str]]:
    """Target site and the source sites to train, with errors listing the sites."""
    listed = ", ".join(sites) or "none"
    if not config.target_site:
        raise BidsHarmonyError(
            f"the 'train' level needs --target-site; sites in the data: {listed}."
        )
    if config.target_site not in sites:
        raise NoDataError(
            f"--target-site {config.target_site} is not a site of the data; sites: {listed}."
        )
    if config.source_site:
        if config.source_site not in sites or config.source_site == config.target_site:
            raise NoDataError(
                f"--source-site {config.source_site} must be a site of the data other than "
                f"the target; sites: {listed}."
            )
        return config.target_site, [config.source_site]
    sources = [site for site in sites if site != config.target_site]
    if not sources:
        raise NoDataError(f"only the target site {config.target_site} is in the data.")
    return config.target_site, sources


def run_sh_maps(derivatives: Path, run: Any) -> list[Path]:
    """Unharmonized SH maps of a run, one per shell that has one."""
    from bids_harmony.bids.reader import RunOutputs

    return list(RunOutputs.of_run(derivatives, run).shell_maps("sh").values())


def invivo_c00(
    study: Any, derivatives: Path, site: str, *, max_samples: int = 200_000
) -> np.ndarray:
    """C00 of in-vivo sessions of ``site`` (inside their masks), for the paper's rule."""
    import nibabel as nb

    from bids_harmony.bids.reader import RunOutputs

    values = []
    for run in study.runs:
        if run.site != site or run.is_phantom:
            continue
        mask_file = RunOutputs.of_run(derivatives, run).mask()
        if mask_file is None:
            continue
        mask = np.asarray(nb.load(mask_file).dataobj) > 0
        for sh_file in run_sh_maps(derivatives, run):
            values.append(np.asarray(nb.load(sh_file).dataobj[..., 0])[mask])
    if not values:
        return np.empty(0)
    samples = np.concatenate(values)
    if samples.size > max_samples:
        samples = np.sort(samples)[:: samples.size // max_samples + 1]
    return samples


def phantom_pairs_for(config: Config, study: Study, source: str, target: str) -> list[PhantomPair]:
    """The phantom pairs of one site pair fitted at ``--sh-order`` (an error when none)."""
    from bids_harmony.bids.phantom_pairs import find_phantom_pairs

    pairs = find_phantom_pairs(study, config.output_dir, source_site=source, target_site=target,
                               b_tolerance=config.b_tolerance)  # fmt: skip
    pairs = [p for p in pairs if p.source.sh_order == config.sh_order == p.target.sh_order]
    if not pairs:
        raise NoDataError(
            f"no phantom pair {source} → {target} was fitted at SH order {config.sh_order}; "
            "protocols with fewer directions than coefficients cannot train this model."
        )
    return pairs


def sample_options(config: Config, study: Study, source: str, registration: str) -> SampleOptions:
    """The voxel rule of a source site (``auto``: percentile when in-vivo outputs exist)."""
    rule = config.voxel_rule
    c00 = invivo_c00(study, config.output_dir, source) if rule in ("auto", "percentile") else None
    if rule == "auto":
        rule = "percentile" if c00 is not None and c00.size else "window"
    if rule == "percentile" and (c00 is None or not c00.size):
        raise NoDataError(
            f"--voxel-rule percentile needs participant outputs of in-vivo {source} sessions; "
            "run the participant level on them or use --voxel-rule window."
        )
    return SampleOptions(
        rule=rule, c00_window=tuple(config.c00_window), erode=config.phantom_erode,
        seed=config.seed, registration=registration,
        invivo_c00=tuple(float(v) for v in c00) if rule == "percentile" else (),
    )  # fmt: skip


def _node_name(*parts: str | None) -> str:
    return "_".join(re.sub(r"\W", "", p) for p in parts if p)


def init_harp_train_wf(
    pairs: list[PhantomPair], sampling: SampleOptions, training: TrainOptions, models_dir: Path
) -> Workflow:
    """Train one site pair's HARP model: sample per source session, train, place the model.

    Nodes: ``sample_<sub>_<ses>`` (:class:`SamplePhantomPairs`, one per source
    session, in parallel) → ``train`` (:class:`TrainHarpModel`) → ``ds_model``
    (:class:`ModelSink`).
    """
    from nipype.interfaces.utility import Merge
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name=_node_name("harp", training.source, "to", training.target))
    workflow.__desc__ = (
        f"A HARP model mapping {training.source} onto {training.target} was trained on "
        f"{len(pairs)} phantom pair(s) (one shell of one phantom and protocol each)."
    )
    groups: dict[tuple[str, str], list[int]] = {}
    for index, pair in enumerate(pairs):
        groups.setdefault((pair.source.subject, pair.source.session or ""), []).append(index)
    merge_arrays = pe.Node(Merge(len(groups), no_flatten=True), name="merge_arrays")
    merge_images = pe.Node(Merge(len(groups), no_flatten=True), name="merge_images")
    order = [i for indices in groups.values() for i in indices]
    for k, ((subject, session), indices) in enumerate(groups.items(), start=1):
        members = [pairs[i] for i in indices]
        sample = pe.Node(
            SamplePhantomPairs(pairs=members, in_files=pair_files(members), options=sampling),
            name=_node_name("sample", f"sub{subject}", f"ses{session}" if session else None),
        )
        workflow.connect([(sample, merge_arrays, [("arrays", f"in{k}")]),
                          (sample, merge_images, [("images", f"in{k}")])])  # fmt: skip
    # In this process, not a forked worker: torch's thread pool does not survive a fork
    # of a process that already used it (the worker hangs), and training uses all cores.
    train = pe.Node(TrainHarpModel(pairs=pairs, order=order, options=training), name="train",
                    run_without_submitting=True)  # fmt: skip
    sink = pe.Node(ModelSink(models_dir=str(models_dir)), name="ds_model")
    workflow.connect([
        (merge_arrays, train, [("out", "arrays")]),
        (merge_images, train, [("out", "images")]),
        (train, sink, [("outcome", "outcome")]),
    ])  # fmt: skip
    return workflow


#: Steps counted in the progress lines: node-name word -> verb.
TRAIN_STEPS = {"sample": "sampled", "train": "trained"}


def training_sites(config: Config) -> tuple[Study, str, list[str]]:
    """The study, its target site and the source sites to train (every method)."""
    from bids_harmony.workflows.run import discover_study

    study = discover_study(config)
    LOGGER.info("Discovered:\n%s", study.summary())
    target, sources = choose_sites(config, study.sites)
    return study, target, sources


def write_description(config: Config) -> None:
    """The output dataset's description and ``.bidsignore`` (before models are written)."""
    from bids_harmony.bids.derivatives import write_dataset_description
    from bids_harmony.workflows.execution import ensure_bidsignore
    from bids_harmony.workflows.references import how_to_acknowledge

    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir,
                              acknowledge=how_to_acknowledge())  # fmt: skip
    ensure_bidsignore(config.output_dir)


@releases_locks
def run_train(config: Config) -> int:
    """Run the train level; returns the exit code."""
    from bids_harmony.methods.catalog import MODELS_DIR
    from bids_harmony.workflows.boilerplate import cite_train
    from bids_harmony.workflows.execution import level_workflow, run_steps
    from bids_harmony.workflows.run import resolve_backend, resolve_device

    study, target, sources = training_sites(config)
    device = resolve_device(config.device)
    # Phantom pairs are registered with FLIRT whenever FSL preprocesses (--preproc fsl/auto).
    registration = "flirt" if resolve_backend(config.preproc) == "fsl" else "ants"
    LOGGER.info("Phantom registration: %s", registration)
    workflow, log_dir = level_workflow(config, "bids_harmony_train_wf")
    n_steps = 0
    for source in sources:
        pairs = phantom_pairs_for(config, study, source, target)
        sampling = sample_options(config, study, source, registration)
        training = TrainOptions(
            source=source, target=target, sh_order=config.sh_order, recipe=config.harp_recipe,
            iterations=config.harp_iterations, device=device, seed=config.seed,
            min_train_voxels=config.min_train_voxels, rule=sampling.rule,
            c00_window=sampling.c00_window, erode=sampling.erode, registration=registration,
        )  # fmt: skip
        LOGGER.info("%s → %s: %d phantom pair(s); voxel rule %s; validation on %d-voxel blocks",
                    source, target, len(pairs), sampling.rule, VALIDATION_BLOCK)  # fmt: skip
        sub = init_harp_train_wf(pairs, sampling, training, config.output_dir / MODELS_DIR)
        workflow.add_nodes([sub])
        n_steps += len({(p.source.subject, p.source.session) for p in pairs}) + 1

    hold_locks(config, level_keys(config, study))
    write_description(config)
    graph = run_steps(workflow, config, log_dir, n_steps, TRAIN_STEPS)
    errors = []
    for node in graph.nodes() if graph is not None else ():
        if node.name != "ds_model":
            continue
        outcome = node.result.outputs.outcome
        if outcome.error:
            errors.append(outcome.error)
        else:
            LOGGER.info("Saved %s (validation loss %.4g, %.1f s); training report: %s",
                        outcome.model, outcome.val_loss, outcome.wall_time_s,
                        outcome.report)  # fmt: skip
    if errors:
        raise TrainingDataError(" ".join(errors))
    cite_train(config, target=target, sources=sources, registration=registration)
    return 0
