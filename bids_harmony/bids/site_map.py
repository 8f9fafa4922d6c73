"""The ``--site-map`` TSV: which site each session was scanned at, as the user says.

The map overrides the scanner identity of the sidecars (rule 1 of
:mod:`bids_harmony.bids.sites`): every selected session must be covered, and rows
that match no session of the dataset are reported, as they are usually typos.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path

from bids_harmony.bids.labels import SessionKey, format_session, sanitize_label, strip_prefix
from bids_harmony.bids.tsv import MISSING, read_tsv
from bids_harmony.errors import InputDatasetError

LOGGER = logging.getLogger(__name__)

_MISSING = {"", MISSING}
_SHOWN_ROWS = 10


class SiteMap(dict[SessionKey, str]):
    """``{(subject, session or None): site label}`` read from a site map file.

    A plain dict that also remembers where each entry came from, so that messages
    can point at the file and line.

    Attributes
    ----------
    source : Path or None
        The TSV file.
    lines : dict
        ``{key: line}`` of the file.
    """

    def __init__(
        self,
        entries: Mapping[SessionKey, str] | None = None,
        *,
        source: Path | None = None,
        lines: Mapping[SessionKey, int] | None = None,
    ) -> None:
        super().__init__(entries or {})
        self.source = source
        self.lines = dict(lines or {})


def load_site_map(path: str | os.PathLike[str]) -> SiteMap:
    """Read a site map TSV.

    Columns: ``participant_id`` and ``site`` (required) and ``session_id``
    (optional; without it, or where it is ``n/a``, the site applies to all sessions
    of the participant).  Labels may be written with or without ``sub-``/``ses-``.
    The file is read by :func:`bids_harmony.bids.tsv.read_tsv` (spreadsheet exports
    with trailing tabs, CRLF line ends or a byte-order mark are fine).

    Parameters
    ----------
    path : path-like
        Tab-separated file with a header row.

    Returns
    -------
    SiteMap
        ``{(subject, session or None): sanitized site label}``.

    Raises
    ------
    InputDatasetError
        If the file is missing or unreadable, lacks a required column, has an empty
        cell, gives one session two sites, or two site names sanitize to one label.
    """
    path = Path(path)
    table = read_tsv(
        path, what="Site map", hint="Pass an existing tab-separated UTF-8 file to --site-map."
    )
    if not table.rows:
        raise InputDatasetError(
            f"Site map {path} has no rows. Write a header 'participant_id<TAB>session_id"
            "<TAB>site' followed by one row per session."
        )
    columns = list(table.columns)
    missing = [c for c in ("participant_id", "site") if c not in columns]
    if missing:
        raise InputDatasetError(
            f"Site map {path} lacks the column(s) {', '.join(missing)} (found: {columns}). "
            "It must be tab-separated with a header 'participant_id<TAB>session_id<TAB>site'."
        )
    site_map = SiteMap(source=path)
    raw_names: dict[str, str] = {}
    for line, row in table.numbered():
        raw_site = row["site"] or ""
        subject = strip_prefix(row["participant_id"] or "", "sub-")
        if subject.lower() in _MISSING or not raw_site:
            raise InputDatasetError(
                f"Site map {path}, line {line}: participant_id and site must not be empty."
            )
        session: str | None = strip_prefix(row.get("session_id") or MISSING, "ses-")
        if session is not None and session.lower() in _MISSING:
            session = None
        site = sanitize_label(raw_site, context=f"site map {path}, line {line}")
        other = raw_names.setdefault(site, raw_site)
        if other != raw_site:
            raise InputDatasetError(
                f"Site map {path}: the site names {other!r} and {raw_site!r} both become "
                f"the label {site!r}. Rename one of them."
            )
        key = (subject, session)
        if site_map.setdefault(key, site) != site:
            raise InputDatasetError(
                f"Site map {path}, line {line}: {format_session(key)} is given two sites "
                f"({site_map[key]!r} and {site!r}). Keep one row per session."
            )
        site_map.lines.setdefault(key, line)
    return site_map


def sites_from_map(
    sessions: Collection[SessionKey], site_map: Mapping[SessionKey, str]
) -> dict[SessionKey, str]:
    """The site of each session; a row without a session covers the participant's.

    Raises
    ------
    InputDatasetError
        Listing the sessions the map does not cover.
    """
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


def unmatched_rows(
    site_map: Mapping[SessionKey, str], sessions: Collection[SessionKey]
) -> list[SessionKey]:
    """Site map entries that apply to none of ``sessions``.

    An entry without a session applies to every session of its participant.

    >>> unmatched_rows({("01", "A"): "GE", ("02", None): "SI", ("03", "A"): "GE"},
    ...                {("01", "A"), ("02", "B")})
    [('03', 'A')]
    """
    subjects = {subject for subject, _ in sessions}
    return [
        key
        for key in site_map
        if (key[0] not in subjects if key[1] is None else key not in sessions)
    ]


def warn_unmatched_rows(
    site_map: Mapping[SessionKey, str], sessions: Collection[SessionKey], *, whole_dataset: bool
) -> None:
    """Log a warning naming the :func:`unmatched_rows` (file and line when known).

    Parameters
    ----------
    site_map : mapping
        A :class:`SiteMap` names its file and lines; a plain mapping its entries.
    sessions : collection of SessionKey
        The sessions the rows are compared with.
    whole_dataset : bool
        Whether ``sessions`` are all the dataset's, or only the selected ones (the
        message says which, as a row may then be meant for an unselected session).
    """
    unmatched = unmatched_rows(site_map, sessions)
    if not unmatched:
        return
    source = site_map.source if isinstance(site_map, SiteMap) else None
    lines = site_map.lines if isinstance(site_map, SiteMap) else {}
    rows = [
        (f"line {lines[key]} " if key in lines else "") + f"({format_session(key)})"
        for key in unmatched
    ]
    shown = ", ".join(rows[:_SHOWN_ROWS]) + (
        f" and {len(rows) - _SHOWN_ROWS} more" if len(rows) > _SHOWN_ROWS else ""
    )
    scope = (
        "no session with dMRI runs in the dataset"
        if whole_dataset
        else "no selected session (only the selected participants/sessions were checked)"
    )
    LOGGER.warning(
        "Site map%s: %d row(s) match %s and are ignored: %s. Check their participant "
        "and session labels.",
        f" {source}" if source is not None else "",
        len(rows),
        scope,
        shown,
    )
