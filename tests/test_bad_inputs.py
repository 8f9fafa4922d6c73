"""The bad-input corpus: every way a user's input can be wrong, from the CLI.

Each case copies the tiny study, breaks one thing and runs ``bids-harmony`` against
an output directory that already holds participant outputs.  It must exit with the
case's code (2 for bad input), print a message that names the culprit (file, label
or option) and the problem, and leave the earlier outputs byte-identical: no file
changed, added or removed, and no work directory created.

Most cases fail in discovery, before anything is built, so the whole corpus takes
about a minute.  ``tests/test_input_checks.py`` tests the checks themselves on
arrays; ``tests/test_indexing_robust.py`` the indexing of odd datasets.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_harmony.cli.run import main

RUN = "sub-01/ses-GE1/dwi/sub-01_ses-GE1_acq-multishell_dwi"
"""The run the participant-level cases select (``--participant-label 01
--session-label GE1``) and break."""
OTHER = "sub-02/ses-GE1/dwi/sub-02_ses-GE1_acq-multishell_dwi"
"""A run of another participant: its problems must not stop a run on sub-01."""


# --- the study and its earlier outputs -----------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The tiny study, participant outputs of one run, and their digests."""
    from bids_harmony.simulate import simulate_study

    root = tmp_path_factory.mktemp("corpus")
    bids = root / "bids"
    simulate_study(bids, size="tiny", seed=3)
    out = root / "earlier"
    args = [str(bids), str(out), "participant", "-w", str(root / "work")]
    assert main([*args, "--participant-label", "01", "--session-label", "GE1"]) == 0
    return bids, out, digests(out)


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file and the list of folders under ``root``."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def linked_copy(source: Path, target: Path) -> None:
    """Copy a tree with hard links (fast); edits must replace files, see :func:`replace`."""
    shutil.copytree(source, target, copy_function=os.link, symlinks=True)


def replace(path: Path, content: bytes | str) -> None:
    """Write ``path`` as a new file, leaving the hard-linked original untouched."""
    path.unlink(missing_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)


def save_image(path: Path, data: np.ndarray, affine: np.ndarray, *, edit=None) -> None:
    img = nib.Nifti1Image(data, affine)
    if edit is not None:
        edit(img.header)
    path.unlink(missing_ok=True)
    nib.save(img, path)


def edit_image(bids: Path, change: Callable[[np.ndarray], np.ndarray], *, edit=None) -> None:
    path = bids / f"{RUN}.nii.gz"
    img = nib.load(path)
    data = change(np.asarray(img.dataobj).astype(np.float32))
    save_image(path, data, img.affine, edit=edit)


def edit_table(bids: Path, bvals=None, bvecs=None, run: str = RUN) -> None:
    """Rewrite the run's ``.bval``/``.bvec`` with functions of the current tables."""
    stem = bids / run
    old_bvals = np.loadtxt(f"{stem}.bval")
    old_bvecs = np.loadtxt(f"{stem}.bvec")
    if bvals is not None:
        values = bvals(old_bvals)
        replace(Path(f"{stem}.bval"), " ".join(f"{b:g}" for b in values) + "\n")
    if bvecs is not None:
        vectors = bvecs(old_bvecs, old_bvals)
        text = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in vectors) + "\n"
        replace(Path(f"{stem}.bvec"), text)


def _dw(bvals: np.ndarray) -> np.ndarray:
    return bvals >= 50


def one_direction(bvecs, bvals):
    out = bvecs.copy()
    out[:, _dw(bvals)] = np.array([[1.0], [0.0], [0.0]])
    return out


def coplanar(bvecs, bvals):
    out = bvecs.copy()
    angles = np.linspace(0, np.pi, int(_dw(bvals).sum()), endpoint=False)
    out[:, _dw(bvals)] = np.stack([np.cos(angles), np.sin(angles), 0 * angles])
    return out


def five_directions(bvecs, bvals):
    out = bvecs.copy()
    five = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.7071, 0.7071, 0], [0, 0.7071, 0.7071]])
    index = np.flatnonzero(_dw(bvals))
    out[:, index] = five[np.arange(index.size) % 5].T
    return out


# --- the corpus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input.

    ``corrupt(bids, tmp)`` breaks the study copy and returns extra CLI arguments;
    ``problem`` is a regex the message must match, ``culprit`` text it must contain.
    """

    id: str
    corrupt: Callable[[Path, Path], list[str]]
    problem: str
    culprit: str | None
    level: str = "participant"
    code: int = 2
    select: bool = True
    options: list[str] = field(default_factory=list)


def args_only(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda bids, tmp: list(extra)


def _remove(relative: str) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        (bids / relative).unlink()
        return []

    return corrupt


def _write(relative: str, content: str | bytes) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        replace(bids / relative, content)
        return []

    return corrupt


def _file_arg(option: str, name: str, content: str) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        path = tmp / name
        path.write_text(content)
        return [option, str(path)]

    return corrupt


def _then(*steps: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        return [arg for step in steps for arg in step(bids, tmp)]

    return corrupt


def _table(bvals=None, bvecs=None, run=RUN) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        edit_table(bids, bvals, bvecs, run=run)
        return []

    return corrupt


def _image(change, edit=None) -> Callable[[Path, Path], list[str]]:
    def corrupt(bids, tmp):
        edit_image(bids, change, edit=edit)
        return []

    return corrupt


def _truncate(bids, tmp):
    path = bids / f"{RUN}.nii.gz"
    content = path.read_bytes()
    replace(path, content[: len(content) // 2])
    return []


def _truncate_uncompressed(bids, tmp):
    path = bids / f"{RUN}.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.unlink()
    replace(bids / f"{RUN}.nii", raw[: len(raw) - 1000])
    return []


def _nan(data):
    data[4, 4, 4, 3] = np.nan
    return data


def _inf(data):
    data[2, 3, 4, 7] = np.inf
    return data


def _zero_b0(bids, tmp):
    bvals = np.loadtxt(bids / f"{RUN}.bval")
    edit_image(bids, lambda d: np.where((bvals < 50)[None, None, None], 0, d).astype(np.float32))
    return []


def _zooms(zooms):
    def edit(header):
        header["pixdim"][1:4] = zooms

    return edit


def _no_affine(header):
    header.set_qform(None, code=0)
    header.set_sform(None, code=0)


def _three_d(bids, tmp):
    edit_image(bids, lambda d: d[..., 0])
    return []


def _symlink_outside_path(bids, tmp):
    # A run's image replaced by a dangling symlink (a broken datalad/git-annex checkout).
    path = bids / f"{RUN}.nii.gz"
    path.unlink()
    path.symlink_to(tmp / "annex" / "missing.nii.gz")
    return []


def _pickle_model(bids, tmp):
    models = tmp / "models"
    models.mkdir()
    path = models / "harp_src-SIGNAPremier_tgt-Prisma.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    return ["--model", str(path)]


def _stored_twice(bids, tmp):
    raw = gzip.decompress((bids / f"{RUN}.nii.gz").read_bytes())
    (bids / f"{RUN}.nii").write_bytes(raw)
    return []


def _invalid_name(bids, tmp):
    for path in list(bids.glob("sub-*/ses-*/dwi/*")):
        path.rename(path.with_name(path.name.replace("_acq-", "_acquisition-")))
    return []


def _no_runs(bids, tmp):
    for path in bids.glob("sub-*/ses-*/dwi/*_dwi.nii.gz"):
        path.unlink()
    return []


def _participants(content: str | bytes) -> Callable[[Path, Path], list[str]]:
    return _write("participants.tsv", content)


def _two_runs_broken(bids, tmp):
    edit_table(bids, bvals=lambda b: b * 1000)
    edit_table(bids, bvals=lambda b: b[:-1], run=RUN.replace("GE1", "GE2"))
    return ["--session-label", "GE1", "GE2"]


def _site_map(content: str) -> Callable[[Path, Path], list[str]]:
    return _file_arg("--site-map", "sites.tsv", content)


DESCRIPTION = "dataset_description.json"
SIDECAR = f"{RUN}.json"
NAME = RUN.rsplit("/", 1)[1]

CASES = [
    # -- the dataset as a whole
    Case("bids-dir-missing", lambda b, t: shutil.rmtree(b) or [], r"does not exist", "bids"),
    Case("no-description", _remove(DESCRIPTION), r"dataset_description.json is missing", "bids"),
    Case("description-bad-json", _write(DESCRIPTION, '{"Name": "x",}'), r"not valid JSON",
         DESCRIPTION),
    Case("description-not-object", _write(DESCRIPTION, "[1, 2]"), r"must hold a JSON object",
         DESCRIPTION),
    Case("description-no-bidsversion", _write(DESCRIPTION, '{"Name": "x"}'),
         r"lacks the mandatory field\(s\) BIDSVersion", DESCRIPTION),
    Case("description-not-utf8", _write(DESCRIPTION, b'{"Name": "\xff"}'), r"Cannot read",
         DESCRIPTION),
    Case("no-dwi-runs", _no_runs, r"No dMRI runs found", "bids"),
    Case("invalid-bids-names", _invalid_name, r"not valid BIDS.*--skip-bids-validation",
         "acquisition-", select=False),
    Case("run-stored-twice", _stored_twice, r"stored twice", NAME),
    # -- selection
    Case("unknown-participant", args_only("--participant-label", "99"), r"not found",
         "sub-99"),
    Case("unknown-session", args_only("--session-label", "XX"), r"not found", "ses-XX"),
    Case("bad-participant-label", args_only("--participant-label", "0-1"),
         r"not a BIDS label", "0-1"),
    Case("filter-file-missing", args_only("--bids-filter-file", "/nonexistent/f.json"),
         r"file not found", "f.json"),
    Case("filter-file-bad-json", _file_arg("--bids-filter-file", "f.json", "{dwi: 1}"),
         r"not valid JSON", "f.json"),
    Case("filter-file-unknown-key", _file_arg("--bids-filter-file", "f.json", '{"anat": {}}'),
         r"unknown key", "f.json"),
    Case("filter-file-not-mapping", _file_arg("--bids-filter-file", "f.json", '{"dwi": 3}'),
         r"must map entity names", "f.json"),
    Case("filter-short-entity", _file_arg("--bids-filter-file", "f.json",
         '{"dwi": {"acq": "multishell"}}'), r"unknown entity", "'acq' -> 'acquisition'"),
    Case("filter-matches-nothing", _file_arg("--bids-filter-file", "f.json",
         '{"dwi": {"acquisition": "nothing"}}'), r"No dMRI runs found", "nothing"),
    Case("phantom-label-unknown", args_only("--phantom-label", "99"), r"not found",
         "sub-99"),
    Case("site-map-no-site-column", _site_map("participant_id\tsession_id\nsub-01\tGE1\n"),
         r"site", "sites.tsv"),
    Case("site-map-incomplete", _site_map("participant_id\tsession_id\tsite\n"
         "sub-02\tGE1\tA\n"), r"site", "sub-01"),
    Case("plugin-file-bad-yaml", _file_arg("--use-plugin", "p.yml", "plugin: [\n"),
         r"cannot read the YAML", "p.yml"),
    Case("plugin-file-unknown", _file_arg("--use-plugin", "p.yml", "plugin: Magic\n"),
         r"unknown plugin", "p.yml"),
    Case("plugin-file-no-plugin", _file_arg("--use-plugin", "p.yml", "plugin_args: {}\n"),
         r"needs a 'plugin' key", "p.yml"),
    Case("ignore-unknown-check", args_only("--ignore-check", "image-data"),
         r"invalid choice", "image-data"),
    Case("sh-order-odd", args_only("--sh-order", "5"), r"SH order", "--sh-order"),
    Case("nprocs-zero", args_only("--nprocs", "0"), r"positive integer", "--nprocs"),
    Case("output-inside-input", lambda b, t: ["--output-inside"], r"inside the input", "bids",
         select=True),
    Case("output-is-a-file", lambda b, t: ["--output-file"], r"not a directory", "file"),
    Case("model-not-safetensors", _pickle_model, r"safetensors|not a model", "harp_src"),
    Case("model-file-missing", args_only("--model", "/nonexistent/m.safetensors"),
         r"not found|does not exist", "m.safetensors"),
    # -- gradient files
    Case("bval-missing", _remove(f"{RUN}.bval"), r"No \.bval file", NAME),
    Case("bvec-missing", _remove(f"{RUN}.bvec"), r"No \.bvec file", NAME),
    Case("bval-empty", _write(f"{RUN}.bval", "\n"), r"is empty", f"{NAME}.bval"),
    Case("bval-not-numeric", _write(f"{RUN}.bval", "0 1000 abc\n"), r"not a numeric table",
         f"{NAME}.bval"),
    Case("bval-commas", _write(f"{RUN}.bval", "0,1000,1000\n"), r"not a numeric table",
         f"{NAME}.bval"),
    Case("bvec-transposed", _table(bvecs=lambda v, b: v.T), r"transposed", f"{NAME}.bvec"),
    Case("bvec-two-rows", _table(bvecs=lambda v, b: v[:2]), r"row", f"{NAME}.bvec"),
    Case("bval-bvec-count-mismatch", _table(bvals=lambda b: b[:-1]),
         r"b-values but .* b-vectors", f"{NAME}.bval"),
    Case("table-shorter-than-image", _table(bvals=lambda b: b[:-1], bvecs=lambda v, b: v[:, :-1]),
         r"entries but the image has", NAME),
    Case("negative-bvalue", _table(bvals=lambda b: np.where(b > 1500, -b, b)),
         r"negative b-values", NAME),
    Case("nan-bvec", _table(bvecs=lambda v, b: np.where(np.arange(v.shape[1]) == 20, np.nan, v)),
         r"NaN or Inf", NAME),
    Case("non-unit-bvec", _table(bvecs=lambda v, b: v * np.where(_dw(b), 0.5, 1.0)),
         r"unit b-vectors", NAME),
    Case("zero-bvec-on-dwi", _table(bvecs=lambda v, b: v * (np.arange(v.shape[1]) != 30)),
         r"zero or non-unit", NAME),
    Case("no-b0", _table(bvals=lambda b: np.where(b < 50, 1000, b)), r"no b0 volume", NAME),
    Case("bvalues-times-1000", _table(bvals=lambda b: b * 1000),
         r"1000 times too large.*--ignore-check bvalue-range", NAME),
    Case("bvalues-in-ms-per-um2", _table(bvals=lambda b: b / 1000), r"ms/µm²", NAME),
    Case("bvalues-all-b0", _table(bvals=lambda b: b * 0), r"only b0 volumes", NAME),
    Case("all-one-direction", _table(bvecs=one_direction), r"one axis or in one plane|distinct",
         NAME),
    Case("coplanar-directions", _table(bvecs=coplanar), r"non-coplanar", NAME),
    Case("five-directions", _table(bvecs=five_directions), r"6 distinct", NAME),
    # -- the image
    Case("image-missing-dangling-link", _symlink_outside_path, r"NIfTI header|No dMRI|exist",
         NAME),
    Case("image-not-nifti", _write(f"{RUN}.nii.gz", b"not an image at all"),
         r"Cannot read the NIfTI header", NAME),
    Case("image-3d", _three_d, r"single 3-D volume", NAME),
    Case("image-truncated-gz", _truncate, r"truncated|corrupt|NIfTI header", NAME),
    Case("image-truncated-nii", _truncate_uncompressed, r"truncated", NAME),
    Case("image-nan", _image(_nan), r"NaN/Inf", NAME),
    Case("image-inf", _image(_inf), r"NaN/Inf", NAME),
    Case("image-all-zero", _image(lambda d: d * 0), r"every voxel of every volume is 0", NAME),
    Case("image-b0s-zero", _zero_b0, r"all b0 volumes", NAME),
    Case("voxel-size-zero", _image(lambda d: d, edit=_zooms([0.0, 2.0, 2.0])),
         r"voxel sizes .* must be positive", NAME),
    Case("voxel-size-nan", _image(lambda d: d, edit=_zooms([np.nan, 2.0, 2.0])),
         r"voxel sizes|affine", NAME),
    Case("no-affine", _image(lambda d: d, edit=_no_affine),
         r"no orientation.*--ignore-check affine", NAME),
    # -- sidecars and tables
    Case("own-sidecar-bad-json", _write(SIDECAR, '{"EchoTime": 0.06,'), r"JSON", f"{NAME}.json"),
    Case("own-sidecar-not-object", _write(SIDECAR, "[0.06]"), r"JSON object|not an object",
         f"{NAME}.json"),
    Case("inherited-sidecar-bad-json", _write("dwi.json", "{oops"), r"JSON", "dwi.json"),
    Case("participants-not-utf8", _participants(b"participant_id\tphantom\nsub-\xff01\tno\n"),
         r"UTF-8|decode|Cannot read", "participants.tsv"),
    Case("participants-phantom-without-id", _participants("id\tphantom\nsub-01\tno\n"),
         r"no participant_id column", "participants.tsv"),
    Case("participants-ragged", _participants(
         "participant_id\tphantom\nsub-01\tno\textra\tmore\n"), r"line|column",
         "participants.tsv"),
    # -- every problem at once
    Case("two-runs-broken", _two_runs_broken, r"2 problem\(s\)(?=.*ses-GE1)(?=.*ses-GE2)", "GE2"),
    # -- train and group without what they need
    Case("train-no-target-site", args_only(), r"needs --target-site", "Prisma", level="train",
         select=False),
    Case("train-unknown-target-site", args_only("--target-site", "Nowhere"), r"Nowhere",
         "Prisma", level="train", select=False),
    Case("train-no-phantom-outputs", args_only("--target-site", "Prisma"),
         r"participant level", "phantom", level="train", select=False),
    Case("train-rish-no-outputs", args_only("--target-site", "Prisma", "--method", "rish"),
         r"no complete participant outputs", "participant", level="train", select=False),
    Case("group-no-outputs", args_only("--target-site", "Prisma"),
         r"no complete participant outputs", "participant", level="group", select=False),
    Case("group-harp-without-outputs", args_only("--target-site", "Prisma", "--methods", "harp"),
         r"harp|HARP", "harp", level="group", select=False),
    Case("train-bad-bvalues", _then(_table(bvals=lambda b: b * 1000), args_only("--target-site",
         "Prisma")), r"1000 times too large", NAME, level="train", select=False),
    Case("group-bad-bvalues", _then(_table(bvals=lambda b: b * 1000), args_only("--target-site",
         "Prisma")), r"1000 times too large", NAME, level="group", select=False),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, study, tmp_path, caplog, capsys, record_property):
    bids_source, earlier, before = study
    bids, out, work = tmp_path / "bids", tmp_path / "out", tmp_path / "work"
    linked_copy(bids_source, bids)
    linked_copy(earlier, out)
    extra = case.corrupt(bids, tmp_path)
    positional = [str(bids), str(out)]
    if "--output-inside" in extra:
        extra.remove("--output-inside")
        positional[1] = str(bids / "out")
    if "--output-file" in extra:
        extra.remove("--output-file")
        (tmp_path / "file").write_text("x")
        positional[1] = str(tmp_path / "file")
    select = ["--participant-label", "01", "--session-label", "GE1"] if case.select else []
    argv = [*positional, case.level, "-w", str(work), *select, *case.options, *extra]
    caplog.set_level("INFO", logger="bids_harmony")
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    stderr = capsys.readouterr().err
    message = caplog.text + stderr
    # The table of cases for the note: pytest --junitxml=cases.xml
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    record_property("exit", code)
    record_property("message", " | ".join(errors) or stderr.strip().splitlines()[-1])
    assert code == case.code, message[-3000:]
    assert "Traceback" not in message, message[-3000:]
    assert case.culprit is None or case.culprit in message, message[-3000:]
    assert re.search(case.problem, message, flags=re.S), message[-3000:]
    assert digests(out) == before, "earlier outputs changed"
    assert not work.exists(), "the work directory was created before the checks passed"


# --- odd but usable input: a warning, and the same outputs as before ----------------------


def _loop(bids, tmp):
    (bids / "sub-02" / "loop").symlink_to("..")
    (bids / "sub-01" / "ses-GE2" / "dwi" / "back").symlink_to("../../..")
    return []


WARNINGS = [
    Case("other-sidecar-bad-json", _write(f"{OTHER}.json", "{oops"), r"(?i)skipped.*invalid JSON",
         f"{OTHER.rsplit('/', 1)[1]}.json", code=0),
    Case("participants-trailing-tabs-crlf-bom", _participants(
         "\ufeffparticipant_id\tphantom\t\r\nsub-01\tno\t\r\nsub-phantom01\tyes\t\t\r\n\r\n"),
         r".", None, code=0),
    Case("symlink-loops", _loop, r"loop", "loop", code=0),
    Case("site-map-unmatched-row", _site_map("participant_id\tsession_id\tsite\n"
         "sub-01\tGE1\tGE\nsub-01\tGE9\tGE\n"), r"match no", "GE9", code=0),
    Case("zero-volume", _image(lambda d: np.where(np.arange(d.shape[3]) == 70, 0, d)),
         r"entirely 0", NAME, code=0),
]  # fmt: skip


def outputs_of(found: dict[str, str], *, sidecars: bool = True) -> dict[str, str]:
    """The digests of the run's outputs in ``found`` (from :func:`digests`).

    ``logs/`` holds this invocation's own files and ``dataset_description.json``
    names the input dataset's path, which differs between the copies.
    """
    return {
        key: value
        for key, value in found.items()
        if not key.startswith("logs")
        and key != "dataset_description.json"
        and (sidecars or not key.endswith(".json"))
    }


@pytest.mark.parametrize("case", WARNINGS, ids=[case.id for case in WARNINGS])
def test_odd_input_warns_and_gives_the_same_outputs(case: Case, study, tmp_path, caplog):
    bids_source, earlier, before = study
    bids, out = tmp_path / "bids", tmp_path / "out"
    linked_copy(bids_source, bids)
    extra = case.corrupt(bids, tmp_path)
    select = ["--participant-label", "01", "--session-label", "GE1"]
    caplog.set_level("INFO", logger="bids_harmony")
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "w"), *select, *extra])
    assert code == 0, caplog.text[-3000:]
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert re.search(case.problem, warnings, flags=re.S), warnings
    assert case.culprit is None or case.culprit in warnings, warnings
    if case.id == "zero-volume":  # the data changed: the outputs may too
        return
    # A site map renames the site, which the sidecars record; the data are the same.
    sidecars = case.id != "site-map-unmatched-row"
    assert outputs_of(digests(out), sidecars=sidecars) == outputs_of(before, sidecars=sidecars)
