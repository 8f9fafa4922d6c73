r"""DKI maps a reference scanner would measure, noise-free, on a source session's object.

The ideal harmonization of a source-site run is the reference (target) site imaging the same
posed object (:func:`~bids_harmony.simulate.regenerate.regenerate_noiseless`).  Its DKI fit is
the *reference truth* a DKI harmonization is scored against:

.. math:: \hat y^{\mathrm{ref}}_s = \mathrm{DKI}\big(S^{\mathrm{noise\text{-}free}}_{\mathrm{ref}}
          (\mathrm{object}_s, \mathrm{table}_s)\big)

on the source session's grid.  It differs from the site-free DKI truth written by the
simulator (``desc-truth_model-dki``, the cumulants of the tissue model): a DKI fit to shells
b ≤ 2000 of a multi-compartment signal does not recover the cumulants exactly (the signal's
higher-order terms), and on the simulated brains its WM kurtosis is ~15–20 % below them, for
every scanner alike.  No harmonization can or should remove that: the reference scanner's own
fit has it, so a network trained on the reference fits learns it.  Scoring against the
site-free truth would charge that model bias to the harmonization.

The fit is the participant level's (:func:`bids_harmony.dmri.dki.dki_fit`, WLS with clipping to
:data:`~bids_harmony.dmri.dki.RANGES`) on the source run's own gradient table, so the only
difference to the source run's noise-free fit is the imaging site.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.regenerate import regenerate_noiseless

__all__ = ["reference_dki_maps"]


def reference_dki_maps(
    root: str | Path,
    subject: str,
    session: str,
    acq: str,
    *,
    site: str,
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, NDArray[np.float32]]:
    """DKI maps of a written run's object as ``site`` would measure them without noise.

    Parameters
    ----------
    root : path
        Root of a dataset written by the simulator with ``--human-signal kurtosis``
        (any human signal works; kurtosis is zero without it).
    subject, session, acq : str
        The (source) run whose posed object and gradient table are used.
    site : str
        The imaging site, e.g. the reference site of a harmonization.
    mask : ndarray of bool, shape (X, Y, Z), optional
        Voxels to fit (default: all; the fit is per voxel, so a mask only saves time).

    Returns
    -------
    dict of str to ndarray, shape (X, Y, Z)
        ``md, ad, rd`` (mm²/s), ``fa, mk, ak, rk, kfa``; 0 outside ``mask``.
    """
    from bids_harmony.dmri.dki import dki_fit

    subject = subject.removeprefix("sub-")
    session = session.removeprefix("ses-")
    signal = regenerate_noiseless(root, subject, session, acq, site=site)
    bvals, bvecs = bw.read_table(Path(root), subject, session, acq)
    result = dki_fit(signal, bvals, bvecs, mask=mask,
                     name=f"sub-{subject}_ses-{session}_acq-{acq} imaged at {site}")  # fmt: skip
    return {name: np.asarray(volume, np.float32) for name, volume in result.maps.items()}
