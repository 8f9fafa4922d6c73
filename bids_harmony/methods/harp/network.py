r"""The HARP network: a voxel-wise MLP that predicts one scale per SH order band.

Layout (Jeong et al., HARP, §2.1 and §2.4; the authors' ``unet_1d.py``)::

    x (45) ─► FC 160 ─► FC 240 ─┬► FC 320 ─► FC 360 ─┬► FC 480 ─► FC 520 ─┬► FC 600 ─► FC 5 ─► tanh
                                x                    x                    x

Every hidden layer is fully connected with a ReLU; the raw input :math:`x` is
concatenated *in front of* the inputs of hidden layers 3, 5 and 7 (fan-in
:math:`45 + 240`, :math:`45 + 360`, :math:`45 + 520`), as in the authors' code
(``torch.cat([x, h])``), so their weight columns ``[:n_coeffs]`` act on :math:`x`.
The output :math:`z` (one unit per band) gives bounded scales

.. math:: s_l = 1 + b \tanh z_l, \qquad s_l \in [1 - b, 1 + b], \; b = 0.1,

applied band-wise: :math:`C^\mathrm{har}_{lm} = s_l \, C^\mathrm{src}_{lm}` (Eq. 1).
Our training centres the scales on one phantom-wide scale per band,
:math:`s_l = c_l (1 + b \tanh z_l)` (``centre``; all 1 is the paper's network).

The authors express the network as 1×1 ``Conv2d`` layers on ``(slices, 45, H, W)``
batches; here it is plain ``Linear`` layers on ``(voxels, 45)`` rows, which is the
same function (see ``benchmarks/harp.py`` for the weight mapping).  The last layer
starts at zero, so an untrained network is the identity (all scales exactly 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from bids_harmony.dmri.bands import MAX_ORDER, band_orders, n_coeffs, order_from_n_coeffs

__all__ = ["HarpNet", "apply_band_scales", "band_index", "band_onehot", "rish_inputs"]

PAPER_HIDDEN = (160, 240, 320, 360, 480, 520, 600)
PAPER_SKIP_INTO = (3, 5, 7)
#: 2 adds ``centre`` (one scale per band the network's output is centred on) and
#: ``inputs`` (coefficients, or their rotation invariants).
ARCHITECTURE_VERSION = 2

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class HarpNet(nn.Module):
    """HARP scale network.

    Parameters
    ----------
    sh_order : int
        Even SH order of the input (8: 45 coefficients and 5 bands; 6, 4, 2 for
        shells with fewer directions).
    hidden : sequence of int
        Widths of the hidden layers (the paper's seven by default).
    skip_into : sequence of int
        1-based indices of the hidden layers whose input is ``[x, h]`` rather than
        ``h``.  Layer 1 always sees ``x``; valid values are ``2..len(hidden)``.
    scale_bound : float
        :math:`b` in :math:`s = 1 + b \\tanh z`, in ``(0, 1)``.
    centre : sequence of float, optional
        One scale per band that the output is centred on, :math:`s_l = c_l (1 + b
        \\tanh z_l)` (default all 1, the paper's network).  Training centres it
        on the global per-band scale of the phantom
        (:func:`bids_harmony.methods.harp.baseline.fit_band_scales`), so the network
        learns the voxel-wise departures from one scale per band.
    inputs : {"coefficients", "rish"}
        What the layers see: the SH coefficients (the paper), or their rotation
        invariants (:meth:`features`: C00 and the amplitude of every other band
        relative to it).  A phantom shows a handful of fibre orientations; a
        network on coefficients must learn from them that a rotated voxel needs
        the same scales, and on brain voxels (every orientation) it did not.
    input_range : (low, high), optional
        With ``inputs="rish"``: the features are clamped to these per-feature
        bounds (those of the phantom training voxels), so brain voxels outside
        the phantom's range get the scales of its nearest material rather than
        an extrapolation from a few vials.
    generator : torch.Generator, optional
        Source of the initial weights (default: a generator seeded with 0, so
        ``HarpNet()`` is deterministic and the global RNG is never touched).

    Notes
    -----
    ``forward`` takes ``(N, n_coeffs)`` float rows and returns ``(N, n_bands)``
    scales.  Use :func:`apply_band_scales` to harmonize, and
    :class:`bids_harmony.methods.harp.HarpPredictor` for chunked numpy inference.
    """

    def __init__(
        self,
        sh_order: int = MAX_ORDER,
        hidden: Sequence[int] = PAPER_HIDDEN,
        skip_into: Sequence[int] = PAPER_SKIP_INTO,
        scale_bound: float = 0.1,
        *,
        centre: Sequence[float] | None = None,
        inputs: str = "coefficients",
        input_range: tuple[Sequence[float], Sequence[float]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sh_order = int(sh_order)
        self.n_coeffs = n_coeffs(self.sh_order)
        self.n_bands = len(band_orders(self.sh_order))
        self.hidden = tuple(int(h) for h in hidden)
        self.skip_into = tuple(sorted(int(i) for i in skip_into))
        self.scale_bound = float(scale_bound)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(
                f"hidden must be a non-empty sequence of positive widths, got {hidden}"
            )
        if len(set(self.skip_into)) != len(self.skip_into) or any(
            not 2 <= i <= len(self.hidden) for i in self.skip_into
        ):
            raise ValueError(
                "skip_into must hold distinct 1-based hidden layer indices in "
                f"2..{len(self.hidden)}, got {skip_into}"
            )
        if not 0.0 < self.scale_bound < 1.0:
            raise ValueError(f"scale_bound must be in (0, 1), got {scale_bound}")
        if inputs not in ("coefficients", "rish"):
            raise ValueError(f"inputs must be 'coefficients' or 'rish', got {inputs!r}")
        self.inputs = inputs
        self.n_inputs = self.n_coeffs if inputs == "coefficients" else self.n_bands
        layers, width = [], self.n_inputs
        for i, out in enumerate(self.hidden, start=1):
            fan_in = width + (self.n_inputs if i in self.skip_into else 0)
            layers.append(nn.Linear(fan_in, out, device="meta"))
            width = out
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(width, self.n_bands, device="meta")
        self.to_empty(device="cpu")  # allocate without drawing from the global RNG
        centre_values = [1.0] * self.n_bands if centre is None else [float(c) for c in centre]
        if len(centre_values) != self.n_bands or not all(
            0.0 < c < 10.0 and math.isfinite(c) for c in centre_values
        ):
            raise ValueError(f"centre must hold {self.n_bands} positive scales, got {centre}")
        # in the architecture (JSON), not the weights: the tensor file keeps its keys
        self.register_buffer("centre", torch.tensor(centre_values), persistent=False)
        low, high = ([-np.inf] * self.n_inputs, [np.inf] * self.n_inputs) if input_range is None \
            else input_range
        if inputs != "rish" and input_range is not None:
            raise ValueError("input_range needs inputs='rish'.")
        if len(low) != self.n_inputs or len(high) != self.n_inputs:
            raise ValueError(f"input_range needs {self.n_inputs} bounds on each side")
        self.register_buffer("input_low", torch.tensor([float(v) for v in low]),
                             persistent=False)  # fmt: skip
        self.register_buffer("input_high", torch.tensor([float(v) for v in high]),
                             persistent=False)  # fmt: skip
        self.register_buffer("band_onehot", band_onehot(self.sh_order), persistent=False)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Hidden layers: PyTorch's default :math:`U(\\pm 1/\\sqrt{\\text{fan-in}})`; head: zero."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        self.head.weight.zero_()
        self.head.bias.zero_()

    def fan_ins(self) -> list[int]:
        """Input width of every hidden layer, e.g. ``[45, 160, 285, 320, 405, 480, 565]``."""
        return [layer.in_features for layer in self.layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scales of a batch of voxels.

        Parameters
        ----------
        x : Tensor, shape (N, n_coeffs)

        Returns
        -------
        Tensor, shape (N, n_bands)
            :math:`c (1 + b \\tanh z)`, within ``c [1 - b, 1 + b]``.
        """
        if x.ndim != 2 or x.shape[1] != self.n_coeffs:
            raise ValueError(f"expected input of shape (N, {self.n_coeffs}), got {tuple(x.shape)}")
        x = self.features(x)
        h = x
        for i, layer in enumerate(self.layers, start=1):
            if i in self.skip_into:
                h = torch.cat([x, h], dim=1)
            h = torch.relu(layer(h))
        return self.centre * (1.0 + self.scale_bound * torch.tanh(self.head(h)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r"""What the layers see: ``x`` itself, or its rotation invariants.

        With ``inputs="rish"``: :math:`[C_{00}, \sqrt{P_2}/C_{00}, \dots, \sqrt{P_L}/C_{00}]`,
        :math:`P_l = \sum_m C_{lm}^2` (the RISH feature of band :math:`l`), shape
        ``(N, n_bands)``.
        """
        if self.inputs == "coefficients":
            return x
        return rish_inputs(x, self.band_onehot, self.input_low, self.input_high)

    def harmonize(self, x: torch.Tensor) -> torch.Tensor:
        """Harmonized coefficients ``apply_band_scales(x, self(x))``, shape (N, n_coeffs)."""
        return apply_band_scales(x, self(x), self.sh_order)

    def config(self) -> dict[str, Any]:
        """Everything :meth:`from_config` needs to rebuild this network (JSON-serializable)."""
        return {
            "class": "HarpNet",
            "version": ARCHITECTURE_VERSION,
            "sh_order": self.sh_order,
            "n_coeffs": self.n_coeffs,
            "n_bands": self.n_bands,
            "hidden": list(self.hidden),
            "skip_into": list(self.skip_into),
            "skip_layout": "concat_input_first",
            "scale_bound": self.scale_bound,
            "centre": [round(float(c), 8) for c in self.centre.tolist()],
            "inputs": self.inputs,
            "input_range": None if self.inputs != "rish" or not bool(
                torch.isfinite(self.input_low).all()) else [
                [round(float(v), 8) for v in self.input_low.tolist()],
                [round(float(v), 8) for v in self.input_high.tolist()]],
            "activation": "relu",
            "output": "centre * (1 + scale_bound * tanh)",
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HarpNet:
        """Rebuild an (untrained) network from :meth:`config`; derived entries are checked.

        Raises
        ------
        ValueError
            Unknown class or version, or inconsistent entries.
        """
        if config.get("class", "HarpNet") != "HarpNet":
            raise ValueError(f"not a HarpNet architecture: class={config.get('class')!r}")
        if int(config.get("version", ARCHITECTURE_VERSION)) > ARCHITECTURE_VERSION:
            raise ValueError(
                f"architecture version {config['version']} is newer than this bids_harmony "
                f"understands ({ARCHITECTURE_VERSION}); upgrade bids_harmony"
            )
        try:
            net = cls(
                sh_order=int(config["sh_order"]),
                hidden=config["hidden"],
                skip_into=config["skip_into"],
                scale_bound=float(config["scale_bound"]),
                centre=config.get("centre"),  # version 1 files: all 1
                inputs=config.get("inputs", "coefficients"),
                input_range=config.get("input_range"),
            )
        except KeyError as err:
            raise ValueError(f"architecture lacks the entry {err}") from None
        for key in ("n_coeffs", "n_bands"):
            if key in config and int(config[key]) != getattr(net, key):
                raise ValueError(
                    f"architecture says {key}={config[key]}, expected {getattr(net, key)}"
                )
        return net

    def extra_repr(self) -> str:
        return (
            f"sh_order={self.sh_order}, hidden={self.hidden}, skip_into={self.skip_into}, "
            f"scale_bound={self.scale_bound}"
        )


def band_onehot(sh_order: int = MAX_ORDER) -> torch.Tensor:
    """``(n_coeffs, n_bands)`` float32 matrix, 1 where a coefficient belongs to a band."""
    index = band_index(sh_order)
    return torch.from_numpy(np.eye(int(index[-1]) + 1, dtype=np.float32)[index])


def rish_inputs(
    x: torch.Tensor,
    band_onehot: torch.Tensor,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotation invariants of SH rows: C00 and each band's amplitude relative to it.

    Parameters
    ----------
    x : Tensor, shape (N, n_coeffs)
    band_onehot : Tensor, shape (n_coeffs, n_bands)
        1 where a coefficient belongs to a band.
    low, high : Tensor, shape (n_bands,), optional
        Clamp bounds of the features.

    Returns
    -------
    Tensor, shape (N, n_bands)
    """
    power = torch.square(x) @ band_onehot
    c00 = x[:, :1]
    ratio = torch.sqrt(power[:, 1:] + 1e-12) / torch.clamp(torch.abs(c00), min=1e-3)
    out = torch.cat([c00, ratio], dim=1)
    if low is not None and high is not None:
        out = torch.maximum(torch.minimum(out, high), low)
    return out


def band_index(sh_order: int = MAX_ORDER) -> np.ndarray:
    """Band number of every coefficient.

    >>> band_index(4).tolist()
    [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    return np.repeat(
        np.arange(len(band_orders(sh_order))), [2 * ell + 1 for ell in band_orders(sh_order)]
    )


def apply_band_scales(coeffs: ArrayT, scales: ArrayT, sh_order: int | None = None) -> ArrayT:
    r"""Scale every coefficient by its band's scale: :math:`C'_{lm} = s_l C_{lm}` (Eq. 1).

    Parameters
    ----------
    coeffs : ndarray or Tensor, shape (..., n_coeffs)
    scales : ndarray or Tensor, shape (..., n_bands)
        Leading dimensions broadcast against those of ``coeffs``.
    sh_order : int, optional
        Checked against ``coeffs`` when given; inferred otherwise.

    Returns
    -------
    ndarray or Tensor, shape (..., n_coeffs)
        Same kind (numpy or torch) as ``coeffs``.

    Examples
    --------
    >>> apply_band_scales(np.ones(6), np.array([2.0, 0.5]))
    array([2. , 0.5, 0.5, 0.5, 0.5, 0.5])
    """
    order = order_from_n_coeffs(coeffs.shape[-1])
    if sh_order is not None and int(sh_order) != order:
        raise ValueError(f"{coeffs.shape[-1]} coefficients are order {order}, not {sh_order}")
    index = band_index(order)
    n_bands = int(index[-1]) + 1
    if scales.shape[-1] != n_bands:
        raise ValueError(f"order {order} has {n_bands} bands, got {scales.shape[-1]} scales")
    if isinstance(coeffs, torch.Tensor):
        return coeffs * scales[..., torch.as_tensor(index, device=scales.device)]
    return coeffs * np.asarray(scales)[..., index]
