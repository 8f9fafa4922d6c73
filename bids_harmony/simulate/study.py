"""Study layout and orchestration: sizes, sites, subjects, sessions and runs.

Every random quantity comes from a generator keyed by ``(seed, what, which…)``
(:func:`keyed_rng`), so one session simulated alone (:func:`simulate_session`) is
identical to the same session inside the whole study (:func:`simulate_study`).

Layout: two sites (``GE`` = SIGNA Premier, source; ``Prisma`` = Siemens Prisma,
target), two sessions per site (``ses-GE1``, ``ses-GE2``, ``ses-Prisma1``,
``ses-Prisma2``).  Phantoms get one run per protocol (``acq-b1000``, ``acq-b2000``,
``acq-multishell``; demo/full add ``acq-b1500dir30``); traveling humans get one
multi-shell run (``acq-multishell``: b=1000 and b=2000, 60 directions each), the
same protocol as the phantoms' ``acq-multishell`` run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bids_harmony.errors import NoDataError
from bids_harmony.simulate.brain import BrainSpec, brain_tissue, draw_brain
from bids_harmony.simulate.gradients import acquisition_table, dispersed_directions
from bids_harmony.simulate.phantom import PhantomSpec, draw_phantom, phantom_tissue
from bids_harmony.simulate.signal_model import noiseless_signal
from bids_harmony.simulate.site_effects import (
    VENDORS,
    SiteParams,
    draw_site,
    noisy_image,
)
from bids_harmony.simulate.tissue import Grid, Pose, TissueModel

LOGGER = logging.getLogger(__name__)

SITES: tuple[str, ...] = ("GE", "Prisma")
SESSIONS_PER_SITE = 2
_VENDOR_INDEX = {name: i for i, name in enumerate(VENDORS)}
# key domains of keyed_rng
_SITE, _DIRS, _TABLE, _SUBJECT, _POSE, _NOISE = range(1, 7)


@dataclass(frozen=True)
class Protocol:
    """A diffusion protocol: shells (s/mm²) and directions per shell."""

    name: str
    shells: tuple[float, ...]
    n_dirs: int


PROTOCOLS: dict[str, Protocol] = {
    "b1000": Protocol("b1000", (1000.0,), 60),
    "b2000": Protocol("b2000", (2000.0,), 60),
    "multishell": Protocol("multishell", (1000.0, 2000.0), 60),
    "b1500dir30": Protocol("b1500dir30", (1500.0,), 30),
}
_PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}


@dataclass(frozen=True)
class StudySize:
    """Grids and counts of a study size."""

    name: str
    human_grid: Grid
    phantom_grid: Grid
    n_subjects: int
    n_phantoms: int
    n_vials: int
    phantom_protocols: tuple[str, ...]
    human_protocols: tuple[str, ...] = ("multishell",)


SIZES: dict[str, StudySize] = {
    "tiny": StudySize(
        "tiny",
        Grid((20, 20, 12), (11.0, 11.0, 11.0)),
        Grid((36, 36, 4), (4.5, 4.5, 4.5)),
        3,
        2,
        7,
        ("b1000", "b2000", "multishell"),
    ),
    "demo": StudySize(
        "demo",
        Grid((64, 64, 40), (3.4375, 3.4375, 3.5)),
        Grid((64, 64, 10), (3.4375, 3.4375, 3.5)),
        3,
        2,
        13,
        ("b1000", "b2000", "multishell", "b1500dir30"),
    ),
    "full": StudySize(
        "full",
        Grid((146, 146, 90), (1.5, 1.5, 1.5)),
        Grid((146, 146, 40), (1.5, 1.5, 1.5)),
        5,
        3,
        17,
        ("b1000", "b2000", "multishell", "b1500dir30"),
    ),
}


@dataclass(frozen=True, eq=False)
class RunData:
    """One simulated ``dwi`` run (arrays in memory)."""

    acq: str
    bvals: NDArray[np.float64]
    bvecs: NDArray[np.float64]
    image: NDArray[np.int16]
    noiseless: NDArray[np.float32]
    sidecar: dict[str, Any]


@dataclass(frozen=True, eq=False)
class SessionData:
    """One simulated session: the object as posed, the site and its runs."""

    subject: str
    session: str
    site: SiteParams
    pose: Pose
    spec: BrainSpec | PhantomSpec
    tissue: TissueModel
    runs: tuple[RunData, ...] = field(default=())


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for ``(seed, *key)`` (a :class:`numpy.random.SeedSequence`)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def get_size(size: str) -> StudySize:
    """The :class:`StudySize` called ``size``."""
    try:
        return SIZES[size]
    except KeyError:
        raise NoDataError(f"unknown study size {size!r}; choose from {sorted(SIZES)}") from None


def parse_subject(label: str) -> tuple[bool, int]:
    """``"phantom01"`` → ``(True, 1)``, ``"sub-03"`` → ``(False, 3)``."""
    match = re.fullmatch(r"(?:sub-)?(phantom)?(\d+)", label)
    if not match:
        raise NoDataError(f"subject label {label!r} is neither 'NN' nor 'phantomNN'")
    return match.group(1) is not None, int(match.group(2))


def parse_session(label: str) -> tuple[str, int]:
    """``"ses-Prisma2"`` → ``("Prisma", 2)``."""
    match = re.fullmatch(r"(?:ses-)?([A-Za-z]+)(\d+)", label)
    if not match or match.group(1) not in VENDORS:
        raise NoDataError(
            f"session label {label!r} is not <site><n> with a site in {list(VENDORS)}"
        )
    return match.group(1), int(match.group(2))


@lru_cache(maxsize=16)
def site_params(site: str, seed: int) -> SiteParams:
    """Site-effect parameters of ``site`` for a study seed."""
    return draw_site(site, keyed_rng(seed, _SITE, _VENDOR_INDEX[site]))


@lru_cache(maxsize=16)
def _site_directions(site: str, seed: int, n: int) -> NDArray:
    return dispersed_directions(n, keyed_rng(seed, _DIRS, _VENDOR_INDEX[site], n))


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


def subject_spec(subject: str, size: str, seed: int) -> BrainSpec | PhantomSpec:
    """Anatomy (brain) or design (phantom) of ``subject``."""
    is_phantom, number = parse_subject(subject)
    rng = keyed_rng(seed, _SUBJECT, int(not is_phantom), number)
    if is_phantom:
        return draw_phantom(number, rng, n_vials=get_size(size).n_vials)
    return draw_brain(number, rng)


def object_grid(spec: BrainSpec | PhantomSpec, size: str) -> Grid:
    """Image grid of ``spec`` at ``size``."""
    sz = get_size(size)
    return sz.phantom_grid if isinstance(spec, PhantomSpec) else sz.human_grid


def object_tissue(spec: BrainSpec | PhantomSpec, grid: Grid, pose: Pose) -> TissueModel:
    """Tissue model of a phantom or brain placed with ``pose`` on ``grid``."""
    if isinstance(spec, PhantomSpec):
        return phantom_tissue(spec, grid, pose)
    return brain_tissue(spec, grid, pose)


def session_pose(subject: str, session: str, grid: Grid, seed: int) -> Pose:
    """Position of the object in a session.

    Phantoms are positioned consistently (sub-voxel shift, no rotation); heads move
    by up to 3° about each axis and 4 mm along each axis.
    """
    is_phantom, number = parse_subject(subject)
    site, repeat = parse_session(session)
    rng = keyed_rng(seed, _POSE, int(not is_phantom), number, _VENDOR_INDEX[site], repeat)
    if is_phantom:
        shift = rng.uniform(-0.4, 0.4, 3) * np.asarray(grid.voxel_size)
        return Pose((0.0, 0.0, 0.0), tuple(round(float(v), 4) for v in shift))
    angles = tuple(round(float(v), 4) for v in rng.uniform(-3.0, 3.0, 3))
    return Pose(angles, tuple(round(float(v), 4) for v in rng.uniform(-4.0, 4.0, 3)))


def protocols_for(subject: str, size: str) -> tuple[str, ...]:
    """Protocols acquired for ``subject`` at ``size``."""
    sz = get_size(size)
    return sz.phantom_protocols if parse_subject(subject)[0] else sz.human_protocols


def dwi_sidecar(site: SiteParams, protocol: str, grid: Grid) -> dict[str, Any]:
    """BIDS sidecar of a ``dwi`` run (times in seconds)."""
    te, tr = site.timing(protocol)
    accel = 2
    ees = site.echo_spacing_s / accel
    proto = PROTOCOLS[protocol]
    return {
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": site.model,
        "DeviceSerialNumber": site.serial,
        "SoftwareVersions": site.software,
        "MagneticFieldStrength": site.field_strength,
        "ReceiveCoilName": site.coil,
        "InstitutionName": f"bids_harmony simulated site {site.label}",
        "SeriesDescription": f"DTI {protocol} {proto.n_dirs}dir",
        "ScanningSequence": "EP",
        "MRAcquisitionType": "2D",
        "EchoTime": round(te / 1000.0, 6),
        "RepetitionTime": round(tr / 1000.0, 6),
        "FlipAngle": 90,
        "PhaseEncodingDirection": site.phase_encoding_direction,
        "EffectiveEchoSpacing": round(ees, 8),
        "TotalReadoutTime": round(ees * (grid.shape[1] - 1), 8),
        "ParallelReductionFactorInPlane": accel,
        "MultibandAccelerationFactor": 2,
        "PartialFourier": 0.75,
        "SliceThickness": grid.voxel_size[2],
        "SliceEncodingDirection": "k",
    }


def simulate_session(
    subject: str,
    session: str,
    *,
    size: str = "tiny",
    seed: int = 0,
    protocols: tuple[str, ...] | None = None,
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

    Returns
    -------
    SessionData
        The posed tissue model, the site and per run the table, the int16 image
        (X, Y, Z, V) and its noise-free float32 version.
    """
    subject = subject.removeprefix("sub-")
    session = session.removeprefix("ses-")
    site_label, repeat = parse_session(session)
    is_phantom, number = parse_subject(subject)
    spec = subject_spec(subject, size, seed)
    grid = object_grid(spec, size)
    pose = session_pose(subject, session, grid, seed)
    tissue = object_tissue(spec, grid, pose)
    site = site_params(site_label, seed)
    runs = []
    for protocol in protocols or protocols_for(subject, size):
        if protocol not in PROTOCOLS:
            raise NoDataError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
        bvals, bvecs = gradient_table(site, protocol, seed)
        clean = noiseless_signal(tissue, site, bvals, bvecs, protocol=protocol)
        rng = keyed_rng(
            seed,
            _NOISE,
            int(not is_phantom),
            number,
            _VENDOR_INDEX[site_label],
            repeat,
            _PROTOCOL_INDEX[protocol],
        )
        image = noisy_image(clean, site.noise_sigma, rng)
        runs.append(
            RunData(protocol, bvals, bvecs, image, clean, dwi_sidecar(site, protocol, grid))
        )
        LOGGER.info("simulated sub-%s ses-%s acq-%s: %s", subject, session, protocol, image.shape)
    return SessionData(subject, session, site, pose, spec, tissue, tuple(runs))


def study_subjects(size: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(phantom labels, human labels)`` of a study of ``size``."""
    sz = get_size(size)
    phantoms = tuple(f"phantom{i:02d}" for i in range(1, sz.n_phantoms + 1))
    humans = tuple(f"{i:02d}" for i in range(1, sz.n_subjects + 1))
    return phantoms, humans


def study_sessions(sites: tuple[str, ...] = SITES) -> tuple[str, ...]:
    """Session labels: ``GE1, GE2, Prisma1, Prisma2`` for the default sites."""
    return tuple(f"{s}{n}" for s in sites for n in range(1, SESSIONS_PER_SITE + 1))
