"""DKI at the participant level: the fit against dipy and known kurtosis, clipping,
the qualification rule, names and the reader, the interface and its sink."""

from __future__ import annotations

import json
import logging

import nibabel as nb
import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dki import DiffusionKurtosisModel
from dipy.reconst.dki import mean_kurtosis as dipy_mean_kurtosis
from dipy.sims.voxel import multi_tensor_dki

from bids_harmony.bids.derivatives import DKI_PARAMS, RunNames, write_derivatives
from bids_harmony.bids.outputs import dki_derivatives
from bids_harmony.bids.reader import RunOutputs
from bids_harmony.dmri import dki
from bids_harmony.errors import BadGradientsError, MissingOutputError
from tests.conftest import hemisphere

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

RUN = "sub-01_ses-A_acq-b1000"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1515)


def table(shells=(1000.0, 2000.0), n_dirs=30, n_b0=3):
    """b0s and ``n_dirs`` well-spread directions per shell (interleaved: a different set
    on each shell)."""
    dirs = hemisphere(n_dirs * len(shells))
    bvals = np.r_[np.zeros(n_b0), np.repeat(shells, n_dirs)]
    per_shell = [dirs[k :: len(shells)] for k in range(len(shells))]
    bvecs = np.vstack([np.zeros((n_b0, 3)), *per_shell])
    return bvals, bvecs


def isotropic_dki_signal(bvals, diffusivity, kurtosis, s0=100.0):
    r"""The DKI signal of an isotropic medium: :math:`S_0 \exp(-bD + b^2 D^2 K / 6)`."""
    return s0 * np.exp(-bvals * diffusivity + (bvals * diffusivity) ** 2 * kurtosis / 6.0)


def multi_tensor_voxels(rng, bvals, bvecs, n, snr=None):
    """``n`` two-fibre voxels from dipy's DKI forward model, random angles and fractions."""
    gtab = gradient_table(bvals, bvecs=bvecs)
    mevals = np.array([[1.7e-3, 0.3e-3, 0.3e-3], [1.5e-3, 0.4e-3, 0.4e-3]])
    out, truth = [], []
    for _ in range(n):
        angles = [(rng.uniform(0, 180), rng.uniform(0, 360)) for _ in range(2)]
        frac = rng.uniform(30, 70)
        signal, dt, kt = multi_tensor_dki(gtab, mevals, S0=100.0, angles=angles,
                                          fractions=[frac, 100 - frac], snr=None)  # fmt: skip
        if snr is not None:
            sigma = 100.0 / snr
            signal = np.hypot(signal + rng.normal(0, sigma, signal.shape),
                              rng.normal(0, sigma, signal.shape))  # fmt: skip
        out.append(signal)
        truth.append((dt, kt))
    return np.array(out), truth


# -- the fit ---------------------------------------------------------------------------------


def test_wls_equals_dipy_fit(rng):
    bvals, bvecs = table()
    signal, _ = multi_tensor_voxels(rng, bvals, bvecs, 60, snr=20)
    signal = np.r_[signal, rng.uniform(0, 3, (5, bvals.size))]  # noise-only voxels too
    gtab = gradient_table(bvals, bvecs=bvecs)
    ref = DiffusionKurtosisModel(gtab, fit_method="WLS").fit(signal)
    ours = dki.wls_dki_params(signal, dki.dki_design_matrix(gtab))
    assert dki.FIT_METHOD == "WLS"
    np.testing.assert_allclose(ours[:, :3], ref.model_params[:, :3], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours[:, 12:], ref.model_params[:, 12:], rtol=1e-6, atol=1e-8)
    maps = dki.raw_metrics(ours)
    bounds = {"min_kurtosis": None, "max_kurtosis": None}
    expected = {"md": ref.md, "ad": ref.ad, "rd": ref.rd, "fa": ref.fa, "kfa": ref.kfa,
                "mk": ref.mk(**bounds), "ak": ref.ak(**bounds), "rk": ref.rk(**bounds)}  # fmt: skip
    for name in DKI_PARAMS:
        np.testing.assert_allclose(maps[name], expected[name], rtol=1e-6, atol=1e-9,
                                   err_msg=name)  # fmt: skip


def test_noise_free_multi_tensor_recovers_the_truth(rng):
    bvals, bvecs = table()
    signal, truth = multi_tensor_voxels(rng, bvals, bvecs, 8)
    params = dki.wls_dki_params(signal, dki.dki_design_matrix(gradient_table(bvals, bvecs=bvecs)))
    for (dt, kt), fitted in zip(truth, params, strict=True):
        evals = np.sort(np.linalg.eigvalsh(np.array(
            [[dt[0], dt[1], dt[3]], [dt[1], dt[2], dt[4]], [dt[3], dt[4], dt[5]]]
        )))[::-1]  # fmt: skip
        np.testing.assert_allclose(fitted[:3], evals, rtol=1e-6)
        np.testing.assert_allclose(fitted[12:], kt, rtol=1e-5, atol=1e-6)
        true_params = np.r_[fitted[:12], kt]
        assert dipy_mean_kurtosis(fitted) == pytest.approx(dipy_mean_kurtosis(true_params), 1e-5)


def test_isotropic_kurtosis_known():
    """One compartment: K = 0; a given isotropic kurtosis is recovered in MK, AK and RK."""
    bvals, bvecs = table()
    voxels = [isotropic_dki_signal(bvals, 1.0e-3, 0.0), isotropic_dki_signal(bvals, 0.8e-3, 1.2)]
    data = np.array(voxels, dtype=float).reshape(2, 1, 1, -1)
    result = dki.dki_fit(data, bvals, bvecs)
    maps = {name: values.ravel() for name, values in result.maps.items()}
    np.testing.assert_allclose(maps["md"], [1.0e-3, 0.8e-3], rtol=1e-5)
    for name in ("mk", "ak", "rk"):
        np.testing.assert_allclose(maps[name], [0.0, 1.2], atol=1e-4, err_msg=name)
    np.testing.assert_allclose(maps["fa"], 0.0, atol=1e-5)
    assert all(values.dtype == np.float32 for values in result.maps.values())


def test_two_compartment_mixture_kurtosis():
    r"""Two isotropic pools: :math:`K = 3\,\mathrm{Var}(D)/\bar D^2` (Jensen 2005), up to the
    :math:`O(b^3)` terms the DKI expansion leaves out (small at b <= 1000)."""
    f, d1, d2 = 0.6, 1.5e-3, 0.3e-3
    mean = f * d1 + (1 - f) * d2
    expected = 3 * (f * d1**2 + (1 - f) * d2**2 - mean**2) / mean**2
    bvals, bvecs = table(shells=(500.0, 1000.0))
    signal = 100 * (f * np.exp(-bvals * d1) + (1 - f) * np.exp(-bvals * d2))
    result = dki.dki_fit(signal.reshape(1, 1, 1, -1), bvals, bvecs)
    assert result.maps["mk"].item() == pytest.approx(expected, rel=0.1)
    assert result.maps["md"].item() == pytest.approx(mean, rel=0.05)


def test_processes_match_one_process(rng):
    bvals, bvecs = table()
    signal, _ = multi_tensor_voxels(rng, bvals, bvecs, 40, snr=30)
    data = signal.reshape(4, 5, 2, -1)
    mask = np.ones(data.shape[:3], bool)
    mask[0, 0, 0] = False
    one = dki.dki_fit(data, bvals, bvecs, mask=mask, chunk_size=7)
    two = dki.dki_fit(data, bvals, bvecs, mask=mask, chunk_size=7, n_procs=2)
    for name in DKI_PARAMS:
        np.testing.assert_array_equal(one.maps[name], two.maps[name])
        assert one.maps[name][0, 0, 0] == 0.0
    assert one.clipped == two.clipped and one.n_voxels == 39


# -- clipping ---------------------------------------------------------------------------------


def test_clipping_to_physical_ranges_is_counted():
    bvals, bvecs = table()
    voxels = [
        isotropic_dki_signal(bvals, 0.8e-3, 0.9),  # plausible tissue: nothing clipped
        isotropic_dki_signal(bvals, 0.8e-3, -0.3),  # negative kurtosis -> 0
        isotropic_dki_signal(bvals, 0.4e-3, 4.0),  # K > 3 -> 3
        isotropic_dki_signal(bvals, 3.5e-3, 0.0),  # faster than free water -> 3e-3
    ]
    data = np.array(voxels).reshape(2, 2, 1, -1)
    result = dki.dki_fit(data, bvals, bvecs)
    mk = result.maps["mk"].reshape(-1)
    np.testing.assert_allclose(mk, [0.9, 0.0, 3.0, 0.0], atol=1e-4)
    assert result.clipped["mk"] == {"below": 1, "above": 1, "nonfinite": 0}
    assert result.clipped["md"] == {"below": 0, "above": 1, "nonfinite": 0}
    assert result.maps["md"].max() == pytest.approx(3e-3)
    assert result.clipped_total("fa") == 0 and result.n_voxels == 4
    for name, (low, high) in dki.RANGES.items():
        assert low <= result.maps[name].min() and result.maps[name].max() <= high


def test_clip_to_ranges_nonfinite():
    out, counts = dki.clip_to_ranges({"fa": np.array([np.nan, np.inf, 0.5, 1.5])})
    assert out["fa"].tolist() == [0.0, 0.0, 0.5, 1.0] and out["fa"].dtype == np.float32
    assert counts["fa"] == {"below": 0, "above": 1, "nonfinite": 2}


def test_ranges_documented():
    assert set(dki.RANGES) == set(dki.PARAMS) == set(DKI_PARAMS)
    assert dki.PARAMS == DKI_PARAMS
    assert dki.RANGES["mk"] == (0.0, 3.0) and dki.RANGES["md"] == (0.0, 3e-3)
    assert dki.RANGES["kfa"] == (0.0, 1.0)


# -- which runs qualify ---------------------------------------------------------------------


def test_single_shell_refused_with_a_clear_message():
    bvals, bvecs = table(shells=(1000.0,), n_dirs=60)
    support = dki.dki_support(bvals, bvecs, name=RUN)
    assert not support.ok
    assert support.reason == f"DKI needs two non-zero shells; {RUN} has one (b=1000)."
    data = np.ones((1, 1, 1, bvals.size))
    with pytest.raises(BadGradientsError, match="DKI needs two non-zero shells"):
        dki.dki_fit(data, bvals, bvecs, name=RUN)
    none = dki.dki_support(np.zeros(3), np.zeros((3, 3)), name=RUN)
    assert "has none" in none.reason


def test_too_few_or_degenerate_directions_refused():
    few = dki.dki_support(*table(n_dirs=6), name=RUN)  # 12 distinct directions
    assert not few.ok and "at least 15 distinct" in few.reason and "has 12" in few.reason
    # 30 directions at b=1000, but the b=2000 shell repeats one direction: singular design
    bvals = np.r_[0.0, np.full(30, 1000.0), np.full(30, 2000.0)]
    bvecs = np.r_[np.zeros((1, 3)), hemisphere(30), np.tile([[0.0, 0.0, 1.0]], (30, 1))]
    repeated = dki.dki_support(bvals, bvecs, name=RUN)
    assert not repeated.ok and "cannot separate the 22 DKI parameters" in repeated.reason
    # 15 directions on one shell and 6 on the other: the least that holds the fit
    bvals = np.r_[0.0, np.full(15, 1000.0), np.full(6, 2000.0)]
    bvecs = np.r_[np.zeros((1, 3)), hemisphere(15), hemisphere(6)]
    assert dki.dki_support(bvals, bvecs).ok


def test_b0_with_small_bvalue_and_bvecs_as_rows():
    bvals, bvecs = table()
    bvals[:3] = 5.0
    support = dki.dki_support(bvals, bvecs.T)
    assert support.ok and support.shells == (1000.0, 2000.0) and support.n_directions == 60


# -- names, the writer and the reader ------------------------------------------------------------


def test_dki_names():
    names = RunNames({"sub": "01", "ses": "A", "acq": "multishell"}, 2)
    assert names.dki_map("kfa").as_posix() == (
        "sub-01/ses-A/dwi/sub-01_ses-A_acq-multishell_model-dki_param-kfa_dwimap.nii.gz"
    )
    assert names.dki_map("mk", "dkicnn").name == (
        "sub-01_ses-A_acq-multishell_desc-dkicnn_model-dki_param-mk_dwimap.nii.gz"
    )
    plain = RunNames({"sub": "01"}, 2).dki_map("md")
    assert plain.name == "sub-01_model-dki_param-md_dwimap.nii.gz"
    with pytest.raises(ValueError, match="no DKI map"):
        names.dki_map("gfa")


def _summary(work, clipped=3):
    files = {}
    for param in DKI_PARAMS:
        files[param] = str(work / f"dki_{param}.nii.gz")
        (work / f"dki_{param}.nii.gz").write_bytes(b"")
    return {
        "files": files, "fit_method": "WLS", "shells": [1000.0, 2000.0], "n_volumes": 63,
        "n_voxels": 100, "ranges": {p: list(r) for p, r in dki.RANGES.items()},
        "clipped": {p: {"below": clipped, "above": 0, "nonfinite": 0} for p in DKI_PARAMS},
        "units": dki.UNITS, "descriptions": dki.DESCRIPTIONS,
    }  # fmt: skip


def test_writer_and_reader_round_trip(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    entities = {"sub": "01", "ses": "A", "acq": "multishell"}
    run = {"entities": entities, "n_shells": 2, "site": "GE", "is_phantom": False}
    written = write_derivatives(out, dki_derivatives(run, _summary(work), {"seed": 0}))
    reader = RunOutputs.from_entities(out, entities, [1000.0, 2000.0])
    assert set(reader.dki_maps()) == set(DKI_PARAMS)
    assert reader.dki_map("mk") == out / reader.names.dki_map("mk")
    assert set(reader.files()) == set(written)
    sidecar = json.loads(reader.dki_map("md").with_name(
        "sub-01_ses-A_acq-multishell_model-dki_param-md_dwimap.json").read_text())  # fmt: skip
    assert sidecar["Units"] == "mm^2/s" and sidecar["ClippedToRange"] == [0.0, 3e-3]
    assert sidecar["ClippedVoxels"] == {"below": 3, "above": 0, "nonfinite": 0, "total": 3,
                                        "of": 100}  # fmt: skip
    assert sidecar["Model"]["Parameters"]["FitMethod"] == "WLS"
    assert sidecar["Model"]["Parameters"]["ShellBValues"] == [1000.0, 2000.0]
    assert sidecar["Sources"] == [
        "bids::sub-01/ses-A/dwi/sub-01_ses-A_acq-multishell_space-dwi_desc-preproc_dwi.nii.gz",
        "bids::sub-01/ses-A/dwi/sub-01_ses-A_acq-multishell_space-dwi_desc-brain_mask.nii.gz",
    ]
    assert "dipy" in sidecar["SoftwareVersions"]
    reader.dki_map("mk").with_suffix("").with_suffix(".json")  # the sidecar exists
    (out / reader.names.dki_map("ak").with_suffix("").with_suffix(".json")).unlink()
    assert reader.dki_map("ak") is None  # no sidecar: interrupted, not complete
    with pytest.raises(MissingOutputError, match="param-ak"):
        reader.dki_map("ak", required=True)


def test_reader_finds_a_method_with_dki_maps_only(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    entities = {"sub": "01", "ses": "A"}
    run = {"entities": entities, "n_shells": 2, "site": "GE", "is_phantom": False}
    write_derivatives(out, dki_derivatives(run, _summary(work), {}, method="dkicnn"))
    reader = RunOutputs.from_entities(out, entities, [1000.0, 2000.0])
    assert reader.methods() == ["dkicnn"] and reader.dki_maps() == {}
    assert set(reader.dki_maps("dkicnn")) == set(DKI_PARAMS)


# -- the interface and its sink ------------------------------------------------------------


def test_fit_dki_interface_and_sink(tmp_path, rng, caplog):
    from bids_harmony.interfaces.dki import DkiSink, FitDKI
    from bids_harmony.interfaces.dmri import write_table

    bvals, bvecs = table()
    signal, _ = multi_tensor_voxels(rng, bvals, bvecs, 4 * 4 * 3, snr=40)
    data = signal.reshape(4, 4, 3, -1).astype(np.float32)
    data[0, 0, 0] = isotropic_dki_signal(bvals, 0.8e-3, -0.5)  # clipped MK
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nb.save(nb.Nifti1Image(data, affine), tmp_path / "dwi.nii.gz")
    nb.save(nb.Nifti1Image(np.ones((4, 4, 3), np.uint8), affine), tmp_path / "mask.nii.gz")
    bval, bvec = write_table(bvals, bvecs, tmp_path / "dwi")
    for folder in ("node", "sink"):
        (tmp_path / folder).mkdir()
    with caplog.at_level(logging.INFO, logger="bids_harmony"):
        result = FitDKI(in_file=str(tmp_path / "dwi.nii.gz"), in_bval=bval, in_bvec=bvec,
                        in_mask=str(tmp_path / "mask.nii.gz"), run_name=RUN).run(
                            cwd=str(tmp_path / "node"))  # fmt: skip
    summary = json.loads(open(result.outputs.out_json).read())
    n_mk = sum(summary["clipped"]["mk"].values())
    assert summary["clipped"]["mk"]["below"] >= 1 and summary["n_voxels"] == 48
    lines = [r.getMessage() for r in caplog.records if "DKI (WLS" in r.getMessage()]
    assert len(lines) == 1 and "b=1000, 2000, 48 voxels" in lines[0]
    assert f"MK {n_mk} ({100 * n_mk / 48:.1f}%)" in lines[0]
    mk = nb.load(summary["files"]["mk"])
    assert mk.shape == (4, 4, 3) and mk.get_data_dtype() == np.float32
    assert np.allclose(mk.affine, affine)

    run_info = {"entities": {"sub": "01", "ses": "A", "acq": "multishell"}, "n_shells": 2,
                "site": "GE", "is_phantom": False}  # fmt: skip
    out = tmp_path / "out"
    sink = DkiSink(output_dir=str(out), run_info=run_info, params={"seed": 0},
                   dki_json=result.outputs.out_json).run(cwd=str(tmp_path / "sink"))  # fmt: skip
    assert len(sink.outputs.out_files) == 2 * len(DKI_PARAMS)
    reader = RunOutputs.from_entities(out, run_info["entities"], [1000.0, 2000.0])
    assert set(reader.dki_maps()) == set(DKI_PARAMS)
    assert not list(out.rglob(".tmp-*"))
