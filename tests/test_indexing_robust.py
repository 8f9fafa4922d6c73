"""Indexing that survives real-world datasets: bad JSON, spreadsheet TSVs, symlink loops.

Also property-based tests of the two plain-text readers (:func:`read_tsv`,
:func:`read_gradients`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_harmony.bids.discovery import discover
from bids_harmony.bids.gradients_io import read_gradients
from bids_harmony.bids.scan import scan_dataset
from bids_harmony.bids.sites import assign_sites
from bids_harmony.bids.tsv import read_tsv
from bids_harmony.errors import BadGradientsError, InputDatasetError
from tests.conftest import make_bids

HYPOTHESIS = settings(max_examples=50, deadline=None)


@pytest.fixture
def two_subjects(tmp_path: Path) -> Path:
    """sub-01 and sub-02, sessions A and B, one single-shell run each."""
    return make_bids(tmp_path / "bids", subjects=("01", "02"), sessions=("A", "B"))


def warnings_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def run_names(study) -> list[str]:
    return [run.dwi.name for run in study.runs]


# --- malformed JSON files -----------------------------------------------------------------------


@pytest.mark.parametrize("validate", [True, False])
def test_bad_sidecar_of_another_participant_is_a_warning(
    two_subjects: Path, caplog: pytest.LogCaptureFixture, validate: bool
) -> None:
    bad = two_subjects / "sub-02" / "ses-A" / "dwi" / "sub-02_ses-A_dwi.json"
    bad.write_text('{"EchoTime": 0.06,}')
    with caplog.at_level(logging.WARNING):
        study = discover(two_subjects, participant_label="01", validate=validate)
    assert run_names(study) == ["sub-01_ses-A_dwi.nii.gz", "sub-01_ses-B_dwi.nii.gz"]
    assert study.runs[0].metadata["ManufacturersModelName"] == "Prisma"
    message = warnings_of(caplog)
    assert str(bad) in message and "Skipped" in message and "line 1, column 19" in message


def test_bad_json_outside_the_runs_is_a_warning(
    two_subjects: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # pybids reads root-level JSON files as metadata of the root TSV files.
    (two_subjects / "participants.json").write_text("[1, 2]")
    # Another acquisition's inherited sidecar does not apply to these runs.
    (two_subjects / "acq-other_dwi.json").write_bytes(b'{"Note": "caf\xe9"}')
    with caplog.at_level(logging.WARNING):
        study = discover(two_subjects, validate=False)
    assert len(study.runs) == 4
    message = warnings_of(caplog)
    assert "participants.json (holds a JSON list, not an object)" in message
    assert "acq-other_dwi.json (not UTF-8: byte 0xe9 on line 1)" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"EchoTime": 0.06,\n "RepetitionTime": 4,}', "invalid JSON.*line 2, column 22"),
        (b'{"Note": "\xff"}', "not UTF-8: byte 0xff on line 1"),
        (b"[0.06, 4.0]", "holds a JSON list, not an object"),
        (b'\xef\xbb\xbf{"EchoTime": 0.06}', "Unexpected UTF-8 BOM"),
        (b"", "invalid JSON: Expecting value"),
    ],
)
@pytest.mark.parametrize("validate", [True, False])
def test_bad_own_sidecar_is_an_error(
    two_subjects: Path, content: bytes, problem: str, validate: bool
) -> None:
    bad = two_subjects / "sub-01" / "ses-B" / "dwi" / "sub-01_ses-B_dwi.json"
    bad.write_bytes(content)
    with pytest.raises(InputDatasetError, match=problem) as info:
        discover(two_subjects, validate=validate)
    message = str(info.value)
    assert str(bad) in message and "sub-01_ses-B_dwi.nii.gz" in message
    # Another participant is unaffected.
    assert len(discover(two_subjects, participant_label="02", validate=validate).runs) == 2


@pytest.mark.parametrize(
    "where", ["dwi.json", "sub-02/sub-02_dwi.json", "sub-02/ses-A/sub-02_ses-A_dwi.json"]
)
def test_bad_inherited_sidecar_is_an_error(two_subjects: Path, where: str) -> None:
    bad = two_subjects / where
    bad.write_text('{"PhaseEncodingDirection": "j-"')
    with pytest.raises(InputDatasetError, match=r"dwi\.json \(invalid JSON.*read by") as info:
        discover(two_subjects, participant_label="02", session_label="A")
    assert str(bad) in str(info.value) and "sub-02_ses-A_dwi.nii.gz" in str(info.value)


def test_broken_json_link_is_named(two_subjects: Path) -> None:
    # A DataLad dataset whose annexed sidecar was not retrieved.
    own = two_subjects / "sub-01" / "ses-A" / "dwi" / "sub-01_ses-A_dwi.json"
    own.unlink()
    own.symlink_to("../../../.git/annex/objects/missing")
    with pytest.raises(InputDatasetError, match="broken symbolic link.*datalad get"):
        discover(two_subjects)


# --- participants.tsv and site maps from spreadsheets -------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"participant_id\tphantom\t\nsub-01\tno\t\nsub-02\tyes\t\n",  # trailing tabs
        b"participant_id\tphantom\t\t\nsub-01\tno\t\t\nsub-02\tyes\t\t\n",
        b"participant_id\tphantom\r\nsub-01\tno\r\nsub-02\tyes\r\n",  # CRLF
        b"participant_id\tphantom\rsub-01\tno\rsub-02\tyes",  # old Mac line ends, no last one
        b"\xef\xbb\xbfparticipant_id\tphantom\nsub-01\tno\nsub-02\tyes\n",  # BOM
        b"participant_id\tage\tphantom\nsub-01\t31\tn/a\nsub-02\tn/a\tyes\nn/a\t7\tyes\n",
        b"\n\nparticipant_id\tphantom\n\nsub-01\tno\n  \t \nsub-02\t yes \n\n",  # blank lines
        b"participant_id\tphantom\nsub-01\nsub-02\tyes\n",  # short row
    ],
)
def test_participants_tsv_from_spreadsheets(two_subjects: Path, content: bytes) -> None:
    (two_subjects / "participants.tsv").write_bytes(content)
    study = discover(two_subjects)
    assert study.phantoms == ["02"] and study.phantom_source == "participants.tsv"


def test_participants_tsv_with_a_value_beyond_the_header(two_subjects: Path) -> None:
    path = two_subjects / "participants.tsv"
    path.write_text("participant_id\tphantom\nsub-01\tno\nsub-02\tyes\tsee notes\n")
    with pytest.raises(InputDatasetError, match=r"line 3.*'see notes' in column 3") as info:
        discover(two_subjects)
    assert str(path) in str(info.value) and "--phantom-label" in str(info.value)


def test_site_map_rows_that_match_no_session(
    two_subjects: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site_map = tmp_path / "sites.tsv"
    site_map.write_bytes(
        b"participant_id\tsession_id\tsite\t\r\n"
        b"sub-01\tA\tGE\t\r\n"
        b"sub-01\tB\tGE\t\r\n"
        b"sub-02\tn/a\tSiemens\t\r\n"
        b"sub-01\tC\tGE\t\r\n"  # a typo, or a session without dMRI
        b"sub-03\tn/a\tGE\t\r\n"
    )
    with caplog.at_level(logging.WARNING):
        study = discover(two_subjects, site_map=site_map)
    assert study.sites == ["GE", "Siemens"]
    message = warnings_of(caplog)
    assert str(site_map) in message and "2 row(s) match no session" in message
    assert "line 5 (sub-01/ses-C), line 6 (sub-03)" in message
    # Rows of unselected participants match sessions of the dataset: no new warning.
    caplog.clear()
    site_map.write_text("participant_id\tsession_id\tsite\n01\tn/a\tGE\n02\tn/a\tSiemens\n")
    with caplog.at_level(logging.WARNING):
        discover(two_subjects, site_map=site_map, participant_label="01")
    assert "Site map" not in warnings_of(caplog)


def test_site_map_rows_checked_against_the_selection_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Without the dataset's sessions, the message says what the rows were compared with.
    sessions = {("01", "A"): [(Path("sub-01_ses-A_dwi.nii.gz"), {})]}
    with caplog.at_level(logging.WARNING):
        sites, source = assign_sites(sessions, site_map={("01", "A"): "GE", ("09", None): "SI"})
    assert sites == {("01", "A"): "GE"} and source == "site-map"
    assert "1 row(s) match no selected session (only the selected" in warnings_of(caplog)
    assert "(sub-09)" in warnings_of(caplog)


# --- symlink loops ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("validate", [True, False])
def test_symlink_loops_are_skipped(
    two_subjects: Path, caplog: pytest.LogCaptureFixture, validate: bool
) -> None:
    expected = run_names(discover(two_subjects, validate=validate))
    loop = two_subjects / "sub-01" / "loop"
    back = two_subjects / "sub-01" / "ses-A" / "dwi" / "back"
    loop.symlink_to("..")
    back.symlink_to("../../..")
    with caplog.at_level(logging.WARNING):
        study = discover(two_subjects, validate=validate)
    assert run_names(study) == expected
    message = warnings_of(caplog)
    for link in (loop, back):
        assert f"{link} -> {two_subjects}: a loop" in message


def test_symlinked_folders_are_indexed_once(tmp_path: Path) -> None:
    root = make_bids(tmp_path / "bids", subjects=("01",))
    elsewhere = make_bids(tmp_path / "store", subjects=("02",)) / "sub-02"
    (root / "sub-02").symlink_to(elsewhere)  # a dataset assembled from links: walked
    (root / "sub-02-again").symlink_to(elsewhere)  # the same folder twice: skipped
    scan = scan_dataset(root)
    assert scan.dwi_sessions == {("01", "A"), ("02", "A")}
    assert [(s.path.name, s.loop) for s in scan.skipped_links] == [("sub-02-again", False)]
    assert [r.subject for r in discover(root).runs] == ["01", "02"]


# --- read_tsv -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"participant_id\tsite\nsub-01\tGen\xe8ve\n", r"line 2: byte 0xe8 is not UTF-8"),
        (b"participant_id\tsite\tsite\n", r"line 1: the column 'site' appears twice"),
        (b"\nparticipant_id\t\tsite\n", r"line 2: column 2 of the header has no name"),
        (b"a\tb\n1\t2\n3\t4\t\t5\t\n", r"line 3: the value '5' in column 4 has no column"),
        (b'a\tb\n"1\t2\n3\t4\n', r"line 2: a value opened with a double quote"),
    ],
)
def test_read_tsv_errors_name_file_and_line(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "table.tsv"
    path.write_bytes(content)
    with pytest.raises(InputDatasetError, match=match) as info:
        read_tsv(path, what="Site map")
    assert str(info.value).startswith(f"Site map {path}")


def test_read_tsv_quoted_tab_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "table.tsv"
    path.write_text('name\tnote\nsub-01\t"a\tb"\n')
    assert read_tsv(path).rows == ({"name": "sub-01", "note": "a\tb"},)
    path.write_text("")
    assert read_tsv(path).columns == () and len(read_tsv(path)) == 0


# Printable text without the characters that structure a TSV; a leading quote starts a
# quoted cell (BIDS), so it is left out too.
TEXT = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters='\t"\ufeff'),
    max_size=8,
).map(str.strip)
CELL = st.one_of(TEXT.filter(lambda t: t.lower() != "n/a"), st.none())
NAMES = st.lists(TEXT.filter(bool), min_size=1, max_size=5, unique=True)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def tsv_files(draw: st.DrawFn) -> tuple[str, tuple[str, ...], list[dict[str, str | None]]]:
    """(file text, columns, rows) of a table as a spreadsheet may write it."""
    names = tuple(draw(NAMES))
    rows = draw(
        st.lists(
            st.lists(CELL, min_size=len(names), max_size=len(names)).filter(
                lambda cells: any(c is None or c for c in cells)  # an empty row is blank
            ),
            max_size=6,
        )
    )

    def line(cells: list[str | None]) -> str:
        pad = draw(st.sampled_from(["", " ", "  "]))
        text = "\t".join(pad + ("n/a" if c is None else c) + pad for c in cells)
        return text + "\t" * draw(st.integers(0, 2)) + draw(LINE_ENDS)

    lines = [line(list(names))] + [line(cells) for cells in rows]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", " \t"])) + "\n")
    text = draw(st.sampled_from(["", "\ufeff"])) + "".join(lines)
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no line end after the last row
    return text, names, [dict(zip(names, cells, strict=True)) for cells in rows]


@HYPOTHESIS
@given(tsv_files())
def test_read_tsv_reads_back_what_was_written(
    tmp_path_factory: pytest.TempPathFactory, written
) -> None:
    text, names, rows = written
    path = tmp_path_factory.mktemp("tsv") / "table.tsv"
    path.write_bytes(text.encode("utf-8"))
    table = read_tsv(path)
    assert table.columns == names
    assert list(table.rows) == rows


# --- read_gradients -----------------------------------------------------------------------------

FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
SPACES = st.sampled_from([" ", "  ", "\t", " \t "])


def _write_table(draw: st.DrawFn, table: np.ndarray) -> str:
    """The table as text with random spacing, line ends and trailing whitespace."""
    lines = []
    for row in table:
        cells = [repr(float(v)) for v in row]
        text = draw(st.sampled_from(["", " "])) + cells[0]
        for cell in cells[1:]:
            text += draw(SPACES) + cell
        lines.append(text + draw(st.sampled_from(["", " ", "\t"])) + draw(LINE_ENDS))
    return "".join(lines)


@st.composite
def gradient_files(
    draw: st.DrawFn, *, transposed: bool = False
) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(b-values, b-vectors (n, 3), .bval text, .bvec text); transposed: one row per volume."""
    n = draw(st.integers(1, 12).filter(lambda k: not transposed or k != 3))
    bvals = np.array(draw(st.lists(FINITE, min_size=n, max_size=n)))
    bvecs = np.array(draw(st.lists(st.tuples(FINITE, FINITE, FINITE), min_size=n, max_size=n)))
    bvec_table = bvecs if transposed else bvecs.T
    return bvals, bvecs, _write_table(draw, bvals[None]), _write_table(draw, bvec_table)


def _write_files(folder: Path, bval_text: str, bvec_text: str) -> tuple[Path, Path]:
    bval, bvec = folder / "dwi.bval", folder / "dwi.bvec"
    bval.write_bytes(bval_text.encode())
    bvec.write_bytes(bvec_text.encode())
    return bval, bvec


@HYPOTHESIS
@given(gradient_files())
def test_read_gradients_reads_back_what_was_written(
    tmp_path_factory: pytest.TempPathFactory, written
) -> None:
    bvals, bvecs, bval_text, bvec_text = written
    paths = _write_files(tmp_path_factory.mktemp("grad"), bval_text, bvec_text)
    read_bvals, read_bvecs = read_gradients(*paths)
    np.testing.assert_allclose(read_bvals, bvals, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(read_bvecs, bvecs, rtol=1e-6, atol=1e-6)


@HYPOTHESIS
@given(gradient_files(transposed=True))
def test_transposed_bvec_is_named(tmp_path_factory: pytest.TempPathFactory, written) -> None:
    _, _, bval_text, bvec_text = written
    bval, bvec = _write_files(tmp_path_factory.mktemp("grad"), bval_text, bvec_text)
    with pytest.raises(BadGradientsError, match="transposed") as info:
        read_gradients(bval, bvec)
    assert str(bvec) in str(info.value)
