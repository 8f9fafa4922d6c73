"""CLI: parser behaviour and bad input handled with clear errors, no partial outputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_harmony.cli.parser import build_parser
from bids_harmony.cli.run import main


def parse(*extra: str):
    return build_parser().parse_args(["/bids", "/out", "participant", *extra])


def test_labels_accept_prefixes():
    args = parse("--participant-label", "sub-01", "02", "--session-label", "ses-GE1", "Prisma1")
    assert args.participant_label == ["01", "02"]
    assert args.session_label == ["GE1", "Prisma1"]


@pytest.mark.parametrize("bad", ["sub-", "0_1", "a b"])
def test_bad_label_rejected(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--participant-label", bad)
    assert exc.value.code == 2


def test_defaults():
    args = parse()
    assert (args.sh_order, args.b_tolerance, args.preproc, args.seed) == (8, 50.0, "auto", 0)


def test_sh_order_must_be_even():
    with pytest.raises(SystemExit):
        parse("--sh-order", "5")


def test_version_and_help_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "bids_harmony.cli.run", "--version"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.startswith("bids-harmony ")
    out = subprocess.run(
        [sys.executable, "-m", "bids_harmony.cli.run", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "participant" in out.stdout and "--participant-label" in out.stdout


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom bids_harmony.cli.parser import build_parser\n"
        "from bids_harmony.cli import run\n"
        "heavy = [m for m in ('nipype', 'dipy', 'torch', 'bids', 'nibabel', 'numpy') "
        "if m in sys.modules]\nprint(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_states_each_default_once():
    from bids_harmony.cli.simulate import build_parser as build_simulate_parser

    for parser in (build_parser(), build_simulate_parser()):
        text = " ".join(parser.format_help().split())  # undo line wrapping
        for noise in ("(default: True)", "(default: False)", "(default: [])", "(default: None)"):
            assert noise not in text, (parser.prog, noise)
    text = " ".join(build_parser().format_help().split())
    assert "GFA maps, which are written by default" in text
    assert "--sh-order SH_ORDER maximum spherical-harmonic order (default: 8)" in text


def run_cli(bids: Path, out: Path, tmp_path: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--nprocs", "1", "--no-gfa", *extra])  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_group_needs_a_target_site_without_models(small_bids, tmp_path, caplog):
    out = tmp_path / "out"
    assert main([str(small_bids), str(out), "group"]) == 2
    assert "--target-site" in caplog.text and "sites:" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize("extra", [[], ["--target-site", "Nowhere"]])
def test_train_needs_a_known_target_site(small_bids, tmp_path, caplog, extra):
    out = tmp_path / "out"
    assert main([str(small_bids), str(out), "train", *extra]) == 2
    assert "--target-site" in caplog.text and "Prisma" in caplog.text
    assert not out.exists()


def test_not_a_bids_dataset(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert run_cli(tmp_path / "empty", out, tmp_path) == 2
    assert "dataset_description.json" in caplog.text
    assert not out.exists()


def test_unknown_participant_lists_existing(small_bids, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path, "--participant-label", "99") == 2
    assert "99" in caplog.text and "01" in caplog.text
    assert not out.exists()


def test_unknown_phantom_label_lists_participants(small_bids, tmp_path, caplog):
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path, "--phantom-label", "99") == 2
    assert "sub-99" in caplog.text and "Participants in the dataset: sub-01" in caplog.text
    assert "phantom participants:" not in caplog.text.lower()
    assert not out.exists()


def test_no_dwi_runs(small_bids, tmp_path, caplog):
    for path in small_bids.rglob("*_dwi.*"):
        path.unlink()
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda d: d.with_suffix("").with_suffix(".bval").unlink(), "bval"),
        (lambda d: d.with_suffix("").with_suffix(".bvec").write_text("a b c\n"), ".bvec"),
        (lambda d: _truncate_table(d, 20), "volumes"),
        (lambda d: d.with_suffix("").with_suffix(".bval").write_text("0 1000\n"), "b-vectors"),
        (lambda d: _edit_bvec(d, 5, [0.0, 0.0, 0.0]), "unit"),
        (lambda d: _edit_bvec(d, 5, [0.5, 0.5, 0.0]), "unit"),
        (lambda d: _no_b0(d), "b0"),
    ],
    ids=[
        "missing-bval",
        "malformed-bvec",
        "count-mismatch",
        "bval-bvec-mismatch",
        "zero-bvec",
        "non-unit",
        "no-b0",
    ],
)
def test_bad_gradients(small_bids, tmp_path, caplog, corrupt, expected):
    dwi = next(small_bids.rglob("*_dwi.nii.gz"))
    corrupt(dwi)
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path) == 2
    assert expected in caplog.text
    assert dwi.name.split("_dwi")[0] in caplog.text
    assert not out.exists()


def _edit_bvec(dwi: Path, index: int, vector: list[float]) -> None:
    path = dwi.with_suffix("").with_suffix(".bvec")
    bvecs = np.loadtxt(path)
    bvecs[:, index] = vector
    np.savetxt(path, bvecs, fmt="%.6f")


def _truncate_table(dwi: Path, n: int) -> None:
    stem = dwi.with_suffix("").with_suffix("")
    bvals = np.loadtxt(f"{stem}.bval")[:n]
    bvecs = np.loadtxt(f"{stem}.bvec")[:, :n]
    np.savetxt(f"{stem}.bval", bvals[None], fmt="%g")
    np.savetxt(f"{stem}.bvec", bvecs, fmt="%.6f")


def _no_b0(dwi: Path) -> None:
    path = dwi.with_suffix("").with_suffix(".bval")
    bvals = np.loadtxt(path)
    bvals[bvals < 50] = 1000
    np.savetxt(path, bvals[None], fmt="%g")


def test_nan_voxels_fail_without_outputs(small_bids, tmp_path, caplog):
    dwi = next(small_bids.rglob("*_dwi.nii.gz"))
    img = nb.load(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[2, 2, 2, 3] = np.nan
    nb.save(nb.Nifti1Image(data, img.affine), dwi)
    out = tmp_path / "out"
    code = run_cli(small_bids, out, tmp_path)
    assert code != 0
    assert "NaN" in caplog.text and dwi.name in caplog.text
    assert not list(out.rglob("*_dwi.nii.gz"))


def test_output_inside_input(small_bids, tmp_path, caplog):
    assert run_cli(small_bids, small_bids / "out", tmp_path) == 2
    assert "inside the input dataset" in caplog.text
    assert not (small_bids / "out").exists()


def test_unwritable_output(small_bids, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli(small_bids, blocker / "out", tmp_path) == 2
    assert "not a directory" in caplog.text


def test_foreign_output_dataset_refused(small_bids, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "GeneratedBy": [{"Name": "fmriprep"}]})
    )
    assert run_cli(small_bids, out, tmp_path) == 2
    assert "fmriprep" in caplog.text


@pytest.mark.slow
def test_failed_rerun_keeps_previous_outputs(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path) == 0
    before = tree_digest(out)
    assert any(name.endswith("_dwimap.nii.gz") for name in before)
    assert run_cli(small_bids, out, tmp_path, "--participant-label", "77") == 2
    bval = next(small_bids.rglob("*_dwi.bval"))
    bval.write_text("0 1000\n")
    assert run_cli(small_bids, out, tmp_path) == 2
    assert tree_digest(out) == before


def test_truncated_image_fails_cleanly(small_bids, tmp_path, caplog):
    dwi = next(small_bids.rglob("*_dwi.nii.gz"))
    dwi.write_bytes(dwi.read_bytes()[:-2000])
    out = tmp_path / "out"
    assert run_cli(small_bids, out, tmp_path) != 0
    assert dwi.name in caplog.text
    assert not list(out.rglob("*_dwi.nii.gz"))
