r"""Band-wise losses of HARP training (private; see :mod:`bids_harmony.methods.harp.train`).

Plain loss (the paper's): for a batch of valid voxels :math:`v`,

.. math:: \mathcal L = \sum_l \frac{1}{|V|(2l+1)} \sum_{v}\sum_{m=-l}^{l}
          \left(s_{vl} C^\mathrm{src}_{vlm} - C^\mathrm{tgt}_{vlm}\right)^2 .

Noise-aware loss: subtract the source noise energy that the scaled coefficients
carry, :math:`s_{vl}^2 \hat\sigma^2_{lm}`, with :math:`\hat\sigma^2_{lm}` the pooled
source noise variance of coefficient :math:`lm` (see :func:`noise_variance`).
"""

from __future__ import annotations

import numpy as np
import torch

from bids_harmony.dmri.bands import band_orders
from bids_harmony.methods.harp.network import band_index


class BandLoss:
    """Per-band mean squared error, optionally corrected for source noise.

    Parameters
    ----------
    sh_order : int
    device : torch.device or str
    """

    def __init__(self, sh_order: int, device: torch.device | str = "cpu") -> None:
        index = band_index(sh_order)
        sizes = np.array([2 * ell + 1 for ell in band_orders(sh_order)], dtype=np.float32)
        average = np.zeros((index.size, sizes.size), dtype=np.float32)
        average[np.arange(index.size), index] = 1.0 / sizes[index]
        self.index = torch.as_tensor(index, device=device)
        self.average = torch.as_tensor(average, device=device)  # (n_coeffs, n_bands)

    def __call__(
        self,
        scales: torch.Tensor,
        coeffs: torch.Tensor,
        target: torch.Tensor,
        noise_var: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one batch.

        Parameters
        ----------
        scales : Tensor, shape (N, n_bands)
        coeffs : Tensor, shape (N, n_coeffs)
            Source coefficients the scales are applied to.
        target : Tensor, shape (N, n_coeffs)
        noise_var : Tensor, shape (n_coeffs,), optional
            Pooled source noise variance per coefficient; omitted: plain MSE.

        Returns
        -------
        total : Tensor, scalar
            Sum over bands.
        per_band : Tensor, shape (n_bands,)
        """
        per_coeff = scales[:, self.index]
        error = torch.square(per_coeff * coeffs - target)
        if noise_var is not None:
            error = error - torch.square(per_coeff) * noise_var
        per_band = error.mean(dim=0) @ self.average
        return per_band.sum(), per_band


def noise_variance(source: torch.Tensor, rescan: torch.Tensor) -> torch.Tensor:
    r"""Pooled per-coefficient noise variance from a scan–rescan pair.

    .. math:: \hat\sigma^2_{lm} = \frac{1}{N}\sum_v \frac{(C_{vlm} - C'_{vlm})^2}{2},

    unbiased when the two scans have independent noise of equal variance.

    Parameters
    ----------
    source, rescan : Tensor, shape (N, n_coeffs)

    Returns
    -------
    Tensor, shape (n_coeffs,)
    """
    return torch.square(source - rescan).mean(dim=0) / 2.0


def band_power_snr(
    source: torch.Tensor, rescan: torch.Tensor, loss: BandLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Noise-corrected power of each band and its standard error under pure noise.

    .. math:: P_l = \overline{C C'}, \qquad
              \mathrm{SE}_l = \frac{\bar\sigma^2_l}{\sqrt{n (2l+1)}},

    averaged over the :math:`n` voxels and the :math:`2l+1` coefficients of the
    band (:math:`E[CC'] = E[a^2]` since the two scans' noises are independent).
    :math:`P_l / \mathrm{SE}_l` is a z-score of "band :math:`l` holds signal".

    Parameters
    ----------
    source, rescan : Tensor, shape (n, n_coeffs)
    loss : BandLoss

    Returns
    -------
    power, se : Tensor, shape (n_bands,)
    """
    power = (source * rescan).mean(dim=0) @ loss.average
    sizes = 1.0 / loss.average.max(dim=0).values  # 2l + 1
    se = (noise_variance(source, rescan) @ loss.average) / torch.sqrt(source.shape[0] * sizes)
    return power, se


def band_means(values: list[float], orders: list[int], prefix: str) -> dict[str, float]:
    """``{prefix}_total`` and ``{prefix}_l{l}`` entries of a curve point."""
    out = {f"{prefix}_total": float(sum(values))}
    out.update({f"{prefix}_l{ell}": float(v) for ell, v in zip(orders, values, strict=True)})
    return out


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data,
    loss: BandLoss,
    *,
    noise_aware: bool,
    cross_fit: bool,
    chunk: int = 16384,
) -> dict[str, float]:
    """Validation metrics of ``model`` on ``data`` (:class:`~bids_harmony.methods.harp.data.Pairs`).

    Returns ``val_total``/``val_l{l}`` (the objective: noise-aware when asked and
    ``data`` has a rescan, else plain MSE), ``val_mse_*`` and ``val_scale_l{l}``
    (mean scale).  The model is left in eval mode.
    """
    model.eval()
    noise = noise_variance(data.source, data.rescan) if noise_aware else None
    objective = torch.zeros(loss.average.shape[1], device=data.source.device)
    mse, scale_sum = torch.zeros_like(objective), torch.zeros_like(objective)
    for start in range(0, data.n, chunk):
        rows = slice(start, start + chunk)
        src, tgt = data.source[rows], data.target[rows]
        weight = src.shape[0] / data.n
        scales = model(src)
        mse += weight * loss(scales, src, tgt)[1]
        scale_sum += weight * scales.mean(dim=0)
        if noise is None:
            continue
        other = data.rescan[rows]
        if cross_fit:
            objective += weight / 2 * loss(scales, other, tgt, noise)[1]
            objective += weight / 2 * loss(model(other), src, tgt, noise)[1]
        else:
            objective += weight * loss(scales, src, tgt, noise)[1]
    orders = list(range(0, 2 * objective.numel(), 2))
    out = band_means((objective if noise is not None else mse).tolist(), orders, "val")
    out.update(band_means(mse.tolist(), orders, "val_mse"))
    scales_mean = scale_sum.tolist()
    out.update({f"val_scale_l{ell}": v for ell, v in zip(orders, scales_mean, strict=True)})
    return out
