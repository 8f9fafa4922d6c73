"""HARP harmonization quality against the simulator's target-site ground truth.

    python benchmarks/harp_quality.py DEMO_DIR              # runs the demo if needed
    python benchmarks/harp_quality.py DEMO_DIR --size tiny

``DEMO_DIR`` is a ``bids-harmony-demo`` output (``bids/``, ``derivatives/`` with
a trained model).  When it has no model yet, the demo is run first (``demo``
size: about 15 min on 2 cores).  For every human subject's source-site (GE)
sessions, :func:`bids_harmony.evaluation.simulated.harmonization_errors`
compares source and harmonized data with the same object imaged, noise-free,
by the target scanner (same pose, same gradient table):

* RMS error of the SH coefficients per band (l = 0…8), for the noise-free
  source (the learned site mapping alone) and for the noisy source as processed
  by the participant level (whose l >= 4 error is mostly noise, which HARP
  does not remove);
* median absolute FA/MD/GFA difference in WM and GM (noise-free source).

Results are printed as tables (mean over subjects, sessions and shells) and
written to ``DEMO_DIR/harp_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SOURCE, TARGET = "SIGNAPremier", "Prisma"


def _runs(bids: Path) -> list[tuple[str, str]]:
    return sorted(
        (p.parents[2].name.removeprefix("sub-"), p.parents[1].name.removeprefix("ses-"))
        for p in bids.glob("sub-*/ses-GE*/dwi/*_acq-multishell_dwi.nii.gz")
        if not p.parents[2].name.startswith("sub-phantom")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--size", default="demo", choices=("tiny", "demo", "full"))
    args = parser.parse_args(argv)
    from bids_harmony.evaluation.simulated import harmonization_errors

    bids, out = args.demo_dir / "bids", args.demo_dir / "derivatives"
    model = out / "models" / f"harp_src-{SOURCE}_tgt-{TARGET}.safetensors"
    if not model.exists():
        from bids_harmony.cli.demo import main as demo_main

        start = time.perf_counter()
        if demo_main([str(args.demo_dir), "--size", args.size]) != 0:
            return 1
        print(f"demo ran in {time.perf_counter() - start:.0f} s")
    card = json.loads(model.with_suffix(".json").read_text())
    training = card["training"]
    rows: dict[str, list[tuple[float, float]]] = {}
    start = time.perf_counter()
    for subject, session in _runs(bids):
        result = harmonization_errors(
            bids, out, subject, session, "multishell", model_file=model, target_site=TARGET
        )
        for shell in result.values():
            for kind in ("sh_clean", "sh_noisy"):
                pairs = zip(shell[kind]["before"], shell[kind]["after"], strict=True)
                for ell, pair in enumerate(pairs):
                    rows.setdefault(f"{kind} l={2 * ell}", []).append(pair)
            for name, value in shell["metrics"].items():
                rows.setdefault(name, []).append((value["before"], value["after"]))
    means = {k: np.mean(v, axis=0).tolist() for k, v in rows.items()}
    print(
        f"\nModel {model.name}: {training['n_train_voxels']} training / "
        f"{training['n_validation_voxels']} validation voxels, "
        f"{training['wall_time_s']:.0f} s training, validation loss "
        f"{training['final_validation_loss']:.4g}; evaluation {time.perf_counter() - start:.0f} s"
    )
    print(f"{'error to target truth':28s} {'before':>10s} {'after':>10s} {'change':>8s}")
    for key, (before, after) in means.items():
        change = (after - before) / before if before else float("nan")
        print(f"{key:28s} {before:10.4g} {after:10.4g} {change:+8.1%}")
    report = {"model": str(model), "runs": _runs(bids), "mean_before_after": means}
    (args.demo_dir / "harp_quality.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
