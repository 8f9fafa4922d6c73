"""Human-like brains: head, CSF, folded GM ribbon, deep GM and curved WM bundles.

The anatomy is analytic (object frame, mm; x left–right, y posterior–anterior,
z inferior–superior), so it can be imaged in any pose at any resolution with
correct partial volumes:

* head = scalp ⊃ skull (no signal) ⊃ CSF rim ⊃ brain, concentric star-shaped
  surfaces around a perturbed ellipsoid; the brain mask is the inside of the skull;
* a GM ribbon whose inner surface and sulcal CSF follow a folding pattern;
  two lateral ventricles (CSF) and two thalami (deep GM);
* WM bundles as tubes around splines: corpus callosum (a sheet of strands arching
  left–right), corticospinal tracts (vertical), SLF, cingulum, ILF (anterior–
  posterior), forceps minor/major (U-shaped); elsewhere WM runs radially
  (corona radiata).  A voxel keeps its two strongest fibre populations, so
  bundles overlapping (CC × CST × SLF) give crossings.

Diffusivities (mm²/s): WM λ∥ ≈ 1.7e-3, λ⊥ 0.3–0.5e-3; GM ≈ 0.8e-3, weakly radial;
CSF 3.0e-3.  Subjects differ in size, shape, folding, ventricles, bundle paths and
diffusivities.

Kurtosis (issue 15; :func:`draw_brain` draws it, :func:`gaussian_spec` removes it,
as a study does unless ``human_signal="kurtosis"``): each fibre population is intra-axonal water,
restricted sticks (fraction ``v`` ≈ 0.5–0.6 of the fibre's water, axial
diffusivity ``D_a = AXON_RATIO·λ∥`` ≈ 2.3e-3, radial 0), beside extra-axonal
hindered water (axial ``λ∥ (1 − v D_a/λ∥)/(1 − v)``, radial ``λ⊥/(1 − v)``); GM is
slow and fast water in equal parts (``a λ`` and ``(2 − a) λ``, ``a`` ≈ 0.52).  The
mean tensor of every compartment is the one above, so the low-b signal, the
truth FA/MD and the site effects are unchanged.  Pure WM has MK ≈ 0.9–1.2,
AK ≈ 0.4–0.6, RK = 3v/(1 − v) ≈ 3–3.7; GM MK = 3(1 − a)² ≈ 0.7; CSF 0
(:mod:`bids_harmony.simulate.kurtosis`).  The parameters are chosen for realistic
voxel-level DKI, not as fitted microstructure (the extra-axonal water is nearly
isotropic where λ⊥ is large).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.interpolate import CubicSpline
from scipy.spatial import cKDTree

from bids_harmony.simulate.tissue import (
    N_COMPARTMENTS,
    RELAXATION,
    Grid,
    Pose,
    TissueModel,
    assemble,
    ellipsoid_distance,
    ramp,
)

Vec3 = tuple[float, float, float]

#: Bundle templates in units of the brain semi-axes: radius (mm), λ∥, λ⊥ (mm²/s),
#: mirrored into left and right copies, and control points (x0, y0, z0, x1, ...).
#: The corpus callosum is a sheet of strands arching left-right above the ventricles.
BUNDLE_PARAMS: dict[str, tuple[float, float, float, bool]] = {
    "cc": (7.0, 1.80e-3, 0.30e-3, False),
    "cst": (7.0, 1.75e-3, 0.35e-3, True),
    "slf": (8.0, 1.60e-3, 0.45e-3, True),
    "cing": (5.0, 1.65e-3, 0.40e-3, True),
    "ilf": (7.0, 1.65e-3, 0.42e-3, True),
    "fminor": (6.0, 1.75e-3, 0.35e-3, False),
    "fmajor": (7.0, 1.75e-3, 0.32e-3, False),
}
BUNDLE_PATHS: dict[str, tuple[int, ...]] = {  # hundredths of the semi-axes
    "cst": (22, -5, -95, 26, -5, -50, 30, -8, -10, 36, -10, 30, 45, -12, 75),
    "slf": (50, -60, 5, 55, -30, 25, 55, 0, 30, 52, 30, 25, 45, 55, 12),
    "cing": (9, -60, 15, 9, -30, 38, 9, 0, 42, 9, 30, 38, 9, 60, 12),
    "ilf": (50, -75, -10, 60, -40, -30, 62, 0, -40, 60, 35, -45, 50, 60, -45),
    "fminor": (-50, 80, 10, -30, 60, 12, 0, 45, 15, 30, 60, 12, 50, 80, 10),
    "fmajor": (-45, -85, 5, -30, -65, 10, 0, -45, 15, 30, -65, 10, 45, -85, 5),
}


def bundle_strands(name: str) -> list[NDArray]:
    """Control points (M, 3) of each strand of a bundle template (semi-axis units)."""
    if name == "cc":
        x = np.array([-0.65, -0.35, 0.0, 0.35, 0.65])
        return [
            np.stack([x, np.full(5, y), 0.25 - 0.1 * abs(y) / 0.45 + 0.55 * x**2], axis=1)
            for y in np.linspace(-0.45, 0.45, 10)
        ]
    return [np.reshape(BUNDLE_PATHS[name], (-1, 3)) / 100.0]


#: Weight of the radial background WM orientation against bundle memberships.
BACKGROUND_WEIGHT = 0.25

#: Intra-axonal water fraction of each bundle's fibres (mean over subjects; dense,
#: coherent bundles highest) and of the radial background WM.
INTRA_FRACTION: dict[str, float] = {
    "cc": 0.57,
    "cst": 0.55,
    "slf": 0.53,
    "cing": 0.54,
    "ilf": 0.53,
    "fminor": 0.55,
    "fmajor": 0.56,
}
WM_INTRA_FRACTION = 0.53
#: Intra-axonal axial diffusivity over the fibre's mean axial diffusivity
#: (``D_a > D_e∥``; D_a ≈ 2.1–2.5e-3 mm²/s).
AXON_RATIO = 1.4
#: GM: fraction of slow water and its diffusivity over the GM mean diffusivity.
GM_SLOW_FRACTION = 0.5
GM_SLOW_RATIO = 0.52


@dataclass(frozen=True)
class Bundle:
    """A WM bundle: tubes of ``radius_mm`` around spline strands (object frame, mm)."""

    name: str
    strands: tuple[tuple[Vec3, ...], ...]
    radius_mm: float
    d_par: float
    d_perp: float
    intra_fraction: float = 0.0


@dataclass(frozen=True)
class BrainSpec:
    """Anatomy and tissue properties of one subject (object frame, mm, ms, mm²/s).

    ``Bundle.intra_fraction``, ``wm_intra_fraction``, ``axon_ratio``,
    ``gm_slow_fraction`` and ``gm_slow_ratio`` describe the two water pools of WM
    and GM (see the module docstring); fractions of 0 (the defaults, and specs
    written before issue 15) make one Gaussian tensor per compartment.
    """

    name: str
    age: int
    sex: str
    centre_mm: Vec3
    semi_axes_mm: Vec3
    shape_coeffs: tuple[float, float, float, float]
    csf_rim_mm: float
    skull_mm: float
    scalp_mm: float
    gm_thickness_mm: float
    fold_depth_mm: float
    sulcus_depth_mm: float
    fold_wavelength_mm: float
    fold_phase: Vec3
    ventricles: tuple[tuple[Vec3, Vec3], ...]
    deep_gm: tuple[tuple[Vec3, Vec3], ...]
    bundles: tuple[Bundle, ...]
    wm_d_par: float
    wm_d_perp: float
    gm_d_par: float
    gm_d_perp: float
    csf_d: float
    relaxation: tuple[tuple[str, float, float, float], ...]
    wm_intra_fraction: float = 0.0
    axon_ratio: float = 1.0
    gm_slow_fraction: float = 0.0
    gm_slow_ratio: float = 1.0

    def relax(self, tissue: str) -> tuple[float, float, float]:
        """``(pd, T1, T2)`` of ``tissue`` (wm, gm, csf, scalp)."""
        for name, pd, t1, t2 in self.relaxation:
            if name == tissue:
                return pd, t1, t2
        raise KeyError(tissue)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"type": "brain", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainSpec:
        """Inverse of :meth:`to_dict`."""

        def tup(x: Any) -> Any:
            return tuple(tup(v) for v in x) if isinstance(x, list | tuple) else x

        conv = {k: tup(v) for k, v in data.items() if k not in ("type", "bundles")}
        conv["bundles"] = tuple(
            Bundle(**{k: tup(v) for k, v in b.items()}) for b in data["bundles"]
        )
        return cls(**conv)


def _r(x: float, nd: int = 6) -> float:
    return round(float(x), nd)


def draw_brain(number: int, rng: np.random.Generator) -> BrainSpec:
    """Draw the anatomy and tissue properties of subject ``number``."""
    semi = np.array([68.0, 84.0, 60.0]) * rng.uniform(0.93, 1.05) * rng.uniform(0.97, 1.03, 3)
    centre = np.array([0.0, _r(rng.normal(0, 2)), _r(-4.0 + rng.normal(0, 1))])
    jitter = 0.025

    def pts(points: NDArray, sign: float) -> tuple[Vec3, ...]:
        arr = points * np.array([sign, 1.0, 1.0])
        arr = (arr + rng.normal(0, jitter, arr.shape)) * semi + centre
        return tuple(tuple(_r(c, 4) for c in p) for p in arr)

    def at(rel: tuple[float, float, float]) -> Vec3:
        return tuple(_r(v) for v in np.asarray(rel) * semi + centre)

    ad, rd = rng.normal(1.0, 0.03), rng.normal(1.0, 0.05)
    bundles = []
    for name, (radius, dpar, dperp, mirrored) in BUNDLE_PARAMS.items():
        for side, sign in (("l", 1.0), ("r", -1.0)) if mirrored else (("", 1.0),):
            bundles.append(
                Bundle(
                    name=name + side,
                    strands=tuple(pts(s, sign) for s in bundle_strands(name)),
                    radius_mm=_r(radius * rng.uniform(0.85, 1.15), 3),
                    d_par=_r(dpar * ad * rng.normal(1, 0.02), 9),
                    d_perp=_r(dperp * rd * rng.normal(1, 0.04), 9),
                )
            )
    vent_scale = rng.uniform(0.8, 1.3)
    ventricles = tuple(
        (
            at((s * 0.12, 0.0, 0.06)),
            tuple(_r(v) for v in np.array([0.09, 0.36, 0.12]) * semi * vent_scale),
        )
        for s in (1.0, -1.0)
    )
    deep_gm = tuple(
        (
            at((s * 0.13, -0.1, -0.12)),
            tuple(_r(v) for v in np.array([0.09, 0.14, 0.11]) * semi),
        )
        for s in (1.0, -1.0)
    )
    relaxation = tuple(
        (
            t,
            _r(v["pd"] * rng.uniform(0.98, 1.02)),
            _r(v["t1"] * rng.uniform(0.97, 1.03), 3),
            _r(v["t2"] * rng.uniform(0.97, 1.03), 3),
        )
        for t, v in RELAXATION.items()
    )
    spec = BrainSpec(
        name=f"{number:02d}",
        age=int(rng.integers(21, 46)),
        sex=str(rng.choice(["F", "M"])),
        centre_mm=tuple(float(v) for v in centre),
        semi_axes_mm=tuple(_r(v, 4) for v in semi),
        shape_coeffs=tuple(_r(v) for v in rng.uniform(-0.04, 0.04, 4)),
        csf_rim_mm=_r(rng.uniform(2.0, 3.5), 3),
        skull_mm=_r(rng.uniform(5.0, 7.0), 3),
        scalp_mm=_r(rng.uniform(4.0, 6.0), 3),
        gm_thickness_mm=_r(rng.uniform(2.3, 2.8), 3),
        fold_depth_mm=_r(rng.uniform(5.0, 7.0), 3),
        sulcus_depth_mm=_r(rng.uniform(3.0, 4.5), 3),
        fold_wavelength_mm=_r(rng.uniform(22.0, 28.0), 3),
        fold_phase=tuple(_r(v) for v in rng.uniform(0, 2 * np.pi, 3)),
        ventricles=ventricles,
        deep_gm=deep_gm,
        bundles=tuple(bundles),
        wm_d_par=_r(1.5e-3 * ad, 9),
        wm_d_perp=_r(0.5e-3 * rd, 9),
        gm_d_par=_r(rng.uniform(0.85e-3, 0.95e-3), 9),
        gm_d_perp=_r(rng.uniform(0.72e-3, 0.78e-3), 9),
        csf_d=3.0e-3,
        relaxation=relaxation,
    )
    return _draw_pools(spec, rng)


def _draw_pools(spec: BrainSpec, rng: np.random.Generator) -> BrainSpec:
    """``spec`` with its WM and GM water pools drawn (after every other draw, so
    the anatomy and diffusivities are those drawn before pools existed)."""
    bundles = tuple(
        dataclasses.replace(
            b,
            intra_fraction=_r(
                INTRA_FRACTION[b.name if b.name in INTRA_FRACTION else b.name[:-1]]
                * rng.uniform(0.95, 1.05),
                4,
            ),
        )
        for b in spec.bundles
    )
    return dataclasses.replace(
        spec,
        bundles=bundles,
        wm_intra_fraction=_r(WM_INTRA_FRACTION * rng.uniform(0.95, 1.05), 4),
        axon_ratio=_r(AXON_RATIO * rng.uniform(0.97, 1.03), 4),
        gm_slow_fraction=GM_SLOW_FRACTION,
        gm_slow_ratio=_r(GM_SLOW_RATIO * rng.uniform(0.95, 1.05), 4),
    )


def gaussian_spec(spec: BrainSpec) -> BrainSpec:
    """``spec`` without water pools: one Gaussian tensor per compartment, no
    kurtosis beyond partial volumes and crossings (the brains before issue 15)."""
    return dataclasses.replace(
        spec,
        bundles=tuple(dataclasses.replace(b, intra_fraction=0.0) for b in spec.bundles),
        wm_intra_fraction=0.0,
        axon_ratio=1.0,
        gm_slow_fraction=0.0,
        gm_slow_ratio=1.0,
    )


def has_pools(spec: BrainSpec) -> bool:
    """Whether ``spec`` has a kurtosis-bearing (two-pool) WM or GM."""
    fractions = [b.intra_fraction for b in spec.bundles]
    return max(fractions + [spec.wm_intra_fraction, spec.gm_slow_fraction]) > 0


def _brain_distance(spec: BrainSpec, q: NDArray) -> tuple[NDArray, NDArray]:
    """Radial signed distance (mm) to the perturbed brain ellipsoid, and unit normals."""
    rel = q - np.asarray(spec.centre_mm)
    r = np.linalg.norm(rel, axis=1)
    n = rel / np.maximum(r, 1e-9)[:, None]
    c = spec.shape_coeffs
    scale = (
        1.0 + c[0] * n[:, 0] * n[:, 1] + c[1] * n[:, 1] * n[:, 2] + c[2] * (n[:, 2] ** 2 - 1 / 3)
    )
    scale = scale + c[3] * n[:, 1] ** 3 - 0.12 * np.maximum(-n[:, 2], 0) ** 2
    axes = np.asarray(spec.semi_axes_mm)
    dist = ellipsoid_distance(rel / scale[:, None], np.zeros(3), axes) * scale
    normal = rel / axes**2
    normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-12)[:, None]
    return dist, normal


def _bundle_field(bundle: Bundle, q: NDArray, h: float) -> tuple[NDArray, NDArray]:
    """Membership (fraction of the voxel in the tube) and local fibre direction."""
    samples, tangents = [], []
    for strand in bundle.strands:
        ctrl = np.asarray(strand, dtype=float)
        t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
        spline = CubicSpline(t, ctrl, axis=0, bc_type="natural")
        s = np.linspace(0.0, t[-1], max(int(t[-1] / 0.75), 8))
        samples.append(spline(s))
        tangents.append(spline(s, 1))
    samples_arr = np.concatenate(samples)
    tangents_arr = np.concatenate(tangents)
    tangents_arr /= np.linalg.norm(tangents_arr, axis=1, keepdims=True)
    tree = cKDTree(samples_arr)
    dist, idx = tree.query(q, distance_upper_bound=bundle.radius_mm + h)
    far = ~np.isfinite(dist)
    idx[far] = 0
    weight = np.where(far, 0.0, ramp(dist - bundle.radius_mm, h))
    return weight, tangents_arr[idx]


def brain_tissue(spec: BrainSpec, grid: Grid, pose: Pose) -> TissueModel:
    """Voxel-wise compartment model of a head placed with ``pose`` on ``grid``."""
    h = grid.mean_voxel
    head_extent = spec.csf_rim_mm + spec.skull_mm + spec.scalp_mm
    q_all = pose.to_object(grid.coordinates()).reshape(-1, 3)
    d_all, _ = _brain_distance(spec, q_all)
    support = (d_all < head_extent + h).reshape(grid.shape)
    q = q_all[support.ravel()]
    d, normal = _brain_distance(spec, q)
    k = 2 * np.pi / spec.fold_wavelength_mm
    fold = np.prod(np.sin(k * q + np.asarray(spec.fold_phase)), axis=1)  # in [-1, 1]
    head = ramp(d - head_extent, h)
    skull_out = ramp(d - spec.csf_rim_mm - spec.skull_mm, h)
    icv = ramp(d - spec.csf_rim_mm, h)
    brain = ramp(d + spec.sulcus_depth_mm * np.clip(fold, 0, 1) ** 2, h)
    wm_env = np.minimum(
        ramp(d + spec.gm_thickness_mm + spec.fold_depth_mm * (0.5 + 0.5 * fold), h), brain
    )
    vent = np.zeros(len(q))
    for centre, axes in spec.ventricles:
        vent = np.maximum(vent, ramp(ellipsoid_distance(q, centre, axes), h))
    thal = np.zeros(len(q))
    for centre, axes in spec.deep_gm:
        thal = np.maximum(thal, ramp(ellipsoid_distance(q, centre, axes), h))
    vent = vent * wm_env
    f_csf = np.clip(icv - brain, 0, 1) + vent
    f_wm = np.clip(wm_env - vent, 0, 1) * (1 - thal)
    f_gm = np.clip(brain - wm_env, 0, 1) + np.clip(wm_env - vent, 0, 1) * thal
    f_scalp = np.clip(head - skull_out, 0, 1)

    m, kk = len(q), N_COMPARTMENTS
    comps = {
        name: np.zeros((m, kk))
        for name in ("fractions", "d_par", "d_perp", "restriction", "proton_density", "t1", "t2")
    }
    comps["directions"] = np.zeros((m, kk, 3))
    pools = has_pools(spec)
    if pools:  # pool B (all the water) unless set below
        comps.update({n: np.zeros((m, kk)) for n in TissueModel.POOL_FIELDS})
    radial = pose.rotate(normal)

    def put(k_: int, sel: Any, tissue: str, dpar: Any, dperp: Any, restr: float) -> None:
        pd, t1, t2 = spec.relax(tissue)
        comps["d_par"][sel, k_], comps["d_perp"][sel, k_] = dpar, dperp
        comps["restriction"][sel, k_] = restr
        comps["proton_density"][sel, k_], comps["t1"][sel, k_], comps["t2"][sel, k_] = pd, t1, t2

    comps["fractions"][:, 0] = f_csf
    comps["directions"][:, 0] = radial
    put(0, slice(None), "csf", spec.csf_d, spec.csf_d, 0.0)
    comps["fractions"][:, 1] = f_gm + f_scalp
    comps["directions"][:, 1] = radial
    is_gm = f_gm >= f_scalp
    put(1, is_gm, "gm", spec.gm_d_par, spec.gm_d_perp, 0.3)
    put(1, ~is_gm, "scalp", 1.2e-3, 1.2e-3, 0.2)
    if pools:  # slow and fast GM water (scalp: one tensor)
        comps["pool_fraction"][is_gm, 1] = spec.gm_slow_fraction
        comps["pool_par"][is_gm, 1] = comps["pool_perp"][is_gm, 1] = spec.gm_slow_ratio

    # fibre populations: two strongest of (bundles..., radial background)
    nb = len(spec.bundles)
    weights = np.zeros((m, nb + 1))
    dirs = np.zeros((m, nb + 1, 3))
    dpar = np.array([b.d_par for b in spec.bundles] + [spec.wm_d_par])
    dperp = np.array([b.d_perp for b in spec.bundles] + [spec.wm_d_perp])
    intra = np.array([b.intra_fraction for b in spec.bundles] + [spec.wm_intra_fraction])
    in_wm = np.nonzero(f_wm > 0)[0]
    for i, bundle in enumerate(spec.bundles):
        w, t = _bundle_field(bundle, q[in_wm], h)
        weights[in_wm, i], dirs[in_wm, i] = w, pose.rotate(t)
    weights[:, nb] = BACKGROUND_WEIGHT
    dirs[:, nb] = radial
    order = np.argsort(-weights, axis=1, kind="stable")[:, :2]
    rows = np.arange(m)[:, None]
    w_top = weights[rows, order]
    w_top[:, 1] = np.where(w_top[:, 1] < 0.3 * w_top[:, 0], 0.0, w_top[:, 1])
    share = w_top / w_top.sum(axis=1, keepdims=True)
    for j in range(2):
        sel = order[:, j]
        comps["fractions"][:, 2 + j] = f_wm * share[:, j]
        comps["directions"][:, 2 + j] = dirs[np.arange(m), sel]
        put(2 + j, slice(None), "wm", dpar[sel], dperp[sel], 1.0)
        if pools:  # intra-axonal sticks (radial 0) beside extra-axonal water
            comps["pool_fraction"][:, 2 + j] = intra[sel]
            comps["pool_par"][:, 2 + j] = spec.axon_ratio

    labels = np.zeros(grid.shape, dtype=np.uint8)
    lab = 1 + np.argmax(np.stack([f_csf, f_gm, f_wm], axis=1), axis=1)
    labels[support] = np.where(icv >= 0.5, lab, 0)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[support] = icv >= 0.5
    return assemble(grid, support, comps, labels, mask, kind="brain")
