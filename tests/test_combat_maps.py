"""ComBat of maps in a template space (methods/combat/maps.py) and session covariates
(bids/covariates.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_harmony.bids.covariates import CovariateError, read_covariates
from bids_harmony.methods.combat.errors import CombatInputError
from bids_harmony.methods.combat.maps import (
    apply_combat_maps,
    feature_mask,
    fit_combat_maps,
    load_combat_maps,
    region_means,
    save_combat_maps,
)
from bids_harmony.methods.combat.variants import apply_variant, fit_variant

pytestmark = pytest.mark.filterwarnings("ignore::bids_harmony.methods.combat.SmallSiteWarning")
SHAPE = (6, 5, 4)


def _cohort(seed: int = 0, per_site: int = 8):
    """Maps of 3 sites: site B adds 0.05 in the left half, site C scales deviations."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(["A", "B", "C"], per_site)
    age = rng.uniform(20, 70, sites.size)
    base = rng.uniform(0.3, 0.7, SHAPE)
    eps = 0.02 * rng.standard_normal((sites.size, *SHAPE))
    fa = base - 0.002 * (age[:, None, None, None] - 45) + eps
    fa[sites == "B", :3] += 0.05
    fa[sites == "C"] = base + 2.0 * (fa[sites == "C"] - base)
    md = 1e-3 * (1 + 0.5 * fa)
    regions = np.zeros(SHAPE, np.int32)
    regions[:3], regions[3:] = 1001, 1002
    return {"b1000/fa": fa, "b1000/md": md}, sites, {"age": age}, regions


def _bind(sites, covariates):
    def fit(data):
        return fit_variant("combat", data, sites, covariates, ref_site="A")

    def apply(model, data):
        return apply_variant(model, data, sites, covariates)

    return fit, apply


def test_feature_mask_keeps_voxels_inside_most_sessions():
    masks = np.ones((10, *SHAPE), bool)
    masks[0, 0] = False  # 90 % coverage: kept
    masks[:2, 1] = False  # 80 %: dropped
    mask = feature_mask(masks)
    assert mask[0].all() and not mask[1].any() and mask[2:].all()


def test_region_means_are_means_of_finite_values():
    maps = np.arange(2 * 8, dtype=float).reshape(2, 2, 2, 2)
    maps[0, 0, 0, 0] = np.nan
    regions = np.array([[[1, 1], [2, 2]], [[2, 0], [0, 0]]])
    out = region_means(maps, regions, np.array([1, 2, 3]))
    assert out[0, 0] == 1.0 and out[1, 0] == 8.5 and out[0, 1] == pytest.approx((2 + 3 + 4) / 3)
    assert np.isnan(out[:, 2]).all()


def test_fit_apply_removes_the_site_effects_and_keeps_the_reference(tmp_path):
    maps, sites, covariates, regions = _cohort()
    fit, apply = _bind(sites, covariates)
    mask = np.ones(SHAPE, bool)
    mask[0, 0, 0] = False
    model = fit_combat_maps(maps, template=maps["b1000/fa"].mean(0), affine=np.eye(4),
                            mask=mask, regions=regions, fit=fit)  # fmt: skip
    harmonized, before, after = apply_combat_maps(model, maps, apply)
    fa, out = maps["b1000/fa"], harmonized["b1000/fa"]
    assert np.array_equal(out[sites == "A"], fa[sites == "A"])  # reference, bit for bit
    assert np.array_equal(out[:, 0, 0, 0], fa[:, 0, 0, 0])  # outside the mask: unchanged
    shift = lambda x, s: x[sites == s, :3].mean() - x[sites == "A", :3].mean()  # noqa: E731
    assert abs(shift(out, "B")) < 0.3 * abs(shift(fa, "B"))
    spread = lambda x, s: x[sites == s].std(axis=0).mean()  # noqa: E731
    assert spread(out, "C") < 0.7 * spread(fa, "C")
    assert before["b1000/fa"].shape == after["b1000/fa"].shape == (sites.size, 2)
    # the model file round trip keeps float64 estimates: identical outputs
    path = save_combat_maps(tmp_path / "combat_tgt-A", model, {"target_site": "A"})
    loaded, card = load_combat_maps(path)
    assert card["target_site"] == "A" and np.array_equal(loaded.mask, model.mask)
    again, _, after2 = apply_combat_maps(loaded, maps, apply)
    assert np.array_equal(again["b1000/fa"], out) and np.array_equal(
        after2["b1000/fa"], after["b1000/fa"]
    )


def test_maps_off_the_template_grid_or_without_overlap_are_refused():
    maps, sites, covariates, regions = _cohort()
    fit, apply = _bind(sites, covariates)
    with pytest.raises(CombatInputError, match="template grid"):
        fit_combat_maps(
            {"b1000/fa": maps["b1000/fa"][:, :5]},
            template=np.zeros(SHAPE),
            affine=np.eye(4),
            mask=np.ones(SHAPE, bool),
            regions=regions,
            fit=fit,
        )
    with pytest.raises(CombatInputError, match="do not overlap"):
        fit_combat_maps(maps, template=np.zeros(SHAPE), affine=np.eye(4),
                        mask=np.zeros(SHAPE, bool), regions=regions, fit=fit)  # fmt: skip
    model = fit_combat_maps(maps, template=np.zeros(SHAPE), affine=np.eye(4),
                            mask=np.ones(SHAPE, bool), regions=regions, fit=fit)  # fmt: skip
    with pytest.raises(CombatInputError, match="missing"):
        apply_combat_maps(model, {"b1000/fa": maps["b1000/fa"]}, apply)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_covariates_from_participants_and_sessions_tables(tmp_path):
    _write(tmp_path / "participants.tsv",
           "participant_id\tage\tsex\nsub-01\t30\tF\nsub-02\t40\tM\n")  # fmt: skip
    _write(
        tmp_path / "sub-01" / "sub-01_sessions.tsv", "session_id\tage\nses-A\t31.5\nses-B\tn/a\n"
    )
    values = read_covariates(tmp_path, [("01", "A"), ("01", "B"), ("02", "A")], ["age", "sex"])
    assert values == {"age": [31.5, 30.0, 40.0], "sex": ["F", "F", "M"]}  # session value wins


def test_missing_covariate_column_or_value_names_the_sessions(tmp_path):
    _write(tmp_path / "participants.tsv", "participant_id\tage\nsub-01\t30\nsub-02\tn/a\n")
    with pytest.raises(CovariateError, match=r"column\(s\) sex not found.*columns there: age"):
        read_covariates(tmp_path, [("01", None)], ["sex"])
    with pytest.raises(CovariateError, match=r"'age' has no value for 2 session\(s\): sub-02, "
                       r"sub-03"):  # fmt: skip
        read_covariates(tmp_path, [("01", None), ("02", None), ("03", None)], ["age"])
    assert read_covariates(tmp_path, [("01", None)], []) == {}


def test_an_atlas_is_resampled_to_the_template_grid_and_checked(tmp_path):
    import nibabel as nb

    from bids_harmony.errors import BadImageError
    from bids_harmony.interfaces.combat import atlas_regions, check_atlas

    labels = np.zeros((8, 8, 8), np.int16)
    labels[:4], labels[4:] = 3, 7
    atlas = tmp_path / "atlas.nii.gz"
    nb.save(nb.Nifti1Image(labels, np.eye(4)), atlas)
    check_atlas(atlas)
    same = nb.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    assert np.array_equal(atlas_regions(atlas, same), labels)
    coarse = nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2, 2, 1]))
    out = atlas_regions(atlas, coarse)  # 2 mm voxels over the same 8 mm: nearest labels
    assert out.shape == (4, 4, 4) and set(np.unique(out)) == {3, 7}
    assert (out[:2] == 3).all() and (out[2:] == 7).all()
    nb.save(nb.Nifti1Image(labels * 0.5, np.eye(4)), tmp_path / "float.nii.gz")
    with pytest.raises(BadImageError, match="integer region labels"):
        check_atlas(tmp_path / "float.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(BadImageError, match="not a readable NIfTI"):
        check_atlas(tmp_path / "broken.nii.gz")
