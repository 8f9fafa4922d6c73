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

from bids_harmony.bids.derivatives import shell_acq

KINDS = {
    "fa": "model-tensor_param-fa_dwimap",
    "md": "model-tensor_param-md_dwimap",
    "gfa": "model-csd_param-gfa_dwimap",
    "sh": "model-sh_param-coeffs_dwimap",
}


@dataclass(frozen=True)
class ShellMaps:
    """Participant-level maps of one shell of one run.

    Attributes
    ----------
    run : DwiRun
    label : str
        Shell label, e.g. ``b1000``.
    raw, harp : dict of str to Path
        ``fa``/``md``/``gfa``/``sh`` maps, unharmonized and HARP-harmonized (the
        latter empty when the run has none).
    """

    run: Any
    label: str
    folder: Path
    prefix: str
    raw: dict[str, Path]
    harp: dict[str, Path] = field(default_factory=dict)

    @property
    def bval(self) -> float:
        return float(self.label[1:])

    def file(self, kind: str, desc: str | None = None) -> Path:
        """Path of a map of this shell (``desc``: ``harmonized``, ``rish`` or None)."""
        middle = f"_desc-{desc}" if desc else ""
        return self.folder / f"{self.prefix}{middle}_{KINDS[kind]}.nii.gz"


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


def _shell_prefix(run: Any, label: str) -> str:
    """The run's file-name entities with the per-shell ``acq`` label."""
    raw_acq = run.entities.get("acquisition")
    acq = f"acq-{shell_acq(raw_acq, label, len(run.shells))}"
    tokens = run.prefix.split("_")
    if raw_acq is not None:
        return "_".join(acq if t == f"acq-{raw_acq}" else t for t in tokens)
    at = 2 if len(tokens) > 1 and tokens[1].startswith("ses-") else 1
    return "_".join([*tokens[:at], acq, *tokens[at:]])


def run_shells(derivatives: Path, run: Any) -> list[ShellMaps]:
    """Shells of a run with every unharmonized map present."""
    folder = derivatives / run.rel_dir
    out = []
    for bval in run.shells:
        label = f"b{int(round(bval))}"
        prefix = _shell_prefix(run, label)
        maps = ShellMaps(run, label, folder, prefix, {})
        raw = {kind: maps.file(kind) for kind in KINDS}
        if not all(p.exists() for p in raw.values()):
            continue
        harp = {kind: maps.file(kind, "harmonized") for kind in KINDS}
        harp = harp if all(p.exists() for p in harp.values()) else {}
        out.append(ShellMaps(run, label, folder, prefix, raw, harp))
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

