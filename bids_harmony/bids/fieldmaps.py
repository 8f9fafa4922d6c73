"""Reverse phase-encoding b0s of a dMRI run, for TOPUP.

Two layouts are recognised, as the BIDS specification describes them:

* ``fmap/*_epi`` images whose ``IntendedFor`` names the run (a path relative to
  the subject folder, or a BIDS URI ``bids::sub-…/…``), or whose
  ``B0FieldIdentifier`` is one of the run's ``B0FieldSource`` values (all their
  volumes, or only the b0s when a ``.bval`` file comes with them);
* another dMRI run of the same session that differs only in ``dir-`` (e.g.
  ``dir-AP`` and ``dir-PA``), whose b0 volumes are used.

Only images with the opposite ``PhaseEncodingDirection`` (same axis, other sign)
and the run's voxel grid qualify; others are logged and skipped, so a stray
field map never stops a run that does not need one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
from bids.layout import BIDSLayout

from bids_harmony.bids.gradients_io import read_bvals
from bids_harmony.bids.runs import name_entities
from bids_harmony.dmri.acqparams import opposite_pe, pick_b0s
from bids_harmony.errors import BadGradientsError

LOGGER = logging.getLogger(__name__)

NIFTI = [".nii.gz", ".nii"]


@dataclass(frozen=True)
class ReversePE:
    """Images acquired with the phase encoding opposite to a run's.

    Attributes
    ----------
    path : Path
        The NIfTI file.
    kind : {"epi", "dwi"}
        A field map (``fmap/*_epi``) or the ``dir-`` partner run.
    pe_dir : str
        Its BIDS ``PhaseEncodingDirection``.
    metadata : mapping
        Its sidecar (with inheritance), for the readout time.
    volumes : tuple of int
        The volumes to use: all of a field map, a few b0s of a partner run.
    """

    path: Path
    kind: str
    pe_dir: str
    metadata: Mapping[str, Any]
    volumes: tuple[int, ...]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def intended_paths(entries: Any, root: Path, subject_dir: Path) -> set[Path]:
    """Resolve ``IntendedFor`` entries to absolute paths.

    BIDS URIs (``bids::path`` or ``bids:<dataset>:path``) are relative to the
    dataset root; plain paths (BIDS < 1.7) to the subject folder.
    """
    paths = set()
    for entry in _as_list(entries):
        if entry.startswith("bids:"):
            relative = entry.split(":", 2)[2]
            paths.add((root / relative).resolve())
        else:
            paths.add((subject_dir / entry).resolve())
    return paths


def _volume_count(path: Path, shape: tuple[int, ...], dwi: Path) -> int | None:
    """Volumes of a candidate on the run's voxel grid; ``None`` (logged) if it is not usable."""
    try:
        other = nb.load(str(path)).shape
    except Exception as err:  # noqa: BLE001 (any unreadable header: skip the candidate)
        LOGGER.warning("Reverse phase-encoding image %s is unreadable (%s); skipped.", path, err)
        return None
    if tuple(other[:3]) != tuple(shape[:3]):
        LOGGER.warning(
            "%s has voxel grid %s but %s has %s: not usable for TOPUP; skipped.",
            path, tuple(other[:3]), dwi.name, tuple(shape[:3]),
        )  # fmt: skip
        return None
    return int(other[3]) if len(other) > 3 else 1


def _b0_volumes(
    path: Path, bval: Path | None, n: int, b0_threshold: float, max_b0s: int
) -> tuple[int, ...]:
    """Volumes to give TOPUP: all ``n`` without a ``.bval``, else up to ``max_b0s`` b0s.

    Some scanners export the reverse-PE series as a short dMRI run (b0s and a few
    weighted volumes) stored in ``fmap/``; TOPUP must see only the b0s.  An
    unusable ``.bval`` skips the candidate (logged) rather than the discovery.
    """
    if bval is None:
        return tuple(range(n))
    try:
        bvals = read_bvals(bval)
    except BadGradientsError as err:
        LOGGER.warning("%s; %s skipped.", err, path.name)
        return ()
    if bvals.size != n:
        LOGGER.warning("%s has %d values for %d volumes; %s skipped.", bval, bvals.size, n,
                       path.name)  # fmt: skip
        return ()
    picks = tuple(int(i) for i in pick_b0s(bvals, b0_threshold, max_b0s))
    if not picks:
        LOGGER.warning("%s has no b0 volume: not usable for TOPUP; skipped.", path)
    return picks


def find_reverse_pe(
    layout: BIDSLayout,
    dwi: Path,
    entities: Mapping[str, str],
    metadata: Mapping[str, Any],
    shape: tuple[int, ...],
    *,
    bval_of: Any,
    b0_threshold: float,
    max_b0s: int = 3,
) -> tuple[ReversePE, ...]:
    """Reverse phase-encoding images for one run (see the module docstring).

    Parameters
    ----------
    layout : BIDSLayout
    dwi : Path
        The run.
    entities : mapping
        Its file-name entities (pybids names).
    metadata : mapping
        Its sidecar; without ``PhaseEncodingDirection`` nothing is found.
    shape : tuple of int
        Its image shape.
    bval_of : callable
        ``bval_of(path, entities) -> Path`` of a partner run's ``.bval``.
    b0_threshold : float
        b-value below which a partner volume is a b0.
    max_b0s : int
        At most this many b0s of a partner run (:func:`pick_b0s`).

    Returns
    -------
    tuple of ReversePE
        Field maps first, then partner runs, each sorted by path.
    """
    pe_dir = metadata.get("PhaseEncodingDirection")
    if pe_dir is None:
        return ()
    root = Path(layout.root)
    scope = {"subject": entities["subject"]}
    if "session" in entities:
        scope["session"] = entities["session"]
    subject_dir = root / f"sub-{entities['subject']}"
    found: list[ReversePE] = []

    sources = set(_as_list(metadata.get("B0FieldSource")))
    for fmap in layout.get(datatype="fmap", suffix="epi", extension=NIFTI, **scope):
        path = Path(fmap.path)
        fmeta = layout.get_metadata(fmap.path)
        names_run = dwi.resolve() in intended_paths(fmeta.get("IntendedFor"), root, subject_dir)
        same_field = bool(sources & set(_as_list(fmeta.get("B0FieldIdentifier"))))
        if not (names_run or same_field):
            continue
        if not opposite_pe(pe_dir, str(fmeta.get("PhaseEncodingDirection"))):
            continue
        n = _volume_count(path, shape, dwi)
        if n is None:
            continue
        bval = path.with_name(path.name.split(".")[0] + ".bval")
        volumes = _b0_volumes(path, bval if bval.is_file() else None, n, b0_threshold, max_b0s)
        if volumes:
            found.append(ReversePE(path, "epi", fmeta["PhaseEncodingDirection"], fmeta, volumes))

    if "direction" in entities:
        others = {k: v for k, v in entities.items() if k != "direction"}
        for other in layout.get(datatype="dwi", suffix="dwi", extension=NIFTI, **scope):
            path = Path(other.path)
            own = name_entities(other)
            if path == dwi or {k: v for k, v in own.items() if k != "direction"} != others:
                continue
            ometa = layout.get_metadata(other.path)
            if not opposite_pe(pe_dir, str(ometa.get("PhaseEncodingDirection"))):
                continue
            n = _volume_count(path, shape, dwi)
            if n is None:
                continue
            try:
                bval = bval_of(path, own)
            except BadGradientsError as err:
                LOGGER.warning("%s; not used for TOPUP.", err)
                continue
            volumes = _b0_volumes(path, bval, n, b0_threshold, max_b0s)
            if not volumes:
                continue
            found.append(ReversePE(path, "dwi", ometa["PhaseEncodingDirection"], ometa, volumes))
    return tuple(sorted(found, key=lambda r: (r.kind != "epi", str(r.path))))
