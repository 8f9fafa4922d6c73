"""How Nipype runs a workflow: engine settings, plugin choice, progress, crash reports.

Plugins
-------
``--nprocs 1`` runs nodes one by one (``Linear``), more runs them in parallel
(``MultiProc``), both in the run-by-run order of
:mod:`bids_harmony.workflows.scheduling`, with the console lines of
:mod:`bids_harmony.workflows.progress`.  ``--use-plugin FILE`` takes a YAML
file in fMRIPrep's format for clusters::

    plugin: SLURM
    plugin_args:
      sbatch_args: --time=02:00:00 --mem=16G
      max_jobs: 50

Crash files
-----------
Every run of a level gets ``OUT/logs/<timestamp>-<id>/``, where Nipype writes one
``crash-*.txt`` per failed node; on failure ``crash_summary.txt`` there lists the
failed runs, the node, the error and, for command-line tools such as FSL's, the
tool's own error output.  ``logs/`` is listed in the dataset's ``.bidsignore``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from bids_harmony.errors import BidsHarmonyError, InputDatasetError
from bids_harmony.workflows.progress import Progress as Progress  # re-exported
from bids_harmony.workflows.progress import StepProgress, run_of

LOGGER = logging.getLogger(__name__)

LOGS_DIR = "logs"

#: Execution plugins of Nipype (``nipype.pipeline.plugins``) a plugin file may name.
PLUGINS = (
    "Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SLURMGraph", "SGE", "SGEGraph",
    "PBS", "PBSGraph", "LSF", "Condor", "DAGMan", "OAR", "IPython", "Debug",
)  # fmt: skip


class ProcessingError(BidsHarmonyError, RuntimeError):
    """A workflow node failed; the message summarizes the crash files."""

    exit_code = 1


def nipype_settings(crash_dir: Path, verbose: int = 0) -> dict[str, dict[str, object]]:
    """Execution settings of the Nipype engine for this run.

    Without ``-v`` Nipype's workflow logger is silent: a failed node is reported by
    :class:`Progress` and :func:`crash_summary`, its traceback is in the crash file,
    and the console shows no traceback.
    """
    return {
        "execution": {
            "crashdump_dir": str(crash_dir),
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
            "workflow_level": "INFO" if verbose else "CRITICAL",
            "interface_level": "INFO" if verbose else "WARNING",
            "utils_level": "INFO" if verbose else "WARNING",
        },
    }


def new_log_dir(output_dir: Path) -> Path:
    """``OUT/logs/<YYYYmmdd-HHMMSS>-<8 hex>``: one folder per invocation (not created)."""
    return Path(output_dir) / LOGS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def start_engine(output_dir: Path, verbose: int = 0) -> Path:
    """Nipype's settings for this invocation, with its own log folder (returned).

    Call it before building any workflow: a Workflow copies the engine settings
    when it is created (with Nipype's defaults, ``remove_unnecessary_outputs``
    would delete the transforms our nodes pass on inside dataclasses).
    """
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    log_dir = new_log_dir(output_dir)
    nipype_config.update_config(nipype_settings(log_dir, verbose))
    nipype_logging.update_logging(nipype_config)
    return log_dir


def level_workflow(config: Any, name: str) -> tuple[Any, Path]:
    """The top workflow of a level and this invocation's log folder.

    The engine settings come first (:func:`start_engine`); the work folder is per
    release (``WORK/bids_harmony_<version>``): Nipype caches by node inputs, not by
    our code.
    """
    from nipype.pipeline import engine as pe

    from bids_harmony import __version__

    log_dir = start_engine(config.output_dir, config.verbose)
    base_dir = Path(config.work_dir) / f"bids_harmony_{__version__.replace('.', '_')}"
    return pe.Workflow(name=name, base_dir=str(base_dir)), log_dir


def ensure_bidsignore(output_dir: Path) -> None:
    """Add ``logs/`` to ``OUT/.bidsignore`` (the validator would flag crash files)."""
    from bids_harmony.bids.io import write_text

    path = Path(output_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    if f"{LOGS_DIR}/" not in lines:
        write_text(path, "\n".join([*lines, f"{LOGS_DIR}/"]) + "\n")


def load_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    """Read a ``--use-plugin`` YAML file.

    Returns
    -------
    plugin : str
    plugin_args : dict

    Raises
    ------
    InputDatasetError
        Unreadable YAML, not a mapping, no or unknown ``plugin``, or
        ``plugin_args`` that is not a mapping (the message names the file).
    """
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise InputDatasetError(f"--use-plugin {path}: cannot read the YAML ({err}).") from err
    example = "e.g.\n  plugin: SLURM\n  plugin_args:\n    sbatch_args: --time=2:00:00"
    if not isinstance(content, dict) or "plugin" not in content:
        raise InputDatasetError(f"--use-plugin {path}: needs a 'plugin' key, {example}")
    plugin = str(content["plugin"])
    known = {name.lower(): name for name in PLUGINS}
    if plugin.lower() not in known:
        raise InputDatasetError(
            f"--use-plugin {path}: unknown plugin {plugin!r}; Nipype has {', '.join(PLUGINS)}."
        )
    args = content.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise InputDatasetError(f"--use-plugin {path}: 'plugin_args' must be a mapping, {example}")
    unknown = set(content) - {"plugin", "plugin_args"}
    if unknown:
        LOGGER.warning("--use-plugin %s: ignoring keys %s", path, ", ".join(sorted(unknown)))
    return known[plugin.lower()], dict(args)


def choose_plugin(
    plugin_file: Path | None, nprocs: int, n_runs: int, callback: Any
) -> tuple[str, dict[str, Any]]:
    """The Nipype plugin and its arguments for this run (see the module docstring)."""
    if plugin_file is not None:
        plugin, args = load_plugin_file(plugin_file)
        if plugin in ("MultiProc", "LegacyMultiProc"):
            args.setdefault("n_procs", nprocs)
            args.setdefault("raise_insufficient", False)
    elif nprocs > 1 and n_runs > 1:
        plugin, args = "MultiProc", {"n_procs": nprocs, "raise_insufficient": False}
    else:
        plugin, args = "Linear", {}
    # Graph plugins submit everything at once and never call back.
    if not plugin.endswith("Graph"):
        args["status_callback"] = callback
    return plugin, args


def _tool_error(lines: list[str], max_lines: int = 6) -> list[str]:
    """The last lines a command-line tool wrote to stderr, from a Nipype crash file.

    Nipype ≥ 1.8 writes them under ``Stderr:`` (tab-indented, up to
    ``Traceback:``); older releases under ``Standard error:`` (up to ``Return code:``).
    """
    starts = [i for i, ln in enumerate(lines) if ln.strip() in ("Stderr:", "Standard error:")]
    if not starts:
        return []
    indented = lines[starts[-1]].strip() == "Stderr:"
    stderr = []
    for line in lines[starts[-1] + 1 :]:
        if line.startswith("Return code:") or (indented and line and not line[0].isspace()):
            break
        if line.strip() and line.strip() != "<empty>":
            stderr.append(line.strip())
    return stderr[-max_lines:]


def run_steps(
    workflow: Any, config: Any, log_dir: Path, n_steps: int, steps: dict[str, str]
) -> Any:
    """Run a train or group workflow with the plugin the settings ask for.

    ``--use-plugin`` or, with ``--nprocs`` > 1, MultiProc; one progress line per
    finished step (:class:`StepProgress`).  Returns the execution graph.
    """
    plugin, plugin_args = choose_plugin(config.plugin_file, config.nprocs, n_steps,
                                        StepProgress(n_steps, steps))  # fmt: skip
    LOGGER.info("%d step(s) with %s; work dir %s", n_steps, plugin, config.work_dir)
    return run_workflow(workflow, plugin=plugin, plugin_args=plugin_args, log_dir=log_dir,
                        names={})  # fmt: skip


def crash_summary(crash_dir: Path, names: dict[str, str] | None = None) -> str:
    """A readable list of the failed nodes in ``crash_dir``'s crash files.

    Each entry names the run (its BIDS prefix when ``names`` maps workflow names
    to prefixes), the node, the last error line and, for a command-line tool,
    the last lines of its standard error; then the crash file.
    """
    names = names or {}
    entries = []
    for path in sorted(Path(crash_dir).glob("crash-*.txt")):
        lines = path.read_text(errors="replace").splitlines()
        node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), "?")
        run = run_of(node, names)
        ours = [m for ln in lines if (m := INPUT_ERROR.match(ln.strip()))]
        errors = [ln.strip() for ln in lines if "Error:" in ln and not ln.startswith(" ")]
        if ours:  # our own message, not Nipype's wrapper around it
            message = f"{ours[-1]['name']}: {ours[-1]['message']}"
        else:
            message = errors[-1] if errors else (lines[-1].strip() if lines else "unknown error")
        entry = [f"{names.get(run, run) or '?'}: node {node.split('.')[-1]} failed", f"  {message}"]
        tool = _tool_error(lines)
        if tool:
            entry.append("  tool error output:")
            entry += [f"    {line}" for line in tool]
        entry.append(f"  crash file: {path}")
        entries.append("\n".join(entry))
    return "\n".join(entries)


INPUT_ERROR = re.compile(r"^bids_harmony\.errors\.(?P<name>\w+): (?P<message>.*)$")
"""The last line of a node's traceback when one of our errors stopped it."""


def input_error_in_crashes(crash_dir: Path) -> bool:
    """Whether every failed node in ``crash_dir`` was stopped by bad input.

    Bad input is one of our exit-2 errors (:mod:`bids_harmony.errors`) raised in the
    node: something only processing can find (e.g. no brain voxel in the mask).
    """
    from bids_harmony import errors

    found = False
    for path in sorted(Path(crash_dir).glob("crash-*.txt")):
        names = [m["name"] for ln in path.read_text(errors="replace").splitlines()
                 if (m := INPUT_ERROR.match(ln.strip()))]  # fmt: skip
        kind = getattr(errors, names[-1], None) if names else None
        if not (isinstance(kind, type) and issubclass(kind, BidsHarmonyError)
                and kind.exit_code == 2):  # fmt: skip
            return False
        found = True
    return found


def run_workflow(
    workflow: Any,
    *,
    plugin: str,
    plugin_args: dict[str, Any],
    log_dir: Path,
    names: dict[str, str],
) -> Any:
    """Run a Nipype workflow; on failure write ``crash_summary.txt`` and raise.

    Returns the execution graph (its nodes' ``result`` hold their outputs).

    Raises
    ------
    ProcessingError
        Some nodes failed; the message is the crash summary.
    """
    from bids_harmony.workflows.scheduling import make_runner

    try:
        return workflow.run(plugin=make_runner(plugin, plugin_args))
    except RuntimeError as err:
        summary = crash_summary(log_dir, names) if log_dir.is_dir() else ""
        if summary:
            from bids_harmony.bids.io import write_text

            write_text(log_dir / "crash_summary.txt", summary + "\n")
        bad_input = log_dir.is_dir() and input_error_in_crashes(log_dir)
        failure = ProcessingError(
            ("bad input found during processing" if bad_input else "processing failed")
            + f":\n{summary or err}\n"
            + (f"Summary and crash files: {log_dir}\n" if summary else "")
            + "Outputs of runs that finished are complete; rerun with the same --work-dir "
            "to resume after fixing the problem."
        )
        if bad_input:
            failure.exit_code = 2  # the input's fault, as when the checks find it
        raise failure from err
