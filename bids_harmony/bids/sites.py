"""Site labels: where each session was scanned.

The site of a session is decided by the first rule that applies (DESIGN §2):

1. ``site-map``: a ``--site-map`` TSV (``participant_id``, ``session_id``, ``site``);
   every session must be covered.
2. ``sidecar``: the scanner identity in the JSON sidecars.  The label is the
   sanitized ``ManufacturersModelName`` (``Manufacturer`` when the model is absent);
   scanners of the same model are told apart by ``MagneticFieldStrength``
   (``Prisma3T``/``Prisma7T``) and ``DeviceSerialNumber`` (``PrismaSN6038``) when
   they differ.
3. ``session``: the session label itself, when no sidecar holds any scanner field.

All labels are BIDS-safe alphanumerics (:func:`sanitize_label`).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_harmony.errors import InputDatasetError

LOGGER = logging.getLogger(__name__)

SessionKey = tuple[str, str | None]
"""``(subject, session)`` labels without prefixes; ``session`` is None without sessions."""

SITE_SOURCES: Mapping[str, str] = {
    "site-map": "from the site map",
    "sidecar": "from the sidecar scanner identity",
    "session": "from the session labels",
}
"""The rules that can decide sites (``Study.site_source``), with how to say them."""
UNKNOWN_SITE = "unknown"
"""Site of session-less runs when no site map and no scanner fields are available."""

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_MISSING = {"", "n/a"}
_SERIAL_TAIL = 4


def sanitize_label(text: str, *, context: str | None = None) -> str:
    """Reduce free text to a BIDS-safe label (ASCII letters and digits only).

    Parameters
    ----------
    text : str
        E.g. a scanner model name or a site name from a site map.
    context : str, optional
        Where the text comes from (a file, a field), named in the error message.

    Returns
    -------
    str

    Raises
    ------
    InputDatasetError
        If nothing is left.

    >>> sanitize_label("SIGNA Premier")
    'SIGNAPremier'
    >>> sanitize_label("Siemens-Prisma_fit 3.0")
    'SiemensPrismafit30'
    """
    label = _NOT_ALNUM.sub("", str(text))
    if not label:
        where = f" ({context})" if context else ""
        raise InputDatasetError(
            f"Cannot make a BIDS label from {text!r}{where}: it contains no ASCII letters "
            "or digits. Use a name with letters or digits (e.g. 'GE1', 'Prisma')."
        )
    return label


def strip_prefix(label: str, prefix: str) -> str:
    """Remove a BIDS key prefix (``sub-``, ``ses-``) if present.

    >>> strip_prefix("sub-01", "sub-"), strip_prefix("01", "sub-")
    ('01', '01')
    """
    label = str(label).strip()
    return label[len(prefix) :] if label.startswith(prefix) else label


def format_session(key: SessionKey) -> str:
    """``('01', 'GE')`` -> ``'sub-01/ses-GE'``; ``('01', None)`` -> ``'sub-01'``."""
    subject, session = key
    return f"sub-{subject}" + (f"/ses-{session}" if session is not None else "")


def load_site_map(path: str | os.PathLike[str]) -> dict[SessionKey, str]:
    """Read a site map TSV.

    Columns: ``participant_id`` and ``site`` (required) and ``session_id``
    (optional; without it, or where it is ``n/a``, the site applies to all sessions
    of the participant).  Labels may be written with or without ``sub-``/``ses-``.

    Parameters
    ----------
    path : path-like
        Tab-separated file with a header row.

    Returns
    -------
    dict
        ``{(subject, session or None): sanitized site label}``.

    Raises
    ------
    InputDatasetError
        If the file is missing or unreadable, lacks a required column, has an empty
        cell, gives one session two sites, or two site names sanitize to one label.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except FileNotFoundError:
        raise InputDatasetError(
            f"Site map {path} does not exist. Pass an existing TSV file to --site-map."
        ) from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputDatasetError(f"Cannot read site map {path}: {err}.") from err
    if not rows:
        raise InputDatasetError(
            f"Site map {path} has no rows. Write a header 'participant_id<TAB>session_id"
            "<TAB>site' followed by one row per session."
        )
    missing = [c for c in ("participant_id", "site") if c not in columns]
    if missing:
        raise InputDatasetError(
            f"Site map {path} lacks the column(s) {', '.join(missing)} (found: {columns}). "
            "It must be tab-separated with a header 'participant_id<TAB>session_id<TAB>site'."
        )
    site_map: dict[SessionKey, str] = {}
    raw_names: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        subject = strip_prefix(row["participant_id"], "sub-")
        session: str | None = strip_prefix(row.get("session_id", ""), "ses-")
        if session is not None and session.lower() in _MISSING:
            session = None
        if subject.lower() in _MISSING or row["site"].lower() in _MISSING:
            raise InputDatasetError(
                f"Site map {path}, line {line}: participant_id and site must not be empty."
            )
        site = sanitize_label(row["site"], context=f"site map {path}, line {line}")
        other = raw_names.setdefault(site, row["site"])
        if other != row["site"]:
            raise InputDatasetError(
                f"Site map {path}: the site names {other!r} and {row['site']!r} both become "
                f"the label {site!r}. Rename one of them."
            )
        key = (subject, session)
        if site_map.setdefault(key, site) != site:
            raise InputDatasetError(
                f"Site map {path}, line {line}: {format_session(key)} is given two sites "
                f"({site_map[key]!r} and {site!r}). Keep one row per session."
            )
    return site_map


@dataclass(frozen=True)
class ScannerIdentity:
    """Scanner fields of one sidecar, as far as they are present.

    Attributes
    ----------
    model : str or None
        Sanitized ``ManufacturersModelName``, else sanitized ``Manufacturer``.
    serial : str or None
        Sanitized ``DeviceSerialNumber``.
    field_strength : float or None
        ``MagneticFieldStrength`` in tesla, rounded to 0.1 T.
    """

    model: str | None = None
    serial: str | None = None
    field_strength: float | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ScannerIdentity:
        """Read the scanner fields of a (merged) sidecar."""

        def text(key: str) -> str | None:
            value = _NOT_ALNUM.sub("", str(metadata.get(key) or ""))
            return value or None

        try:
            field = round(float(metadata["MagneticFieldStrength"]), 1)
        except (KeyError, TypeError, ValueError):
            field = None
        return cls(
            model=text("ManufacturersModelName") or text("Manufacturer"),
            serial=text("DeviceSerialNumber"),
            field_strength=field,
        )

    def describe(self) -> str:
        """Human-readable form, e.g. ``Prisma 3T serial 166038``."""
        parts = [self.model or "unknown model"]
        if self.field_strength is not None:
            parts.append(f"{self.field_strength:g}T")
        if self.serial is not None:
            parts.append(f"serial {self.serial}")
        return " ".join(parts)

    def merge(self, other: ScannerIdentity) -> ScannerIdentity | None:
        """Combine two partial identities; None if they contradict each other."""
        merged = {}
        for name in ("model", "serial", "field_strength"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is not None and theirs is not None and mine != theirs:
                return None
            merged[name] = mine if mine is not None else theirs
        return ScannerIdentity(**merged)


def assign_sites(
    sessions: Mapping[SessionKey, Sequence[tuple[Path, Mapping[str, Any]]]],
    *,
    site_map: Mapping[SessionKey, str] | None = None,
    others: Mapping[SessionKey, Sequence[tuple[Path, Mapping[str, Any]]]] | None = None,
) -> tuple[dict[SessionKey, str], str]:
    """Decide the site of every session.

    Parameters
    ----------
    sessions : mapping
        ``{(subject, session): [(dwi path, merged metadata), ...]}`` of the
        selected runs.
    site_map : mapping, optional
        From :func:`load_site_map`; overrides the sidecars.
    others : mapping, optional
        The same for the dataset's sessions outside the selection.  They take part
        in choosing the rule and the labels (so a participant-level run labels its
        sites as a run on the whole dataset does), but their errors are ignored.

    Returns
    -------
    sites : dict
        ``{(subject, session): site label}`` of ``sessions``.
    source : str
        The rule used: ``"site-map"``, ``"sidecar"`` or ``"session"``.

    Raises
    ------
    InputDatasetError
        If the site map misses sessions, the runs of one session come from
        different scanners, or only some sessions carry scanner fields.
    """
    if site_map is not None:
        return _sites_from_map(sessions, site_map), "site-map"
    others = {k: v for k, v in (others or {}).items() if k not in sessions}
    identities = {
        key: [(path, ScannerIdentity.from_metadata(meta)) for path, meta in runs]
        for key, runs in (*sessions.items(), *others.items())
    }
    if not any(ident.model for runs in identities.values() for _, ident in runs):
        sites = {key: key[1] if key[1] is not None else UNKNOWN_SITE for key in sessions}
        if UNKNOWN_SITE in sites.values():
            LOGGER.warning(
                "No site map, no scanner fields in the sidecars and no session labels: "
                "runs without a session get the site %r. Pass --site-map to name sites.",
                UNKNOWN_SITE,
            )
        return sites, "session"
    per_session = {key: _session_identity(key, identities[key]) for key in sessions}
    for key in others:
        try:
            per_session[key] = _session_identity(key, identities[key])
        except InputDatasetError as err:
            LOGGER.debug("Ignoring unselected session for site labels: %s", err)
    labels = _label_identities(per_session)
    return {key: labels[key] for key in sessions}, "sidecar"


def _sites_from_map(
    sessions: Mapping[SessionKey, object], site_map: Mapping[SessionKey, str]
) -> dict[SessionKey, str]:
    sites: dict[SessionKey, str] = {}
    uncovered = []
    for key in sessions:
        site = site_map.get(key, site_map.get((key[0], None)))
        if site is None:
            uncovered.append(format_session(key))
        else:
            sites[key] = sanitize_label(site, context=f"site map entry of {format_session(key)}")
    if uncovered:
        raise InputDatasetError(
            f"The site map does not cover {len(uncovered)} session(s) with dMRI runs: "
            f"{', '.join(uncovered)}. Add a row (participant_id, session_id, site) for each."
        )
    return sites


def _session_identity(
    key: SessionKey, runs: Sequence[tuple[Path, ScannerIdentity]]
) -> ScannerIdentity:
    known = [(path, ident) for path, ident in runs if ident.model is not None]
    if not known:
        raise InputDatasetError(
            f"Cannot decide the site of {format_session(key)}: the sidecars of "
            f"{', '.join(str(p) for p, _ in runs)} have no ManufacturersModelName or "
            "Manufacturer, while other sessions do. Add the scanner fields to the JSON "
            "sidecars or pass --site-map sites.tsv (participant_id, session_id, site)."
        )
    merged = known[0][1]
    for path, ident in known[1:]:
        combined = merged.merge(ident)
        if combined is None:
            raise InputDatasetError(
                f"The runs of {format_session(key)} come from different scanners: "
                f"{known[0][0]} says {merged.describe()}, {path} says {ident.describe()}. "
                "One session must be scanned at one site; fix the sidecars, split the "
                "session, or pass --site-map sites.tsv."
            )
        merged = combined
    return merged


def _label_identities(per_session: Mapping[SessionKey, ScannerIdentity]) -> dict[SessionKey, str]:
    by_model: dict[str, set[ScannerIdentity]] = defaultdict(set)
    for ident in per_session.values():
        by_model[str(ident.model)].add(ident)
    labels: dict[ScannerIdentity, str] = {}
    for model, idents in by_model.items():
        fields = {i.field_strength for i in idents if i.field_strength is not None}
        serials = sorted({i.serial for i in idents if i.serial is not None})
        tails = _serial_tails(serials) if len(serials) > 1 else {}
        for ident in idents:
            label = model
            if len(fields) > 1 and ident.field_strength is not None:
                label += f"{ident.field_strength:g}T".replace(".", "p")
            if ident.serial in tails:
                label += f"SN{tails[ident.serial]}"
            labels[ident] = label
    return {key: labels[ident] for key, ident in per_session.items()}


def _serial_tails(serials: Sequence[str]) -> dict[str, str]:
    """Shortest common-length endings (at least 4 characters) that tell serials apart."""
    for width in range(_SERIAL_TAIL, max(len(s) for s in serials) + 1):
        tails = {s: s[-width:] for s in serials}
        if len(set(tails.values())) == len(serials):
            return tails
    return {s: s for s in serials}
