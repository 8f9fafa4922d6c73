"""Plausibility checks of the selected runs, before any processing starts.

:func:`~bids_harmony.bids.discovery.discover` reads every selected run (header,
gradient files, sidecar); the checks here then look for what real data gets wrong
and a pipeline would otherwise find hours later, or never:

========================  =========  ===================================================
check                     severity   finds
========================  =========  ===================================================
``voxel-size``            error      voxel sizes that are zero, negative or not finite
``affine``                error*     no orientation (qform and sform codes both 0), or a
                                     singular / non-finite affine
``image-data``            error      a truncated or corrupt file, NaN/Inf values, an
                                     image or all its b0 volumes equal to zero
``bvalue-units``          error      b-values in ms/µm² (all below the b0 threshold)
``bvalue-range``          error*     b-values above 30 000 s/mm² (× 1000 slips, s/m²)
``directions``            error      no shell with 6 distinct, non-coplanar directions
``zero-volumes``          warning    some volumes entirely zero (dropped slices/volumes)
``shell-directions``      warning    a shell with too few or degenerate directions
``low-bvalue``            warning    a shell below 100 s/mm² (IVIM/perfusion)
``voxel-size-range``      warning    voxels over 20 mm or an anisotropy over 5
========================  =========  ===================================================

Errors marked * can be overridden with ``--ignore-check NAME`` (the finding is then a
warning), for data that is unusual but right: a preclinical protocol with very high
b-values, or an image whose orientation one knows to be the identity.  The others
would make the outputs meaningless, so they are always errors.

The data check streams each image once, one volume at a time, so it needs one
volume of memory and reads each file once.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener

from bids_harmony.bids.check_names import OVERRIDABLE
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_MAX,
    B_MIN_SHELL,
    B_TOLERANCE,
    MIN_TENSOR_DIRECTIONS,
    b0_mask,
    distinct_axes,
    group_shells,
    usable_directions,
)
from bids_harmony.errors import BidsHarmonyError, InputCheckError

LOGGER = logging.getLogger(__name__)

#: Voxel sizes (mm) and anisotropy above which a warning is given (the built-in tiny
#: study has 11 mm voxels; clinical dMRI is 1-3 mm).
MAX_VOXEL_MM = 20.0
MAX_ANISOTROPY = 5.0


@dataclass(frozen=True)
class Problem:
    """One finding about one file.

    Attributes
    ----------
    check : str
        Name of the check (see the module docstring).
    path : Path
        The file the finding is about.
    message : str
        What is wrong and what to do, in one or two sentences.
    error : bool
        An error stops the run (exit 2); a warning is logged.
    """

    check: str
    path: Path
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class RunFacts:
    """What the checks need of one run (a subset of a discovered run)."""

    dwi: Path
    bvals: np.ndarray
    bvecs: np.ndarray


def check_header(path: Path) -> list[Problem]:
    """Voxel sizes and orientation from the NIfTI header (no data read)."""
    try:
        img = nib.load(path)
    except (ImageFileError, OSError, EOFError, ValueError):
        return []  # reading the header is discovery's job; it has reported it
    try:
        # nibabel's loader "fixes" zero voxel sizes to 1 mm; the raw header shows them.
        with ImageOpener(path, "rb") as handle:
            header = type(img.header).from_fileobj(handle, check=False)
    except (OSError, EOFError, ValueError):
        header = img.header
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    problems = []
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        problems.append(
            Problem(
                "voxel-size",
                path,
                f"voxel sizes {tuple(zooms.tolist())} mm (pixdim[1:4]) must be positive and "
                "finite; every distance and the registration depend on them. Re-export the "
                "image from DICOM (e.g. with dcm2niix).",
            )
        )
    elif zooms.max() > MAX_VOXEL_MM or zooms.max() / zooms.min() > MAX_ANISOTROPY:
        problems.append(
            Problem(
                "voxel-size-range",
                path,
                f"unusual voxel sizes {tuple(np.round(zooms, 3).tolist())} mm; check the "
                "header (a slice thickness stored in the wrong field?).",
                error=False,
            )
        )
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    affine = img.affine
    if qcode == 0 and scode == 0:
        problems.append(
            Problem(
                "affine",
                path,
                "the header has no orientation (qform_code and sform_code are 0): voxel "
                "axes cannot be related to the scanner, so b-vectors and templates cannot be "
                "aligned. Re-export from DICOM (dcm2niix), or pass --ignore-check affine if "
                "the voxel axes are known to be the scanner's (RAS).",
            )
        )
    elif not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        problems.append(
            Problem(
                "affine",
                path,
                "the affine (qform/sform) is singular or not finite; re-export the image "
                "from DICOM (dcm2niix) or fix the header.",
            )
        )
    return problems


def check_gradients(
    facts: RunFacts,
    *,
    b0_threshold: float = B0_THRESHOLD,
    b_tolerance: float = B_TOLERANCE,
) -> list[Problem]:
    """Plausibility of a run's b-values and directions (units, range, shells)."""
    path, bvals = facts.dwi, np.asarray(facts.bvals, dtype=float)
    is_b0 = b0_mask(bvals, b0_threshold=b0_threshold)
    if is_b0.all():
        largest = float(bvals.max(initial=0.0))
        hint = (
            f" The largest is {largest:g}: b-values in ms/µm² (1 ms/µm² = 1000 s/mm²)? "
            "BIDS stores s/mm²; multiply the .bval by 1000."
            if 0 < largest < b0_threshold and np.unique(bvals).size > 1
            else " The run holds only b0 volumes; leave it out with --bids-filter-file."
        )
        return [
            Problem(
                "bvalue-units",
                path,
                f"no diffusion-weighted volume: every b-value is below the b0 threshold "
                f"{b0_threshold:g} s/mm².{hint}",
            )
        ]
    problems = []
    largest = float(bvals.max())
    if largest > B_MAX:
        factor = (
            " (1000 times too large: s/m² or a scaling slip?)" if largest / 1000 <= B_MAX else ""
        )
        problems.append(
            Problem(
                "bvalue-range",
                path,
                f"b-value {largest:g} s/mm² is above the plausible {B_MAX:g}{factor}. "
                "Fix the .bval (BIDS uses s/mm²), or pass --ignore-check bvalue-range for a "
                "protocol that really uses such b-values.",
            )
        )
    usable = 0
    for shell in group_shells(bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold):
        vectors = np.asarray(facts.bvecs)[shell.indices]
        axes = distinct_axes(vectors)
        if usable_directions(vectors):
            usable += 1
        else:
            why = (
                f"{axes} distinct direction(s)"
                if axes < MIN_TENSOR_DIRECTIONS
                else "directions all along one axis or in one plane"
            )
            problems.append(
                Problem(
                    "shell-directions",
                    path,
                    f"shell {shell.label} ({len(shell)} volumes) has {why}; at least "
                    f"{MIN_TENSOR_DIRECTIONS} non-coplanar directions are needed, so this "
                    "shell is not fitted.",
                    error=False,
                )
            )
        if shell.bval < B_MIN_SHELL:
            problems.append(
                Problem(
                    "low-bvalue",
                    path,
                    f"shell {shell.label} is below {B_MIN_SHELL:g} s/mm² (IVIM/perfusion "
                    "weighting); it is processed as a shell. Raise --b0-threshold to treat "
                    "it as b0.",
                    error=False,
                )
            )
    if not usable:
        problems.append(
            Problem(
                "directions",
                path,
                f"no diffusion-weighted shell has {MIN_TENSOR_DIRECTIONS} distinct, "
                "non-coplanar directions, so no tensor or spherical-harmonic fit is possible. "
                "Check the .bvec (all volumes in one direction? a trace-weighted series?) or "
                "leave the run out with --bids-filter-file.",
            )
        )
    return problems


def check_data(
    path: Path, bvals: np.ndarray, *, b0_threshold: float = B0_THRESHOLD
) -> list[Problem]:
    """Stream the image once: complete, finite, not zero (one volume in memory).

    Returns
    -------
    list of Problem
        ``image-data`` errors and ``zero-volumes`` warnings.
    """
    try:
        img = nib.load(path)
        proxy = img.dataobj
        shape = tuple(int(n) for n in img.shape)
        dtype = np.dtype(proxy.dtype)
        offset = int(proxy.offset)
        # Zero means zero after scaling (Philips data store an intercept).
        inter = float(getattr(proxy, "inter", 0.0) or 0.0)
        slope = float(getattr(proxy, "slope", 1.0) or 1.0)
    except (ImageFileError, OSError, EOFError, ValueError, AttributeError):
        return []  # discovery reports unreadable headers
    n_volumes = shape[3] if len(shape) == 4 else 1
    volume_bytes = int(np.prod(shape[:3])) * dtype.itemsize
    nonfinite, zero_volumes = 0, []
    floating = np.issubdtype(dtype, np.inexact)
    try:
        with ImageOpener(path, "rb") as handle:
            handle.seek(offset)
            for volume in range(n_volumes):
                raw = handle.read(volume_bytes)
                if len(raw) < volume_bytes:
                    return [
                        Problem(
                            "image-data",
                            path,
                            f"the file is truncated: volume {volume} of {n_volumes} is incomplete "
                            f"({len(raw)} of {volume_bytes} bytes). Copy or convert it again.",
                        )
                    ]
                values = np.frombuffer(raw, dtype=dtype)
                if floating:
                    finite = np.isfinite(values)
                    if not finite.all():
                        nonfinite += int(values.size - finite.sum())
                        values = values[finite]
                if not (values.any() if inter == 0 else (values * slope + inter).any()):
                    zero_volumes.append(volume)
            handle.read(1)  # gzip checks its CRC and length at the end of the stream
    except (EOFError, OSError, zlib.error) as err:
        return [
            Problem(
                "image-data",
                path,
                f"the file is truncated or corrupt ({err}). Copy or convert it again.",
            )
        ]
    problems = []
    if nonfinite:
        problems.append(
            Problem(
                "image-data",
                path,
                f"{nonfinite} NaN/Inf values. Replace them (e.g. fslmaths in -nan out, or "
                "set them to 0) or re-export the image.",
            )
        )
    b0 = (
        np.flatnonzero(b0_mask(bvals, b0_threshold=b0_threshold)) if len(bvals) == n_volumes else []
    )
    if len(zero_volumes) == n_volumes:
        problems.append(
            Problem(
                "image-data",
                path,
                "every voxel of every volume is 0: the image holds no data. Re-export it.",
            )
        )
    elif len(b0) and set(b0.tolist()) <= set(zero_volumes):
        problems.append(
            Problem(
                "image-data",
                path,
                f"all b0 volumes ({', '.join(map(str, b0))}) are 0: the signal cannot be "
                "normalized. Re-export the image or fix the .bval.",
            )
        )
    elif zero_volumes:
        shown = ", ".join(map(str, zero_volumes[:10])) + (" ..." if len(zero_volumes) > 10 else "")
        problems.append(
            Problem(
                "zero-volumes",
                path,
                f"{len(zero_volumes)} volume(s) are entirely 0 ({shown}): dropped during "
                "acquisition or conversion? They bias the fits; remove them with their "
                ".bval/.bvec entries.",
                error=False,
            )
        )
    return problems


def check_runs(
    runs: Sequence[RunFacts],
    *,
    data: bool = True,
    b0_threshold: float = B0_THRESHOLD,
    b_tolerance: float = B_TOLERANCE,
) -> list[Problem]:
    """Every check of every run, in run order (errors and warnings)."""
    problems: list[Problem] = []
    for run in runs:
        problems += check_header(run.dwi)
        problems += check_gradients(run, b0_threshold=b0_threshold, b_tolerance=b_tolerance)
        if data:
            problems += check_data(run.dwi, run.bvals, b0_threshold=b0_threshold)
    return problems


def apply_overrides(problems: Iterable[Problem], ignore: Collection[str]) -> list[Problem]:
    """Errors of the checks in ``ignore`` become warnings (only :data:`OVERRIDABLE` ones)."""
    unknown = sorted(set(ignore) - set(OVERRIDABLE))
    if unknown:
        raise InputCheckError(
            f"--ignore-check {' '.join(unknown)}: only {', '.join(OVERRIDABLE)} can be "
            "ignored; the other checks find problems that make the outputs meaningless."
        )
    return [
        Problem(p.check, p.path, p.message + " (ignored: --ignore-check)", error=False)
        if p.error and p.check in ignore
        else p
        for p in problems
    ]


def report(problems: Sequence[Problem], *, failures: Sequence[BidsHarmonyError] = ()) -> None:
    """Log the warnings; raise one error listing every error (exit code 2).

    Parameters
    ----------
    problems : sequence of Problem
    failures : sequence of BidsHarmonyError
        Errors raised while reading runs (header, gradient files), reported together
        with the checks' errors.  A single failure and no other error is re-raised
        as it is.

    Raises
    ------
    BidsHarmonyError
        The single failure, or :class:`InputCheckError` listing them all.
    """
    warnings: dict[tuple[str, str], list[Path]] = {}
    for problem in problems:
        if not problem.error:
            warnings.setdefault((problem.check, problem.message), []).append(problem.path)
    for (check, message), paths in warnings.items():
        # One line per finding, however many runs share it (a protocol's habit).
        where = (
            str(paths[0])
            if len(paths) == 1
            else (
                f"{len(paths)} runs ({', '.join(p.name for p in paths[:3])}"
                + (", ..." if len(paths) > 3 else "")
                + ")"
            )
        )
        LOGGER.warning("%s: %s [%s]", where, message, check)
    errors = [str(p) for p in problems if p.error]
    if len(failures) == 1 and not errors:
        raise failures[0]
    lines = [str(f) for f in failures] + errors
    if lines:
        raise InputCheckError(
            f"{len(lines)} problem(s) with the input; nothing was processed or written:\n"
            + "\n".join(f"  - {line}" for line in lines)
            + "\nFix the files, or leave runs out with --participant-label or "
            "--bids-filter-file."
        )
