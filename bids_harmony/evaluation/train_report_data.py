"""What the training report shows beyond the card: registration views and learned scales.

Builds :class:`~bids_harmony.evaluation.train_report.PairView` slices from the
registration inputs kept during training, and
:class:`~bids_harmony.evaluation.train_report.ScaleSamples` by running the trained
network on the training voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bids_harmony.bids.phantom_pairs import PhantomPair
from bids_harmony.evaluation.train_report import PairView, ScaleSamples
from bids_harmony.interfaces.phantom_pairs import PairArrays
from bids_harmony.methods.harp.network import HarpNet
from bids_harmony.registration.phantom import PhantomImage
from bids_harmony.registration.rigid import resample_to

__all__ = ["report_inputs"]

#: Most registration views shown, and voxels sampled for the scale plot.
MAX_VIEWS = 12
MAX_SAMPLES = 20_000


def _slice(volume: np.ndarray) -> np.ndarray:
    return np.asarray(volume)[:, :, volume.shape[2] // 2]


def report_inputs(
    pairs: Sequence[PhantomPair],
    arrays: Sequence[PairArrays],
    images: Sequence[PhantomImage],
    model: HarpNet,
    card: Mapping[str, object],
) -> tuple[list[PairView], ScaleSamples | None]:
    """Views of the distinct target registrations and the scales on the training voxels."""
    by_name = {img.name: img for img in images}
    views: list[PairView] = []
    seen: set[tuple[str, str]] = set()
    for pair, arr in zip(pairs, arrays, strict=True):
        reg = arr.registrations.get("target")
        fixed = by_name.get(str(pair.source.preproc_dwi))
        moving = by_name.get(str(pair.target.preproc_dwi))
        key = (str(pair.source.preproc_dwi), str(pair.target.preproc_dwi))
        if reg is None or fixed is None or moving is None or key in seen:
            continue
        seen.add(key)
        shape = fixed.contrast.shape

        def moved(transform: np.ndarray | None, fixed=fixed, moving=moving, shape=shape):
            return resample_to(moving.contrast, moving.affine, shape, fixed.affine, transform)

        label = f"{pair.source.label} -> ses-{pair.target.session}"
        if arr.excluded:
            label += " (EXCLUDED)"
        views.append(PairView(label, _slice(fixed.contrast), _slice(moved(None)),
                              _slice(moved(reg.transform))))  # fmt: skip
        if len(views) == MAX_VIEWS:
            break
    usable = [a for a in arrays if a.n_voxels]
    if not usable:
        return views, None
    rows = np.concatenate([a.source for a in usable], axis=0)
    if len(rows) > MAX_SAMPLES:
        rows = rows[np.random.default_rng(0).choice(len(rows), MAX_SAMPLES, replace=False)]
    from bids_harmony.methods.harp.inference import HarpPredictor

    scales = HarpPredictor(model).predict_scales(rows[:, : model.n_coeffs])
    training = card.get("training", {})
    baseline = training.get("baseline_scales") if isinstance(training, Mapping) else None
    return views, ScaleSamples(rows[:, 0], scales,
                               None if baseline is None else np.asarray(baseline))  # fmt: skip
