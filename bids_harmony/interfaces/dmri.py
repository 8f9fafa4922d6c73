"""Nipype interfaces around the numerical modules in :mod:`bids_harmony.dmri`.

Each interface only loads its inputs, calls plain functions and saves the
results in the node directory (QSIPrep ``interfaces/dipy.py`` style).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

LOGGER = logging.getLogger(__name__)


def load_image(path: str) -> tuple[Any, np.ndarray]:
    """Load a NIfTI as float32, naming the file in any error."""
    import nibabel as nb

    from bids_harmony.errors import BadImageError

    try:
        img = nb.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise BadImageError(f"{path}: cannot read the image ({err}).") from err
    return img, data


def save_like(data: np.ndarray, reference: Any, path: Path, dtype: Any = np.float32) -> str:
    """Save ``data`` with the geometry of ``reference``."""
    import nibabel as nb

    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nb.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    img.header.set_xyzt_units("mm", "sec")
    if np.issubdtype(np.dtype(dtype), np.floating):
        img.header.set_slope_inter(1.0, 0.0)
    nb.save(img, str(path))
    return str(path.resolve())


def decompress(path: str, dest: Path) -> str:
    """An uncompressed copy of a NIfTI (the file itself when not gzipped)."""
    import gzip
    import shutil

    from bids_harmony.errors import BadImageError

    if not path.endswith(".gz"):
        return path
    try:
        with gzip.open(path, "rb") as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
    except (OSError, EOFError) as err:
        dest.unlink(missing_ok=True)
        raise BadImageError(
            f"{path}: the compressed image is corrupt or truncated ({err})."
        ) from err
    return str(dest.resolve())


def read_table(bval: str, bvec: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an FSL-style gradient table as (n,), (n, 3)."""
    from bids_harmony.bids.gradients_io import read_gradients

    return read_gradients(bval, bvec)


def write_table(bvals: np.ndarray, bvecs: np.ndarray, stem: Path) -> tuple[str, str]:
    """Write an FSL-style gradient table (bvecs as 3 rows)."""
    bval_path, bvec_path = stem.with_suffix(".bval"), stem.with_suffix(".bvec")
    bval_path.write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    rows = [" ".join(f"{v:.8f}" for v in bvecs[:, k]) for k in range(3)]
    bvec_path.write_text("\n".join(rows) + "\n")
    return str(bval_path.resolve()), str(bvec_path.resolve())


class RunNamedInterface(SimpleInterface):
    """A SimpleInterface whose log messages name its run (input ``run_name``).

    The numerical functions it calls log without knowing the run; while the
    interface runs, :func:`bids_harmony.logs.run_context` lets the console
    handler put the name in front of their messages.
    """

    def run_label(self) -> str:
        """The name put in front of the messages: the ``run_name`` input."""
        name = getattr(self.inputs, "run_name", "")
        return name if isdefined(name) else ""

    def run(self, cwd=None, ignore_exception=None, **inputs):
        from bids_harmony.logs import run_context

        with run_context(self.run_label()):
            return super().run(cwd=cwd, ignore_exception=ignore_exception, **inputs)


class _PreprocessInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw DWI series")
    run_name = traits.Str("", usedefault=True, desc="the run's BIDS prefix, for messages")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    denoise = traits.Enum("none", "mppca", "patch2self", usedefault=True)
    remove_gibbs = traits.Bool(False, usedefault=True)
    motion_correction = traits.Bool(False, usedefault=True)
    b0_threshold = traits.Float(50.0, usedefault=True)


class _PreprocessOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="preprocessed DWI series, uncompressed for fast reading")
    out_derivative = File(exists=True, desc="the same series as written to the derivatives")
    out_bval = File(exists=True)
    out_bvec = File(exists=True, desc="b-vectors, rotated when motion was corrected")
    out_mask = File(exists=True, desc="brain (or phantom) mask")
    out_report = File(exists=True, desc="JSON: steps applied, their parameters and timings")


class PythonPreprocess(RunNamedInterface):
    """Python-backend preprocessing: checks, optional denoising/Gibbs/motion, mask."""

    input_spec = _PreprocessInputSpec
    output_spec = _PreprocessOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.dmri import preprocess

        cwd = Path(runtime.cwd)
        # Later nodes read the series again: gunzip once, then read the fast copy.
        source = decompress(self.inputs.in_file, cwd / "input_dwi.nii")
        img, data = load_image(source)
        preprocess.check_finite(data, name=self.inputs.in_file)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        steps: list[dict[str, Any]] = []
        timings: dict[str, float] = {}

        def timed(step: str, func, *args, **kwargs):
            start = time.perf_counter()
            result = func(*args, **kwargs)
            timings[step] = round(time.perf_counter() - start, 3)
            return result

        if self.inputs.denoise != "none":
            data = timed(
                "denoise",
                preprocess.denoise,
                data,
                method=self.inputs.denoise,
                bvals=bvals,
                b0_threshold=self.inputs.b0_threshold,
            )
            steps.append({"Step": "denoise", "Method": self.inputs.denoise})
        if self.inputs.remove_gibbs:
            data = timed("gibbs", preprocess.remove_gibbs, data)
            steps.append({"Step": "gibbs-removal", "Method": "dipy gibbs_removal"})
        if self.inputs.motion_correction:
            data, bvecs, _ = timed(
                "motion",
                preprocess.motion_correct,
                data,
                bvals,
                bvecs,
                b0_threshold=self.inputs.b0_threshold,
            )
            steps.append({"Step": "motion-correction", "Method": "dipy rigid, b-vectors rotated"})
        mask = timed(
            "mask", preprocess.brain_mask, data, bvals, b0_threshold=self.inputs.b0_threshold
        )

        if steps:
            work_file = save_like(data, img, cwd / "preproc_dwi.nii")
            derivative = save_like(data, img, cwd / "preproc_dwi.nii.gz")
            if source != self.inputs.in_file:
                Path(source).unlink()
        else:
            # Nothing changed the voxels: the derivative is the original file.
            derivative = str(Path(self.inputs.in_file).resolve())
            work_file = source
        self._results["out_file"], self._results["out_derivative"] = work_file, derivative
        self._results["out_bval"], self._results["out_bvec"] = write_table(
            bvals, bvecs, cwd / "preproc_dwi"
        )
        self._results["out_mask"] = save_like(mask, img, cwd / "mask.nii.gz", dtype=np.uint8)
        report = {
            "Steps": steps,
            "MaskMethod": "dipy median_otsu on the mean b0",
            "Timings": timings,
        }
        report_path = cwd / "preproc_report.json"
        report_path.write_text(json.dumps(report, indent=2))
        self._results["out_report"] = str(report_path)
        return runtime


class _FitSHInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    run_name = traits.Str("", usedefault=True, desc="the run's BIDS prefix, for messages")
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    in_mask = File(exists=True, mandatory=True)
    sh_order = traits.Int(8, usedefault=True)
    b_tolerance = traits.Float(50.0, usedefault=True)
    b0_threshold = traits.Float(50.0, usedefault=True)


class _ShellOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="JSON list: one entry per shell with its files")


class FitSH(RunNamedInterface):
    """Per-shell SH coefficients in the HARP convention (:mod:`bids_harmony.dmri.sh`)."""

    input_spec = _FitSHInputSpec
    output_spec = _ShellOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.dmri import sh

        img, data = load_image(self.inputs.in_file)
        _, mask = load_image(self.inputs.in_mask)
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        start = time.perf_counter()
        fits = sh.fit_shells(
            data,
            bvals,
            bvecs,
            mask=mask > 0,
            sh_order=self.inputs.sh_order,
            b_tolerance=self.inputs.b_tolerance,
            b0_threshold=self.inputs.b0_threshold,
        )
        elapsed = time.perf_counter() - start
        del data
        cwd = Path(runtime.cwd)
        shells = []
        for fit in fits:
            label = f"b{int(round(fit.bval))}"
            shells.append(
                {
                    "bval": fit.bval,
                    "label": label,
                    "order": fit.order,
                    "n_directions": int(len(fit.indices)),
                    "lowered": bool(fit.lowered),
                    "indices": [int(i) for i in fit.indices],
                    "file": save_like(fit.coeffs, img, cwd / f"sh_{label}.nii.gz"),
                    "seconds": round(elapsed / max(len(fits), 1), 3),
                }
            )
        out = cwd / "shells.json"
        out.write_text(json.dumps(shells, indent=2))
        self._results["out_json"] = str(out)
        return runtime


class _MetricsInputSpec(_FitSHInputSpec):
    gfa = traits.Bool(True, usedefault=True, desc="compute GFA of CSD fODFs")
    n_threads = traits.Int(1, usedefault=True, desc="threads of the batched CSD solver")


class DiffusionMetrics(RunNamedInterface):
    """DTI FA/MD and CSD GFA for every shell of a run."""

    input_spec = _MetricsInputSpec
    output_spec = _ShellOutputSpec

    def _run_interface(self, runtime):
        from bids_harmony.dmri import metrics
        from bids_harmony.dmri.bands import MIN_DIRECTIONS
        from bids_harmony.dmri.gradients import group_shells, usable_directions

        img, data = load_image(self.inputs.in_file)
        _, mask = load_image(self.inputs.in_mask)
        mask = mask > 0
        bvals, bvecs = read_table(self.inputs.in_bval, self.inputs.in_bvec)
        shells = group_shells(
            bvals, b_tolerance=self.inputs.b_tolerance, b0_threshold=self.inputs.b0_threshold
        )
        common = {
            "mask": mask,
            "b_tolerance": self.inputs.b_tolerance,
            "b0_threshold": self.inputs.b0_threshold,
        }
        cwd = Path(runtime.cwd)
        results = []
        for shell in shells:
            label = shell.label
            if len(shell) < MIN_DIRECTIONS:
                LOGGER.warning(
                    "%s: shell %s has %d directions; DTI and CSD need %d, no maps for it.",
                    self.inputs.run_name or self.inputs.in_file, label, len(shell), MIN_DIRECTIONS,
                )  # fmt: skip
                continue
            if not usable_directions(np.asarray(bvecs)[shell.indices]):
                LOGGER.warning(
                    "%s: shell %s has directions along one axis or in one plane; no maps "
                    "for it.", self.inputs.run_name or self.inputs.in_file, label,
                )  # fmt: skip
                continue
            start = time.perf_counter()
            tensor = metrics.tensor_metrics(data, bvals, bvecs, shell=shell.bval, **common)
            t_dti = time.perf_counter() - start
            entry: dict[str, Any] = {
                "bval": shell.bval,
                "label": label,
                "fa": save_like(tensor["fa"], img, cwd / f"fa_{label}.nii.gz"),
                "md": save_like(tensor["md"], img, cwd / f"md_{label}.nii.gz"),
                "seconds": {"dti": round(t_dti, 3)},
            }
            if self.inputs.gfa:
                start = time.perf_counter()
                gfa = metrics.gfa_csd(
                    data,
                    bvals,
                    bvecs,
                    shell=shell.bval,
                    sh_order=self.inputs.sh_order,
                    fa=tensor["fa"],
                    n_threads=self.inputs.n_threads,
                    **common,
                )
                entry["seconds"]["csd_gfa"] = round(time.perf_counter() - start, 3)
                entry["gfa"] = save_like(gfa, img, cwd / f"gfa_{label}.nii.gz")
            results.append(entry)
        out = cwd / "metrics.json"
        out.write_text(json.dumps(results, indent=2))
        self._results["out_json"] = str(out)
        return runtime


def optional(value: Any) -> Any:
    """``None`` for an undefined trait value."""
    return value if isdefined(value) else None
