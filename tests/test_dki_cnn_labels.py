"""Which registered labels the DKI network learns from (methods.dki_cnn.labels)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_harmony.methods.dki_cnn.labels import FA_TOLERANCE, MD_TOLERANCE, consistent_labels


def _maps(shape=(4, 3, 2)):
    rng = np.random.default_rng(0)
    md = rng.uniform(0.6e-3, 1.0e-3, shape)
    fa = rng.uniform(0.2, 0.7, shape)
    return md, fa, np.ones(shape, bool)


def test_agreeing_labels_are_kept_and_the_mask_is_respected():
    md, fa, mask = _maps()
    mask[0, 0, 0] = False
    kept = consistent_labels(md * 1.05, fa + 0.03, md, fa, mask)
    assert kept.sum() == mask.sum() and not kept[0, 0, 0]


def test_labels_of_another_tissue_mix_are_left_out():
    md, fa, mask = _maps()
    label_md, label_fa = md.copy(), fa.copy()
    label_md[1, 1, 1] = md[1, 1, 1] * (1 + MD_TOLERANCE + 0.05)  # CSF mixed in
    label_md[2, 1, 1] = md[2, 1, 1] * (1 - MD_TOLERANCE + 0.05)  # within tolerance
    label_fa[3, 2, 0] = fa[3, 2, 0] - FA_TOLERANCE - 0.02  # WM border
    label_md[0, 2, 1] = np.nan  # label outside the warped field of view
    kept = consistent_labels(label_md, label_fa, md, fa, mask)
    assert not kept[1, 1, 1] and kept[2, 1, 1] and not kept[3, 2, 0] and not kept[0, 2, 1]
    assert kept.sum() == mask.sum() - 3


def test_units_only_need_to_agree_and_bad_own_fits_fail():
    md, fa, mask = _maps()
    own = md.copy()
    own[0, 0, 0] = 0.0  # a clipped own fit cannot vouch for its label
    kept = consistent_labels(md * 1000, fa, own * 1000, fa, mask)
    assert not kept[0, 0, 0] and kept.sum() == mask.sum() - 1


def test_refusals():
    md, fa, mask = _maps()
    with pytest.raises(ValueError, match="shape"):
        consistent_labels(md[:2], fa, md, fa, mask)
    with pytest.raises(ValueError, match="> 0"):
        consistent_labels(md, fa, md, fa, mask, md_tolerance=0)
