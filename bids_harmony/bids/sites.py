"""Site labels: where each session was scanned.

The site of a session is decided by the first rule that applies:

1. ``site-map``: a ``--site-map`` TSV (:mod:`bids_harmony.bids.site_map`);
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

import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_harmony.bids.labels import (
    NOT_ALNUM,
    SessionKey,
    format_session,
    sanitize_label,
    strip_prefix,
)
from bids_harmony.bids.site_map import (
    SiteMap,
    load_site_map,
    sites_from_map,
    warn_unmatched_rows,
)
from bids_harmony.errors import InputDatasetError

__all__ = [
    "SITE_SOURCES",
    "UNKNOWN_SITE",
    "ScannerIdentity",
    "SessionKey",
    "SiteMap",
    "assign_sites",
    "format_session",
    "load_site_map",
    "sanitize_label",
    "strip_prefix",
]

LOGGER = logging.getLogger(__name__)

SITE_SOURCES: Mapping[str, str] = {
    "site-map": "from the site map",
    "sidecar": "from the sidecar scanner identity",
    "session": "from the session labels",
}
"""The rules that can decide sites (``Study.site_source``), with how to say them."""
UNKNOWN_SITE = "unknown"
"""Site of session-less runs when no site map and no scanner fields are available."""

_SERIAL_TAIL = 4


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
            value = NOT_ALNUM.sub("", str(metadata.get(key) or ""))
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
    dataset_sessions: Collection[SessionKey] | None = None,
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
    dataset_sessions : collection of SessionKey, optional
        All sessions of the dataset with dMRI runs, selected or not.  Site map rows
        that match none of them are logged as a warning (e.g. a typo in a label);
        without it, rows are checked against ``sessions`` only.

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
        known = set(sessions) | set(dataset_sessions or ())
        warn_unmatched_rows(site_map, known, whole_dataset=dataset_sessions is not None)
        return sites_from_map(sessions, site_map), "site-map"
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
