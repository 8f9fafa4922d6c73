"""Phantom description: vials, their contents and the whole design (no drawing, no I/O).

A phantom is a cylinder along the object z axis filled with a bath and holding
cylindrical vials parallel to it.  A :class:`Vial` is a mixture of an isotropic
solution (``d_iso``) and, for fibre vials, one or two fibre populations; a
:class:`PhantomSpec` is the bath plus its vials and the name of the design it was
drawn from (:data:`bids_harmony.simulate.phantom.DESIGNS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bids_harmony.simulate.tissue import Grid

#: Crossing angles (degrees) cycled through the crossing vials of a phantom.
CROSSING_ANGLES_DEG: tuple[float, ...] = (90.0, 60.0, 45.0, 75.0)


@dataclass(frozen=True)
class Vial:
    """One vial: position, radius and contents (diffusivities in mm²/s, times in ms).

    Attributes
    ----------
    kind : str
        ``"pvp"`` (isotropic solution), ``"fibre"`` or ``"crossing"``.
    centre_mm : tuple of 2 float
        Vial axis position in the object x-y plane.
    radius_mm : float
    d_iso : float
        Diffusivity of the isotropic part (the solution, or inter-fibre water).
    fibre_fraction : float
        Volume share of the fibre populations (0 for ``pvp``).
    fibre_axes : tuple of 2 unit vectors
        Object-frame axes of the two fibre populations (equal for one population).
    fibre_split : float
        Share of the first population within the fibres.
    fibre_d_par, fibre_d_perp : float
        Axial and radial diffusivity of the fibres.
    pd, t1, t2 : float
        Relative proton density and relaxation times.
    """

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
    """Geometry and materials of a phantom (object frame, mm; diffusivities mm²/s).

    ``design`` names the design the phantom was drawn from; JSON written before
    designs existed has none and reads back as ``"mixed"``.
    """

    name: str
    container_radius_mm: float
    bath_d: float
    bath_t1: float
    bath_t2: float
    vials: tuple[Vial, ...]
    design: str = "mixed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"type": "phantom", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomSpec:
        """Inverse of :meth:`to_dict` (``type`` ignored; ``design`` defaults to mixed)."""
        vials = []
        for v in data["vials"]:
            v = dict(v)
            v["centre_mm"] = tuple(v["centre_mm"])
            v["fibre_axes"] = tuple(tuple(a) for a in v["fibre_axes"])
            vials.append(Vial(**v))
        keys = ("name", "container_radius_mm", "bath_d", "bath_t1", "bath_t2")
        return cls(
            vials=tuple(vials),
            design=str(data.get("design", "mixed")),
            **{k: data[k] for k in keys},
        )


def unit_axis(v: NDArray) -> tuple[float, float, float]:
    """``v`` normalized and rounded to 8 decimals (as stored in the JSON)."""
    v = np.asarray(v, dtype=float)
    v = v / np.linalg.norm(v)
    return tuple(round(float(c), 8) for c in v)


def spread_axes(n: int, rng: np.random.Generator) -> NDArray:
    """``n`` well-separated axes: a randomly rotated golden-spiral half sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # upper hemisphere
    phi = np.pi * (1.0 + 5**0.5) * i
    pts = np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], -1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return pts @ q.T


def ring_centres(
    rings: list[tuple[float, int]], rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Vial centres on concentric rings ``(radius mm, count)``, each at a random phase."""
    centres = []
    for ring_r, count in rings:
        phase = rng.uniform(0, 2 * np.pi)
        for j in range(count):
            ang = phase + 2 * np.pi * j / max(count, 1)
            centres.append((round(ring_r * np.cos(ang), 4), round(ring_r * np.sin(ang), 4)))
    return centres


def in_plane_half_fov(grid: Grid) -> float:
    """Half the smaller in-plane extent of ``grid`` (mm): the largest centred radius."""
    return 0.5 * min(grid.shape[0] * grid.voxel_size[0], grid.shape[1] * grid.voxel_size[1])
