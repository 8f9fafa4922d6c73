"""The harmonization methods the group level evaluates (HARP Eq. 2), in one registry.

Each :class:`EvaluatedMethod` says how a method is named in the participant
outputs (``desc-<name>``) and in the tables (condition ``inter_<name>``,
percentage column ``pct_<name>``), how the report names and colours it, and
whether the angular error of its fibre orientations is evaluated (that needs its
harmonized DWI). Every list of the evaluation -- table columns, comparisons,
figure colours, verdict rows, wording, the methods the group level picks -- is
built from :data:`EVALUATED_METHODS`, in its order; evaluating one more method is
one more entry here (and, in :func:`bids_harmony.workflows.group.choose_methods`,
which outputs it needs).  Data only, no I/O.

>>> [m.name for m in EVALUATED_METHODS]
['harp', 'rish', 'combat']
>>> condition("combat"), pct_column("combat"), display_name("combat")
('inter_combat', 'pct_combat', 'ComBat')
>>> comparisons()[:3]
(('inter_harp', 'inter_none'), ('inter_rish', 'inter_none'), ('inter_combat', 'inter_none'))
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

__all__ = [
    "EVALUATED_METHODS",
    "METHODS",
    "EvaluatedMethod",
    "by_name",
    "comparisons",
    "condition",
    "display_name",
    "pct_column",
]


@dataclass(frozen=True)
class EvaluatedMethod:
    """One harmonization method as the evaluation sees it.

    Attributes
    ----------
    name : str
        The method's name: ``desc-<name>`` outputs, ``inter_<name>`` columns.
    display : str
        Its name in the report ("HARP", "LinearRISH", "ComBat").
    colour : str
        Its colour in the figures (hex RGB).
    fibres : bool
        Whether the fibre orientations of its harmonized DWI are compared with
        the source's (angular error of principal CSD peaks, HARP Table 4).
    aliases : tuple of str
        Other spellings a table's condition may be given by (lower case).
    """

    name: str
    display: str
    colour: str
    fibres: bool = False
    aliases: tuple[str, ...] = ()


EVALUATED_METHODS: tuple[EvaluatedMethod, ...] = (
    EvaluatedMethod("harp", "HARP", "#9467bd", fibres=True),
    EvaluatedMethod("rish", "LinearRISH", "#2ca02c", aliases=("linear_rish",)),
    EvaluatedMethod("combat", "ComBat", "#ff7f0e"),
)
"""The evaluated methods, in the order of the tables, figures and verdict."""

METHODS: tuple[str, ...] = tuple(m.name for m in EVALUATED_METHODS)
"""Their names, in order."""

_BY_NAME = {m.name: m for m in EVALUATED_METHODS}


def by_name(name: str) -> EvaluatedMethod:
    """The registry entry of a method (``KeyError`` naming the known ones)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an evaluated method ({', '.join(METHODS)})") from None


def display_name(name: str) -> str:
    """The report's name of a method (the name itself for an unknown one)."""
    entry = _BY_NAME.get(name)
    return entry.display if entry else name


def condition(name: str) -> str:
    """The inter-scanner condition key of a method (``inter_<name>``)."""
    return f"inter_{name}"


def pct_column(name: str) -> str:
    """The percentage-difference column of a method or of ``none`` (``pct_<name>``)."""
    return f"pct_{name}"


def comparisons(methods: tuple[str, ...] = METHODS) -> tuple[tuple[str, str], ...]:
    """Condition pairs the paired t-tests compare: each method vs none, then method pairs.

    Pairs are ``(a, b)`` with ``a`` before ``b`` in :data:`EVALUATED_METHODS`
    (a test's difference is a minus b).
    """
    keys = [condition(m) for m in methods]
    return (*((k, "inter_none") for k in keys), *combinations(keys, 2))
