r"""The DKI 3D hierarchical CNN (Tong et al., 2020, §2.2).

Layout, for ``C`` input channels (see :mod:`.inputs`) and width 150::

    x (C) ─► conv 3×3×3 ─► ReLU ─► [conv 1×1×1 ─► ReLU] × n_shared ─► h
    h ─► dropout ─► conv 1×1×1 (3)                      MD, AD, RD       (shallow head)
    h ─► conv 1×1×1 ─► ReLU ─► dropout ─► conv 1×1×1 (5) FA, MK, AK, RK, KFA (deep head)

The paper says: an input layer of the DWIs of one scan, a 3×3×3 convolution, "several"
fully connected (1×1×1) layers, 150 units and a ReLU in every hidden layer, 10 % dropout
before the output layer, MD/AD/RD from the shallow output layer and FA/MK/AK/RK/KFA from an
output layer "containing one more hidden layer".  Our choices where it is silent:

Shared hidden layers
    ``n_shared = 2`` 1×1×1 layers after the convolution, so the shallow head reads the
    third hidden layer and the deep head the fourth.  "Several" means at least two; the
    spatial context is fixed by the single 3×3×3 layer, so further 1×1×1 layers only add
    per-voxel capacity, and two (plus the deep head's own) already give a 3–4 layer MLP per
    voxel, ample for eight smooth functions of a 65-value signal, at half the CPU time of
    four.  The earlier network the paper builds on (its refs. 29 and 54) is of this depth.
Padding
    ``same``: the convolution sees zeros outside the volume (the voxels outside the
    brain mask are zero in the inputs too, see :mod:`.inputs`).  Training feeds
    patches with their real one-voxel rim and no padding (``forward(x, pad=False)``),
    so every trained voxel saw its true neighbourhood; whole-volume inference pads.
Output scaling
    The layers predict standardized maps :math:`z_k`; fixed buffers give the maps in
    *network units*, :math:`y_k = \mu_k + \sigma_k z_k`, with diffusivities in µm²/ms
    (= 10⁻³ mm²/s, so MD ≈ 0.8) and FA, kurtosis and KFA unitless: all O(1).
    :math:`\mu_k, \sigma_k` are the mean and standard deviation of the training labels
    in the mask, so the loss on :math:`z` is an MSE with every map weighted equally.
    :func:`to_physical` turns network units into the labels' units (mm²/s).
Input standardization
    Fixed buffers :math:`m_c, s_c` (the mean and standard deviation of every channel over
    the training voxels in the masks) standardize the inputs after the zero padding, so
    the padding and the zeros outside the mask mean "no signal" as in the raw inputs.
    A fixed affine map per channel does not change what the network can represent; it
    only conditions the optimisation (attenuations at b = 2000 vary over ~0.1).
Initialisation
    PyTorch's default :math:`U(\pm 1/\sqrt{\mathrm{fan\,in}})` drawn from a seeded
    generator (the global RNG is never touched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIFFUSIVITY_MAPS", "DkiCnn", "MAP_NAMES", "SHALLOW_MAPS", "DEEP_MAPS", "UNIT_SCALE",
    "physical_ranges", "to_network_units", "to_physical",
]  # fmt: skip

#: Output order of every map array (X, Y, Z, 8) of this method.
MAP_NAMES = ("MD", "AD", "RD", "FA", "MK", "AK", "RK", "KFA")
SHALLOW_MAPS = MAP_NAMES[:3]
DEEP_MAPS = MAP_NAMES[3:]
DIFFUSIVITY_MAPS = ("MD", "AD", "RD")
#: Network unit = physical unit × scale: mm²/s → µm²/ms for diffusivities.
UNIT_SCALE = tuple(1000.0 if name in DIFFUSIVITY_MAPS else 1.0 for name in MAP_NAMES)
PHYSICAL_UNITS = tuple("mm^2/s" if name in DIFFUSIVITY_MAPS else "1" for name in MAP_NAMES)
NETWORK_UNITS = tuple("um^2/ms" if name in DIFFUSIVITY_MAPS else "1" for name in MAP_NAMES)

PAPER_WIDTH = 150
PAPER_DROPOUT = 0.1
DEFAULT_SHARED = 2
KERNEL = 3
ARCHITECTURE_VERSION = 1


class DkiCnn(nn.Module):
    """The hierarchical DKI network (module docstring).

    Parameters
    ----------
    in_channels : int
        Input channels (shells × directions, plus the S0 channel; :mod:`.inputs`).
    width : int
        Units of every hidden layer (150 in the paper).
    n_shared : int
        1×1×1 hidden layers shared by both heads, after the 3×3×3 convolution.
    dropout : float
        Dropout probability before each output layer (0.1 in the paper).
    output_mean, output_std : sequence of 8 float, optional
        :math:`\\mu_k, \\sigma_k` of the maps in network units (default 0 and 1).
    generator : torch.Generator, optional
        Source of the initial weights (default: seeded with 0).

    Notes
    -----
    ``forward`` maps ``(B, C, X, Y, Z)`` to standardized maps ``(B, 8, X, Y, Z)``
    (``pad=True``) or ``(B, 8, X-2, Y-2, Z-2)`` (``pad=False``); :meth:`predict`
    returns network units.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        width: int = PAPER_WIDTH,
        n_shared: int = DEFAULT_SHARED,
        dropout: float = PAPER_DROPOUT,
        output_mean: Sequence[float] | None = None,
        output_std: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.width = int(width)
        self.n_shared = int(n_shared)
        self.dropout = float(dropout)
        if self.in_channels < 1 or self.width < 1 or self.n_shared < 0:
            raise ValueError(
                f"need in_channels >= 1, width >= 1, n_shared >= 0; got "
                f"{in_channels}, {width}, {n_shared}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        meta = {"device": "meta"}
        self.conv = nn.Conv3d(self.in_channels, self.width, KERNEL, **meta)
        self.shared = nn.ModuleList(
            nn.Conv3d(self.width, self.width, 1, **meta) for _ in range(self.n_shared)
        )
        self.deep_hidden = nn.Conv3d(self.width, self.width, 1, **meta)
        self.head_shallow = nn.Conv3d(self.width, len(SHALLOW_MAPS), 1, **meta)
        self.head_deep = nn.Conv3d(self.width, len(DEEP_MAPS), 1, **meta)
        self.to_empty(device="cpu")  # allocate without drawing from the global RNG
        mean = [0.0] * len(MAP_NAMES) if output_mean is None else [float(v) for v in output_mean]
        std = [1.0] * len(MAP_NAMES) if output_std is None else [float(v) for v in output_std]
        if len(mean) != len(MAP_NAMES) or len(std) != len(MAP_NAMES):
            raise ValueError(f"output_mean and output_std need {len(MAP_NAMES)} values")
        if not all(math.isfinite(m) for m in mean) or not all(
            s > 0 and math.isfinite(s) for s in std
        ):
            raise ValueError(f"output scaling must be finite with std > 0: {mean}, {std}")
        self.register_buffer("input_mean", torch.zeros(self.in_channels))
        self.register_buffer("input_std", torch.ones(self.in_channels))
        self.register_buffer("output_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("output_std", torch.tensor(std, dtype=torch.float32))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights and biases :math:`U(\\pm 1/\\sqrt{\\mathrm{fan\\,in}})` from ``generator``."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for layer in self.layers():
            fan_in = layer.in_channels * math.prod(layer.kernel_size)
            bound = 1.0 / math.sqrt(fan_in)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)

    def layers(self) -> list[nn.Conv3d]:
        """Every convolution, input to output (conv, shared, deep hidden, shallow, deep head)."""
        return [self.conv, *self.shared, self.deep_hidden, self.head_shallow, self.head_deep]

    def set_input_scaling(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set the per-channel input standardization (from the training inputs)."""
        mean_t = torch.as_tensor(np.asarray(mean, np.float32))
        std_t = torch.as_tensor(np.asarray(std, np.float32))
        if mean_t.shape != (self.in_channels,) or std_t.shape != (self.in_channels,):
            raise ValueError(f"input scaling needs {self.in_channels} values per entry")
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise ValueError("input scaling must be finite with std > 0")
        self.input_mean.copy_(mean_t)
        self.input_std.copy_(std_t)

    def set_output_scaling(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Set :math:`\\mu_k, \\sigma_k` (network units) from the training labels."""
        mean_t = torch.as_tensor(np.asarray(mean, np.float32))
        std_t = torch.as_tensor(np.asarray(std, np.float32))
        if mean_t.shape != (len(MAP_NAMES),) or std_t.shape != (len(MAP_NAMES),):
            raise ValueError(f"output scaling needs {len(MAP_NAMES)} values per entry")
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise ValueError("output scaling must be finite with std > 0")
        self.output_mean.copy_(mean_t)
        self.output_std.copy_(std_t)

    def trunk(self, x: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """Shared features ``(V, width)`` of the output voxels, in (B, X, Y, Z) order.

        The 3×3×3 convolution runs as one matrix product on the 27-voxel
        neighbourhoods (im2col), the 1×1×1 layers as matrix products on voxel rows:
        the same function as ``Conv3d`` (a test checks it), about twice as fast on a
        CPU for training.
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input (B, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}"
            )
        if pad:
            x = F.pad(x, (KERNEL // 2,) * 6)
        shape = (1, -1, 1, 1, 1)
        x = (x - self.input_mean.view(shape)) / self.input_std.view(shape)
        cols = x.unfold(2, KERNEL, 1).unfold(3, KERNEL, 1).unfold(4, KERNEL, 1)
        cols = cols.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(-1, self.conv.weight[0].numel())
        h = F.relu(F.linear(cols, self.conv.weight.flatten(1), self.conv.bias))
        for layer in self.shared:
            h = F.relu(_pointwise(layer, h))
        return h

    def forward(self, x: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """Standardized maps ``(B, 8, ...)`` in :data:`MAP_NAMES` order."""
        h = self.trunk(x, pad=pad)
        shallow = _pointwise(self.head_shallow, F.dropout(h, self.dropout, self.training))
        deep = F.relu(_pointwise(self.deep_hidden, h))
        deep = _pointwise(self.head_deep, F.dropout(deep, self.dropout, self.training))
        rim = 0 if pad else 2 * (KERNEL // 2)
        out_shape = (x.shape[0], *(n - rim for n in x.shape[2:]), len(MAP_NAMES))
        return torch.cat([shallow, deep], dim=1).reshape(out_shape).permute(0, 4, 1, 2, 3)

    def predict(self, x: torch.Tensor, *, pad: bool = True) -> torch.Tensor:
        """Maps in network units (µm²/ms for diffusivities), ``(B, 8, ...)``."""
        z = self(x, pad=pad)
        shape = (1, -1, 1, 1, 1)
        return z * self.output_std.view(shape) + self.output_mean.view(shape)

    def n_parameters(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def layer_list(self) -> list[str]:
        """Human-readable layers, e.g. ``"conv 3x3x3 65->150 + ReLU"``."""
        rows = [f"conv {KERNEL}x{KERNEL}x{KERNEL} {self.in_channels}->{self.width} + ReLU"]
        rows += [f"shared conv 1x1x1 {self.width}->{self.width} + ReLU"] * self.n_shared
        rows += [
            f"shallow head: dropout {self.dropout:g}, conv 1x1x1 {self.width}->3 "
            f"({', '.join(SHALLOW_MAPS)})",
            f"deep head: conv 1x1x1 {self.width}->{self.width} + ReLU, dropout "
            f"{self.dropout:g}, conv 1x1x1 {self.width}->5 ({', '.join(DEEP_MAPS)})",
        ]
        return rows

    def config(self) -> dict[str, Any]:
        """Everything :meth:`from_config` needs (JSON-serializable); scaling is in the tensors."""
        return {
            "class": "DkiCnn",
            "version": ARCHITECTURE_VERSION,
            "in_channels": self.in_channels,
            "width": self.width,
            "n_shared": self.n_shared,
            "dropout": self.dropout,
            "kernel": KERNEL,
            "padding": "same (zeros)",
            "activation": "relu",
            "maps": list(MAP_NAMES),
            "shallow_head": list(SHALLOW_MAPS),
            "deep_head": list(DEEP_MAPS),
            "layers": self.layer_list(),
            "n_parameters": self.n_parameters(),
            "output": "network units = output_mean + output_std * z",
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DkiCnn:
        """Rebuild an untrained network from :meth:`config`.

        Raises
        ------
        ValueError
            Another class, a newer version, or missing entries.
        """
        if config.get("class") != "DkiCnn":
            raise ValueError(f"not a DkiCnn architecture: class={config.get('class')!r}")
        if int(config.get("version", ARCHITECTURE_VERSION)) > ARCHITECTURE_VERSION:
            raise ValueError(
                f"architecture version {config['version']} is newer than this bids_harmony "
                f"understands ({ARCHITECTURE_VERSION}); upgrade bids_harmony"
            )
        if int(config.get("kernel", KERNEL)) != KERNEL:
            raise ValueError(f"only a {KERNEL}x{KERNEL}x{KERNEL} convolution is supported")
        try:
            return cls(
                int(config["in_channels"]),
                width=int(config["width"]),
                n_shared=int(config["n_shared"]),
                dropout=float(config["dropout"]),
            )
        except KeyError as err:
            raise ValueError(f"architecture lacks the entry {err}") from None

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, width={self.width}, n_shared={self.n_shared}, "
            f"dropout={self.dropout}"
        )


def _pointwise(layer: nn.Conv3d, h: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 convolution on voxel rows ``(V, in)`` → ``(V, out)``."""
    return F.linear(h, layer.weight.flatten(1), layer.bias)


def to_network_units(maps: np.ndarray) -> np.ndarray:
    """Physical maps ``(..., 8)`` (mm²/s) → network units (µm²/ms), float32."""
    return np.asarray(maps, np.float32) * np.asarray(UNIT_SCALE, np.float32)


def to_physical(maps: np.ndarray) -> np.ndarray:
    """Network units ``(..., 8)`` → physical units (mm²/s for diffusivities), float32."""
    return np.asarray(maps, np.float32) / np.asarray(UNIT_SCALE, np.float32)


def physical_ranges() -> dict[str, tuple[float, float | None]]:
    """Bounds that :func:`~.inference.predict_maps` clips its output to (None: open).

    Diffusivities and kurtosis are non-negative; FA and KFA lie in [0, 1].
    """
    return {name: (0.0, 1.0 if name in ("FA", "KFA") else None) for name in MAP_NAMES}
