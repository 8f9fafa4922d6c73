"""The README's headline numbers, from phantom-zoo benchmark runs (never typed by hand).

    python benchmarks/harp_zoo.py /tmp/zoo/seed0 --seed 0          # every scenario
    python benchmarks/harp_zoo.py /tmp/zoo/seed1 --seed 1 --scenario default nist-fibre
    python benchmarks/headline.py /tmp/zoo/seed*/harp_zoo.json --readme README.md

Reads the ``harp_zoo.json`` of each run, writes ``benchmarks/results/headline.json``
(per seed and scenario: the share of the white-matter site bias removed by HARP and by
one global scale per SH band) and, with ``--readme``, replaces the table between the
``<!-- headline:start -->`` and ``<!-- headline:end -->`` markers.  The headline is the
median over the scenarios of the seed that ran them all; the spread is the range over
seeds of the scenarios run with several seeds.  ``tests/test_readme.py`` checks that
the README's table is the one this file gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "headline.json"
METRICS = ("fa_WM", "md_WM", "gfa_WM")
METHODS = {"harp_removed": "HARP (this version)", "baseline_removed": "one global scale per band"}
START, END = "<!-- headline:start -->", "<!-- headline:end -->"


def collect(files: list[Path]) -> dict[str, object]:
    """Per seed, per scenario: the removed shares (fractions) of each metric and method."""
    runs: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for path in files:
        for scenario, result in json.loads(path.read_text()).items():
            if "summary" not in result:
                continue
            seed = str(result.get("seed", 0))
            runs.setdefault(seed, {})[scenario] = {
                metric: {key: float(result["summary"][metric][key]) for key in METHODS}
                for metric in METRICS
            }
    return {"size": "tiny", "metrics": list(METRICS), "runs": runs}


def headline(results: dict[str, object]) -> dict[str, object]:
    """Median over scenarios (seed with most scenarios) and the range over seeds."""
    runs = results["runs"]
    seed = max(runs, key=lambda s: (len(runs[s]), -int(s)))
    scenarios = sorted(runs[seed])
    median = {
        key: {m: float(np.median([runs[seed][s][m][key] for s in scenarios])) for m in METRICS}
        for key in METHODS
    }
    spread = {}
    for scenario in scenarios:
        seeds = sorted(s for s in runs if scenario in runs[s])
        if len(seeds) > 1:
            spread[scenario] = {
                "seeds": [int(s) for s in seeds],
                **{
                    m: [min(runs[s][scenario][m]["harp_removed"] for s in seeds),
                        max(runs[s][scenario][m]["harp_removed"] for s in seeds)]
                    for m in METRICS
                },
            }  # fmt: skip
    return {"seed": int(seed), "scenarios": scenarios, "median": median, "spread": spread}


def table(results: dict[str, object]) -> str:
    """The README's markdown block (between the markers)."""
    head = headline(results)
    pct = "{:.0%}".format
    lines = [
        f"WM site bias removed, median over the {len(head['scenarios'])} phantom-zoo "
        f"scenarios (`tiny`, seed {head['seed']}):",
        "",
        "| WM bias removed | FA | MD | GFA |",
        "|---|---|---|---|",
    ]
    for key, name in METHODS.items():
        lines.append(f"| {name} | " + " | ".join(pct(head["median"][key][m]) for m in METRICS)
                     + " |")  # fmt: skip
    runs = results["runs"][str(head["seed"])]
    lines += ["", "Per scenario (seed {}), HARP / one scale per band:".format(head["seed"]), ""]
    lines += ["| scenario | FA | MD | GFA |", "|---|---|---|---|"]
    for scenario in head["scenarios"]:
        cells = " | ".join(
            f"{pct(runs[scenario][m]['harp_removed'])} / "
            f"{pct(runs[scenario][m]['baseline_removed'])}"
            for m in METRICS
        )
        lines.append(f"| `{scenario}` | {cells} |")
    if head["spread"]:
        lines += ["", "Spread of HARP's share over seeds (min–max):", ""]
        lines += ["| scenario | seeds | FA | MD | GFA |", "|---|---|---|---|---|"]
        for scenario, row in head["spread"].items():
            cells = " | ".join(f"{pct(row[m][0])} – {pct(row[m][1])}" for m in METRICS)
            seeds = ", ".join(map(str, row["seeds"]))
            lines.append(f"| `{scenario}` | {seeds} | {cells} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="harp_zoo.json of each run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, help="replace the README's headline table")
    parser.add_argument("--note", default="", help="provenance of the runs, kept in the file")
    args = parser.parse_args(argv)
    results = collect(args.files)
    results["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    block = table(results)
    print(block)
    if args.readme:
        args.readme.write_text(replace_block(args.readme.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
