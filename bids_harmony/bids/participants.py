"""Participant selection and phantom detection.

A participant is a *phantom* when, by the first rule that applies:

1. ``phantom-label``: it is listed in ``--phantom-label``;
2. ``participants.tsv``: the file has a ``phantom`` column that is true/yes/1, or a
   ``species`` column equal to ``phantom`` (case-insensitive);
3. ``label-prefix``: its label starts with ``phantom`` (case-insensitive).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from bids_harmony.bids.labels import strip_prefix
from bids_harmony.bids.tsv import read_tsv
from bids_harmony.errors import InputDatasetError, NoDataError

LOGGER = logging.getLogger(__name__)

PHANTOM_PREFIX = "phantom"
_TRUE = {"true", "yes", "1"}


def normalize_labels(labels: str | Iterable[str] | None, prefix: str) -> list[str] | None:
    """Labels without their BIDS prefix, in order, without duplicates.

    A single string is one label (not a sequence of characters).

    >>> normalize_labels(["sub-01", "02", "01"], "sub-")
    ['01', '02']
    >>> normalize_labels("ses-GE", "ses-")
    ['GE']
    """
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    out: list[str] = []
    for label in labels:
        label = strip_prefix(label, prefix)
        if label and label not in out:
            out.append(label)
    return out


def check_labels(
    requested: list[str],
    existing: Iterable[str],
    prefix: str,
    what: str,
    *,
    listing: str | None = None,
) -> None:
    """Raise :class:`NoDataError` if some requested labels do not exist.

    The message lists the labels that do exist, introduced by ``listing``
    (default ``"Existing <what>s"``; the phantom check lists every participant,
    which are not all phantoms).
    """
    existing = sorted(set(existing))
    unknown = [label for label in requested if label not in existing]
    if unknown:
        found = ", ".join(f"{prefix}{e}" for e in existing) or "none"
        raise NoDataError(
            f"{what} {', '.join(prefix + u for u in unknown)} not found in the dataset. "
            f"{listing or f'Existing {what.lower()}s'}: {found}. Check the spelling of the "
            "label(s)."
        )


def find_phantoms(
    bids_dir: Path,
    subjects: Iterable[str],
    *,
    phantom_label: str | Iterable[str] | None = None,
) -> tuple[frozenset[str], str]:
    """Decide which participants are phantoms.

    Parameters
    ----------
    bids_dir : Path
        Dataset root (for ``participants.tsv``).
    subjects : iterable of str
        All participant labels of the dataset, without ``sub-``.
    phantom_label : str or iterable of str, optional
        Explicit phantom labels; override everything else.

    Returns
    -------
    phantoms : frozenset of str
    rule : str
        ``"phantom-label"``, ``"participants.tsv"`` or ``"label-prefix"``.

    Raises
    ------
    NoDataError
        If a ``phantom_label`` is not a participant of the dataset.
    InputDatasetError
        If ``participants.tsv`` is unreadable or has no ``participant_id`` column
        while it has a ``phantom``/``species`` column.
    """
    subjects = sorted(set(subjects))
    labels = normalize_labels(phantom_label, "sub-")
    if labels is not None:
        check_labels(labels, subjects, "sub-", "Phantom participant",
                     listing="Participants in the dataset")  # fmt: skip
        return frozenset(labels), "phantom-label"
    prefixed = {s for s in subjects if s.lower().startswith(PHANTOM_PREFIX)}
    table = _phantoms_from_tsv(bids_dir / "participants.tsv")
    if table is None:
        return frozenset(prefixed), "label-prefix"
    marked, listed = table
    unlisted = [s for s in subjects if s not in listed]
    if unlisted:
        LOGGER.warning(
            "participants.tsv does not list %s; phantoms among them are recognized by the "
            "label prefix %r only. Add them to participants.tsv.",
            ", ".join(f"sub-{s}" for s in unlisted),
            PHANTOM_PREFIX,
        )
    phantoms = {s for s in subjects if s in marked} | (prefixed & set(unlisted))
    return frozenset(phantoms), "participants.tsv"


def _phantoms_from_tsv(path: Path) -> tuple[set[str], set[str]] | None:
    """(phantom labels, all listed labels) of participants.tsv; None without the columns."""
    if not path.is_file():
        return None
    table = read_tsv(
        path,
        what="Participants table",
        hint="Fix the file (tab-separated, UTF-8) or select phantoms with --phantom-label.",
    )
    columns = list(table.columns)
    if "phantom" not in columns and "species" not in columns:
        return None
    if "participant_id" not in columns:
        raise InputDatasetError(
            f"{path} has a phantom/species column but no participant_id column (found: "
            f"{columns}). Add participant_id (tab-separated) or use --phantom-label."
        )
    marked, listed = set(), set()
    for row in table.rows:
        if not row["participant_id"]:
            continue  # n/a or empty: names no participant
        label = strip_prefix(row["participant_id"], "sub-")
        listed.add(label)
        phantom, species = row.get("phantom") or "", row.get("species") or ""
        if phantom.lower() in _TRUE or species.lower() == "phantom":
            marked.add(label)
    return marked, listed
