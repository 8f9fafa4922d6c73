"""Diffusion phantoms: a water-filled cylinder holding vials of known diffusion.

Vials are cylinders along the object z axis, arranged as a centre vial and rings.
Each vial holds one of:

* ``pvp`` — isotropic polyvinylpyrrolidone solution (T1/T2 shorter at higher
  concentration);
* ``fibre`` — hollow textile fibres along one axis (restricted, anisotropic) with
  inter-fibre water;
* ``crossing`` — two fibre populations crossing at 45–90°.

Designs (:data:`DESIGNS`, chosen by name in :func:`draw_phantom`):

* ``mixed`` (the default) — fibre, crossing and PVP vials (D 0.35–1.8 µm²/ms) in doped
  water at room temperature (``D ≈ 2.0 µm²/ms``); fibre axes spread over the sphere,
  so an SH mapping trained on it sees many orientations;
* ``fibre`` — only fibre and crossing vials (like the HCP/HPD fibre phantoms), same
  geometry and bath as ``mixed``;
* ``nist``, ``nist-small`` — the NIST/QIBA isotropic phantom in an ice-water bath
  (:mod:`bids_harmony.simulate.phantom_nist`).

Temperature: water diffusivity changes by about 2.4 %/°C near room temperature
(:func:`temperature_factor`); :func:`scale_diffusivities` applies it to a posed
phantom, leaving relaxation and geometry unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bids_harmony.simulate.phantom_nist import NIST_DESIGNS, draw_nist
from bids_harmony.simulate.phantom_spec import (
    CROSSING_ANGLES_DEG,
    PhantomSpec,
    Vial,
    ring_centres,
    spread_axes,
    unit_axis,
)
from bids_harmony.simulate.tissue import N_COMPARTMENTS, Grid, Pose, TissueModel, assemble, ramp

__all__ = [
    "CROSSING_ANGLES_DEG",
    "DESIGNS",
    "DIFFUSIVITY_PER_DEGREE",
    "PhantomSpec",
    "Vial",
    "draw_phantom",
    "phantom_tissue",
    "scale_diffusivities",
    "temperature_factor",
]

#: Vial kinds cycled through the positions (offset by phantom number).
VIAL_CYCLE: tuple[str, ...] = ("fibre", "crossing", "pvp", "fibre", "crossing", "fibre", "pvp")
#: Vial kinds of the fibre design: every other vial a crossing.
FIBRE_CYCLE: tuple[str, ...] = ("crossing", "fibre")
#: Phantom designs and a one-line description of each.
DESIGNS: dict[str, str] = {
    "mixed": "fibre, crossing and PVP vials in doped water at room temperature",
    "fibre": "fibre and crossing (45-90 deg) tubes only, in water at room temperature",
    "nist": "NIST/QIBA isotropic phantom: 13 PVP vials (0-50 %) in ice water at 0 C",
    "nist-small": "the NIST phantom with small vials (radius 1.5 voxels)",
}
#: Relative change of water diffusivity per °C near room temperature.
DIFFUSIVITY_PER_DEGREE = 0.024


def draw_phantom(
    number: int,
    rng: np.random.Generator,
    *,
    n_vials: int,
    design: str = "mixed",
    grid: Grid | None = None,
) -> PhantomSpec:
    """Draw a phantom of a given design.

    Parameters
    ----------
    number : int
        Phantom number (shifts the vial-kind cycle so phantoms differ).
    rng : numpy.random.Generator
    n_vials : int
        ``mixed``/``fibre``: 7 (centre + ring of 6, larger vials) or more (adds an
        outer ring).  The NIST designs always have 13 vials.
    design : str
        A key of :data:`DESIGNS`.  ``mixed`` draws exactly what this function drew
        before designs existed (same random draws).
    grid : Grid, optional
        Grid the phantom is imaged on: the NIST designs shrink to fit its in-plane
        field of view and size their small vials in its voxels.

    Raises
    ------
    KeyError
        Unknown design.
    """
    if design == "mixed":
        return _draw_vial_phantom(number, rng, n_vials, VIAL_CYCLE, design)
    if design == "fibre":
        return _draw_vial_phantom(number, rng, n_vials, FIBRE_CYCLE, design)
    if design in NIST_DESIGNS:
        return draw_nist(number, rng, design=design, grid=grid)
    raise KeyError(f"unknown phantom design {design!r}; known: {sorted(DESIGNS)}")


def _draw_vial_phantom(
    number: int, rng: np.random.Generator, n_vials: int, cycle: tuple[str, ...], design: str
) -> PhantomSpec:
    """The room-temperature vial phantom (``mixed`` and ``fibre`` designs).

    The order of the random draws is fixed (ring phases, PVP diffusivities, fibre
    axes, per-vial contents, bath): ``mixed`` phantoms of older studies reproduce.
    """
    container = 74.0
    if n_vials <= 7:
        radius, rings = 16.0, [(0.0, 1), (38.0, n_vials - 1)]
    else:
        radius, rings = 12.0, [(0.0, 1), (30.0, 6), (56.0, n_vials - 7)]
    centres = ring_centres(rings, rng)
    kinds = [cycle[(j + 2 * (number - 1)) % len(cycle)] for j in range(n_vials)]
    # drawn even without PVP vials (fibre design) to keep the stream layout
    n_pvp = max(1, kinds.count("pvp"))
    pvp_d = np.linspace(0.35e-3, 1.8e-3, n_pvp) * rng.uniform(0.95, 1.05, n_pvp)
    axes = spread_axes(n_vials, rng)
    vials = []
    n_cross = 0
    for j, (kind, centre) in enumerate(zip(kinds, centres, strict=True)):
        ax1 = unit_axis(axes[j])
        common = {"kind": kind, "centre_mm": centre, "radius_mm": radius}
        if kind == "pvp":
            d = float(pvp_d[kinds[:j].count("pvp")])
            rel = d / 2.0e-3
            vials.append(
                Vial(
                    **common,
                    d_iso=round(d, 9),
                    fibre_fraction=0.0,
                    fibre_axes=(ax1, ax1),
                    fibre_split=1.0,
                    fibre_d_par=0.0,
                    fibre_d_perp=0.0,
                    pd=0.95,
                    t1=round(300.0 + 900.0 * rel, 3),
                    t2=round(60.0 + 500.0 * rel**2, 3),
                )
            )
            continue
        if kind == "crossing":
            angle = np.deg2rad(CROSSING_ANGLES_DEG[n_cross % len(CROSSING_ANGLES_DEG)])
            n_cross += 1
            perp = np.cross(ax1, rng.standard_normal(3))
            perp /= np.linalg.norm(perp)
            ax2 = unit_axis(np.cos(angle) * np.asarray(ax1) + np.sin(angle) * perp)
            split = float(rng.choice([0.5, 0.6]))
        else:
            ax2, split = ax1, 1.0
        vials.append(
            Vial(
                **common,
                d_iso=round(float(rng.uniform(1.0e-3, 1.5e-3)), 9),
                fibre_fraction=round(float(rng.uniform(0.55, 0.75)), 4),
                fibre_axes=(ax1, ax2),
                fibre_split=split,
                fibre_d_par=round(float(rng.uniform(1.3e-3, 1.9e-3)), 9),
                fibre_d_perp=round(float(rng.uniform(0.15e-3, 0.6e-3)), 9),
                pd=0.9,
                t1=round(float(rng.uniform(900.0, 1400.0)), 3),
                t2=round(float(rng.uniform(60.0, 120.0)), 3),
            )
        )
    return PhantomSpec(
        name=f"phantom{number:02d}",
        container_radius_mm=container,
        bath_d=round(float(rng.uniform(1.95e-3, 2.1e-3)), 9),
        bath_t1=round(float(rng.uniform(700.0, 1000.0)), 3),
        bath_t2=round(float(rng.uniform(400.0, 600.0)), 3),
        vials=tuple(vials),
        design=design,
    )


def temperature_factor(delta_c: float) -> float:
    """Diffusivity multiplier of water ``delta_c`` °C away from the nominal temperature.

    .. math:: D(T_0 + \\Delta T) \\approx D(T_0)\\,(1 + 0.024\\,\\Delta T)

    (self-diffusion of water rises ~2.4 %/°C near room temperature; PVP solutions
    and the water in fibre phantoms follow it closely).
    """
    return 1.0 + DIFFUSIVITY_PER_DEGREE * float(delta_c)


def scale_diffusivities(tissue: TissueModel, factor: float) -> TissueModel:
    """``tissue`` with every compartment's ``d_par`` and ``d_perp`` times ``factor``.

    Used on phantoms only (all compartments are phantom materials); the product is
    taken in float32 so a regenerated signal matches the written one exactly.
    """
    if factor == 1.0:
        return tissue
    f = np.float32(factor)
    return dataclasses.replace(tissue, d_par=tissue.d_par * f, d_perp=tissue.d_perp * f)


def phantom_tissue(spec: PhantomSpec, grid: Grid, pose: Pose) -> TissueModel:
    """Voxel-wise compartment model of a phantom placed with ``pose`` on ``grid``.

    Labels: 0 outside the container, 1 bath, ``2 + i`` vial ``i`` (majority).
    The mask is the inside of the container.
    """
    h = grid.mean_voxel
    p_all = grid.coordinates()
    q_all = pose.to_object(p_all)
    r_obj = np.linalg.norm(q_all[..., :2], axis=-1)
    inside_all = ramp(r_obj - spec.container_radius_mm, h)
    support = inside_all > 0
    q = q_all[support]
    inside = inside_all[support]
    m, kk = q.shape[0], N_COMPARTMENTS
    comps = {
        "fractions": np.zeros((m, kk)),
        "d_par": np.zeros((m, kk)),
        "d_perp": np.zeros((m, kk)),
        "directions": np.zeros((m, kk, 3)),
        "restriction": np.zeros((m, kk)),
        "proton_density": np.zeros((m, kk)),
        "t1": np.ones((m, kk)),
        "t2": np.ones((m, kk)),
    }
    vial_frac = np.zeros((m, len(spec.vials)))
    for i, vial in enumerate(spec.vials):
        dist = np.linalg.norm(q[:, :2] - np.asarray(vial.centre_mm), axis=1) - vial.radius_mm
        vial_frac[:, i] = ramp(dist, h)
    vial_total = np.minimum(vial_frac.sum(axis=1), 1.0)
    bath = inside * (1.0 - vial_total)
    comps["fractions"][:, 0] = bath
    comps["d_par"][:, 0] = comps["d_perp"][:, 0] = spec.bath_d
    comps["directions"][:, 0] = (0.0, 0.0, 1.0)
    comps["proton_density"][:, 0] = 1.0
    comps["t1"][:, 0], comps["t2"][:, 0] = spec.bath_t1, spec.bath_t2
    owner = np.argmax(vial_frac, axis=1)
    frac = vial_frac[np.arange(m), owner] * inside
    for i, vial in enumerate(spec.vials):
        sel = (owner == i) & (frac > 0)
        if not np.any(sel):
            continue
        f = frac[sel]
        ax = pose.rotate(np.asarray(vial.fibre_axes))
        comps["fractions"][sel, 1] = f * (1.0 - vial.fibre_fraction)
        comps["d_par"][sel, 1] = comps["d_perp"][sel, 1] = vial.d_iso
        comps["directions"][sel, 1] = ax[0]
        comps["restriction"][sel, 1] = 0.0 if vial.kind == "pvp" else 0.3
        for k, (axis, share) in enumerate(
            zip(ax, (vial.fibre_split, 1 - vial.fibre_split), strict=True), 2
        ):
            comps["fractions"][sel, k] = f * vial.fibre_fraction * share
            comps["d_par"][sel, k] = vial.fibre_d_par
            comps["d_perp"][sel, k] = vial.fibre_d_perp
            comps["directions"][sel, k] = axis
            comps["restriction"][sel, k] = 1.0
        for k in range(1, kk):
            comps["proton_density"][sel, k] = vial.pd
            comps["t1"][sel, k], comps["t2"][sel, k] = vial.t1, vial.t2
    labels = np.zeros(grid.shape, dtype=np.uint8)
    lab = np.where(vial_total >= 0.5, owner + 2, 1)
    labels[support] = np.where(inside >= 0.5, lab, 0)
    return assemble(grid, support, comps, labels, inside_all >= 0.5, kind="phantom")
