"""LICENSE and CITATION.cff: present, parseable, and in step with the reference table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bids_harmony import CODE_URL, __version__
from bids_harmony.methods.registry import all_methods
from bids_harmony.workflows.references import (
    PACKAGE_REFERENCE_KEYS,
    REFERENCES,
    how_to_acknowledge,
    package_references,
)

REPO = Path(__file__).resolve().parents[1]
CFF = REPO / "CITATION.cff"

pytestmark = pytest.mark.skipif(
    not CFF.is_file(), reason="not a source checkout (CITATION.cff is not installed)"
)


def _words(text: str) -> str:
    """Lower case, one space between words: titles wrap differently in YAML and Python."""
    return " ".join(text.lower().split())


def _cff() -> dict:
    return yaml.safe_load(CFF.read_text(encoding="utf-8"))


def _entry_of(ref, entries: list[dict]) -> dict:
    """The CITATION.cff entry of a reference: same DOI, else its title in the full text."""
    if ref.doi:
        found = [e for e in entries if str(e.get("doi", "")).lower() == ref.doi.lower()]
    else:
        found = [e for e in entries if _words(str(e["title"])) in _words(ref.text)]
    assert len(found) == 1, f"{ref.short}: {len(found)} entries in CITATION.cff"
    return found[0]


def test_citation_cff_describes_the_software():
    cff = _cff()
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert str(cff["version"]) == __version__
    assert cff["license"] == "Apache-2.0"
    assert cff["repository-code"] == CODE_URL
    assert cff["authors"] and cff["message"]


def test_citation_cff_lists_every_method_reference():
    entries = _cff()["references"]
    for entry in entries:  # what the 1.2.0 schema requires of a reference
        assert {"type", "title", "authors"} <= set(entry), entry
    declared = [ref for method in all_methods() for ref in method.references]
    assert declared, "the methods declare no reference"
    expected = package_references()
    assert all(ref in expected for ref in declared)
    for key in PACKAGE_REFERENCE_KEYS:
        assert REFERENCES[key][1] in [ref.text for ref in expected], key
    matched = [id(_entry_of(ref, entries)) for ref in expected]
    # and nothing else: an entry removed from the table must leave CITATION.cff too
    assert sorted(matched) == sorted(id(e) for e in entries)
    for ref in expected:
        year = int(re.search(r"(\d{4})$", ref.short).group(1))
        assert _entry_of(ref, entries)["year"] == year, ref.short


def test_how_to_acknowledge_gives_the_references():
    text = how_to_acknowledge()
    assert "CITATION.cff" in text and "logs/CITATION.md" in text
    for ref in package_references():
        assert ref.text in text
    assert "https://doi.org/10.1016/j.neuroimage.2018.08.073" in text  # LinearRISH
    assert "arXiv:2603.06696" in text  # HARP


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "Copyright 2026 The bids_harmony developers" in text
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.MULTILINE)
