"""FSL preprocessing backend: TOPUP/eddy/BET on one dMRI run, with Nipype's FSL interfaces.

Builders only wire Nipype's :mod:`nipype.interfaces.fsl` interfaces (fMRIPrep
``workflows/`` style); nothing is computed when a graph is built.  The helpers
here find the FSL binaries and write the small text files FSL reads
(``--acqp``), from BIDS metadata.

The participant level uses it with ``--preproc fsl`` (or ``auto`` when FSL
runs); ``train`` then registers phantom pairs with FLIRT
(:mod:`bids_harmony.registration.flirt`).

Getting FSL
-----------
A container image that ships FSL, or FSL's conda channel::

    conda install -c https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/public/ \\
        -c conda-forge fsl-topup fsl-eddy fsl-bet2 fsl-flirt

with ``FSLDIR`` set to the environment prefix and ``FSLOUTPUTTYPE=NIFTI_GZ``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nipype.interfaces import fsl
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_harmony.dmri.acqparams import PE_VECTORS, total_readout_time
from bids_harmony.dmri.gradients import B0_THRESHOLD
from bids_harmony.workflows.boilerplate import fsl_preproc_desc

LOGGER = logging.getLogger(__name__)

#: eddy binaries for the CPU, in order of preference (FSL ≥ 6.0.6, older OpenMP, generic).
EDDY_CPU = ("eddy_cpu", "eddy_openmp", "eddy")
#: Named CUDA builds of eddy looked for besides any ``eddy_cuda*`` found on ``PATH``.
EDDY_CUDA = ("eddy_cuda", "eddy_cuda11.0", "eddy_cuda10.2", "eddy_cuda9.1", "eddy_cuda8.0")
#: The command a graph gets when no eddy binary is found (FSL's launcher name).
EDDY_DEFAULT = "eddy"

FSL_HELP = (
    "Get FSL from a container image that ships it, or from FSL's conda channel: "
    "conda install -c https://fsl.fmrib.ox.ac.uk/fsldownloads/fslconda/public/ "
    "-c conda-forge fsl-topup fsl-eddy fsl-bet2 fsl-flirt, then set FSLDIR to the "
    "environment prefix (and FSLOUTPUTTYPE=NIFTI_GZ). Otherwise use --preproc python."
)


# --------------------------------------------------------------------------- binaries


def _runs(path: str, *args: str, timeout: float = 20.0) -> bool:
    """Whether an executable starts: any exit status but 126/127 (not runnable) or a signal.

    FSL tools print their usage and exit non-zero without arguments, which is fine.
    """
    try:
        result = subprocess.run([path, *args], capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode >= 0 and result.returncode not in (126, 127)


def _first_on_path(names: Sequence[str]) -> str | None:
    """Full path of the first of ``names`` that :func:`shutil.which` finds."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def fsl_available() -> tuple[bool, str]:
    """Whether the FSL backend can run here, and why not (or what was found).

    Needs ``FSLDIR`` and working ``bet``, ``flirt`` and an eddy binary (one of
    :data:`EDDY_CPU`).  Each binary is found with :func:`shutil.which` and started
    once (``flirt -version``, the others without arguments) to catch broken
    installs (missing libraries: exit status 127).

    Returns
    -------
    ok : bool
    message : str
        What is missing and how to get FSL; when ``ok``, the tools found (and a
        note when ``topup`` is missing: runs with reverse phase-encoding b0s need it).
    """
    missing: list[str] = []
    fsldir = os.environ.get("FSLDIR", "")
    if not fsldir:
        missing.append("the FSLDIR environment variable is not set")
    found: dict[str, str] = {}
    checks = (("bet", ("bet",), ()), ("eddy", EDDY_CPU, ()), ("flirt", ("flirt",), ("-version",)))
    for tool, names, args in checks:
        path = _first_on_path(names)
        if path is None:
            missing.append(f"{' / '.join(names)} not found on PATH")
        elif not _runs(path, *args):
            missing.append(f"{path} does not run")
        else:
            found[tool] = path
    if missing:
        return False, "FSL is not usable: " + "; ".join(missing) + ". " + FSL_HELP
    version_file = Path(fsldir, "etc", "fslversion")
    version = version_file.read_text().strip().split(":")[0] if version_file.is_file() else "?"
    message = f"FSL {version} in {fsldir}: " + ", ".join(found.values())
    if shutil.which("topup") is None:
        message += "; topup not found (needed for reverse phase-encoding b0s: fsl-topup)"
    return True, message


def nvidia_gpu_present() -> bool:
    """Whether ``nvidia-smi -L`` runs and lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        result = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def _cuda_version(name: str) -> tuple[float, ...]:
    return tuple(float(part) for part in re.findall(r"\d+", name[len("eddy_cuda") :]))


def _cuda_candidates() -> list[str]:
    """Names of CUDA eddy builds: :data:`EDDY_CUDA`, then others found on ``PATH``.

    Plain ``eddy_cuda`` first (FSL links it to the build matching the system),
    then versioned builds, newest first.
    """
    names = set(EDDY_CUDA)
    folders = os.environ.get("PATH", "").split(os.pathsep)
    if os.environ.get("FSLDIR"):
        folders.append(str(Path(os.environ["FSLDIR"], "bin")))
    for folder in folders:
        try:
            names.update(p.name for p in Path(folder).glob("eddy_cuda*"))
        except OSError:
            continue
    return sorted(names, key=lambda n: (n != "eddy_cuda", [-v for v in _cuda_version(n)], n))


def eddy_command(gpu: bool | None = None) -> str:
    """The eddy binary to run.

    Parameters
    ----------
    gpu : bool, optional
        ``True``: prefer a CUDA build; ``False``: CPU only; ``None``: a CUDA build
        when one exists and ``nvidia-smi`` reports a GPU.

    Returns
    -------
    str
        A CUDA build (``eddy_cuda*``) when wanted and found, else the first of
        :data:`EDDY_CPU` found on ``PATH``, else :data:`EDDY_DEFAULT` (so that a
        graph can be built without FSL).
    """
    if gpu or gpu is None:
        cuda = next((name for name in _cuda_candidates() if shutil.which(name)), None)
        if cuda is not None and (gpu or nvidia_gpu_present()):
            return cuda
        if gpu:
            LOGGER.warning("No eddy_cuda* binary found; eddy runs on the CPU.")
    return next((name for name in EDDY_CPU if shutil.which(name)), EDDY_DEFAULT)


def is_cuda_command(command: str) -> bool:
    """Whether an eddy command names a CUDA build."""
    return Path(command).name.startswith("eddy_cuda")


# --------------------------------------------------------------------------- settings


def topup_config(shape: Sequence[int]) -> str:
    """TOPUP configuration for a voxel grid.

    ``b02b0.cnf`` subsamples by 2 at its first levels and fails on an odd image
    size ("image dimensions must be a multiple of the subsampling"), which real
    acquisitions often have (e.g. 75 slices); ``b02b0_1.cnf`` (FSL ≥ 6.0.4) is the
    same schedule without subsampling.
    """
    return "b02b0.cnf" if all(int(n) % 2 == 0 for n in shape[:3]) else "b02b0_1.cnf"


def eddy_slm(n_directions: int) -> str:
    """eddy ``--slm``: ``linear`` for fewer than 60 directions, as FSL's eddy guide advises.

    With few directions eddy cannot tell eddy-current fields from true signal on
    every shell without a model across volumes.
    """
    return "linear" if n_directions < 60 else "none"


#: Readout time given to FSL when no sidecar has one and no TOPUP field is estimated.
NOMINAL_READOUT_TIME = 0.05


def fsl_run_plan(run: Any, *, b_tolerance: float, b0_threshold: float) -> dict[str, Any]:
    """What the FSL backend needs to know about one run, from its BIDS metadata.

    Parameters
    ----------
    run : bids_harmony.bids.discovery.DwiRun
        With ``metadata``, ``shape``, ``bvals`` and ``reverse_pe``.
    b_tolerance, b0_threshold : float
        Shell grouping, for eddy's ``--slm`` (:func:`eddy_slm`).

    Returns
    -------
    dict
        ``pe_dir`` and ``readout_time`` of the run; ``reverse``: one dict per
        reverse phase-encoding image (``path``, ``pe_dir``, ``readout_time``,
        ``volumes``, ``kind``); ``topup_config``; ``slm``.

    Raises
    ------
    InputDatasetError
        The sidecar lacks ``PhaseEncodingDirection`` (eddy needs it), or a readout
        time cannot be read while a reverse phase-encoding image needs it.

    Notes
    -----
    Without a reverse phase-encoding image no field is estimated and the readout
    time does not change eddy's result: a missing one is then replaced by
    :data:`NOMINAL_READOUT_TIME` with a warning.  With TOPUP, an image lacking it
    takes the run's (same protocol), which must then be known.
    """
    from bids_harmony.dmri.gradients import group_shells
    from bids_harmony.errors import InputDatasetError

    where = run.sidecar or run.dwi
    pe_dir = run.metadata.get("PhaseEncodingDirection")
    if pe_dir not in PE_VECTORS:
        found = "is missing" if pe_dir is None else f"is {pe_dir!r}"
        raise InputDatasetError(
            f"{where}: PhaseEncodingDirection {found}; FSL eddy needs it (one of "
            f"{', '.join(PE_VECTORS)}). Add it to the sidecar (dcm2niix writes it), or use "
            "--preproc python."
        )
    axis = "ijk".index(pe_dir[0])
    try:
        readout = total_readout_time(run.metadata, n_pe=run.shape[axis])
    except ValueError as err:
        if run.reverse_pe:
            raise InputDatasetError(
                f"{where}: {err} TOPUP needs it to use {run.reverse_pe[0].path.name}."
            ) from err
        LOGGER.warning(
            "%s: no readout time (%s); using %g s, which does not affect eddy without a "
            "field map.", run.dwi.name, err, NOMINAL_READOUT_TIME,
        )  # fmt: skip
        readout = NOMINAL_READOUT_TIME
    reverse = []
    for image in run.reverse_pe:
        try:
            image_readout = total_readout_time(image.metadata, n_pe=run.shape[axis])
        except ValueError:
            LOGGER.warning("%s: no readout time; using the run's (%g s).", image.path, readout)
            image_readout = readout
        reverse.append({
            "path": str(image.path),
            "kind": image.kind,
            "pe_dir": image.pe_dir,
            "readout_time": image_readout,
            "volumes": list(image.volumes),
        })  # fmt: skip
    shells = group_shells(run.bvals, b_tolerance=b_tolerance, b0_threshold=b0_threshold)
    largest = max((len(shell.indices) for shell in shells), default=0)
    return {
        "pe_dir": pe_dir,
        "readout_time": readout,
        "reverse": reverse,
        "topup_config": topup_config(run.shape),
        "slm": eddy_slm(largest),
    }


# --------------------------------------------------------------------------- workflows


def mean_b0_file(in_file: str, in_bval: str, b0_threshold: float = 50.0) -> str:
    """Mean of the b0 volumes (b < ``b0_threshold``), written as ``mean_b0.nii.gz``.

    Run by a Nipype ``Function`` node in its own folder, hence the local imports.
    """
    import os

    import nibabel as nb
    import numpy as np

    bvals = np.loadtxt(in_bval, ndmin=1).ravel()
    img = nb.load(in_file)
    is_b0 = np.flatnonzero(bvals < b0_threshold)
    if img.ndim != 4 or img.shape[3] != bvals.size:
        raise ValueError(f"{in_file}: a 4-D image with {bvals.size} volumes is expected.")
    if is_b0.size == 0:
        raise ValueError(f"{in_bval}: no b0 volume (b < {b0_threshold:g}).")
    total = np.zeros(img.shape[:3], dtype=np.float64)
    for volume in is_b0:  # one volume at a time: the series may be large
        total += np.asarray(img.dataobj[..., int(volume)], dtype=np.float64)
    data = (total / is_b0.size).astype(np.float32)
    out = nb.Nifti1Image(data, img.affine, img.header)
    out.header.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    path = os.path.abspath("mean_b0.nii.gz")
    nb.save(out, path)
    return path


def init_fsl_preproc_wf(
    *,
    name: str = "fsl_preproc_wf",
    has_reverse_pe: bool,
    omp_nthreads: int = 1,
    use_gpu: bool | None = None,
    b0_threshold: float = B0_THRESHOLD,
    topup_config: str = "b02b0.cnf",
    slm: str = "none",
) -> pe.Workflow:
    """FSL preprocessing of one dMRI run: (topup →) brain mask → eddy.

    With reverse phase-encoding b0s, ``topup`` (``b02b0.cnf``) estimates the
    field from ``b0_pair``; its field coefficients and movement parameters go to
    ``eddy`` (``--topup``), which corrects distortions, eddy currents and motion
    in one resampling (no ``applytopup``).  The mask is ``bet -f 0.2 -m`` on the
    mean of topup's corrected b0s.  Without them, the mask is ``bet`` on the mean
    of the run's b0 volumes (a small ``Function`` node, b < ``b0_threshold``) and
    eddy corrects eddy currents and motion only.

    Parameters
    ----------
    name : str
        Workflow name.
    has_reverse_pe : bool
        Whether ``b0_pair`` is given (adds the topup branch).
    omp_nthreads : int
        eddy's OpenMP threads (and the node's ``n_procs``).
    use_gpu : bool, optional
        Passed to :func:`eddy_command`; a CUDA build sets ``use_cuda``.
    b0_threshold : float
        b-value below which a volume is a b0 (mask without topup).
    topup_config : str
        TOPUP configuration (:func:`topup_config`).
    slm : {"none", "linear", "quadratic"}
        eddy's second-level model (:func:`eddy_slm`).

    eddy replaces outlier slices (``--repol``) and is told the data are shelled
    (``--data_is_shelled``): the b-values were already grouped into shells when the
    run was discovered, and eddy's own check rejects real multi-shell data whose
    b-values scatter by more than its tolerance.

    Inputs
    ------
    dwi, bval, bvec
        The raw run (FSL-style gradient files).
    acqparams
        acqparams file (:func:`write_acqparams`).  With topup, one row per volume
        of ``b0_pair`` in order, the same file going to eddy's ``--acqp``.
    index
        eddy ``--index`` file: for each DWI volume, its 1-based row in ``acqparams``.
    b0_pair
        4-D stack of b0s with opposite phase encoding (e.g. AP then PA), for topup.

    Outputs
    -------
    dwi_preproc
        eddy's corrected series.
    bvec_rotated
        eddy's rotated b-vectors.
    bval
        The b-values (unchanged).
    mask
        Brain mask from ``bet``.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi", "bval", "bvec", "acqparams", "index", "b0_pair"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_preproc", "bvec_rotated", "bval", "mask"]),
        name="outputnode",
    )

    command = eddy_command(use_gpu)
    cuda = is_cuda_command(command)
    workflow.__desc__ = fsl_preproc_desc(
        has_reverse_pe=has_reverse_pe, eddy=command, slm=slm, topup_config=topup_config
    )
    eddy = pe.Node(
        fsl.Eddy(
            num_threads=omp_nthreads,
            use_cuda=cuda,
            repol=True,
            is_shelled=True,
            slm=slm,
            output_type="NIFTI_GZ",
        ),
        name="eddy",
        n_procs=1 if cuda else omp_nthreads,
    )
    # Eddy toggles only eddy_cuda/eddy_openmp with use_cuda; run the binary found.
    # (Set after use_cuda: changing use_cuda later resets the command.)
    eddy.interface._cmd = command
    bet = pe.Node(fsl.BET(frac=0.2, mask=True, output_type="NIFTI_GZ"), name="bet")

    workflow.connect([
        (inputnode, eddy, [("dwi", "in_file"), ("bval", "in_bval"), ("bvec", "in_bvec"),
                           ("acqparams", "in_acqp"), ("index", "in_index")]),
        (bet, eddy, [("mask_file", "in_mask")]),
        (eddy, outputnode, [("out_corrected", "dwi_preproc"),
                            ("out_rotated_bvecs", "bvec_rotated")]),
        (inputnode, outputnode, [("bval", "bval")]),
        (bet, outputnode, [("mask_file", "mask")]),
    ])  # fmt: skip

    if has_reverse_pe:
        topup = pe.Node(fsl.TOPUP(config=topup_config, output_type="NIFTI_GZ"), name="topup")
        mean_b0 = pe.Node(fsl.MeanImage(dimension="T", output_type="NIFTI_GZ"), name="mean_b0")
        workflow.connect([
            (inputnode, topup, [("b0_pair", "in_file"), ("acqparams", "encoding_file")]),
            (topup, mean_b0, [("out_corrected", "in_file")]),
            (mean_b0, bet, [("out_file", "in_file")]),
            (topup, eddy, [("out_fieldcoef", "in_topup_fieldcoef"),
                           ("out_movpar", "in_topup_movpar")]),
        ])  # fmt: skip
    else:
        mean_b0 = pe.Node(
            niu.Function(
                function=mean_b0_file,
                input_names=["in_file", "in_bval", "b0_threshold"],
                output_names=["out_file"],
            ),
            name="mean_b0",
        )
        mean_b0.inputs.b0_threshold = b0_threshold
        workflow.connect([
            (inputnode, mean_b0, [("dwi", "in_file"), ("bval", "in_bval")]),
            (mean_b0, bet, [("out_file", "in_file")]),
        ])  # fmt: skip
    return workflow
