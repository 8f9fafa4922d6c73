"""Participant level: preprocess every dMRI run, fit SH per shell, compute metrics.

Builders only wire nodes (fMRIPrep ``workflows/`` style); the numbers are
computed by :mod:`bids_harmony.dmri` through thin interfaces.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_harmony import __version__
from bids_harmony.config import Config
from bids_harmony.workflows.boilerplate import dwi_postdesc, participant_desc, python_preproc_desc

if TYPE_CHECKING:
    from bids_harmony.bids.dki_runs import DkiPlan

LOGGER = logging.getLogger(__name__)


def estimate_mem_gb(shape: tuple[int, ...]) -> float:
    """Memory of a node holding a few float32 copies of one run."""
    voxels = 1
    for size in shape:
        voxels *= int(size)
    return max(0.25, 3 * 4 * voxels / 1024**3)


def init_participant_wf(
    study: Any,
    config: Config,
    *,
    backend: str,
    models: dict[str, dict[str, Any]] | None = None,
    rish_models: dict[tuple[str, str | None], Path] | None = None,
    combat_models: dict[str, dict[str, Any]] | None = None,
    dki_models: dict[str, dict[str, Any]] | None = None,
) -> pe.Workflow:
    """Top-level participant workflow: one sub-workflow per dMRI run.

    Parameters
    ----------
    study : bids_harmony.bids.discovery.Study
        Runs to process.
    config : Config
        Settings of this invocation.
    backend : {"fsl", "python", "none"}
        Resolved preprocessing backend.
    models : dict, optional
        HARP model per source site (see :func:`init_dwi_run_wf`); runs of other
        sites are not harmonized.
    rish_models : dict, optional
        LinearRISH model file per (source site, raw ``acq``), applied to the
        matching runs (:class:`~bids_harmony.interfaces.rish_model.ApplyRishModel`).
    combat_models : dict, optional
        ComBat node settings per run prefix
        (:class:`~bids_harmony.interfaces.combat.ApplyCombatModel`).
    """
    combat_models = combat_models or {}
    dki_models = dki_models or {}
    models = models or {}
    rish_models = rish_models or {}
    # Nipype caches by node inputs, not by our code: one cache per release.
    base_dir = config.work_dir / f"bids_harmony_{__version__.replace('.', '_')}"
    workflow = pe.Workflow(name="bids_harmony_participant_wf", base_dir=str(base_dir))
    workflow.__desc__ = participant_desc(site_source=study.site_source,
                                         b_tolerance=config.b_tolerance,
                                         b0_threshold=config.b0_threshold)  # fmt: skip
    params = {**config.recorded(), "preproc": backend}
    plans = {}
    if backend == "fsl":
        from bids_harmony.workflows.fsl_preproc import fsl_run_plan

        # Every run's metadata is checked before anything runs.
        plans = {
            run.dwi: fsl_run_plan(
                run, b_tolerance=config.b_tolerance, b0_threshold=config.b0_threshold
            )
            for run in study.runs
        }
    plan = _dki_plan(study.runs, config)
    with_dki = set(plan.alone) if plan is not None else set()
    run_wfs: dict[Path, pe.Workflow] = {}
    run_infos: dict[Path, dict[str, Any]] = {}
    for run in study.runs:
        run_info = {
            "entities": run_short_entities(run),
            "n_shells": len(run.shells),
            "source": str(run.dwi.relative_to(study.bids_dir)),
            "bval": _relative(run.bval, study.bids_dir),
            "bvec": _relative(run.bvec, study.bids_dir),
            "site": run.site,
            "is_phantom": run.is_phantom,
        }
        if run.dwi in plans:
            reverse = plans[run.dwi]["reverse"]
            run_info["fieldmaps"] = [_relative(Path(i["path"]), study.bids_dir) for i in reverse]
        run_infos[run.dwi] = run_info
        run_wfs[run.dwi] = init_dwi_run_wf(
            dwi=str(run.dwi),
            bval=str(run.bval),
            bvec=str(run.bvec),
            run_info=run_info,
            params=params,
            output_dir=str(config.output_dir),
            backend=backend,
            denoise=config.denoise if backend == "python" else "none",
            remove_gibbs=config.remove_gibbs and backend == "python",
            motion_correction=config.motion_correction and backend == "python",
            sh_order=config.sh_order,
            b_tolerance=config.b_tolerance,
            b0_threshold=config.b0_threshold,
            gfa=config.gfa,
            omp_nthreads=config.omp_nthreads,
            mem_gb=estimate_mem_gb(run.shape),
            name=wf_name(run.prefix),
            harp_model=models.get(run.site),
            rish_model=_rish_for(rish_models, run, config),
            combat_model=combat_models.get(run.prefix),
            dki_model=dki_models.get(run.prefix),
            fsl_plan=plans.get(run.dwi),
            dki=run.dwi in with_dki,
        )
        workflow.add_nodes([run_wfs[run.dwi]])
    if plan is not None:
        from bids_harmony.workflows.dki_runs import connect_combined_dki

        for group in plan.groups:
            first = group.first
            connect_combined_dki(
                workflow, run_wfs, group, bids_dir=study.bids_dir,
                output_dir=str(config.output_dir), run_info=run_infos[first.dwi], params=params,
                b_tolerance=config.b_tolerance, b0_threshold=config.b0_threshold,
                n_procs=config.omp_nthreads or 1, seed=config.seed,
                mem_gb=estimate_mem_gb(first.shape),
            )  # fmt: skip
    return workflow


def _dki_plan(runs: Any, config: Config) -> DkiPlan | None:
    """The DKI plan of the runs (None with ``--no-dki``): the runs whose own gradient tables
    hold the fit (``alone``) and the single-shell runs combined per session (``groups``);
    :func:`bids_harmony.workflows.dki_runs.dki_plan` logs why any other run gets none
    (see :func:`bids_harmony.dmri.dki.dki_support`)."""
    if not config.dki:
        return None
    from bids_harmony.workflows.dki_runs import dki_plan

    return dki_plan(list(runs), b_tolerance=config.b_tolerance, b0_threshold=config.b0_threshold)


def _rish_for(
    rish_models: dict[tuple[str, str | None], Path], run: Any, config: Config
) -> dict[str, Any] | None:
    """The LinearRISH node settings of a run, when a model maps its site and protocol."""
    path = rish_models.get((run.site, run.entities.get("acquisition")))
    if path is None:
        return None
    return {"model_file": str(path), "run": run, "seed": config.seed,
            "transform": config.group_transform}  # fmt: skip


def init_dwi_run_wf(
    *,
    dwi: str,
    bval: str,
    bvec: str,
    run_info: dict[str, Any],
    params: dict[str, Any],
    output_dir: str,
    backend: str,
    denoise: str,
    remove_gibbs: bool,
    motion_correction: bool,
    sh_order: int,
    b_tolerance: float,
    b0_threshold: float,
    gfa: bool,
    omp_nthreads: int,
    mem_gb: float,
    name: str,
    harp_model: dict[str, Any] | None = None,
    rish_model: dict[str, Any] | None = None,
    combat_model: dict[str, Any] | None = None,
    dki_model: dict[str, Any] | None = None,
    fsl_plan: dict[str, Any] | None = None,
    dki: bool = False,
) -> pe.Workflow:
    """Process one dMRI run; harmonize it too when ``harp_model`` is given.

    ``dki`` adds the DKI fit on the preprocessed run (every shell) and its maps
    (:class:`~bids_harmony.interfaces.dki.FitDKI`); the caller checks that the run
    qualifies (:func:`_dki_plan`).

    ``harp_model`` holds ``file`` (path), ``info`` (name, sha256, sites for
    sidecars), ``expect`` (SH convention the card must match) and ``device``.
    ``fsl_plan`` (:func:`~bids_harmony.workflows.fsl_preproc.fsl_run_plan`) is
    required with ``backend="fsl"``.

    Inputs
    ------
    dwi, bval, bvec
        The raw run (set at build time on ``inputnode``).

    Outputs
    -------
    out_files
        Paths written into the derivatives dataset.
    """
    from bids_harmony.interfaces.derivatives import ParticipantSink
    from bids_harmony.interfaces.dmri import DiffusionMetrics, FitSH, PythonPreprocess

    workflow = pe.Workflow(name=name)
    # The run's BIDS prefix (sub-01_ses-GE1_acq-b1000): our nodes name it in log messages.
    run_name = Path(dwi).name.split(".", 1)[0].rsplit("_", 1)[0]
    workflow.__postdesc__ = dwi_postdesc(
        sh_order=sh_order,
        gfa=gfa,
        harmonized=bool(harp_model),
        rish=rish_model is not None,
        combat=combat_model is not None,
        dki=dki,
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["dwi", "bval", "bvec"]), name="inputnode")
    inputnode.inputs.dwi, inputnode.inputs.bval, inputnode.inputs.bvec = dwi, bval, bvec
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")

    if backend == "fsl":
        if fsl_plan is None:
            raise ValueError("backend='fsl' needs fsl_plan (see fsl_run_plan)")
        preprocess = _connect_fsl_preproc(
            workflow, inputnode, fsl_plan, b0_threshold=b0_threshold,
            omp_nthreads=omp_nthreads, mem_gb=mem_gb,
        )  # fmt: skip
    else:
        workflow.__desc__ = python_preproc_desc(backend=backend, denoise=denoise,
                                                remove_gibbs=remove_gibbs,
                                                motion_correction=motion_correction)  # fmt: skip
        preprocess = pe.Node(
            PythonPreprocess(
                denoise=denoise,
                remove_gibbs=remove_gibbs,
                motion_correction=motion_correction,
                b0_threshold=b0_threshold,
                run_name=run_name,
            ),
            name=f"preprocess_{backend}",
            mem_gb=mem_gb,
        )
        workflow.connect([(inputnode, preprocess, [("dwi", "in_file"), ("bval", "in_bval"),
                                                   ("bvec", "in_bvec")])])  # fmt: skip
    shell_settings = {
        "sh_order": sh_order,
        "b_tolerance": b_tolerance,
        "b0_threshold": b0_threshold,
    }
    fit_sh = pe.Node(FitSH(run_name=run_name, **shell_settings), name="fit_sh", mem_gb=mem_gb)
    metrics = pe.Node(
        DiffusionMetrics(gfa=gfa, n_threads=omp_nthreads, run_name=run_name, **shell_settings),
        name="metrics",
        mem_gb=mem_gb,
        n_procs=omp_nthreads,
    )
    sink = pe.Node(
        ParticipantSink(output_dir=output_dir, run_info=run_info, params=params),
        name="ds_participant",
        run_without_submitting=True,
    )

    gradients = [("out_file", "in_file"), ("out_bval", "in_bval"), ("out_bvec", "in_bvec"),
                 ("out_mask", "in_mask")]  # fmt: skip
    workflow.connect([
        (preprocess, fit_sh, gradients),
        (preprocess, metrics, gradients),
        (preprocess, sink, [("out_derivative", "dwi_file"), ("out_bval", "bval_file"),
                            ("out_bvec", "bvec_file"), ("out_mask", "mask_file"),
                            ("out_report", "preproc_report")]),
        (fit_sh, sink, [("out_json", "shells_json")]),
        (metrics, sink, [("out_json", "metrics_json")]),
        (sink, outputnode, [("out_files", "out_files")]),
    ])  # fmt: skip
    if dki:
        from bids_harmony.interfaces.dki import DkiSink, FitDKI

        fit_dki = pe.Node(
            FitDKI(run_name=run_name, b_tolerance=b_tolerance, b0_threshold=b0_threshold,
                   n_procs=omp_nthreads),
            name="fit_dki", mem_gb=mem_gb, n_procs=omp_nthreads,
        )  # fmt: skip
        sink_dki = pe.Node(DkiSink(output_dir=output_dir, run_info=run_info, params=params),
                           name="ds_dki", run_without_submitting=True)  # fmt: skip
        workflow.connect([
            (preprocess, fit_dki, gradients),
            (fit_dki, sink_dki, [("out_json", "dki_json")]),
            (sink, sink_dki, [("out_files", "written")]),
        ])  # fmt: skip
    if rish_model is not None:
        from bids_harmony.interfaces.rish_model import ApplyRishModel

        # after the sink: LinearRISH reads the run's SH and FA maps from the output dataset
        rish = pe.Node(ApplyRishModel(output_dir=output_dir, **rish_model, dki=dki,
                                      b_tolerance=b_tolerance, b0_threshold=b0_threshold),
                       name="rish", mem_gb=mem_gb)  # fmt: skip
        workflow.connect(sink, "out_files", rish, "written")
    if combat_model is not None:
        from bids_harmony.interfaces.combat import ApplyCombatModel

        # after the sinks: ComBat reads the run's FA/MD/GFA (and DKI) maps from the dataset
        combat = pe.Node(ApplyCombatModel(output_dir=output_dir, **combat_model),
                         name="combat", mem_gb=mem_gb)  # fmt: skip
        workflow.connect(sink_dki if dki else sink, "out_files", combat, "written")
    if dki_model is not None:
        from bids_harmony.interfaces.dki_cnn import ApplyDkiCnnModel

        # after the sink: the network reads the run's SH maps and mask from the dataset;
        # in this process (torch's thread pool does not survive a fork)
        dki_cnn = pe.Node(ApplyDkiCnnModel(output_dir=output_dir, **dki_model),
                          name="dki_cnn", mem_gb=mem_gb, run_without_submitting=True)
        workflow.connect(sink, "out_files", dki_cnn, "written")
    if harp_model is None:
        return workflow

    from bids_harmony.interfaces.derivatives import HarmonizedSink
    from bids_harmony.interfaces.harp import HarpHarmonize

    harmonize = pe.Node(
        HarpHarmonize(
            model_file=harp_model["file"],
            expect=harp_model["expect"],
            device=harp_model["device"],
            b0_threshold=b0_threshold,
            n_threads=omp_nthreads,
            run_name=run_name,
        ),
        name="harmonize",
        mem_gb=mem_gb,
        n_procs=omp_nthreads,
    )
    metrics_harmonized = pe.Node(
        DiffusionMetrics(gfa=gfa, n_threads=omp_nthreads, run_name=run_name, **shell_settings),
        name="metrics_harmonized",
        mem_gb=mem_gb,
        n_procs=omp_nthreads,
    )
    sink_harmonized = pe.Node(
        HarmonizedSink(
            output_dir=output_dir, run_info=run_info, params=params, model_info=harp_model["info"]
        ),
        name="ds_harmonized",
        run_without_submitting=True,
    )
    workflow.connect([
        (preprocess, harmonize, gradients),
        (fit_sh, harmonize, [("out_json", "shells_json")]),
        (harmonize, metrics_harmonized, [("out_file", "in_file"), ("out_bval", "in_bval"),
                                         ("out_bvec", "in_bvec")]),
        (preprocess, metrics_harmonized, [("out_mask", "in_mask")]),
        (harmonize, sink_harmonized, [("out_file", "dwi_file"), ("out_bval", "bval_file"),
                                      ("out_bvec", "bvec_file"), ("out_json", "shells_json")]),
        (metrics_harmonized, sink_harmonized, [("out_json", "metrics_json")]),
    ])  # fmt: skip
    return workflow


def _connect_fsl_preproc(
    workflow: pe.Workflow,
    inputnode: pe.Node,
    plan: dict[str, Any],
    *,
    b0_threshold: float,
    omp_nthreads: int,
    mem_gb: float,
) -> pe.Node:
    """Add the FSL graph to a run's workflow; returns the node with the python outputs."""
    from bids_harmony.interfaces.fsl import FslFinalize, PrepareFslInputs
    from bids_harmony.workflows.fsl_preproc import init_fsl_preproc_wf

    has_reverse = bool(plan["reverse"])
    prepare = pe.Node(
        PrepareFslInputs(
            pe_dir=plan["pe_dir"],
            readout_time=plan["readout_time"],
            reverse=plan["reverse"],
            b0_threshold=b0_threshold,
        ),
        name="fsl_inputs",
        mem_gb=mem_gb,
    )
    fsl_wf = init_fsl_preproc_wf(
        name="fsl_preproc_wf",
        has_reverse_pe=has_reverse,
        omp_nthreads=omp_nthreads,
        b0_threshold=b0_threshold,
        topup_config=plan["topup_config"],
        slm=plan["slm"],
    )
    steps: list[dict[str, Any]] = []
    if has_reverse:
        steps.append({
            "Step": "susceptibility-distortion-estimation",
            "Method": f"FSL topup --config={plan['topup_config']}",
            "ReversePhaseEncoding": [Path(image["path"]).name for image in plan["reverse"]],
        })  # fmt: skip
    steps.append({
        "Step": "eddy-current-and-motion-correction",
        # The binary the graph will run (eddy_command looked for it once).
        "Method": f"FSL {fsl_wf.get_node('eddy').interface.cmd} --repol --data_is_shelled "
        f"--slm={plan['slm']}"
        + (" --topup" if has_reverse else ""),
        "BVectorsRotated": True,
    })  # fmt: skip
    mask_source = "topup-corrected b0s" if has_reverse else "b0 volumes"
    mask_method = f"FSL bet -f 0.2 on the mean of the {mask_source}"
    finalize = pe.Node(
        FslFinalize(report={"Steps": steps, "MaskMethod": mask_method}),
        name="preprocess_fsl",
        mem_gb=mem_gb,
    )
    workflow.connect([
        (inputnode, prepare, [("dwi", "in_file"), ("bval", "in_bval"), ("bvec", "in_bvec")]),
        (inputnode, fsl_wf, [("dwi", "inputnode.dwi")]),
        (prepare, fsl_wf, [("acqparams", "inputnode.acqparams"), ("index", "inputnode.index"),
                           ("out_bval", "inputnode.bval"), ("out_bvec", "inputnode.bvec")]),
        (fsl_wf, finalize, [("outputnode.dwi_preproc", "in_file"),
                            ("outputnode.bval", "in_bval"),
                            ("outputnode.bvec_rotated", "in_bvec"),
                            ("outputnode.mask", "in_mask")]),
    ])  # fmt: skip
    if has_reverse:
        workflow.connect([(prepare, fsl_wf, [("b0_pair", "inputnode.b0_pair")])])
    return finalize


def run_short_entities(run: Any) -> dict[str, str]:
    """Short-key BIDS entities of a discovered run."""
    from bids_harmony.bids.derivatives import raw_entities

    return raw_entities(run.entities)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def wf_name(prefix: str) -> str:
    """Nipype node names allow only identifier characters."""
    return "run_" + "".join(ch if ch.isalnum() else "_" for ch in prefix)
