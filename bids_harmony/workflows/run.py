"""Execute an analysis level: discovery, workflow construction, Nipype run."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError
from bids_harmony.workflows.execution import (
    Progress,
    choose_plugin,
    ensure_bidsignore,
    run_workflow,
    start_engine,
)
from bids_harmony.workflows.locking import hold_locks, level_keys, releases_locks

if TYPE_CHECKING:
    from bids_harmony.bids.discovery import Study

LOGGER = logging.getLogger(__name__)


def resolve_backend(requested: str) -> str:
    """Pick the preprocessing backend and log it; refuse ``fsl`` when FSL cannot run.

    ``auto`` is ``fsl`` when ``FSLDIR`` is set and ``bet``, ``flirt`` and eddy run
    (:func:`~bids_harmony.workflows.fsl_preproc.fsl_available`), else ``python``.
    """
    if requested in ("fsl", "auto"):
        from bids_harmony.workflows.fsl_preproc import fsl_available

        ok, message = fsl_available()
        if ok:
            LOGGER.info("Preprocessing backend: fsl (%s)", message)
            return "fsl"
        if requested == "fsl":
            raise BidsHarmonyError(f"--preproc fsl: {message}")
        LOGGER.info("Preprocessing backend: python (FSL not used: %s)", message.split(". ")[0])
        return "python"
    LOGGER.info("Preprocessing backend: %s", requested)
    return requested


def discover_study(config: Config):
    """Index the input dataset with the run's selection settings."""
    from bids_harmony.bids import discovery

    return discovery.discover(
        config.bids_dir,
        participant_label=list(config.participant_label) or None,
        session_label=list(config.session_label) or None,
        site_map=discovery.load_site_map(config.site_map) if config.site_map else None,
        phantom_label=list(config.phantom_label) or None,
        b_tolerance=config.b_tolerance,
        b0_threshold=config.b0_threshold,
        bids_filters=(
            discovery.load_bids_filters(config.bids_filter_file)
            if config.bids_filter_file
            else None
        ),
        validate=not config.skip_bids_validation,
        ignore_checks=config.ignore_checks,
        # The train and group levels read participant outputs, not raw voxels.
        check_data=config.analysis_level == "participant",
    )


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``."""
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise BidsHarmonyError("--device cuda: no CUDA device is available; use --device cpu.")
    return "cpu"


def expected_convention(config: Config) -> dict[str, object]:
    """The SH convention of this run's coefficients, which a model card must match."""
    from bids_harmony.dmri import sh

    return {"sh_order": config.sh_order, "basis": sh.SH_BASIS, "legacy": sh.SH_LEGACY,
            "b_ref": sh.B_REF}  # fmt: skip


def participant_models(config: Config, study) -> dict[str, dict[str, object]]:
    """HARP models to apply, per source site (none for the target site's runs)."""
    from bids_harmony.methods.catalog import select_models

    if not config.models and not (config.output_dir / "models").is_dir():
        return {}
    models = select_models(
        config.output_dir,
        config.models,
        study.sites,
        target_site=config.target_site,
        device="cpu",
        expect=expected_convention(config),
    )
    if models:
        from bids_harmony.methods.harp import load_model

        device = resolve_device(config.device)
        for entry in models.values():
            # Fail before any processing on a corrupt or mismatched model.
            load_model(entry["file"], expect=entry["expect"])
            entry["device"] = device
    return models


def participant_combat(config: Config, study: Study) -> dict[str, dict[str, Any]]:
    """The ComBat node settings per run prefix (model, covariates), checked up front.

    ``--methods`` without ``combat`` leaves ComBat out.  Errors (exit 2, nothing
    written): a run of a site the model was not fitted on, a covariate missing.
    """
    if config.methods and "combat" not in config.methods:
        return {}
    if not (config.output_dir / "models").is_dir():
        return {}
    from bids_harmony.bids.covariates import read_covariates
    from bids_harmony.methods.catalog import select_combat_models

    chosen = select_combat_models(config.output_dir, study.runs, target_site=config.target_site)
    settings: dict[str, dict[str, Any]] = {}
    for acq, (path, card) in chosen.items():
        runs = [r for r in study.runs
                if not r.is_phantom and r.entities.get("acquisition") == acq]  # fmt: skip
        names = list(card.get("covariates", {}))
        values = read_covariates(config.bids_dir, [(r.subject, r.session) for r in runs], names)
        for i, run in enumerate(runs):
            settings[run.prefix] = {
                "model_file": str(path), "run": run, "seed": config.seed,
                "transform": config.group_transform,
                "covariates": {n: values[n][i] for n in names},
            }  # fmt: skip
    return settings


def participant_dki(config: Config, study: Study) -> dict[str, dict[str, Any]]:
    """The DKI CNN node settings per run prefix: multi-shell human runs of a source site."""
    if not (config.output_dir / "models").is_dir() or (
            config.methods and "dki-cnn" not in config.methods):  # fmt: skip
        return {}
    from bids_harmony.methods.catalog import select_dki_models

    chosen = select_dki_models(config.output_dir, study.sites, target_site=config.target_site)
    return {
        run.prefix: {"model_file": str(path), "run": run}
        for run in study.runs
        if not run.is_phantom
        and (path := chosen.get((run.site, run.entities.get("acquisition")))) is not None
    }


@releases_locks
def run_participant(config: Config) -> int:
    """Run the participant level; returns the exit code."""
    from bids_harmony.bids.derivatives import write_dataset_description
    from bids_harmony.workflows.boilerplate import cite_participant
    from bids_harmony.workflows.participant import init_participant_wf, wf_name
    from bids_harmony.workflows.references import how_to_acknowledge

    study = discover_study(config)
    LOGGER.info("Discovered:\n%s", study.summary())
    backend = resolve_backend(config.preproc)
    python_only = [flag for flag, used in (("--denoise", config.denoise != "none"),
                   ("--remove-gibbs", config.remove_gibbs),
                   ("--motion-correction", config.motion_correction)) if used]  # fmt: skip
    if python_only and backend != "python":
        LOGGER.warning("%s: python backend only, not applied with --preproc %s",
                       ", ".join(python_only), backend)  # fmt: skip

    if config.omp_nthreads is None:
        parallel_runs = max(1, min(config.nprocs, len(study.runs)))
        config = dataclasses.replace(config, omp_nthreads=max(1, config.nprocs // parallel_runs))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(config.omp_nthreads)
    log_dir = start_engine(config.output_dir, config.verbose)
    models = participant_models(config, study)
    rish_models = {}
    if (config.output_dir / "models").is_dir():
        from bids_harmony.methods.catalog import select_rish_models

        rish_models = select_rish_models(config.output_dir, study.sites,
                                         target_site=config.target_site)  # fmt: skip
    combat_models = participant_combat(config, study)
    dki_models = participant_dki(config, study)
    workflow = init_participant_wf(study, config, backend=backend, models=models,
                                   rish_models=rish_models, combat_models=combat_models,
                                   dki_models=dki_models)  # fmt: skip

    names = {wf_name(run.prefix): run.prefix for run in study.runs}
    plugin, plugin_args = choose_plugin(
        config.plugin_file, config.nprocs, len(study.runs), Progress(names)
    )

    # Every check has passed: only now is anything written.
    hold_locks(config, level_keys(config, study))
    config.work_dir.mkdir(parents=True, exist_ok=True)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir,
                              acknowledge=how_to_acknowledge())  # fmt: skip
    ensure_bidsignore(config.output_dir)
    start = time.time()
    LOGGER.info("Running %d run(s) with %s; work dir %s", len(study.runs), plugin, config.work_dir)
    run_workflow(workflow, plugin=plugin, plugin_args=plugin_args, log_dir=log_dir, names=names)
    cite_participant(config, workflow, backend)
    LOGGER.info(
        "Participant level finished in %.1f s; outputs in %s",
        time.time() - start,
        config.output_dir,
    )
    return 0
