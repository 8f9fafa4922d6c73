"""Diffusion phantoms: a water-filled cylinder holding vials of known diffusion.

Vials are cylinders along the scanner z axis, arranged as a centre vial and rings.
Each vial holds one of:

* ``pvp`` — isotropic polyvinylpyrrolidone solution, ``D`` from 0.3 to 1.9 µm²/ms
  (T1/T2 shorter at higher concentration);
* ``fibre`` — hollow textile fibres along one axis (restricted, anisotropic) with
  inter-fibre water;
* ``crossing`` — two fibre populations crossing at 45–90°.

Fibre axes are spread over the sphere (several distinct orientations per phantom),
so an SH mapping trained on the phantom sees many orientations.  The bath is doped
water at room temperature (``D ≈ 2.0 µm²/ms``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bids_harmony.simulate.tissue import N_COMPARTMENTS, Grid, Pose, TissueModel, assemble, ramp

#: Vial kinds cycled through the positions (offset by phantom number).
VIAL_CYCLE: tuple[str, ...] = ("fibre", "crossing", "pvp", "fibre", "crossing", "fibre", "pvp")
CROSSING_ANGLES_DEG: tuple[float, ...] = (90.0, 60.0, 45.0, 75.0)


@dataclass(frozen=True)
class Vial:
    """One vial: position, radius and contents (diffusivities in mm²/s, times in ms)."""

    kind: str
    centre_mm: tuple[float, float]
    radius_mm: float
    d_iso: float
    fibre_fraction: float
    fibre_axes: tuple[tuple[float, float, float], ...]
    fibre_split: float
    fibre_d_par: float
    fibre_d_perp: float
    pd: float
    t1: float
    t2: float


@dataclass(frozen=True)
class PhantomSpec:
    """Geometry and materials of a phantom (object frame, mm)."""

    name: str
    container_radius_mm: float
    bath_d: float
    bath_t1: float
    bath_t2: float
    vials: tuple[Vial, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"type": "phantom", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomSpec:
        """Inverse of :meth:`to_dict`."""
        vials = []
        for v in data["vials"]:
            v = dict(v)
            v["centre_mm"] = tuple(v["centre_mm"])
            v["fibre_axes"] = tuple(tuple(a) for a in v["fibre_axes"])
            vials.append(Vial(**v))
        keys = ("name", "container_radius_mm", "bath_d", "bath_t1", "bath_t2")
        return cls(vials=tuple(vials), **{k: data[k] for k in keys})


def _unit(v: NDArray) -> tuple[float, float, float]:
    v = np.asarray(v, dtype=float)
    v = v / np.linalg.norm(v)
    return tuple(round(float(c), 8) for c in v)


def _spread_axes(n: int, rng: np.random.Generator) -> NDArray:
    """``n`` well-separated axes: a randomly rotated golden-spiral half sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # upper hemisphere
    phi = np.pi * (1.0 + 5**0.5) * i
    pts = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], -1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return pts @ q.T


def draw_phantom(number: int, rng: np.random.Generator, *, n_vials: int) -> PhantomSpec:
    """Draw a phantom design.

    Parameters
    ----------
    number : int
        Phantom number (shifts the vial-kind cycle so phantoms differ).
    rng : numpy.random.Generator
    n_vials : int
        7 (centre + ring of 6, larger vials) or more (adds an outer ring).
    """
    container = 74.0
    if n_vials <= 7:
        radius, rings = 16.0, [(0.0, 1), (38.0, n_vials - 1)]
    else:
        radius, rings = 12.0, [(0.0, 1), (30.0, 6), (56.0, n_vials - 7)]
    centres = []
    for ring_r, count in rings:
        phase = rng.uniform(0, 2 * np.pi)
        for j in range(count):
            ang = phase + 2 * np.pi * j / max(count, 1)
            centres.append((round(ring_r * np.cos(ang), 4), round(ring_r * np.sin(ang), 4)))
    kinds = [VIAL_CYCLE[(j + 2 * (number - 1)) % len(VIAL_CYCLE)] for j in range(n_vials)]
    n_pvp = max(1, kinds.count("pvp"))
    pvp_d = np.linspace(0.35e-3, 1.8e-3, n_pvp) * rng.uniform(0.95, 1.05, n_pvp)
    axes = _spread_axes(n_vials, rng)
    vials = []
    n_cross = 0
    for j, (kind, centre) in enumerate(zip(kinds, centres, strict=True)):
        ax1 = _unit(axes[j])
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
            ax2 = _unit(np.cos(angle) * np.asarray(ax1) + np.sin(angle) * perp)
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
    )


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
