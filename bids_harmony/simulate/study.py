"""Study layout and orchestration: sizes, sites, subjects, sessions and runs.

Every random quantity comes from a generator keyed by ``(seed, what, which…)``
(:func:`keyed_rng`), so one session simulated alone (:func:`simulate_session`) is
identical to the same session inside the whole study (:func:`simulate_study`).

Layout: two sites (``GE`` = SIGNA Premier, source; ``Prisma`` = Siemens Prisma,
target), two sessions per site (``ses-GE1``, ``ses-GE2``, ``ses-Prisma1``,
``ses-Prisma2``).  Phantoms get one run per protocol (``acq-b1000``, ``acq-b2000``,
``acq-multishell``; demo: ``acq-multishell`` only; full adds ``acq-b1500dir30``);
traveling humans get one multi-shell run (``acq-multishell``: b=1000 and b=2000,
60 directions each), the same protocol as the phantoms' ``acq-multishell`` run.
``shells=(1000, 2000, 3000)`` puts ``acq-multishell3`` (a third shell, b=3000) in
place of ``acq-multishell`` for humans and phantoms alike.  ``shells_as_runs=True``
gives humans each shell as its own run instead (``acq-b1000``, ``acq-b2000``, each
with its own b0 volumes, TE/TR and a slight head movement between the runs,
:func:`run_pose`; optionally a different receiver gain, ``run_gain``), as sites
that acquire each shell as its own series do.

Human brains have one Gaussian tensor per compartment unless
``human_signal="kurtosis"``: a kurtosis-bearing signal (WM sticks beside hindered
water, slow and fast GM water; :mod:`bids_harmony.simulate.brain`).  Not the
default: HARP (phantom-trained) harmonizes it less well (issue 15 report).

A :class:`~bids_harmony.simulate.zoo.PhantomScenario` (default ``ZOO["default"]``)
chooses the phantom designs, protocols, poses and temperatures and the sites' coil
inhomogeneity; it draws only from its own keyed streams, so the humans of every
scenario are those of the default study.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bids_harmony.errors import NoDataError
from bids_harmony.simulate.brain import BrainSpec, brain_tissue, draw_brain, gaussian_spec
from bids_harmony.simulate.gradients import acquisition_table, dispersed_directions
from bids_harmony.simulate.layout import (  # re-exported: the study's public layout
    PROTOCOLS,
    SESSIONS_PER_SITE,
    SITES,
    dwi_sidecar,
    get_size,
    multishell_protocol,
    parse_session,
    parse_subject,
    with_multishell,
)
from bids_harmony.simulate.layout import SIZES as SIZES
from bids_harmony.simulate.layout import Protocol as Protocol
from bids_harmony.simulate.layout import StudySize as StudySize
from bids_harmony.simulate.phantom import (
    PhantomSpec,
    draw_phantom,
    phantom_tissue,
    scale_diffusivities,
)
from bids_harmony.simulate.signal_model import noiseless_signal
from bids_harmony.simulate.site_effects import (
    VENDORS,
    SiteParams,
    draw_site,
    noisy_image,
)
from bids_harmony.simulate.tissue import Grid, Pose, TissueModel
from bids_harmony.simulate.zoo import (
    ZOO,
    PhantomScenario,
    biased_site,
    get_scenario,
    reposition_pose,
)

LOGGER = logging.getLogger(__name__)

_VENDOR_INDEX = {name: i for i, name in enumerate(VENDORS)}
# key domains of keyed_rng (append new ones: existing streams must not shift)
_SITE, _DIRS, _TABLE, _SUBJECT, _POSE, _NOISE, _REPOSITION, _COHORT, _RUN_MOTION = range(1, 10)
#: Largest head movement between the runs of a session with shells as runs:
#: rotation (degrees about each axis) and translation (mm along each axis).
RUN_MOTION = (2.0, 3.0)
_PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}
#: Signal models of the human brains (the first is the default).
HUMAN_SIGNALS: tuple[str, ...] = ("gaussian", "kurtosis")


@dataclass(frozen=True, eq=False)
class RunData:
    """One simulated ``dwi`` run (arrays in memory)."""

    acq: str
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]
    image: NDArray[np.int16]
    noiseless: NDArray[np.float32]
    sidecar: dict[str, Any]
    #: The head's pose in this run when it differs from the session's (shells as runs).
    pose: Pose | None = None


@dataclass(frozen=True, eq=False)
class SessionData:
    """One simulated session: the object as posed, the site and its runs.

    ``temperature_delta_c`` is a phantom's temperature offset from nominal (°C) in
    this session, already applied to ``tissue``; 0 for humans.
    """

    subject: str
    session: str
    site: SiteParams
    pose: Pose
    spec: BrainSpec | PhantomSpec
    tissue: TissueModel
    runs: tuple[RunData, ...] = field(default=())
    temperature_delta_c: float = 0.0


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for ``(seed, *key)`` (a :class:`numpy.random.SeedSequence`)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def resolve_scenario(
    scenario: PhantomScenario | str | None, sites: tuple[str, ...] | None = None
) -> PhantomScenario:
    """The scenario to use: ``None`` → ``ZOO["default"]``, a name → that zoo entry.

    Raises :class:`~bids_harmony.simulate.zoo.ScenarioError` when it names a
    protocol that does not exist or (with ``sites``) a site outside the study.
    """
    if scenario is None:
        scenario = ZOO["default"]
    elif isinstance(scenario, str):
        scenario = get_scenario(scenario)
    scenario.check(sites=sites if sites is not None else VENDORS, protocols=PROTOCOLS)
    return scenario


@lru_cache(maxsize=16)
def site_params(site: str, seed: int) -> SiteParams:
    """Site-effect parameters of ``site`` for a study seed."""
    return draw_site(site, keyed_rng(seed, _SITE, _VENDOR_INDEX[site]))


@lru_cache(maxsize=16)
def _site_directions(site: str, seed: int, n: int) -> NDArray:
    return dispersed_directions(n, keyed_rng(seed, _DIRS, _VENDOR_INDEX[site], n))


def study_site(site: str, seed: int, scenario: PhantomScenario | None = None) -> SiteParams:
    """Site parameters of ``site`` with the scenario's receive-field multiplier applied."""
    params = site_params(site, seed)
    return params if scenario is None else biased_site(params, scenario.bias(site))


def gradient_table(site: SiteParams, protocol: str, seed: int) -> tuple[NDArray, NDArray]:
    """``(bvals (V,), bvecs (V, 3))`` that ``site`` writes for ``protocol``."""
    proto = PROTOCOLS[protocol]
    dirs = _site_directions(site.label, seed, proto.n_dirs)
    rng = keyed_rng(seed, _TABLE, _VENDOR_INDEX[site.label], _PROTOCOL_INDEX[protocol])
    bvals, bvecs = acquisition_table(
        proto.shells,
        dirs,
        b0_value=site.b0_value,
        b0_layout=site.b0_layout,
        jitter=site.bval_jitter,
        rng=rng,
    )
    # the table is used exactly as written to the .bvec file (6 decimals)
    return bvals, np.round(bvecs, 6) + 0.0


def phantom_grid(size: str, scenario: PhantomScenario | None = None) -> Grid:
    """Phantom image grid at ``size`` (slices from the scenario when it sets them)."""
    grid = get_size(size).phantom_grid
    if scenario is None or scenario.phantom_slices is None:
        return grid
    return Grid((grid.shape[0], grid.shape[1], scenario.phantom_slices), grid.voxel_size)


def check_human_signal(human_signal: str) -> str:
    """``human_signal`` if it is one of :data:`HUMAN_SIGNALS` (else NoDataError)."""
    if human_signal not in HUMAN_SIGNALS:
        raise NoDataError(
            f"unknown human signal {human_signal!r}; choose from {', '.join(HUMAN_SIGNALS)}"
        )
    return human_signal


def subject_spec(
    subject: str,
    size: str,
    seed: int,
    scenario: PhantomScenario | str | None = None,
    human_signal: str = "gaussian",
) -> BrainSpec | PhantomSpec:
    """Anatomy (brain) or design (phantom; design from the scenario) of ``subject``.

    ``human_signal="gaussian"`` (the default) gives a brain without water pools
    (no kurtosis beyond partial volumes and crossings), ``"kurtosis"`` one with
    them; the anatomy is the same.
    """
    is_phantom, number = parse_subject(subject)
    rng = keyed_rng(seed, _SUBJECT, int(not is_phantom), number)
    if not is_phantom:
        spec = draw_brain(number, rng)
        return gaussian_spec(spec) if check_human_signal(human_signal) == "gaussian" else spec
    scenario = resolve_scenario(scenario)
    sz = get_size(size)
    designs = scenario.phantom_designs(sz.n_phantoms)
    if not 1 <= number <= len(designs):
        raise NoDataError(
            f"scenario {scenario.name!r} has {len(designs)} phantom(s); no phantom{number:02d}"
        )
    grid = phantom_grid(size, scenario)
    return draw_phantom(number, rng, n_vials=sz.n_vials, design=designs[number - 1], grid=grid)


def object_grid(
    spec: BrainSpec | PhantomSpec, size: str, scenario: PhantomScenario | None = None
) -> Grid:
    """Image grid of ``spec`` at ``size``."""
    if isinstance(spec, PhantomSpec):
        return phantom_grid(size, scenario)
    return get_size(size).human_grid


def object_tissue(spec: BrainSpec | PhantomSpec, grid: Grid, pose: Pose) -> TissueModel:
    """Tissue model of a phantom or brain placed with ``pose`` on ``grid``."""
    if isinstance(spec, PhantomSpec):
        return phantom_tissue(spec, grid, pose)
    return brain_tissue(spec, grid, pose)


def session_pose(
    subject: str,
    session: str,
    grid: Grid,
    seed: int,
    scenario: PhantomScenario | None = None,
    spec: PhantomSpec | None = None,
) -> Pose:
    """Position of the object in a session.

    Phantoms are positioned consistently (sub-voxel shift, no rotation) unless the
    scenario repositions them (:func:`~bids_harmony.simulate.zoo.reposition_pose`,
    which needs the phantom's ``spec`` for its container radius); heads move by up
    to 3° about each axis and 4 mm along each axis.
    """
    is_phantom, number = parse_subject(subject)
    site, repeat = parse_session(session)
    rng = keyed_rng(seed, _POSE, int(not is_phantom), number, _VENDOR_INDEX[site], repeat)
    if is_phantom and scenario is not None and scenario.repositions:
        if spec is None:
            raise ValueError("session_pose: a repositioning scenario needs the phantom spec")
        rng = keyed_rng(seed, _REPOSITION, number, _VENDOR_INDEX[site], repeat)
        return reposition_pose(scenario, rng, grid, spec.container_radius_mm)
    if is_phantom:
        shift = rng.uniform(-0.4, 0.4, 3) * np.asarray(grid.voxel_size)
        return Pose((0.0, 0.0, 0.0), tuple(round(float(v), 4) for v in shift))
    angles = tuple(round(float(v), 4) for v in rng.uniform(-3.0, 3.0, 3))
    return Pose(angles, tuple(round(float(v), 4) for v in rng.uniform(-4.0, 4.0, 3)))


def protocols_for(
    subject: str,
    size: str,
    scenario: PhantomScenario | None = None,
    multishell: str = "multishell",
) -> tuple[str, ...]:
    """Protocols acquired for ``subject`` at ``size`` (phantoms: the scenario's if set).

    ``multishell`` replaces the default multi-shell protocol (e.g. ``multishell3``).
    """
    sz = get_size(size)
    if not parse_subject(subject)[0]:
        return with_multishell(sz.human_protocols, multishell)
    if scenario is not None and scenario.protocols:
        return with_multishell(scenario.protocols, multishell)
    return with_multishell(sz.phantom_protocols, multishell)


def shell_protocols(multishell: str) -> tuple[str, ...]:
    """The single-shell protocols that acquire the shells of ``multishell`` one by one.

    >>> shell_protocols("multishell")
    ('b1000', 'b2000')
    """
    by_shell = {p.shells: name for name, p in PROTOCOLS.items() if len(p.shells) == 1
                and p.n_dirs == PROTOCOLS[multishell].n_dirs}  # fmt: skip
    missing = [b for b in PROTOCOLS[multishell].shells if (b,) not in by_shell]
    if missing:
        raise NoDataError(
            f"shells as runs: no single-shell protocol for b={', '.join(f'{b:g}' for b in missing)}"
            f" (of {multishell}); shells as runs are for the shells 1000 2000"
        )
    return tuple(by_shell[(b,)] for b in PROTOCOLS[multishell].shells)


def run_pose(pose: Pose, subject: str, session: str, protocol: str, seed: int) -> Pose:
    """The head's pose in a later run of a session: ``pose`` moved slightly.

    Up to :data:`RUN_MOTION` (2 degrees about each axis, 3 mm along each axis),
    drawn from the run's own keyed stream.
    """
    _, number = parse_subject(subject)
    site, repeat = parse_session(session)
    rng = keyed_rng(seed, _RUN_MOTION, number, _VENDOR_INDEX[site], repeat,
                    _PROTOCOL_INDEX[protocol])  # fmt: skip
    degrees, mm = RUN_MOTION
    angles = np.asarray(pose.angles_deg) + rng.uniform(-degrees, degrees, 3)
    shift = np.asarray(pose.translation_mm) + rng.uniform(-mm, mm, 3)
    return Pose(tuple(round(float(v), 4) for v in angles), tuple(round(float(v), 4) for v in shift))


def simulate_session(
    subject: str,
    session: str,
    *,
    size: str = "tiny",
    seed: int = 0,
    protocols: tuple[str, ...] | None = None,
    scenario: PhantomScenario | str | None = None,
    shells: tuple[float, ...] | None = None,
    human_signal: str = "gaussian",
    shells_as_runs: bool = False,
    run_gain: float = 1.0,
) -> SessionData:
    """Simulate one session in memory (no files), exactly as in the whole study.

    Parameters
    ----------
    subject : str
        ``"01"`` … (human) or ``"phantom01"`` … (``sub-`` prefix optional).
    session : str
        ``"<site><n>"``, e.g. ``"GE1"`` or ``"Prisma2"`` (any scanner of
        :data:`~bids_harmony.simulate.site_effects.VENDORS`).
    size : {"tiny", "demo", "full"}
    seed : int
    protocols : tuple of str, optional
        Subset of runs (default: all protocols of this subject kind).
    scenario : PhantomScenario or str, optional
        Phantom scenario or the name of a :data:`~bids_harmony.simulate.zoo.ZOO`
        entry (default ``"default"``).
    shells : tuple of float, optional
        Shells of the multi-shell run (default b=1000, 2000: ``acq-multishell``;
        ``(1000, 2000, 3000)``: ``acq-multishell3``).
    human_signal : {"gaussian", "kurtosis"}
        Signal model of a human brain (:data:`HUMAN_SIGNALS`).
    shells_as_runs : bool
        A human's multi-shell run becomes one run per shell (:func:`shell_protocols`);
        every run after the first sees the head slightly moved (:func:`run_pose`).
        No effect on phantoms.
    run_gain : float
        With ``shells_as_runs``: receiver gain of the runs after the first, relative
        to the first (signal and noise scale together, as a gain does).

    Returns
    -------
    SessionData
        The posed tissue model (phantoms: at the session's temperature), the site
        and per run the table, the int16 image (X, Y, Z, V) and its noise-free
        float32 version.
    """
    subject = subject.removeprefix("sub-")
    session = session.removeprefix("ses-")
    site_label, repeat = parse_session(session)
    is_phantom, number = parse_subject(subject)
    scenario = resolve_scenario(scenario)
    multishell = multishell_protocol(shells)
    spec = subject_spec(subject, size, seed, scenario, human_signal)
    grid = object_grid(spec, size, scenario)
    pose = session_pose(subject, session, grid, seed, scenario, spec if is_phantom else None)
    tissue = object_tissue(spec, grid, pose)
    delta_t = 0.0
    if is_phantom:  # the phantom's temperature at this site; heads are always at 37 °C
        delta_t = scenario.temperature_delta(site_label)
        tissue = scale_diffusivities(tissue, scenario.diffusivity_factor(site_label))
    site = study_site(site_label, seed, scenario)
    if not run_gain > 0:
        raise NoDataError(f"run_gain must be a positive factor, not {run_gain}")
    separate = shells_as_runs and not is_phantom
    if protocols is None:
        protocols = protocols_for(subject, size, scenario, multishell)
        if separate:
            protocols = tuple(p for name in protocols for p in (
                shell_protocols(name) if name == multishell else (name,)))  # fmt: skip
    runs = []
    for index, protocol in enumerate(protocols):
        if protocol not in PROTOCOLS:
            raise NoDataError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
        moved = run_site = None
        if separate and index > 0:  # the head moves between series; the gain may change
            moved = run_pose(pose, subject, session, protocol, seed)
            run_site = dataclasses.replace(site, receiver_gain=site.receiver_gain * run_gain,
                                           noise_sigma=site.noise_sigma * run_gain)  # fmt: skip
        run_tissue = tissue if moved is None else object_tissue(spec, grid, moved)
        run_site = run_site or site
        bvals, bvecs = gradient_table(site, protocol, seed)
        clean = noiseless_signal(run_tissue, run_site, bvals, bvecs, protocol=protocol)
        rng = keyed_rng(
            seed,
            _NOISE,
            int(not is_phantom),
            number,
            _VENDOR_INDEX[site_label],
            repeat,
            _PROTOCOL_INDEX[protocol],
        )
        image = noisy_image(clean, run_site.noise_sigma, rng)
        runs.append(RunData(protocol, bvals, bvecs, image, clean,
                            dwi_sidecar(site, protocol, grid), moved))  # fmt: skip
        LOGGER.info("simulated sub-%s ses-%s acq-%s: %s", subject, session, protocol, image.shape)
    return SessionData(subject, session, site, pose, spec, tissue, tuple(runs), delta_t)


def study_subjects(
    size: str, scenario: PhantomScenario | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(phantom labels, human labels)`` of a study of ``size``."""
    sz = get_size(size)
    n_phantoms = len((scenario or ZOO["default"]).phantom_designs(sz.n_phantoms))
    phantoms = tuple(f"phantom{i:02d}" for i in range(1, n_phantoms + 1))
    humans = tuple(f"{i:02d}" for i in range(1, sz.n_subjects + 1))
    return phantoms, humans


def study_sessions(sites: tuple[str, ...] = SITES) -> tuple[str, ...]:
    """Session labels: ``GE1, GE2, Prisma1, Prisma2`` for the default sites."""
    return tuple(f"{s}{n}" for s in sites for n in range(1, SESSIONS_PER_SITE + 1))
