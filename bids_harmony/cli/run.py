"""``bids-harmony`` entry point: parse, check, discover, build, run.

Exit codes: 0 success, 1 a processing step failed, 2 bad input or
configuration (the message names the file and the problem), 3 an analysis level
this version does not provide yet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from bids_harmony.cli.parser import build_parser
from bids_harmony.errors import BidsHarmonyError, OutputDirectoryError
from bids_harmony.workflows.locking import release_locks

LOGGER = logging.getLogger("bids_harmony.cli")


def configure_logging(verbosity: int) -> None:
    """Our messages at INFO (DEBUG with -vv); Nipype's only when asked for.

    A handler goes on the package logger, not the root, so embedding
    applications (and pytest's log capture) keep their own configuration.  It
    names the run in messages logged while a node processes one, and shows
    the first 3 warnings of each kind (all with -vv), counting the rest for
    :func:`summarize_repeats` (:mod:`bids_harmony.logs`).
    """
    import atexit

    from bids_harmony.logs import RepeatFilter, RunNameFilter

    logger = logging.getLogger("bids_harmony")
    logger.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    handler = next((h for h in logger.handlers if getattr(h, "_bids_harmony", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", datefmt="%H:%M:%S")
        )
        handler._bids_harmony = True  # type: ignore[attr-defined]
        repeats = RepeatFilter()
        atexit.register(repeats.close)
        handler.addFilter(repeats)  # first: it groups by the template without the run
        handler.addFilter(RunNameFilter())
        logger.addHandler(handler)
    for repeat_filter in handler.filters:
        if isinstance(repeat_filter, RepeatFilter):
            repeat_filter.max_shown = sys.maxsize if verbosity >= 2 else 3
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    # Node failures are summarized by us; Nipype's own report is a traceback.
    logging.getLogger("nipype.workflow").setLevel(
        logging.INFO if verbosity >= 1 else logging.CRITICAL
    )


def summarize_repeats() -> None:
    """Log one line per kind of warning shown only in part (end of a level)."""
    from bids_harmony.logs import RepeatFilter

    for handler in logging.getLogger("bids_harmony").handlers:
        for repeat_filter in handler.filters:
            if isinstance(repeat_filter, RepeatFilter):
                repeat_filter.flush(LOGGER)


def check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """Refuse an output inside the raw dataset (except ``derivatives/``) or unwritable."""
    bids_dir, output_dir = bids_dir.resolve(), output_dir.resolve()
    if output_dir == bids_dir or (
        output_dir.is_relative_to(bids_dir)
        and not output_dir.is_relative_to(bids_dir / "derivatives")
    ):
        raise OutputDirectoryError(
            f"output directory {output_dir} is inside the input dataset {bids_dir}; outputs "
            "would be mixed with raw data. Use a directory outside it, or "
            f"{bids_dir / 'derivatives' / 'bids_harmony'}."
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirectoryError(f"output path {output_dir} exists and is not a directory.")
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirectoryError(
            f"cannot create output directory {output_dir}: {existing} is not a directory."
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        if err.errno == errno.EROFS:
            raise OutputDirectoryError(
                f"output directory {output_dir} is on a read-only file system. Use a "
                "writable location; in a container, bind it without ':ro' "
                "(docker run -v /host/out:/out, apptainer run -B /host/out:/out)."
            ) from err
        try:
            owner = f"{existing} belongs to uid {existing.stat().st_uid}"
        except OSError:
            owner = f"{existing} cannot be inspected"
        raise OutputDirectoryError(
            f"output directory {output_dir} is not writable ({err.strerror}): this process "
            f"runs as uid {os.getuid()} and {owner}. Choose a writable location or fix its "
            "permissions; in Docker run as your own user (docker run -u $(id -u):$(id -g) "
            "...), in Apptainer/Singularity bind a directory you own."
        ) from err


def config_from_args(args) -> object:
    """Build the frozen run configuration from parsed arguments."""
    from bids_harmony.config import Config

    return Config(
        bids_dir=args.bids_dir.absolute(),
        output_dir=args.output_dir.absolute(),
        analysis_level=args.analysis_level,
        work_dir=args.work_dir.absolute(),
        participant_label=tuple(args.participant_label),
        session_label=tuple(args.session_label),
        bids_filter_file=args.bids_filter_file,
        skip_bids_validation=args.skip_bids_validation,
        ignore_checks=tuple(args.ignore_check),
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        plugin_file=args.use_plugin,
        preproc=args.preproc,
        denoise=args.denoise,
        remove_gibbs=args.remove_gibbs,
        motion_correction=args.motion_correction,
        sh_order=args.sh_order,
        b_tolerance=args.b_tolerance,
        b0_threshold=args.b0_threshold,
        gfa=args.gfa,
        dki=args.dki,
        site_map=args.site_map,
        phantom_label=tuple(args.phantom_label),
        target_site=args.target_site,
        source_site=args.source_site,
        models=tuple(args.models),
        method=args.method,
        methods=tuple(args.methods or ()),
        device=args.device,
        harp_recipe=args.harp_recipe,
        harp_iterations=args.harp_iterations,
        voxel_rule=args.voxel_rule,
        c00_window=tuple(args.c00_window),
        phantom_erode=args.phantom_erode,
        template=args.template,
        group_transform=args.group_transform,
        min_train_voxels=args.min_train_voxels,
        combat_covariates=tuple(args.combat_covariates),
        combat_variant=args.combat_variant,
        combat_eb=args.combat_eb,
        combat_mean_only=args.combat_mean_only,
        combat_smooth=tuple(
            args.combat_smooth or (["age"] if args.combat_variant == "gam" else [])
        ),
        combat_categorical=tuple(args.combat_categorical),
        combat_atlas=args.combat_atlas,
        dki_max_minutes=args.dki_max_minutes,
        dki_max_epochs=args.dki_max_epochs,
        seed=args.seed,
        verbose=args.verbose,
    )


def refuse_unavailable_methods(config) -> None:
    """Option combinations that cannot work: exit 2, before any file is written."""
    if config.combat_smooth and config.combat_variant != "gam" and config.method == "combat":
        raise BidsHarmonyError(
            "--combat-smooth needs --combat-variant gam (smooth covariate effects)."
        )
    missing = [c for c in config.combat_smooth if c not in config.combat_covariates]
    if config.method == "combat" and config.combat_variant == "gam" and missing:
        raise BidsHarmonyError(
            f"--combat-smooth {' '.join(missing)}: not among --combat-covariates "
            f"({' '.join(config.combat_covariates) or 'none'}); add "
            f"'--combat-covariates {' '.join(missing)}'."
        )


def _terminated(signum: int, frame: object) -> None:
    LOGGER.error("terminated (signal %d); rerun with the same --work-dir to resume", signum)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run ``bids-harmony``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        # `docker stop` and schedulers send SIGTERM: exit through `finally` so the
        # locks are released.
        signal.signal(signal.SIGTERM, _terminated)
    try:
        config = config_from_args(args)
        refuse_unavailable_methods(config)
        check_output_dir(config.bids_dir, config.output_dir)
        if config.plugin_file is not None:
            from bids_harmony.workflows.execution import load_plugin_file

            load_plugin_file(config.plugin_file)  # a bad file is an error before any work
        if config.analysis_level == "group":
            from bids_harmony.workflows.group import run_group

            return run_group(config)
        if config.analysis_level == "train" and config.method == "combat":
            from bids_harmony.workflows.train_combat import run_train_combat

            return run_train_combat(config)
        if config.analysis_level == "train" and config.method == "dki-cnn":
            from bids_harmony.workflows.train_dki import run_train_dki

            return run_train_dki(config)
        if config.analysis_level == "train" and config.method == "rish":
            from bids_harmony.workflows.train_rish import run_train_rish

            return run_train_rish(config)
        if config.analysis_level == "train":
            from bids_harmony.workflows.train import run_train

            return run_train(config)
        from bids_harmony.workflows.run import run_participant

        return run_participant(config)
    except BidsHarmonyError as err:
        LOGGER.error("%s", err)
        return err.exit_code
    except KeyboardInterrupt:
        LOGGER.error("interrupted; rerun with the same --work-dir to resume")
        return 130
    finally:
        # A backstop: each level releases its own locks (locking.releases_locks).
        release_locks()
        summarize_repeats()


if __name__ == "__main__":
    sys.exit(main())
