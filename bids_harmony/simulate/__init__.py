"""Simulated multi-site diffusion MRI studies with known site effects.

Phantoms and traveling human-like subjects are imaged by two scanners (GE SIGNA
Premier as source, Siemens Prisma as target), twice each, and written as a raw
BIDS dataset with the ground truth under ``sourcedata/simulation``.

Layout (``size="tiny"``; ``demo`` phantoms have only ``acq-multishell``, ``full``
adds ``acq-b1500dir30`` phantom runs)::

    sub-phantom0{1,2}/ses-{GE1,GE2,Prisma1,Prisma2}/dwi/
        sub-phantom01_ses-GE1_acq-{b1000,b2000,multishell}_dwi.{nii.gz,bval,bvec,json}
    sub-0{1,2,3}/ses-{GE1,GE2,Prisma1,Prisma2}/dwi/
        sub-01_ses-GE1_acq-multishell_dwi.{nii.gz,bval,bvec,json}   (b=1000 + b=2000)
    sub-*/sub-*_sessions.{tsv,json}, participants.{tsv,json}, README,
    dataset_description.json

Site effects (:mod:`.site_effects`): b-value miscalibration and gradient-axis gains,
TE/TR compartment weighting, diffusion-time dependent diffusivities, a PSF blur,
a smooth receive field, receiver gain, SNR and Rician noise, and site-specific
gradient tables (b0 written as 0 by GE, 5 by Siemens; Siemens b-value jitter).

Ground truth (``sourcedata/simulation``, described in its ``README.md``):
``site-<site>_params.json`` (:class:`SiteParams`); per subject
``sub-<id>_spec.json`` (grid + analytic anatomy), ``sub-<id>_tissue.npz``
(:class:`TissueModel` in the reference pose), ``_dseg`` (0 background, 1 CSF,
2 GM, 3 WM; phantoms: 1 bath, 2+i vial i), ``_desc-brain_mask`` and
``_desc-truth_{FA,MD}`` images; per session ``_pose.json`` and the same maps in
that pose (phantoms: ``_phantom.json`` with the session's temperature offset;
humans with ``human_signal="kurtosis"``: the exact DKI truth
``_desc-truth_model-dki_param-<x>_dwimap`` of their signal, :mod:`.kurtosis`); per
run ``_desc-noiseless_dwi.nii.gz`` (site effects, no noise).
``shells=(1000, 2000, 3000)`` (``--shells``) puts ``acq-multishell3`` in place of
``acq-multishell``; ``shells_as_runs=True`` (``--shells-as-runs``) gives humans one run
per shell (``acq-b1000``, ``acq-b2000``; the head moves slightly between them, each
later run's pose recorded in ``simulation.json``).

Phantom zoo (:mod:`.zoo`): a :class:`PhantomScenario` chooses the phantom designs
(``mixed``, ``fibre``, ``nist``, ``nist-small``), protocols, per-session poses,
temperatures and the sites' coil inhomogeneity; :data:`ZOO` holds named ones
(``default`` is the study above).  Humans are the same in every scenario.

Cohort studies (:mod:`.cohort`, :mod:`.cohort_dataset`; for ComBat): ``n`` subjects
per site (default GE, Prisma, Skyra), each scanned once, ages confounded with site,
a known age effect and region-varying additive/multiplicative site effects on the
tissue, truth in ``sourcedata/simulation/cohort.json`` and per-session maps.

Public API
----------
simulate_study(out_dir, *, size="tiny", seed=0, sites=SITES, force=False,
               write_noiseless=True, scenario=None, shells=None,
               human_signal="gaussian") -> StudyInfo
    Write the whole study (``scenario``: a PhantomScenario, a ZOO name, or None
    for ``ZOO["default"]``).
simulate_session(subject, session, *, size="tiny", seed=0, protocols=None,
                 scenario=None, shells=None, human_signal="gaussian") -> SessionData
    One session in memory (for benchmarks), identical to that session of the study.
simulate_cohort(out_dir, n_per_site, *, sites=COHORT_SITES, size="tiny", seed=0,
                force=False, write_noiseless=True) -> StudyInfo
    Write a cohort study (no phantoms, no traveling subjects).
true_age_slope(root, metric="FA", region="WM") -> float
    The true age slope of a written cohort study (from its ``cohort.json``).
noiseless_signal(tissue, site, bvals, bvecs, *, protocol) -> ndarray (X, Y, Z, V)
    Noise-free image of any tissue model at any site with any gradient table.
regenerate_noiseless(root, subject, session, acq, *, site=None, bvals=None, bvecs=None,
                     temperature_delta_c=None)
    The same from a written dataset's ground truth (e.g. a source run as the
    target site would have measured it: the ideal harmonization).

Module map: :mod:`.tissue` (grids, poses, compartment model), :mod:`.gradients`,
:mod:`.phantom_spec`, :mod:`.phantom`, :mod:`.phantom_nist`, :mod:`.brain`,
:mod:`.site_effects`, :mod:`.signal_model`, :mod:`.kurtosis` (numerics, no I/O); :mod:`.zoo`
(scenarios); :mod:`.layout` (sizes, protocols, labels); :mod:`.study` (keyed
random streams, sessions); :mod:`.dataset` (whole study); :mod:`.regenerate`
(signals from the ground truth); :mod:`.docs` (README texts); :mod:`.bids_writer`
(the only module touching files); :mod:`.cohort` and :mod:`.cohort_dataset`
(cohort studies).
"""

from __future__ import annotations

from bids_harmony.simulate.bids_writer import (
    read_phantom_state,
    read_pose,
    read_site,
    read_spec,
    read_tissue,
)
from bids_harmony.simulate.cohort import COHORT_SITES, true_age_slope
from bids_harmony.simulate.cohort_dataset import simulate_cohort
from bids_harmony.simulate.dataset import RunInfo, StudyInfo, simulate_study
from bids_harmony.simulate.phantom import DESIGNS, PhantomSpec, Vial, draw_phantom
from bids_harmony.simulate.regenerate import regenerate_noiseless
from bids_harmony.simulate.signal_model import noiseless_signal
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
from bids_harmony.simulate.zoo import ZOO, PhantomScenario, ScenarioError, get_scenario

__all__ = [
    "COHORT_SITES",
    "DESIGNS",
    "PROTOCOLS",
    "SITES",
    "SIZES",
    "ZOO",
    "Grid",
    "PhantomScenario",
    "PhantomSpec",
    "Pose",
    "RunData",
    "RunInfo",
    "ScenarioError",
    "SessionData",
    "SiteParams",
    "StudyInfo",
    "TissueModel",
    "Vial",
    "draw_phantom",
    "draw_site",
    "get_scenario",
    "gradient_table",
    "noiseless_signal",
    "object_tissue",
    "read_phantom_state",
    "read_pose",
    "read_site",
    "read_spec",
    "read_tissue",
    "regenerate_noiseless",
    "simulate_cohort",
    "simulate_session",
    "simulate_study",
    "site_params",
    "subject_spec",
    "true_age_slope",
]
