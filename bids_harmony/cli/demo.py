"""``bids-harmony-demo``: simulate a two-site study and run every implemented level.

The demo writes ``OUT/bids`` (the simulated raw dataset), ``OUT/derivatives``
(our outputs) and ``OUT/work`` (Nipype working directory) and nothing else.  It
prints the time and disk space it expects (:data:`EXPECTED`, measured), its
progress, and at the end the time of each step and what was produced; the work
directory is removed at the end unless ``--keep-work`` (it is kept when a step
fails, so that a rerun resumes).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("bids_harmony.demo")

#: Site labels of the simulator's scanners as discovery names them.
SOURCE_SITE, TARGET_SITE = "SIGNAPremier", "Prisma"
#: The tiny study has few phantom voxels; keep its training short.  The demo's
#: validation loss is flat after ~300 of the default 1000 iterations (measured).
TRAIN_OPTIONS = {
    "tiny": ["--min-train-voxels", "200", "--harp-iterations", "200"],
    "demo": ["--harp-iterations", "500"],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids-harmony-demo",
        description="Simulate a two-site phantom + traveling-subject study and run "
        "bids-harmony on it.",
    )
    parser.add_argument("out_dir", type=Path, help="folder for the study, outputs and work dir")
    parser.add_argument(
        "--size", choices=("tiny", "demo", "full"), default="demo",
        help="size of the simulated study (see bids-harmony-simulate --help): tiny for a "
        "quick check, demo for meaningful results, full like the HARP paper (many GB) "
        "(default: demo)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0,
        help="seed of the simulation and of every level's random steps (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--nprocs", type=int, default=2,
        help="parallel processes of each bids-harmony level (default: 2)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite an existing study")
    parser.add_argument(
        "--keep-work", action="store_true",
        help="keep the Nipype work directory OUT/work at the end (default: removed once "
        "every step succeeded; it only speeds up a rerun)",
    )  # fmt: skip
    return parser


@dataclass(frozen=True)
class Expected:
    """What a whole demo of one size took, measured end to end on 2 cores."""

    minutes: float  # little else running (load average ~2, the demo's own)
    busy_minutes: float  # sharing the 2 cores with other jobs (load average ~5)
    peak_gb: float  # at the end, before the work directory is removed
    kept_gb: float

    def text(self) -> str:
        return (f"about {self.minutes:.0f} min on 2 free cores ({self.busy_minutes:.0f} min "
                f"when other jobs share them); up to {self.peak_gb:.1f} GB on disk, "
                f"{self.kept_gb:.1f} GB once the work directory is removed")  # fmt: skip


#: Measured with ``/usr/bin/time -v bids-harmony-demo OUT --size SIZE`` on 2 cores
#: (issue 13: the ``demo`` size took 24.5 min and 3.6 GB before its study was made
#: smaller); more cores are faster.
EXPECTED: dict[str, Expected] = {
    "tiny": Expected(1.5, 3, 0.2, 0.1),
    "demo": Expected(7.4, 13, 1.4, 0.8),
}
#: ``full`` was not measured: ~20× the demo's voxels, i.e. hours and tens of GB.
FULL_SIZE_NOTE = "several hours and tens of GB (not measured: ~20x the demo's voxels)"


@dataclass(frozen=True)
class DemoPaths:
    """Every folder the demo writes: all inside ``out``."""

    out: Path
    bids: Path
    derivatives: Path
    work: Path


def demo_paths(out_dir: Path) -> DemoPaths:
    """The demo's folders under ``out_dir`` (made absolute)."""
    out = Path(out_dir).absolute()
    return DemoPaths(out, out / "bids", out / "derivatives", out / "work")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (Nipype's workers)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # fmt: skip


def folder_gb(path: Path) -> float:
    """Disk use of the files under ``path`` in GB (0 when it does not exist)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9


def summarize_outputs(derivatives: Path) -> str:
    """Count the derivative images per kind, for the closing message."""
    counts: dict[str, int] = {}
    for path in sorted(derivatives.rglob("*.nii.gz")):
        kind = path.name.split("_")[-1].replace(".nii.gz", "")
        tokens = [t for t in path.name.split("_") if t.startswith(("desc-", "model-", "param-"))]
        key = "_".join([*tokens, kind])
        counts[key] = counts.get(key, 0) + 1
    return "\n".join(f"  {n:4d} × {key}" for key, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bids_harmony.cli.run import configure_logging
    from bids_harmony.cli.run import main as run_main
    from bids_harmony.simulate import simulate_study

    configure_logging(0)
    paths = demo_paths(args.out_dir)
    bids_dir, derivatives, work = paths.bids, paths.derivatives, paths.work
    expected = EXPECTED.get(args.size)
    print(f"bids-harmony demo ({args.size} study) in {paths.out}\nExpected: "
          + (expected.text() if expected else FULL_SIZE_NOTE), flush=True)  # fmt: skip
    start = time.perf_counter()
    times: list[tuple[str, float, float]] = []  # step, wall s, CPU s
    cpu_start = cpu_seconds()
    if (bids_dir / "dataset_description.json").exists() and not args.force:
        LOGGER.info("[1/5] Reusing the simulated study in %s (--force to regenerate)", bids_dir)
    else:
        LOGGER.info("[1/5] Simulating a '%s' two-site study in %s", args.size, bids_dir)
        simulate_study(bids_dir, size=args.size, seed=args.seed, force=True)
    times.append(("simulate", time.perf_counter() - start, cpu_seconds() - cpu_start))
    common = ["--work-dir", str(work), "--nprocs", str(args.nprocs), "--seed", str(args.seed)]
    steps = [
        ("Participant level (preprocessing, SH per shell, FA/MD/GFA)", ["participant"]),
        (f"Train HARP on the phantoms, {SOURCE_SITE} → {TARGET_SITE}",
         ["train", "--target-site", TARGET_SITE, *TRAIN_OPTIONS.get(args.size, [])]),
        ("Participant level again: harmonize the source-site sessions", ["participant"]),
        ("Group level: scan-rescan vs inter-scanner variability, LinearRISH, report",
         ["group", "--target-site", TARGET_SITE]),
    ]  # fmt: skip
    for number, (title, level) in enumerate(steps, start=2):
        LOGGER.info("[%d/%d] %s", number, len(steps) + 1, title)
        step_start, step_cpu = time.perf_counter(), cpu_seconds()
        code = run_main([str(bids_dir), str(derivatives), *level, *common])
        times.append((level[0], time.perf_counter() - step_start, cpu_seconds() - step_cpu))
        if code != 0:
            LOGGER.error("%s failed (exit code %d); the work directory %s is kept: rerun the "
                         "same command to resume", level[0], code, work)  # fmt: skip
            return code
    peak = folder_gb(paths.out)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{name} {sec:.0f} s (CPU {cpu:.0f} s)" for name, sec, cpu in times)
          + ".")
    print(f"Disk: {peak:.2f} GB at the end, {folder_gb(paths.out):.2f} GB kept "
          + (f"(work directory kept: {work})" if args.keep_work
             else "(work directory removed; --keep-work keeps it)"))  # fmt: skip
    print(f"Simulated study:   {bids_dir}")
    print(f"Derivatives:       {derivatives}")
    print("Outputs:\n" + summarize_outputs(derivatives))
    print(f"HARP model:        {derivatives / 'models'}")
    print(f"Group report:      {derivatives / 'group' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
