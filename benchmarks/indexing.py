"""Time BIDS discovery on a synthetic dataset of N runs.

Builds ``N`` tiny runs (8x8x4x8 int16 images with ``.bval``, ``.bvec`` and a JSON
sidecar; by default 100 participants x 5 sessions) in a temporary folder, then times,
each repeated (median reported):

- the pre-scan alone (:func:`bids_harmony.bids.scan.scan_dataset`: one walk, every
  JSON parsed);
- the pybids index alone (:func:`bids_harmony.bids.indexing.index_dataset`);
- :func:`bids_harmony.bids.discovery.discover` end to end, with the per-run checks
  and, when ``discover`` accepts ``checks=False``, without them.

Run from the repository root::

    python benchmarks/indexing.py            # N=500
    python benchmarks/indexing.py --runs 2000 --sessions 2

It prints a table and writes it to ``benchmarks/results/indexing.json``.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bids
import nibabel as nb
import numpy as np

from bids_harmony.bids.discovery import discover
from bids_harmony.bids.indexing import check_dataset, index_dataset
from bids_harmony.bids.scan import scan_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "indexing.json"
SHAPE = (8, 8, 4)
N_B0, N_DIRS, BVAL = 1, 7, 1000.0


def run_files() -> dict[str, bytes]:
    """The contents of one run's files, by extension; every run gets the same bytes."""
    rng = np.random.default_rng(0)
    k = np.arange(N_DIRS) + 0.5
    z = 1 - k / N_DIRS  # upper hemisphere, well spread: a usable shell for the checks
    phi = np.pi * (3 - np.sqrt(5)) * k
    dirs = np.column_stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z])
    bvals = np.r_[np.zeros(N_B0), np.full(N_DIRS, BVAL)]
    bvecs = np.vstack([np.zeros((N_B0, 3)), dirs])
    signal = np.where(bvals > 0, 400.0, 1000.0)
    data = signal + rng.normal(0, 20, (*SHAPE, bvals.size))
    image = nb.Nifti1Image(data.astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    sidecar = {
        "Manufacturer": "Siemens",
        "ManufacturersModelName": "Prisma",
        "MagneticFieldStrength": 3,
        "EchoTime": 0.08,
        "RepetitionTime": 3.2,
        "PhaseEncodingDirection": "j-",
    }
    return {
        ".nii.gz": gzip.compress(image.to_bytes(), compresslevel=1),
        ".bval": (" ".join(f"{b:g}" for b in bvals) + "\n").encode(),
        ".bvec": ("\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n").encode(),
        ".json": json.dumps(sidecar).encode(),
    }


def build_dataset(root: Path, n_runs: int, sessions_per_subject: int) -> tuple[int, int]:
    """Write the dataset; return (participants, runs written)."""
    files = run_files()
    n_subjects = math.ceil(n_runs / sessions_per_subject)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "indexing benchmark", "BIDSVersion": "1.9.0"})
    )
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s:04d}\n" for s in range(n_subjects))
    )
    written = 0
    for subject in range(n_subjects):
        for session in range(sessions_per_subject):
            if written == n_runs:
                break
            folder = root / f"sub-{subject:04d}" / f"ses-{session:02d}" / "dwi"
            folder.mkdir(parents=True)
            stem = f"sub-{subject:04d}_ses-{session:02d}_dwi"
            for extension, content in files.items():
                (folder / (stem + extension)).write_bytes(content)
            written += 1
    return n_subjects, written


def median_time(function: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


FULL_SHAPE = (96, 96, 60, 100)


def time_full_size(n_runs: int, repeats: int) -> dict[str, object]:
    """The voxel check (:func:`~bids_harmony.bids.checks.check_data`) on full-size runs.

    A 2 mm whole-brain protocol with 100 volumes, int16 as scanners write it; the
    check streams the file once, as loading it for processing does.
    """
    from bids_harmony.bids.checks import check_data

    rng = np.random.default_rng(0)
    bvals = np.r_[np.zeros(10), np.full(FULL_SHAPE[3] - 10, BVAL)]
    with tempfile.TemporaryDirectory(prefix="bids_harmony_fullsize_") as tmp:
        paths = []
        for k in range(n_runs):
            data = rng.integers(0, 1000, FULL_SHAPE, dtype=np.int16)
            paths.append(Path(tmp) / f"run{k}.nii.gz")
            nb.save(nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), paths[-1])
        check_s, _ = median_time(lambda: [check_data(p, bvals) for p in paths], repeats)
        load_s, _ = median_time(lambda: [np.asarray(nb.load(p).dataobj) for p in paths], repeats)
        size = sum(p.stat().st_size for p in paths) / n_runs / 1e6
    return {
        "shape": list(FULL_SHAPE),
        "dtype": "int16",
        "file_mb": round(size, 1),
        "check_data_s": round(check_s / n_runs, 3),
        "load_s": round(load_s / n_runs, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="number of runs (default 500)")
    parser.add_argument("--sessions", type=int, default=5, help="sessions per participant")
    parser.add_argument("--repeats", type=int, default=3, help="timings per configuration")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument(
        "--full-size",
        type=int,
        default=1,
        help="also time the voxel check on this many full-size runs (0: skip)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    accepts_checks = "checks" in inspect.signature(discover).parameters
    if not accepts_checks:
        print(
            "note: discover() has no 'checks' keyword in this version; only the "
            "configuration 'discover (default)' is timed."
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bids_harmony_indexing_") as tmp:
        root = Path(tmp) / "bids"
        root.mkdir()
        start = time.perf_counter()
        n_subjects, n_runs = build_dataset(root, args.runs, args.sessions)
        build_s = time.perf_counter() - start
        print(f"dataset: {n_runs} runs, {n_subjects} participants, written in {build_s:.1f} s")

        root, description = check_dataset(root)
        scan = scan_dataset(root)
        configurations: list[tuple[str, Callable[[], object]]] = [
            ("pre-scan only", lambda: scan_dataset(root)),
            ("pybids index only", lambda: index_dataset(root, description, scan=scan)),
        ]
        if accepts_checks:
            configurations += [
                ("discover, checks", lambda: discover(root, checks=True)),
                ("discover, no data check", lambda: discover(root, check_data=False)),
                ("discover, no checks", lambda: discover(root, checks=False)),
            ]
        else:
            configurations.append(("discover (default)", lambda: discover(root)))
        found = len(discover(root, **({"checks": False} if accepts_checks else {})).runs)
        if found != n_runs:
            print(f"warning: discover found {found} runs, {n_runs} were written")
        for name, function in configurations:
            median, times = median_time(function, args.repeats)
            rows.append(
                {
                    "configuration": name,
                    "runs": n_runs,
                    "median_s": round(median, 4),
                    "per_run_ms": round(1000 * median / n_runs, 3),
                    "times_s": [round(t, 4) for t in times],
                }
            )

    full_size = time_full_size(args.full_size, args.repeats) if args.full_size else None
    print(f"\n{'runs':>6}  {'configuration':<24} {'median s':>9} {'per run ms':>11}")
    for row in rows:
        print(
            f"{row['runs']:>6}  {row['configuration']:<24} {row['median_s']:>9.3f} "
            f"{row['per_run_ms']:>11.2f}"
        )
    if full_size:
        print(
            f"\nfull-size run {full_size['shape']} {full_size['dtype']} "
            f"({full_size['file_mb']:.0f} MB .nii.gz): data check "
            f"{full_size['check_data_s']:.2f} s per run; loading the image (which "
            f"processing does anyway) {full_size['load_s']:.2f} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "runs": n_runs,
                "participants": n_subjects,
                "sessions_per_participant": args.sessions,
                "repeats": args.repeats,
                "image_shape": [*SHAPE, N_B0 + N_DIRS],
                "results": rows,
                "full_size": full_size,
                "python": platform.python_version(),
                "pybids": bids.__version__,
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
