"""The harmonization methods this version carries, by name.

``train --method NAME`` looks a method up here, ``participant`` applies the models
of every registered method found in ``OUT/models``, ``group --methods`` evaluates
them, and ``bids-harmony --list-methods`` prints this table.  A new method is a
sub-package of :mod:`bids_harmony.methods` with a
:class:`~bids_harmony.methods.base.HarmonizationMethod` subclass, added to
:func:`_build`.
"""

from __future__ import annotations

from functools import lru_cache

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.base import HarmonizationMethod
from bids_harmony.methods.names import METHOD_NAMES

__all__ = ["METHOD_NAMES", "UnknownMethodError", "all_methods", "describe_methods", "get_method"]


class UnknownMethodError(BidsHarmonyError, KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@lru_cache(maxsize=1)
def _build() -> dict[str, HarmonizationMethod]:
    # Imported here: HARP pulls in torch, which a CLI --help must not wait for.
    from bids_harmony.methods.combat.method import CombatMethod
    from bids_harmony.methods.dki_cnn.method import DkiCnnMethod
    from bids_harmony.methods.harp.method import HarpMethod
    from bids_harmony.methods.rish.method import RishMethod

    methods: list[HarmonizationMethod] = [HarpMethod(), RishMethod(), CombatMethod(),
                                          DkiCnnMethod()]  # fmt: skip
    return {m.name: m for m in methods}


def all_methods() -> list[HarmonizationMethod]:
    """Every registered method."""
    return list(_build().values())


def get_method(name: str) -> HarmonizationMethod:
    """The method called ``name``; an error listing the registered names otherwise."""
    methods = _build()
    if name not in methods:
        raise UnknownMethodError(
            f"unknown harmonization method {name!r}; available: {', '.join(methods)} "
            "(bids-harmony --list-methods describes them)."
        )
    return methods[name]


def describe_methods() -> str:
    """A plain-text table: name, what it trains from, what it harmonizes, title."""
    rows = [("method", "trains from", "harmonizes", "")]
    rows += [(m.name, m.trains_from.value, m.harmonizes.value, m.title) for m in all_methods()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    ).rstrip()
