"""HARP training report: full and minimal cards, atomic write, link from the group report."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bids_harmony.evaluation import train_report
from bids_harmony.evaluation.report import write_html_report
from bids_harmony.evaluation.train_report import (
    MAX_VIEWS,
    SECTIONS,
    PairView,
    ScaleSamples,
    write_train_report,
)

EXCLUDED = "similarity after registration 0.52 < 0.9"


def _reg(after: float, accepted: bool = True, reason: str = "") -> dict:
    return {"similarity_before": 0.41, "similarity_after": after,
            "translation_mm": [1.0, -2.0, 0.1], "rotation_deg": 4.2, "accepted": accepted,
            "reason": reason}  # fmt: skip


def _pair(phantom: str, ses: str, excluded: str | None = None) -> dict:
    scan = {"subject": phantom, "site": "GE", "sh_file": "x.nii.gz"}
    return {
        "phantom": phantom, "protocol": "multishell", "shell_bval": 1000.0, "role": "train",
        "source": {**scan, "session": "GE1"}, "target": {**scan, "session": ses, "site": "Prisma"},
        "source_rescan": {**scan, "session": "GE2"},
        "registration": {"target": _reg(0.52 if excluded else 0.99, not excluded, excluded or ""),
                         "source_rescan": _reg(0.995)},
        "excluded": excluded, "voxels": {"selected": 812, "train": 650, "validation": 162},
    }  # fmt: skip


def _card() -> dict:
    n = 30
    it = np.arange(1, n + 1) * 50
    history = {"iteration": it.tolist(), "train_total": (1 / it).tolist(),
               "val_total": (1.2 / it).tolist()}  # fmt: skip
    for ell in (0, 2, 4, 6, 8):
        history[f"train_l{ell}"] = (0.1 / it).tolist()
        history[f"val_l{ell}"] = (-0.05 / it).tolist()  # noise-aware terms can be negative
        history[f"val_scale_l{ell}"] = np.linspace(1.0, 1.0 + 0.01 * ell, n).tolist()
    comps = [{"component": k, "voxels": 400 + k, "kept": 380, "centroid_vox": [10, 12, k]}
             for k in range(1, 4)]  # fmt: skip
    return {
        "source_site": "GE", "target_site": "Prisma", "created": "2026-05-09T10:00:00Z",
        "software_versions": {"numpy": "1.26.4", "torch": "2.3.0"},
        "training": {
            "pairs": [_pair("phantom01", "Prisma1"), _pair("phantom02", "Prisma1", EXCLUDED)],
            "registration": "FSL flirt -dof 6 -cost corratio",
            "voxel_selection": {"rule": "window", "c00_window": [1, 2], "erode": 1,
                                "by_phantom": {"phantom01": {"selected": 1140,
                                                             "components": comps}}},
            "validation": {"scheme": "spatial blocks", "block_voxels": 4, "fraction": 0.2},
            "band_snr": [3.7e5, 7e3, 365, 3.3, None], "noise_fraction": [0.0, 0.013, 0.25, 0.81,
                                                                          0.83],
            "held_bands": [6, 8], "recipe": {"min_band_snr": 5.0}, "history": history,
            "final_validation_loss": 4e-4, "n_train_voxels": 1893, "n_validation_voxels": 400,
            "baseline_scales": [0.98, 1.01, 1.0, 1.0, 1.0], "wall_time_s": 84.2,
        },
    }  # fmt: skip


def _views(n: int) -> list[PairView]:
    x, y = np.meshgrid(np.linspace(-1, 1, 24), np.linspace(-1, 1, 20), indexing="ij")
    disc = np.clip(1.0 - np.hypot(x, y), 0, 1)
    shifted = np.roll(disc, 3, axis=0)
    return [PairView(f"sub-phantom{i:02d}: ses-GE1 -> ses-Prisma1", disc, shifted, disc * 0.9,
                     selected=disc > 0.5) for i in range(n)]  # fmt: skip


def _samples() -> ScaleSamples:
    rng = np.random.default_rng(0)
    c00 = rng.uniform(1, 2, 6000)  # more than the plotted sample
    scales = 1 + 0.05 * rng.standard_normal((c00.size, 5))
    return ScaleSamples(c00, scales)


def _no_temp(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_full_report(tmp_path):
    out = tmp_path / "models" / "harp_src-GE_tgt-Prisma.html"
    assert write_train_report(out, _card(), _views(MAX_VIEWS + 2), _samples()) == out
    text = out.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    assert "GE → Prisma" in text
    assert "Trained on 1 pair(s), 1 excluded; validation loss 4.00e-04; bands held at 1: l=6, " \
           "l=8." in text  # fmt: skip
    assert "numpy 1.26.4" in text and "2026-05-09" in text
    assert f"excluded: {EXCLUDED}".replace("<", "&lt;") in text
    assert text.count('class="excluded"') == 2  # both registrations of the excluded pair
    assert "0.410 → 0.990" in text and "1.00, -2.00, 0.10" in text
    assert f"first {MAX_VIEWS} of {MAX_VIEWS + 2} pairs" in text
    assert text.count("data:image/png;base64,") == 5
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text and "<link" not in text
    assert "held at 1" in text and 'class="missing"' not in text
    _no_temp(out.parent)


def test_minimal_card_says_what_is_missing(tmp_path):
    out = tmp_path / "r.html"
    write_train_report(out, {"source_site": "A", "target_site": "B"})
    text = out.read_text(encoding="utf-8")
    assert "A → B" in text and "Training pairs not recorded" in text
    assert all(f"<h2>{title}</h2>" in text for title in SECTIONS)
    assert text.count('class="missing"') == 6
    assert "No registration overlays" in text and "No scale samples" in text
    assert "data:image/png" not in text
    # Odd values in an older card: unreadable numbers become n/a, not a crash.
    odd = {"band_snr": "bad", "noise_fraction": [0.1, None], "held_bands": [[2]],
           "history": {"train_total": [1, None], "val_scale_l0": [1.0, 1.1]},
           "pairs": [{"registration": "flirt", "source": "x"}, "junk"], "voxel_selection": 3}
    view = PairView("no outline $x$", np.ones((4, 5)), np.zeros((4, 5)), np.ones((4, 5)))
    write_train_report(out, {"training": odd}, [view], ScaleSamples(np.zeros(0), np.zeros((0, 2))))
    text = out.read_text(encoding="utf-8")
    assert "n/a" in text and "The scale samples are empty" in text
    assert text.count("data:image/png;base64,") == 3  # overlay, band test, loss curves


def test_dataclasses_check_shapes():
    with pytest.raises(ValueError):
        PairView("p", np.zeros((3, 4)), np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        PairView("p", np.zeros((3, 4, 2)), np.zeros((3, 4, 2)), np.zeros((3, 4, 2)))
    with pytest.raises(ValueError):
        ScaleSamples(np.zeros(5), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        ScaleSamples(np.zeros(5), np.zeros((5, 3)), baseline=np.ones(2))


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "r.html"
    out.write_text("old report")

    def boom(fig):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(train_report, "_png_uri", boom)
    with pytest.raises(RuntimeError):
        write_train_report(out, _card(), _views(1), _samples())
    assert out.read_text() == "old report"
    _no_temp(tmp_path)


def test_group_report_links_training_reports(tmp_path):
    models = tmp_path / "models"
    write_train_report(models / "harp_src-GE_tgt-Prisma.html", {"source_site": "GE",
                                                               "target_site": "Prisma"})
    (models / ".tmp-0123-harp_src-X_tgt-Y.html").write_text("half written")
    out = tmp_path / "group" / "report.html"
    write_html_report(out, title="t", models_dir=models)
    text = out.read_text(encoding="utf-8")
    assert "<h2>HARP training</h2>" in text
    assert '<a href="../models/harp_src-GE_tgt-Prisma.html">GE → Prisma</a>' in text
    assert "tmp-" not in text
    # No training reports: no section.
    write_html_report(out, title="t", models_dir=tmp_path / "nothing")
    assert "HARP training" not in out.read_text(encoding="utf-8")
