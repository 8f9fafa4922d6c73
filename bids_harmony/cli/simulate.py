"""``bids-harmony-simulate``: write a simulated two-site BIDS study.

Heavy imports (numpy, dipy, nibabel) happen only after the arguments are parsed,
so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

SIZES = ("tiny", "demo", "full")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bids-harmony-simulate``."""
    parser = argparse.ArgumentParser(
        prog="bids-harmony-simulate",
        description=(
            "Simulate a two-site diffusion MRI study (diffusion phantoms and traveling "
            "human-like subjects, scan-rescan at a GE SIGNA Premier and a Siemens Prisma "
            "site, with known physical site effects) and write it as a raw BIDS dataset "
            "with its ground truth under sourcedata/simulation."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT", type=Path, help="dataset directory to write")
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny: seconds, for tests; demo: ~64x64x40 voxels, under a minute; "
        "full: 146x146x90 voxels at 1.5 mm like the HARP paper (many GB)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random quantity")
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT (files are overwritten)"
    )
    parser.add_argument(
        "--no-noiseless",
        dest="write_noiseless",
        action="store_false",
        help="do not write the noise-free image of each run (they can be regenerated)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log messages (-vv: debug)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

    from bids_harmony.errors import BidsHarmonyError

    out = args.out_dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        kind = "is not empty" if out.is_dir() else "exists and is not a directory"
        print(
            f"bids-harmony-simulate: error: output {out} {kind}; choose a new or empty "
            "directory, or pass --force to write into it.",
            file=sys.stderr,
        )
        return 2
    from bids_harmony.simulate import simulate_study

    try:
        info = simulate_study(
            out,
            size=args.size,
            seed=args.seed,
            force=args.force,
            write_noiseless=args.write_noiseless,
        )
    except BidsHarmonyError as err:
        print(f"bids-harmony-simulate: error: {err}", file=sys.stderr)
        return err.exit_code
    print(info.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
