"""Study layout: protocols, sizes, subject and session labels, ``dwi`` sidecars.

Constants and small parsers of a simulated study, re-exported by
:mod:`bids_harmony.simulate.study`; no random draws, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bids_harmony.errors import NoDataError
from bids_harmony.simulate.site_effects import VENDORS, SiteParams
from bids_harmony.simulate.tissue import Grid

SITES: tuple[str, ...] = ("GE", "Prisma")
SESSIONS_PER_SITE = 2


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
    # the optional third shell (issue 15, DKI): ``--shells 1000 2000 3000``
    "multishell3": Protocol("multishell3", (1000.0, 2000.0, 3000.0), 60),
}
#: The multi-shell protocols by their shells; ``multishell`` is the default.
MULTISHELL: dict[tuple[float, ...], str] = {
    p.shells: name for name, p in PROTOCOLS.items() if name.startswith("multishell")
}


def multishell_protocol(shells: tuple[float, ...] | None) -> str:
    """The multi-shell protocol acquiring ``shells`` (None: ``multishell``, b=1000, 2000).

    Raises :class:`~bids_harmony.errors.NoDataError` for shells no protocol has.
    """
    if shells is None:
        return "multishell"
    key = tuple(float(b) for b in shells)
    if key not in MULTISHELL:
        known = "; ".join(" ".join(f"{b:g}" for b in k) for k in MULTISHELL)
        raise NoDataError(f"no multi-shell protocol with shells {key}; choose from: {known}")
    return MULTISHELL[key]


def with_multishell(protocols: tuple[str, ...], multishell: str) -> tuple[str, ...]:
    """``protocols`` with ``multishell`` in place of the default multi-shell protocol."""
    return tuple(multishell if p == "multishell" else p for p in protocols)


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
    # The demo runs every level in <= 10 min on 2 cores: CSD (GFA, fibres) costs per
    # brain voxel and per run, so the humans have 5 mm voxels and the phantoms only
    # the humans' protocol (issue 13; before: 3.44 mm, 4 phantom protocols, 24.5 min).
    "demo": StudySize(
        "demo",
        Grid((44, 44, 28), (5.0, 5.0, 5.0)),
        Grid((64, 64, 10), (3.4375, 3.4375, 3.5)),
        3,
        2,
        13,
        ("multishell",),
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
