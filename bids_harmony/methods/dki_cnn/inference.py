"""Whole-volume inference of the DKI network: numpy in, physical maps out."""

from __future__ import annotations

import numpy as np
import torch

from bids_harmony.errors import BadImageError
from bids_harmony.methods.dki_cnn.network import (
    KERNEL,
    MAP_NAMES,
    DkiCnn,
    physical_ranges,
    to_physical,
)

__all__ = ["DEFAULT_CHUNK_SLICES", "predict_maps"]

DEFAULT_CHUNK_SLICES = 8


@torch.inference_mode()
def predict_maps(
    network: DkiCnn,
    inputs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    chunk_slices: int = DEFAULT_CHUNK_SLICES,
    device: str = "cpu",
) -> np.ndarray:
    """DKI maps of a whole volume, in physical units.

    The volume is zero-padded by one voxel (``same`` padding) and run in slabs of
    ``chunk_slices`` slices along z, each with its one-slice rim of context, so the
    result does not depend on the chunking.  The maps are clipped to
    :func:`~.network.physical_ranges` and set to 0 outside ``mask``.

    Parameters
    ----------
    network : DkiCnn
    inputs : ndarray, shape (X, Y, Z, C)
        Input channels (:mod:`.inputs`).
    mask : ndarray of bool, shape (X, Y, Z), optional
    chunk_slices : int
    device : str

    Returns
    -------
    ndarray, shape (X, Y, Z, 8), float32
        :data:`~.network.MAP_NAMES` order; diffusivities in mm²/s.
    """
    x = np.asarray(inputs, np.float32)
    if x.ndim != 4 or x.shape[-1] != network.in_channels:
        raise BadImageError(
            f"the network takes (X, Y, Z, {network.in_channels}) inputs, got {x.shape}"
        )
    if not np.isfinite(x).all():
        raise BadImageError("the inputs hold NaN or infinite values")
    if chunk_slices < 1:
        raise ValueError(f"chunk_slices must be >= 1, got {chunk_slices}")
    rim = KERNEL // 2
    padded = torch.from_numpy(np.pad(x, ((rim, rim),) * 3 + ((0, 0),)))
    dev = torch.device(device)
    was_training = network.training
    home = network.output_mean.device
    network.eval().to(dev)
    out = np.empty(x.shape[:3] + (len(MAP_NAMES),), np.float32)
    try:
        for z0 in range(0, x.shape[2], chunk_slices):
            z1 = min(z0 + chunk_slices, x.shape[2])
            slab = padded[:, :, z0 : z1 + 2 * rim].permute(3, 0, 1, 2)[None].to(dev)
            out[:, :, z0:z1] = network.predict(slab, pad=False)[0].permute(1, 2, 3, 0).cpu()
    finally:
        network.train(was_training).to(home)
    maps = to_physical(out)
    for k, (low, high) in enumerate(physical_ranges().values()):
        np.clip(maps[..., k], low, high, out=maps[..., k])
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != x.shape[:3]:
            raise BadImageError(f"mask {mask.shape} and inputs {x.shape[:3]} differ in shape")
        maps[~mask] = 0.0
    return maps
