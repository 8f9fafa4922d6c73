"""Paired training voxels for :func:`bids_harmony.methods.harp.train_harp` (private)."""

from __future__ import annotations

import numpy as np
import torch

from bids_harmony.dmri.bands import order_from_n_coeffs


class Pairs:
    """Valid voxel pairs on a device.

    Sample ``k`` of ``n_samples`` is voxel ``k % n``; with a rescan, samples
    ``k >= n`` use the rescan as the network input (so each scan serves once).

    Parameters
    ----------
    source, target : ndarray or Tensor, shape (n, n_coeffs)
    rescan : ndarray or Tensor, shape (n, n_coeffs), or None
    device : torch.device or str
    """

    def __init__(self, source, target, rescan, device) -> None:
        self.source = torch.as_tensor(source, device=device)
        self.target = torch.as_tensor(target, device=device)
        self.rescan = None if rescan is None else torch.as_tensor(rescan, device=device)
        self.n = self.source.shape[0]
        self.n_samples = self.n * (1 if self.rescan is None else 2)

    def batch(
        self, idx: torch.Tensor, cross_fit: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(network input, coefficients to scale, target)`` rows of samples ``idx``.

        With ``cross_fit`` the scales of one scan are applied to the other scan.
        """
        voxel = idx % self.n
        src, tgt = self.source[voxel], self.target[voxel]
        if self.rescan is None:
            return src, src, tgt
        other, flip = self.rescan[voxel], (idx >= self.n)[:, None]
        first, second = torch.where(flip, other, src), torch.where(flip, src, other)
        return first, (second if cross_fit else first), tgt

    def subset(self, size: int, seed: int) -> Pairs:
        """At most ``size`` voxels drawn with ``seed`` (all of them when fewer)."""
        if self.n <= size:
            return self
        pick = np.sort(np.random.default_rng(seed).choice(self.n, size, replace=False))
        idx = torch.as_tensor(pick, device=self.source.device)
        rescan = None if self.rescan is None else self.rescan[idx]
        return Pairs(self.source[idx], self.target[idx], rescan, self.source.device)


def check_pairs(source, target, rescan, valid, sh_order):
    """Float32 copies of the valid rows and the SH order.

    Returns
    -------
    source, target : ndarray, shape (n_valid, n_coeffs), float32
    rescan : ndarray or None
    order : int

    Raises
    ------
    ValueError
        Shapes that do not match or an invalid coefficient count.
    """
    source, target = np.asarray(source), np.asarray(target)
    if source.ndim != 2 or source.shape != target.shape:
        raise ValueError(
            "source and target must be (N, n_coeffs) arrays of one shape, got "
            f"{source.shape} and {target.shape}"
        )
    order = order_from_n_coeffs(source.shape[1])
    if sh_order is not None and int(sh_order) != order:
        raise ValueError(f"{source.shape[1]} coefficients are order {order}, not {sh_order}")
    arrays = [source, target] + ([] if rescan is None else [np.asarray(rescan)])
    if rescan is not None and arrays[2].shape != source.shape:
        raise ValueError(f"the rescan has shape {arrays[2].shape}, expected {source.shape}")
    keep = np.ones(source.shape[0], dtype=bool) if valid is None else np.asarray(valid, bool)
    if keep.shape != (source.shape[0],):
        raise ValueError(f"valid must have shape ({source.shape[0]},), got {keep.shape}")
    arrays = [np.ascontiguousarray(a[keep], dtype=np.float32) for a in arrays]
    return arrays[0], arrays[1], (arrays[2] if rescan is not None else None), order


def holdout(source, target, rescan, fraction: float, seed: int):
    """Split off ``fraction`` of the voxels (drawn with ``seed``) for validation.

    Returns
    -------
    source, target, rescan : the training rows
    val : tuple (source, target, rescan) of the held-out rows, or None
    """
    n_val = int(round(fraction * source.shape[0]))
    if n_val < 1:
        return source, target, rescan, None
    is_val = np.zeros(source.shape[0], dtype=bool)
    is_val[np.random.default_rng(seed).choice(source.shape[0], n_val, replace=False)] = True
    keep = ~is_val
    if rescan is None:
        return source[keep], target[keep], None, (source[is_val], target[is_val], None)
    val = (source[is_val], target[is_val], rescan[is_val])
    return source[keep], target[keep], rescan[keep], val
