"""End-to-end quality of ComBat from the CLI on the simulated cohort (held-out evaluation).

    python benchmarks/combat_cohort.py            # N = 20 per site, 4 variants, ~20 min
    python benchmarks/combat_cohort.py --quick    # N = 8 per site, combat and covbat
    python benchmarks/combat_cohort.py --subjects 40 --variants combat covbat   # ~25 min
    python benchmarks/combat_cohort.py --reuse --subjects 40 --variants combat covbat
        # evaluate the outputs of that run again (its scratch folder), no CLI step

Steps, each timed: ``bids-harmony-simulate --cohort N --size tiny`` (3 sites, GE ->
site label SIGNAPremier, Prisma, Skyra; ages confounded with site); ``participant
--preproc none`` on every session; then per variant (``--combat-variant``) in a copy of
those outputs: ``train --method combat --target-site Prisma --combat-covariates age sex``
on the *fit half* only (``--participant-label``) and ``participant`` on every session.

The halves: each site's subjects sorted by age, one of each consecutive pair drawn at
random for the fit half (stratified by age).  ComBat evaluated on the sessions it was
fitted on leaks (site means equal by construction: p-values pile up near 1, the site
classifier falls below chance), so the site checks are on the *test half*; the fit
half's numbers are in the JSON (``in_sample``) to show that leak.

(1) Site effect, test half, template space (the model's feature voxels ``model.mask``):
    fraction of voxels with a significant site effect (F-test of site beyond age and
    sex, p < 0.05; 5 % expected without one) in b1000 FA and MD, raw
    (``space-studyFA``) and harmonized (``space-studyFA_desc-combat``), and in the
    site-free truth FA and MD (``desc-truth``) warped to the template by each session's
    own registration of the apply run (its transforms in the work folder; checked by
    warping the raw maps the same way: equal to the written ones).  The same test on the
    region means (``*_desc-combat_regions.tsv``: ``before``, and ``after`` harmonized by
    the region-level ComBat model), per map and pooled over the 6 maps, and on the
    truth's region means: each voxel is dominated by the anatomy of its subject, the
    region means average it out (the ROI features most ComBat studies test).  The cross-
    validated site classifier accuracy (age and sex regressed out in each fold) on the
    region means of every map (``*_desc-combat_regions.tsv`` before/after), and on the
    b1000 FA+MD voxels, beside chance.
(2) Age slope, native space: per session the mean in WM (the truth ``dseg`` label 3)
    of the ``desc-truth`` FA/MD map (site-free), the raw map and the ``desc-combat``
    map.  Slopes of OLS on age and sex: pooled (no site term) for the truth and the
    harmonized data, with site dummies for the raw data (the classic estimate), and
    pooled raw (confounded).  Errors relative to the truth slope of the same subjects,
    and beside it the population truth (``true_age_slope``) and the standard errors:
    the subject-to-subject anatomy makes the slope of a few dozen subjects noisy, so
    "within 5 % of the truth" is reachable against the same subjects' truth (the
    harmonized-minus-truth difference has a small SE) but not against the population
    value.  All subjects (``all``, the headline) and the test half (``test``).
(3) The reference site unchanged: every ``desc-combat`` map of every Prisma session
    (template space and native) equals its raw counterpart bit for bit.
(4) Each variant: combat, gam (smooth age), covbat, longitudinal (one session per
    subject here: what it does is recorded, success or the refusal).
(5) Wall time of each step.

It prints a table and writes ``benchmarks/results/combat_cohort.json``: one entry per
run under ``runs`` (``n<subjects per site>_seed<seed>``), a new run replacing only its
own entry, and the tables of every run are printed.  ``--reuse`` evaluates the outputs
of an earlier run again (its scratch folder, default
``/tmp/bids_harmony_combat_cohort_n<N>``) with the wall times it recorded
(``times.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "combat_cohort.json"
TARGET = "Prisma"
VARIANTS = ("combat", "gam", "covbat", "longitudinal")
MODEL = f"combat_tgt-{TARGET}_acq-multishell.safetensors"
WM_DSEG = 3  # the simulator's dseg label of WM
METRICS = ("fa", "md")


# ---- running the CLI ----------------------------------------------------------------------


def run(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; the wall time, exit code and last lines."""
    start = time.perf_counter()
    with log.open("w") as handle:
        rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    seconds = time.perf_counter() - start
    tail = log.read_text().strip().splitlines()[-6:] if rc else []
    print(f"  {' '.join(cmd[:4])} ... -> rc {rc}, {seconds:.0f} s", flush=True)
    return {"seconds": round(seconds, 1), "rc": rc, "log_tail": tail}


def split_halves(subjects: list[dict[str, Any]], seed: int) -> dict[str, str]:
    """``participant_id -> "fit" | "test"``: per site, one of each age-sorted pair each."""
    rng = np.random.default_rng(seed)
    half: dict[str, str] = {}
    for site in sorted({s["site"] for s in subjects}):
        ordered = sorted((s for s in subjects if s["site"] == site),
                         key=lambda s: (s["age"], s["participant_id"]))  # fmt: skip
        for k in range(0, len(ordered), 2):
            pair = ordered[k : k + 2]
            first = int(rng.integers(2)) if len(pair) == 2 else 0
            for j, s in enumerate(pair):
                half[s["participant_id"]] = "fit" if j == first else "test"
    return half


# ---- reading the outputs ------------------------------------------------------------------


def _image(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _dwi(out: Path, s: dict[str, Any]) -> Path:
    return out / s["participant_id"] / s["session_id"] / "dwi"


def _map(out: Path, s: dict[str, Any], metric: str, space: bool, combat: bool) -> Path:
    parts = ["space-studyFA"] if space else []
    parts += ["desc-combat"] if combat else []
    stem = f"{s['participant_id']}_{s['session_id']}_acq-multishellb1000_"
    return _dwi(out, s) / (stem + "".join(p + "_" for p in parts)
                           + f"model-tensor_param-{metric}_dwimap.nii.gz")  # fmt: skip


def _truth(bids: Path, s: dict[str, Any], name: str) -> Path:
    sub, ses = s["participant_id"], s["session_id"]
    return bids / "sourcedata" / "simulation" / sub / ses / f"{sub}_{ses}_{name}.nii.gz"


def template_features(out: Path, sessions, mask, metric: str, combat: bool) -> np.ndarray:
    return np.stack([_image(_map(out, s, metric, True, combat))[mask] for s in sessions])


def region_features(out: Path, sessions, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Region means of every map (``before`` or ``after``), one row per session, and the
    map of each column (``b1000_fa``...)."""
    import pandas as pd

    rows, maps = [], None
    for s in sessions:
        name = f"{s['participant_id']}_{s['session_id']}_acq-multishell_space-studyFA_desc-combat_regions.tsv"  # noqa: E501
        table = pd.read_csv(_dwi(out, s) / name, sep="\t").sort_values(["map", "region"])
        columns = table["map"].to_numpy(dtype=str)
        if maps is not None and not np.array_equal(columns, maps):
            raise ValueError(f"{name}: other maps/regions than the first session's")
        maps = columns
        rows.append(table[column].to_numpy(dtype=np.float64))
    return np.stack(rows), maps


def _combat_work(work: Path, s: dict[str, Any]) -> Path:
    """The apply run's ComBat node folder of a session (transforms, model template)."""
    run = f"run_{s['participant_id'].replace('-', '_')}_{s['session_id'].replace('-', '_')}_"
    found = sorted(work.glob(f"*/*/{run}*/combat"))
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} ComBat work folders of {run}* in {work}")
    return found[0]


def truth_in_template(out: Path, work: Path, bids: Path, sessions, model,
                      cache: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The site-free truth FA and MD of each session warped to the template by the apply
    run's own registration (its transforms in the work folder): ``{metric: (n, X, Y, Z)}``,
    and the largest difference of the raw b1000 maps warped the same way from the written
    ``space-studyFA`` ones (0 up to float32: the same warp as the pipeline's).  ``cache``:
    the result of another variant's run, reused when its template and transforms are the
    same files (sha256 of the registration records)."""
    from bids_harmony.registration.syn import SessionTransform
    from bids_harmony.registration.warps import to_template

    records = []
    for s in sessions:
        node = _combat_work(work, s)
        fa = _map(out, s, "fa", False, False)
        record = json.loads((node / "transforms" / (fa.name.split(".")[0]
                                                   + "_to-template.json")).read_text())  # fmt: skip
        records.append((s, node, fa, record))
    key = json.dumps([[r["inputs"]["template"]["sha256"], r["outputs"]] for *_, r in records])
    if cache.get("key") == key:
        return cache["result"]
    maps: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    check = 0.0
    mask = model.mask.astype(bool)
    for s, node, fa, record in records:
        tr = SessionTransform(
            fa_file=fa, forward=tuple(node / "transforms" / n for n in record["forward"]),
            inverse=tuple(node / "transforms" / n for n in record["inverse"]),
            inverse_invert=tuple(record["inverse_invert"]),
            correlation_before=record["correlation_before"],
            correlation_after=record["correlation_after"],
        )  # fmt: skip
        template = node / "model_template.nii.gz"
        for m in METRICS:
            maps[m].append(to_template(_truth(bids, s, f"desc-truth_{m.upper()}"), tr, template))
            ours = to_template(_map(out, s, m, False, False), tr, template)[mask]
            written = _image(_map(out, s, m, True, False))[mask]
            scale = float(np.abs(written).max()) or 1.0
            check = max(check, float(np.abs(ours - written).max()) / scale)
    result = {"maps": {m: np.stack(v) for m, v in maps.items()}, "max_rel_diff_raw": check}
    cache.update(key=key, result=result)
    return result


def wm_means(out: Path, bids: Path, sessions, metric: str, kind: str) -> np.ndarray:
    """Per session, the mean in WM (truth dseg) of the truth, raw or harmonized map."""
    values = []
    for s in sessions:
        wm = _image(_truth(bids, s, "dseg")) == WM_DSEG
        if kind == "truth":
            image = _image(_truth(bids, s, f"desc-truth_{metric.upper()}"))
        else:
            image = _image(_map(out, s, metric, False, kind == "combat"))
        values.append(float(np.mean(image[wm], dtype=np.float64)))
    return np.array(values)


# ---- statistics ---------------------------------------------------------------------------


def covariates(sessions) -> dict[str, np.ndarray]:
    return {"age": np.array([float(s["age"]) for s in sessions]),
            "sex": np.array([s["sex"] for s in sessions])}  # fmt: skip


def site_scores(data_before, data_after, sessions, seed: int) -> dict[str, Any]:
    """Significant-voxel fractions before/after (F-test of site given age and sex)."""
    from bids_harmony.evaluation.cohort import site_effect_pvalues, site_effect_summary

    sites = np.array([s["site"] for s in sessions])
    cov = covariates(sessions)
    p0 = site_effect_pvalues(data_before, sites, cov)
    p1 = site_effect_pvalues(data_after, sites, cov)
    return site_effect_summary(p0, p1)


def classifier(data, sessions, seed: int) -> dict[str, Any]:
    from bids_harmony.evaluation.cohort import site_classifier_accuracy

    sites = np.array([s["site"] for s in sessions])
    folds = int(min(5, np.unique(sites, return_counts=True)[1].min()))
    out = site_classifier_accuracy(data, sites, covariates(sessions), folds=folds, seed=seed)
    return {k: out[k] for k in ("accuracy", "chance", "folds", "n_samples", "n_features")}


def ols_slope(y: np.ndarray, sessions, with_site: bool) -> tuple[float, float]:
    """Age slope (covariate_slopes: age and sex, site dummies if asked) and its OLS SE."""
    from bids_harmony.evaluation.cohort import covariate_slopes

    cov = covariates(sessions)
    sites = np.array([s["site"] for s in sessions])
    slope = float(covariate_slopes(y, cov, "age", sites if with_site else None)[0])
    columns = [np.ones(y.size), cov["age"], (cov["sex"] == cov["sex"][0]).astype(float)]
    if with_site:
        columns += [(sites == site).astype(float) for site in np.unique(sites)[1:]]
    x = np.column_stack(columns)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    sigma2 = float(resid @ resid) / (y.size - x.shape[1])
    se = float(np.sqrt(sigma2 * np.linalg.inv(x.T @ x)[1, 1]))
    return slope, se


def slope_study(means: dict[str, np.ndarray], sessions, population: float) -> dict[str, Any]:
    """Slopes of the truth, raw and harmonized WM means; errors against the truth."""
    truth, truth_se = ols_slope(means["truth"], sessions, False)
    out: dict[str, Any] = {
        "n": len(sessions),
        "population_truth": population,
        "truth_same_subjects": truth,
        "truth_same_subjects_se": truth_se,
        "truth_vs_population_pct": 100 * (truth - population) / abs(population),
        "se_vs_population_pct": 100 * truth_se / abs(population),
    }
    rows = {"raw_site_dummies": ("raw", True), "raw_pooled": ("raw", False)}
    rows.update({f"{k}_pooled": (k, False) for k in means if k not in ("truth", "raw")})
    for name, (kind, with_site) in rows.items():
        slope, se = ols_slope(means[kind], sessions, with_site)
        # the error's own noise: the slope of (estimate - truth) per subject
        _, diff_se = ols_slope(means[kind] - means["truth"], sessions, with_site)
        out[name] = {
            "slope": slope,
            "se": se,
            "error_vs_truth_pct": 100 * (slope - truth) / abs(truth),
            "error_vs_truth_se_pct": 100 * diff_se / abs(truth),
            "error_vs_population_pct": 100 * (slope - population) / abs(population),
        }
        if with_site:  # the truth's own slope with site dummies: the classic's noise floor
            t_site, t_site_se = ols_slope(means["truth"], sessions, True)
            out[name]["truth_with_site_dummies"] = t_site
            out[name]["truth_with_site_dummies_se"] = t_site_se
            out[name]["error_vs_truth_same_model_pct"] = 100 * (slope - t_site) / abs(truth)
    return out


def reference_unchanged(out: Path, sessions) -> dict[str, Any]:
    """Every desc-combat map of the reference site's sessions equals its raw one exactly
    (and the region tables' ``after`` column their ``before``)."""
    import pandas as pd

    checked = {"template": [0, 0], "native": [0, 0], "regions": [0, 0]}  # [files, equal]
    differ: list[str] = []
    for s in sessions:
        for tsv in sorted(_dwi(out, s).glob("*_desc-combat_regions.tsv")):
            table = pd.read_csv(tsv, sep="\t", dtype=str)  # the written text, not rounded
            same = bool((table["before"] == table["after"]).all())
            checked["regions"][0] += 1
            checked["regions"][1] += int(same)
            if not same:
                differ.append(tsv.name)
        for harmonized in sorted(_dwi(out, s).glob("*desc-combat_model-*_dwimap.nii.gz")):
            raw = harmonized.with_name(harmonized.name.replace("desc-combat_", ""))
            kind = "template" if "space-" in harmonized.name else "native"
            a, b = _image(harmonized), _image(raw)
            same = a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            checked[kind][0] += 1
            checked[kind][1] += int(same)
            if not same:
                differ.append(harmonized.name)
    return {
        **{f"{k}_files": v[0] for k, v in checked.items()},
        **{f"{k}_equal": v[1] for k, v in checked.items()},
        "bit_for_bit": bool(not differ and all(v[0] for v in checked.values())),
        "differ": differ[:10],
    }


# ---- one variant -----------------------------------------------------------------------------


def truth_scores(data: np.ndarray, sessions) -> dict[str, Any]:
    """Significant fraction (site p<.05 given age and sex) of the site-free truth."""
    from bids_harmony.evaluation.cohort import site_effect_pvalues

    p = site_effect_pvalues(data, np.array([s["site"] for s in sessions]), covariates(sessions))
    tested = np.isfinite(p)
    k = int((p[tested] < 0.05).sum())
    return {"alpha": 0.05, "n_tested": int(tested.sum()), "n_significant": k,
            "fraction_significant": k / tested.sum() if tested.any() else float("nan")}  # fmt: skip


def region_scores(out: Path, group, seed: int) -> dict[str, Any]:
    """The site F-test on the region means (``before``/``after`` of the region tables),
    pooled over every map and per map."""
    before, maps = region_features(out, group, "before")
    after, _ = region_features(out, group, "after")
    scores: dict[str, Any] = {"pooled": site_scores(before, after, group, seed)}
    scores["per_map"] = {m: site_scores(before[:, maps == m], after[:, maps == m], group, seed)
                         for m in sorted(set(maps))}  # fmt: skip
    return scores


def evaluate(out: Path, work: Path, bids: Path, sessions, halves, seed: int,
             truth_cache: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    from bids_harmony.methods.combat.maps import load_combat_maps, region_means

    model, card = load_combat_maps(out / "models" / MODEL)
    mask = model.mask.astype(bool)
    result: dict[str, Any] = {
        "n_feature_voxels": int(mask.sum()),
        "n_regions": int(len(model.region_ids)),
        "training_sessions": card.get("sessions_per_site", card.get("training_sessions")),
    }
    for half in ("test", "fit"):
        group = [s for s in sessions if halves[s["participant_id"]] == half]
        scores: dict[str, Any] = {}
        voxels = {}
        truth = (truth_in_template(out, work, bids, group, model, truth_cache)
                 if half == "test" else None)  # fmt: skip
        for metric in METRICS:
            before = template_features(out, group, mask, metric, False)
            after = template_features(out, group, mask, metric, True)
            voxels[metric] = (before, after)
            scores[f"site_voxels_{metric}"] = site_scores(before, after, group, seed)
            if truth is not None:
                scores[f"site_voxels_{metric}"]["truth"] = truth_scores(
                    truth["maps"][metric][:, mask], group
                )
        scores["site_regions"] = region_scores(out, group, seed)
        if truth is not None:
            means = {m: region_means(truth["maps"][m], model.regions, model.region_ids)
                     for m in METRICS}  # fmt: skip
            scores["site_regions"]["truth"] = {
                **{m: truth_scores(means[m], group) for m in METRICS},
                "pooled_fa_md": truth_scores(np.hstack([means[m] for m in METRICS]), group),
            }
            scores["truth_warp_max_rel_diff_raw"] = truth["max_rel_diff_raw"]
        scores["classifier_regions"] = {
            when: classifier(region_features(out, group, when)[0], group, seed)
            for when in ("before", "after")
        }
        scores["classifier_voxels_fa_md"] = {
            when: classifier(np.hstack([voxels[m][k] for m in METRICS]), group, seed)
            for k, when in enumerate(("before", "after"))
        }
        result["held_out" if half == "test" else "in_sample"] = scores
    result["reference_site"] = reference_unchanged(
        out, [s for s in sessions if s["site"] == TARGET]
    )
    result["wm_combat"] = {m: wm_means(out, bids, sessions, m, "combat").tolist()
                           for m in METRICS}  # fmt: skip
    return result


# ---- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 8 per site, combat + covbat")
    parser.add_argument("--subjects", type=int, help="subjects per site (default 20; quick 8)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: all; quick: "
                        "combat covbat")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="simulation and split seed")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--root", type=Path, help="scratch folder, emptied first (default "
                        "/tmp/bids_harmony_combat_cohort_n<subjects>)")  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="run no CLI step: evaluate "
                        "the outputs already in --root (of a run with the same --subjects, "
                        "--seed, --variants); the step times are those it recorded "
                        "(times.json)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    n = args.subjects or (8 if args.quick else 20)
    variants = args.variants or (["combat", "covbat"] if args.quick else list(VARIANTS))
    warnings.simplefilter("ignore")

    from bids_harmony.simulate import true_age_slope
    from bids_harmony.simulate.cohort import read_cohort

    root = args.root or Path(f"/tmp/bids_harmony_combat_cohort_n{n}")
    record_file = root / "times.json"  # the CLI steps' wall times, for --reuse
    if args.reuse:
        if not record_file.is_file():
            parser.error(f"--reuse: no {record_file} (the steps' record of a run in {root})")
        recorded = json.loads(record_file.read_text())
    else:
        recorded = {}
        if root.exists():
            shutil.rmtree(root)
        (root / "logs").mkdir(parents=True)
    bids, raw_out = root / "BIDS", root / "OUT-none"
    common = ["--preproc", "none", "--nprocs", str(args.nprocs), "--omp-nthreads", "1"]
    times: dict[str, Any] = dict(recorded)

    def step(key: str, cmd: list[str]) -> dict[str, Any]:
        """Run a CLI step (or, with --reuse, the record of its earlier run)."""
        if args.reuse:
            if key not in recorded:
                parser.error(f"--reuse: {record_file} has no step {key!r}")
            return recorded[key]
        times[key] = run(cmd, root / "logs" / f"{key}.log")
        record_file.write_text(json.dumps(times, indent=1) + "\n")
        return times[key]

    print(f"cohort: {n} subjects per site, seed {args.seed}; scratch {root}"
          + (" (reused)" if args.reuse else ""), flush=True)  # fmt: skip
    step("simulate", ["bids-harmony-simulate", str(bids), "--cohort", str(n),
                      "--size", "tiny", "--seed", str(args.seed)])  # fmt: skip
    step("participant", ["bids-harmony", str(bids), str(raw_out), "participant",
                         *common, "-w", str(root / "work-none")])  # fmt: skip
    cohort = read_cohort(bids)
    sessions = cohort["subjects"]
    per_site = np.unique([s["site"] for s in sessions], return_counts=True)[1]
    if set(per_site.tolist()) != {n}:
        raise SystemExit(f"{bids}: {per_site.tolist()} subjects per site, not {n}")
    halves = split_halves(sessions, args.seed)
    fit_labels = [s["participant_id"] for s in sessions if halves[s["participant_id"]] == "fit"]

    result: dict[str, Any] = {
        "quick": args.quick,
        "subjects_per_site": n,
        "seed": args.seed,
        "target_site": TARGET,
        "sites": sorted({s["site"] for s in sessions}),
        "fit_half": fit_labels,
        "mean_age": {h: {site: float(np.mean([s["age"] for s in sessions
                                              if s["site"] == site
                                              and halves[s["participant_id"]] == h]))
                         for site in sorted({s["site"] for s in sessions})}
                     for h in ("fit", "test")},
        "variants": {},
    }  # fmt: skip
    means = {m: {"truth": wm_means(raw_out, bids, sessions, m, "truth"),
                 "raw": wm_means(raw_out, bids, sessions, m, "raw")}
             for m in METRICS}  # fmt: skip

    truth_cache: dict[str, Any] = {}  # the truth in template space (same registrations)
    for variant in variants:
        print(f"variant {variant}", flush=True)
        out, work = root / f"OUT-{variant}", root / f"work-{variant}"
        if not args.reuse:
            shutil.copytree(raw_out, out)
        steps: dict[str, Any] = {}
        steps["train"] = step(f"train-{variant}", [
            "bids-harmony", str(bids), str(out), "train", "--method", "combat",
            "--target-site", TARGET, "--combat-covariates", "age", "sex",
            "--combat-variant", variant, "--participant-label", *fit_labels,
            "--nprocs", str(args.nprocs), "-w", str(work)])  # fmt: skip
        row: dict[str, Any] = {"times": steps}
        if steps["train"]["rc"] == 0:
            steps["apply"] = step(f"apply-{variant}", ["bids-harmony", str(bids), str(out),
                                  "participant", *common, "-w", str(work)])  # fmt: skip
        if steps["train"]["rc"] == 0 and steps["apply"]["rc"] == 0:
            start = time.perf_counter()
            row.update(evaluate(out, work, bids, sessions, halves, args.seed, truth_cache))
            wm = row.pop("wm_combat")
            for m in METRICS:
                means[m][variant] = np.array(wm[m])
            steps["evaluate"] = {"seconds": round(time.perf_counter() - start, 1)}
        else:
            row["failed"] = "train" if steps["train"]["rc"] else "apply"
        result["variants"][variant] = row

    result["age_slope"] = {}
    for m in METRICS:
        population = true_age_slope(bids, m.upper(), "WM")
        result["age_slope"][m] = {
            "all": slope_study(means[m], sessions, population),
            "test": slope_study({k: v[[halves[s["participant_id"]] == "test"
                                       for s in sessions]] for k, v in means[m].items()},
                                [s for s in sessions if halves[s["participant_id"]] == "test"],
                                population),
        }  # fmt: skip
    result["wm_means"] = {m: {k: v.tolist() for k, v in means[m].items()} for m in METRICS}
    result["times"] = {"simulate": times["simulate"], "participant": times["participant"]}
    result["environment"] = {"python": platform.python_version(), "numpy": np.__version__,
                             "cpu_count": os.cpu_count(), "nprocs": args.nprocs,
                             "machine": platform.machine()}  # fmt: skip
    if args.reuse:
        result["evaluated_again"] = f"--reuse of the outputs in {root}; step times recorded"
    runs = read_runs(args.out)
    runs[f"n{n}_seed{args.seed}"] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"description": RUNS_DESCRIPTION,
                                    "runs": dict(sorted(runs.items(), key=_run_order))},
                                   indent=1) + "\n")  # fmt: skip
    ordered = sorted(runs.items(), key=_run_order)
    for key, run_result in ordered:
        print(f"\n==== {key} " + "=" * 70)
        report(run_result)
    print(f"\nwritten to {args.out} (runs: {', '.join(k for k, _ in ordered)})")
    return 0


RUNS_DESCRIPTION = ("benchmarks/combat_cohort.py results, one entry per run (n<subjects "
                    "per site>_seed<seed>); a new run replaces only its own entry")  # fmt: skip


def _run_order(item: tuple[str, dict[str, Any]]) -> tuple[int, int]:
    return item[1].get("subjects_per_site", 0), item[1].get("seed", 0)


def read_runs(path: Path) -> dict[str, Any]:
    """The runs already in the results file (a file of the older one-run layout is its
    run); empty when there is none."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "runs" in data:
        return dict(data["runs"])
    if "subjects_per_site" in data:
        return {f"n{data['subjects_per_site']}_seed{data.get('seed', 0)}": data}
    return {}


def _pct(scores: dict[str, Any] | None, when: str) -> str:
    """``100 * fraction_significant_<when>`` of a site_scores dict (``-`` when absent)."""
    value = (scores or {}).get(f"fraction_significant_{when}" if when else "fraction_significant")
    return "-" if value is None else f"{100 * value:.1f}"


def report(result: dict[str, Any]) -> None:
    n = result["subjects_per_site"]
    n_test = 3 * n - len(result["fit_half"])
    print(f"\n{n} subjects per site x 3 sites; fit half {len(result['fit_half'])}, test half "
          f"{n_test}; target {result['target_site']}")  # fmt: skip
    if result.get("evaluated_again"):
        print(f"(evaluated again: {result['evaluated_again']})")
    rows = [(name, row) for name, row in result["variants"].items() if "held_out" in row]
    maps = sorted(rows[0][1]["held_out"].get("site_regions", {}).get("per_map", {})) if rows else []
    print(f"\n(1) held-out site effect (test half, {n_test} sessions): % of features with a "
          "site effect p < .05 given age and sex (chance: 5.0 %); voxels of the model mask, "
          "region means (pooled over the maps and per map); site classifier accuracy "
          "(chance)")  # fmt: skip
    print(f"{'':<18} {'voxels':^13}  {'regions':^{8 + 9 * len(maps)}}")
    print(f"{'':<18} {'FA':>6} {'MD':>6}  {'pooled':>7} " + " ".join(f"{m:>8}" for m in maps)
          + f"  {'acc reg':>7} {'acc vox':>7} {'chance':>6} {'ref exact':>9}")  # fmt: skip
    if rows:
        h = rows[0][1]["held_out"]
        regions = h.get("site_regions", {})
        truth = regions.get("truth")
        if truth is not None or "truth" in h["site_voxels_fa"]:
            per_map = " ".join(f"{_pct((truth or {}).get(m.split('_')[-1]), ''):>8}"
                               for m in maps)  # fmt: skip
            print(f"{'truth (site-free)':<18} {_pct(h['site_voxels_fa'].get('truth'), ''):>6} "
                  f"{_pct(h['site_voxels_md'].get('truth'), ''):>6}  "
                  f"{_pct((truth or {}).get('pooled_fa_md'), ''):>7} {per_map}")  # fmt: skip
        per_map = " ".join(f"{_pct(regions.get('per_map', {}).get(m), 'before'):>8}"
                           for m in maps)  # fmt: skip
        print(f"{'none (raw)':<18} {_pct(h['site_voxels_fa'], 'before'):>6} "
              f"{_pct(h['site_voxels_md'], 'before'):>6}  "
              f"{_pct(regions.get('pooled'), 'before'):>7} {per_map}  "
              f"{h['classifier_regions']['before']['accuracy']:>7.2f} "
              f"{h['classifier_voxels_fa_md']['before']['accuracy']:>7.2f} "
              f"{h['classifier_regions']['before']['chance']:>6.2f}")  # fmt: skip
    for name, row in result["variants"].items():
        if "held_out" not in row:
            print(f"{name:<18} failed at {row['failed']}: "
                  f"{(row['times'][row['failed']]['log_tail'] or [''])[-1][:90]}")  # fmt: skip
            continue
        h = row["held_out"]
        regions = h.get("site_regions", {})
        per_map = " ".join(f"{_pct(regions.get('per_map', {}).get(m), 'after'):>8}"
                           for m in maps)  # fmt: skip
        print(f"{name:<18} {_pct(h['site_voxels_fa'], 'after'):>6} "
              f"{_pct(h['site_voxels_md'], 'after'):>6}  "
              f"{_pct(regions.get('pooled'), 'after'):>7} {per_map}  "
              f"{h['classifier_regions']['after']['accuracy']:>7.2f} "
              f"{h['classifier_voxels_fa_md']['after']['accuracy']:>7.2f} "
              f"{h['classifier_regions']['after']['chance']:>6.2f} "
              f"{str(row['reference_site']['bit_for_bit']):>9}")  # fmt: skip
    if rows and "site_regions" in rows[0][1]["held_out"]:
        h = rows[0][1]["held_out"]
        print(f"features: {h['site_voxels_fa']['n_tested']} voxels per map, "
              f"{rows[0][1].get('n_regions')} regions per map "
              f"({h['site_regions']['pooled']['n_tested']} pooled); truth: the site-free "
              "desc-truth FA/MD warped by each session's own registration (shell-free: "
              "its FA/MD under every shell's column; max relative difference of the raw "
              "maps warped the same way from the written ones "
              f"{h.get('truth_warp_max_rel_diff_raw', float('nan')):.1e})")  # fmt: skip
    for m, studies in result["age_slope"].items():
        a = studies["all"]
        print(f"\n(2) WM {m.upper()} age slope per year, all {a['n']} subjects: population "
              f"truth {a['population_truth']:.3e}; truth of these subjects "
              f"{a['truth_same_subjects']:.3e} ± {a['truth_same_subjects_se']:.1e} "
              f"({a['truth_vs_population_pct']:+.1f} % of the population's, SE "
              f"{a['se_vs_population_pct']:.1f} %)")  # fmt: skip
        print(f"{'estimate':<22} {'slope':>11} {'SE':>9} {'err vs same-subject truth %':>28} "
              f"{'err vs population %':>20}")  # fmt: skip
        for key, row in a.items():
            if not isinstance(row, dict):
                continue
            print(f"{key:<22} {row['slope']:>11.3e} {row['se']:>9.1e} "
                  f"{row['error_vs_truth_pct']:>+19.1f} ± {row['error_vs_truth_se_pct']:<6.1f} "
                  f"{row['error_vs_population_pct']:>+20.1f}")  # fmt: skip
    print("\n(5) wall time (s): simulate "
          f"{result['times']['simulate']['seconds']:.0f}, participant "
          f"{result['times']['participant']['seconds']:.0f}; "
          + "; ".join(f"{name}: " + ", ".join(f"{k} {v['seconds']:.0f}"
                                               for k, v in row["times"].items())
                      for name, row in result["variants"].items()))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
