"""Participant level on one ``full``-size session: wall time, peak RSS, per-step split.

Simulates one traveling-subject session at paper size (146×146×90 voxels at
1.5 mm, b=1000 and b=2000 with 60 directions each), writes it as a one-session
BIDS dataset, runs ``bids-harmony ... participant`` in a subprocess (python
backend, no motion correction) and reads the per-step timings the interfaces
record in the work directory.

Usage: ``python benchmarks/participant.py [--root DIR] [--nprocs 2] [--no-gfa]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_session(root: Path, seed: int) -> None:
    from bids_harmony.simulate import bids_writer as bw
    from bids_harmony.simulate.study import object_grid, simulate_session

    data = simulate_session("01", "GE1", size="full", seed=seed, protocols=("multishell",))
    grid = object_grid(data.spec, "full")
    bw.write_dataset_files(
        root,
        name="benchmark",
        description="one full-size simulated session",
        readme="Benchmark dataset written by benchmarks/participant.py\n",
        participants=[{"participant_id": "sub-01", "species": "homo sapiens",
                       "phantom": "false", "age": 30, "sex": "F"}],
    )  # fmt: skip
    for run in data.runs:
        bw.write_dwi_run(root, "01", "GE1", run.acq, run.image, grid.affine,
                         run.bvals, run.bvecs, run.sidecar)  # fmt: skip
    print(f"session: shape {data.runs[0].image.shape}", flush=True)


def step_times(work: Path) -> dict[str, float]:
    """Per-step seconds recorded by the interfaces and Nipype."""
    from nipype.utils.filemanip import loadpkl

    times: dict[str, float] = {}
    for report in work.rglob("preproc_report.json"):
        for step, sec in json.loads(report.read_text())["Timings"].items():
            times[step] = times.get(step, 0.0) + sec
    for shells in work.rglob("shells.json"):
        times["sh_fit"] = sum(entry["seconds"] for entry in json.loads(shells.read_text()))
    for metrics in work.rglob("metrics.json"):
        for entry in json.loads(metrics.read_text()):
            for step, sec in entry["seconds"].items():
                times[step] = times.get(step, 0.0) + sec
    for node in ("preprocess_python", "fit_sh", "metrics", "ds_participant"):
        for result in work.rglob(f"{node}/result_{node}.pklz"):
            times[f"node:{node}"] = loadpkl(result).runtime.duration
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-gfa", action="store_true")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="bh-bench-"))
    bids, out, work = root / "bids", root / "out", root / "work"
    if not (bids / "dataset_description.json").exists():
        start = time.perf_counter()
        write_session(bids, args.seed)
        print(f"simulated + written in {time.perf_counter() - start:.1f} s")
    cmd = [sys.executable, "-m", "bids_harmony.cli.run", str(bids), str(out), "participant",
           "-w", str(work), "--nprocs", str(args.nprocs)]  # fmt: skip
    if args.no_gfa:
        cmd.append("--no-gfa")
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"\nparticipant level, one full session, {args.nprocs} cores")
    print(f"  wall time        {wall:7.1f} s")
    print(f"  peak RSS         {peak_gb:7.2f} GB (largest process)")
    for step, sec in step_times(work).items():
        print(f"  {step:24s} {sec:7.1f} s")


if __name__ == "__main__":
    main()
