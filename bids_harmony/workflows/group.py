"""The ``group`` level: scan-rescan vs inter-scanner variability, HARP vs LinearRISH.

For every source site → target site and raw ``acq``: select the traveling
subjects (:mod:`bids_harmony.bids.group_inputs`), register each session's FA to a
study FA template built from the target-site sessions (or ``--template``),
fit and apply LinearRISH (:mod:`bids_harmony.interfaces.rish`), warp FA/MD/GFA of
the raw, HARP- and LinearRISH-harmonized data to the template, and compute
standard-error maps, the paper's tables, fibre-orientation preservation,
figures and one self-contained ``OUT/group/report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_harmony.config import Config
from bids_harmony.errors import BidsHarmonyError, InputDatasetError, NoDataError

LOGGER = logging.getLogger(__name__)
METRICS = ("fa", "md", "gfa")
#: Conditions of the inter-scanner comparison -> method whose outputs are read (desc-<method>).
VARIANTS = {"none": None, "harp": "harp", "rish": "rish"}
NOTES = (
    "Standard errors follow Jeong et al. (2026) Eq. 2: scan-rescan with K = 2 sessions "
    "per site, inter-scanner with K = 4 (two sessions at each site).",
    "LinearRISH is trained on the same traveling subjects it is evaluated on: its "
    "numbers are a best case, while HARP saw phantoms only.",
    "Summaries exclude CSF (mean target-site MD > 1.5 µm²/ms); WM is FA >= 0.3, GM the "
    "rest of the brain; ROIs are these classes cut by a 3 x 3 x 3 grid of blocks.",
)


def group_sites(config: Config, study: Any) -> tuple[str, list[str]]:
    """Target site (``--target-site`` or the models' cards) and the source sites."""
    from bids_harmony.workflows.train import choose_sites

    target = config.target_site
    if not target:
        cards = sorted((config.output_dir / "models").glob("harp_src-*_tgt-*.json"))
        targets = {json.loads(p.read_text()).get("target_site") for p in cards}
        if len(targets) != 1:
            raise BidsHarmonyError(
                "the 'group' level needs --target-site (no single target in "
                f"{config.output_dir / 'models'}); sites: {', '.join(study.sites)}."
            )
        target = targets.pop()
    return choose_sites(dataclasses.replace(config, target_site=target), study.sites)


def resolve_template(value: str | Path) -> Path:
    """A template file, or a TemplateFlow name (``NAME`` or ``NAME:res-2``) found locally.

    TemplateFlow is looked up in ``$TEMPLATEFLOW_HOME`` only (no download at run
    time): an FA image (``desc-FA``) if the template has one, else its T1w (the
    registration's Mattes metric copes with the contrast difference).
    """
    path = Path(value)
    if path.is_file():
        return path
    import os

    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    name, _, res = str(value).partition(":res-")
    try:
        from templateflow import api
    except Exception as err:  # pragma: no cover - templateflow is a dependency
        raise InputDatasetError(
            f"--template {value}: not a file, and TemplateFlow: {err}"
        ) from err
    home = os.environ.get("TEMPLATEFLOW_HOME", "~/.cache/templateflow")
    if name not in api.templates():
        raise InputDatasetError(
            f"--template {value}: not a file, and no TemplateFlow template {name!r} in "
            f"{home} (available: {', '.join(api.templates()) or 'none'}). Pre-fetch it "
            "(the container does at build time) or give a NIfTI file."
        )
    query = {"resolution": int(res)} if res else {}
    for extra in ({"desc": "FA"}, {"desc": None, "suffix": "T1w"}):
        found = api.get(name, extension=".nii.gz", **{"suffix": "T1w", **extra, **query})
        found = [found] if isinstance(found, (str, Path)) else sorted(found)
        found = [Path(f) for f in found if Path(f).is_file()]
        if found:
            return found[0]
    raise InputDatasetError(
        f"--template {value}: TemplateFlow template {name!r} has no local FA or T1w image "
        f"{'at resolution ' + res if res else ''} in {home}."
    )


def _load(path: Path) -> np.ndarray:
    import nibabel as nb

    return np.asarray(nb.load(path).dataobj, dtype=np.float32)


def _mask_file(shell: Any) -> Path:
    return shell.outputs.mask(required=True)


def _register(config, runs, shells, ref, work, excluded) -> tuple[Path, dict[str, Any]]:
    from bids_harmony.registration.common_space import (
        RegistrationFailedError,
        build_fa_template,
        register_to_template,
    )

    if config.template is not None:
        template = resolve_template(config.template)
    else:
        fa = [shells[r.prefix][ref].raw["fa"] for r in runs if r.site == config.target_site]
        template = build_fa_template(fa, work / "template_FA.nii.gz", work, seed=config.seed)
    transforms = {}
    for run in runs:
        try:
            transforms[run.prefix] = register_to_template(
                shells[run.prefix][ref].raw["fa"],
                template,
                work / "transforms",
                seed=config.seed,
                transform=config.group_transform,
            )
        except RegistrationFailedError as err:
            LOGGER.warning("Excluded: %s", err)
            excluded.append((f"sub-{run.subject} ses-{run.session}", str(err)))
    return template, transforms


def _scenario(config, study, sel, group_dir, work, excluded) -> dict[str, Any] | None:
    from bids_harmony.bids.group_inputs import run_shells
    from bids_harmony.evaluation import maps as ev
    from bids_harmony.interfaces.rish import apply_to_run, fit_rish_scales
    from bids_harmony.registration.common_space import to_template

    derivatives = config.output_dir
    runs = [r for site in sel.sessions.values() for pair in site.values() for r in pair]
    shells = {r.prefix: {m.label: m for m in run_shells(derivatives, r)} for r in runs}
    fitted = set.intersection(*(set(by_label) for by_label in shells.values()))
    labels = sorted(fitted, key=lambda label: float(label[1:]))  # fitted in every run
    if not labels:
        raise NoDataError(
            "the traveling subjects' sessions have no complete participant outputs in "
            f"{derivatives}; run: bids-harmony {config.bids_dir} {derivatives} participant"
        )
    ref = min(labels, key=lambda s: abs(float(s[1:]) - 1000.0))
    template, transforms = _register(config, runs, shells, ref, work, excluded)
    subjects = [
        s
        for s in sel.subjects
        if all(r.prefix in transforms for pair in sel.sessions[s].values() for r in pair)
    ]
    if not subjects:
        LOGGER.warning("No traveling subject left for %s -> %s.", sel.source, sel.target)
        return None
    src_runs = [r for s in subjects for r in sel.sessions[s][sel.source]]
    tgt_runs = [r for s in subjects for r in sel.sessions[s][sel.target]]
    masks = {r.prefix: _mask_file(shells[r.prefix][ref]) for r in runs}
    has_harp = all(shells[r.prefix][lb].harp for r in src_runs for lb in labels)
    scales = {
        lb: fit_rish_scales(
            [shells[r.prefix][lb] for r in src_runs],
            [shells[r.prefix][lb] for r in tgt_runs],
            masks,
            transforms,
            template,
        )
        for lb in labels
    }
    for run in src_runs:
        apply_to_run(
            [shells[run.prefix][lb] for lb in labels],
            scales,
            transforms[run.prefix],
            template,
            mask_file=masks[run.prefix],
            subjects=subjects,
            b_tolerance=config.b_tolerance,
            b0_threshold=config.b0_threshold,
        )

    def stack(run_list, label, metric, method):
        arrays = [
            to_template(
                shells[r.prefix][label].file(metric, method), transforms[r.prefix], template
            )
            for r in run_list
        ]
        return np.stack(arrays).reshape(len(subjects), 2, *arrays[0].shape)

    brain = np.stack(
        [
            to_template(
                masks[r.prefix], transforms[r.prefix], template, interpolator="nearestNeighbor"
            )
            > 0.5
            for r in [*src_runs, *tgt_runs]
        ]
    ).all(0)
    results = {"labels": labels, "subjects": subjects, "template": template, "shells": {}}
    stem = f"src-{sel.source}_tgt-{sel.target}" + (f"_acq-{sel.acq}" if sel.acq else "")
    for label in labels:
        values, target_values, maps = {}, {}, {}
        for metric in METRICS:
            key = metric.upper()  # the tables' and figures' metric names
            target_values[key] = stack(tgt_runs, label, metric, None)
            values[key] = {
                v: stack(src_runs, label, metric, method)
                for v, method in VARIANTS.items()
                if v != "harp" or has_harp
            }
            maps[key] = ev.error_maps(values[key], target_values[key])
        mean_tgt = {m: np.nanmean(target_values[m.upper()], axis=(0, 1)) for m in ("fa", "md")}
        tissue = ev.tissue_classes(brain, mean_tgt["fa"], mean_tgt["md"])
        rois = ev.block_rois(tissue)
        summary = ev.summarize(maps, values, target_values, tissue, rois)
        summary["maps"] = {
            m: {c: np.where(tissue > 0, v, np.nan) for c, v in conds.items()}
            for m, conds in maps.items()
        }
        summary["fibres"] = _fibres(src_runs, shells, label) if has_harp else None
        _write_maps(group_dir, f"{stem}_{label}", summary["maps"], template)
        results["shells"][label] = summary
    results["stem"], results["has_harp"] = stem, has_harp
    return results


def _fibres(src_runs, shells, label) -> dict[str, float]:
    """Angular error (deg) of principal CSD peaks, source vs HARP, in WM (FA >= 0.3)."""
    from bids_harmony.bids.gradients_io import read_gradients
    from bids_harmony.dmri.metrics import csd_fodf
    from bids_harmony.evaluation.fibers import (
        angular_error_deg,
        principal_directions,
        summarize_angular_error,
    )

    errors = []
    for run in src_runs:
        m = shells[run.prefix][label]
        fa = _load(m.raw["fa"])
        wm = fa >= 0.3
        peaks = []
        for method in (None, "harp"):
            files = m.outputs.dwi(method, required=True)
            bvals, bvecs = read_gradients(files.bval, files.bvec)
            data = _load(files.dwi)
            result = csd_fodf(data, bvals, bvecs, mask=wm, shell=m.bval, fa=fa)
            peaks.append(principal_directions(result.coeffs, mask=wm))
        errors.append(angular_error_deg(*peaks)[wm])
    return summarize_angular_error(np.concatenate(errors) if errors else np.empty(0))


def _write_maps(group_dir: Path, stem: str, maps, template: Path) -> None:
    import nibabel as nb

    from bids_harmony.bids.derivatives import group_map_name
    from bids_harmony.bids.io import save_nifti

    affine = nb.load(template).affine
    for metric, conditions in maps.items():
        for cond, array in conditions.items():
            name = group_map_name(stem, cond, metric)
            save_nifti(nb.Nifti1Image(array.astype(np.float32), affine), group_dir / name)


def run_group(config: Config) -> int:
    """Run the group level; returns the exit code."""
    from bids_harmony import __version__
    from bids_harmony.bids.group_inputs import select_traveling
    from bids_harmony.evaluation import report, tables
    from bids_harmony.workflows.boilerplate import cite_group
    from bids_harmony.workflows.run import discover_study

    start = time.perf_counter()
    study = discover_study(config)
    target, sources = group_sites(config, study)
    config = dataclasses.replace(config, target_site=target)
    group_dir = config.output_dir / "group"
    work = config.work_dir / f"bids_harmony_{__version__}" / "group"
    excluded: list[tuple[str, str]] = []
    notes = list(NOTES)
    figures, table_frames, fibre_rows = {}, {}, {}
    done = 0
    for source in sources:
        for sel in select_traveling(study, source, target):
            excluded.extend(tuple(item.split(": ", 1)) for item in sel.skipped)
            if len(sel.subjects) < 2:
                notes.append(
                    f"{source} -> {target}"
                    + (f" acq-{sel.acq}" if sel.acq else "")
                    + f": {len(sel.subjects)} traveling subject(s) with two sessions at each site; "
                    "the evaluation needs at least 2" + ("" if sel.subjects else ": skipped")
                )
                if not sel.subjects:
                    continue
            scenario = _scenario(
                config, study, sel, group_dir, work / f"{source}_{target}", excluded
            )
            if scenario is None:
                continue
            done += 1
            if not scenario["has_harp"]:
                notes.append(f"{source}: no HARP outputs; run 'train' then 'participant'.")
            for label, summary in scenario["shells"].items():
                key = f"{scenario['stem']}_{label}"
                for name, frame in (
                    ("table2", tables.table2(summary["table2"])),
                    ("table3", tables.table3(summary["table3"])),
                    ("ttests", tables.ttests_table(summary["ttests"])),
                ):
                    tables.write_table(frame, group_dir / f"{key}_{name}.tsv", {})
                    table_frames[f"{key}: {name}"] = frame
                if summary["fibres"] is not None:
                    fibre_rows[key] = summary["fibres"]
                figures[f"{key}: standard error maps"] = report.standard_error_figure(
                    summary["maps"], group_dir / f"{key}_stderr.png"
                )
                for tissue, roi_values in _by_tissue(summary["roi_errors"]).items():
                    stars = {
                        (metric, a, b): test.pvalue
                        for (metric, t, (a, b)), test in summary["ttests"].items()
                        if t == tissue
                    }
                    figures[f"{key}: {tissue} ROIs"] = report.roi_boxplot_figure(
                        roi_values,
                        group_dir / f"{key}_roi-{tissue}.png",
                        tissue=tissue,
                        significance=stars,
                    )
    if not done:
        raise NoDataError(
            "no traveling subject has two sessions at the source and at the target site; "
            "the group level needs at least one (two or more for meaningful numbers). "
            + " ".join(f"{who}: {why}." for who, why in excluded)
        )
    if fibre_rows:
        frame = tables.table4(fibre_rows)
        tables.write_table(frame, group_dir / "table4_fibres.tsv", {})
        table_frames["Fibre orientation: source vs HARP (WM)"] = frame
    methods = cite_group(config, target=target, sources=sources, harp=bool(fibre_rows))
    html = report.write_html_report(
        group_dir / "report.html",
        title=f"bids_harmony group report: harmonization to {target}",
        tables=table_frames,
        figures=figures,
        notes=notes,
        excluded=excluded,
        models_dir=config.output_dir / "models",
        methods=methods,
    )
    LOGGER.info("Group level finished in %.1f s; report: %s", time.perf_counter() - start, html)
    return 0


def _by_tissue(roi_errors) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for metric, per_tissue in roi_errors.items():
        for tissue, conditions in per_tissue.items():
            out.setdefault(tissue, {})[metric] = conditions
    return out
