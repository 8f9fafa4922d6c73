"""Execute an analysis level: discovery, workflow construction, Nipype run."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError

LOGGER = logging.getLogger(__name__)


class ProcessingError(BidsHarmonyError, RuntimeError):
    """A workflow node failed; the message summarizes the crash files."""

    exit_code = 1


def fsl_available() -> bool:
    """FSL is usable when ``FSLDIR`` is set and its tools are on PATH."""
    return bool(os.environ.get("FSLDIR")) and all(shutil.which(tool) for tool in ("bet", "flirt"))


def resolve_backend(requested: str) -> str:
    """Pick the preprocessing backend, refusing one that cannot run here."""
    if requested == "fsl" or (requested == "auto" and fsl_available()):
        if requested == "auto":
            LOGGER.warning("FSL found, but the FSL backend is not in this version; using python")
            return "python"
        raise BidsHarmonyError(
            "--preproc fsl: the FSL backend is not available in this version. Use "
            "--preproc python (dipy), or --preproc none for data already preprocessed."
        )
    backend = "python" if requested == "auto" else requested
    LOGGER.info("Preprocessing backend: %s", backend)
    return backend


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
    )


def nipype_settings(config: Config) -> dict[str, dict[str, object]]:
    """Execution settings of the Nipype engine for this run."""
    return {
        "execution": {
            "crashdump_dir": str(config.work_dir / "crash"),
            "crashfile_format": "txt",
            "stop_on_first_crash": False,
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            "create_report": False,
            "parameterize_dirs": False,
            # Our nodes take seconds; Nipype's default 2 s polling dominated small runs.
            "poll_sleep_duration": 0.1,
        },
        "monitoring": {"enabled": False},
        "logging": {
            level: "INFO" if config.verbose else "WARNING"
            for level in ("workflow_level", "interface_level", "utils_level")
        },
    }


class Progress:
    """Nipype status callback: one log line per finished run, and failures."""

    def __init__(self, names: dict[str, str], sink_name: str = "ds_participant") -> None:
        self.names, self.done, self.sink_name = names, 0, sink_name
        self.failed: set[str] = set()

    def __call__(self, node, status: str) -> None:
        run = node.fullname.split(".")[-2]
        if status == "exception":
            self.failed.add(run)
            LOGGER.error("FAILED: %s", node.fullname)
        # Nipype's Linear plugin also reports "end" for nodes it skipped after a failure.
        elif status == "end" and node.name == self.sink_name and run not in self.failed:
            self.done += 1
            LOGGER.info("[%d/%d] %s done", self.done, len(self.names), self.names.get(run, run))


def crash_summary(crash_dir: Path, since: float) -> str:
    """The last line of every crash file written after ``since``."""
    lines = []
    for path in sorted(crash_dir.glob("crash-*.txt")):
        if path.stat().st_mtime < since:
            continue
        text = path.read_text(errors="replace").strip().splitlines()
        node = next((ln.split(":", 1)[1].strip() for ln in text if ln.startswith("Node:")), "?")
        errors = [ln.strip() for ln in text if "Error:" in ln and not ln.startswith(" ")]
        message = errors[-1] if errors else (text[-1] if text else "unknown error")
        lines.append(f"  {node}: {message}\n    (details: {path})")
    return "\n".join(lines)


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
    from bids_harmony.harp.catalog import select_models

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
        from bids_harmony.harp import load_model

        device = resolve_device(config.device)
        for entry in models.values():
            # Fail before any processing on a corrupt or mismatched model.
            load_model(entry["file"], expect=entry["expect"])
            entry["device"] = device
    return models


def run_participant(config: Config) -> int:
    """Run the participant level; returns the exit code."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    from bids_harmony.bids.derivatives import write_dataset_description
    from bids_harmony.workflows.participant import init_participant_wf, wf_name

    study = discover_study(config)
    LOGGER.info("Discovered:\n%s", study.summary())
    backend = resolve_backend(config.preproc)

    if config.omp_nthreads is None:
        parallel_runs = max(1, min(config.nprocs, len(study.runs)))
        config = dataclasses.replace(config, omp_nthreads=max(1, config.nprocs // parallel_runs))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(config.omp_nthreads)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    nipype_config.update_config(nipype_settings(config))
    nipype_logging.update_logging(nipype_config)
    models = participant_models(config, study)
    workflow = init_participant_wf(study, config, backend=backend, models=models)

    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir)

    plugin, plugin_args = (
        "Linear",
        {"status_callback": Progress({wf_name(run.prefix): run.prefix for run in study.runs})},
    )
    if config.nprocs > 1 and len(study.runs) > 1:
        plugin = "MultiProc"
        plugin_args.update(n_procs=config.nprocs, raise_insufficient=False)
    start = time.time()
    LOGGER.info("Running %d run(s) with %s; work dir %s", len(study.runs), plugin, config.work_dir)
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except RuntimeError as err:
        summary = crash_summary(config.work_dir / "crash", start - 1)
        raise ProcessingError(
            f"processing failed for some runs:\n{summary or err}\n"
            "Outputs of runs that finished are complete; rerun with the same --work-dir "
            "to resume after fixing the problem."
        ) from err
    LOGGER.info(
        "Participant level finished in %.1f s; outputs in %s",
        time.time() - start,
        config.output_dir,
    )
    return 0
