"""Statistics of one group-level scenario: Eq. 2 maps, ROI tables, t-tests, fibres.

Arrays in template space in, typed summaries out (:class:`ShellSummary`,
:class:`ScenarioResult`); reading and warping the maps is done by
:mod:`bids_harmony.interfaces.group_level`, tables and figures by
:mod:`.tables` and :mod:`.report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_harmony.evaluation import maps as ev
from bids_harmony.evaluation.fibers import summarize_angular_error

METRICS = ("fa", "md", "gfa")


@dataclass(frozen=True)
class ShellSummary:
    """The statistics of one shell (see :func:`bids_harmony.evaluation.maps.summarize`)."""

    table2: dict
    table3: dict
    roi_errors: dict
    ttests: dict
    maps: dict
    fibres: dict | None = None


@dataclass(frozen=True)
class ScenarioResult:
    """Everything the report needs of one scenario."""

    stem: str
    labels: list[str]
    subjects: list[str]
    template: Path
    methods: list[str]
    shells: dict[str, ShellSummary]


def evaluate_shells(
    source: Sequence[Mapping[str, np.ndarray]],
    target: Sequence[Mapping[str, np.ndarray]],
    n_subjects: int,
    labels: Sequence[str],
    methods: Sequence[str],
    fibres: Mapping[str, list[np.ndarray]],
) -> dict[str, ShellSummary]:
    """Standard-error maps, tables and t-tests per shell of one scenario.

    Parameters
    ----------
    source, target : sequence of mapping
        One mapping per session in template space, subject-major (two sessions per
        subject, in order): ``"mask"`` (X, Y, Z) bool and
        ``"<label>/<metric>/<method or none>"`` (X, Y, Z) maps.
    n_subjects : int
    labels : sequence of str
        Shell labels.
    methods : sequence of str
        Harmonization methods of the source sessions besides ``none``.
    fibres : mapping
        Shell label → angular errors (deg) per source session (HARP).

    Returns
    -------
    dict of str to ShellSummary
    """
    src, tgt = source, target
    brain = np.stack([z["mask"] for z in [*src, *tgt]]).all(0)

    def stack(files, key):
        arrays = [z[key] for z in files]
        return np.stack(arrays).reshape(n_subjects, 2, *arrays[0].shape)

    out = {}
    for label in labels:
        values, target_values, maps = {}, {}, {}
        for metric in METRICS:
            key = metric.upper()  # the tables' and figures' metric names
            target_values[key] = stack(tgt, f"{label}/{metric}/none")
            values[key] = {m: stack(src, f"{label}/{metric}/{m}") for m in ["none", *methods]}
            maps[key] = ev.error_maps(values[key], target_values[key])
        mean_tgt = {m: np.nanmean(target_values[m.upper()], axis=(0, 1)) for m in ("fa", "md")}
        tissue = ev.tissue_classes(brain, mean_tgt["fa"], mean_tgt["md"])
        rois = ev.block_rois(tissue)
        summary = ev.summarize(maps, values, target_values, tissue, rois)
        errors = fibres.get(label)
        out[label] = ShellSummary(
            table2=summary["table2"], table3=summary["table3"],
            roi_errors=summary["roi_errors"], ttests=summary["ttests"],
            maps={m: {c: np.where(tissue > 0, v, np.nan) for c, v in conds.items()}
                  for m, conds in maps.items()},
            fibres=None if errors is None else summarize_angular_error(
                np.concatenate(errors) if errors else np.empty(0)),
        )  # fmt: skip
    return out
