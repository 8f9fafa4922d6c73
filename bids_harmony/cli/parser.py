"""Command-line parser of ``bids-harmony`` (BIDS-Apps convention).

Imports nothing heavy so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bids_harmony import __version__
from bids_harmony.bids.check_names import OVERRIDABLE as OVERRIDABLE_CHECKS
from bids_harmony.cli.suggest import SuggestingArgumentParser
from bids_harmony.methods.names import COMBAT_VARIANTS, METHOD_NAMES

LEVELS = ("participant", "train", "group")


def _label(prefix: str):
    def strip(value: str) -> str:
        value = value.strip()
        if value.startswith(prefix):
            value = value[len(prefix) :]
        if not value or not value.isalnum():
            raise argparse.ArgumentTypeError(
                f"'{value}' is not a BIDS label (letters and digits only, optionally "
                f"prefixed with '{prefix}')"
            )
        return value

    return strip


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return number


def _sh_order(value: str) -> int:
    order = int(value)
    if order not in (2, 4, 6, 8):
        raise argparse.ArgumentTypeError("SH order must be one of 2, 4, 6, 8")
    return order


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return path.absolute()


class _ListMethods(argparse.Action):
    """``--list-methods``: print the registered methods and exit (like ``--version``)."""

    def __init__(
        self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None
    ):  # noqa: A002 - argparse's own keyword
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from bids_harmony.methods.registry import describe_methods

        print(describe_methods())
        parser.exit()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append ``(default: X)`` to an option's help only where it informs.

    Not to flags (``--no-gfa (default: True)`` reads as "GFA off"), not to
    options whose default is None or an empty list (the help says what happens
    without them), and not where the help already states its default in words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.nargs == 0
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.default == []
            or "default" in text
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; see ``bids-harmony --help``."""
    parser = SuggestingArgumentParser(
        prog="bids-harmony",
        description=(
            "Harmonize multi-site diffusion MRI with HARP, a network trained on phantom "
            "scans only. Levels: 'participant' preprocesses each dMRI run, fits "
            "spherical harmonics per shell and computes FA/MD/GFA; 'train' learns a HARP "
            "model per site pair from phantom sessions; 'group' evaluates scanner "
            "variability."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="root of the output derivatives dataset")
    parser.add_argument("analysis_level", choices=LEVELS, help="processing stage to run")
    parser.add_argument("--version", action="version", version=f"bids-harmony {__version__}")
    parser.add_argument(
        "--list-methods", action=_ListMethods,
        help="list the harmonization methods (what each trains from and harmonizes) and exit",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )

    sel = parser.add_argument_group("Selecting data")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        type=_label("sub-"),
        default=[],
        metavar="LABEL",
        help="participants to process ('01' or 'sub-01'); default: all",
    )
    sel.add_argument(
        "--session-label",
        nargs="+",
        type=_label("ses-"),
        default=[],
        metavar="LABEL",
        help="sessions to process ('GE1' or 'ses-GE1'); default: all",
    )
    sel.add_argument(
        "--bids-filter-file",
        type=_existing_file,
        metavar="FILE",
        help='JSON of pybids filters for the dMRI query, e.g. {"dwi": {"acquisition": "b1000"}}',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        help="index the dataset without pybids' BIDS validation",
    )
    sel.add_argument(
        "--ignore-check",
        action="append",
        default=[],
        choices=OVERRIDABLE_CHECKS,
        metavar="CHECK",
        help="turn an input check's error into a warning (repeatable): 'affine' (no "
        "orientation in the header: trust the voxel axes) or 'bvalue-range' (b-values "
        "above 30000 s/mm² are real). The README lists every check",
    )
    sel.add_argument(
        "--site-map",
        type=_existing_file,
        metavar="TSV",
        help="TSV with participant_id, session_id, site; overrides sidecar scanner identity",
    )
    sel.add_argument(
        "--phantom-label",
        nargs="+",
        type=_label("sub-"),
        default=[],
        metavar="LABEL",
        help="participants that are phantoms (default: participants.tsv columns 'phantom' "
        "or 'species', else labels starting with 'phantom')",
    )

    proc = parser.add_argument_group("Processing")
    proc.add_argument(
        "--preproc",
        choices=("auto", "fsl", "python", "none"),
        default="auto",
        help="preprocessing backend: FSL (container), Python (dipy), or none for data "
        "that is already preprocessed; 'auto' picks FSL when available",
    )
    proc.add_argument(
        "--denoise",
        choices=("none", "mppca", "patch2self"),
        default="none",
        help="denoising of the python backend",
    )
    proc.add_argument(
        "--remove-gibbs", action="store_true", help="Gibbs-ringing removal (python backend)"
    )
    proc.add_argument(
        "--motion-correction",
        action="store_true",
        help="rigid motion correction with b-vector rotation (python backend)",
    )
    proc.add_argument(
        "--sh-order", type=_sh_order, default=8, help="maximum spherical-harmonic order"
    )
    proc.add_argument(
        "--b-tolerance",
        type=float,
        default=50.0,
        help="b-values within this distance (s/mm²) form one shell",
    )
    proc.add_argument(
        "--b0-threshold",
        type=float,
        default=50.0,
        help="volumes with a b-value below this (s/mm²) are b0",
    )
    proc.add_argument(
        "--no-gfa", dest="gfa", action="store_false",
        help="skip the CSD fit and the GFA maps, which are written by default",
    )  # fmt: skip
    proc.add_argument(
        "--no-dki", dest="dki", action="store_false",
        help="skip the diffusion kurtosis (DKI) fit and its MD/AD/RD/FA/MK/AK/RK/KFA maps, "
        "written by default for runs with two or more shells and enough directions",
    )  # fmt: skip

    harm = parser.add_argument_group("Harmonization")
    harm.add_argument(
        "--method", choices=METHOD_NAMES, default="harp",
        help="'train': the harmonization method to train (see --list-methods)",
    )  # fmt: skip
    harm.add_argument(
        "--target-site",
        metavar="SITE",
        help="site the data are harmonized to (required by 'train'; at the participant "
        "level it picks among models when several exist)",
    )
    harm.add_argument(
        "--source-site",
        metavar="SITE",
        help="'train' only this source site (default: every non-target site with phantoms)",
    )
    harm.add_argument(
        "--model",
        dest="models",
        action="append",
        type=_existing_file,
        default=[],
        metavar="PATH",
        help="HARP model (.safetensors with its .json card) to apply; repeatable; "
        "default: the models in OUTPUT_DIR/models",
    )
    harm.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where HARP trains and runs",
    )
    harm.add_argument(
        "--harp-recipe",
        choices=("default", "paper"),
        default="default",
        help="training recipe: ours, or the paper's (Adam, lr 1e-6, 40,000 iterations)",
    )
    harm.add_argument(
        "--harp-iterations", type=_positive_int, help="override the recipe's iteration count"
    )
    harm.add_argument(
        "--voxel-rule",
        choices=("auto", "window", "percentile"),
        default="auto",
        help="training voxels: C00 window at both sites (authors' code), or above the 30th "
        "percentile of in-vivo source C00 (paper); auto = percentile when in-vivo source "
        "sessions have participant outputs",
    )
    harm.add_argument(
        "--c00-window", nargs=2, type=float, default=[1.0, 2.0], metavar=("LOW", "HIGH"),
        help="C00 window of the 'window' rule",
    )  # fmt: skip
    harm.add_argument(
        "--phantom-erode", type=_non_negative_int, default=1, metavar="N",
        help="voxels peeled off the edges of the selected phantom voxels (vial walls mix "
        "vial and bath differently at each scanner); 0 keeps the edges",
    )  # fmt: skip
    harm.add_argument(
        "--min-train-voxels",
        type=_positive_int,
        default=1000,
        help="fewest valid phantom voxels to train on",
    )
    harm.add_argument("--seed", type=int, default=0, help="random seed of every stochastic step")

    combat = parser.add_argument_group(
        "ComBat ('train --method combat'; fitted on every human session, --target-site is "
        "the reference site left unchanged)"
    )
    combat.add_argument(
        "--combat-covariates", nargs="+", default=[], metavar="COLUMN",
        help="biological covariates whose effects ComBat keeps, read from participants.tsv "
        "or sub-*/sub-*_sessions.tsv (e.g. age sex); numbers are numeric, text categorical",
    )  # fmt: skip
    combat.add_argument(
        "--combat-variant", choices=COMBAT_VARIANTS, default="combat",
        help="combat: Fortin et al. 2017; gam: ComBat-GAM, smooth effects of the "
        "--combat-smooth covariates (Pomponio et al. 2020); covbat: also harmonizes the "
        "covariance of the residuals (Chen et al. 2022); longitudinal: a random intercept per "
        "subject, for repeated sessions (Beer et al. 2020)",
    )  # fmt: skip
    combat.add_argument(
        "--combat-eb", choices=("parametric", "nonparametric", "none"), default="parametric",
        help="empirical-Bayes shrinkage of the site effects",
    )  # fmt: skip
    combat.add_argument(
        "--combat-mean-only", action="store_true",
        help="remove the additive site effect only (keep each site's variance)",
    )  # fmt: skip
    combat.add_argument(
        "--combat-smooth", nargs="+", default=[], metavar="COLUMN",
        help="numeric covariates with smooth (spline) effects; with --combat-variant gam "
        "(default there: age)",
    )  # fmt: skip
    combat.add_argument(
        "--combat-categorical", nargs="+", default=[], metavar="COLUMN",
        help="covariates to treat as categorical although they hold numbers (e.g. sex 0/1)",
    )  # fmt: skip

    combat.add_argument(
        "--combat-atlas", type=_existing_file, metavar="FILE",
        help="integer label image whose regions' means ComBat harmonizes (default: WM and GM "
        "cut by a 3x3x3 grid); in the template's world space, e.g. an atlas of the "
        "--template; resampled to its grid (nearest neighbour)",
    )  # fmt: skip

    harm.add_argument(
        "--dki-max-minutes", type=float, default=15.0, metavar="MIN",
        help="'train --method dki-cnn': wall-clock budget of each network's training "
        "(it stops after the epoch that exceeds it; default 15)",
    )  # fmt: skip
    harm.add_argument(
        "--dki-max-epochs", type=_positive_int, default=None, metavar="N",
        help="'train --method dki-cnn': at most N epochs per network (default: the recipe's "
        "40, with early stopping); unlike --dki-max-minutes it makes the training the same "
        "on any machine",
    )  # fmt: skip

    group = parser.add_argument_group("Group level")
    group.add_argument(
        "--template", metavar="FILE|NAME",
        help="template for the common space: a NIfTI file, or a TemplateFlow name "
        "(NAME or NAME:res-2) found in $TEMPLATEFLOW_HOME; default: a study FA template "
        "built from the target-site sessions",
    )  # fmt: skip
    group.add_argument(
        "--methods", nargs="+", choices=METHOD_NAMES, default=None, metavar="METHOD",
        help="'group': methods to evaluate (default: every method with outputs); "
        "'participant': leave out ComBat unless 'combat' is listed (e.g. to process a new "
        f"site before refitting ComBat with it); registered: {', '.join(METHOD_NAMES)}",
    )  # fmt: skip
    group.add_argument(
        "--group-transform", choices=("SyN", "Affine"), default="SyN",
        help="registration of each session's FA to the template",
    )  # fmt: skip

    perf = parser.add_argument_group("Performance")
    perf.add_argument(
        "--nprocs",
        "--nthreads",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="parallel Nipype processes",
    )
    perf.add_argument(
        "--omp-nthreads",
        type=_positive_int,
        default=None,
        help="threads per process (BLAS, CSD, torch); default: the cores left per "
        "parallel run (all of them for a single run)",
    )
    perf.add_argument(
        "--use-plugin",
        type=_existing_file,
        metavar="FILE",
        help="Nipype plugin settings (YAML: 'plugin: SLURM' and 'plugin_args: {...}', as in "
        "fMRIPrep) for running nodes on a cluster; default: MultiProc with --nprocs",
    )
    perf.add_argument(
        "-w",
        "--work-dir",
        type=Path,
        default=Path("work"),
        help="Nipype working directory; reuse it to resume an interrupted run",
    )
    return parser
