"""DKI maps of a harmonized DWI, with the participant level's own fit.

LinearRISH rebuilds a run's DWI from its harmonized SH coefficients
(:func:`bids_harmony.interfaces.rish.apply_to_run`); :func:`write_harmonized_dki`
fits DKI on that DWI exactly as the participant level fits the raw run
(:func:`bids_harmony.dmri.dki.dki_fit`, WLS, the same clipping ranges; summary by
:func:`bids_harmony.interfaces.dki.fit_and_save`, sidecars by
:func:`bids_harmony.bids.outputs.dki_derivatives`) and writes the eight maps as
``model-dki_param-<x>_desc-<method>`` with the method's ``Harmonization`` block.
This is how Tong et al. (2020, §2.3.4) compared RISH with their network: the
RISH-harmonized shells reassembled, then DKI fitted on them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

LOGGER = logging.getLogger(__name__)


def write_harmonized_dki(
    outputs: Any,
    run: Any,
    dwi: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    method: str,
    harmonized_shells: Sequence[float],
    harmonization: Mapping[str, Any],
    sources: Sequence[str],
    b_tolerance: float,
    b0_threshold: float,
    n_procs: int = 1,
) -> list[Path]:
    """Fit DKI on a harmonized DWI and write its ``desc-<method>`` maps; the files written.

    Parameters
    ----------
    outputs : RunOutputs
        The run's derivatives (names and root).
    run : DwiRun
        The run (``site``, ``is_phantom`` for the sidecars).
    dwi : ndarray, shape (X, Y, Z, N)
        The harmonized DWI, in the order of ``bvals``/``bvecs``.
    bvals, bvecs : ndarray, shape (N,) and (N, 3)
    mask : ndarray of bool, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
    method : str
        ``desc`` of the maps (``rish``).
    harmonized_shells : sequence of float
        b-values of the shells the method harmonized.  When a shell of the DKI fit
        is not among them the maps would mix harmonized and raw shells: nothing is
        written (INFO).
    harmonization : mapping
        The ``Harmonization`` block of the method's other outputs.
    sources : sequence of str
        ``Sources`` of every map (BIDS URIs).
    b_tolerance, b0_threshold : float
    n_procs : int
        Processes of the fit.

    Returns
    -------
    list of Path
        Maps and sidecars written (empty when the table does not hold the fit).
    """
    from bids_harmony.bids.derivatives import write_derivatives
    from bids_harmony.bids.outputs import dki_derivatives
    from bids_harmony.dmri.dki import dki_support
    from bids_harmony.evaluation.evaluated import display_name
    from bids_harmony.interfaces.dki import fit_and_save

    name = outputs.names.prefix
    support = dki_support(bvals, bvecs, name=name, b_tolerance=b_tolerance,
                          b0_threshold=b0_threshold)  # fmt: skip
    if not support.ok:
        LOGGER.debug("%s No desc-%s DKI maps.", support.reason, method)
        return []
    missing = [b for b in support.shells
               if not any(abs(b - h) <= b_tolerance for h in harmonized_shells)]  # fmt: skip
    if missing:
        LOGGER.info("%s: shell(s) b=%s not harmonized by %s; no desc-%s DKI maps (they would "
                    "mix harmonized and raw shells).", name,
                    ", ".join(f"{b:g}" for b in missing), method, method)  # fmt: skip
        return []
    run_info = {"entities": dict(outputs.names.entities), "n_shells": outputs.names.n_shells,
                "site": run.site, "is_phantom": bool(run.is_phantom)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix=f"dki_{method}_") as tmp:
        import nibabel as nb

        grid = nb.Nifti1Image(np.asarray(mask, np.uint8), affine)  # the maps' geometry
        summary = fit_and_save(dwi, bvals, bvecs, mask, grid, Path(tmp), name=name,
                               b_tolerance=b_tolerance, b0_threshold=b0_threshold,
                               n_procs=n_procs)  # fmt: skip
        derivatives = dki_derivatives(run_info, summary, {}, method=method)
        harmonized = []
        for item in derivatives:
            sidecar = dict(item.sidecar or {})
            sidecar.pop("Parameters", None)  # the participant level's settings: not this fit's
            sidecar["Description"] = (f"{sidecar['Description']}, fitted on the DWI rebuilt by "
                                      f"{display_name(method)}")
            sidecar["Sources"] = list(sources)
            sidecar["Harmonization"] = dict(harmonization)
            harmonized.append(replace(item, sidecar=sidecar))
        written = write_derivatives(Path(outputs.root), harmonized)
    LOGGER.info("%s: desc-%s DKI maps (fit of the harmonized DWI)", name, method)
    return written
