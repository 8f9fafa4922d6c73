r"""Training HARP on paired phantom voxels.

Regression dilution and the noise-aware loss
--------------------------------------------
Phantom pairs are noisy at both sites.  Write a source coefficient as
:math:`C = a + e` (signal plus noise of variance :math:`\sigma^2`) and the target
as :math:`T = g a + f`.  Plain least squares on single pairs finds, per band,

.. math:: s^\mathrm{MSE} = \frac{E[C T]}{E[C^2]} = g \frac{E[a^2]}{E[a^2] + \sigma^2} < g,

so high orders, whose signal is weak, are shrunk towards 0 (towards the bound
:math:`1 - b`): the network "harmonizes" by blurring, lowering GFA.  With a
repeated source scan :math:`C' = a + e'` (``source_rescan``) the fix is

1. the pooled noise variance :math:`\hat\sigma^2_{lm} = \overline{(C - C')^2}/2`
   per coefficient, and the loss
   :math:`\overline{(s C - T)^2} - s^2 \hat\sigma^2` per band, whose
   expectation is the loss of the noise-free source, :math:`E[(s a - T)^2]`;
2. *cross-fitting* (``recipe.cross_fit``): the scales are predicted from one scan
   and applied to the other, :math:`s(C')\,C` and :math:`s(C)\,C'`.  Because the
   network input then carries no information about the noise :math:`e` of the
   coefficients it scales, the corrected loss is unbiased for *any* network, and
   conditionally on the input it is convex in :math:`s` with minimum
   :math:`E[CT \mid C'] / E[a^2 \mid C'] = g`.  Without it, a flexible network can
   learn that inputs with little high-order energy have :math:`C^2 < \hat\sigma^2`
   and push their scales to a bound.

Both scans serve as inputs (twice the samples).  Without a rescan the loss falls
back to plain MSE with a warning.

Bands that are almost pure noise (order 8 at b = 1000 contrast) carry no usable
information about their gain: the corrected band power :math:`E[a^2]` is within
its own standard error of zero and the learned scale wanders between the bounds.
Such bands, whose noise-corrected power :math:`\overline{CC'}` or cross-site
product :math:`\overline{CT}` (:func:`cross_site_snr`) is below
``recipe.min_band_snr`` standard errors (:func:`~bids_harmony.methods.harp.loss.band_power_snr`),
are *held*: their data term is dropped and their scale is trained to 1, with a
warning (the source is left as is where the phantom cannot tell what to do).  The
other bands get a weak prior :math:`\lambda_l \overline{(s_l - c_l)^2}` towards the
network's centre :math:`c_l` (1, or the global per-band scale),
:math:`\lambda_l` = ``recipe.identity_prior`` standard errors, which makes the
constant-scale optimum :math:`(\overline{CT} + \lambda_l c_l)/(\overline{CC'} + \lambda_l)`:
a band 100 standard errors above zero moves by 4 % of its distance to :math:`c_l`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_harmony.dmri.bands import band_orders
from bids_harmony.errors import BidsHarmonyError
from bids_harmony.methods.harp.data import Pairs, check_pairs, holdout
from bids_harmony.methods.harp.loss import (
    BandLoss,
    band_means,
    band_power_snr,
    evaluate,
    noise_variance,
)
from bids_harmony.methods.harp.network import HarpNet
from bids_harmony.methods.harp.recipe import DEFAULT_RECIPE, PAPER_RECIPE, TrainingRecipe

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RECIPE", "PAPER_RECIPE", "HarpTrainingError", "TrainResult", "TrainingRecipe",
    "train_harp",
]  # fmt: skip

MIN_TRAIN_VOXELS = 64


class HarpTrainingError(BidsHarmonyError, ValueError):
    """Training cannot start or diverged (too few valid voxels, non-finite values)."""


@dataclass(frozen=True, eq=False)
class TrainResult:
    r"""Outcome of :func:`train_harp`.

    Attributes
    ----------
    model : HarpNet
        Trained, in eval mode, on the CPU.
    history : dict of str to list of float
        Curves sampled every ``recipe.eval_every`` iterations (and at the last):
        ``iteration``, ``lr``, ``elapsed_s``, ``train_total`` and ``train_l{l}``
        (training objective, averaged since the previous point), and with
        validation voxels ``val_total``/``val_l{l}`` (validation objective),
        ``val_mse_total``/``val_mse_l{l}`` (plain MSE) and ``val_scale_l{l}``
        (mean scale) on up to ``recipe.val_curve_voxels`` voxels.
    wall_time_s : float
    n_train, n_val : int
        Valid voxel pairs used for training and for validation.
    recipe : TrainingRecipe
    final_val_loss : float
        Validation objective over all validation voxels at the end, NaN without
        validation voxels.
    objective : {"noise_aware", "mse"}
        Training objective actually used.
    val_objective : {"noise_aware", "mse", "none"}
        Noise-aware when training was and the validation voxels have a rescan.
    final_val_mse : float
        Plain validation MSE at the end.
    final_val_scales : tuple of float
        Mean scale per band over the validation voxels.
    noise_fraction : tuple of float
        Per band, the share of the training source power that is noise,
        :math:`\hat\sigma^2 / \overline{C^2}` (NaN without a rescan).
    band_snr : tuple of float
        Per band, the noise-corrected source power :math:`\overline{CC'}` in
        standard errors (NaN without a rescan).
    held_bands : tuple of int
        Orders whose scale was held at 1 (``band_snr < recipe.min_band_snr``).
    iterations_run : int
    """

    model: HarpNet
    history: dict[str, list[float]]
    wall_time_s: float
    n_train: int
    n_val: int
    recipe: TrainingRecipe
    final_val_loss: float
    objective: str = "mse"
    val_objective: str = "none"
    final_val_mse: float = math.nan
    final_val_scales: tuple[float, ...] = ()
    noise_fraction: tuple[float, ...] = ()
    band_snr: tuple[float, ...] = ()
    held_bands: tuple[int, ...] = ()
    iterations_run: int = 0

    def summary(self) -> dict[str, Any]:
        """Everything but the model, for a model card."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("model", "recipe")}
        out["recipe"] = self.recipe.to_dict()
        return out


def train_harp(
    source: np.ndarray,
    target: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    source_rescan: np.ndarray | None = None,
    val_source: np.ndarray | None = None,
    val_target: np.ndarray | None = None,
    val_valid: np.ndarray | None = None,
    val_source_rescan: np.ndarray | None = None,
    recipe: TrainingRecipe = DEFAULT_RECIPE,
    sh_order: int | None = None,
    scale_bound: float = 0.1,
    centre: Sequence[float] | None = None,
    architecture: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train a HARP network on paired phantom voxels.

    Parameters
    ----------
    source, target : ndarray, shape (N, n_coeffs)
        SH coefficients of the same voxels at the source site and (registered) at
        the target site.
    valid : ndarray of bool, shape (N,), optional
        Voxels that count (phantom mask, C00 window); default all.
    source_rescan : ndarray, shape (N, n_coeffs), optional
        The same voxels in a repeated source-site scan (registered): enables the
        noise-aware loss (module docstring).
    val_source, val_target, val_valid, val_source_rescan : ndarray, optional
        Validation pairs (e.g. another phantom).  Without them,
        ``recipe.val_fraction`` of the valid voxels is held out at random.
    recipe : TrainingRecipe
    sh_order : int, optional
        Checked against the coefficient count; inferred when omitted.
    scale_bound : float
        :math:`b` of the scales :math:`c (1 + b \\tanh z)`.
    centre : sequence of float, optional
        :math:`c`, one scale per band (default 1), e.g. the global per-band
        scale (:func:`bids_harmony.methods.harp.baseline.fit_band_scales`); held bands
        get 1.  The prior pulls the scales towards it.
    architecture : mapping, optional
        Other :class:`HarpNet` arguments (``hidden``, ``skip_into``).
    device : str or torch.device
    progress : bool
        Show a tqdm bar with the losses.
    callback : callable, optional
        ``callback(iteration, metrics)`` at every curve point; returning True stops.
    time_limit_s : float, optional
        Stop after the iteration that exceeds this wall time (a warning is logged).

    Returns
    -------
    TrainResult

    Raises
    ------
    HarpTrainingError
        Fewer than ``MIN_TRAIN_VOXELS`` valid pairs, NaN/Inf inputs, or a
        non-finite loss.
    ValueError
        Arrays of inconsistent shapes.
    """
    t0 = time.perf_counter()
    source, target, rescan, order = check_pairs(source, target, source_rescan, valid, sh_order)
    if (val_source is None) != (val_target is None):
        raise ValueError("give both val_source and val_target, or neither")
    if val_source is not None:
        val = check_pairs(val_source, val_target, val_source_rescan, val_valid, order)[:3]
    else:
        source, target, rescan, val = holdout(
            source, target, rescan, recipe.val_fraction, recipe.seed
        )
    if source.shape[0] < MIN_TRAIN_VOXELS:
        raise HarpTrainingError(
            f"only {source.shape[0]} valid training voxel pairs (at least {MIN_TRAIN_VOXELS} "
            "are needed): check the phantom mask, the C00 window and the registration."
        )
    arrays = [a for a in (source, target, rescan, *(val or ())) if a is not None]
    if not all(np.isfinite(a).all() for a in arrays):
        raise HarpTrainingError("the training coefficients contain NaN or Inf in valid voxels.")
    noise_aware = recipe.noise_aware and rescan is not None
    if recipe.noise_aware and rescan is None:
        logger.warning(
            "No repeated source scan: HARP is trained with plain MSE, which shrinks the scales "
            "of noisy high orders (regression dilution). Scan the phantom twice at the source "
            "site to enable the noise-aware loss."
        )
    device = torch.device(device)
    gen = torch.Generator().manual_seed(recipe.seed)
    data = Pairs(source, target, rescan, device)
    val_data = Pairs(*val, device) if val is not None and len(val[0]) else None
    loss = BandLoss(order, device)
    orders = band_orders(order)
    terms = _BandTerms(data, loss, recipe, noise_aware)
    if centre is not None:  # held bands stay at 1: the phantom cannot tell their gain
        centre = [1.0 if ell in terms.held else float(c)
                  for ell, c in zip(orders, centre, strict=True)]  # fmt: skip
    architecture = dict(architecture or {})
    if architecture.get("inputs") == "rish" and "input_range" not in architecture:
        architecture["input_range"] = _feature_range(source, order)
    model = HarpNet(order, scale_bound=scale_bound, generator=gen, centre=centre,
                    **architecture)  # fmt: skip
    terms.centre = model.centre.to(device)
    val_noise_aware = noise_aware and val_data is not None and val_data.rescan is not None
    if noise_aware and val_data is not None and not val_noise_aware:
        logger.info("The validation voxels have no rescan: validation loss is plain MSE.")
    logger.info(
        "Training HARP (%s recipe, %s loss) on %d voxel pairs, validating on %d.",
        recipe.name, "noise-aware" if noise_aware else "MSE", data.n,
        0 if val_data is None else val_data.n,
    )  # fmt: skip
    state = _Loop(recipe, model.to(device), data, loss, terms)
    curve = None if val_data is None else val_data.subset(recipe.val_curve_voxels, recipe.seed)
    cross_fit = noise_aware and recipe.cross_fit
    history: dict[str, list[float]] = {}
    with tqdm(total=recipe.iterations, desc="HARP", disable=not progress, leave=False) as bar:
        for it in range(1, recipe.iterations + 1):
            state.step(it, gen, cross_fit)
            bar.update(1)
            over_time = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
            if it % recipe.eval_every and it != recipe.iterations and not over_time:
                continue
            metrics = {"iteration": it, "lr": recipe.lr_at(it)}
            metrics.update(band_means(state.take_train_means(), orders, "train"))
            if curve is not None:
                metrics.update(
                    evaluate(model, curve, loss, noise_aware=val_noise_aware, cross_fit=cross_fit)
                )
                model.train()
            metrics["elapsed_s"] = time.perf_counter() - t0
            for key, value in metrics.items():
                history.setdefault(key, []).append(value)
            bar.set_postfix(loss=f"{metrics['train_total']:.4g}",
                            val=f"{metrics.get('val_total', math.nan):.4g}")  # fmt: skip
            if callback is not None and callback(it, metrics):
                logger.info("Training stopped by the callback at iteration %d.", it)
                break
            if over_time:
                logger.warning("Time limit of %.0f s reached at iteration %d.", time_limit_s, it)
                break
    final: dict[str, float] = {}
    if val_data is not None:
        final = evaluate(model, val_data, loss, noise_aware=val_noise_aware, cross_fit=cross_fit)
    model.eval().cpu()
    wall = time.perf_counter() - t0
    logger.info(
        "HARP trained in %.1f s (%d iterations); validation loss %.4g, mean scales %s.",
        wall, it, final.get("val_total", math.nan),
        [round(final.get(f"val_scale_l{ell}", math.nan), 4) for ell in orders],
    )  # fmt: skip
    return TrainResult(
        model=model, history=history, wall_time_s=wall, n_train=data.n,
        n_val=0 if val_data is None else val_data.n, recipe=recipe,
        final_val_loss=final.get("val_total", math.nan),
        objective="noise_aware" if noise_aware else "mse",
        val_objective="none" if val_data is None else ("noise_aware" if val_noise_aware else "mse"),
        final_val_mse=final.get("val_mse_total", math.nan),
        final_val_scales=tuple(final.get(f"val_scale_l{ell}", math.nan) for ell in orders),
        noise_fraction=terms.fraction, band_snr=terms.snr, held_bands=terms.held,
        iterations_run=it,
    )  # fmt: skip


def cross_site_snr(source: torch.Tensor, target: torch.Tensor, loss: BandLoss) -> torch.Tensor:
    r"""Per band, :math:`\overline{b}` in standard errors, :math:`b_v = \sum_m C_{lm}(v) T_{lm}(v)`.

    The empirical standard error of the per-voxel product (voxels treated as
    independent).  Shape ``(n_bands,)``.
    """
    per_voxel = (source * target) @ (loss.average > 0).to(source.dtype)
    n = per_voxel.shape[0]
    se = per_voxel.std(dim=0) / math.sqrt(max(n, 1))
    return per_voxel.mean(dim=0) / torch.clamp(se, min=1e-30)


def _feature_range(source: np.ndarray, order: int) -> tuple[list[float], list[float]]:
    """0.5th and 99.5th percentiles of the rotation-invariant inputs of the training voxels."""
    from bids_harmony.methods.harp.network import band_onehot, rish_inputs

    rows = torch.from_numpy(np.ascontiguousarray(source, np.float32))
    feats = rish_inputs(rows, band_onehot(order))
    low, high = np.percentile(feats.numpy(), [0.5, 99.5], axis=0)
    return low.tolist(), high.tolist()


class _BandTerms:
    """Noise statistics of the training pairs and the per-band loss weights.

    Attributes
    ----------
    noise : Tensor (n_coeffs,) or None
        Pooled source noise variance used by the loss (noise-aware only).
    data_weight : Tensor (n_bands,)
        1, or 0 for held bands.
    prior : Tensor (n_bands,) or None
        Weight of :math:`\\overline{(s_l - 1)^2}`: ``recipe.identity_prior``
        standard errors, or the band's noise variance for held bands.
    fraction, snr : tuple of float
        Noise share of the source power; noise-corrected power in standard errors.
    held : tuple of int
        Orders whose scale is held at 1.
    """

    def __init__(self, data: Pairs, loss: BandLoss, recipe, noise_aware: bool) -> None:
        orders = list(range(0, 2 * loss.average.shape[1], 2))
        self.data_weight = torch.ones(len(orders), device=data.source.device)
        self.noise = self.prior = None
        self.centre = torch.ones(len(orders), device=data.source.device)
        self.fraction = self.snr = (math.nan,) * len(orders)
        self.held: tuple[int, ...] = ()
        if data.rescan is None:
            return
        noise = noise_variance(data.source, data.rescan)
        total = torch.square(data.source).mean(dim=0) @ loss.average
        power, se = band_power_snr(data.source, data.rescan, loss)
        self.fraction = tuple((noise @ loss.average / total).tolist())
        self.snr = tuple((power / se).tolist())
        logger.info(
            "Source noise share of the power per band: %s; signal power in standard errors: %s.",
            ", ".join(f"l={ell}: {f:.1%}" for ell, f in zip(orders, self.fraction, strict=True)),
            ", ".join(f"l={ell}: {z:.3g}" for ell, z in zip(orders, self.snr, strict=True)),
        )
        if not noise_aware:
            return
        self.noise = noise
        cross = cross_site_snr(data.source, data.target, loss)
        logger.info("Cross-site product per band in standard errors: %s.",
                    ", ".join(f"l={ell}: {z:.3g}" for ell, z in zip(orders, cross.tolist(),
                                                                   strict=True)))  # fmt: skip
        # A band must also be shared by the target: the l = 2 "signal" of an isotropic
        # phantom is the source's own gradient-gain artefact, and its gain to the target
        # cannot be learned (on a NIST-like phantom, learning it made WM FA 2.5x worse).
        held = ((power / se) < recipe.min_band_snr) | (cross < recipe.min_band_snr)
        self.held = tuple(ell for ell, h in zip(orders, held.tolist(), strict=True) if h)
        if self.held:
            logger.warning(
                "SH order(s) %s carry no measurable signal in these phantom scans (below %g "
                "standard errors): their HARP scale is held at 1 (the source is left as is).",
                ", ".join(map(str, self.held)), recipe.min_band_snr,
            )  # fmt: skip
        self.data_weight[held] = 0.0
        self.prior = torch.where(held, noise @ loss.average, recipe.identity_prior * se)


class _Loop:
    """Optimizer state, epoch order and running training losses."""

    def __init__(self, recipe, model, data, loss, terms: _BandTerms) -> None:
        self.recipe, self.model, self.data, self.loss, self.terms = recipe, model, data, loss, terms
        optim = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optim(model.parameters(), lr=recipe.lr_at(1),
                               weight_decay=recipe.weight_decay)  # fmt: skip
        self.batch = min(recipe.batch_size, data.n_samples)
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.band_sum = torch.zeros(loss.average.shape[1], device=data.source.device)
        self.n_sum = 0
        model.train()

    def step(self, it: int, gen: torch.Generator, cross_fit: bool) -> None:
        if self.order is None or self.pos + self.batch > self.data.n_samples:
            perm = torch.randperm(self.data.n_samples, generator=gen)
            self.order, self.pos = perm.to(self.data.source.device), 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.lr_at(it)
        inputs, scaled, target = self.data.batch(idx, cross_fit)
        scales = self.model(inputs)
        _, per_band = self.loss(scales, scaled, target, self.terms.noise)
        total = per_band @ self.terms.data_weight
        if self.terms.prior is not None:
            total = total + torch.square(scales - self.terms.centre).mean(dim=0) @ self.terms.prior
        if not torch.isfinite(total):
            raise HarpTrainingError(
                f"the training loss became {total.item()} at iteration {it}; lower the "
                "learning rate or check the coefficients for outliers."
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.band_sum += per_band.detach()
        self.n_sum += 1

    def take_train_means(self) -> list[float]:
        """Mean per-band training loss since the last call."""
        means = (self.band_sum / max(self.n_sum, 1)).tolist()
        self.band_sum.zero_()
        self.n_sum = 0
        return means
