"""Write a simulated cohort study (:mod:`.cohort`) as a BIDS dataset with its truth.

Cohort-only: no phantoms, no traveling subjects.  The files are those of
:func:`~bids_harmony.simulate.dataset.simulate_study` for humans (one session per
subject), plus per session the site-biased truth maps (``_desc-truthsite_FA``/``_MD``)
and at the top ``cohort.json`` (design, age effect, true slopes, site effects).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bids_harmony import __version__
from bids_harmony.simulate import bids_writer as bw
from bids_harmony.simulate.brain import brain_tissue
from bids_harmony.simulate.cohort import (
    AGE_HALF_RANGE,
    AGE_SLOPES,
    COHORT_JSON,
    COHORT_SITES,
    REFERENCE_AGE,
    SITE_MAP_EFFECTS,
    SLOPE_AGES,
    CohortSubject,
    check_cohort,
    cohort_brain,
    draw_design,
    noise_rng,
    region_means,
    site_mean_age,
    subject_tissues,
    true_age_slopes,
)
from bids_harmony.simulate.dataset import (
    RunInfo,
    StudyInfo,
    _BackgroundWriter,
    _check_output,
    _participant,
    _session_row,
    _submit_run,
)
from bids_harmony.simulate.docs import COHORT_README, COHORT_TRUTH_README, site_lines, site_table
from bids_harmony.simulate.layout import PROTOCOLS, dwi_sidecar, get_size
from bids_harmony.simulate.signal_model import noiseless_signal
from bids_harmony.simulate.site_effects import noisy_image
from bids_harmony.simulate.study import (
    RunData,
    SessionData,
    gradient_table,
    session_pose,
    study_site,
)
from bids_harmony.simulate.tissue import Pose

LOGGER = logging.getLogger(__name__)
_PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}


def _truthsite_path(root: Path, subject: str, session: str, metric: str) -> Path:
    name = f"sub-{subject}_ses-{session}_desc-truthsite_{metric}.nii.gz"
    return bw.gt_dir(root, subject, session) / name


def _cohort_json(
    design: tuple[CohortSubject, ...],
    sites: tuple[str, ...],
    slopes: dict[str, dict[str, float]],
    means: dict[str, dict[str, Any]],
    size: str,
    seed: int,
) -> dict[str, Any]:
    return {
        "Generator": f"bids_harmony {__version__} simulate_cohort",
        "size": size,
        "seed": seed,
        "sites": list(sites),
        "subjects_per_site": len(design) // len(sites),
        "age_design": {
            "site_mean_age": {s: site_mean_age(k, len(sites)) for k, s in enumerate(sites)},
            "half_range": AGE_HALF_RANGE,
            "Description": "Ages at site k spread evenly over site_mean_age +- half_range "
            "(stratified uniform draws, whole years); sex balanced within each site; "
            "sex has no effect on the tissue.",
        },
        "subjects": [
            {
                "participant_id": f"sub-{s.label}",
                "session_id": f"ses-{s.session}",
                "site": s.site,
                "age": s.age,
                "sex": s.sex,
                **means[s.label],
            }
            for s in design
        ],
        "age_effect": {
            "reference_age": REFERENCE_AGE,
            "relative_slope_per_year": AGE_SLOPES,
            "true_slope_per_year": slopes,
            "slope_ages": list(SLOPE_AGES),
            "Description": "Each diffusivity d of a tissue (wm: all bundles and the "
            "background; gm) is d * (1 + relative_slope_per_year * (age - reference_age)); "
            "CSF unchanged. true_slope_per_year: slope of the mean site-free truth FA and "
            "MD (mm2/s) per region (dseg WM = 3, GM = 2) per year of age, per subject "
            "between slope_ages with its anatomy fixed, averaged over the cohort.",
        },
        "site_map_effects": {s: SITE_MAP_EFFECTS[s].to_dict() for s in sites},
        "site_map_effects_description": "For the site s imaging a subject, every tissue "
        "compartment's diffusivity (hindered/GM, fibres; not free water) becomes "
        "d' = [d_pop + scale(u) (d - d_pop)] (1 + shift(u)), with d_pop the population "
        "value at the subject's age (same anatomy), u = (q - centre) / semi_axes the "
        "voxel's normalized object coordinates (x left-right, y posterior-anterior, "
        "z inferior-superior), each field = centre + gradient_xyz . u; par_shift for the "
        "axial, perp_shift for the radial diffusivity (scale floored at 0.1, shifts at "
        "-0.5). Applied before the physical signal-level site effects.",
        "subject_means_description": "truth_*: mean site-free truth FA/MD in the "
        "subject's WM/GM (dseg of its session); site_*: the same with the site's map "
        "effects (the _desc-truthsite maps), no signal-level effects, no noise.",
    }


def simulate_cohort(
    out_dir: str | Path,
    n_per_site: int,
    *,
    sites: tuple[str, ...] = COHORT_SITES,
    size: str = "tiny",
    seed: int = 0,
    force: bool = False,
    write_noiseless: bool = True,
) -> StudyInfo:
    """Simulate and write a cohort study: ``n_per_site`` subjects at each site.

    Parameters
    ----------
    out_dir : path
        Dataset root (created; must be empty unless ``force``).
    n_per_site : int
        Subjects per site (at least 2), each scanned once (``ses-<site>1``).
    sites : tuple of str
        At least 2 different scanners of
        :data:`~bids_harmony.simulate.site_effects.VENDORS`; the first has the
        youngest subjects (default ``("GE", "Prisma", "Skyra")``: mean ages 30, 45, 60).
    size : {"tiny", "demo", "full"}
        Grid of the heads (as in :func:`~bids_harmony.simulate.dataset.simulate_study`).
    seed : int
        Seeds every random quantity; the same seed gives byte-identical files.
    force : bool
        Write into a non-empty directory.
    write_noiseless : bool
        Also write each run's noise-free image under ``sourcedata/simulation``.

    Returns
    -------
    StudyInfo
        With ``phantoms`` empty and ``scenario`` ``"cohort"``.

    Raises
    ------
    NoDataError
        Fewer than 2 subjects per site, an unknown or repeated site, fewer than 2
        sites, or an unknown size (before anything is written).
    """
    start = time.perf_counter()
    root = Path(out_dir)
    sites = tuple(sites)
    sz = get_size(size)
    check_cohort(n_per_site, sites)
    _check_output(root, force)
    root.mkdir(parents=True, exist_ok=True)
    design = draw_design(n_per_site, sites, seed)
    grid = sz.human_grid
    site_objs = {s: study_site(s, seed) for s in sites}
    runs: list[RunInfo] = []
    participants = []
    specs = []
    means: dict[str, dict[str, Any]] = {}
    writer = _BackgroundWriter()
    try:
        for subject in design:
            sub, ses = subject.label, subject.session
            spec = cohort_brain(subject, seed)
            specs.append(spec)
            participants.append(_participant(sub, spec))
            ref = brain_tissue(spec, grid, Pose())
            writer.submit(bw.write_subject_truth, root, sub, grid, spec, ref)
            pose = session_pose(sub, ses, grid, seed)
            truth, biased = subject_tissues(spec, grid, pose, subject.site)
            writer.submit(bw.write_session_truth, root, sub, ses, pose, truth, None)
            fa, md = biased.true_fa_md()
            for metric, vol in (("FA", fa), ("MD", md)):
                writer.submit(bw.write_nifti, _truthsite_path(root, sub, ses, metric), vol,
                              grid.affine)  # fmt: skip
            means[sub] = {
                f"{kind}_{region.lower()}_{metric.lower()}": round(value, 9)
                for kind, tissue in (("truth", truth), ("site", biased))
                for region, metrics in region_means(tissue).items()
                for metric, value in metrics.items()
            }
            site = site_objs[subject.site]
            run_data = []
            for protocol in sz.human_protocols:
                bvals, bvecs = gradient_table(site, protocol, seed)
                clean = noiseless_signal(biased, site, bvals, bvecs, protocol=protocol)
                rng = noise_rng(seed, subject, _PROTOCOL_INDEX[protocol])
                image = noisy_image(clean, site.noise_sigma, rng)
                run_data.append(
                    RunData(protocol, bvals, bvecs, image, clean, dwi_sidecar(site, protocol, grid))
                )
            data = SessionData(sub, ses, site, pose, spec, biased, tuple(run_data))
            for run in data.runs:
                runs.append(_submit_run(writer, root, data, run, grid, write_noiseless))
            bw.write_sessions(root, sub, [_session_row(ses, seed)])
            LOGGER.info("simulated cohort sub-%s ses-%s (age %d)", sub, ses, subject.age)
    finally:
        writer.close()
    for site in site_objs.values():
        bw.write_site(root, site)
    slopes = true_age_slopes(specs, grid)
    fmt = {"size": size, "seed": seed, "version": __version__}
    labels = tuple(s.label for s in design)
    sessions = tuple(dict.fromkeys(s.session for s in design))
    bw.write_dataset_files(
        root,
        name=f"bids_harmony simulated cohort study ({size})",
        description=f"bids_harmony.simulate.simulate_cohort(n_per_site={n_per_site}, "
        f"sites={sites!r}, size={size!r}, seed={seed})",
        readme=COHORT_README.format(
            **fmt,
            n=n_per_site,
            site_lines=site_lines(list(site_objs.values())),
            ages=", ".join(f"{s} {site_mean_age(k, len(sites)):g}" for k, s in enumerate(sites)),
            half=f"{AGE_HALF_RANGE:g}",
        ),
        participants=participants,
    )
    gt = bw.gt_dir(root)
    bw.write_text(
        gt / "README.md",
        COHORT_TRUTH_README.format(**fmt, site_table=site_table(list(site_objs.values()))),
    )
    bw.write_json(gt / COHORT_JSON, _cohort_json(design, sites, slopes, means, size, seed))
    bw.write_json(
        gt / "simulation.json",
        {
            "Generator": f"bids_harmony {__version__} simulate_cohort",
            "study": "cohort",
            "size": size,
            "seed": seed,
            "sites": list(sites),
            "phantoms": [],
            "subjects": list(labels),
            "sessions": list(sessions),
            "runs": [r.record(root) for r in runs],
        },
    )
    info = StudyInfo(
        root, size, seed, sites, (), labels, sessions, tuple(runs), gt,
        time.perf_counter() - start, "cohort",
    )  # fmt: skip
    LOGGER.info("simulated a cohort of %d subjects in %.1f s", len(design), info.seconds)
    return info
