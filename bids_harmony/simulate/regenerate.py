"""Regenerate noise-free signals from a written study's ground truth.

Only the files under ``sourcedata/simulation`` and the run's gradient table are
read, so any site can image any session's object (the ideal harmonization of a
source-site run is the target site imaging the same posed object).  In a cohort
study (``cohort.json``) the imaging site's region-varying effects on the tissue
(:func:`~bids_harmony.simulate.cohort.site_tissue`) are applied first, as when the
study was written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.brain import BrainSpec, brain_tissue
from bids_harmony.simulate.cohort import (
    COHORT_JSON,
    SITE_MAP_EFFECTS,
    population_spec,
    site_tissue,
)
from bids_harmony.simulate.layout import parse_session
from bids_harmony.simulate.phantom import PhantomSpec, scale_diffusivities, temperature_factor
from bids_harmony.simulate.signal_model import noiseless_signal
from bids_harmony.simulate.study import object_tissue
from bids_harmony.simulate.tissue import Pose


def regenerate_noiseless(
    root: str | Path,
    subject: str,
    session: str,
    acq: str,
    *,
    site: str | None = None,
    bvals: NDArray | None = None,
    bvecs: NDArray | None = None,
    temperature_delta_c: float | None = None,
) -> NDArray[np.float32]:
    """Noise-free signal of a written run's object, as seen by any site and table.

    Parameters
    ----------
    root : path
        Root of a dataset written by
        :func:`~bids_harmony.simulate.dataset.simulate_study`.
    subject, session, acq : str
        The run whose object pose (session) and protocol (``acq``) are used.
    site : str, optional
        Site imaging the object (default: the session's own site).  With the
        target site this is the ideal harmonization of a source-site run.
    bvals, bvecs : ndarray, optional
        Gradient table, shapes (V,) and (V, 3) (default: the run's own table).
    temperature_delta_c : float, optional
        Phantom temperature offset (°C) from nominal (default: the session's own,
        from its ``_phantom.json``; 0 gives the phantom at nominal temperature).

    Returns
    -------
    ndarray of float32, shape (X, Y, Z, V)
    """
    root = Path(root)
    subject = subject.removeprefix("sub-")
    session = session.removeprefix("ses-")
    grid, spec = bw.read_spec(root, subject)
    pose = bw.read_pose(root, subject, session)
    moved, gain = _run_record(root, subject, session, acq)
    tissue = object_tissue(spec, grid, moved or pose)
    site_label = site or parse_session(session)[0]
    site_obj = bw.read_site(root, site_label)
    if gain != 1.0:
        site_obj = dataclasses.replace(site_obj, receiver_gain=site_obj.receiver_gain * gain)
    if isinstance(spec, BrainSpec) and (bw.gt_dir(root) / COHORT_JSON).is_file():
        population = brain_tissue(population_spec(spec), grid, pose)
        tissue = site_tissue(tissue, population, spec, pose, SITE_MAP_EFFECTS[site_label])
    if isinstance(spec, PhantomSpec):
        if temperature_delta_c is None:
            state = bw.read_phantom_state(root, subject, session)
            temperature_delta_c = float(state["temperature_delta_c"])
        tissue = scale_diffusivities(tissue, temperature_factor(temperature_delta_c))
    if bvals is None or bvecs is None:
        bvals, bvecs = bw.read_table(root, subject, session, acq)
    return noiseless_signal(tissue, site_obj, bvals, bvecs, protocol=acq)


def _run_record(root: Path, subject: str, session: str, acq: str) -> tuple[Pose | None, float]:
    """A run's own pose and receiver-gain factor (shells as runs), else ``(None, 1.0)``."""
    path = bw.gt_dir(root) / "simulation.json"
    if not path.is_file():
        return None, 1.0
    record = bw.read_json(path)
    for run in record.get("runs", []):
        if (run["subject"], run["session"], run["acq"]) == (subject, session, acq) and run.get(
            "pose"
        ):
            pose = Pose(tuple(run["pose"]["angles_deg"]), tuple(run["pose"]["translation_mm"]))
            return pose, float(record.get("run_gain", 1.0))
    return None, 1.0
