"""LinearRISH's DKI maps: DKI refitted on the DWI rebuilt from the harmonized SH
coefficients (bids_harmony.interfaces.rish.apply_to_run -> interfaces.dki_harmonized)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.bids.derivatives import DKI_PARAMS, RunNames, sidecar_path
from bids_harmony.bids.group_inputs import ShellMaps
from bids_harmony.bids.io import write_json
from bids_harmony.bids.reader import RunOutputs
from tests.conftest import fibonacci_directions

SHAPE = (6, 6, 4)


def _kurtosis_dwi(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two shells of a fibre along x with isotropic kurtosis 1, Rician-ish noise."""
    dirs = fibonacci_directions(30)
    bvals = np.r_[0.0, 0.0, np.full(30, 1000.0), np.full(30, 2000.0)]
    bvecs = np.vstack([np.zeros((2, 3)), dirs, dirs[::-1]])
    adc = (bvecs**2) @ np.array([1.7e-3, 0.4e-3, 0.4e-3])
    md = 0.833e-3
    signal = 1000.0 * np.exp(-bvals * adc + bvals**2 * md**2 * 1.0 / 6.0)
    data = np.broadcast_to(signal, (*SHAPE, bvals.size)).astype(np.float32)
    return data + np.abs(rng.normal(0, 10.0, data.shape)).astype(np.float32), bvals, bvecs


def _save(root, relpath, array, affine, sidecar=None):
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(np.asarray(array, np.float32), affine), path)
    write_json(root / sidecar_path(relpath), sidecar or {})
    return path


@pytest.fixture
def run_outputs(tmp_path):
    """A multi-shell run's participant outputs (preprocessed DWI, mask, SH per shell)."""
    from bids_harmony.dmri.sh import fit_shells

    data, bvals, bvecs = _kurtosis_dwi(np.random.default_rng(0))
    names = RunNames({"sub": "01", "ses": "GE1", "acq": "ms"}, 2)
    root, affine = tmp_path / "out", np.diag([2.0, 2.0, 2.0, 1.0])
    dwi = _save(root, names.dwi(), data, affine)
    dwi.with_name(dwi.name.replace(".nii.gz", ".bval")).write_text(
        " ".join(f"{b:g}" for b in bvals))
    dwi.with_name(dwi.name.replace(".nii.gz", ".bvec")).write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in bvecs[:, i]) for i in range(3)))
    mask = _save(root, names.mask(), np.ones(SHAPE), affine)
    outputs = RunOutputs(root, names, ("b1000", "b2000"))
    run = SimpleNamespace(site="GE", is_phantom=False, prefix=names.prefix)
    shells = []
    for fit in fit_shells(data, bvals, bvecs, mask=np.ones(SHAPE, bool)):
        sh = _save(root, names.shell_map(fit.label, "sh"), fit.coeffs, affine)
        shells.append(ShellMaps(run=run, label=fit.label, outputs=outputs, raw={"sh": sh}))
    return shells, mask, outputs


def test_rish_refits_dki_on_the_rebuilt_dwi(run_outputs, monkeypatch):
    from bids_harmony.interfaces import rish

    shells, mask, outputs = run_outputs
    # template space = native space here: the warp is the identity
    monkeypatch.setattr(rish, "from_template", lambda array, transform, template: array)
    scales = {"b1000": np.full((*SHAPE, 4), 1.2, np.float32),
              "b2000": np.full((*SHAPE, 4), 0.8, np.float32)}  # fmt: skip
    written = rish.apply_to_run(
        shells, scales, None, mask, mask_file=mask, subjects=["01", "02"], b_tolerance=50.0,
        b0_threshold=50.0, dki=True,
        model={"ModelFile": "bids::models/rish.safetensors", "ModelSHA256": "0" * 64,
               "SourceSite": "GE", "TargetSite": "Prisma"},
    )  # fmt: skip
    assert set(written["dki"]) == set(DKI_PARAMS)
    maps = outputs.dki_maps("rish")
    assert set(maps) == set(DKI_PARAMS)  # complete: image and sidecar

    from bids_harmony.dmri.dki import dki_fit

    preproc = outputs.preproc(required=True)
    raw = dki_fit(np.asarray(nb.load(preproc.dwi).dataobj),
                  np.loadtxt(preproc.bval), np.loadtxt(preproc.bvec)).maps  # fmt: skip
    harmonized = {p: np.asarray(nb.load(maps[p]).dataobj) for p in DKI_PARAMS}
    assert harmonized["md"].mean() < 0.95 * raw["md"].mean()  # the DW signal scaled up
    assert not np.allclose(harmonized["mk"], raw["mk"])
    assert all(np.isfinite(a).all() for a in harmonized.values())

    sidecar = json.loads(sidecar_path(maps["mk"]).read_text())
    assert sidecar["Harmonization"]["Method"] == "rish"
    assert sidecar["Harmonization"]["ModelFile"] == "bids::models/rish.safetensors"
    assert sidecar["Harmonization"]["TrainingSubjects"] == ["sub-01", "sub-02"]
    assert sidecar["Site"] == "GE" and sidecar["Units"] == "arbitrary"
    assert sidecar["Model"]["Parameters"]["ShellBValues"] == [1000.0, 2000.0]
    assert "LinearRISH" in sidecar["Description"]
    names = outputs.names
    assert sidecar["Sources"] == [
        f"bids::{names.dwi().as_posix()}",
        *(f"bids::{names.shell_map(s, 'sh').as_posix()}" for s in ("b1000", "b2000")),
        f"bids::{names.mask().as_posix()}", "bids::models/rish.safetensors"]
    assert "Parameters" not in sidecar


def test_no_dki_maps_when_a_shell_is_not_harmonized(run_outputs, monkeypatch, caplog):
    from bids_harmony.interfaces import rish

    shells, mask, outputs = run_outputs
    caplog.set_level(logging.INFO, logger="bids_harmony")
    monkeypatch.setattr(rish, "from_template", lambda array, transform, template: array)
    written = rish.apply_to_run(shells[:1], {"b1000": np.ones((*SHAPE, 4), np.float32)},
                                None, mask, mask_file=mask, subjects=["01"], b_tolerance=50.0,
                                b0_threshold=50.0, dki=True)  # fmt: skip
    assert "dki" not in written and not outputs.dki_maps("rish")
    assert "b=2000 not harmonized" in caplog.text
