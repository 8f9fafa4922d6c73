"""FSL acquisition parameters from BIDS metadata: ``--acqp``/``--index`` rows, b0 picks.

TOPUP and eddy describe each volume by a row ``[x y z t]``: the phase-encoding
direction as a unit vector in the image's voxel axes, and the total readout time
``t`` in seconds (BIDS ``TotalReadoutTime``).  Plain numpy, no FSL needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: BIDS ``PhaseEncodingDirection`` → FSL acqparams direction vector (voxel axes).
PE_VECTORS: dict[str, tuple[int, int, int]] = {
    "i": (1, 0, 0),
    "i-": (-1, 0, 0),
    "j": (0, 1, 0),
    "j-": (0, -1, 0),
    "k": (0, 0, 1),
    "k-": (0, 0, -1),
}


def acquisition_parameters(pe_dirs: Sequence[str], readout_times: Sequence[float]) -> np.ndarray:
    """FSL acqparams rows: phase-encoding vector and total readout time per row.

    Parameters
    ----------
    pe_dirs : sequence of str
        BIDS ``PhaseEncodingDirection`` values (``i``, ``i-``, ``j``, ``j-``,
        ``k``, ``k-``), one per row.
    readout_times : sequence of float
        ``TotalReadoutTime`` in seconds, one per row (see :func:`total_readout_time`).

    Returns
    -------
    ndarray, shape (n, 4)
        E.g. ``j-`` with 0.05 s → ``[0, -1, 0, 0.05]``.  The vector is in the
        voxel axes of the images as stored; topup and eddy must get the same file.

    Raises
    ------
    ValueError
        Unknown direction, readout time not positive, or lengths that differ.
    """
    pe_dirs, readout_times = list(pe_dirs), list(readout_times)
    if len(pe_dirs) != len(readout_times):
        raise ValueError(
            f"acqparams: {len(pe_dirs)} phase-encoding directions but "
            f"{len(readout_times)} readout times; give one of each per row."
        )
    if not pe_dirs:
        raise ValueError("acqparams: no rows (give at least one phase-encoding direction).")
    rows = []
    for pe_dir, trt in zip(pe_dirs, readout_times, strict=True):
        if pe_dir not in PE_VECTORS:
            raise ValueError(
                f"acqparams: unknown PhaseEncodingDirection {pe_dir!r}; "
                f"BIDS allows {', '.join(PE_VECTORS)}."
            )
        trt = float(trt)
        if not np.isfinite(trt) or trt <= 0:
            raise ValueError(
                f"acqparams: total readout time must be a positive number of seconds, got {trt!r}."
            )
        rows.append([*PE_VECTORS[pe_dir], trt])
    return np.array(rows, dtype=float)


def write_acqparams(path: str | os.PathLike[str], rows: Any) -> str:
    """Write acqparams rows (see :func:`acquisition_parameters`); returns the absolute path."""
    rows = np.atleast_2d(np.asarray(rows, dtype=float))
    if rows.ndim != 2 or rows.shape[1] != 4 or rows.shape[0] == 0:
        raise ValueError(f"acqparams rows must have shape (n, 4), got {rows.shape}.")
    lines = [" ".join(f"{int(v):d}" for v in row[:3]) + f" {row[3]:.8g}" for row in rows]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return str(path.resolve())


def total_readout_time(metadata: Mapping[str, Any], n_pe: int | None = None) -> float:
    """Total readout time (s) of a run, by the BIDS specification's rule.

    ``TotalReadoutTime`` when given; else ``EffectiveEchoSpacing × (N − 1)`` with
    ``N`` = ``ReconMatrixPE``, or ``n_pe`` (the image size along the
    phase-encoding axis) when the sidecar lacks it.

    Raises
    ------
    ValueError
        Neither form is available (the message names the missing fields), or a
        value is not positive.
    """
    if metadata.get("TotalReadoutTime") is not None:
        return _positive(metadata["TotalReadoutTime"], "TotalReadoutTime")
    echo_spacing = metadata.get("EffectiveEchoSpacing")
    n_lines = metadata.get("ReconMatrixPE")
    n_lines = n_pe if n_lines is None else n_lines
    if echo_spacing is None or n_lines is None:
        missing = ["TotalReadoutTime"]
        if echo_spacing is None:
            missing.append("EffectiveEchoSpacing")
        if n_lines is None:
            missing.append("ReconMatrixPE")
        raise ValueError(
            "cannot compute the total readout time: the sidecar lacks "
            + ", ".join(missing)
            + ". BIDS needs TotalReadoutTime, or EffectiveEchoSpacing with ReconMatrixPE "
            "(or the image size along PhaseEncodingDirection): "
            "TotalReadoutTime = EffectiveEchoSpacing × (ReconMatrixPE − 1)."
        )
    spacing = _positive(echo_spacing, "EffectiveEchoSpacing")
    if int(n_lines) < 2:
        raise ValueError(f"ReconMatrixPE must be at least 2 to give a readout time, got {n_lines}.")
    return spacing * (int(n_lines) - 1)


def _positive(value: Any, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{field} must be a positive number of seconds, got {value!r}.")
    return number




def opposite_pe(first: str, second: str) -> bool:
    """Whether two BIDS phase-encoding directions share an axis with opposite signs."""
    if first not in PE_VECTORS or second not in PE_VECTORS:
        return False
    return first[0] == second[0] and first.endswith("-") != second.endswith("-")


def pick_b0s(bvals: np.ndarray, b0_threshold: float, max_count: int = 3) -> np.ndarray:
    """Indices of up to ``max_count`` b0 volumes, spread evenly over the series.

    TOPUP's run time grows with every volume it gets; a few b0s spread over the
    acquisition average out motion and drift as well as all of them would.

    Parameters
    ----------
    bvals : ndarray, shape (n,)
    b0_threshold : float
        Volumes with ``b < b0_threshold`` are b0s.
    max_count : int
        At most this many (≥ 1).

    Returns
    -------
    ndarray of int
        Increasing volume indices; empty when the series has no b0.
    """
    b0s = np.flatnonzero(np.asarray(bvals, dtype=float) < b0_threshold)
    if b0s.size <= max_count:
        return b0s
    picks = np.round(np.linspace(0, b0s.size - 1, max(1, max_count))).astype(int)
    return b0s[np.unique(picks)]
