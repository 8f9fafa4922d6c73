"""Methods text: workflow descriptions, citations, OUT/logs/CITATION.md, report section."""

from __future__ import annotations

import json

import pytest
from nipype.pipeline import engine as pe

from bids_harmony.bids.citation import CITATION_JSON, CITATION_MD, read_sections, write_citation
from bids_harmony.bids.discovery import discover
from bids_harmony.config import Config
from bids_harmony.evaluation.report import markdown_html, write_html_report
from bids_harmony.workflows.boilerplate import (
    dwi_postdesc,
    group_paragraphs,
    train_paragraphs,
    workflow_paragraphs,
)
from bids_harmony.workflows.participant import init_dwi_run_wf, init_participant_wf
from bids_harmony.workflows.references import REFERENCES, cite, write_level_citation
from tests.conftest import make_bids


def _config(bids, tmp_path, **kwargs) -> Config:
    return Config(bids_dir=bids, output_dir=tmp_path / "out", analysis_level="participant",
                  work_dir=tmp_path / "work", omp_nthreads=1, **kwargs)  # fmt: skip


def _text(workflow) -> str:
    return "\n\n".join(cite(workflow_paragraphs(workflow))[0])


def test_python_backend_paragraphs_name_the_steps_run(tmp_path):
    bids = make_bids(tmp_path / "bids")
    study = discover(bids)
    config = _config(bids, tmp_path, denoise="mppca", remove_gibbs=True, sh_order=6)
    text = _text(init_participant_wf(study, config, backend="python"))
    assert text.startswith("Diffusion MRI data were processed with bids_harmony")
    for phrase in ("Marchenko-Pastur", "(Veraart et al., 2016)", "Gibbs-ringing removal",
                   "median_otsu", "up to order 6 (28 coefficients", "(Tournier et al., 2007)",
                   "(Yarkoni et al., 2019)", "were not corrected"):  # fmt: skip
        assert phrase in text, phrase
    assert "FSL" not in text and "motion" not in text and "[@" not in text
    # Same dataset, other options: the text follows them.
    text = _text(init_participant_wf(study, _config(bids, tmp_path, gfa=False), backend="none"))
    assert "used as given" in text and "Marchenko" not in text
    assert "spherical deconvolution" not in text and "(Tuch, 2004)" not in text


def _fsl_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FSLOUTPUTTYPE", "NIFTI_GZ")
    monkeypatch.delenv("FSLDIR", raising=False)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


def _run_wf(name, backend, *, reverse=False, harp_model=None, tmp_path=None):
    plan = None
    if backend == "fsl":
        epi = [{"path": str(tmp_path / "x_epi.nii.gz")}] if reverse else []
        plan = {"pe_dir": "j-", "readout_time": 0.05, "slm": "none", "topup_config": "b02b0.cnf",
                "reverse": epi}  # fmt: skip
    return init_dwi_run_wf(
        dwi="d.nii.gz", bval="d.bval", bvec="d.bvec", run_info={}, params={},
        output_dir=str(tmp_path), backend=backend, denoise="none", remove_gibbs=False,
        motion_correction=False, sh_order=8, b_tolerance=50, b0_threshold=50, gfa=True,
        omp_nthreads=1, mem_gb=1, name=name, harp_model=harp_model, fsl_plan=plan,
    )  # fmt: skip


def test_fsl_paragraphs_and_runs_that_differ_are_merged_in_order(monkeypatch, tmp_path):
    _fsl_env(monkeypatch, tmp_path)
    model = tmp_path / "m.safetensors"
    model.touch()
    harp = {"file": str(model), "expect": {}, "device": "cpu", "info": {}}
    top = pe.Workflow(name="top")
    top.__desc__ = "Intro."
    top.add_nodes([
        _run_wf("run_a", "fsl", reverse=True, tmp_path=tmp_path),
        _run_wf("run_b", "fsl", reverse=False, harp_model=harp, tmp_path=tmp_path),
    ])  # fmt: skip
    paragraphs = cite(workflow_paragraphs(top))[0]
    starts = [p.split(" ")[0:2] for p in paragraphs]
    assert paragraphs[0] == "Intro."
    assert "topup (Andersson et al., 2003)" in paragraphs[1]
    assert "(Andersson and Sotiropoulos, 2016)" in paragraphs[1]
    assert paragraphs[2].startswith("Runs without b = 0 volumes of opposite phase encoding")
    assert "topup" not in paragraphs[2] and "`eddy --repol" in paragraphs[2]
    assert starts[3] == ["For", "every"] and "spherical harmonics" in paragraphs[3]
    assert "diffusion tensor" in paragraphs[4]
    assert "HARP model (Jeong et al., 2026)" in paragraphs[5] and len(paragraphs) == 6
    # Only the python backend's text when FSL is not used.
    text = "\n".join(cite(workflow_paragraphs(_run_wf("r", "python", tmp_path=tmp_path)))[0])
    assert "FSL" not in text and "HARP" not in text and "was not denoised" in text


def test_applied_models_are_described():
    text = cite([dwi_postdesc(sh_order=8, gfa=True, harmonized=False, rish=True)])[0][0]
    assert "LinearRISH model (Karayumak et al., 2019)" in text and "HARP" not in text


def test_citations_resolve_and_references_are_unique():
    paragraphs, refs = cite(["A [@dipy].", "B [@dipy; @nipype] and [@harp].", "C [@rish]."])
    assert paragraphs[1] == ("B (Garyfallidis et al., 2014; Gorgolewski et al., 2011) and "
                             "(Jeong et al., 2026).")  # fmt: skip
    assert [r.short for r in refs] == ["Garyfallidis et al., 2014", "Gorgolewski et al., 2011",
                                       "Jeong et al., 2026", "Karayumak et al., 2019"]  # fmt: skip
    assert refs[2].text.endswith("arXiv:2603.06696 (2026).")
    with pytest.raises(KeyError, match="@nonsense"):
        cite(["[@nonsense]"])
    shorts = [short for short, _, _ in REFERENCES.values()]
    assert len(set(shorts)) == len(shorts)


def test_sections_are_kept_per_level(tmp_path):
    out = tmp_path / "out"
    write_level_citation(out, "participant", ["First run [@dipy]."], {"dipy": "1.0"})
    write_level_citation(out, "train", ["Trained [@harp] with [@dipy]."], {"torch": "2.0"})
    write_level_citation(out, "participant", ["Second run [@dipy; @nipype]."], {"dipy": "1.1"})
    text = (out / CITATION_MD).read_text()
    assert "First run" not in text and "Second run (Garyfallidis" in text
    assert text.index("(participant level)") < text.index("(train level)")
    assert "group level" not in text and "levels run: participant, train" in text
    assert text.count("Garyfallidis E, Brett M") == 1  # cited by both levels, listed once
    assert "1. Garyfallidis E" in text and "3. Jeong H" in text
    assert "https://doi.org/10.3389/fninf.2014.00008" in text
    assert "- dipy 1.1 (participant)" not in text and "- dipy 1.1" in text
    write_level_citation(out, "group", ["Evaluated."], {"dipy": "1.2"})
    text = (out / CITATION_MD).read_text()
    assert text.index("(train level)") < text.index("(group level)") < text.index("## Software")
    assert "- dipy 1.1 (participant), 1.2 (group)" in text
    assert set(read_sections(out)) == {"participant", "train", "group"}
    assert not list((out / "logs").glob(".tmp-*"))
    # A broken store is not fatal: the file is written anew with this level only.
    (out / CITATION_JSON).write_text("{")
    write_citation(out, "group", ["Again."])
    assert json.loads((out / CITATION_JSON).read_text())["levels"].keys() == {"group"}
    with pytest.raises(ValueError, match="unknown level"):
        write_citation(out, "preprocessing", ["x"])


def _card(rule="window", name="default", noise_aware=True):
    recipe = {"name": name, "optimizer": "adam", "lr": 1e-4, "iterations": 1000,
              "batch_size": 1024, "lr_schedule": "cosine", "warmup": 50,
              "noise_aware": noise_aware, "cross_fit": True, "min_band_snr": 5.0,
              "identity_prior": 4.0, "seed": 0}  # fmt: skip
    return {"source_site": "GE", "target_site": "Prisma", "training": {
        "pairs": [{}, {}, {}], "excluded_pairs": [{"pair": "a -> b", "reason": "x"}],
        "voxel_selection": {"rule": rule, "c00_window": [1.0, 2.0], "erode": 1},
        "validation": {"block_voxels": 4, "fraction": 0.2}, "n_train_voxels": 12345,
        "n_validation_voxels": 2000, "recipe": recipe, "device": "cpu"}}  # fmt: skip


def test_train_text_follows_registration_voxel_rule_and_recipe():
    ants = " ".join(cite(train_paragraphs(target="Prisma", sources=["GE"], registration="ants",
                                          cards={"GE": _card()}))[0])  # fmt: skip
    assert "HARP mapped" in ants and "(Jeong et al., 2026)" in ants
    assert "ANTs" in ants and "FLIRT" not in ants and "1 < C00 < 2" in ants
    assert "noise-aware" in ants and "1,000 iterations" in ants and "(Paszke et al., 2019)" in ants
    assert "GE → Prisma from 3 phantom pairs (1 excluded), 12,345 training voxels" in ants
    assert "4 × 4 × 4-voxel blocks" in ants and "1 voxel(s) were peeled" in ants
    flirt = " ".join(cite(train_paragraphs(
        target="Prisma", sources=["GE", "Skyra"], registration="flirt",
        cards={"GE": _card("percentile", "paper", noise_aware=False), "Skyra": None},
    ))[0])  # fmt: skip
    assert "FSL FLIRT (Jenkinson et al., 2002)" in flirt and "ANTs" not in flirt
    assert "30th percentile" in flirt and "paper's recipe" in flirt
    assert "noise-aware" not in flirt and "No model was written for Skyra." in flirt


def test_group_text_names_what_was_compared():
    with_harp = " ".join(cite(group_paragraphs(target="Prisma", sources=["GE"], harp=True,
                                               template=None))[0])  # fmt: skip
    for phrase in ("(Avants et al., 2008)", "study FA template", "(Karayumak et al., 2019)",
                   "Eq. 2", "and with HARP", "fibre orientations", "paired t-tests"):  # fmt: skip
        assert phrase in with_harp, phrase
    without = " ".join(cite(group_paragraphs(target="Prisma", sources=["GE", "Skyra"],
                                             harp=False, template="tpl.nii.gz",
                                             transform="Affine"))[0])  # fmt: skip
    assert "with HARP" not in without and "fibre orientations" not in without
    assert "SyN" not in without and "`tpl.nii.gz`" in without and "sites GE, Skyra" in without


def test_group_report_has_the_methods_section(tmp_path):
    out = tmp_path / "out"
    md = write_level_citation(out, "group", group_paragraphs(
        target="Prisma", sources=["GE"], harp=True, template=None), {"dipy": "1.0"}
    ).read_text()  # fmt: skip
    page = write_html_report(tmp_path / "report.html", title="t", methods=md).read_text()
    assert "<h2>Methods</h2>" in page and "<h3>Evaluation of the harmonization" in page
    assert "<li>Avants BB, Epstein CL" in page and "<h1>Methods</h1>" not in page
    assert '<a href="https://doi.org/10.1016/j.media.2007.06.004">' in page
    assert 'src="http' not in page
    assert "<h2>Methods</h2>" not in write_html_report(tmp_path / "r2.html", title="t").read_text()


def test_markdown_is_escaped():
    html = markdown_html("# T\n\nA <b>x</b> & `<i>` *it* **bold**\n\n- one\n- two")
    assert "&lt;b&gt;x&lt;/b&gt; &amp; <code>&lt;i&gt;</code> <i>it</i> <b>bold</b>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "T" not in html.split("<p>")[0]
