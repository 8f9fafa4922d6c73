"""The group level's cohort checks of ComBat: site effect left, covariate effects kept.

For every ComBat model in ``OUT/models`` (``train --method combat``), the human
sessions of its sites with participant-level ComBat outputs are read in the model's
template space (``space-<S>`` and ``space-<S>_desc-combat`` maps) and, per map:

- the share of feature voxels with a significant site effect (F-test of site
  adjusted for the model's covariates, p < 0.05) before and after;
- the accuracy of a cross-validated site classifier on the region means
  (``*_desc-combat_regions.tsv``) before and after, with chance beside it;
- for each numeric covariate (e.g. age), its mean slope over the WM feature voxels:
  before with site in the model (the classic estimate on unharmonized data), before
  without site (biased when the covariate differs between sites), after without site.

Sessions the model was fitted on are flagged: on them the checks are in-sample and
optimistic (ComBat equalizes the site means of exactly these sessions, so the
classifier can fall below chance).  Written: ``group/combat_cohort.tsv`` (+ ``.json``)
and figures; :func:`cohort_section` gives the report's HTML section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_harmony.config import Config

LOGGER = logging.getLogger(__name__)
ALPHA = 0.05


@dataclass
class CohortCheck:
    """The cohort checks of one ComBat model (see the module docstring)."""

    model: str
    sites: dict[str, int]
    n_sessions: int
    in_sample: int
    rows: list[dict[str, object]] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


def _sessions(config: Config, study, card: dict) -> list:
    """Runs of the model's protocol and sites with every ComBat output of the model."""
    from bids_harmony.bids.derivatives import RunNames

    space, acq, sites = card.get("space", "studyFA"), card.get("acq"), set(card.get("sites", []))
    labels = card.get("shells", [])
    out = []
    for run in study.runs:
        if run.is_phantom or run.site not in sites or run.entities.get("acquisition") != acq:
            continue
        names = RunNames.of_run(run)
        files = [
            config.output_dir / names.space_map(label, kind, space, method)
            for label in labels
            for kind in ("fa", "md")
            for method in (None, "combat")
        ]
        if all(f.is_file() for f in files) and (
                config.output_dir / names.regions(space, "combat")).is_file():  # fmt: skip
            out.append(run)
    return out


def _regions(path: Path) -> dict[str, dict[str, float]]:
    """``{"before"|"after": {"<region>_<map>": value}}`` of a regions table."""
    from bids_harmony.bids.tsv import read_tsv

    table = read_tsv(path, what="ComBat regions table")
    out: dict[str, dict[str, float]] = {"before": {}, "after": {}}
    for row in table.rows:
        for when in out:
            value = row.get(when)
            out[when][f"{row['region']}_{row['map']}"] = float(value) if value else np.nan
    return out


def check_model(config: Config, study, model_file: Path, figures_dir: Path) -> CohortCheck | None:
    """The cohort checks of one model; None when fewer than two sites have two sessions."""
    import nibabel as nb

    from bids_harmony.bids.covariates import read_covariates
    from bids_harmony.bids.derivatives import RunNames
    from bids_harmony.evaluation import cohort as ev
    from bids_harmony.evaluation.cohort_figures import (
        classifier_accuracy_figure,
        pvalue_histogram_figure,
    )
    from bids_harmony.methods.combat.maps import load_combat_maps

    model, card = load_combat_maps(model_file)
    runs = _sessions(config, study, card)
    sites = [r.site for r in runs]
    counts = {s: sites.count(s) for s in sorted(set(sites))}
    if len([c for c in counts.values() if c >= 2]) < 2:
        LOGGER.warning("ComBat cohort checks of %s skipped: sessions with ComBat outputs per "
                       "site %s (two sites with two sessions needed).", model_file.name,
                       counts or "none")  # fmt: skip
        return None
    names_cov = list(card.get("covariates", {}))
    covariates = read_covariates(config.bids_dir, [(r.subject, r.session) for r in runs],
                                 names_cov) or None  # fmt: skip
    trained = set(card.get("training_sessions", []))
    labels_of = [f"sub-{r.subject}" + (f" ses-{r.session}" if r.session else "") for r in runs]
    check = CohortCheck(model_file.stem, counts, len(runs),
                        sum(label in trained for label in labels_of))  # fmt: skip
    space, mask = card.get("space", "studyFA"), model.mask
    wm = (model.regions[mask] // 1000) == 1
    p_plot: dict[str, np.ndarray] = {}
    p_before_plot = None
    for name in model.maps:
        label, kind = name.split("/")
        if kind not in ("fa", "md") or label == "dki":  # per-shell FA/MD (not dki/fa, dki/md)
            continue
        data = {}
        for method in (None, "combat"):
            data[method or "none"] = np.stack([
                np.asarray(nb.load(config.output_dir / RunNames.of_run(r).space_map(
                    label, kind, space, method)).dataobj, np.float64)[mask] for r in runs
            ])  # fmt: skip
        p_before = ev.site_effect_pvalues(data["none"], sites, covariates)
        p_after = ev.site_effect_pvalues(data["combat"], sites, covariates)
        summary = ev.site_effect_summary(p_before, p_after, alpha=ALPHA)
        row: dict[str, object] = {
            "model": check.model, "map": f"{label}_{kind}", "n_sessions": len(runs),
            "n_in_sample": check.in_sample, "n_features": summary["n_tested"],
            "site_effect_before": summary["fraction_significant_before"],
            "site_effect_after": summary["fraction_significant_after"],
        }  # fmt: skip
        for cov in names_cov:
            if covariates is None or not all(isinstance(v, float) for v in covariates[cov]):
                continue
            with_site = ev.covariate_slopes(data["none"], covariates, cov, sites=sites)
            pooled = ev.covariate_slopes(data["none"], covariates, cov)
            after = ev.covariate_slopes(data["combat"], covariates, cov)
            row.update({f"{cov}_slope_before_site_adjusted": float(np.nanmean(with_site[wm])),
                        f"{cov}_slope_before_pooled": float(np.nanmean(pooled[wm])),
                        f"{cov}_slope_after": float(np.nanmean(after[wm]))})  # fmt: skip
        check.rows.append(row)
        if p_before_plot is None:
            p_before_plot, p_plot = p_before, {"combat": p_after}
    regions = [_regions(config.output_dir / RunNames.of_run(r).regions(space, "combat"))
               for r in runs]  # fmt: skip
    keys = sorted(set.intersection(*(set(t["before"]) for t in regions)))
    accuracy = {}
    folds = max(2, min(5, min(counts.values())))
    for when in ("before", "after"):
        table = np.array([[t[when][k] for k in keys] for t in regions])
        accuracy[when] = ev.site_classifier_accuracy(table, sites, covariates, folds=folds,
                                                     seed=config.seed)  # fmt: skip
    for row in check.rows:
        row.update({"classifier_before": accuracy["before"]["accuracy"],
                    "classifier_after": accuracy["after"]["accuracy"],
                    "classifier_chance": accuracy["before"]["chance"]})  # fmt: skip
    figures_dir.mkdir(parents=True, exist_ok=True)
    if p_before_plot is not None:
        check.figures["Site-effect p-values per voxel (first map), before and after ComBat"] = (
            pvalue_histogram_figure(p_before_plot, p_plot,
                                    figures_dir / f"{check.model}_pvalues.png")
        )  # fmt: skip
    check.figures["Site classifier on region means (cross-validated)"] = (
        classifier_accuracy_figure({"none": accuracy["before"], "combat": accuracy["after"]},
                                   figures_dir / f"{check.model}_classifier.png",
                                   chance=accuracy["before"]["chance"])
    )  # fmt: skip
    return check


def run_cohort_checks(config: Config, study, group_dir: Path) -> list[CohortCheck]:
    """Every ComBat model's checks; writes ``group/combat_cohort.tsv``."""
    import pandas as pd

    from bids_harmony.evaluation.tables import write_table

    models = sorted((config.output_dir / "models").glob("combat_tgt-*.safetensors"))
    figures = group_dir / "figures"
    checks = [c for m in models if (c := check_model(config, study, m, figures)) is not None]
    rows = [row for c in checks for row in c.rows]
    if rows:
        write_table(pd.DataFrame(rows), group_dir / "combat_cohort.tsv", DICTIONARY)
    return checks


DICTIONARY: dict[str, object] = {
    "Description": "Cohort checks of ComBat: site effect left and covariate slopes kept.",
    "model": {"Description": "The ComBat model file (OUT/models)."},
    "map": {"Description": "<shell>_<map> harmonized in the model's template space."},
    "n_sessions": {"Description": "Human sessions with ComBat outputs of the model's sites."},
    "n_in_sample": {
        "Description": "Of them, sessions the model was fitted on (in-sample: "
        "the checks are optimistic)."
    },
    "n_features": {"Description": "Feature voxels tested (finite, non-constant)."},
    "site_effect_before": {
        "Description": f"Share of voxels with a site effect, p < {ALPHA} "
        "(F-test adjusted for the covariates), unharmonized."
    },
    "site_effect_after": {"Description": "The same after ComBat."},
    "classifier_before": {
        "Description": "Cross-validated accuracy of a site classifier on "
        "all region means (covariates regressed out within folds)."
    },
    "classifier_after": {"Description": "The same after ComBat (region model)."},
    "classifier_chance": {"Description": "Share of the largest site (chance accuracy)."},
}


def report_parts(checks: Sequence[CohortCheck]) -> tuple[dict, dict, list[str]]:
    """The report's tables ``{caption: DataFrame}``, figures and notes of the checks."""
    import pandas as pd

    tables, figures, notes = {}, {}, []
    for check in checks:
        tables[f"ComBat cohort checks: {check.model}"] = pd.DataFrame(check.rows).drop(
            columns="model")
        figures.update({f"{check.model}: {caption}": path
                        for caption, path in check.figures.items()})  # fmt: skip
        sites = ", ".join(f"{k} {v}" for k, v in check.sites.items())
        notes.append(
            f"{check.model}: {check.n_sessions} session(s) ({sites}); {check.in_sample} were "
            "in the ComBat fit, so on them the "
            "cohort checks are in-sample and optimistic (ComBat equalizes the site means of "
            "exactly those sessions; the classifier can fall below chance). Check held-out "
            "sessions (fit on controls, apply to the rest) for a fair estimate."
        )
    return tables, figures, notes
