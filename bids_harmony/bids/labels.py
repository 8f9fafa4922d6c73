"""BIDS labels of participants, sessions and sites.

Helpers shared by the site rules (:mod:`bids_harmony.bids.sites`), the site map
(:mod:`bids_harmony.bids.site_map`) and participant selection.
"""

from __future__ import annotations

import re

from bids_harmony.errors import InputDatasetError

SessionKey = tuple[str, str | None]
"""``(subject, session)`` labels without prefixes; ``session`` is None without sessions."""

NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
"""What :func:`sanitize_label` removes."""


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
    label = NOT_ALNUM.sub("", str(text))
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
