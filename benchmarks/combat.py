"""Benchmark the ComBat family (bids_harmony.methods.combat) on synthetic cohorts.

    python benchmarks/combat.py            # ~2 min on 2 cores
    python benchmarks/combat.py --quick    # seconds: small versions of (a)-(c)

(a) Agreement with neuroCombat 0.2.12: classic parametric ComBat, no reference site,
    3 sites of 40-60 samples, 500 features, an age covariate and a categorical sex;
    the maximum over every value of |ours - neuroCombat| / |neuroCombat| (target 1e-6).
(b) A synthetic cohort: 3 sites (90 subjects, 2 sessions each, a third of the subjects
    scanned at another site the second time), age confounded with site (site means 35,
    50, 65 years), an age effect with a linear and a quadratic part, subject
    intercepts, region-varying additive and multiplicative site effects on 400
    regions, and noise shared by the regions at one site.  For each variant
    (``combat``, ``gam``, ``covbat``, ``longitudinal``, and ``covbat+gam``: CovBat
    with the smooth age effect), no reference site: the fraction of regions with a
    significant site effect (F-test of site adjusted for a natural spline of age,
    p < 0.05) before and after, beside the site-free truth's; the age slope error
    (median over regions of |slope - true slope| / |true slope|, slopes of the pooled
    linear regression on age; the true ones from the noise-free biological signal, so
    that noise adds ~10 % to every row) and its bias (mean slope against the mean true
    slope, signed); the covariance gap between the site with shared noise and the
    reference (Frobenius norm of the difference of their covariance matrices, relative
    to the data's before harmonization; the site-free truth's, sampling noise only, is
    in the JSON); and, fitted again with reference site A, whether A's
    sessions come back bit for bit.
(c) Size: 200 sessions x 200,000 voxels x 3 maps, i.e. three fits (one per map, as
    maps are harmonized separately) of 200 x 200,000 float32 with age and sex: fit +
    apply wall time (drawing the data not included) and the peak RSS of a fresh
    process (resource.getrusage, the data included); each variant on one map;
    neuroCombat on one map of the same data in a process of its own, as the baseline.

It prints a table and writes ``benchmarks/results/combat.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.methods.combat import (
    VARIANTS,
    SmallSiteWarning,
    apply_variant,
    combat,
    fit_variant,
)
from bids_harmony.methods.combat.splines import natural_spline_basis, quantile_knots

RESULTS = Path(__file__).resolve().parent / "results" / "combat.json"
SITES = ("A", "B", "C")


# ---- (a) agreement with neuroCombat ----------------------------------------------------


def agreement(n_features: int, seed: int = 0) -> dict[str, Any]:
    """Max relative difference to neuroCombat, parametric EB, no reference site."""
    import neuroCombat
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = (40, 50, 60)
    sites = np.repeat(SITES, sizes)
    index = np.repeat(np.arange(3), sizes)
    age = np.round(20 + 15 * index + rng.uniform(0, 30, sites.size))  # float32-exact
    sex = rng.choice(["F", "M"], sites.size)
    gamma = rng.normal(0, 0.5, (3, n_features))
    delta = rng.uniform(0.5, 2.0, (3, n_features))
    data = (2.0 + 0.01 * age[:, None] + gamma[index]
            + delta[index] * rng.standard_normal((sites.size, n_features)))  # fmt: skip
    covars = pd.DataFrame({"site": sites, "age": age, "sex": sex})
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = neuroCombat.neuroCombat(
            data.T.copy(), covars, "site", categorical_cols=["sex"], continuous_cols=["age"]
        )["data"].T
    their_s = time.perf_counter() - start
    start = time.perf_counter()
    ours, _ = combat(data, sites, {"age": age, "sex": sex})
    our_s = time.perf_counter() - start
    rel = np.abs(ours - theirs) / np.abs(theirs)
    return {
        "n_samples": int(sites.size),
        "n_features": n_features,
        "max_relative_difference": float(rel.max()),
        "max_absolute_difference": float(np.abs(ours - theirs).max()),
        "target": 1e-6,
        "ours_s": round(our_s, 4),
        "neurocombat_s": round(their_s, 4),
    }


# ---- (b) the synthetic cohort ------------------------------------------------------------


def make_cohort(n_subjects: int, n_regions: int, seed: int = 1) -> dict[str, Any]:
    """Sessions, sites, subjects, age, observed data and the site-free truth."""
    rng = np.random.default_rng(seed)
    home = np.repeat(np.arange(3), n_subjects // 3)
    n = home.size
    age0 = rng.normal(35 + 15 * home, 8.0).clip(18, 90)
    second = home.copy()
    travel = rng.random(n) < 1 / 3
    second[travel] = (home[travel] + rng.integers(1, 3, travel.sum())) % 3
    site_index = np.concatenate([home, second])
    subj = np.concatenate([np.arange(n), np.arange(n)])
    age = np.concatenate([age0, age0 + rng.uniform(0.5, 2.0, n)])
    slope = rng.normal(-0.02, 0.005, n_regions)
    curve = rng.uniform(0.2, 0.6, n_regions)
    centred = (age - 50.0) / 20.0
    biology = 3.0 + age[:, None] * slope + curve * centred[:, None] ** 2
    eta = 0.3 * rng.standard_normal((n, n_regions))
    gamma = np.vstack([np.zeros(n_regions), rng.normal(0.0, 0.4, (2, n_regions))])
    delta = np.vstack([np.ones(n_regions), rng.uniform(0.5, 1.8, (2, n_regions))])
    eps = 0.5 * rng.standard_normal((subj.size, n_regions))
    shared = rng.standard_normal((subj.size, 2)) @ rng.normal(0, 0.5, (2, n_regions))
    shared[site_index != 1] = 0.0  # site B's noise covaries: a site effect, not biology
    truth = biology + eta[subj] + eps
    data = biology + eta[subj] + gamma[site_index] + delta[site_index] * (eps + shared)
    return {
        "data": data,
        "truth": truth,
        "biology": biology,
        "sites": np.array(SITES)[site_index],
        "subjects": np.array([f"s{j:03d}" for j in subj]),
        "age": age,
    }


def site_pvalues(data: np.ndarray, sites: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Per feature, the F-test p-value of site beyond a natural spline of age (df 5)."""
    from scipy import stats

    n = data.shape[0]
    reduced = np.hstack([np.ones((n, 1)), natural_spline_basis(age, quantile_knots(age, 5))])
    dummies = (sites[:, None] == np.array(SITES[1:])).astype(float)
    q0, _ = np.linalg.qr(reduced)
    q1, _ = np.linalg.qr(np.hstack([reduced, dummies]))
    r0 = data - q0 @ (q0.T @ data)
    r1 = data - q1 @ (q1.T @ data)
    d1, d2 = dummies.shape[1], n - q1.shape[1]
    rss0, rss1 = (r0**2).sum(axis=0), (r1**2).sum(axis=0)
    return stats.f.sf(((rss0 - rss1) / d1) / (rss1 / d2), d1, d2)


def age_slopes(data: np.ndarray, age: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(age), age])
    return np.linalg.lstsq(design, data, rcond=None)[0][1]


def covariance_gap(data: np.ndarray, sites: np.ndarray) -> float:
    return float(np.linalg.norm(np.cov(data[sites == "B"].T) - np.cov(data[sites == "A"].T)))


#: (label, variant, smooth covariates) of the rows of (b).
CONFIGURATIONS = [(v, v, ("age",) if v == "gam" else ()) for v in VARIANTS] + [
    ("covbat+gam", "covbat", ("age",)),
]


def fit_apply(
    variant: str, cohort: dict[str, Any], ref_site: str | None, smooth: tuple[str, ...]
) -> np.ndarray:
    subjects = cohort["subjects"] if variant == "longitudinal" else None
    cov = {"age": cohort["age"]}
    model = fit_variant(variant, cohort["data"], cohort["sites"], cov, subjects=subjects,
                        ref_site=ref_site, smooth=smooth)  # fmt: skip
    return apply_variant(model, cohort["data"], cohort["sites"], cov, subjects=subjects)


def cohort_study(n_subjects: int, n_regions: int) -> dict[str, Any]:
    cohort = make_cohort(n_subjects, n_regions)
    sites, age = cohort["sites"], cohort["age"]
    p_before = site_pvalues(cohort["data"], sites, age)
    p_truth = site_pvalues(cohort["truth"], sites, age)
    true_slope = age_slopes(cohort["biology"], age)
    gap_before = covariance_gap(cohort["data"], sites)
    rows = [{"variant": "none (data)", **_scores(cohort["data"], cohort, p_before, true_slope,
                                                 gap_before)}]  # fmt: skip
    for label, variant, smooth in CONFIGURATIONS:
        start = time.perf_counter()
        out = fit_apply(variant, cohort, None, smooth)
        seconds = time.perf_counter() - start
        row = {"variant": label, **_scores(out, cohort, site_pvalues(out, sites, age),
                                           true_slope, gap_before)}  # fmt: skip
        ref_out = fit_apply(variant, cohort, "A", smooth)
        a = sites == "A"
        row["reference_site_bit_for_bit"] = bool(np.array_equal(ref_out[a], cohort["data"][a]))
        row["fit_apply_s"] = round(seconds, 3)
        rows.append(row)
    return {
        "n_sessions": int(sites.size),
        "n_subjects": int(np.unique(cohort["subjects"]).size),
        "n_regions": n_regions,
        "sessions_per_site": {s: int((sites == s).sum()) for s in SITES},
        "mean_age_per_site": {s: round(float(age[sites == s].mean()), 1) for s in SITES},
        "fraction_significant_truth": float(np.mean(p_truth < 0.05)),
        "fraction_significant_before": float(np.mean(p_before < 0.05)),
        "covariance_gap_truth": covariance_gap(cohort["truth"], sites),
        "variants": rows,
    }


def _scores(out, cohort, p, true_slope, gap_before) -> dict[str, Any]:
    slope = age_slopes(out, cohort["age"])
    rel = np.abs(slope - true_slope) / np.abs(true_slope)
    return {
        "fraction_significant": float(np.mean(p < 0.05)),
        "age_slope_error_pct": float(100 * np.median(rel)),
        "age_slope_bias_pct": float(
            100 * (slope.mean() - true_slope.mean()) / abs(true_slope.mean())
        ),  # fmt: skip
        "covariance_gap": covariance_gap(out, cohort["sites"]),
        "covariance_gap_vs_data": covariance_gap(out, cohort["sites"]) / gap_before,
    }


# ---- (c) size: 200 sessions x 200,000 voxels x 3 maps ---------------------------------------


def _map_data(n_sessions: int, n_voxels: int, seed: int):
    rng = np.random.default_rng(seed)
    index = np.arange(n_sessions) % 3
    sites = np.array(SITES)[index]
    age = rng.uniform(20, 80, n_sessions) + 10 * index
    sex = np.where(rng.random(n_sessions) < 0.5, "F", "M")
    subjects = np.array([f"s{j // 2:03d}" for j in range(n_sessions)])  # 2 sessions each
    data = rng.standard_normal((n_sessions, n_voxels), dtype=np.float32)
    data *= rng.uniform(0.5, 1.5, (3, n_voxels)).astype(np.float32)[index]
    data += (0.5 + 0.002 * age[:, None]).astype(np.float32)
    data += rng.normal(0, 0.05, (3, n_voxels)).astype(np.float32)[index]
    return data, sites, {"age": age, "sex": sex}, subjects


def _child(job: dict[str, Any], queue: Any) -> None:
    """Run one timing in a fresh process; report wall time and peak RSS."""
    warnings.simplefilter("ignore", SmallSiteWarning)
    fit_s = apply_s = 0.0
    for m in range(job["maps"]):
        data, sites, cov, subjects = _map_data(job["sessions"], job["voxels"], seed=100 + m)
        start = time.perf_counter()
        if job["variant"] == "neuroCombat":
            import neuroCombat
            import pandas as pd

            frame = pd.DataFrame({"site": sites, **cov})
            with contextlib.redirect_stdout(io.StringIO()):
                neuroCombat.neuroCombat(data.T, frame, "site", categorical_cols=["sex"],
                                        continuous_cols=["age"])  # fmt: skip
            fit_s += time.perf_counter() - start
            continue
        subj = subjects if job["variant"] == "longitudinal" else None
        model = fit_variant(job["variant"], data, sites, cov, subjects=subj,
                            smooth=("age",) if job["variant"] == "gam" else ())  # fmt: skip
        fit_s += time.perf_counter() - start
        start = time.perf_counter()
        apply_variant(model, data, sites, cov, subjects=subj)
        apply_s += time.perf_counter() - start
        del model
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"fit_s": fit_s, "apply_s": apply_s, "peak_rss_gb": peak_kb / 2**20})


def timed(job: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_child, args=(job, queue))
    process.start()
    result = queue.get()
    process.join()
    total = result["fit_s"] + result["apply_s"]
    return {**job, **{k: round(v, 3) for k, v in result.items()}, "total_s": round(total, 3)}


def size_study(sessions: int, voxels: int, maps: int) -> list[dict[str, Any]]:
    jobs = [{"variant": "combat", "maps": maps}]
    jobs += [{"variant": v, "maps": 1} for v in VARIANTS[1:]]
    jobs.append({"variant": "neuroCombat", "maps": 1})
    return [timed({"sessions": sessions, "voxels": voxels, **job}) for job in jobs]


# ---- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small versions (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", SmallSiteWarning)
    quick = args.quick
    import neuroCombat  # noqa: F401  (fail early when the baseline is missing)

    result: dict[str, Any] = {"quick": quick}
    result["agreement"] = agreement(50 if quick else 500)
    a = result["agreement"]
    print(f"(a) neuroCombat 0.2.12, parametric, no reference, {a['n_samples']} x "
          f"{a['n_features']}: max relative difference {a['max_relative_difference']:.2e} "
          f"(target {a['target']:.0e})")  # fmt: skip

    result["cohort"] = cohort_study(30 if quick else 90, 60 if quick else 400)
    c = result["cohort"]
    print(f"\n(b) cohort: {c['n_sessions']} sessions of {c['n_subjects']} subjects, "
          f"{c['n_regions']} regions; significant site effect in the site-free truth: "
          f"{100 * c['fraction_significant_truth']:.1f} %; covariance gap of the truth / "
          f"the data {c['covariance_gap_truth'] / c['variants'][0]['covariance_gap']:.2f}"
          )  # fmt: skip
    print(f"{'variant':<14} {'site p<.05 %':>12} {'slope err %':>12} {'slope bias %':>12} "
          f"{'cov gap/data':>14} {'ref bit-exact':>14} {'s':>6}")  # fmt: skip
    for row in c["variants"]:
        print(f"{row['variant']:<14} {100 * row['fraction_significant']:>12.1f} "
              f"{row['age_slope_error_pct']:>12.1f} {row['age_slope_bias_pct']:>12.1f} "
              f"{row['covariance_gap_vs_data']:>14.2f} "
              f"{str(row.get('reference_site_bit_for_bit', '')):>14} "
              f"{row.get('fit_apply_s', float('nan')):>6.2f}")  # fmt: skip

    sessions, voxels, maps = (60, 20_000, 3) if quick else (200, 200_000, 3)
    result["size"] = size_study(sessions, voxels, maps)
    print(f"\n(c) {sessions} sessions x {voxels} voxels (float32), age + sex; "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'variant':<14} {'maps':>4} {'fit s':>8} {'apply s':>8} {'total s':>8} {'peak GB':>8}")
    for row in result["size"]:
        print(
            f"{row['variant']:<14} {row['maps']:>4} {row['fit_s']:>8.2f} "
            f"{row['apply_s']:>8.2f} {row['total_s']:>8.2f} {row['peak_rss_gb']:>8.2f}"
        )

    import neuroCombat as nc
    import scipy

    result["environment"] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "neuroCombat": getattr(nc, "__version__", "0.2.12"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
