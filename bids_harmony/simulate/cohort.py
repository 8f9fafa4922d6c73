"""Cohort studies (for ComBat): many subjects, each scanned once at one site.

Numerics, and the reader of a written cohort's ``cohort.json`` (:func:`read_cohort`,
:func:`true_age_slope`); :mod:`.cohort_dataset` writes the study.

Design (:func:`draw_design`)
----------------------------
``n`` subjects per site, labelled site by site (``01`` … ``n·S``), one session
``ses-<site>1`` each with the humans' protocol (``acq-multishell``).  Ages are
confounded with site as in real multi-site studies: site ``k`` of ``S`` has ages
spread evenly (stratified uniform draws, rounded to whole years) over
``mean_k ± 12`` years with ``mean_k = 30 + 30 k / (S − 1)`` (3 sites: 30, 45, 60,
ranges overlapping).  Sex is balanced within each site (the odd one out random).
Sex has no effect on the tissue (its true coefficient is 0).

Anatomy: every subject is a :func:`~bids_harmony.simulate.brain.draw_brain` head
from the cohort's own random stream (brain size ×0.93–1.05 and ±3 % per axis,
shape, folding, ventricles, bundle paths and radii, per-subject diffusivities
axial ×N(1, 0.03) and radial ×N(1, 0.05), per bundle ×N(1, 0.02) / ×N(1, 0.04)),
placed in the scanner with the usual head pose (±3° per axis, ±4 mm).

Age effect (biology, part of the truth; :func:`age_spec`)
---------------------------------------------------------
Every WM diffusivity (bundles and the radial background) is scaled linearly with age:
``λ∥ × (1 + 0.0010 (age − 45))``, ``λ⊥ × (1 + 0.0040 (age − 45))``; GM
``λ∥, λ⊥ × (1 + 0.0020 (age − 45))``; CSF unchanged.  FA falls and MD rises with
age; MD of the site-free truth is exactly linear in age, FA nearly so.  The slopes
of the mean truth FA and MD in WM and GM (:func:`true_age_slopes`: per subject, the
slope of its own mean between ages 30 and 60, averaged over the cohort) are written
to ``cohort.json`` and read back by :func:`true_age_slope`.

Site effects on the maps (measurement, not in the truth; :func:`site_tissue`)
----------------------------------------------------------------------------
On top of the physical signal-level effects of each site (:mod:`.site_effects`), the
site imaging a subject changes the diffusivities of every tissue compartment
(hindered/GM and both fibre populations; free water is unchanged), in the ComBat
sense ``y = α + Xβ + γ_s + δ_s ε``, varying smoothly over the brain:

.. math:: \\lambda \\leftarrow \\bigl[\\lambda_{pop} + \\delta_s(u)\\,
          (\\lambda - \\lambda_{pop})\\bigr]\\,\\bigl(1 + \\gamma_s(u)\\bigr)

with ``λ_pop`` the population value at the subject's age (the same anatomy with the
nominal diffusivities, :func:`population_spec`), ``u = (q − c) / a`` the voxel's
position in the brain's own normalized object coordinates (−1 … 1 across the brain
along x left–right, y posterior–anterior, z inferior–superior: a brain region gets
the same effect in every subject), ``γ_s(u) = γ0 + g·u`` separately for ``λ∥`` and
``λ⊥`` (the additive effect: shifts a region's mean FA/MD) and
``δ_s(u) = δ0 + d·u`` (the multiplicative effect: scales each subject's deviation
from the population, hence the between-subject spread).  The coefficients are in
:data:`SITE_MAP_EFFECTS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bids_harmony.errors import NoDataError
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.brain import (
    BUNDLE_PARAMS,
    BrainSpec,
    brain_tissue,
    draw_brain,
    gaussian_spec,
)
from bids_harmony.simulate.site_effects import VENDORS
from bids_harmony.simulate.study import _COHORT, keyed_rng
from bids_harmony.simulate.tissue import Grid, Pose, TissueModel

Vec3 = tuple[float, float, float]

#: Name of the cohort's design and truth file under ``sourcedata/simulation``.
COHORT_JSON = "cohort.json"
#: Sites of a cohort study by default (all scanners of :data:`VENDORS`).
COHORT_SITES: tuple[str, ...] = ("GE", "Prisma", "Skyra")
#: Age (years) at which the tissue has its drawn diffusivities.
REFERENCE_AGE = 45.0
#: Site mean ages span this range (first site youngest), each ± ``AGE_HALF_RANGE``.
AGE_MEAN_RANGE = (30.0, 60.0)
AGE_HALF_RANGE = 12.0
#: Relative change of each diffusivity per year of age, by tissue.
AGE_SLOPES: dict[str, dict[str, float]] = {
    "wm": {"d_par": 0.0010, "d_perp": 0.0040},
    "gm": {"d_par": 0.0020, "d_perp": 0.0020},
}
#: Population (nominal) GM diffusivities: the centres of draw_brain's ranges.
GM_POPULATION = (0.90e-3, 0.75e-3)
#: Population background-WM diffusivities (draw_brain's before the subject factors).
WM_POPULATION = (1.5e-3, 0.5e-3)
#: Ages at which :func:`true_age_slopes` evaluates each subject.
SLOPE_AGES = (30.0, 60.0)
#: Regions of the truth maps by dseg label.
TISSUE_LABELS = {"WM": 3, "GM": 2}
# key domain parts of the cohort's random streams (under study._COHORT)
_ANATOMY, _DESIGN, _NOISE = range(3)


@dataclass(frozen=True)
class SiteMapEffect:
    """Region-varying site effect on the diffusivities (see the module docstring).

    Each field is ``(value at the brain centre, (change per unit u_x, u_y, u_z))``.
    """

    site: str
    par_shift: tuple[float, Vec3]
    perp_shift: tuple[float, Vec3]
    scale: tuple[float, Vec3]

    def fields(self, u: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        """``(γ∥, γ⊥, δ)`` at normalized positions ``u`` (N, 3)."""

        def lin(coef: tuple[float, Vec3], lo: float) -> NDArray:
            return np.maximum(coef[0] + u @ np.asarray(coef[1], dtype=float), lo)

        return lin(self.par_shift, -0.5), lin(self.perp_shift, -0.5), lin(self.scale, 0.1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary with the formula."""
        out: dict[str, Any] = {}
        for name in ("par_shift", "perp_shift", "scale"):
            c0, grad = getattr(self, name)
            out[name] = {"centre": c0, "gradient_xyz": list(grad)}
        return out


#: Site effects on the maps: the GE source has higher radial diffusivity (lower FA)
#: rising anteriorly and a wider spread rising superiorly; Prisma lower λ⊥ rising
#: left to right and a narrower spread; Skyra a small shift falling superiorly and a
#: spread falling anteriorly.
SITE_MAP_EFFECTS: dict[str, SiteMapEffect] = {
    "GE": SiteMapEffect(
        "GE", (-0.01, (0.0, 0.0, 0.02)), (0.05, (0.0, 0.06, 0.0)), (1.35, (0.0, 0.0, 0.25))
    ),  # fmt: skip
    "Prisma": SiteMapEffect(
        "Prisma", (0.01, (0.02, 0.0, 0.0)), (-0.03, (0.05, 0.0, 0.0)), (0.75, (0.15, 0.0, 0.0))
    ),  # fmt: skip
    "Skyra": SiteMapEffect(
        "Skyra", (0.0, (0.0, 0.02, 0.0)), (0.02, (0.0, 0.0, -0.08)), (1.05, (0.0, -0.25, 0.0))
    ),  # fmt: skip
}


@dataclass(frozen=True)
class CohortSubject:
    """One subject of the cohort: label, number (random streams), site, age, sex."""

    label: str
    number: int
    site: str
    age: int
    sex: str

    @property
    def session(self) -> str:
        """Its one session label (``<site>1``)."""
        return f"{self.site}1"


def check_cohort(n_per_site: int, sites: tuple[str, ...]) -> None:
    """Raise :class:`~bids_harmony.errors.NoDataError` for an impossible cohort."""
    if int(n_per_site) < 2:
        raise NoDataError(f"a cohort needs at least 2 subjects per site, not {n_per_site}")
    unknown = [s for s in sites if s not in VENDORS]
    if unknown:
        raise NoDataError(f"unknown site(s) {', '.join(unknown)}; choose from {', '.join(VENDORS)}")
    if len(set(sites)) != len(sites) or len(sites) < 2:
        raise NoDataError(f"a cohort needs at least 2 different sites, not {', '.join(sites)}")


def site_mean_age(k: int, n_sites: int) -> float:
    """Mean age of site number ``k`` (0-based) of ``n_sites``."""
    lo, hi = AGE_MEAN_RANGE
    return lo + (hi - lo) * k / max(n_sites - 1, 1)


def draw_design(
    n_per_site: int, sites: tuple[str, ...] = COHORT_SITES, seed: int = 0
) -> tuple[CohortSubject, ...]:
    """Subjects of the cohort, site by site (see the module docstring)."""
    check_cohort(n_per_site, sites)
    n = int(n_per_site)
    width = max(2, len(str(n * len(sites))))
    out = []
    for k, site in enumerate(sites):
        rng = keyed_rng(seed, _COHORT, _DESIGN, k)
        strata = rng.permutation(n) + rng.uniform(size=n)
        lo = site_mean_age(k, len(sites)) - AGE_HALF_RANGE
        ages = np.rint(lo + 2 * AGE_HALF_RANGE * strata / n).astype(int)
        first = str(rng.choice(["F", "M"]))
        other = "M" if first == "F" else "F"
        sexes = rng.permutation([first if i % 2 == 0 else other for i in range(n)])
        for i in range(n):
            number = k * n + i + 1
            out.append(CohortSubject(f"{number:0{width}d}", number, site, int(ages[i]), sexes[i]))
    return tuple(out)


def _age_factor(tissue: str, which: str, age: float) -> float:
    return 1.0 + AGE_SLOPES[tissue][which] * (float(age) - REFERENCE_AGE)


def _with_diffusivities(spec: BrainSpec, age: float, fn: Any) -> BrainSpec:
    """``spec`` at ``age`` with every diffusivity ``d`` of ``tissue`` replaced by ``fn``."""
    bundles = tuple(
        dataclasses.replace(
            b,
            d_par=fn(b, "wm", "d_par", b.d_par) * _age_factor("wm", "d_par", age),
            d_perp=fn(b, "wm", "d_perp", b.d_perp) * _age_factor("wm", "d_perp", age),
        )
        for b in spec.bundles
    )
    return dataclasses.replace(
        spec,
        age=int(round(age)),
        bundles=bundles,
        wm_d_par=fn(None, "wm", "d_par", spec.wm_d_par) * _age_factor("wm", "d_par", age),
        wm_d_perp=fn(None, "wm", "d_perp", spec.wm_d_perp) * _age_factor("wm", "d_perp", age),
        gm_d_par=fn(None, "gm", "d_par", spec.gm_d_par) * _age_factor("gm", "d_par", age),
        gm_d_perp=fn(None, "gm", "d_perp", spec.gm_d_perp) * _age_factor("gm", "d_perp", age),
    )


def age_spec(base: BrainSpec, age: float, sex: str | None = None) -> BrainSpec:
    """The subject ``base`` (drawn at :data:`REFERENCE_AGE`) at ``age``."""
    spec = _with_diffusivities(base, age, lambda _b, _t, _w, value: value)
    return spec if sex is None else dataclasses.replace(spec, sex=sex)


def reference_spec(spec: BrainSpec) -> BrainSpec:
    """The subject ``spec`` (at its age) at :data:`REFERENCE_AGE`: the age effect undone."""
    age = spec.age
    return _with_diffusivities(
        spec,
        REFERENCE_AGE,
        lambda _b, tissue, which, value: value / _age_factor(tissue, which, age),
    )


def _population_value(bundle: Any, tissue: str, which: str, _value: float) -> float:
    if tissue == "gm":
        return GM_POPULATION[which == "d_perp"]
    if bundle is None:
        return WM_POPULATION[which == "d_perp"]
    name = bundle.name if bundle.name in BUNDLE_PARAMS else bundle.name[:-1]
    return BUNDLE_PARAMS[name][1 + (which == "d_perp")]


def population_spec(spec: BrainSpec) -> BrainSpec:
    """The anatomy of ``spec`` with the population diffusivities at its age."""
    return _with_diffusivities(spec, spec.age, _population_value)


def cohort_brain(subject: CohortSubject, seed: int) -> BrainSpec:
    """Anatomy and tissue of a cohort subject at its age (the site-free truth)."""
    base = draw_brain(subject.number, keyed_rng(seed, _COHORT, _ANATOMY, subject.number))
    base = gaussian_spec(base)  # one tensor per compartment, as before issue 15
    return dataclasses.replace(age_spec(base, subject.age, subject.sex), name=subject.label)


def noise_rng(seed: int, subject: CohortSubject, protocol_index: int) -> np.random.Generator:
    """Random stream of the noise of a cohort subject's run."""
    return keyed_rng(seed, _COHORT, _NOISE, subject.number, protocol_index)


def normalized_positions(spec: BrainSpec, tissue: TissueModel, pose: Pose) -> NDArray:
    """``u = (q − c) / a`` of the support voxels of ``tissue`` (N, 3), object frame."""
    q = pose.to_object(tissue.grid.coordinates(tissue.support))
    return (q - np.asarray(spec.centre_mm)) / np.asarray(spec.semi_axes_mm)


def site_tissue(
    tissue: TissueModel,
    population: TissueModel,
    spec: BrainSpec,
    pose: Pose,
    effect: SiteMapEffect,
) -> TissueModel:
    """``tissue`` as site ``effect`` biases its diffusivities (compartments 1-3).

    ``population`` is :func:`population_spec` of ``spec`` on the same grid and pose.
    """
    if not np.array_equal(tissue.support, population.support):
        raise ValueError("site_tissue: tissue and population differ in support")
    g_par, g_perp, delta = effect.fields(normalized_positions(spec, tissue, pose))
    d_par = tissue.d_par.astype(np.float64)
    d_perp = tissue.d_perp.astype(np.float64)
    for arr, pop, shift in (
        (d_par, population.d_par, g_par),
        (d_perp, population.d_perp, g_perp),
    ):
        sub = arr[:, 1:]
        arr[:, 1:] = (pop[:, 1:] + delta[:, None] * (sub - pop[:, 1:])) * (1.0 + shift[:, None])
    return dataclasses.replace(
        tissue, d_par=d_par.astype(np.float32), d_perp=d_perp.astype(np.float32)
    )


def subject_tissues(
    spec: BrainSpec, grid: Grid, pose: Pose, site: str
) -> tuple[TissueModel, TissueModel]:
    """``(site-free truth, as site ``site`` biases it)`` of ``spec`` in ``pose``."""
    truth = brain_tissue(spec, grid, pose)
    pop = brain_tissue(population_spec(spec), grid, pose)
    return truth, site_tissue(truth, pop, spec, pose, SITE_MAP_EFFECTS[site])


def region_means(tissue: TissueModel) -> dict[str, dict[str, float]]:
    """Mean truth FA and MD of ``tissue`` in each region of :data:`TISSUE_LABELS`."""
    fa, md = tissue.true_fa_md()
    out = {}
    for region, label in TISSUE_LABELS.items():
        sel = tissue.labels == label
        out[region] = {"FA": float(fa[sel].mean()), "MD": float(md[sel].mean())}
    return out


def true_age_slopes(
    specs: list[BrainSpec] | tuple[BrainSpec, ...], grid: Grid
) -> dict[str, dict[str, float]]:
    """True age slopes (per year) of the mean site-free FA and MD (mm²/s) per region.

    For each subject, its mean truth FA/MD in the region (its own dseg, reference
    pose, on ``grid``) at ages :data:`SLOPE_AGES`; the slope between them, averaged
    over ``specs`` (anatomy held fixed: the effect of age alone).
    """
    lo, hi = SLOPE_AGES
    sums: dict[str, dict[str, float]] = {r: {"FA": 0.0, "MD": 0.0} for r in TISSUE_LABELS}
    for spec in specs:
        base = reference_spec(spec)
        young = region_means(brain_tissue(age_spec(base, lo), grid, Pose()))
        old = region_means(brain_tissue(age_spec(base, hi), grid, Pose()))
        for region, metrics in sums.items():
            for metric in metrics:
                metrics[metric] += (old[region][metric] - young[region][metric]) / (hi - lo)
    return {
        region: {metric: value / len(specs) for metric, value in metrics.items()}
        for region, metrics in sums.items()
    }


def read_cohort(root: str | Path) -> dict[str, Any]:
    """The ``cohort.json`` of a cohort study written by ``simulate_cohort``."""
    return bw.read_json(bw.gt_dir(Path(root)) / COHORT_JSON)


def true_age_slope(root: str | Path, metric: str = "FA", region: str = "WM") -> float:
    """True slope per year of the mean site-free ``metric`` (FA; MD in mm²/s) in ``region``.

    Read from the cohort study at ``root`` (``cohort.json``, computed by
    :func:`true_age_slopes`); compare an age slope estimated on harmonized data with it.
    """
    slopes = read_cohort(root)["age_effect"]["true_slope_per_year"]
    try:
        return float(slopes[region.upper()][metric.upper()])
    except KeyError:
        raise KeyError(
            f"no true slope of {metric!r} in {region!r}; regions {sorted(slopes)}, metrics FA, MD"
        ) from None
