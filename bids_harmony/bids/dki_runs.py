"""Which runs get the DKI fit: alone, or combined with the other shells of their session.

DKI needs two non-zero shells (:func:`bids_harmony.dmri.dki.dki_support`).  Many
sites acquire each shell as its own series; :func:`plan_dki` decides, from the
discovered runs alone (no image is read), which runs are fitted how:

* a run whose own table holds the fit is fitted alone, as it always was;
* **single-shell runs are combined** when they belong to one session (same
  subject, session and site), differ *only* in the ``acq`` entity (``acq-b1000``,
  ``acq-b2000``: same ``run``, ``dir``, ``rec``, ...), have different shells, and
  their tables together hold the fit; the session must have no multi-shell run
  of its own (that one is fitted alone and the single-shell runs are left as
  they are).  The runs of a group are ordered by b-value: the first (lowest-b)
  run is the reference of the combination and names its maps
  (:mod:`bids_harmony.dmri.dki_runs` says how they are combined);
* every other single-shell run gets no DKI maps, and :attr:`DkiPlan.notes` says why.

Examples
--------
>>> from types import SimpleNamespace as Run
>>> i = np.arange(30) + 0.5  # 30 directions on a Fibonacci hemisphere
>>> z, phi = 1 - i / 30, i * np.pi * (3 - np.sqrt(5))
>>> g = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
>>> def run(acq, b):
...     return Run(dwi=Path(f"sub-01_acq-{acq}_dwi.nii.gz"), prefix=f"sub-01_acq-{acq}",
...                site="A", subject="01", session=None, bvals=np.r_[0.0, [b] * 30],
...                bvecs=np.r_[np.zeros((1, 3)), g], entities={"subject": "01", "acquisition": acq})
>>> plan = plan_dki([run("b2000", 2000.0), run("b1000", 1000.0)])
>>> [r.prefix for r in plan.groups[0].runs], plan.groups[0].shells
(['sub-01_acq-b1000', 'sub-01_acq-b2000'], (1000.0, 2000.0))
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.dmri.dki import MIN_SHELLS, DkiSupport, dki_support
from bids_harmony.dmri.gradients import B0_THRESHOLD, B_TOLERANCE

__all__ = ["DkiPlan", "DkiRunGroup", "plan_dki"]


@dataclass(frozen=True, eq=False)
class DkiRunGroup:
    """Single-shell runs of one session fitted together.

    Attributes
    ----------
    runs : tuple of DwiRun
        By increasing b-value; ``runs[0]`` is the reference (its grid, its names).
    shells : tuple of float
        The runs' shells, in the same order.
    """

    runs: tuple[Any, ...]
    shells: tuple[float, ...]

    @property
    def first(self) -> Any:
        """The reference run (lowest b-value)."""
        return self.runs[0]

    def names(self) -> str:
        """``a (b=1000) and b (b=2000)`` for messages."""
        parts = [f"{r.prefix} (b={b:g})" for r, b in zip(self.runs, self.shells, strict=True)]
        return ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True, eq=False)
class DkiPlan:
    """What :func:`plan_dki` decided.

    Attributes
    ----------
    alone : dict of Path to DkiSupport
        Runs (``dwi`` path) fitted on their own table.
    groups : tuple of DkiRunGroup
        Runs fitted together.
    unfit : dict of Path to DkiSupport
        Multi-shell runs whose table cannot hold the fit (the support says why).
    notes : dict of Path to str
        Every single-shell run that is not combined: why not (a clause such as
        ``"no other single-shell run of its session differs from it only in acq"``, the
        same for every run with that reason, so a log can count them).
    """

    alone: dict[Path, DkiSupport] = field(default_factory=dict)
    groups: tuple[DkiRunGroup, ...] = ()
    unfit: dict[Path, DkiSupport] = field(default_factory=dict)
    notes: dict[Path, str] = field(default_factory=dict)

    def group_of(self, dwi: Path) -> DkiRunGroup | None:
        """The group a run belongs to, if any."""
        return next((g for g in self.groups if any(r.dwi == dwi for r in g.runs)), None)


def _key(run: Any) -> tuple[Any, ...]:
    """What must be equal for two runs to be combined: everything but ``acq``."""
    others = tuple(sorted((k, str(v)) for k, v in run.entities.items() if k != "acquisition"))
    return (run.subject, run.session, run.site, others)


def plan_dki(
    runs: Iterable[Any],
    *,
    b_tolerance: float = B_TOLERANCE,
    b0_threshold: float = B0_THRESHOLD,
) -> DkiPlan:
    """Sort runs into DKI fits of their own, combined fits and runs without DKI.

    Parameters
    ----------
    runs : iterable of DwiRun
        Discovered runs (``dwi``, ``prefix``, ``subject``, ``session``, ``site``,
        ``entities``, ``bvals``, ``bvecs``).
    b_tolerance, b0_threshold : float
        Shell grouping (:func:`~bids_harmony.dmri.gradients.group_shells`).

    Returns
    -------
    DkiPlan
    """
    settings = {"b_tolerance": b_tolerance, "b0_threshold": b0_threshold}
    plan = DkiPlan()
    single: dict[tuple[Any, ...], list[tuple[Any, float]]] = defaultdict(list)
    multi_shell: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    for run in runs:
        support = dki_support(run.bvals, run.bvecs, name=run.prefix, **settings)
        if support.ok:
            plan.alone[run.dwi] = support
        elif len(support.shells) >= MIN_SHELLS:
            plan.unfit[run.dwi] = support
        elif not support.shells:
            plan.notes[run.dwi] = "it has no diffusion-weighted shell"
        else:
            single[_key(run)].append((run, support.shells[0]))
        if len(support.shells) >= MIN_SHELLS:
            multi_shell[(run.subject, run.session)].append(run.prefix)
    groups = []
    for key, members in single.items():
        members.sort(key=lambda m: m[1])
        why = _why_not(members, multi_shell.get(key[:2], []), settings)
        if why:
            for run, _ in members:
                plan.notes[run.dwi] = why
        else:
            groups.append(DkiRunGroup(tuple(r for r, _ in members), tuple(b for _, b in members)))
    return DkiPlan(plan.alone, tuple(groups), plan.unfit, plan.notes)


def _why_not(
    members: list[tuple[Any, float]], multi_shell: list[str], settings: dict[str, float]
) -> str:
    """Why these single-shell runs (one key) are not combined; empty when they are."""
    if multi_shell:
        return "its session has a multi-shell run, which is fitted alone"
    if len(members) == 1:
        return "no other single-shell run of its session differs from it only in acq"
    values = [b for _, b in members]
    for i in range(1, len(values)):
        if values[i] - values[i - 1] <= settings["b_tolerance"]:
            return (
                "another run of its session that differs from it only in acq has the same "
                "shell, so which runs to combine is ambiguous"
            )
    bvals = np.concatenate([np.asarray(r.bvals, dtype=float) for r, _ in members])
    bvecs = np.concatenate([_rows(r.bvecs) for r, _ in members])
    name = " + ".join(r.prefix for r, _ in members)
    support = dki_support(bvals, bvecs, name=name, **settings)
    if not support.ok:
        return f"combined, their tables cannot hold the fit: {support.reason.rstrip('.')}"
    return ""


def _rows(bvecs: Any) -> np.ndarray:
    bvecs = np.asarray(bvecs, dtype=float)
    return bvecs.T if bvecs.ndim == 2 and bvecs.shape[1] != 3 and bvecs.shape[0] == 3 else bvecs
