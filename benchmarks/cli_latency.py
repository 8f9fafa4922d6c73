"""Latency of ``bids-harmony --help`` and ``--version`` (median of repeated runs)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time


def measure(args: list[str], repeats: int = 10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    exe = shutil.which("bids-harmony")
    base = [exe] if exe else [sys.executable, "-m", "bids_harmony.cli.run"]
    for flag in ("--help", "--version"):
        print(f"bids-harmony {flag:10s} median {measure([*base, flag]) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
