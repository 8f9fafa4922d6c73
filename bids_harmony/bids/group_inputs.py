"""Which participant-level outputs the group level evaluates.

A *traveling subject* has at least two human sessions at the source site and two
at the target site (scan-rescan at each: the paper's K = 2 per site, K = 4
inter-scanner).  For every subject the first two sessions (sorted labels) per
site are used; one run per session and raw ``acq`` entity.  Each run has one
:class:`ShellMaps` per shell it was fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_harmony.bids.derivatives import SHELL_MAPS
from bids_harmony.bids.reader import RunOutputs

#: Maps of a shell the group level evaluates (kinds of :data:`SHELL_MAPS`).
KINDS = tuple(SHELL_MAPS)


@dataclass(frozen=True)
class ShellMaps:
    """Participant-level maps of one shell of one run.

    Attributes
    ----------
    run : DwiRun
    label : str
        Shell label, e.g. ``b1000``.
    outputs : RunOutputs
        The reader of the run's derivatives.
    raw, harp : dict of str to Path
        ``fa``/``md``/``gfa``/``sh`` maps, unharmonized and HARP-harmonized (the
        latter empty when the run has none).
    """

    run: Any
    label: str
    outputs: RunOutputs
    raw: dict[str, Path]
    harp: dict[str, Path] = field(default_factory=dict)

    @property
    def bval(self) -> float:
        return float(self.label[1:])

    def file(self, kind: str, method: str | None = None) -> Path:
        """Where a map of this shell is (``method``: ``"harp"``, ``"rish"`` or None).

        The path the writer uses, whether or not the file exists yet.
        """
        return self.outputs.root / self.outputs.names.shell_map(self.label, kind, method)


@dataclass(frozen=True)
class Selection:
    """Traveling subjects of one (source, target, acq) scenario and what was left out."""

    source: str
    target: str
    acq: str | None
    sessions: dict[str, dict[str, list[Any]]]  # subject -> site -> two runs
    skipped: list[str]

    @property
    def subjects(self) -> list[str]:
        return sorted(self.sessions)


def run_shells(derivatives: Path, run: Any) -> list[ShellMaps]:
    """Shells of a run with every unharmonized map present."""
    outputs = RunOutputs.of_run(derivatives, run)
    out = []
    for label in outputs.shells(kinds=KINDS):
        raw = {kind: outputs.root / outputs.names.shell_map(label, kind) for kind in KINDS}
        harp = {kind: outputs.shell_map(label, kind, "harp") for kind in KINDS}
        found = {kind: path for kind, path in harp.items() if path is not None}
        out.append(ShellMaps(run, label, outputs, raw, found if len(found) == len(KINDS) else {}))
    return out


def select_traveling(study: Any, source: str, target: str) -> list[Selection]:
    """Traveling subjects per raw ``acq`` entity for a source → target scenario."""
    by_key: dict[tuple[str | None, str], dict[str, list[Any]]] = {}
    for run in study.runs:
        if run.is_phantom or run.site not in (source, target):
            continue
        key = (run.entities.get("acquisition"), run.subject)
        by_key.setdefault(key, {}).setdefault(run.site, []).append(run)
    scenarios: dict[str | None, Selection] = {}
    for (acq, subject), sites in sorted(by_key.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        sel = scenarios.setdefault(acq, Selection(source, target, acq, {}, []))
        counts = {site: len({r.session for r in sites.get(site, [])}) for site in (source, target)}
        if min(counts.values()) < 2:
            sel.skipped.append(
                f"sub-{subject}"
                + (f" acq-{acq}" if acq else "")
                + f": {counts[source]} session(s) at {source}, {counts[target]} at {target} "
                "(2 at each are needed for scan-rescan and inter-scanner errors)"
            )
            continue
        sel.sessions[subject] = {
            site: sorted(sites[site], key=lambda r: str(r.session))[:2] for site in (source, target)
        }
    return list(scenarios.values())
