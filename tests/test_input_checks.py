"""The input checks (bids/checks.py) on crafted files and tables with known answers.

The CLI side (exit code, message, nothing written) is in test_bad_inputs.py.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_harmony.bids.checks import (
    Problem,
    RunFacts,
    apply_overrides,
    check_data,
    check_gradients,
    check_header,
    report,
)
from bids_harmony.dmri.gradients import distinct_axes, tensor_conditioning, usable_directions
from bids_harmony.errors import BadGradientsError, BadImageError, InputCheckError
from tests.conftest import fibonacci_directions, hemisphere

BVALS = np.r_[np.zeros(2), np.full(30, 1000.0), np.full(30, 2000.0)]
BVECS = np.vstack([np.zeros((2, 3)), hemisphere(30), hemisphere(30)])


def image(path: Path, data: np.ndarray, affine=None, *, edit=None) -> Path:
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    if edit is not None:
        edit(img.header)
    nib.save(img, path)
    return path


def signal(n: int = 62, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).uniform(100, 1000, (6, 5, 4, n)).astype(dtype)


def checks(problems: list[Problem]) -> list[tuple[str, bool]]:
    return [(p.check, p.error) for p in problems]


# --- gradient numerics: closed-form cases -------------------------------------------------


def test_distinct_axes_counts_antipodal_and_repeated_vectors_once():
    axes = np.eye(3)
    assert distinct_axes(np.vstack([axes, -axes, axes])) == 3
    assert distinct_axes(hemisphere(30)) == 30
    tilted = np.array([[1.0, 0.0, 0.0], [np.cos(0.01), np.sin(0.01), 0.0]])  # 0.57° apart
    assert distinct_axes(tilted) == 1 and distinct_axes(tilted, angle=0.1) == 2


def test_tensor_conditioning_is_zero_for_degenerate_schemes():
    assert tensor_conditioning(np.tile([[0.0, 0.0, 1.0]], (30, 1))) == 0.0
    angle = np.linspace(0, np.pi, 30, endpoint=False)
    in_plane = np.stack([np.cos(angle), np.sin(angle), 0 * angle], axis=1)
    assert tensor_conditioning(in_plane) < 1e-12  # gz = 0: three design columns vanish
    assert tensor_conditioning(hemisphere(30)) > 0.3
    assert tensor_conditioning(hemisphere(5)) == 0.0  # fewer vectors than unknowns
    # The classic 6-direction scheme (Jones 1999) is well posed.
    six = np.array([[1, 0, 1], [-1, 0, 1], [0, 1, 1], [0, 1, -1], [1, 1, 0], [-1, 1, 0]]) / 2**0.5
    assert tensor_conditioning(six) > 0.3
    assert usable_directions(six) and not usable_directions(in_plane)


def test_six_distinct_but_ill_posed_directions():
    # Six distinct axes on a full-sphere spiral, yet the tensor design is singular
    # (they lie on a quadric cone): counting directions is not enough.
    sphere = fibonacci_directions(6)
    assert distinct_axes(sphere) == 6 and not usable_directions(sphere)


# --- gradient plausibility ----------------------------------------------------------------


def facts(bvals=BVALS, bvecs=BVECS) -> RunFacts:
    return RunFacts(Path("sub-01_dwi.nii.gz"), np.asarray(bvals, float), np.asarray(bvecs, float))


def test_a_good_table_has_no_problem():
    assert check_gradients(facts()) == []


@pytest.mark.parametrize(
    ("bvals", "check", "text"),
    [
        (BVALS * 1000, "bvalue-range", "1000 times too large"),
        (BVALS * 20, "bvalue-range", "above the plausible"),
        (BVALS / 1000, "bvalue-units", "ms/µm²"),
        (BVALS * 0, "bvalue-units", "only b0 volumes"),
    ],
)
def test_implausible_bvalues(bvals, check, text):
    problems = check_gradients(facts(bvals))
    found = [p for p in problems if p.check == check]
    assert found and found[0].error and text in found[0].message


def test_one_degenerate_shell_is_a_warning_all_degenerate_an_error():
    one_axis = BVECS.copy()
    one_axis[2:32] = [1.0, 0.0, 0.0]
    assert checks(check_gradients(facts(bvecs=one_axis))) == [("shell-directions", False)]
    one_axis[32:] = [0.0, 1.0, 0.0]
    assert checks(check_gradients(facts(bvecs=one_axis))) == [
        ("shell-directions", False), ("shell-directions", False), ("directions", True)
    ]  # fmt: skip


def test_five_directions_repeated_are_too_few():
    five = BVECS.copy()
    five[2:] = np.tile(hemisphere(5), (12, 1))
    problems = check_gradients(facts(bvecs=five))
    assert ("directions", True) in checks(problems)
    assert "5 distinct direction(s)" in problems[0].message


def test_low_bvalue_shell_is_a_warning():
    bvals = BVALS.copy()
    bvals[2:32] = 80.0
    assert checks(check_gradients(facts(bvals))) == [("low-bvalue", False)]


# --- the header ---------------------------------------------------------------------------


def test_header_zero_voxel_size_seen_through_nibabel_fix(tmp_path):
    def zero(header):
        header["pixdim"][1:4] = [0.0, 2.0, 2.0]

    path = image(tmp_path / "a.nii.gz", signal(), edit=zero)
    assert checks(check_header(path)) == [("voxel-size", True)]


def rewrite_header(path: Path, edit) -> None:
    """Edit an uncompressed NIfTI's header bytes (nibabel would not save these)."""
    raw = path.read_bytes()
    header = nib.Nifti1Header(raw[:348], check=False)
    edit(header)
    path.write_bytes(header.binaryblock + raw[348:])


def test_header_without_orientation(tmp_path):
    path = image(tmp_path / "a.nii", signal())
    rewrite_header(path, lambda h: (h.__setitem__("qform_code", 0), h.__setitem__("sform_code", 0)))
    assert checks(check_header(path)) == [("affine", True)]
    assert checks(check_header(image(tmp_path / "b.nii.gz", signal()))) == []


def test_header_singular_affine_and_odd_voxels(tmp_path):
    path = image(tmp_path / "a.nii", signal())
    rewrite_header(path, lambda h: (h.__setitem__("qform_code", 0), h.__setitem__("srow_z", 0)))
    assert checks(check_header(path)) == [("affine", True)]
    assert "singular" in check_header(path)[0].message
    slab = image(tmp_path / "b.nii.gz", signal(), np.diag([1.0, 1.0, 8.0, 1.0]))
    assert checks(check_header(slab)) == [("voxel-size-range", False)]


# --- the voxels ---------------------------------------------------------------------------


def test_clean_images_pass_in_every_dtype_and_byte_order(tmp_path):
    for dtype in (np.int16, np.uint8, np.float32, np.float64, ">f4", ">i2"):
        path = image(tmp_path / f"{np.dtype(dtype).str[1:]}.nii.gz", signal(dtype=dtype))
        assert check_data(path, BVALS) == [], dtype
    assert check_data(image(tmp_path / "plain.nii", signal()), BVALS) == []


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_values_are_counted(tmp_path, value):
    data = signal()
    data[1, 2, 3, 5] = data[0, 0, 0, 40] = value
    (problem,) = check_data(image(tmp_path / "a.nii.gz", data), BVALS)
    assert problem.check == "image-data" and problem.message.startswith("2 NaN/Inf values")


def test_truncated_files(tmp_path):
    path = image(tmp_path / "a.nii.gz", signal())
    content = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(content[: len(content) * 3 // 4])
    (problem,) = check_data(cut, BVALS)
    assert "truncated" in problem.message and problem.error
    raw = gzip.decompress(content)
    short = tmp_path / "short.nii"
    short.write_bytes(raw[:-100])
    (problem,) = check_data(short, BVALS)
    assert "volume 61 of 62 is incomplete" in problem.message
    crc = bytearray(content)
    crc[-6] ^= 0xFF  # the gzip trailer's CRC: every byte read, the check fails at the end
    bad = tmp_path / "crc.nii.gz"
    bad.write_bytes(bytes(crc))
    (problem,) = check_data(bad, BVALS)
    assert "corrupt" in problem.message


def test_zero_volumes(tmp_path):
    data = signal()
    data[..., [10, 11]] = 0
    (problem,) = check_data(image(tmp_path / "a.nii.gz", data), BVALS)
    assert (problem.check, problem.error) == ("zero-volumes", False)
    assert "2 volume(s) are entirely 0 (10, 11)" in problem.message
    data[..., :2] = 0  # both b0s
    (problem,) = check_data(image(tmp_path / "b.nii.gz", data), BVALS)
    assert problem.error and "all b0 volumes (0, 1) are 0" in problem.message
    (problem,) = check_data(image(tmp_path / "c.nii.gz", data * 0), BVALS)
    assert problem.error and "holds no data" in problem.message


# --- overrides and the report -------------------------------------------------------------


def test_overrides_turn_only_their_errors_into_warnings():
    problems = [
        Problem("affine", Path("a.nii.gz"), "no orientation."),
        Problem("image-data", Path("b.nii.gz"), "NaN."),
    ]
    kept = apply_overrides(problems, ["affine"])
    assert [(p.check, p.error) for p in kept] == [("affine", False), ("image-data", True)]
    with pytest.raises(InputCheckError, match="only affine, bvalue-range can be ignored"):
        apply_overrides(problems, ["image-data"])


def test_report_lists_every_error_and_groups_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="bids_harmony")
    warnings = [Problem("zero-volumes", Path(f"sub-0{i}_dwi.nii.gz"), "1 volume is 0.", False)
                for i in range(1, 6)]  # fmt: skip
    report(warnings)
    assert caplog.text.count("1 volume is 0.") == 1
    assert "5 runs (sub-01_dwi.nii.gz, sub-02_dwi.nii.gz, sub-03_dwi.nii.gz, ...)" in caplog.text
    failure = BadGradientsError("sub-09_dwi.bval is empty.")
    with pytest.raises(BadGradientsError, match="is empty"):
        report(warnings, failures=[failure])  # a single failure keeps its type
    errors = [Problem("image-data", Path("sub-01_dwi.nii.gz"), "NaN.")]
    with pytest.raises(InputCheckError) as caught:
        report(errors + warnings, failures=[failure, BadImageError("sub-08: 3-D.")])
    message = str(caught.value)
    assert message.startswith("3 problem(s) with the input; nothing was processed or written")
    assert "sub-09_dwi.bval is empty." in message and "sub-01_dwi.nii.gz: NaN." in message


def test_discover_with_an_override(tmp_path, caplog):
    from bids_harmony.bids.discovery import discover
    from tests.conftest import make_bids

    bids = make_bids(tmp_path / "bids")
    dwi = next(bids.rglob("*_dwi.nii.gz"))
    bval = dwi.with_name(dwi.name.replace(".nii.gz", ".bval"))
    bval.write_text(bval.read_text().replace("1000", "40000"))  # a preclinical protocol
    with pytest.raises(InputCheckError, match="--ignore-check bvalue-range"):
        discover(bids)
    caplog.set_level(logging.WARNING, logger="bids_harmony")
    study = discover(bids, ignore_checks=["bvalue-range"])
    assert study.runs[0].shells == (40000.0,)
    assert "(ignored: --ignore-check)" in caplog.text


def test_zero_is_judged_after_scaling(tmp_path):
    # Raw zeros with an intercept (Philips-style scaling) are not an empty image.
    img = nib.Nifti1Image(np.zeros((4, 4, 3, 62), np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, 100.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    assert check_data(tmp_path / "scaled.nii.gz", BVALS) == []
