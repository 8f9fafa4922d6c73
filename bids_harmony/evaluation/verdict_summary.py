"""The verdict in paragraphs a reviewer reads: per scenario and method, then head to head.

Built from the rows of :mod:`bids_harmony.evaluation.verdict` (numbers in, text out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bids_harmony.evaluation.verdict import (
    LABELS,
    Verdict,
    duel_methods,
    format_p,
    percent_words,
)
from bids_harmony.evaluation.wording import (
    METHOD_NAMES,
    TISSUE_WORDS,
    scenario_title,
    shell_words,
)

__all__ = ["summary_paragraphs"]


def _where(r: Verdict, several_shells: bool) -> str:
    where = f"{r.metric} in {TISSUE_WORDS.get(r.tissue, r.tissue)}"
    return f"{where} at {shell_words(r.shell)}" if several_shells else where


def _listing(rows: Sequence[Verdict], several_shells: bool, word: str = "", most: int = 3) -> str:
    """The ``most`` largest changes: "FA in WM[ word] by 31 % (p = 0.002); ..."."""
    top = sorted(rows, key=lambda r: -abs(r.change))[:most]
    items = [
        f"{_where(r, several_shells)}{word} by {percent_words(r.change)} ({format_p(r.pvalue)})"
        for r in top
    ]
    more = len(rows) - len(top)
    text = "; ".join(items)
    return text + (f"; and {more} more" if more else "")


def _overall(name: str, counts: Mapping[str, int], total: int) -> str:
    better, worse = counts.get("better", 0), counts.get("worse", 0)
    rest = total - better - worse
    same = f" and no significant change in {rest}" if rest else ""
    if better == total:
        return f"{name} brought inter-scanner variability down in every comparison."
    if worse and not better:
        return (f"{name} did not help: it made {worse} of {total} comparisons worse and none "
                f"better{f' (no significant change in {rest})' if rest else ''}.")  # fmt: skip
    if better and not worse:
        return (f"{name} helped in {better} of {total} comparisons and made none worse"
                f"{f' (no significant change in {rest})' if rest else ''}.")  # fmt: skip
    if better and worse:
        return (f"{name} had mixed results: better in {better}, worse in {worse}{same} of "
                f"{total} comparisons.")  # fmt: skip
    return f"{name} made no significant difference in any of the {total} comparisons."


def summary_paragraphs(
    verdicts: Sequence[Verdict], duels: Mapping[tuple[str, ...], Mapping[str, int]] | None = None
) -> list[str]:
    """Paragraphs a reviewer can read: per scenario and method, then method vs method.

    Parameters
    ----------
    verdicts : sequence of Verdict
        From :func:`shell_verdicts`, any number of scenarios and shells.
    duels : mapping, optional
        ``{(scenario, shell): method_duels(...)}``, or with more in the key
        (``(scenario, shell, a, b)``: one head to head per pair of methods); the
        two methods are read from each :func:`method_duels` result.

    Returns
    -------
    list of str
        E.g. "SIGNA Premier → Prisma: HARP had mixed results: better in 2, worse in 3
        and no significant change in 4 of 9 comparisons. It reduced the inter-scanner
        error of FA in WM by 31 % (p = 0.002). It made MD in GM worse by 12 % (p = 0.04)."
    """
    paragraphs = []
    for scenario in dict.fromkeys(r.scenario for r in verdicts):
        rows = [r for r in verdicts if r.scenario == scenario]
        several = len({r.shell for r in rows}) > 1
        for method in dict.fromkeys(r.method for r in rows):
            mine = [r for r in rows if r.method == method]
            name = METHOD_NAMES.get(method, method)
            counts = {label: sum(r.label == label for r in mine) for label in LABELS}
            text = [f"{scenario_title(scenario)}: {_overall(name, counts, len(mine))}"]
            better = [r for r in mine if r.label == "better"]
            worse = [r for r in mine if r.label == "worse"]
            if better:
                text.append(f"It reduced the inter-scanner error of {_listing(better, several)}.")
            if worse:
                text.append(f"It made {_listing(worse, several, ' worse')}.")
            if counts["not tested"]:
                text.append(f"{counts['not tested']} comparison(s) could not be tested "
                            "(fewer than two ROIs).")  # fmt: skip
            paragraphs.append(" ".join(text))
    for key, d in (duels or {}).items():
        if not d.get("n"):
            continue
        scenario, shell = key[:2]
        a, b = duel_methods(d)
        lead, other = (b, a) if d[b] > d[a] else (a, b)
        where = f"{scenario_title(scenario, shell)}"
        if d[lead] == d[other]:
            paragraphs.append(f"{where}: {METHOD_NAMES.get(a, a)} and {METHOD_NAMES.get(b, b)} "
                              f"each had the lower inter-scanner error in {d[lead]} of "
                              f"{d['n']} comparisons.")  # fmt: skip
            continue
        paragraphs.append(
            f"{where}: {METHOD_NAMES.get(lead, lead)} was better than "
            f"{METHOD_NAMES.get(other, other)} in "
            f"{d[lead]} of {d['n']} comparisons (lower inter-scanner error; significantly in "
            f"{d[f'{lead}_significant']})."
        )
    return paragraphs
