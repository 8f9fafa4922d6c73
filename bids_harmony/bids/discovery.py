"""BIDS discovery: the dMRI runs of a dataset with their gradients, sites and phantoms.

Everything the pipeline knows about its input comes from :func:`discover`:

- one pybids index and queries written as data (:mod:`bids_harmony.bids.indexing`:
  :data:`DWI_QUERY` updated by ``--bids-filter-file``);
- every run checked before any processing starts (:mod:`bids_harmony.bids.runs`):
  NIfTI header, ``.bval``/``.bvec`` (BIDS inheritance) against the volume count;
- sites (:mod:`bids_harmony.bids.sites`) and phantoms
  (:mod:`bids_harmony.bids.participants`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bids import BIDSLayout
from bids.layout import BIDSFile

from bids_harmony.bids.checks import RunFacts, apply_overrides, check_runs, report
from bids_harmony.bids.fieldmaps import ReversePE, find_reverse_pe
from bids_harmony.bids.gradients_io import read_gradients
from bids_harmony.bids.indexing import (
    DWI_QUERY,
    check_dataset,
    filter_query,
    index_dataset,
    load_bids_filters,
    nothing_found,
    stem,
)
from bids_harmony.bids.participants import check_labels, find_phantoms, normalize_labels
from bids_harmony.bids.runs import GradientFiles, check_unique, read_run
from bids_harmony.bids.scan import check_sidecars, scan_dataset
from bids_harmony.bids.sites import (
    SITE_SOURCES,
    SessionKey,
    assign_sites,
    load_site_map,
    sanitize_label,
    strip_prefix,
)
from bids_harmony.dmri.gradients import (
    B0_THRESHOLD,
    B_TOLERANCE,
    b0_mask,
    group_shells,
)
from bids_harmony.errors import (
    BadGradientsError,
    BadImageError,
    BidsHarmonyError,
    InputDatasetError,
    NoDataError,
)

__all__ = [
    "DWI_QUERY",
    "DwiRun",
    "Study",
    "discover",
    "load_bids_filters",
    "load_site_map",
    "read_gradients",
    "sanitize_label",
]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class DwiRun:
    """One diffusion MRI run, checked and ready to process.

    Attributes
    ----------
    subject, session : str, str or None
        Labels without ``sub-``/``ses-``.
    dwi, bval, bvec : Path
        Absolute paths; ``bval``/``bvec`` may be inherited from higher folders.
    sidecar : Path or None
        The run's own JSON sidecar, if any.
    metadata : mapping
        Sidecar metadata merged along the inheritance chain.
    entities : mapping of str to str
        BIDS entities of the file name with pybids names (``subject``,
        ``acquisition``, ``run``, ...); no suffix, extension or datatype.

    Notes
    -----
    Instances are picklable and their mappings are plain dicts (JSON-ready), so
    treat them as read-only; the gradient arrays are flagged read-only.
    site : str
        Sanitized site label.
    is_phantom : bool
    n_volumes : int
    shape : tuple of int
        Image shape from the NIfTI header.
    bvals : ndarray, shape (n_volumes,)
    bvecs : ndarray, shape (n_volumes, 3)
        Unit vectors on DWI volumes, zeros on b0 volumes (read-only arrays).
    shells : tuple of float
        Nominal b-values of the diffusion-weighted shells, increasing.
    reverse_pe : tuple of ReversePE
        Images with the opposite phase encoding, for TOPUP
        (:func:`bids_harmony.bids.fieldmaps.find_reverse_pe`).
    """

    subject: str
    session: str | None
    dwi: Path
    bval: Path
    bvec: Path
    sidecar: Path | None
    metadata: Mapping[str, Any]
    entities: Mapping[str, str]
    site: str
    is_phantom: bool
    n_volumes: int
    shape: tuple[int, ...]
    bvals: np.ndarray
    bvecs: np.ndarray
    shells: tuple[float, ...]
    reverse_pe: tuple[ReversePE, ...] = ()

    @property
    def prefix(self) -> str:
        """File-name entities in BIDS order, e.g. ``sub-01_ses-GE1_acq-b1000_run-1``."""
        return stem(self.dwi.name).rsplit("_", 1)[0]

    @property
    def rel_dir(self) -> Path:
        """Folder relative to a dataset root, e.g. ``sub-01/ses-GE1/dwi``."""
        session = (f"ses-{self.session}",) if self.session is not None else ()
        return Path(f"sub-{self.subject}", *session, "dwi")

    @property
    def session_key(self) -> SessionKey:
        """``(subject, session)``."""
        return (self.subject, self.session)

    def __repr__(self) -> str:
        return f"DwiRun({self.prefix!r}, site={self.site!r}, shells={self.shells})"


@dataclass(frozen=True)
class Study:
    """The dMRI runs of a dataset, with sites and phantoms decided.

    Attributes
    ----------
    bids_dir : Path
    runs : tuple of DwiRun
        Sorted by file path.
    site_source : str
        How the sites were decided: ``"site-map"``, ``"sidecar"`` or ``"session"``.
    phantom_source : str
        How phantoms were recognized: ``"phantom-label"``, ``"participants.tsv"`` or
        ``"label-prefix"``.
    b_tolerance, b0_threshold : float
        The settings the shells were grouped with.
    """

    bids_dir: Path
    runs: tuple[DwiRun, ...]
    site_source: str
    phantom_source: str = "label-prefix"
    b_tolerance: float = B_TOLERANCE
    b0_threshold: float = B0_THRESHOLD

    @property
    def sites(self) -> list[str]:
        """Sorted site labels."""
        return sorted({run.site for run in self.runs})

    @property
    def subjects(self) -> list[str]:
        """Sorted participant labels (phantoms included)."""
        return sorted({run.subject for run in self.runs})

    @property
    def phantoms(self) -> list[str]:
        """Sorted labels of the phantom participants."""
        return sorted({run.subject for run in self.runs if run.is_phantom})

    def runs_for(
        self,
        *,
        subject: str | None = None,
        session: str | None = None,
        site: str | None = None,
    ) -> list[DwiRun]:
        """Runs matching all given labels (``sub-``/``ses-`` prefixes allowed)."""
        subject = strip_prefix(subject, "sub-") if subject is not None else None
        session = strip_prefix(session, "ses-") if session is not None else None
        return [
            run
            for run in self.runs
            if (subject is None or run.subject == subject)
            and (session is None or run.session == session)
            and (site is None or run.site == site)
        ]

    def summary(self) -> str:
        """Multi-line description: per site its participants, phantoms, runs and shells."""
        lines = [
            f"dMRI study {self.bids_dir}: {len(self.runs)} run(s), {len(self.subjects)} "
            f"participant(s) ({len(self.phantoms)} phantom), {len(self.sites)} site(s) "
            f"{SITE_SOURCES.get(self.site_source, self.site_source)}."
        ]
        for site in self.sites:
            runs = self.runs_for(site=site)
            lines.append(
                f"  site {site}: {len(runs)} run(s), {sum(r.n_volumes for r in runs)} volumes"
            )
            for phantom, title in ((False, "participants"), (True, "phantoms")):
                sessions: dict[str, list[str]] = defaultdict(list)
                for run in runs:
                    if run.is_phantom == phantom and run.session not in sessions[run.subject]:
                        sessions[run.subject].append(run.session)
                if sessions:
                    lines.append(f"    {title}: " + _list_sessions(sessions))
            protocols = Counter(self._protocol(run) for run in runs)
            for protocol, count in sorted(protocols.items()):
                lines.append(f"    shells: {protocol} ({count} run(s))")
            reverse = sum(1 for run in runs if run.reverse_pe)
            if reverse:
                lines.append(f"    reverse phase-encoding b0s (for topup): {reverse} run(s)")
        return "\n".join(lines)

    def _protocol(self, run: DwiRun) -> str:
        n_b0 = int(b0_mask(run.bvals, b0_threshold=self.b0_threshold).sum())
        shells = group_shells(
            run.bvals, b_tolerance=self.b_tolerance, b0_threshold=self.b0_threshold
        )
        return ", ".join([f"{n_b0} b0"] + [f"{s.label} x {len(s)} dirs" for s in shells])


def _list_sessions(sessions: Mapping[str, list[str | None]]) -> str:
    parts = []
    for subject in sorted(sessions):
        labels = [f"ses-{s}" for s in sessions[subject] if s is not None]
        parts.append(f"sub-{subject}" + (f" ({', '.join(sorted(labels))})" if labels else ""))
    return ", ".join(parts)


def discover(
    bids_dir: str | os.PathLike[str],
    *,
    participant_label: str | Iterable[str] | None = None,
    session_label: str | Iterable[str] | None = None,
    site_map: str | os.PathLike[str] | Mapping[SessionKey, str] | None = None,
    phantom_label: str | Iterable[str] | None = None,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
    bids_filters: Mapping[str, Any] | None = None,
    database_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    checks: bool = True,
    check_data: bool = True,
    ignore_checks: Collection[str] = (),
) -> Study:
    """Find and check the dMRI runs of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path-like
        Root of a raw BIDS dataset, or of BIDS derivatives (``DatasetType:
        derivative``, e.g. QSIPrep outputs).
    participant_label, session_label : str or iterable of str, optional
        Restrict to these labels (``sub-``/``ses-`` prefixes allowed).
    site_map : path-like or mapping, optional
        Site map TSV (see :func:`load_site_map`) or its parsed mapping.
    phantom_label : str or iterable of str, optional
        Participants that are phantoms (overrides ``participants.tsv``).
    b_tolerance, b0_threshold : float
        Shell grouping (s/mm²), see :func:`bids_harmony.dmri.gradients.group_shells`.
    bids_filters : mapping, optional
        ``{"dwi": {entity: value}}``, see :func:`load_bids_filters`.
    database_dir : path-like, optional
        Where pybids keeps its index (e.g. in the work directory).
    validate : bool
        Index only BIDS-valid files (``False`` for ``--skip-bids-validation``).
    checks : bool
        Run the plausibility checks of :mod:`bids_harmony.bids.checks` on every
        selected run (header, gradient table, and with ``check_data`` the voxels).
    check_data : bool
        Stream every selected image once (truncation, NaN/Inf, all-zero); the train
        and group levels, which read no raw voxels, skip it.
    ignore_checks : collection of str
        Checks whose errors become warnings (``--ignore-check``).

    Returns
    -------
    Study

    Raises
    ------
    InputDatasetError
        Not a BIDS dataset, bad filters or site map, undecidable sites.
    NoDataError
        Unknown participant/session labels, or no dMRI run left to process.
    BadGradientsError
        Missing, malformed or inconsistent ``.bval``/``.bvec``.
    BadImageError
        Unreadable NIfTI header, or not a 4-D image.
    InputCheckError
        Several runs failed, or a check found an error: one message lists them all.
    """
    root, description = check_dataset(bids_dir, validate=validate)
    if site_map is not None and not isinstance(site_map, Mapping):
        site_map = load_site_map(site_map)
    scan = scan_dataset(root)  # symlink loops and unreadable JSON files, kept from pybids
    layout = index_dataset(
        root, description, validate=validate, database_dir=database_dir, scan=scan
    )
    subjects = layout.get(return_type="id", target="subject")
    phantoms, phantom_source = find_phantoms(root, subjects, phantom_label=phantom_label)
    query = filter_query(layout, bids_filters)
    participants = normalize_labels(participant_label, "sub-")
    if participants:
        check_labels(participants, subjects, "sub-", "Participant")
        query["subject"] = participants
    sessions = normalize_labels(session_label, "ses-")
    if sessions:
        scope = {"subject": participants} if participants else {}
        existing = layout.get(return_type="id", target="session", **scope)
        check_labels(sessions, existing, "ses-", "Session")
        query["session"] = sessions

    files = layout.get(return_type="object", invalid_filters="error", **query)
    if not files:
        raise NoDataError(nothing_found(root, query, validate=validate))
    files = sorted(files, key=lambda f: f.path)
    failures: list[BidsHarmonyError] = []
    try:
        check_sidecars(scan, (f.path for f in files))
    except InputDatasetError as err:
        failures.append(err)  # reported with every other run's problems below
    check_unique(files)
    gradient_files = GradientFiles(layout)
    pieces = []
    for file in files:
        try:
            pieces.append(read_run(layout, file, gradient_files, b_tolerance=b_tolerance,
                                   b0_threshold=b0_threshold))  # fmt: skip
        except (BadGradientsError, BadImageError) as err:
            failures.append(err)  # reported with every other run's problems below
    problems = []
    if checks:
        facts = [RunFacts(p["dwi"], p["bvals"], p["bvecs"]) for p in pieces]
        problems = check_runs(facts, data=check_data, b0_threshold=b0_threshold,
                              b_tolerance=b_tolerance)  # fmt: skip
        problems = apply_overrides(problems, ignore_checks)
    report(problems, failures=failures)
    for piece in pieces:
        piece["reverse_pe"] = find_reverse_pe(
            layout,
            piece["dwi"],
            piece["entities"],
            piece["metadata"],
            piece["shape"],
            bval_of=lambda path, entities: gradient_files.nearest(path, entities, ".bval"),
            b0_threshold=b0_threshold,
        )

    by_session: dict[SessionKey, list[tuple[Path, Mapping[str, Any]]]] = defaultdict(list)
    for piece in pieces:
        by_session[(piece["subject"], piece["session"])].append((piece["dwi"], piece["metadata"]))
    others = _unselected_sessions(layout, files) if site_map is None else None
    sites, site_source = assign_sites(
        by_session, site_map=site_map, others=others, dataset_sessions=scan.dwi_sessions
    )
    runs = tuple(
        DwiRun(
            **piece,
            site=sites[(piece["subject"], piece["session"])],
            is_phantom=piece["subject"] in phantoms,
        )
        for piece in pieces
    )
    study = Study(
        bids_dir=root,
        runs=runs,
        site_source=site_source,
        phantom_source=phantom_source,
        b_tolerance=b_tolerance,
        b0_threshold=b0_threshold,
    )
    LOGGER.info(
        "Sites %s: %s. Phantoms (%s): %s.",
        SITE_SOURCES[site_source],
        ", ".join(study.sites),
        phantom_source,
        ", ".join(f"sub-{p}" for p in study.phantoms) or "none",
    )
    return study


def _unselected_sessions(
    layout: BIDSLayout, selected: Iterable[BIDSFile]
) -> dict[SessionKey, list[tuple[Path, Mapping[str, Any]]]]:
    """Metadata of the dataset's dMRI runs outside the selection, by session."""
    chosen = {f.path for f in selected}
    sessions: dict[SessionKey, list[tuple[Path, Mapping[str, Any]]]] = defaultdict(list)
    for file in layout.get(return_type="object", invalid_filters="error", **DWI_QUERY):
        if file.path not in chosen:
            entities = file.get_entities(metadata=False)
            key = (str(entities["subject"]), entities.get("session"))
            sessions[key].append((Path(file.path), layout.get_metadata(file.path)))
    return sessions
