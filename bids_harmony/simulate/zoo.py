"""The phantom zoo: named phantom-study scenarios for the simulator.

HARP learns a site mapping from phantom scans only, so it should be tested on
phantom studies it was not designed around: other phantom designs, a single
phantom, one protocol, phantoms repositioned by hand between sessions, a phantom
warmer at one site, a stronger coil inhomogeneity.  A :class:`PhantomScenario`
says what changes; the traveling subjects never change (same anatomy, poses and
noise for a seed), only their images through a changed coil (``bias_field``).

Pose convention (as :class:`~bids_harmony.simulate.tissue.Pose`): ``p = R q + t``
from the object frame to the scanner frame, mm along the voxel axes, origin at the
grid centre, rotations extrinsic about x, y, z in degrees.  A repositioned phantom
gets, per session, ``t`` uniform in ±``reposition_mm`` per axis, a turn about the
bore (z) uniform in ±``reposition_deg`` and tilts about x and y uniform in
±``tilt_deg``; the in-plane translation is then clipped (and, if that is not
enough, the tilt reduced) so the container stays inside the field of view.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_harmony.errors import BidsHarmonyError
from bids_harmony.simulate.phantom import DESIGNS, temperature_factor
from bids_harmony.simulate.site_effects import SiteParams
from bids_harmony.simulate.tissue import Grid, Pose

#: Largest accepted magnitudes (beyond them the models stop being plausible).
LIMITS: dict[str, float] = {
    "reposition_mm": 100.0,
    "reposition_deg": 180.0,
    "tilt_deg": 45.0,
    "temperature_delta_c": 20.0,
    "bias_field": 10.0,
    "phantom_slices": 512,
}
#: Tilt reductions tried when a tilted phantom cannot fit the field of view.
_TILT_STEPS = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)


class ScenarioError(BidsHarmonyError, ValueError):
    """A scenario value is invalid; ``field`` names the :class:`PhantomScenario` field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


SiteValues = tuple[tuple[str, float], ...]


def _site_values(values: Any, field: str) -> SiteValues:
    """``((site, value), ...)`` from a mapping or pairs; duplicate sites rejected."""
    pairs = list(values.items()) if isinstance(values, dict) else list(values)
    out: dict[str, float] = {}
    for pair in pairs:
        site, value = pair
        if site in out:
            raise ScenarioError(f"{field}: site {site!r} given twice", field)
        out[str(site)] = float(value)
    return tuple(out.items())


@dataclass(frozen=True)
class PhantomScenario:
    """What a simulated study does with its phantoms (and the coils of its sites).

    Attributes
    ----------
    name : str
    designs : tuple of str
        One design (:data:`~bids_harmony.simulate.phantom.DESIGNS`) per phantom
        participant, ``phantom01``, ``phantom02``, … in order; empty: the size's
        number of ``mixed`` phantoms (2 at tiny/demo, 3 at full).
    protocols : tuple of str or None
        Phantom protocols; None: the size's.
    reposition_mm, reposition_deg, tilt_deg : float
        Per-session pose ranges (see the module notes); all 0: the consistent
        positioning of the default study (sub-voxel shifts, no rotation).
    temperature_delta_c : tuple of (site, °C)
        Phantom temperature offset from nominal in that site's phantom sessions;
        every phantom diffusivity is multiplied by ``1 + 0.024 ΔT``.
    bias_field : tuple of (site, factor)
        Multiplier of the site's receive-field inhomogeneity (``coil_periphery``
        and ``coil_tilt``), for every session at the site.
    phantom_slices : int or None
        Number of slices of the phantom grid; None: the size's.
    description : str
        One line for listings.
    """

    name: str
    designs: tuple[str, ...] = ()
    protocols: tuple[str, ...] | None = None
    reposition_mm: float = 0.0
    reposition_deg: float = 0.0
    tilt_deg: float = 0.0
    temperature_delta_c: SiteValues = ()
    bias_field: SiteValues = ()
    phantom_slices: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        # accept lists and dicts (JSON) but store hashable tuples
        fix = {
            "designs": tuple(str(d) for d in self.designs),
            "protocols": None if self.protocols is None else tuple(map(str, self.protocols)),
            "temperature_delta_c": _site_values(self.temperature_delta_c, "temperature_delta_c"),
            "bias_field": _site_values(self.bias_field, "bias_field"),
        }
        for key in ("reposition_mm", "reposition_deg", "tilt_deg"):
            fix[key] = float(getattr(self, key))
        for key, value in fix.items():
            object.__setattr__(self, key, value)
        self._check()

    def _check(self) -> None:
        for design in self.designs:
            if design not in DESIGNS:
                raise ScenarioError(
                    f"unknown phantom design {design!r}; choose from {', '.join(DESIGNS)}",
                    "designs",
                )
        if self.protocols is not None and not self.protocols:
            raise ScenarioError("protocols: give at least one protocol (or None)", "protocols")
        for key in ("reposition_mm", "reposition_deg", "tilt_deg"):
            _check_range(key, getattr(self, key), 0.0, LIMITS[key])
        for site, delta in self.temperature_delta_c:
            lim = LIMITS["temperature_delta_c"]
            _check_range("temperature_delta_c", delta, -lim, lim, f" (site {site})")
        for site, factor in self.bias_field:
            _check_range("bias_field", factor, 0.0, LIMITS["bias_field"], f" (site {site})")
        if self.phantom_slices is not None:
            n = self.phantom_slices
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 512:
                raise ScenarioError(
                    f"phantom_slices must be an integer from 1 to 512, not {n!r}", "phantom_slices"
                )

    # ------------------------------------------------------------------ queries
    @property
    def repositions(self) -> bool:
        """Whether phantom poses differ from the consistent default positioning."""
        return bool(self.reposition_mm or self.reposition_deg or self.tilt_deg)

    def phantom_designs(self, default_count: int) -> tuple[str, ...]:
        """Design of each phantom (``default_count`` × ``mixed`` when none are given)."""
        return self.designs or ("mixed",) * default_count

    def temperature_delta(self, site: str) -> float:
        """Phantom temperature offset (°C) at ``site``."""
        return dict(self.temperature_delta_c).get(site, 0.0)

    def diffusivity_factor(self, site: str) -> float:
        """Multiplier of phantom diffusivities at ``site`` (``1 + 0.024 ΔT``)."""
        return temperature_factor(self.temperature_delta(site))

    def bias(self, site: str) -> float:
        """Receive-field inhomogeneity multiplier of ``site``."""
        return dict(self.bias_field).get(site, 1.0)

    def check(self, *, sites: Iterable[str], protocols: Iterable[str]) -> None:
        """Raise :class:`ScenarioError` if a site or protocol is not among those given."""
        sites, protocols = list(sites), list(protocols)
        for field in ("temperature_delta_c", "bias_field"):
            for site, _ in getattr(self, field):
                if site not in sites:
                    raise ScenarioError(
                        f"{field}: unknown site {site!r}; the study's sites are {', '.join(sites)}",
                        field,
                    )
        for proto in self.protocols or ():
            if proto not in protocols:
                raise ScenarioError(
                    f"unknown protocol {proto!r}; choose from {', '.join(protocols)}",
                    "protocols",
                )

    def summary(self) -> str:
        """The changes from the default study, in a few words."""
        parts = [
            "+".join(self.designs) if self.designs else "mixed phantoms (as many as the size's)"
        ]
        if self.protocols:
            parts.append("protocols " + ",".join(self.protocols))
        if self.repositions:
            parts.append(
                f"reposition {self.reposition_mm:g} mm/{self.reposition_deg:g} deg, "
                f"tilt {self.tilt_deg:g} deg"
            )
        parts += [f"{s} phantoms {d:+g} C" for s, d in self.temperature_delta_c]
        parts += [f"bias field x{x:g} at {s}" for s, x in self.bias_field]
        if self.phantom_slices:
            parts.append(f"{self.phantom_slices} phantom slices")
        if len(parts) == 1:
            parts.append("consistent poses, nominal temperature, coils as drawn")
        return "; ".join(parts)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (per-site values as objects)."""
        data = dataclasses.asdict(self)
        data["designs"] = list(self.designs)
        data["protocols"] = None if self.protocols is None else list(self.protocols)
        data["temperature_delta_c"] = dict(self.temperature_delta_c)
        data["bias_field"] = dict(self.bias_field)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhantomScenario:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_range(field: str, value: float, lo: float, hi: float, where: str = "") -> None:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ScenarioError(f"{field}{where} must be within [{lo:g}, {hi:g}], not {value!r}", field)


ZOO: dict[str, PhantomScenario] = {
    s.name: s
    for s in (
        PhantomScenario("default", description="the default study: consistent poses"),
        PhantomScenario(
            "nist-fibre",
            designs=("nist", "fibre"),
            reposition_mm=6.0,
            reposition_deg=5.0,
            tilt_deg=2.0,
            bias_field=(("GE", 2.5),),
            description="isotropic NIST + fibre phantom, hand-positioned, strong GE coil bias",
        ),
        PhantomScenario(
            "single",
            designs=("mixed",),
            protocols=("multishell",),
            reposition_mm=4.0,
            reposition_deg=4.0,
            tilt_deg=2.0,
            description="one phantom, one protocol, repositioned",
        ),
        PhantomScenario(
            "nist-single",
            designs=("nist",),
            protocols=("multishell",),
            reposition_mm=4.0,
            reposition_deg=4.0,
            description="one isotropic NIST phantom, one protocol (no anisotropy to learn)",
        ),
        PhantomScenario(
            "small-vials",
            designs=("nist-small", "fibre"),
            reposition_mm=3.0,
            reposition_deg=3.0,
            description="small NIST vials (partial volume) + fibre phantom",
        ),
        PhantomScenario(
            "repositioned",
            reposition_mm=20.0,
            reposition_deg=25.0,
            tilt_deg=8.0,
            phantom_slices=16,
            description="phantoms moved up to 20 mm, 25 deg turn, 8 deg tilt; thicker slab",
        ),
        PhantomScenario(
            "temperature",
            temperature_delta_c=(("Prisma", 1.5),),
            description="target-site phantoms 1.5 C warmer (diffusivities +3.6 %)",
        ),
        PhantomScenario(
            "bias",
            bias_field=(("GE", 3.0),),
            description="source-site receive-field inhomogeneity x3",
        ),
    )
}


def get_scenario(name: str) -> PhantomScenario:
    """The zoo scenario called ``name``."""
    try:
        return ZOO[name]
    except KeyError:
        raise ScenarioError(
            f"unknown scenario {name!r}; choose from {', '.join(ZOO)}", "name"
        ) from None


def biased_site(site: SiteParams, factor: float) -> SiteParams:
    """``site`` with its receive-field inhomogeneity (periphery gain and tilt) × ``factor``."""
    if factor == 1.0:
        return site
    return dataclasses.replace(
        site,
        coil_periphery=round(site.coil_periphery * factor, 6),
        coil_tilt=tuple(round(v * factor, 6) + 0.0 for v in site.coil_tilt),
    )


def _in_plane_bounds(
    rotation: np.ndarray, grid: Grid, radius: float, t_z: float
) -> list[tuple[float, float]] | None:
    """Allowed ``(lo, hi)`` of the x and y translation keeping the container in view.

    The container is a cylinder of ``radius`` along ``a = R e_z``; cut by the slice
    plane ``z = z0`` it is an ellipse centred at ``t + a (z0 − t_z)/a_z`` whose
    half-extent along axis ``i`` is ``radius · sqrt(1 + (a_i/a_z)²)``.  Both slab
    faces must keep it one voxel inside the field of view.  None: impossible.
    """
    axis = rotation[:, 2]
    if abs(axis[2]) < 1e-6:
        return None
    half_slab = 0.5 * grid.shape[2] * grid.voxel_size[2]
    bounds = []
    for i in (0, 1):
        k = axis[i] / axis[2]
        half = 0.5 * grid.shape[i] * grid.voxel_size[i] - grid.voxel_size[i]
        extent = radius * math.sqrt(1.0 + k * k)
        offsets = [k * (z0 - t_z) for z0 in (-half_slab, half_slab)]
        lo = max(-half + extent - off for off in offsets)
        hi = min(half - extent - off for off in offsets)
        if lo > hi:
            return None
        bounds.append((lo, hi))
    return bounds


def reposition_pose(
    scenario: PhantomScenario, rng: np.random.Generator, grid: Grid, container_mm: float
) -> Pose:
    """A hand-positioned phantom pose for one session (see the module notes).

    Draws 6 numbers from ``rng`` (translation x, y, z; tilt x, y; turn z), whatever
    the clipping does, so other draws of the stream do not shift.
    """
    shift = rng.uniform(-1.0, 1.0, 3) * scenario.reposition_mm
    tilt = rng.uniform(-1.0, 1.0, 2) * scenario.tilt_deg
    turn = float(rng.uniform(-1.0, 1.0)) * scenario.reposition_deg
    t_z = round(float(shift[2]), 4) + 0.0
    for step in _TILT_STEPS:
        angles = tuple(round(float(v), 4) + 0.0 for v in (tilt[0] * step, tilt[1] * step, turn))
        bounds = _in_plane_bounds(Pose(angles).rotation, grid, container_mm, t_z)
        if bounds is not None:
            break
    else:  # container wider than the field of view: centre it
        bounds = [(0.0, 0.0), (0.0, 0.0)]
    xy = [min(max(float(shift[i]), lo), hi) for i, (lo, hi) in enumerate(bounds)]
    # round towards the centre so rounding cannot push the container out
    xy = [math.trunc(v * 1e4) / 1e4 + 0.0 for v in xy]
    return Pose(angles, (xy[0], xy[1], t_z))
