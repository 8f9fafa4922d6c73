r"""Applying a trained HARP network to SH coefficient maps (numpy in, numpy out).

The predictor re-lays the network out for inference on ``(voxels, n_coeffs)``
row blocks: the input enters layer 1 and the skip layers, so one GEMM computes
all input projections, :math:`P = x\,[W_1 \mid W_3^x \mid W_5^x \mid W_7^x]^T`,
and each skip layer adds its slice of :math:`P` instead of concatenating
(:math:`W[x, h] = W^x x + W^h h`).  Blocks of :data:`BLOCK` rows keep the
activations in cache; ``chunk_size`` bounds the numpy copies.

Precision: ``"float32"`` reproduces ``HarpNet.forward`` to rounding (~1e-7).
``"bfloat16"`` runs the hidden layers as bf16 GEMMs (float32 input projections
and output layer); ``"mixed"`` keeps the last hidden layer (a third of the
work) in float32 too, which about halves the error.  On CPUs with native bf16
(AVX512-BF16, AMX) they are about 3x and 2x faster than float32; elsewhere they
are slow.  ``"auto"`` (default) tries ``"bfloat16"`` then ``"mixed"`` where bf16
is native and takes the first whose scales, on up to :data:`CALIBRATION_VOXELS`
voxels of each call spread over the data, are within ``tolerance / 2`` of float32
(relative); otherwise float32.  Rounding to bf16 between layers gives relative
errors of a few 1e-5 for typical HARP networks.  Scales lie in
:math:`[1 - b, 1 + b]`, so the relative error of a harmonized coefficient is
that of its scale.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from bids_harmony.errors import BadImageError
from bids_harmony.methods.harp.network import HarpNet, band_index, rish_inputs

logger = logging.getLogger(__name__)

__all__ = ["BLOCK", "HarpPredictor", "harmonize_sh"]

BLOCK = 4096
CALIBRATION_VOXELS = 2048
#: name -> (dtype of the hidden layers, number of last hidden layers kept float32)
_KERNELS = {
    "float32": (torch.float32, 0),
    "mixed": (torch.bfloat16, 1),
    "bfloat16": (torch.bfloat16, 0),
}
PRECISIONS = ("auto", *_KERNELS)


class _Kernel:
    """HarpNet weights laid out for ``addmm`` on row blocks.

    The input projections and the output layer are float32; hidden layers run
    in ``low`` (float32 or bfloat16) except the last ``fp32_tail`` of them.
    """

    def __init__(
        self, model: HarpNet, low: torch.dtype, fp32_tail: int, device: torch.device
    ) -> None:
        k, n_layers = model.n_inputs, len(model.layers)
        # the rotation invariants, when the model takes them instead of the coefficients
        self.onehot = model.band_onehot.to(device) if model.inputs == "rish" else None
        self.input_bounds = (model.input_low.to(device), model.input_high.to(device))
        fed = [1, *model.skip_into]  # layers that see the input x
        x_parts, x_bias, self.layers = [], [], []
        offset = 0
        for i, layer in enumerate(model.layers, start=1):
            w, b = layer.weight.detach().float(), layer.bias.detach().float()
            dtype = torch.float32 if i > n_layers - fp32_tail else low
            span = None
            if i in fed:
                x_parts.append(w[:, :k])
                x_bias.append(b)
                span, offset = (offset, offset + w.shape[0]), offset + w.shape[0]
                w, b = (None, None) if i == 1 else (w[:, k:], None)
            weight = None if w is None else _t(w, dtype, device)
            self.layers.append((span, weight, None if b is None else b.to(device, dtype), dtype))
        self.x_weight = _t(torch.cat(x_parts), torch.float32, device)  # (k, sum of widths)
        self.x_bias = torch.cat(x_bias).to(device)
        self.head_weight = _t(model.head.weight.detach().float(), torch.float32, device)
        self.head_bias = model.head.bias.detach().float().to(device)
        self.bound = model.scale_bound
        self.centre = model.centre.detach().float().to(device)
        self.low = low

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Scales (n, n_bands), float32, of float32 rows ``x`` (n, n_coeffs)."""
        if self.onehot is not None:
            x = rish_inputs(x, self.onehot, *self.input_bounds)
        proj = {torch.float32: torch.addmm(self.x_bias, x, self.x_weight)}
        proj[self.low] = proj[torch.float32].to(self.low)
        h = x
        for span, weight, bias, dtype in self.layers:
            if weight is None:  # layer 1: its input projection is all there is
                h = torch.relu_(proj[dtype][:, span[0] : span[1]])
                continue
            h = h.to(dtype)
            if span is not None:  # skip layer: W [x, h] = W_x x (projected) + W_h h
                h = torch.relu_(torch.addmm(proj[dtype][:, span[0] : span[1]], h, weight))
            else:
                h = torch.relu_(torch.addmm(bias, h, weight))
        z = torch.addmm(self.head_bias, h.float(), self.head_weight)
        return torch.tanh_(z).mul_(self.bound).add_(1.0).mul_(self.centre)


def _t(weight: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Transposed contiguous copy, so that ``h @ W.T`` is ``addmm(b, h, W_t)``."""
    return weight.t().contiguous().to(device, dtype)


class HarpPredictor:
    """Chunked HARP inference on numpy arrays.

    Parameters
    ----------
    model : HarpNet
    device : str or torch.device
    chunk_size : int
        Voxels converted per chunk (bounds the temporary memory to about
        ``chunk_size * (n_coeffs + n_bands) * 8`` bytes plus the activations of
        one block of :data:`BLOCK` rows).
    n_threads : int, optional
        Torch CPU threads during calls (restored afterwards); default unchanged.
    precision : {"auto", "float32", "mixed", "bfloat16"}
    tolerance : float
        Largest relative difference to float32 that ``"auto"`` accepts (it
        requires half of it on the calibration voxels).

    Attributes
    ----------
    precision_used : str or None
        Precision of the last call (``"float32"``, ``"mixed"`` or ``"bfloat16"``).
    card : dict or None
        Model card, when built with :meth:`from_file`.
    """

    def __init__(
        self,
        model: HarpNet,
        *,
        device: str | torch.device = "cpu",
        chunk_size: int = 65536,
        n_threads: int | None = None,
        precision: str = "auto",
        tolerance: float = 1e-4,
    ) -> None:
        if not isinstance(model, HarpNet):
            raise TypeError(f"expected a HarpNet, got {type(model).__name__}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if chunk_size < 1 or (n_threads is not None and n_threads < 1):
            raise ValueError("chunk_size and n_threads must be positive")
        self.model = model
        self.device = torch.device(device)
        self.chunk_size = int(chunk_size)
        self.n_threads = n_threads
        self.precision = precision
        self.tolerance = float(tolerance)
        self.n_coeffs, self.n_bands = model.n_coeffs, model.n_bands
        self.precision_used: str | None = None
        self.card: dict[str, Any] | None = None
        self._kernels: dict[str, _Kernel] = {}
        self._index = band_index(model.sh_order)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, expect: Mapping[str, Any] | None = None, **kwargs
    ) -> HarpPredictor:
        """Predictor of a verified model file (:func:`~bids_harmony.methods.harp.load_model`)."""
        from bids_harmony.methods.harp.model import load_model

        model, card = load_model(path, expect=expect)
        predictor = cls(model, **kwargs)
        predictor.card = card
        return predictor

    def predict_scales(self, coeffs: np.ndarray) -> np.ndarray:
        """Scales of every row.

        Parameters
        ----------
        coeffs : ndarray, shape (N, n_coeffs)

        Returns
        -------
        ndarray, shape (N, n_bands), float32
        """
        coeffs = self._check(coeffs)
        if coeffs.ndim != 2:
            raise ValueError(f"expected (N, {self.n_coeffs}) rows, got shape {coeffs.shape}")
        out = np.empty((coeffs.shape[0], self.n_bands), dtype=np.float32)
        with self._session(coeffs) as kernel:
            for start in range(0, coeffs.shape[0], self.chunk_size):
                rows = slice(start, start + self.chunk_size)
                out[rows] = self._run(kernel, coeffs[rows])
        return out

    def harmonize(
        self, coeffs: np.ndarray, *, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""Harmonize coefficient maps: :math:`C'_{lm} = s_l C_{lm}`.

        Parameters
        ----------
        coeffs : ndarray, shape (..., n_coeffs)
        mask : ndarray of bool, shape (...), optional
            Voxels to harmonize; the others are copied with scale 1.

        Returns
        -------
        harmonized : ndarray, shape (..., n_coeffs), float32
        scales : ndarray, shape (..., n_bands), float32
        """
        coeffs = self._check(coeffs)
        lead = coeffs.shape[:-1]
        flat = coeffs.reshape(-1, self.n_coeffs)
        out = flat.astype(np.float32, copy=True)
        scales = np.ones((flat.shape[0], self.n_bands), dtype=np.float32)
        if mask is None:
            selections: Iterator = (
                slice(s, s + self.chunk_size) for s in range(0, flat.shape[0], self.chunk_size)
            )
            sample = out
        else:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != lead:
                raise ValueError(f"mask has shape {mask.shape}, the coefficients {lead}")
            index = np.flatnonzero(mask)
            starts = range(0, index.size, self.chunk_size)
            selections = (index[s : s + self.chunk_size] for s in starts)
            sample = out[index[_spread(index.size, CALIBRATION_VOXELS)]]
        with self._session(sample) as kernel:
            for sel in selections:
                rows = out[sel]
                if not np.isfinite(rows).all():
                    raise BadImageError(
                        f"{int((~np.isfinite(rows).all(axis=1)).sum())} voxels to harmonize have "
                        "NaN or Inf SH coefficients; mask them out."
                    )
                s = self._run(kernel, rows)
                scales[sel] = s
                out[sel] = rows * s[:, self._index]
        return out.reshape(coeffs.shape), scales.reshape(lead + (self.n_bands,))

    # -- internals -----------------------------------------------------------------

    def _check(self, coeffs: np.ndarray) -> np.ndarray:
        coeffs = np.asarray(coeffs)
        if coeffs.ndim < 1 or coeffs.shape[-1] != self.n_coeffs:
            raise ValueError(
                f"the model takes {self.n_coeffs} SH coefficients (order "
                f"{self.model.sh_order}) in the last dimension, got shape {coeffs.shape}; "
                "zero-pad lower orders with bids_harmony.dmri.bands.pad_coeffs."
            )
        if not np.issubdtype(coeffs.dtype, np.floating):
            raise ValueError(f"SH coefficients must be floating point, got {coeffs.dtype}")
        return coeffs

    def _kernel(self, precision: str) -> _Kernel:
        if precision not in self._kernels:
            low, tail = _KERNELS[precision]
            self._kernels[precision] = _Kernel(self.model, low, tail, self.device)
        return self._kernels[precision]

    @contextlib.contextmanager
    def _session(self, sample: np.ndarray) -> Iterator[_Kernel]:
        """Threads, inference mode and the kernel of the precision to use."""
        previous = torch.get_num_threads()
        if self.n_threads is not None:
            torch.set_num_threads(self.n_threads)
        try:
            with torch.inference_mode():
                self.precision_used = self._choose(sample)
                yield self._kernel(self.precision_used)
        finally:
            if self.n_threads is not None:
                torch.set_num_threads(previous)

    def _choose(self, sample: np.ndarray) -> str:
        """The precision to use: the fastest whose calibration error is small enough."""
        if self.precision != "auto":
            return self.precision
        if not _native_bf16(self.device) or sample.shape[0] == 0:
            return "float32"
        rows = np.asarray(sample[_spread(sample.shape[0], CALIBRATION_VOXELS)], np.float32)
        rows = rows[np.isfinite(rows).all(axis=1)]
        ref = self._run(self._kernel("float32"), rows)
        for precision in ("bfloat16", "mixed"):
            low = self._run(self._kernel(precision), rows)
            err = float(np.max(np.abs(low - ref) / ref, initial=0.0))
            if err <= self.tolerance / 2:
                return precision
            logger.debug("%s scales differ by %.2g (relative) from float32.", precision, err)
        return "float32"

    def _run(self, kernel: _Kernel, rows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(self.device)
        out = torch.empty((x.shape[0], self.n_bands), dtype=torch.float32, device=self.device)
        for start in range(0, x.shape[0], BLOCK):
            out[start : start + BLOCK] = kernel(x[start : start + BLOCK])
        return out.cpu().numpy()


def _spread(n: int, k: int) -> np.ndarray:
    """Up to ``k`` indices spread evenly over ``range(n)``."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(n, k)).astype(np.int64))


def _native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products are native (fast) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def harmonize_sh(
    model: HarpNet,
    coeffs: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    chunk_size: int = 65536,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Harmonize SH coefficients with a HARP model (see :meth:`HarpPredictor.harmonize`).

    Parameters
    ----------
    model : HarpNet
    coeffs : ndarray, shape (..., n_coeffs)
    mask : ndarray of bool, shape (...), optional
        Voxels outside keep their coefficients and get scale 1.
    chunk_size : int
    device : str or torch.device
    precision : {"auto", "float32", "mixed", "bfloat16"}

    Returns
    -------
    harmonized : ndarray, shape (..., n_coeffs), float32
    scales : ndarray, shape (..., n_bands), float32
    """
    predictor = HarpPredictor(model, device=device, chunk_size=chunk_size, precision=precision)
    return predictor.harmonize(coeffs, mask=mask)
