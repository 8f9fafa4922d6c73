"""Group level: wall time with --nprocs 1 and 2, and a resume after kill -9.

Needs a study whose participant (and HARP) outputs exist, e.g. the demo's::

    bids-harmony-demo demo_out --size tiny
    python benchmarks/group_parallel.py demo_out/bids demo_out/derivatives

Each run gets its own copy of the derivatives (without ``group/``) and its own
work directory, so nothing is reused between the timed runs.  Prints a Markdown
table: wall time per setting, and whether the tables and maps of every run are
identical (sha256) to those of the ``--nprocs 1`` run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def outputs_digest(group_dir: Path) -> dict[str, str]:
    """sha256 of every table and map the group level wrote (not the report or PNGs)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(group_dir.iterdir())
        if p.suffix in (".tsv", ".gz") or p.name.endswith(".nii.gz")
    }


def fresh(derivatives: Path, root: Path, name: str) -> Path:
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(derivatives, out, ignore=shutil.ignore_patterns("group", "logs"))
    return out


def command(bids: Path, out: Path, work: Path, nprocs: int, target: str) -> list[str]:
    return [sys.executable, "-m", "bids_harmony.cli.run", str(bids), str(out), "group",
            "--target-site", target, "--nprocs", str(nprocs), "-w", str(work)]  # fmt: skip


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids", type=Path)
    parser.add_argument("derivatives", type=Path)
    parser.add_argument("--target-site", default="Prisma")
    parser.add_argument("--root", type=Path, default=Path("bench_group"))
    parser.add_argument("--kill-after", type=float, default=0.5,
                        help="kill -9 after this share of the --nprocs 2 wall time")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    rows, digests = [], {}
    for nprocs in (1, 2):
        out = fresh(args.derivatives, args.root, f"out_n{nprocs}")
        seconds = timed(command(args.bids, out, args.root / f"work_n{nprocs}", nprocs,
                                args.target_site))  # fmt: skip
        digests[nprocs] = outputs_digest(out / "group")
        rows.append((f"--nprocs {nprocs}", seconds))
    # kill -9 part-way, then resume with the same work directory
    out = fresh(args.derivatives, args.root, "out_killed")
    work = args.root / "work_killed"
    shutil.rmtree(work, ignore_errors=True)
    cmd = command(args.bids, out, work, 2, args.target_site)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    time.sleep(args.kill_after * rows[1][1])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rows.append(("resume after kill -9 (--nprocs 2)", timed(cmd)))
    digests["resumed"] = outputs_digest(out / "group")
    print("| run | wall time (s) | tables and maps identical to --nprocs 1 |")
    print("|---|---|---|")
    for (name, seconds), key in zip(rows, (1, 2, "resumed"), strict=True):
        same = digests[key] == digests[1] and bool(digests[1])
        print(f"| {name} | {seconds:.1f} | {'yes' if same else 'NO'} ({len(digests[key])} files) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
