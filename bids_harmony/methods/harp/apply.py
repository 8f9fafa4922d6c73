"""Apply a trained HARP model to the per-shell SH fits of one run.

Numerics only: arrays in, arrays out.  Each shell's coefficients (order 8, or a
lower order zero-padded to the model's order) are scaled per band by the
network, truncated back to the shell's order, and the run's DWI is rebuilt from
them with the original gradient table (b0 volumes unchanged):

.. math::  S_i = \\mathrm{clip}(B_i\\, s \\odot c, 0, 1)^{b_k / b_\\mathrm{ref}}\\, \\bar S_0
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from bids_harmony.dmri.bands import n_coeffs, pad_coeffs
from bids_harmony.dmri.sh import ShellFit, reconstruct_dwi

LOGGER = logging.getLogger(__name__)


def model_order(model: Any) -> int:
    """SH order a HARP model was built for."""
    return int(model.config()["sh_order"])


def harmonize_fits(
    fits: list[ShellFit],
    model: Any,
    *,
    mask: np.ndarray | None = None,
    device: str = "cpu",
    chunk_size: int = 65536,
) -> tuple[list[ShellFit], list[np.ndarray]]:
    """Harmonize every shell of a run.

    Parameters
    ----------
    fits : list of ShellFit
        Source-site coefficients, shape (X, Y, Z, n_coeffs(order)) each.
    model : HarpNet
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to harmonize; others keep their coefficients (scale 1).

    Returns
    -------
    harmonized : list of ShellFit
        Same shells with scaled coefficients.
    scales : list of ndarray, shape (X, Y, Z, n_bands(model order))
        Per-band scale maps.
    """
    from bids_harmony.methods.harp import harmonize_sh

    order = model_order(model)
    harmonized, scales = [], []
    for fit in fits:
        if fit.order > order:
            raise ValueError(
                f"shell {fit.label} has SH order {fit.order} but the model was trained at "
                f"order {order}; rerun the participant level with --sh-order {order}."
            )
        coeffs = pad_coeffs(fit.coeffs, order) if fit.order < order else fit.coeffs
        out, scale = harmonize_sh(model, coeffs, mask=mask, device=device, chunk_size=chunk_size)
        out = np.asarray(out, dtype=np.float32)[..., : n_coeffs(fit.order)]
        harmonized.append(dataclasses.replace(fit, coeffs=out))
        scales.append(np.asarray(scale, dtype=np.float32))
    return harmonized, scales


def harmonize_dwi(
    data: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    harmonized: list[ShellFit],
    *,
    b0_threshold: float,
) -> np.ndarray:
    """The run's DWI rebuilt from harmonized coefficients (b0 volumes unchanged)."""
    return reconstruct_dwi(harmonized, bvals, bvecs, data, b0_threshold=b0_threshold)
