"""Real-data habits: odd b0 values, shells with too few directions, few directions."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.cli.run import main


def _edit_run(dwi, edit):
    stem = str(dwi)[: -len(".nii.gz")]
    img = nb.load(dwi)
    data = np.asarray(img.dataobj)
    bvals, bvecs = np.loadtxt(f"{stem}.bval"), np.loadtxt(f"{stem}.bvec")
    data, bvals, bvecs = edit(data, bvals, bvecs)
    nb.save(nb.Nifti1Image(data, img.affine), dwi)
    np.savetxt(f"{stem}.bval", bvals[None], fmt="%g")
    np.savetxt(f"{stem}.bvec", bvecs, fmt="%.6f")


def test_b0_of_10_and_a_three_direction_shell(small_bids, tmp_path):
    def edit(data, bvals, bvecs):
        bvals = np.where(bvals < 50, 10.0, bvals)
        data = np.concatenate([data, data[..., 2:5]], axis=-1)
        return data, np.r_[bvals, [300.0] * 3], np.c_[bvecs, np.eye(3)]

    dwi = next(small_bids.rglob("*_dwi.nii.gz"))
    _edit_run(dwi, edit)
    out = tmp_path / "out"
    assert main([str(small_bids), str(out), "participant", "-w", str(tmp_path / "w")]) == 0
    names = sorted(p.name for p in out.rglob("*_dwimap.nii.gz"))
    assert names and all("acq-b1000" in n for n in names)
    sidecar = next(out.rglob("*_model-sh_param-coeffs_dwimap.json"))
    meta = json.loads(sidecar.read_text())
    assert meta["OrientationEncoding"]["SphericalHarmonicDegree"] == 6
    assert meta["OrderLowered"] is True


@pytest.mark.parametrize(("n_dirs", "order"), [(15, 4), (6, 2)])
def test_few_directions_lower_the_order(tmp_path, n_dirs, order):
    from tests.conftest import hemisphere, make_bids, write_run

    bids = make_bids(tmp_path / "bids")
    for path in bids.rglob("*_dwi.*"):
        path.unlink()
    # Half-sphere spirals: six points of a full-sphere spiral lie on a cone, where
    # the tensor is undetermined (the input checks refuse such a table).
    write_run(bids / "sub-01" / "ses-A" / "dwi", "sub-01_ses-A", dirs=hemisphere(n_dirs),
              rng=np.random.default_rng(0))  # fmt: skip
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "-w", str(tmp_path / "w")]) == 0
    coeffs = nb.load(next(out.rglob("*_model-sh_param-coeffs_dwimap.nii.gz")))
    assert coeffs.shape[-1] == (order + 1) * (order + 2) // 2
    fa = np.asarray(nb.load(next(out.rglob("*_param-fa_dwimap.nii.gz"))).dataobj)
    assert np.isfinite(fa).all() and fa.max() > 0.3
