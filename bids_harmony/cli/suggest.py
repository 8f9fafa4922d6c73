"""An argument parser that answers a mistyped option with "did you mean".

Python 3.11's argparse only says ``unrecognized arguments`` (``suggest_on_error``
came in 3.14), and when the mistyped option stands before the positionals its
value is taken for one of them, so the error names the wrong argument.  The
parser here checks every ``--option`` against the known ones before parsing and
names the closest matches; like argparse it prints the usage and exits with 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence


def close_options(
    option: str, known: Sequence[str] | Mapping[str, str], *, margin: float = 0.1
) -> list[str]:
    """The known options closest to ``option``, best first.

    ``known`` may map each option string to the one to suggest for it (an alias
    such as ``--participant_label`` to ``--participant-label``).  Only matches
    within ``margin`` of the best similarity are kept: a clear winner is named
    alone.

    >>> close_options("--partcipant-label", ["--participant-label", "--phantom-label"])
    ['--participant-label']
    """
    names = dict(known) if isinstance(known, Mapping) else {o: o for o in known}
    matches = difflib.get_close_matches(option, list(names), n=len(names), cutoff=0.6)
    if not matches:
        return []

    def ratio(match: str) -> float:
        return difflib.SequenceMatcher(None, option, match).ratio()

    best = ratio(matches[0])
    out: list[str] = []
    for match in matches:
        if ratio(match) >= best - margin and names[match] not in out:
            out.append(names[match])
    return out


class SuggestingArgumentParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` that suggests the option meant by a mistyped one."""

    def long_options(self) -> dict[str, str]:
        """Every ``--option`` string of this parser, its groups included, mapped to the
        first of its action (what the help shows, e.g. ``--participant-label`` for
        ``--participant_label``)."""
        # argument groups register their actions with the parser, so one list has them all
        out = {}
        for action in self._actions:
            names = [o for o in action.option_strings if o.startswith("--")]
            out.update({name: names[0] for name in names})
        return out

    def unknown_options(self, args: Sequence[str]) -> list[str]:
        """``--options`` of ``args`` that name no option, not even as an abbreviation."""
        known = self.long_options()
        unknown = []
        for arg in args:
            if arg == "--":  # what follows is positional
                break
            if not arg.startswith("--") or " " in arg:
                continue
            name = arg.split("=", 1)[0]
            if name in known or (self.allow_abbrev and any(o.startswith(name) for o in known)):
                continue
            unknown.append(name)
        return unknown

    def parse_args(self, args=None, namespace=None):
        """As :meth:`argparse.ArgumentParser.parse_args`, after the option check
        (``parse_known_args`` is left as it is: it exists to let unknown options through)."""
        argv = list(sys.argv[1:] if args is None else args)
        unknown = self.unknown_options(argv)
        if unknown:
            known = self.long_options()
            lines = []
            for name in unknown:
                matches = close_options(name, known)
                hint = f" (did you mean {' or '.join(matches)}?)" if matches else ""
                lines.append(f"unrecognized option {name}{hint}")
            self.error("; ".join(lines))
        return super().parse_args(argv, namespace)
