"""Plain-words names for the group report: site pairs, protocols, shells, comparisons.

The group level names its files by BIDS-like stems
(``src-SIGNAPremier_tgt-Prisma_acq-multishell_b1000``) and its tables by column
keys (``inter_harp vs inter_none``); a reader of the report should see
"SIGNA Premier → Prisma, multi-shell protocol, b = 1000 s/mm²" and
"HARP vs none (inter-scanner)" instead.  Text only, no I/O.
"""

from __future__ import annotations

import re

from bids_harmony.evaluation.evaluated import EVALUATED_METHODS, condition

__all__ = [
    "METHOD_NAMES",
    "TISSUE_WORDS",
    "acq_words",
    "comparison_words",
    "condition_words",
    "parse_stem",
    "scenario_title",
    "shell_words",
    "site_words",
]

METHOD_NAMES: dict[str, str] = {
    "none": "no harmonization", **{m.name: m.display for m in EVALUATED_METHODS},
}  # fmt: skip
"""Display name of each evaluated method (``none``: the unharmonized data)."""

TISSUE_WORDS: dict[str, str] = {"WM": "WM", "GM": "GM", "brain": "the whole brain"}
"""How a tissue reads in a sentence ("FA in WM", "FA in the whole brain")."""

_CONDITION_WORDS: dict[str, tuple[str, bool]] = {
    "sr_source": ("scan-rescan at the source site", False),
    "sr_target": ("scan-rescan at the target site", False),
    "inter_none": ("none", True),
    **{condition(m.name): (m.display, True) for m in EVALUATED_METHODS},
}  # fmt: skip
"""Condition key -> (name, whether it is an inter-scanner condition)."""

_ACQ_WORDS: dict[str, str] = {
    "multishell": "multi-shell", "singleshell": "single-shell", "dti": "DTI",
    "hardi": "HARDI", "dsi": "DSI",
}  # fmt: skip
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_STEM = re.compile(r"src-(?P<source>[^_]+)_tgt-(?P<target>[^_]+)(?:_acq-(?P<acq>[^_]+))?")


def site_words(label: str) -> str:
    """A site label with the spaces its sanitizing removed put back at case changes.

    >>> site_words("SIGNAPremier"), site_words("Prisma"), site_words("GE")
    ('SIGNA Premier', 'Prisma', 'GE')
    """
    return _CAMEL.sub(" ", str(label))


def acq_words(acq: str | None) -> str:
    """The protocol named by a BIDS ``acq`` label ("" without one).

    >>> acq_words("multishell"), acq_words("HCPlike"), acq_words(None)
    ('multi-shell protocol', 'HCPlike protocol', '')
    """
    if not acq:
        return ""
    return f"{_ACQ_WORDS.get(acq.lower(), acq)} protocol"


def shell_words(label: str) -> str:
    """``b1000`` -> ``b = 1000 s/mm²``; other labels unchanged.

    >>> shell_words("b1000"), shell_words("b2000.5"), shell_words("dwi")
    ('b = 1000 s/mm²', 'b = 2000.5 s/mm²', 'dwi')
    """
    m = re.fullmatch(r"b(\d+(?:\.\d+)?)", str(label))
    return f"b = {m[1]} s/mm²" if m else str(label)


def parse_stem(stem: str) -> tuple[str, str, str | None] | None:
    """``(source, target, acq)`` of a scenario stem, or ``None`` if it is not one.

    >>> parse_stem("src-SIGNAPremier_tgt-Prisma_acq-multishell")
    ('SIGNAPremier', 'Prisma', 'multishell')
    """
    m = _STEM.fullmatch(str(stem))
    return (m["source"], m["target"], m["acq"]) if m else None


def scenario_title(stem: str, shell: str | None = None) -> str:
    """Readable title of a scenario (and shell), e.g. for a report section.

    Parameters
    ----------
    stem : str
        ``src-<source>_tgt-<target>[_acq-<acq>]``; any other text is kept as is.
    shell : str, optional
        Shell label (``b1000``).

    Returns
    -------
    str

    >>> scenario_title("src-SIGNAPremier_tgt-Prisma_acq-multishell", "b1000")
    'SIGNA Premier → Prisma, multi-shell protocol, b = 1000 s/mm²'
    >>> scenario_title("src-GE_tgt-Prisma")
    'GE → Prisma'
    """
    parsed = parse_stem(stem)
    if parsed is None:
        parts = [str(stem)]
    else:
        source, target, acq = parsed
        parts = [f"{site_words(source)} → {site_words(target)}", acq_words(acq)]
    if shell:
        parts.append(shell_words(shell))
    return ", ".join(p for p in parts if p)


def condition_words(key: str) -> str:
    """Name of a condition column key in a comparison (``inter_harp`` -> ``HARP``)."""
    return _CONDITION_WORDS.get(key, (key, False))[0]


def comparison_words(comparison: str) -> str:
    """Readable name of a t-test row, ``"A vs B"`` with condition keys.

    >>> comparison_words("inter_harp vs inter_none")
    'HARP vs none (inter-scanner)'
    >>> comparison_words("HARP vs No harmonization")
    'HARP vs No harmonization'
    """
    parts = [p.strip() for p in str(comparison).split(" vs ")]
    if not all(p in _CONDITION_WORDS for p in parts):
        return str(comparison)
    text = " vs ".join(condition_words(p) for p in parts)
    return f"{text} (inter-scanner)" if all(_CONDITION_WORDS[p][1] for p in parts) else text
