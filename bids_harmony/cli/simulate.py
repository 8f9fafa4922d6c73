"""``bids-harmony-simulate``: write a simulated two-site BIDS study, or a cohort study.

Heavy imports (numpy, dipy, nibabel) happen only after the arguments are parsed,
so ``--help`` is instant.  A phantom scenario of the zoo (``--scenario``) can be
changed piece by piece by the phantom options; every value is checked before
anything is written (bad values: exit code 2 and a message naming the option).
``--cohort N`` writes a cohort study instead (:mod:`bids_harmony.simulate.cohort`):
N subjects per site, each scanned once, no phantoms and no traveling subjects.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bids_harmony.cli.suggest import SuggestingArgumentParser

if TYPE_CHECKING:
    from bids_harmony.simulate.zoo import PhantomScenario

SIZES = ("tiny", "demo", "full")
#: Sites of the studies this command writes (source first).
CLI_SITES = ("GE", "Prisma")
#: Default sites of a cohort study (``--cohort-sites``; mean ages 30, 45, 60).
CLI_COHORT_SITES = ("GE", "Prisma", "Skyra")
#: Signal models of the human brains (``bids_harmony.simulate.study.HUMAN_SIGNALS``).
HUMAN_SIGNALS = ("gaussian", "kurtosis")
#: Option of each :class:`~bids_harmony.simulate.zoo.PhantomScenario` field.
FIELD_OPTIONS = {
    "name": "--scenario",
    "designs": "--phantom",
    "protocols": "--phantom-protocols",
    "reposition_mm": "--reposition",
    "reposition_deg": "--reposition",
    "tilt_deg": "--tilt",
    "temperature_delta_c": "--temperature-delta",
    "bias_field": "--bias-field",
    "phantom_slices": "--phantom-slices",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bids-harmony-simulate``."""
    parser = SuggestingArgumentParser(
        prog="bids-harmony-simulate",
        description=(
            "Simulate a two-site diffusion MRI study (diffusion phantoms and traveling "
            "human-like subjects, scan-rescan at a GE SIGNA Premier and a Siemens Prisma "
            "site, with known physical site effects) and write it as a raw BIDS dataset "
            "with its ground truth under sourcedata/simulation. With --cohort N: a "
            "multi-site cohort study for ComBat instead."
        ),
        epilog=(
            "The phantom options change the chosen --scenario (each defaults to the\n"
            "scenario's value); the traveling subjects are the same in every scenario.\n"
            "Examples:\n"
            "  bids-harmony-simulate out --scenario nist-fibre --reposition 10 15 \\\n"
            "      --temperature-delta Prisma=2 --bias-field Prisma=1.5\n"
            "  bids-harmony-simulate cohort --cohort 4 --size tiny   # 12 subjects, 3 sites\n"
            "\n"
            "A cohort study (--cohort N) is for cohort-trained harmonization (ComBat): N human\n"
            "subjects per site, each scanned once (ses-<site>1, acq-multishell), age and sex in\n"
            "participants.tsv, ages confounded with site (site mean ages 30 to 60 years), a\n"
            "known age effect (WM FA falls, MD rises) and region-varying additive and\n"
            "multiplicative site effects on the tissue on top of the physical ones; truth, true\n"
            "age slopes and site-effect parameters in sourcedata/simulation/cohort.json.  It is\n"
            "cohort-only: no phantoms and no traveling subjects (simulate those as a separate\n"
            "dataset); the phantom options do not apply."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "out_dir", metavar="OUT", type=Path, nargs="?", help="dataset directory to write"
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny: seconds, for tests; demo: humans 44x44x28 voxels of 5 mm, phantoms "
        "with the humans' protocol only, under a minute; "
        "full: 146x146x90 voxels at 1.5 mm like the HARP paper (many GB) (default: tiny)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every random quantity (default: 0)"
    )
    parser.add_argument(
        "--force", action="store_true", help="write into a non-empty OUT (files are overwritten)"
    )
    parser.add_argument(
        "--no-noiseless",
        dest="write_noiseless",
        action="store_false",
        help="skip the noise-free image of each run under sourcedata/simulation, written by "
        "default (it can be regenerated)",
    )
    parser.add_argument(
        "--shells",
        nargs="+",
        type=float,
        metavar="B",
        help="b-values (s/mm2) of the multi-shell run of humans and phantoms: 1000 2000 "
        "(default, acq-multishell) or 1000 2000 3000 (a third shell for DKI, "
        "acq-multishell3)",
    )
    parser.add_argument(
        "--human-signal",
        choices=HUMAN_SIGNALS,
        default="gaussian",
        help="signal of the human brains: gaussian (one tensor per compartment) or "
        "kurtosis (WM intra-axonal sticks beside hindered water, slow and fast GM water, "
        "with DKI truth maps per session) (default: gaussian)",
    )
    parser.add_argument(
        "--shells-as-runs",
        action="store_true",
        help="write each human's shells as separate runs (acq-b1000, acq-b2000), each with "
        "its own b0 volumes and TE/TR and a slight head movement (up to 2 degrees, 3 mm) "
        "between the runs, as sites that acquire each shell as its own series; the "
        "participant level combines them for DKI (phantoms unchanged)",
    )
    parser.add_argument(
        "--run-gain",
        type=float,
        metavar="G",
        help="with --shells-as-runs: receiver gain of each later run relative to the first "
        "(e.g. 1.3; default 1), so the runs' b0 scaling differs",
    )
    zoo = parser.add_argument_group(
        "phantom scenario", "a preset of the phantom zoo, then changes to it"
    )
    zoo.add_argument(
        "--scenario",
        metavar="NAME",
        default="default",
        help="phantom scenario of the zoo, see --list-scenarios (default: 'default', "
        "the study without zoo changes)",
    )
    zoo.add_argument(
        "--list-scenarios", action="store_true", help="list the phantom scenarios and exit"
    )
    zoo.add_argument(
        "--phantom",
        metavar="DESIGN[,DESIGN...]",
        help="one design per phantom: mixed, fibre, nist, nist-small "
        "(e.g. nist,fibre for two phantoms)",
    )
    zoo.add_argument(
        "--phantom-protocols",
        metavar="P[,P...]",
        help="phantom protocols: b1000, b2000, multishell, b1500dir30",
    )
    zoo.add_argument(
        "--reposition",
        nargs=2,
        type=float,
        metavar=("MM", "DEG"),
        help="reposition the phantoms in every session: translation up to MM mm per "
        "axis and rotation up to DEG degrees about the bore (z) axis",
    )
    zoo.add_argument(
        "--tilt", type=float, metavar="DEG", help="phantom tilt up to DEG degrees about x and y"
    )
    zoo.add_argument(
        "--temperature-delta",
        action="append",
        metavar="SITE=C",
        help="phantoms at SITE are C degrees Celsius warmer (negative: colder) than "
        "nominal; repeatable",
    )
    zoo.add_argument(
        "--bias-field",
        action="append",
        metavar="SITE=X",
        help="multiply the receive-field inhomogeneity of SITE by X; repeatable",
    )
    zoo.add_argument("--phantom-slices", type=int, metavar="N", help="slices of the phantom images")
    cohort = parser.add_argument_group(
        "cohort study",
        "N subjects per site for ComBat; cohort-only: no phantoms, no traveling subjects",
    )
    cohort.add_argument(
        "--cohort",
        type=int,
        metavar="N",
        help="write a cohort study of N >= 2 subjects per site instead of the two-site study",
    )
    cohort.add_argument(
        "--cohort-sites",
        metavar="SITE[,SITE...]",
        help="the cohort's sites, at least 2 of GE, Prisma, Skyra, youngest subjects "
        f"first (default: {','.join(CLI_COHORT_SITES)})",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log messages (-vv: debug)"
    )
    return parser


def _site_values(
    parser: argparse.ArgumentParser, option: str, items: list[str], unit: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        site, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or site not in CLI_SITES or not math.isfinite(value):
            parser.error(
                f"argument {option}: expected SITE={unit} with SITE one of "
                f"{', '.join(CLI_SITES)} and a number, not {item!r}"
            )
        out[site] = value
    return out


def _scenario(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PhantomScenario:
    """The zoo scenario of ``--scenario`` with the phantom options applied."""
    import dataclasses

    from bids_harmony.simulate import DESIGNS, PROTOCOLS, ZOO, ScenarioError

    def fail(option: str, message: str) -> NoReturn:
        parser.error(f"argument {option}: {message}")

    if args.scenario not in ZOO:
        fail("--scenario", f"unknown scenario {args.scenario!r}; choose from {', '.join(ZOO)}")
    base = ZOO[args.scenario]
    changes: dict[str, Any] = {}
    for option, attr, field, known in (
        ("--phantom", "phantom", "designs", DESIGNS),
        ("--phantom-protocols", "phantom_protocols", "protocols", PROTOCOLS),
    ):
        text = getattr(args, attr)
        if text is None:
            continue
        names = [n.strip() for n in text.split(",")]
        bad = [n for n in names if n not in known]
        if bad:
            fail(
                option,
                f"unknown value(s) {', '.join(map(repr, bad))}; choose from {', '.join(known)}",
            )
        changes[field] = tuple(names)
    if args.reposition is not None:
        if min(args.reposition) < 0:
            fail("--reposition", "MM and DEG are magnitudes and must be >= 0")
        changes["reposition_mm"], changes["reposition_deg"] = args.reposition
    if args.tilt is not None:
        if args.tilt < 0:
            fail("--tilt", "DEG is a magnitude and must be >= 0")
        changes["tilt_deg"] = args.tilt
    for option, attr, field, unit in (
        ("--temperature-delta", "temperature_delta", "temperature_delta_c", "C"),
        ("--bias-field", "bias_field", "bias_field", "X"),
    ):
        if getattr(args, attr):
            merged = dict(getattr(base, field))
            merged.update(_site_values(parser, option, getattr(args, attr), unit))
            if field == "bias_field" and min(merged.values()) < 0:
                fail(option, "X multiplies the inhomogeneity and must be >= 0")
            changes[field] = tuple(merged.items())
    if args.phantom_slices is not None:
        if args.phantom_slices < 1:
            fail("--phantom-slices", "N must be a positive number of slices")
        changes["phantom_slices"] = args.phantom_slices
    if not changes:
        return base
    try:
        return dataclasses.replace(base, name=f"{base.name}+custom", **changes)
    except ScenarioError as err:
        fail(FIELD_OPTIONS.get(err.field, "--scenario"), str(err))


def _shells(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, ...] | None:
    """The checked ``--shells`` (None when not given)."""
    from bids_harmony.simulate.layout import MULTISHELL

    if args.shells is None:
        return None
    shells = tuple(float(b) for b in args.shells)
    if shells not in MULTISHELL:
        known = " or ".join(" ".join(f"{b:g}" for b in key) for key in MULTISHELL)
        parser.error(
            f"argument --shells: no multi-shell protocol with b-values "
            f"{' '.join(f'{b:g}' for b in shells)}; choose {known}"
        )
    return shells


def _cohort_sites(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    """The checked sites of ``--cohort`` (and the other options' absence)."""
    from bids_harmony.simulate.site_effects import VENDORS

    if args.cohort is None:
        parser.error("argument --cohort-sites: only with --cohort N")
    if args.cohort < 2:
        parser.error(f"argument --cohort: N must be >= 2 subjects per site, not {args.cohort}")
    for option, attr in (
        ("--phantom", "phantom"),
        ("--phantom-protocols", "phantom_protocols"),
        ("--reposition", "reposition"),
        ("--tilt", "tilt"),
        ("--temperature-delta", "temperature_delta"),
        ("--bias-field", "bias_field"),
        ("--phantom-slices", "phantom_slices"),
    ):
        if getattr(args, attr) is not None:
            parser.error(f"argument {option}: a cohort study has no phantoms (--cohort)")
    if args.shells is not None or args.human_signal != "gaussian" or args.shells_as_runs:
        option = "--shells" if args.shells is not None else "--human-signal"
        option = "--shells-as-runs" if args.shells_as_runs else option
        parser.error(
            f"argument {option}: not for a cohort study (--cohort): its subjects have "
            "one protocol (acq-multishell) and one tensor per compartment"
        )
    if args.scenario != "default":
        parser.error("argument --scenario: a cohort study has no phantoms (--cohort)")
    if args.cohort_sites is None:
        return CLI_COHORT_SITES
    sites = tuple(s.strip() for s in args.cohort_sites.split(","))
    bad = [s for s in sites if s not in VENDORS]
    if bad:
        parser.error(
            f"argument --cohort-sites: unknown site(s) {', '.join(map(repr, bad))}; "
            f"choose from {', '.join(VENDORS)}"
        )
    if len(set(sites)) != len(sites) or len(sites) < 2:
        parser.error(
            "argument --cohort-sites: expected at least 2 different sites, "
            f"not {args.cohort_sites!r}"
        )
    return sites


def _list_scenarios() -> int:
    from bids_harmony.simulate import ZOO

    width = max(map(len, ZOO))
    for name, scenario in ZOO.items():
        print(f"{name:<{width}}  {scenario.description} [{scenario.summary()}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.list_scenarios:
        return _list_scenarios()
    if args.out_dir is None:
        parser.error("the following arguments are required: OUT")
    cohort = args.cohort is not None or args.cohort_sites is not None
    cohort_sites = _cohort_sites(parser, args) if cohort else ()
    scenario = None if cohort else _scenario(parser, args)
    shells = None if cohort else _shells(parser, args)
    if args.run_gain is not None and not args.shells_as_runs:
        parser.error("argument --run-gain: only with --shells-as-runs")
    if args.run_gain is not None and not (math.isfinite(args.run_gain) and args.run_gain > 0):
        parser.error(f"argument --run-gain: G must be a positive factor, not {args.run_gain}")
    if args.shells_as_runs and shells is not None and len(shells) > 2:
        parser.error("argument --shells-as-runs: only for the shells 1000 2000 (there is no "
                     "single-shell protocol at b=3000)")  # fmt: skip

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
    from bids_harmony.simulate import simulate_cohort, simulate_study

    try:
        if cohort:
            info = simulate_cohort(
                out,
                args.cohort,
                sites=cohort_sites,
                size=args.size,
                seed=args.seed,
                force=args.force,
                write_noiseless=args.write_noiseless,
            )
        else:
            info = simulate_study(
                out,
                size=args.size,
                seed=args.seed,
                force=args.force,
                write_noiseless=args.write_noiseless,
                scenario=scenario,
                shells=shells,
                human_signal=args.human_signal,
                shells_as_runs=args.shells_as_runs,
                run_gain=1.0 if args.run_gain is None else args.run_gain,
            )
    except BidsHarmonyError as err:
        print(f"bids-harmony-simulate: error: {err}", file=sys.stderr)
        return err.exit_code
    print(info.summary())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
