"""The NIST/QIBA-like isotropic diffusion phantom (``nist`` and ``nist-small`` designs).

Thirteen vials of aqueous polyvinylpyrrolidone (PVP) — a centre vial, an inner ring
of 6 and an outer ring of 6 — stand in an ice-water bath, so the whole phantom sits
at 0 °C, where the diffusivities are tabulated (:data:`PVP_LEVELS`).  More PVP means
slower diffusion and shorter T1/T2.  Nine concentrations fill the 13 vials; the
centre and three others repeat concentrations, as the real phantom repeats vials.
Everything is isotropic (no fibre compartments).

Nominal geometry: container radius 90 mm, vial radius 8 mm (about 5 voxels across
at 3.4 mm), rings at 32 and 62 mm.  On a grid whose in-plane field of view is too
small, the whole geometry shrinks to fit (container at 90 % of the half field of
view).  ``nist-small`` keeps the positions but gives the vials a radius of 1.5
voxels of the grid (about 5 mm at 3.4 mm voxels), to test partial-volume handling.
"""

from __future__ import annotations

import numpy as np

from bids_harmony.simulate.phantom_spec import PhantomSpec, Vial, in_plane_half_fov, ring_centres
from bids_harmony.simulate.tissue import Grid

NIST_DESIGNS: tuple[str, ...] = ("nist", "nist-small")
#: ``(PVP % w/w, D at 0 °C in mm²/s)``, from free water to 50 % PVP.
PVP_LEVELS: tuple[tuple[float, float], ...] = (
    (0.0, 1.10e-3),
    (5.0, 0.95e-3),
    (10.0, 0.80e-3),
    (15.0, 0.65e-3),
    (20.0, 0.50e-3),
    (25.0, 0.38e-3),
    (30.0, 0.27e-3),
    (40.0, 0.20e-3),
    (50.0, 0.13e-3),
)
#: Level (index into :data:`PVP_LEVELS`) of each vial: centre, inner ring, outer ring.
VIAL_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 2, 4, 6)
#: Ice water (0 °C): diffusivity (mm²/s) and relaxation times (ms).
BATH_D = 1.1e-3
BATH_T1, BATH_T2 = 1800.0, 1000.0
CONTAINER_MM = 90.0
VIAL_RADIUS_MM = 8.0
RING_RADII_MM = (32.0, 62.0)
#: Small-vial radius in voxels (``nist-small``).
SMALL_VIAL_VOXELS = 1.5
#: Voxel size (mm) assumed when no grid is given.
NOMINAL_VOXEL_MM = 3.4375


def _geometry(design: str, grid: Grid | None) -> tuple[float, float, tuple[float, float]]:
    """``(container radius, vial radius, ring radii)`` in mm, fitted to ``grid``."""
    scale = 1.0
    voxel = NOMINAL_VOXEL_MM
    if grid is not None:
        # keep a 10 % rim of background around the container in the field of view
        scale = min(1.0, 0.9 * in_plane_half_fov(grid) / CONTAINER_MM)
        voxel = 0.5 * (grid.voxel_size[0] + grid.voxel_size[1])
    radius = VIAL_RADIUS_MM * scale
    if design == "nist-small":
        radius = SMALL_VIAL_VOXELS * voxel
    rings = (RING_RADII_MM[0] * scale, RING_RADII_MM[1] * scale)
    return CONTAINER_MM * scale, radius, rings


def draw_nist(
    number: int, rng: np.random.Generator, *, design: str = "nist", grid: Grid | None = None
) -> PhantomSpec:
    """Draw a NIST-like phantom.

    Parameters
    ----------
    number : int
        Phantom number (the name ``phantomNN``).
    rng : numpy.random.Generator
        Ring phases and a ±1 % batch spread of each vial's diffusivity.
    design : {"nist", "nist-small"}
    grid : Grid, optional
        Grid the phantom is imaged on (fits the geometry; sizes small vials).
    """
    if design not in NIST_DESIGNS:
        raise KeyError(f"not a NIST design: {design!r}; known: {list(NIST_DESIGNS)}")
    container, radius, (inner, outer) = _geometry(design, grid)
    centres = ring_centres([(0.0, 1), (inner, 6), (outer, 6)], rng)
    spread = rng.uniform(0.99, 1.01, len(VIAL_LEVELS))
    axis = (0.0, 0.0, 1.0)
    vials = []
    for centre, level, jitter in zip(centres, VIAL_LEVELS, spread, strict=True):
        conc, d0 = PVP_LEVELS[level]
        d = d0 * float(jitter)
        rel = d / BATH_D
        vials.append(
            Vial(
                kind="pvp",
                centre_mm=centre,
                radius_mm=round(radius, 4),
                d_iso=round(d, 9),
                fibre_fraction=0.0,
                fibre_axes=(axis, axis),
                fibre_split=1.0,
                fibre_d_par=0.0,
                fibre_d_perp=0.0,
                # PVP displaces water and binds it: fewer, faster-relaxing protons
                pd=round(1.0 - 0.5 * conc / 100.0, 4),
                t1=round(400.0 + 1400.0 * rel, 3),
                t2=round(50.0 + 850.0 * rel**2, 3),
            )
        )
    return PhantomSpec(
        name=f"phantom{number:02d}",
        container_radius_mm=round(container, 4),
        bath_d=BATH_D,
        bath_t1=BATH_T1,
        bath_t2=BATH_T2,
        vials=tuple(vials),
        design=design,
    )
