"""The ``train`` level: one HARP model per (source site → target site).

Uses the participant-level derivatives of the phantom sessions: pairs phantom
scans across sites (:mod:`bids_harmony.harp.pairs`), registers and samples
training voxels (:mod:`bids_harmony.harp.pair_io`), trains
(:func:`bids_harmony.harp.train_harp`) and writes
``OUT/models/harp_src-<S>_tgt-<T>.safetensors`` with its JSON model card.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.bids.io import sha256_file
from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, NoDataError

LOGGER = logging.getLogger(__name__)


def choose_sites(config: Config, sites: list[str]) -> tuple[str, list[str]]:
    """Target site and the source sites to train, with errors listing the sites."""
    listed = ", ".join(sites) or "none"
    if not config.target_site:
        raise BidsHarmonyError(
            f"the 'train' level needs --target-site; sites in the data: {listed}."
        )
    if config.target_site not in sites:
        raise NoDataError(
            f"--target-site {config.target_site} is not a site of the data; sites: {listed}."
        )
    if config.source_site:
        if config.source_site not in sites or config.source_site == config.target_site:
            raise NoDataError(
                f"--source-site {config.source_site} must be a site of the data other than "
                f"the target; sites: {listed}."
            )
        return config.target_site, [config.source_site]
    sources = [site for site in sites if site != config.target_site]
    if not sources:
        raise NoDataError(f"only the target site {config.target_site} is in the data.")
    return config.target_site, sources


def run_sh_maps(derivatives: Path, run: Any) -> list[Path]:
    """Unharmonized SH maps of a run: those whose sidecar names its preprocessed DWI."""
    import json

    folder = derivatives / run.rel_dir
    preproc = f"{run.prefix}_space-dwi_desc-preproc_dwi.nii.gz"
    maps = []
    for sidecar in sorted(folder.glob("*_model-sh_param-coeffs_dwimap.json")):
        sources = json.loads(sidecar.read_text()).get("Sources", [])
        if sources and sources[0].endswith("/" + preproc):
            maps.append(sidecar.with_name(sidecar.name.replace(".json", ".nii.gz")))
    return maps


def invivo_c00(
    study: Any, derivatives: Path, site: str, *, max_samples: int = 200_000
) -> np.ndarray:
    """C00 of in-vivo sessions of ``site`` (inside their masks), for the paper's rule."""
    import nibabel as nb

    values = []
    for run in study.runs:
        if run.site != site or run.is_phantom:
            continue
        mask_file = derivatives / run.rel_dir / f"{run.prefix}_space-dwi_desc-brain_mask.nii.gz"
        if not mask_file.exists():
            continue
        mask = np.asarray(nb.load(mask_file).dataobj) > 0
        for sh_file in run_sh_maps(derivatives, run):
            values.append(np.asarray(nb.load(sh_file).dataobj[..., 0])[mask])
    if not values:
        return np.empty(0)
    samples = np.concatenate(values)
    if samples.size > max_samples:
        samples = np.sort(samples)[:: samples.size // max_samples + 1]
    return samples


def _stack(arrays: list[Any], field: str, n: int) -> np.ndarray | None:
    """Rows of all pairs, truncated to ``n`` coefficients; None if any pair lacks it."""
    parts = [getattr(a, field) for a in arrays]
    if not parts or any(part is None for part in parts):
        return None
    return np.concatenate(parts, axis=0)[:, :n]


def _scan_record(scan: Any) -> dict[str, Any] | None:
    if scan is None:
        return None
    return {
        "subject": scan.subject,
        "session": scan.session,
        "site": scan.site,
        "sh_file": Path(scan.sh_file).name,
        "sh_sha256": sha256_file(Path(scan.sh_file)),
    }


def train_site_pair(
    config: Config,
    study: Any,
    source: str,
    target: str,
    device: str,
    registration: str = "ants",
) -> Path:
    """Train and save the model of one site pair; returns the model path."""
    from bids_harmony.bids.derivatives import software_versions
    from bids_harmony.dmri.bands import n_coeffs
    from bids_harmony.harp import DEFAULT_RECIPE, PAPER_RECIPE, save_model, train_harp
    from bids_harmony.harp.catalog import MODELS_DIR, model_stem
    from bids_harmony.harp.model_file import sh_convention
    from bids_harmony.harp.pair_io import gather_pair_arrays
    from bids_harmony.harp.pairs import TrainingDataError, find_phantom_pairs
    from bids_harmony.harp.voxels import validation_split

    pairs = find_phantom_pairs(
        study,
        config.output_dir,
        source_site=source,
        target_site=target,
        b_tolerance=config.b_tolerance,
    )
    pairs = [p for p in pairs if p.source.sh_order == config.sh_order == p.target.sh_order]
    if not pairs:
        raise NoDataError(
            f"no phantom pair {source} → {target} was fitted at SH order {config.sh_order}; "
            "protocols with fewer directions than coefficients cannot train this model."
        )
    train_pairs, val_pairs = validation_split(pairs, seed=config.seed)
    rule = config.voxel_rule
    c00 = invivo_c00(study, config.output_dir, source) if rule in ("auto", "percentile") else None
    if rule == "auto":
        rule = "percentile" if c00 is not None and c00.size else "window"
    if rule == "percentile" and (c00 is None or not c00.size):
        raise NoDataError(
            f"--voxel-rule percentile needs participant outputs of in-vivo {source} sessions; "
            "run the participant level on them or use --voxel-rule window."
        )
    LOGGER.info(
        "%s → %s: %d phantom pair(s) for training, %d for validation; voxel rule %s",
        source,
        target,
        len(train_pairs),
        len(val_pairs),
        rule,
    )

    registrations: dict = {}  # shared: a scan registered once serves every pair it is in
    n = n_coeffs(config.sh_order)

    def gather(group):
        arrays = [
            gather_pair_arrays(
                pair,
                rule=rule,
                c00_window=config.c00_window,
                erode=config.phantom_erode,
                invivo_c00=c00 if rule == "percentile" else None,
                min_voxels=1,
                seed=config.seed,
                registrations=registrations,
                registration_method=registration,
            )
            for pair in group
        ]
        return {
            field: _stack(arrays, field, n) for field in ("source", "target", "source_rescan")
        }, arrays

    train_data, train_arrays = gather(train_pairs)
    val_data, val_arrays = gather(val_pairs)
    n_train = len(train_data["source"])
    if n_train < config.min_train_voxels:
        raise TrainingDataError(
            f"only {n_train} valid phantom voxels for {source} → {target} (need "
            f"{config.min_train_voxels}); per pair: "
            + "; ".join(
                f"{p.source.label}: {a.counts}"
                for p, a in zip(train_pairs, train_arrays, strict=True)
            )
            + ". Widen --c00-window, use --voxel-rule window, or lower --min-train-voxels."
        )
    recipe = PAPER_RECIPE if config.harp_recipe == "paper" else DEFAULT_RECIPE
    recipe = dataclasses.replace(recipe, seed=config.seed)
    if config.harp_iterations:
        recipe = dataclasses.replace(recipe, iterations=config.harp_iterations)
    start = time.perf_counter()
    result = train_harp(
        train_data["source"],
        train_data["target"],
        source_rescan=train_data["source_rescan"],
        val_source=val_data["source"],
        val_target=val_data["target"],
        val_source_rescan=val_data["source_rescan"],
        recipe=recipe,
        sh_order=config.sh_order,
        device=device,
        progress=sys.stderr.isatty(),
    )
    card = {
        "source_site": source,
        "target_site": target,
        "sh_convention": sh_convention(config.sh_order),
        "training": {
            "pairs": [
                {
                    "phantom": p.phantom,
                    "protocol": p.protocol,
                    "shell_bval": p.shell_bval,
                    "role": role,
                    "source": _scan_record(p.source),
                    "target": _scan_record(p.target),
                    "source_rescan": _scan_record(p.source_rescan),
                }
                for group, role in ((train_pairs, "train"), (val_pairs, "validation"))
                for p in group
            ],
            "voxel_selection": {
                "rule": rule,
                "c00_window": list(config.c00_window),
                "erode": config.phantom_erode,
                "counts": [a.counts for a in [*train_arrays, *val_arrays]],
            },
            "n_train_voxels": result.n_train,
            "n_validation_voxels": result.n_val,
            "recipe": dataclasses.asdict(result.recipe),
            "history": result.history,
            "final_validation_loss": result.final_val_loss,
            "wall_time_s": round(time.perf_counter() - start, 2),
            "device": device,
            "seed": config.seed,
            "registration": "FSL flirt -dof 6 -cost corratio"
            if registration == "flirt"
            else "ANTs rigid, Mattes mutual information",
        },
        "software_versions": software_versions(),
    }
    path = save_model(
        config.output_dir / MODELS_DIR / model_stem(source, target), result.model, card
    )
    LOGGER.info(
        "Saved %s (validation loss %.4g, %.1f s)",
        path,
        result.final_val_loss,
        card["training"]["wall_time_s"],
    )
    return path


def run_train(config: Config) -> int:
    """Run the train level; returns the exit code."""
    from bids_harmony.bids.derivatives import write_dataset_description
    from bids_harmony.workflows.run import discover_study, resolve_backend, resolve_device

    study = discover_study(config)
    LOGGER.info("Discovered:\n%s", study.summary())
    target, sources = choose_sites(config, study.sites)
    device = resolve_device(config.device)
    # Phantom pairs are registered with FLIRT whenever FSL preprocesses (--preproc fsl/auto).
    registration = "flirt" if resolve_backend(config.preproc) == "fsl" else "ants"
    LOGGER.info("Phantom registration: %s", registration)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir)
    for source in sources:
        train_site_pair(config, study, source, target, device, registration)
    return 0
