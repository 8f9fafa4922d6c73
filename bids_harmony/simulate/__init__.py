"""Simulated multi-site diffusion MRI studies with known site effects.

Phantoms and traveling human-like subjects are imaged by two scanners (GE SIGNA
Premier as source, Siemens Prisma as target), twice each, and written as a raw
BIDS dataset with the ground truth under ``sourcedata/simulation``.

Public API
----------
simulate_study(out_dir, *, size="tiny", seed=0, ...) -> StudyInfo
    Write the whole study.
simulate_session(subject, session, *, size="tiny", seed=0, protocols=None) -> SessionData
    One session in memory, identical to the same session of the study.
noiseless_signal(tissue, site, bvals, bvecs, *, protocol) -> ndarray (X, Y, Z, V)
    Noise-free image of any tissue model at any site with any gradient table.
regenerate_noiseless(root, subject, session, acq, *, site=None, bvals=None, bvecs=None)
    The same from a written dataset's ground truth.

Module map: :mod:`.tissue` (grids, poses, compartment model), :mod:`.gradients`,
:mod:`.phantom`, :mod:`.brain`, :mod:`.site_effects`, :mod:`.signal` (numerics, no
I/O); :mod:`.study` (layout, keyed random streams); :mod:`.dataset` (whole study);
:mod:`.bids_writer` (the only module touching files).
"""

from __future__ import annotations

from bids_harmony.simulate.bids_writer import read_pose, read_site, read_spec, read_tissue
from bids_harmony.simulate.dataset import RunInfo, StudyInfo, regenerate_noiseless, simulate_study
from bids_harmony.simulate.signal import noiseless_signal
from bids_harmony.simulate.site_effects import SiteParams, draw_site
from bids_harmony.simulate.study import (
    PROTOCOLS,
    SITES,
    SIZES,
    RunData,
    SessionData,
    gradient_table,
    object_tissue,
    simulate_session,
    site_params,
    subject_spec,
)
from bids_harmony.simulate.tissue import Grid, Pose, TissueModel

__all__ = [
    "PROTOCOLS",
    "SITES",
    "SIZES",
    "Grid",
    "Pose",
    "RunData",
    "RunInfo",
    "SessionData",
    "SiteParams",
    "StudyInfo",
    "TissueModel",
    "draw_site",
    "gradient_table",
    "noiseless_signal",
    "object_tissue",
    "read_pose",
    "read_site",
    "read_spec",
    "read_tissue",
    "regenerate_noiseless",
    "simulate_session",
    "simulate_study",
    "site_params",
    "subject_spec",
]
