"""Phantom training pairs of a HARP site pair, from discovery and participant outputs.

A *pair* is one shell of one phantom protocol scanned at the source and the
target site.  Scans match when they show the same phantom, were acquired with the
same raw ``acq-`` label (``None`` matches only ``None``) and their shell b-values
agree within ``b_tolerance``.

Pairing choice
--------------
When a site scanned the same phantom and protocol in several sessions
(scan-rescan), every source session is paired with every target session
(source × target), and each pair carries a *rescan* of either side: the next
session of the same site in sorted order (cyclically), so ``source_rescan`` is
filled whenever a second source session exists and ``target_rescan`` whenever a
second target session exists.  Using all combinations trains on every scan at
both sites; the rescan gives the trainer the scan-rescan noise of the same
voxels for its noise-aware loss.  With two sessions per site (the common design
and the simulator's) that is four pairs per phantom, protocol and shell, and every
scan is the source (or target) of the same number of pairs, so no session weighs
more than another.  Runs repeated within a session (``run-1``, ``run-2``) count
as separate scans; a rescan is taken from another session when there is one.

File names are those written by the participant level
(:func:`bids_harmony.bids.outputs.participant_derivatives`): per run the
preprocessed DWI and mask, per shell the SH map whose ``acq`` carries the shell
(:func:`bids_harmony.bids.derivatives.shell_acq`).  The shell b-value and SH
order are read from the SH map's sidecar (``ShellBValue``,
``OrientationEncoding.SphericalHarmonicDegree``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_harmony.bids.derivatives import RunNames
from bids_harmony.bids.discovery import DwiRun, Study
from bids_harmony.dmri.gradients import B_TOLERANCE, Shell
from bids_harmony.errors import BidsHarmonyError

logger = logging.getLogger(__name__)

_NO_INDICES = np.empty(0, dtype=int)

__all__ = [
    "PhantomPair",
    "PhantomScan",
    "TrainingDataError",
    "find_phantom_pairs",
    "list_sites_with_phantoms",
    "phantoms_by_site",
]


class TrainingDataError(BidsHarmonyError, ValueError):
    """The phantom data cannot make a HARP training set (missing, unpaired, too few voxels)."""


@dataclass(frozen=True)
class PhantomScan:
    """One shell of one phantom run, as written by the participant level.

    Attributes
    ----------
    subject, session : str, str or None
        Labels without ``sub-``/``ses-``.
    site : str
    acq_raw : str or None
        ``acq`` label of the raw run (the protocol), e.g. ``"multishell"``.
    shell_bval : float
        Nominal shell b-value (s/mm²).
    sh_file, mask_file, preproc_dwi, bval_file : Path
        SH coefficients of the shell, mask, preprocessed DWI and its ``.bval``.
    sh_order : int
        SH order of the map (8, or lower for few directions).
    """

    subject: str
    session: str | None
    site: str
    acq_raw: str | None
    shell_bval: float
    sh_file: Path
    mask_file: Path
    preproc_dwi: Path
    bval_file: Path
    sh_order: int

    @property
    def label(self) -> str:
        """Short name for messages, e.g. ``sub-phantom01 ses-GE1 acq-b1000 b=1000``."""
        parts = [f"sub-{self.subject}"]
        parts += [f"ses-{self.session}"] if self.session else []
        parts += [f"acq-{self.acq_raw}"] if self.acq_raw else []
        return " ".join([*parts, f"b={self.shell_bval:g}"])


@dataclass(frozen=True)
class PhantomPair:
    """Source and target scans of one phantom, protocol and shell.

    Attributes
    ----------
    phantom : str
        Participant label of the phantom.
    shell_bval : float
        Shell b-value of the source scan.
    protocol : str or None
        Raw ``acq`` label shared by both scans.
    source, target : PhantomScan
    source_rescan, target_rescan : PhantomScan or None
        Another session of the same phantom and protocol at the same site.
    """

    phantom: str
    shell_bval: float
    protocol: str | None
    source: PhantomScan
    target: PhantomScan
    source_rescan: PhantomScan | None = None
    target_rescan: PhantomScan | None = None

    @property
    def scans(self) -> tuple[PhantomScan, ...]:
        """Every scan of the pair (source, target, then the rescans present)."""
        scans = (self.source, self.target, self.source_rescan, self.target_rescan)
        return tuple(s for s in scans if s is not None)


@dataclass(frozen=True)
class _Candidate:
    """A phantom run shell before its files are checked."""

    run: DwiRun
    shell_bval: float
    shell_label: str

    @property
    def acq(self) -> str | None:
        return self.run.entities.get("acquisition")

    @property
    def describe(self) -> str:
        acq = f"acq-{self.acq}" if self.acq else "no acq"
        return f"sub-{self.run.subject} {acq} b={self.shell_bval:g}"


def phantoms_by_site(study: Study) -> dict[str, list[str]]:
    """Phantom participants scanned at each site (sites without phantoms left out)."""
    found: dict[str, set[str]] = defaultdict(set)
    for run in study.runs:
        if run.is_phantom:
            found[run.site].add(run.subject)
    return {site: sorted(found[site]) for site in sorted(found)}


def list_sites_with_phantoms(study: Study) -> list[str]:
    """Sorted labels of the sites where at least one phantom was scanned."""
    return list(phantoms_by_site(study))


def _describe_phantoms(study: Study) -> str:
    by_site = phantoms_by_site(study)
    listed = "; ".join(
        f"{site}: {', '.join('sub-' + p for p in phantoms)}" for site, phantoms in by_site.items()
    )
    return (
        f"Sites in the study: {', '.join(study.sites) or 'none'}. Phantoms by site: "
        f"{listed or 'none'} (phantoms recognized by {study.phantom_source}; mark them in "
        "participants.tsv or with --phantom-label)."
    )


def _candidates(study: Study, site: str) -> list[_Candidate]:
    out = []
    for run in study.runs:
        if run.site == site and run.is_phantom:
            for bval in run.shells:
                label = Shell(bval=float(bval), indices=_NO_INDICES).label
                out.append(_Candidate(run, float(bval), label))
    return out


_GroupKey = tuple[str, str, float]


def _group(
    source: Sequence[_Candidate], target: Sequence[_Candidate], b_tolerance: float
) -> dict[_GroupKey, tuple[list[_Candidate], list[_Candidate]]]:
    """Source candidates grouped by (phantom, acq, shell); targets joined to the nearest."""
    groups: dict[_GroupKey, tuple[list[_Candidate], list[_Candidate]]] = {}

    def near(cand: _Candidate) -> list[_GroupKey]:
        return [
            key
            for key in groups
            if key[:2] == (cand.run.subject, cand.acq or "")
            and abs(key[2] - cand.shell_bval) <= b_tolerance
        ]

    for cand in source:
        keys = near(cand)
        key = keys[0] if keys else (cand.run.subject, cand.acq or "", cand.shell_bval)
        groups.setdefault(key, ([], []))[0].append(cand)
    for cand in target:
        keys = near(cand)
        if keys:
            groups[min(keys, key=lambda k: abs(k[2] - cand.shell_bval))][1].append(cand)
    return groups


def _scan(candidate: _Candidate, derivatives_dir: Path, missing: list[Path]) -> PhantomScan | None:
    """The :class:`PhantomScan` of a candidate; missing files are appended to ``missing``."""
    run = candidate.run
    names = RunNames.of_run(run)
    files = {
        key: derivatives_dir / relpath
        for key, relpath in {
            "sh": names.shell_map(candidate.shell_label, "sh"),
            "sidecar": names.shell_map(candidate.shell_label, "sh", extension=".json"),
            "mask": names.mask(),
            "dwi": names.dwi(),
            "bval": names.dwi(extension=".bval"),
        }.items()
    }
    absent = [path for path in files.values() if not path.is_file()]
    if absent:
        missing.extend(absent)
        return None
    try:
        sidecar = json.loads(files["sidecar"].read_text(encoding="utf-8"))
        order = int(sidecar["OrientationEncoding"]["SphericalHarmonicDegree"])
        bval = float(sidecar.get("ShellBValue", candidate.shell_bval))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TrainingDataError(
            f"{files['sidecar']}: unreadable SH sidecar ({err}); re-run the participant level "
            "for this phantom."
        ) from err
    return PhantomScan(
        subject=run.subject,
        session=run.session,
        site=run.site,
        acq_raw=candidate.acq,
        shell_bval=bval,
        sh_file=files["sh"],
        mask_file=files["mask"],
        preproc_dwi=files["dwi"],
        bval_file=files["bval"],
        sh_order=order,
    )


def _rescan(scans: Sequence[PhantomScan], index: int) -> PhantomScan | None:
    """The next scan in sorted order (cyclically), preferring another session."""
    others = [scans[(index + step) % len(scans)] for step in range(1, len(scans))]
    other_sessions = [s for s in others if s.session != scans[index].session]
    return (other_sessions or others or [None])[0]


def _scans(
    candidates: Iterable[_Candidate], derivatives_dir: Path, missing: list[Path]
) -> list[PhantomScan]:
    scans = [_scan(c, derivatives_dir, missing) for c in candidates]
    return sorted((s for s in scans if s is not None), key=lambda s: str(s.sh_file))


def _protocol_table(source: Iterable[_Candidate], target: Iterable[_Candidate]) -> str:
    sites: dict[str, set[str]] = defaultdict(set)
    for cand in [*source, *target]:
        sites[cand.describe].add(cand.run.site)
    return "; ".join(f"{name} at {', '.join(sorted(s))}" for name, s in sorted(sites.items()))


def find_phantom_pairs(
    study: Study,
    derivatives_dir: str | os.PathLike[str],
    *,
    source_site: str,
    target_site: str,
    b_tolerance: float = B_TOLERANCE,
) -> list[PhantomPair]:
    """Phantom training pairs for one source → target site pair.

    Parameters
    ----------
    study : Study
        Discovered dataset (:func:`bids_harmony.bids.discovery.discover`).
    derivatives_dir : path-like
        Output directory of the participant level.
    source_site, target_site : str
        Site labels as in ``study.sites``.
    b_tolerance : float
        Largest difference (s/mm²) of matching shell b-values.

    Returns
    -------
    list of PhantomPair
        Sorted by phantom, protocol, shell, source and target session.  Protocols
        scanned at one site only are logged as warnings and left out.

    Raises
    ------
    TrainingDataError
        Unknown or identical sites, no phantom at the source or target site, no
        protocol shared by both sites, or participant-level outputs missing (the
        message names the files and the command that writes them).
    """
    derivatives_dir = Path(derivatives_dir)
    if source_site == target_site:
        raise TrainingDataError(f"source and target site are both {source_site!r}.")
    for site in (source_site, target_site):
        if site not in study.sites:
            raise TrainingDataError(
                f"site {site!r} is not in the study. {_describe_phantoms(study)}"
            )
    source = _candidates(study, source_site)
    target = _candidates(study, target_site)
    for site, cands in ((source_site, source), (target_site, target)):
        if not cands:
            raise TrainingDataError(
                f"no phantom was scanned at site {site}; HARP trains on phantom scans of both "
                f"sites. {_describe_phantoms(study)}"
            )

    groups = _group(source, target, b_tolerance)
    unpaired = [c for srcs, tgts in groups.values() if not tgts for c in srcs]
    paired = {id(t) for _, tgts in groups.values() for t in tgts}
    unpaired += [t for t in target if id(t) not in paired]
    usable = {key: value for key, value in groups.items() if value[1]}
    if not usable:
        raise TrainingDataError(
            f"no phantom protocol was scanned at both {source_site} (source) and {target_site} "
            f"(target): pairs need the same phantom, the same acq- label and shells within "
            f"{b_tolerance:g} s/mm². Found: {_protocol_table(source, target)}."
        )

    if unpaired:
        logger.warning(
            "Phantom protocols not scanned at both %s and %s are left out of training: %s.",
            source_site, target_site, _protocol_table(unpaired, []),
        )  # fmt: skip

    missing: list[Path] = []
    pairs = []
    for key in sorted(usable):
        srcs, tgts = usable[key]
        src_scans = _scans(srcs, derivatives_dir, missing)
        tgt_scans = _scans(tgts, derivatives_dir, missing)
        for i, src_scan in enumerate(src_scans):
            for j, tgt_scan in enumerate(tgt_scans):
                pairs.append(
                    PhantomPair(
                        phantom=key[0],
                        shell_bval=src_scan.shell_bval,
                        protocol=srcs[0].acq,
                        source=src_scan,
                        target=tgt_scan,
                        source_rescan=_rescan(src_scans, i),
                        target_rescan=_rescan(tgt_scans, j),
                    )
                )
    if missing:
        _raise_missing(study, derivatives_dir, missing)
    protocols = sorted({f"sub-{p.phantom} {p.protocol or '-'} b={p.shell_bval:g}" for p in pairs})
    logger.info(
        "%d phantom pair(s) %s -> %s: %s.",
        len(pairs),
        source_site,
        target_site,
        ", ".join(protocols),
    )
    return pairs


def _raise_missing(study: Study, derivatives_dir: Path, missing: Sequence[Path]) -> None:
    unique = sorted(set(missing))
    subjects = sorted({p.relative_to(derivatives_dir).parts[0][4:] for p in unique})
    shown = "\n  ".join(str(p) for p in unique[:5])
    more = f"\n  ... and {len(unique) - 5} more" if len(unique) > 5 else ""
    raise TrainingDataError(
        f"participant-level outputs of the phantom scans are missing ({len(unique)} file(s)):\n"
        f"  {shown}{more}\nRun the participant level for the phantom(s) first:\n"
        f"  bids-harmony {study.bids_dir} {derivatives_dir} participant --participant-label "
        f"{' '.join(subjects)}"
    )
