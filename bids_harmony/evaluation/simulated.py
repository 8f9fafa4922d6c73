"""How close harmonization gets to the truth, on a study written by the simulator.

For a source-site run, the ideal harmonized data is the same object, in the
same pose and with the same gradient table, imaged by the *target* scanner
without noise; the simulator renders it (:func:`regenerate_noiseless`).  We
compare, per shell, inside the brain:

* SH coefficients per order band: source vs truth, harmonized vs truth, both on
  the noise-free source (isolates the learned site mapping) and on the noisy
  source as processed by the participant level;
* FA, MD (DTI) and GFA (CSD) in WM and GM of the noise-free source, of the
  harmonized noise-free source and of the truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _load(path: Path) -> np.ndarray:
    import nibabel as nb

    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def _band_rms(a: np.ndarray, b: np.ndarray, order: int) -> list[float]:
    from bids_harmony.dmri.bands import band_slices

    return [float(np.sqrt(np.mean((a[:, sl] - b[:, sl]) ** 2))) for sl in band_slices(order)]


def harmonization_errors(
    bids_root: Path,
    derivatives: Path,
    subject: str,
    session: str,
    acq: str,
    *,
    model_file: Path,
    target_site: str,
    b0_threshold: float = 50.0,
    metrics: bool = True,
) -> dict[str, Any]:
    """Errors to the target-site truth of one source run, before and after HARP.

    Returns a dict keyed by shell label with ``sh_clean``/``sh_noisy`` (per band
    RMS ``before``/``after``) and, with ``metrics``, per tissue median absolute
    differences of FA/MD/GFA ``before``/``after``.
    """
    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.bids.reader import RunOutputs
    from bids_harmony.dmri import metrics as dm
    from bids_harmony.dmri.gradients import group_shells
    from bids_harmony.dmri.sh import fit_shells
    from bids_harmony.methods.harp import load_model
    from bids_harmony.methods.harp.apply import harmonize_dwi, harmonize_fits
    from bids_harmony.simulate import regenerate_noiseless

    prefix = f"sub-{subject}_ses-{session}_acq-{acq}"
    raw = bids_root / f"sub-{subject}" / f"ses-{session}" / "dwi" / prefix
    bvals, bvecs = read_gradients(f"{raw}_dwi.bval", f"{raw}_dwi.bvec")
    truth_dir = bids_root / "sourcedata" / "simulation" / f"sub-{subject}" / f"ses-{session}"
    seg = _load(truth_dir / f"sub-{subject}_ses-{session}_dseg.nii.gz").astype(int)
    shells = [shell.bval for shell in group_shells(bvals, b0_threshold=b0_threshold)]
    entities = {"sub": subject, "ses": session, "acq": acq}
    outputs = RunOutputs.from_entities(derivatives, entities, shells)
    mask = _load(outputs.mask(required=True)) > 0
    mask &= seg > 0

    clean_src = regenerate_noiseless(bids_root, subject, session, acq)
    clean_tgt = regenerate_noiseless(bids_root, subject, session, acq, site=target_site)
    fit = {"mask": mask, "b0_threshold": b0_threshold}
    src_fits = fit_shells(clean_src, bvals, bvecs, **fit)
    tgt_fits = fit_shells(clean_tgt, bvals, bvecs, **fit)
    model, _ = load_model(model_file)
    harm_fits, _ = harmonize_fits(src_fits, model, mask=mask)

    results: dict[str, Any] = {}
    for src, tgt, harm in zip(src_fits, tgt_fits, harm_fits, strict=True):
        label = src.label
        noisy = _load(outputs.sh(label, required=True))[mask]
        noisy_h = _load(outputs.sh(label, "harp", required=True))[mask]
        t = tgt.coeffs[mask]
        results[label] = {
            "sh_clean": {"before": _band_rms(src.coeffs[mask], t, src.order),
                         "after": _band_rms(harm.coeffs[mask], t, src.order)},
            "sh_noisy": {"before": _band_rms(noisy, t, src.order),
                         "after": _band_rms(noisy_h, t, src.order)},
        }  # fmt: skip
    if not metrics:
        return results

    harm_dwi = harmonize_dwi(clean_src, bvals, bvecs, harm_fits, b0_threshold=b0_threshold)
    tissues = {"WM": (seg == 3) & mask, "GM": (seg == 2) & mask}
    for src in src_fits:
        maps = {}
        for name, dwi in (("source", clean_src), ("harmonized", harm_dwi), ("truth", clean_tgt)):
            tensor = dm.tensor_metrics(dwi, bvals, bvecs, mask=mask, shell=src.bval)
            gfa = dm.gfa_csd(dwi, bvals, bvecs, mask=mask, shell=src.bval, fa=tensor["fa"])
            maps[name] = {"fa": tensor["fa"], "md": tensor["md"], "gfa": gfa}
        diffs = {}
        for tissue, where in tissues.items():
            for metric in ("fa", "md", "gfa"):
                truth = maps["truth"][metric][where]
                diffs[f"{metric}_{tissue}"] = {
                    key: float(np.median(np.abs(maps[key][metric][where] - truth)))
                    for key, name in (("source", "before"), ("harmonized", "after"))
                }
        results[src.label]["metrics"] = {
            k: {"before": v["source"], "after": v["harmonized"]} for k, v in diffs.items()
        }
    return results
