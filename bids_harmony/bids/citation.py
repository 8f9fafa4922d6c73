"""The methods text of a derivatives dataset: ``OUT/logs/CITATION.md``.

Every level that runs into an output directory describes what it did as one
*section*: Markdown paragraphs with author-year citations, the references they
cite and the software versions it ran with (the texts are composed in
:mod:`bids_harmony.workflows.boilerplate`).  Sections are kept in
``OUT/logs/CITATION.json``, so that a level rewrites its own section and keeps
the others; ``CITATION.md`` is rendered from all of them, levels in the order
participant → train → group, with one software list and one deduplicated,
alphabetical reference list.  Both files are written atomically; ``logs/`` is
in the dataset's ``.bidsignore``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_harmony import __version__
from bids_harmony.bids.io import write_json, write_text

LOGGER = logging.getLogger(__name__)

CITATION_MD = Path("logs") / "CITATION.md"
CITATION_JSON = Path("logs") / "CITATION.json"

#: Levels, in the order their sections are printed, with their headings.
LEVEL_TITLES: Mapping[str, str] = {
    "participant": "Preprocessing and diffusion models (participant level)",
    "train": "Harmonization model training (train level)",
    "group": "Evaluation of the harmonization (group level)",
}

_FORMAT = "bids_harmony.citation"


@dataclass(frozen=True)
class Reference:
    """A citation: short form (``Jeong et al., 2026``), full text, DOI.

    Used by the methods (:class:`bids_harmony.methods.base.HarmonizationMethod`
    ``.references``) and by the methods text of every level.
    """

    short: str
    text: str
    doi: str = ""

    def markdown(self) -> str:
        """One reference line, with a DOI link when there is one."""
        return self.text + (f" https://doi.org/{self.doi}" if self.doi else "")


@dataclass(frozen=True)
class CitationSection:
    """What one level ran, as it will be printed."""

    level: str
    paragraphs: tuple[str, ...]
    references: tuple[Reference, ...] = ()
    software: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "paragraphs": list(self.paragraphs),
            "references": [vars(r) for r in self.references],
            "software": dict(self.software),
        }

    @classmethod
    def from_json(cls, level: str, data: Mapping[str, Any]) -> CitationSection:
        return cls(
            level=level,
            paragraphs=tuple(str(p) for p in data.get("paragraphs", ())),
            references=tuple(
                Reference(str(r["short"]), str(r["text"]), str(r.get("doi", "")))
                for r in data.get("references", ())
            ),
            software={str(k): str(v) for k, v in dict(data.get("software", {})).items()},
        )


def read_sections(output_dir: str | os.PathLike[str]) -> dict[str, CitationSection]:
    """Sections written so far into ``output_dir`` (empty when none or unreadable)."""
    path = Path(output_dir) / CITATION_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        LOGGER.warning("%s is unreadable (%s); the methods text is written anew.", path, err)
        return {}
    levels = data.get("levels", {}) if isinstance(data, dict) else {}
    out = {}
    for level, section in levels.items():
        if level in LEVEL_TITLES and isinstance(section, dict):
            try:
                out[level] = CitationSection.from_json(level, section)
            except (KeyError, TypeError, ValueError) as err:
                LOGGER.warning("%s: section %r dropped (%s).", path, level, err)
    return out


def _software_lines(sections: Sequence[CitationSection]) -> list[str]:
    """``name version`` per package; versions that differ between levels are all named."""
    seen: dict[str, dict[str, list[str]]] = {}
    for section in sections:
        for name, version in section.software.items():
            seen.setdefault(name, {}).setdefault(version, []).append(section.level)
    names = sorted(seen, key=lambda n: (n != "bids_harmony", n.lower()))
    lines = []
    for name in names:
        versions = seen[name]
        if len(versions) == 1:
            lines.append(f"- {name} {next(iter(versions))}")
        else:
            lines.append(f"- {name} " + ", ".join(
                f"{v} ({', '.join(levels)})" for v, levels in versions.items()
            ))  # fmt: skip
    return lines


def unique_references(references: Iterable[Any]) -> list[Reference]:
    """References without duplicates (same DOI, else same text), alphabetical."""
    out: dict[str, Reference] = {}
    for ref in references:
        cited = Reference(ref.short, ref.text, getattr(ref, "doi", "") or "")
        out.setdefault(cited.doi.lower() or cited.text, cited)
    return sorted(out.values(), key=lambda r: r.text.lower())


def render_citation(sections: Mapping[str, CitationSection]) -> str:
    """The Markdown of ``CITATION.md`` for ``sections`` (keyed by level)."""
    ordered = [sections[level] for level in LEVEL_TITLES if level in sections]
    done = ", ".join(s.level for s in ordered) or "none"
    lines = [
        "# Methods",
        "",
        f"*Written by bids_harmony {__version__} from the settings each level ran with "
        f"(levels run: {done}); every level rewrites its own section. Adapt the text to "
        "your study before using it in a manuscript, and cite the references below.*",
    ]
    for section in ordered:
        lines += ["", f"## {LEVEL_TITLES[section.level]}"]
        for paragraph in section.paragraphs:
            lines += ["", paragraph.strip()]
    software = _software_lines(ordered)
    if software:
        lines += ["", "## Software", "", *software]
    references = unique_references(r for s in ordered for r in s.references)
    if references:
        lines += ["", "## References", ""]
        lines += [f"{i}. {ref.markdown()}" for i, ref in enumerate(references, start=1)]
    return "\n".join(lines) + "\n"


def write_citation(
    output_dir: str | os.PathLike[str],
    level: str,
    paragraphs: Sequence[str],
    *,
    references: Iterable[Any] = (),
    software: Mapping[str, str] | None = None,
) -> Path:
    """Replace the section of ``level`` and rewrite ``OUT/logs/CITATION.md``.

    Parameters
    ----------
    output_dir : path
        The derivatives dataset.
    level : {"participant", "train", "group"}
    paragraphs : sequence of str
        Markdown paragraphs, in-text citations already resolved.
    references : iterable
        Objects with ``short``, ``text`` and ``doi`` (e.g.
        :class:`bids_harmony.methods.base.Reference`) cited by ``paragraphs``.
    software : mapping, optional
        Package → version this level ran with.

    Returns
    -------
    Path
        ``OUT/logs/CITATION.md``.
    """
    if level not in LEVEL_TITLES:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVEL_TITLES)}")
    output_dir = Path(output_dir)
    sections = read_sections(output_dir)
    sections[level] = CitationSection(
        level=level,
        paragraphs=tuple(p.strip() for p in paragraphs if p.strip()),
        references=tuple(unique_references(references)),
        software=dict(software or {}),
    )
    write_json(
        output_dir / CITATION_JSON,
        {
            "format": _FORMAT,
            "levels": {lv: sections[lv].to_json() for lv in LEVEL_TITLES if lv in sections},
        },
    )
    path = write_text(output_dir / CITATION_MD, render_citation(sections))
    LOGGER.info("Methods text: %s", path)
    return path
