"""LinearRISH as a :class:`~bids_harmony.methods.base.HarmonizationMethod`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bids_harmony.dmri.bands import rish_features
from bids_harmony.methods.base import (
    Config,
    Example,
    HarmonizationMethod,
    Harmonizes,
    Reference,
    TrainsFrom,
)
from bids_harmony.methods.rish.linear_rish import (
    DEFAULT_EPS,
    DEFAULT_MAX_SCALE,
    LinearRISH,
    apply_rish_scales,
)

KARAYUMAK = Reference(
    short="Karayumak et al., 2019",
    text="Cetin Karayumak S, Bouix S, Ning L, et al. Retrospective harmonization of "
    "multi-site diffusion MRI data acquired with different acquisition parameters. "
    "NeuroImage 184 (2019) 180-200.",
    doi="10.1016/j.neuroimage.2018.08.073",
)


@dataclass(frozen=True)
class RishModel:
    """Fitted LinearRISH maps in the common space of the subjects, per shell.

    Attributes
    ----------
    scales : dict of str to ndarray, shape (X, Y, Z, n_bands)
        :math:`s_l(x)` per shell label, applied as :math:`c'_{lm} = s_l c_{lm}`.
    template_source, template_target : dict of str to ndarray, shape (X, Y, Z, n_bands)
        Mean RISH features of each site (NaN where no subject is valid).
    reference : ndarray, shape (X, Y, Z), optional
        The common-space image the maps live on (the FA template), so that a
        session can be registered to it when the model is applied.
    affine : ndarray, shape (4, 4), optional
        World (RAS, mm) affine of that grid.
    """

    scales: dict[str, np.ndarray]
    template_source: dict[str, np.ndarray]
    template_target: dict[str, np.ndarray]
    reference: np.ndarray | None = None
    affine: np.ndarray | None = None

    @property
    def shells(self) -> tuple[str, ...]:
        """Shell labels, e.g. ``("b1000", "b2000")``."""
        return tuple(self.scales)

    def with_shells(self, other: RishModel) -> RishModel:
        """This model plus the shells of ``other`` (fitted on the same grid)."""
        return dataclasses.replace(
            self,
            scales={**self.scales, **other.scales},
            template_source={**self.template_source, **other.template_source},
            template_target={**self.template_target, **other.template_target},
        )


_PARTS = ("scales", "template_source", "template_target")


class RishMethod(HarmonizationMethod[RishModel]):
    """LinearRISH: per-voxel, per-band scaling of SH coefficients to the target's RISH.

    ``fit(source, target, source_masks=..., target_masks=...)`` takes RISH feature
    maps ``(S, X, Y, Z, n_bands)`` of traveling subjects in a common space;
    ``apply(model, coeffs)`` scales coefficients ``(X, Y, Z, n_coeffs)`` on the
    model's grid (warp :attr:`RishModel.scales` to a subject's space first to
    harmonize it natively).
    """

    name = "rish"
    title = "LinearRISH"
    trains_from = TrainsFrom.TRAVELING_SUBJECTS
    harmonizes = Harmonizes.SH
    description = (
        "LinearRISH harmonization scaled the SH coefficients of the source scanner, per "
        "voxel and order band, by the square root of the ratio of the mean rotation-"
        "invariant SH (RISH) features of the target and the source site, estimated from "
        "traveling subjects registered to a common FA template and warped back "
        "to each session's native space."
    )
    references = (KARAYUMAK,)

    def fit(self, source: np.ndarray, target: np.ndarray, **options: object) -> RishModel:
        """One shell's model; options ``source_masks``, ``target_masks``, ``eps``,
        ``max_scale``, ``shell`` (label, default ``"b1000"``), ``reference``, ``affine``."""
        masks_src = options.get("source_masks")
        masks_tgt = options.get("target_masks")
        fitted = LinearRISH(
            eps=float(options.get("eps", DEFAULT_EPS)),  # type: ignore[arg-type]
            max_scale=options.get("max_scale", DEFAULT_MAX_SCALE),  # type: ignore[arg-type]
        ).fit(source, target, masks_src, masks_tgt)  # type: ignore[arg-type]
        shell = str(options.get("shell", "b1000"))
        reference, affine = options.get("reference"), options.get("affine")
        return RishModel(
            {shell: np.asarray(fitted.scales_, np.float32)},
            {shell: np.asarray(fitted.template_source_, np.float32)},
            {shell: np.asarray(fitted.template_target_, np.float32)},
            None if reference is None else np.asarray(reference, np.float32),
            None if affine is None else np.asarray(affine, np.float64),
        )

    def apply(self, model: RishModel, data: np.ndarray, **options: object) -> np.ndarray:
        """Scale ``data`` (..., n_coeffs); options ``shell`` (needed when the model has
        several) and ``scales`` (the shell's maps warped to the data's grid)."""
        shell = options.get("shell")
        if shell is None:
            if len(model.shells) != 1:
                raise ValueError(f"the model has shells {model.shells}; say which (shell=...)")
            shell = model.shells[0]
        if shell not in model.scales:
            raise ValueError(f"the model has no shell {shell!r} (shells: {model.shells})")
        scales = options.get("scales", model.scales[str(shell)])
        return apply_rish_scales(np.asarray(data), np.asarray(scales))

    def example(self, seed: int = 0) -> Example:
        return _example(seed)

    def to_tensors(self, model: RishModel) -> tuple[dict[str, np.ndarray], Config]:
        tensors = {f"{part}.{shell}": getattr(model, part)[shell]
                   for part in _PARTS for shell in model.shells}  # fmt: skip
        if model.reference is not None:
            tensors["reference"] = model.reference
        if model.affine is not None:
            tensors["affine"] = np.asarray(model.affine, np.float64)
        first = model.scales[model.shells[0]]
        return tensors, {"shells": list(model.shells), "n_bands": int(first.shape[-1]),
                         "grid": list(first.shape[:3])}  # fmt: skip

    def from_tensors(self, tensors: Mapping[str, np.ndarray], config: Config) -> RishModel:
        shells = [str(s) for s in config.get("shells", [])]  # type: ignore[union-attr]
        missing = sorted(f"{p}.{s}" for p in _PARTS for s in shells if f"{p}.{s}" not in tensors)
        if not shells or missing:
            raise ValueError(f"a LinearRISH model needs shells and tensors {missing}")
        parts = [{s: np.asarray(tensors[f"{p}.{s}"], np.float32) for s in shells}
                 for p in _PARTS]  # fmt: skip
        reference = tensors.get("reference")
        affine = tensors.get("affine")
        return RishModel(*parts, None if reference is None else np.asarray(reference),
                         None if affine is None else np.asarray(affine, np.float64))  # fmt: skip


def _example(seed: int) -> Example:
    """Traveling subjects on a 6x6x6 grid: target = source with band gains (1, 1.2, 0.8)."""
    rng = np.random.default_rng(seed)
    gains = np.repeat(np.array([1.0, 1.2, 0.8], np.float32), [1, 5, 9])
    subjects = rng.normal(0.0, 0.2, (4, 6, 6, 6, 15)).astype(np.float32)
    subjects[..., 0] = rng.uniform(0.5, 1.0, (4, 6, 6, 6))
    source = np.stack([rish_features(s) for s in subjects])
    target = np.stack([rish_features(s * gains) for s in subjects])
    new = rng.normal(0.0, 0.2, (6, 6, 6, 15)).astype(np.float32)
    return Example(source, target, {}, new, {}, truth=new * gains)


def stack_subjects(maps: Sequence[np.ndarray]) -> np.ndarray:
    """``(S, X, Y, Z, n_bands)`` from a list of per-subject maps (a shape check)."""
    return np.stack([np.asarray(m) for m in maps])
