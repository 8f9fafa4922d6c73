"""Citations of the methods text: the reference table and ``[@key]`` resolution.

Texts cite with pandoc keys, ``[@dipy]`` or ``[@eddy; @topup]``: a key of
:data:`REFERENCES`, or the name of a harmonization method (its own references,
:mod:`bids_harmony.methods.registry`).  :func:`cite` turns them into author-year
citations and the reference list; :func:`write_level_citation` writes a level's
section of ``OUT/logs/CITATION.md`` (:mod:`bids_harmony.bids.citation`).  The
paragraphs themselves are composed in :mod:`.boilerplate`.

Nothing here imports torch until a method's references are resolved.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Citation keys → (short form, full reference, DOI or "" when not checked).
REFERENCES: Mapping[str, tuple[str, str, str]] = {
    "bids": (
        "Gorgolewski et al., 2016",
        "Gorgolewski KJ, Auer T, Calhoun VD, et al. The brain imaging data structure, a "
        "format for organizing and describing outputs of neuroimaging experiments. "
        "Scientific Data 3 (2016) 160044.",
        "10.1038/sdata.2016.44",
    ),
    "pybids": (
        "Yarkoni et al., 2019",
        "Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS "
        "datasets. Journal of Open Source Software 4 (2019) 1294.",
        "10.21105/joss.01294",
    ),
    "nipype": (
        "Gorgolewski et al., 2011",
        "Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and "
        "extensible neuroimaging data processing framework in Python. Frontiers in "
        "Neuroinformatics 5 (2011) 13.",
        "10.3389/fninf.2011.00013",
    ),
    "dipy": (
        "Garyfallidis et al., 2014",
        "Garyfallidis E, Brett M, Amirbekian B, et al. Dipy, a library for the analysis of "
        "diffusion MRI data. Frontiers in Neuroinformatics 8 (2014) 8.",
        "10.3389/fninf.2014.00008",
    ),
    "topup": (
        "Andersson et al., 2003",
        "Andersson JLR, Skare S, Ashburner J. How to correct susceptibility distortions in "
        "spin-echo echo-planar images: application to diffusion tensor imaging. "
        "NeuroImage 20 (2003) 870-888.",
        "10.1016/S1053-8119(03)00336-7",
    ),
    "eddy": (
        "Andersson and Sotiropoulos, 2016",
        "Andersson JLR, Sotiropoulos SN. An integrated approach to correction for "
        "off-resonance effects and subject movement in diffusion MR imaging. "
        "NeuroImage 125 (2016) 1063-1078.",
        "10.1016/j.neuroimage.2015.10.019",
    ),
    "bet": (
        "Smith, 2002",
        "Smith SM. Fast robust automated brain extraction. Human Brain Mapping 17 (2002) 143-155.",
        "",
    ),
    "flirt": (
        "Jenkinson et al., 2002",
        "Jenkinson M, Bannister P, Brady M, Smith S. Improved optimization for the robust "
        "and accurate linear registration and motion correction of brain images. "
        "NeuroImage 17 (2002) 825-841.",
        "",
    ),
    "mppca": (
        "Veraart et al., 2016",
        "Veraart J, Novikov DS, Christiaens D, Ades-Aron B, Sijbers J, Fieremans E. "
        "Denoising of diffusion MRI using random matrix theory. NeuroImage 142 (2016) "
        "394-406.",
        "",
    ),
    "patch2self": (
        "Fadnavis et al., 2020",
        "Fadnavis S, Batson J, Garyfallidis E. Patch2Self: denoising diffusion MRI with "
        "self-supervised learning. Advances in Neural Information Processing Systems 33 "
        "(2020).",
        "",
    ),
    "gibbs": (
        "Kellner et al., 2016",
        "Kellner E, Dhital B, Kiselev VG, Reisert M. Gibbs-ringing artifact removal based "
        "on local subvoxel-shifts. Magnetic Resonance in Medicine 76 (2016) 1574-1581.",
        "",
    ),
    "descoteaux": (
        "Descoteaux et al., 2007",
        "Descoteaux M, Angelino E, Fitzgibbons S, Deriche R. Regularized, fast, and robust "
        "analytical Q-ball imaging. Magnetic Resonance in Medicine 58 (2007) 497-510.",
        "",
    ),
    "dti": (
        "Basser et al., 1994",
        "Basser PJ, Mattiello J, LeBihan D. MR diffusion tensor spectroscopy and imaging. "
        "Biophysical Journal 66 (1994) 259-267.",
        "10.1016/S0006-3495(94)80775-1",
    ),
    "wls": (
        "Chung et al., 2006",
        "Chung S, Lu Y, Henry RG. Comparison of bootstrap approaches for estimation of "
        "uncertainties of DTI parameters. NeuroImage 33 (2006) 531-541.",
        "",
    ),
    "dki": (
        "Jensen et al., 2005",
        "Jensen JH, Helpern JA, Ramani A, Lu H, Kaczynski K. Diffusional kurtosis imaging: "
        "the quantification of non-Gaussian water diffusion by means of magnetic resonance "
        "imaging. Magnetic Resonance in Medicine 53 (2005) 1432-1440.",
        "10.1002/mrm.20508",
    ),
    "dkiwls": (
        "Veraart et al., 2013",
        "Veraart J, Sijbers J, Sunaert S, Leemans A, Jeurissen B. Weighted linear least "
        "squares estimation of diffusion MRI parameters: strengths, limitations, and "
        "pitfalls. NeuroImage 81 (2013) 335-346.",
        "10.1016/j.neuroimage.2013.05.028",
    ),
    "tabesh": (
        "Tabesh et al., 2011",
        "Tabesh A, Jensen JH, Ardekani BA, Helpern JA. Estimation of tensors and "
        "tensor-derived measures in diffusional kurtosis imaging. Magnetic Resonance in "
        "Medicine 65 (2011) 823-836.",
        "10.1002/mrm.22655",
    ),
    "csd": (
        "Tournier et al., 2007",
        "Tournier J-D, Calamante F, Connelly A. Robust determination of the fibre "
        "orientation distribution in diffusion MRI: non-negativity constrained "
        "super-resolved spherical deconvolution. NeuroImage 35 (2007) 1459-1472.",
        "10.1016/j.neuroimage.2007.02.016",
    ),
    "gfa": (
        "Tuch, 2004",
        "Tuch DS. Q-ball imaging. Magnetic Resonance in Medicine 52 (2004) 1358-1372.",
        "",
    ),
    "syn": (
        "Avants et al., 2008",
        "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image "
        "registration with cross-correlation: evaluating automated labeling of elderly "
        "and neurodegenerative brain. Medical Image Analysis 12 (2008) 26-41.",
        "10.1016/j.media.2007.06.004",
    ),
    "pytorch": (
        "Paszke et al., 2019",
        "Paszke A, Gross S, Massa F, et al. PyTorch: an imperative style, high-performance "
        "deep learning library. Advances in Neural Information Processing Systems 32 "
        "(2019).",
        "",
    ),
    "mirzaalian": (
        "Mirzaalian et al., 2016",
        "Mirzaalian H, Ning L, Savadjiev P, et al. Inter-site and inter-scanner diffusion "
        "MRI data harmonization. NeuroImage 135 (2016) 311-323.",
        "10.1016/j.neuroimage.2016.04.041",
    ),
}

#: Keys of :data:`REFERENCES` that every use of the package cites, whatever it ran: the
#: RISH features LinearRISH scales (Mirzaalian), the libraries every level runs on, ANTs
#: (SyN, the group level's registration) and PyTorch (HARP).  With the methods' own
#: references (:func:`package_references`) they are the ``references`` of CITATION.cff
#: and the dataset's ``HowToAcknowledge``; a test keeps CITATION.cff in step.
PACKAGE_REFERENCE_KEYS = ("mirzaalian", "dipy", "nipype", "pybids", "bids", "syn", "pytorch")

_CITATION = re.compile(r"\[(@[\w-]+(?:\s*;\s*@[\w-]+)*)\]")

def references_for(key: str) -> tuple[Any, ...]:
    """The references of a citation key: one of :data:`REFERENCES` or a method name."""
    from bids_harmony.methods.base import Reference

    if key in REFERENCES:
        return (Reference(*REFERENCES[key]),)
    from bids_harmony.methods.registry import UnknownMethodError, get_method

    try:
        return tuple(get_method(key).references)
    except UnknownMethodError:
        raise KeyError(f"unknown citation key @{key}") from None


def cite(paragraphs: Iterable[str]) -> tuple[list[str], list[Any]]:
    """Resolve ``[@key; @key2]`` into ``(Author et al., year; ...)``.

    Returns the paragraphs with author-year citations and the references cited,
    without duplicates, in the order first cited.
    """
    cited: dict[str, Any] = {}

    def replace(match: re.Match[str]) -> str:
        shorts = []
        for key in (k.strip().lstrip("@") for k in match.group(1).split(";")):
            for ref in references_for(key):
                cited.setdefault(ref.doi or ref.text, ref)
                if ref.short not in shorts:
                    shorts.append(ref.short)
        return "(" + "; ".join(shorts) + ")"

    return [_CITATION.sub(replace, p) for p in paragraphs], list(cited.values())


def package_references() -> list[Any]:
    """The papers bids_harmony is built on: every registered method's references, then
    those of :data:`PACKAGE_REFERENCE_KEYS` (no duplicates, in that order)."""
    from bids_harmony.methods.registry import all_methods

    keys = [method.name for method in all_methods()] + list(PACKAGE_REFERENCE_KEYS)
    cited: dict[str, Any] = {}
    for key in keys:
        for ref in references_for(key):
            cited.setdefault(ref.doi or ref.text, ref)
    return list(cited.values())


def how_to_acknowledge() -> str:
    """``HowToAcknowledge`` of the derivatives dataset: what to cite, with the references.

    The dataset description is written once, by the first level run into an output
    directory, so it names every method's papers; ``logs/CITATION.md`` has those of the
    steps that actually ran.
    """
    from bids_harmony import CODE_URL

    refs = " ".join(f"[{i}] {ref.markdown()}" for i, ref in enumerate(package_references(), 1))
    return (
        f"Cite bids_harmony (CITATION.cff at {CODE_URL}) and the papers of the methods and "
        f"software it ran: {refs} The methods text of this dataset, with the references of "
        "the steps that ran and the software versions, is logs/CITATION.md."
    )


def software_versions(*extra: str) -> dict[str, str]:
    """Versions recorded in sidecars, plus those of ``extra`` packages when installed."""
    from bids_harmony.bids.derivatives import software_versions as recorded

    versions = recorded()
    for package in extra:
        try:
            versions.setdefault(package, importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def fsl_version() -> str | None:
    """FSL's version from ``$FSLDIR/etc/fslversion``, when set."""
    fsldir = os.environ.get("FSLDIR")
    path = Path(fsldir, "etc", "fslversion") if fsldir else None
    if path is None or not path.is_file():
        return None
    return path.read_text().strip().split(":")[0] or None


def write_level_citation(
    output_dir: str | os.PathLike[str],
    level: str,
    paragraphs: Sequence[str],
    software: Mapping[str, str],
) -> Path:
    """Resolve the citations of ``paragraphs`` and write the section of ``level``."""
    from bids_harmony.bids.citation import write_citation

    text, references = cite(paragraphs)
    return write_citation(output_dir, level, text, references=references, software=software)
