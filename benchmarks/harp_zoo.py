"""HARP on the simulator's phantom zoo: participant → train, then error to the target truth.

    python benchmarks/harp_zoo.py OUT_DIR [--size tiny] [--scenario NAME ...] [--seed 0]

For every zoo scenario (``bids-harmony-simulate --list-scenarios``): simulate the
study, run the participant level (all subjects) and the train level from the CLI,
then for every traveling subject's source-site (GE) sessions compare, against the
same object imaged noise-free by the target scanner:

* **no harmonization**, **HARP** (the trained model) and the **global per-band
  baseline** (one noise-debiased scale per SH band fitted on the same registered
  phantom voxels, :func:`bids_harmony.methods.harp.baseline.fit_band_scales`, stored in
  the model card);
* per-band RMS error of the SH coefficients, and the median absolute FA, MD and
  GFA error in WM and GM (noise-free source, so the numbers are site bias, not
  noise);
* "bias removed" = 1 − after / before, per metric;
* registration error of every accepted target registration against the
  simulator's known poses: RMS displacement over the source phantom voxels
  (ignoring the component along the phantom's axis, along which the vials are
  invariant), in voxels, and the rotation error in degrees.

Writes ``OUT_DIR/harp_zoo.json`` and prints one table per scenario plus a summary.
The second participant pass (harmonized derivatives) is not run: the errors are
computed on the noise-free source data directly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOURCE, TARGET = "SIGNAPremier", "Prisma"
METRICS = ("fa_WM", "md_WM", "gfa_WM", "fa_GM", "md_GM", "gfa_GM")


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}; see {log}")
    return time.perf_counter() - start


def _errors(bids: Path, out: Path, subject: str, session: str, acq: str, model_file: Path,
            baseline: np.ndarray) -> dict:
    """Per shell: band RMS and metric errors of none / HARP / baseline (noise-free source)."""
    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.dmri import metrics as dm
    from bids_harmony.dmri.sh import ShellFit, fit_shells
    from bids_harmony.methods.harp import load_model
    from bids_harmony.methods.harp.apply import harmonize_dwi, harmonize_fits
    from bids_harmony.methods.harp.network import apply_band_scales
    from bids_harmony.simulate import regenerate_noiseless

    prefix = f"sub-{subject}_ses-{session}_acq-{acq}"
    raw = bids / f"sub-{subject}" / f"ses-{session}" / "dwi" / prefix
    bvals, bvecs = read_gradients(f"{raw}_dwi.bval", f"{raw}_dwi.bvec")
    truth = bids / "sourcedata" / "simulation" / f"sub-{subject}" / f"ses-{session}"
    import nibabel as nb

    seg = np.asarray(nb.load(truth / f"sub-{subject}_ses-{session}_dseg.nii.gz").dataobj)
    mask_file = _outputs(out, subject, session, acq).mask(required=True)
    mask = (np.asarray(nb.load(mask_file).dataobj) > 0) & (seg > 0)
    clean_src = regenerate_noiseless(bids, subject, session, acq)
    clean_tgt = regenerate_noiseless(bids, subject, session, acq, site=TARGET)
    src_fits = fit_shells(clean_src, bvals, bvecs, mask=mask, b0_threshold=50.0)
    tgt_fits = fit_shells(clean_tgt, bvals, bvecs, mask=mask, b0_threshold=50.0)
    model, _ = load_model(model_file)
    harp_fits, _ = harmonize_fits(src_fits, model, mask=mask)
    base_fits = []
    for fit in src_fits:
        coeffs = fit.coeffs.copy()
        coeffs[mask] = apply_band_scales(coeffs[mask], baseline[: fit.order // 2 + 1])
        base_fits.append(ShellFit(fit.bval, fit.order, coeffs, fit.indices, fit.lowered))
    dwis = {
        "none": clean_src,
        "harp": harmonize_dwi(clean_src, bvals, bvecs, harp_fits, b0_threshold=50.0),
        "baseline": harmonize_dwi(clean_src, bvals, bvecs, base_fits, b0_threshold=50.0),
        "truth": clean_tgt,
    }
    fits = {"none": src_fits, "harp": harp_fits, "baseline": base_fits}
    tissues = {"WM": (seg == 3) & mask, "GM": (seg == 2) & mask}
    out_rows = {}
    for k, (src, tgt) in enumerate(zip(src_fits, tgt_fits, strict=True)):
        row: dict = {"bands": {}, "metrics": {}}
        t = tgt.coeffs[mask]
        for name, fit_list in fits.items():
            diff = fit_list[k].coeffs[mask] - t
            row["bands"][name] = [
                float(np.sqrt(np.mean(np.sum(diff[:, a:b] ** 2, axis=1))))
                for a, b in ((0, 1), (1, 6), (6, 15), (15, 28), (28, 45))[: src.order // 2 + 1]
            ]
        maps = {}
        for name, dwi in dwis.items():
            tensor = dm.tensor_metrics(dwi, bvals, bvecs, mask=mask, shell=src.bval)
            gfa = dm.gfa_csd(dwi, bvals, bvecs, mask=mask, shell=src.bval, fa=tensor["fa"])
            maps[name] = {"fa": tensor["fa"], "md": tensor["md"], "gfa": gfa}
        for tissue, where in tissues.items():
            for metric in ("fa", "md", "gfa"):
                truth_v = maps["truth"][metric][where]
                row["metrics"][f"{metric}_{tissue}"] = {
                    name: float(np.median(np.abs(maps[name][metric][where] - truth_v)))
                    for name in ("none", "harp", "baseline")
                }
        out_rows[src.label] = row
    return out_rows


def _outputs(out: Path, subject: str, session: str, acq: str):
    """Reader of one run's participant outputs (only its mask is needed here)."""
    from bids_harmony.bids.reader import RunOutputs

    return RunOutputs.from_entities(out, {"sub": subject, "ses": session, "acq": acq}, [])


def _pose(bids: Path, subject: str, session: str) -> np.ndarray:
    path = (bids / "sourcedata" / "simulation" / f"sub-{subject}" / f"ses-{session}"
            / f"sub-{subject}_ses-{session}_pose.json")  # fmt: skip
    return np.asarray(json.loads(path.read_text())["matrix"], dtype=float)


def _registration_errors(bids: Path, out: Path, card: dict) -> list[dict]:
    """Estimated vs true fixed→moving world transforms of the accepted target registrations."""
    import nibabel as nb

    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # simulator world = diag(-1, 1, 1) x scanner frame
    rows, seen = [], set()
    for pair in card["training"]["pairs"]:
        reg = pair.get("registration", {}).get("target")
        if not reg or not reg.get("accepted") or "transform" not in reg:
            continue
        src, tgt = pair["source"], pair["target"]
        key = (src["subject"], src["session"], tgt["session"])
        if key in seen:
            continue
        seen.add(key)
        true = flip @ _pose(bids, tgt["subject"], tgt["session"]) @ np.linalg.inv(
            _pose(bids, src["subject"], src["session"])) @ flip
        est = np.asarray(reg["transform"], dtype=float)
        # the pair's own run (single-shell b1000, or the multi-shell run of a phantom
        # scanned with one protocol): every run of a session has the same pose
        outputs = _outputs(out, src["subject"], src["session"], pair.get("protocol", "b1000"))
        mask_img = nb.load(outputs.mask(required=True))
        vox = np.argwhere(np.asarray(mask_img.dataobj) > 0).astype(float)
        pts = vox @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
        diff = (pts @ est[:3, :3].T + est[:3, 3]) - (pts @ true[:3, :3].T + true[:3, 3])
        axis = true[:3, :3] @ np.array([0.0, 0.0, 1.0])  # phantom axis in the moving world
        diff -= np.outer(diff @ axis, axis)
        voxel = float(np.min(np.linalg.norm(mask_img.affine[:3, :3], axis=0)))
        cos = (np.trace(est[:3, :3].T @ true[:3, :3]) - 1) / 2
        true_angle = np.degrees(np.arccos(np.clip((np.trace(true[:3, :3]) - 1) / 2, -1, 1)))
        rows.append({
            "pair": f"sub-{key[0]} ses-{key[1]} -> ses-{key[2]}",
            "true_rotation_deg": round(float(true_angle), 2),
            "true_translation_mm": np.round(true[:3, 3], 2).tolist(),
            "error_vox": round(float(np.sqrt(np.mean(np.sum(diff**2, axis=1)))) / voxel, 3),
            "error_deg": round(float(np.degrees(np.arccos(np.clip(cos, -1, 1)))), 3),
        })  # fmt: skip
    return rows


def run_scenario(root: Path, scenario: str, size: str, seed: int, nprocs: int,
                 iterations: int | None = None) -> dict:
    work = root / scenario
    bids, out, log = work / "bids", work / "derivatives", work / "log.txt"
    work.mkdir(parents=True, exist_ok=True)
    times = {}
    if not (work / "simulate.done").exists():
        times["simulate_s"] = _run(["bids-harmony-simulate", str(bids), "--size", size,
                                    "--seed", str(seed), "--scenario", scenario, "--force"], log)
        (work / "simulate.done").write_text("ok\n")
    done = work / "participant.done"  # an interrupted run leaves partial outputs
    if not done.exists():
        times["participant_s"] = _run(["bids-harmony", str(bids), str(out), "participant",
                                       "--nprocs", str(nprocs), "-w", str(work / "work"),
                                       "--skip-bids-validation"], log)  # fmt: skip
        done.write_text(f"{times['participant_s']:.1f}\n")
    model = out / "models" / f"harp_src-{SOURCE}_tgt-{TARGET}.safetensors"
    result: dict = {"scenario": scenario, "size": size, "seed": seed}
    try:
        # Each scenario's own work directory: runs in parallel (seeds) do not share locks.
        times["train_s"] = _run(["bids-harmony", str(bids), str(out), "train", "--target-site",
                                 TARGET, "--seed", str(seed), "--skip-bids-validation",
                                 "-w", str(work / "work"),
                                 *(["--harp-iterations", str(iterations)] if iterations else []),
                                 # the tiny grids hold few phantom voxels (as in the demo)
                                 *(["--min-train-voxels", "200"] if size == "tiny" else [])],
                                log)
    except RuntimeError as err:
        result["train_error"] = str(err)
        result["times"] = times
        return result
    card = json.loads(model.with_suffix(".json").read_text())
    training = card["training"]
    result["times"] = times
    result["train_wall_s"] = training.get("wall_time_s")
    result["pairs"] = len(training["pairs"])
    result["excluded_pairs"] = training.get("excluded_pairs", [])
    result["n_train_voxels"] = training.get("n_train_voxels")
    result["held_bands"] = training.get("held_bands")
    result["baseline_scales"] = training.get("baseline_scales")
    result["registration"] = _registration_errors(bids, out, card)
    baseline = np.asarray(training["baseline_scales"])
    subjects = sorted(p.name[4:] for p in bids.glob("sub-*") if not p.name.startswith(
        "sub-phantom") and p.is_dir())
    per_run = {}
    for subject in subjects:
        for ses_dir in sorted((bids / f"sub-{subject}").glob("ses-GE*")):
            session = ses_dir.name[4:]
            per_run[f"{subject}_{session}"] = _errors(
                bids, out, subject, session, "multishell", model, baseline)
    result["runs"] = per_run
    summary = {}
    for metric in METRICS:
        vals = {n: np.mean([r["metrics"][metric][n] for run in per_run.values()
                            for r in run.values()]) for n in ("none", "harp", "baseline")}
        summary[metric] = {**{k: float(v) for k, v in vals.items()},
                           "harp_removed": float(1 - vals["harp"] / vals["none"]),
                           "baseline_removed": float(1 - vals["baseline"] / vals["none"])}
    bands = {}
    for name in ("none", "harp", "baseline"):
        rows = [r["bands"][name] for run in per_run.values() for r in run.values()]
        bands[name] = np.mean(rows, axis=0).round(5).tolist()
    result["summary"] = summary
    result["bands"] = bands
    return result


def _print(result: dict) -> None:
    print(f"\n== {result['scenario']} ({result['size']}) ==")
    if "train_error" in result:
        print("  TRAINING FAILED:", result["train_error"])
        return
    print(f"  pairs {result['pairs']}, excluded {len(result['excluded_pairs'])}, "
          f"train voxels {result['n_train_voxels']}, held bands {result['held_bands']}, "
          f"train {result['train_wall_s']} s; baseline scales {result['baseline_scales']}")
    regs = result["registration"]
    if regs:
        print(f"  registration error: max {max(r['error_vox'] for r in regs):.3f} vox, "
              f"{max(r['error_deg'] for r in regs):.2f} deg over {len(regs)} scan pairs "
              f"(true rotations up to {max(r['true_rotation_deg'] for r in regs):.1f} deg)")
    head = ("metric", "none", "HARP", "baseline", "HARP rm", "base rm")
    print("  {:8s} {:>9s} {:>9s} {:>9s} {:>8s} {:>8s}".format(*head))
    for metric, row in result["summary"].items():
        print(f"  {metric:8s} {row['none']:9.5f} {row['harp']:9.5f} {row['baseline']:9.5f} "
              f"{row['harp_removed']:8.1%} {row['baseline_removed']:8.1%}")
    for name, vals in result["bands"].items():
        print(f"  SH band RMS {name:8s}: " + " ".join(f"{v:.4f}" for v in vals))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", default="tiny", choices=("tiny", "demo", "full"))
    parser.add_argument("--scenario", nargs="*", help="zoo scenarios (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--harp-iterations", type=int, help="default: the recipe's (1000)")
    args = parser.parse_args(argv)
    from bids_harmony.simulate.zoo import ZOO

    scenarios = args.scenario or list(ZOO)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results_file = args.out_dir / "harp_zoo.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for scenario in scenarios:
        result = run_scenario(args.out_dir, scenario, args.size, args.seed, args.nprocs,
                              args.harp_iterations)
        results[scenario] = result
        results_file.write_text(json.dumps(results, indent=1))
        _print(result)
    done = [r for r in results.values() if "summary" in r]
    if done:
        print("\n== summary: WM site bias removed (median over scenarios) ==")
        for metric in ("fa_WM", "md_WM", "gfa_WM"):
            harp = np.median([r["summary"][metric]["harp_removed"] for r in done])
            base = np.median([r["summary"][metric]["baseline_removed"] for r in done])
            print(f"  {metric}: HARP {harp:.1%}, global per-band baseline {base:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
