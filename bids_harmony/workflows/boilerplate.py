"""Methods text of every level: what was run, with citations and software versions.

As niworkflows does with ``__desc__``, each participant workflow builder sets a
Markdown paragraph on the Nipype workflow it returns (``workflow.__desc__``, and
``workflow.__postdesc__`` for what comes after its sub-workflows), composed by the
functions below from the options it was built with: which preprocessing backend
and steps, the SH order, whether GFA is computed, whether HARP is applied.
:func:`workflow_paragraphs` collects them from a built graph.  The train and
group levels describe themselves with :func:`train_paragraphs` and
:func:`group_paragraphs` (from the model cards and their settings).

Texts cite with pandoc keys, ``[@dipy]`` or ``[@eddy; @topup]``, resolved by
:mod:`.references` (the reference table, :func:`~.references.cite`,
:func:`~.references.write_level_citation`).

Nothing here imports torch until a method's references are resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bids_harmony import CODE_URL, __version__
from bids_harmony.workflows.references import (
    fsl_version,
    software_versions,
    write_level_citation,
)

LOGGER = logging.getLogger(__name__)

#: How a study's sites were decided (``Study.site_source``), in a sentence.
_SITE_SOURCES = {
    "site-map": "from a site map (participant, session and site)",
    "sidecar": "from the scanner identity in the JSON sidecars (model name, told apart by "
    "field strength and serial number where one model occurs twice)",
    "session": "from the session labels",
}


# --------------------------------------------------------------------------- workflows


def workflow_paragraphs(workflow: Any) -> list[str]:
    """The paragraphs of a Nipype workflow and its sub-workflows, without repeats.

    A workflow contributes its ``__desc__``, then its sub-workflows' paragraphs
    (by name), then its ``__postdesc__`` (niworkflows' ``visit_desc`` order).
    Sub-workflows that say different things (one run with topup, one without;
    one harmonized, one not) are merged keeping each one's order: a paragraph
    new to the text is put before the next paragraph it precedes in its own
    sub-workflow.
    """
    own = [getattr(workflow, "__desc__", "") or ""]
    children: list[list[str]] = []
    names = sorted({name.split(".")[0] for name in workflow.list_node_names() if "." in name})
    for name in names:
        child = workflow.get_node(name)
        if hasattr(child, "list_node_names"):
            children.append(workflow_paragraphs(child))
    merged: list[str] = []
    for sequence in children:
        for i, paragraph in enumerate(sequence):
            if paragraph in merged:
                continue
            following = [p for p in sequence[i + 1 :] if p in merged]
            merged.insert(merged.index(following[0]) if following else len(merged), paragraph)
    post = [getattr(workflow, "__postdesc__", "") or ""]
    out: list[str] = []
    for block in (*own, *merged, *post):
        for paragraph in block.split("\n\n"):
            if paragraph.strip() and paragraph.strip() not in out:
                out.append(paragraph.strip())
    return out


def participant_desc(*, site_source: str, b_tolerance: float, b0_threshold: float) -> str:
    """The opening paragraph of the participant level."""
    sites = _SITE_SOURCES.get(site_source, f"by rule {site_source!r}")
    return (
        f"Diffusion MRI data were processed with bids_harmony {__version__} ({CODE_URL}), "
        "a BIDS App [@bids] whose pipelines are built with Nipype [@nipype] on DIPY "
        "[@dipy]. The input dataset was indexed with PyBIDS [@pybids]; the site of each "
        f"session was taken {sites}. Diffusion-weighted volumes were grouped into shells "
        f"of b-values within {b_tolerance:g} s/mm² of each other, volumes with "
        f"b < {b0_threshold:g} s/mm² being b = 0 volumes."
    )


def python_preproc_desc(
    *, backend: str, denoise: str, remove_gibbs: bool, motion_correction: bool
) -> str:
    """Preprocessing of the Python backend (or of ``--preproc none``) and its mask."""
    mask = (
        "A brain mask was computed with DIPY's `median_otsu` on the mean b = 0 image "
        "(largest connected component, holes filled)."
    )
    if backend == "none":
        return (
            "The input series were used as given, without preprocessing (`--preproc none`: "
            f"data already preprocessed). {mask}"
        )
    steps = []
    if denoise == "mppca":
        steps.append("Marchenko-Pastur PCA denoising [@mppca]")
    elif denoise == "patch2self":
        steps.append("self-supervised denoising by Patch2Self [@patch2self], linear model")
    if remove_gibbs:
        steps.append("Gibbs-ringing removal by local sub-voxel shifts [@gibbs]")
    if motion_correction:
        steps.append("rigid registration of every volume to the mean b = 0 image (mutual "
                     "information), with the b-vectors rotated accordingly")  # fmt: skip
    if steps:
        done = "; ".join(steps)
        return (
            f"Preprocessing used DIPY [@dipy]: {done}. Susceptibility and eddy-current "
            f"distortions were not corrected. {mask}"
        )
    return (
        "The signal was not denoised, nor corrected for Gibbs ringing, motion, "
        f"susceptibility or eddy-current distortions. {mask}"
    )


def fsl_preproc_desc(*, has_reverse_pe: bool, eddy: str, slm: str, topup_config: str) -> str:
    """FSL preprocessing of one run (``fsl_preproc.init_fsl_preproc_wf``)."""
    options = f"`{Path(eddy).name} --repol --data_is_shelled --slm={slm}`"
    if has_reverse_pe:
        return (
            "Runs with b = 0 volumes of opposite phase encoding (from `fmap/` EPI images or a "
            "reversed `dir-` run) were preprocessed with FSL: topup [@topup] (configuration "
            f"`{topup_config}`) estimated the susceptibility-induced field from these b = 0 "
            f"volumes, and eddy [@eddy] ({options}, outlier slices replaced) corrected "
            "susceptibility and eddy-current distortions and head motion in one "
            "resampling, rotating the b-vectors. The brain mask was computed with BET "
            "[@bet] (f = 0.2) on the mean of topup's corrected b = 0 volumes."
        )
    return (
        "Runs without b = 0 volumes of opposite phase encoding were preprocessed with FSL "
        f"eddy [@eddy] ({options}, outlier slices replaced), which corrected eddy-current "
        "distortions and head motion and rotated the b-vectors; susceptibility distortions "
        "were not corrected. The brain mask was computed with BET [@bet] (f = 0.2) on the "
        "mean b = 0 image."
    )


def _sci(value: float) -> str:
    """``1e-05`` → ``1e-5``."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def dwi_postdesc(
    *,
    sh_order: int,
    gfa: bool,
    harmonized: bool,
    rish: bool = False,
    combat: bool = False,
    dki: bool = False,
) -> str:
    """SH fit, DTI/CSD metrics and the models applied (HARP, LinearRISH), after preprocessing."""
    from bids_harmony.dmri import sh
    from bids_harmony.dmri.bands import MIN_DIRECTIONS, n_coeffs

    b_ref = f"{sh.B_REF:g}"
    basis = f"DIPY's {'legacy ' if sh.SH_LEGACY else ''}`{sh.SH_BASIS}` basis"
    paragraphs = [
        f"For every shell, the signal was divided by the mean b = 0 signal, clipped to "
        f"[0, 1] and mapped to b = {b_ref} s/mm² (E' = E^({b_ref}/b)), then represented by "
        f"real, symmetric spherical harmonics (SH) up to order {sh_order} "
        f"({n_coeffs(sh_order)} coefficients, {basis}) fitted by least squares with a "
        f"Laplace-Beltrami penalty, λ = {_sci(sh.LB_LAMBDA)} [@descoteaux]; a shell with fewer "
        "directions than coefficients was fitted at the highest even order it supports."
    ]
    metrics = (
        f"For every shell with at least {MIN_DIRECTIONS} directions, a diffusion tensor "
        "[@dti] was fitted to the b = 0 volumes and that shell by weighted linear least "
        "squares [@wls], giving fractional anisotropy (FA) and mean diffusivity (MD) maps"
    )
    if gfa:
        # 0.7: the FA threshold of the response voxels (dmri.metrics.csd_fodf default).
        metrics += (
            f"; fibre orientation distributions (SH order up to {sh_order}; single-fibre "
            "response from the voxels with FA > 0.7) were estimated by constrained spherical "
            "deconvolution [@csd], and from them the generalized fractional anisotropy, GFA "
            "[@gfa]"
        )
    paragraphs.append(metrics + ".")
    if dki:
        from bids_harmony.dmri import dki as dki_model

        low, high = dki_model.RANGES["mk"]
        paragraphs.append(
            "For runs with at least two non-zero shells, diffusion and kurtosis tensors "
            "[@dki] were fitted to the b = 0 volumes and all shells together by weighted "
            "linear least squares [@dkiwls] (DIPY), giving MD, AD, RD and FA of the "
            "diffusion tensor, mean, axial and radial kurtosis (MK, AK, RK; analytical "
            f"formulas [@tabesh]) and kurtosis FA; kurtosis values were clipped to "
            f"[{low:g}, {high:g}], diffusivities to [0, 3 µm²/ms] and anisotropies to [0, 1]."
        )
    if harmonized:
        paragraphs.append(
            "Runs of a source site with a trained HARP model [@harp] were harmonized: the SH "
            "coefficients of every shell were scaled order band by order band by the "
            "network's predictions, the diffusion-weighted series was rebuilt from the "
            "harmonized coefficients on the run's own gradient table (b = 0 volumes "
            "unchanged), and the maps above were computed again from it."
        )
    if rish:
        paragraphs.append(
            "Runs of a source site with a trained LinearRISH model [@rish] were harmonized "
            "too: the run's FA map (shell closest to b = 1000 s/mm²) was registered with ANTs "
            "to the model's FA template, the model's per-band scale maps were warped to the "
            "run and applied to its SH coefficients, and the diffusion-weighted series and "
            "maps were computed again from them."
        )
    if combat:
        paragraphs.append(
            "Human runs of a site in a trained ComBat model [@combat] were harmonized: the "
            "run's FA map was registered with ANTs to the model's template, its FA, MD and "
            "GFA maps (and DKI maps, when the model has them) were warped there, the site's "
            "additive and multiplicative effects estimated on the cohort were removed voxel "
            "by voxel with the run's covariates kept, and the correction was warped back and "
            "added to the native maps."
        )
    return "\n\n".join(paragraphs)


def combat_train_paragraph(
    *,
    target: str,
    sites: Sequence[str],
    n_sessions: int,
    covariates: Sequence[str],
    variant: str,
    eb: str,
    dki: bool = False,
) -> str:
    """The train level's paragraph of ComBat (``dki``: the DKI maps were features too)."""
    kept = (f"the effects of {', '.join(covariates)} kept" if covariates
            else "no covariate modelled")  # fmt: skip
    return (
        f"ComBat models [@combat] ({variant}; empirical Bayes: {eb}) were fitted on "
        f"{n_sessions} human sessions of the sites {', '.join(sites)}, with {target} as the "
        f"reference site left unchanged and {kept}. Each session's FA map was registered "
        "with ANTs SyN [@syn] to a common FA template; FA, MD and GFA"
        + (" of every shell and the eight DKI maps" if dki else "")
        + " were harmonized voxel by voxel (voxels inside the brain of at least 90% of the "
        "sessions) and as region means."
    )


def cite_participant(config: Any, workflow: Any, backend: str) -> Path:
    """Write the participant section of ``OUT/logs/CITATION.md`` from the built graph."""
    paragraphs = workflow_paragraphs(workflow)
    harmonized = any("[@harp]" in p for p in paragraphs)
    versions = software_versions(*(("torch",) if harmonized else ()))
    if backend == "fsl" and (version := fsl_version()):
        versions["FSL"] = version
    return write_level_citation(config.output_dir, "participant", paragraphs, versions)


# --------------------------------------------------------------------------- train


def _read_card(output_dir: Path, source: str, target: str) -> dict[str, Any] | None:
    from bids_harmony.methods.catalog import MODELS_DIR, ModelSelectionError, model_stem, read_card

    path = output_dir / MODELS_DIR / f"{model_stem(source, target)}.safetensors"
    try:
        return read_card(path)
    except ModelSelectionError:
        return None


def _schedule(recipe: Mapping[str, Any]) -> str:
    schedule = recipe.get("lr_schedule")
    if schedule == "cosine":
        return f"linear warm-up over {recipe.get('warmup')} iterations, then cosine decay"
    if schedule == "step":
        return "decayed ten-fold at 60 % and 85 % of the iterations"
    return "constant"


def _recipe_text(recipe: Mapping[str, Any]) -> str:
    """How the network was trained, from a card's ``training.recipe``."""
    optimizer = {"adam": "Adam", "adamw": "AdamW"}.get(str(recipe.get("optimizer")), "Adam")
    head = (
        f"{optimizer} (learning rate {float(recipe.get('lr', 0)):g}, {_schedule(recipe)}; "
        f"{int(recipe.get('iterations', 0)):,} iterations of {int(recipe.get('batch_size', 0)):,} "
        f"voxels; seed {recipe.get('seed', 0)})"
    )
    if recipe.get("noise_aware"):
        loss = (
            "a noise-aware loss: the noise variance of every coefficient, estimated from a "
            "rescan of the source phantom, was subtracted from the squared error"
            + (", the scales being predicted from one scan and applied to the other" if
               recipe.get("cross_fit") else "")
            + f"; order bands whose noise-corrected power was below "
            f"{float(recipe.get('min_band_snr', 0)):g} standard errors were held at scale 1 "
            f"and the others pulled weakly towards 1 (weight "
            f"{float(recipe.get('identity_prior', 0)):g})"
        )  # fmt: skip
    else:
        loss = "the mean squared error between harmonized source and target coefficients"
    return f"{head}, on {loss}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _voxel_text(selection: Sequence[Mapping[str, Any]], validation: Mapping[str, Any]) -> str:
    """Training-voxel selection and validation split, from the cards' entries."""
    from bids_harmony.methods.harp.voxels import C00_PERCENTILE

    rules = []
    for v in selection:
        if v.get("rule") == "window":
            lo, hi = v.get("c00_window", (1.0, 2.0))
            rule = f"{float(lo):g} < C00 < {float(hi):g}, the window of the authors' code"
        else:
            rule = (f"C00 above the {C00_PERCENTILE:g}th percentile of the in-vivo C00 of the "
                    "source site, as in the paper")  # fmt: skip
        if rule not in rules:
            rules.append(rule)
    erode = sorted({int(v.get("erode", 1)) for v in selection})
    peeled = (
        f"{'/'.join(map(str, erode))} voxel(s) were peeled off the boundary of each "
        "connected component (never more than leaves its core) and "
        if any(erode)
        else ""
    )
    text = (
        "Training voxels were phantom voxels inside the masks of every scan of a pair, "
        "with a tissue-like zeroth-order SH coefficient C00 at both sites"
        + (f" ({'; '.join(rules)})" if rules else "")
        + f"; {peeled}partial-volume voxels between materials were dropped."
    )
    if "fraction" in validation and "block_voxels" in validation:
        side = int(validation["block_voxels"])
        text += (
            f" A random {100 * float(validation['fraction']):g} % of the {side} × {side} × "
            f"{side}-voxel blocks of every pair was held out for validation."
        )
    return text


def train_paragraphs(
    *,
    target: str,
    sources: Sequence[str],
    registration: str,
    cards: Mapping[str, Mapping[str, Any] | None],
) -> list[str]:
    """The train level's paragraphs (HARP), from the model cards written by it.

    ``cards`` maps each source site to its model card (None when no model was
    written); ``registration`` is ``"ants"`` or ``"flirt"``.
    """
    from bids_harmony.methods.registry import get_method

    harp = get_method("harp")
    pairs = ", ".join(f"{s} → {target}" for s in sources)
    refine = (
        "FSL FLIRT [@flirt] (6 degrees of freedom, correlation ratio)"
        if registration == "flirt"
        else "ANTs (antspyx; Mattes mutual information)"
    )
    paragraphs = [
        f"{harp.description.rstrip('.')} [@{harp.name}].",
        f"One model was trained per source site and target site ({pairs}), from the "
        "SH coefficients of the phantom sessions only (participant level, above). Phantom "
        "scans were paired across the two sites by phantom and acquisition protocol. "
        "Each target scan, and a rescan of the source scan when there was one, was "
        "registered rigidly to the source scan by a multi-start search on the "
        "diffusion-attenuation contrast (unchanged by bias fields and echo time) refined "
        f"with {refine}; its SH coefficients were resampled and rotated into the source "
        "frame. A pair whose registration failed the acceptance test was excluded.",
    ]
    written = {s: c for s, c in cards.items() if c}
    training = [dict(c.get("training", {})) for c in written.values()]
    selection = [dict(t.get("voxel_selection", {})) for t in training]
    validation = next((t["validation"] for t in training if t.get("validation")), {})
    paragraphs.append(_voxel_text(selection, validation))
    recipes = [dict(t["recipe"]) for t in training if t.get("recipe")]
    if recipes:
        network = (
            "The network (seven fully connected layers of 160 to 600 units, the input "
            "coefficients concatenated to the inputs of layers 3, 5 and 7) was trained with "
            f"PyTorch [@pytorch] using {_recipe_text(recipes[0])}"
        )
        if recipes[0].get("name") == "paper":
            network += " (the paper's recipe)"
        paragraphs.append(network + ".")
    facts = []
    for source, card in written.items():
        t = dict(card.get("training", {}))
        facts.append(
            f"{source} → {card.get('target_site', target)} from "
            + _plural(len(t.get("pairs", ())), "phantom pair")
            + (f" ({len(t['excluded_pairs'])} excluded)" if t.get("excluded_pairs") else "")
            + f", {_plural(int(t.get('n_train_voxels', 0)), 'training voxel')} and "
            + _plural(int(t.get("n_validation_voxels", 0)), "validation voxel")
            + (f", on {t['device']}" if t.get("device") else "")
        )
    if facts:
        paragraphs.append("Models trained: " + "; ".join(facts) + ".")
    missing = [s for s in sources if not cards.get(s)]
    if missing:
        paragraphs.append("No model was written for " + ", ".join(missing) + ".")
    return paragraphs


def cite_train(config: Any, *, target: str, sources: Sequence[str], registration: str) -> Path:
    """Write the train section of ``OUT/logs/CITATION.md`` (HARP: from the model cards)."""
    cards = {s: _read_card(config.output_dir, s, target) for s in sources}
    paragraphs = train_paragraphs(
        target=target, sources=sources, registration=registration, cards=cards
    )
    extra = ("torch",) + (("antspyx",) if registration == "ants" else ())
    versions = software_versions(*extra)
    if registration == "flirt" and (version := fsl_version()):
        versions["FSL"] = version
    return write_level_citation(config.output_dir, "train", paragraphs, versions)


# --------------------------------------------------------------------------- group


def group_paragraphs(
    *,
    target: str,
    sources: Sequence[str],
    harp: bool,
    template: str | None,
    transform: str = "SyN",
    rish: str = "fitted",
) -> list[str]:
    """The group level's paragraphs: registration, LinearRISH, Eq. 2, fibres.

    ``harp``: whether HARP-harmonized outputs were evaluated; ``template``: the
    ``--template`` given, None when built from the target-site sessions; ``rish``:
    ``"fitted"`` (here, on the evaluated subjects), ``"model"`` (a trained model
    applied at the participant level) or ``"none"`` (not evaluated).
    """
    from bids_harmony.methods.registry import get_method

    rish_method = get_method("rish")
    registration = (
        "SyN symmetric diffeomorphic registration [@syn]"
        if transform == "SyN"
        else "affine registration"
    )
    if template is None:
        template_text = (
            "a study FA template built from the target-site sessions (a rigid mean, then "
            "rounds of registration, averaging and shape update, as ANTs' "
            "`antsMultivariateTemplateConstruction2`)"
        )
    else:
        template_text = f"the FA template `{template}`"
    conditions = ("without harmonization" + (", with LinearRISH" if rish != "none" else "")
                  + (" and with HARP" if harp else ""))  # fmt: skip
    rish_text = {
        "fitted": "LinearRISH was fitted on the same traveling subjects it was evaluated on, "
        "a best case, whereas HARP saw phantoms only.",
        "model": "LinearRISH came from a model trained beforehand on traveling subjects "
        "(train --method rish) and applied at the participant level.",
    }
    sources_text = ("site " if len(sources) == 1 else "sites ") + ", ".join(sources)
    paragraphs = [
        f"Harmonization to the target site {target} was evaluated on traveling subjects "
        f"scanned in two sessions at the source {sources_text} and two at the "
        "target site. The FA map of every session (the shell closest to b = 1000 s/mm²) "
        f"was registered with ANTs (antspyx), by {registration}, to {template_text}; the "
        "transforms were applied to the MD and GFA maps; a session whose registered FA "
        "correlated poorly with the template was excluded.",
        *(
            [f"{rish_method.description.rstrip('.')} [@{rish_method.name}]. " + rish_text[rish]]
            if rish != "none"
            else []
        ),
        "Scan-rescan and inter-scanner variability of FA, MD and GFA were measured by the "
        "standard error of the HARP paper [@harp], its Eq. 2: σₑ² = Σᵢ Σⱼ (yᵢⱼ − ȳᵢ)² / (N(K − 1)) "
        "over N subjects, with K = 2 sessions at one site (scan-rescan, at each site) and "
        f"K = 4, two at each site (inter-scanner, {conditions}). Voxel-wise maps in "
        "template space were averaged over the brain without cerebrospinal fluid "
        "(target-site mean MD > 1.5 µm²/ms); white matter was FA ≥ 0.3 and grey matter the "
        "rest, and regions of interest were these classes cut by a 3 × 3 × 3 grid of blocks, "
        "whose standard errors were compared between conditions by paired t-tests.",
    ]
    if harp:
        paragraphs.append(
            "Preservation of fibre orientations was measured, in white matter (FA ≥ 0.3), "
            "by the angle between the principal peaks of the CSD [@csd] fibre orientation "
            "distributions of the source data before and after HARP harmonization."
        )
    return paragraphs


def cite_group(
    config: Any,
    *,
    target: str,
    sources: Sequence[str],
    harp: bool,
    rish: str = "fitted",
    traveling: bool = True,
    combat: bool = False,
    cohort: bool = False,
) -> str:
    """Write the group section of ``OUT/logs/CITATION.md``; returns the whole file's text.

    The returned Markdown (every level run so far) is the report's "Methods".
    ``traveling``: the Eq. 2 evaluation ran; ``combat``: ComBat outputs were part of it;
    ``cohort``: ComBat's cohort checks ran.
    """
    paragraphs = group_paragraphs(
        target=target, sources=sources, harp=harp,
        template=None if config.template is None else str(config.template),
        transform=config.group_transform, rish=rish,
    ) if traveling else []  # fmt: skip
    if combat:
        paragraphs.append(
            "ComBat-harmonized maps [@combat] (desc-combat, fitted on the whole cohort, these "
            "traveling subjects included) were evaluated in the same way."
        )
    if cohort:
        paragraphs.append(
            "For every ComBat model, the site effect left was measured on the cohort in the "
            "model's template space: per voxel, an F-test of site adjusted for the model's "
            "covariates (share of voxels with p < 0.05), and the cross-validated accuracy of a "
            "multinomial logistic-regression site classifier on the region means (covariates "
            "regressed out within folds); covariate effects kept were measured as the mean "
            "slope over white-matter voxels before (with and without site in the model) and "
            "after ComBat."
        )
    path = write_level_citation(
        config.output_dir, "group", paragraphs, software_versions("antspyx")
    )
    return path.read_text(encoding="utf-8")
