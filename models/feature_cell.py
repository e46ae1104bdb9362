"""A LUSER regulariser whose equilibrium state is a feature map (``cell = "feature"``).

The image cell (:class:`models.regularisers.EquilibriumCell`) iterates on an image-shaped state: all
it knows between two iterations passes through ``c`` channels. This cell keeps a state ``z`` of
``W = reg_width`` channels, injects the LU step's input ``v`` at every iteration and decodes the
equilibrium to an image at the end, the design of Bai et al.'s DEQ and MDEQ cells::

    u  = conv_in(v)                            injection (B, W, H, W), computed once per solve
    f(z; u) = act(s B(z) + u)                  B = conv_1, then (act, conv_i) for i = 2 .. depth
    z* = f(z*; u),   z_0 = 0                   solved by models.deq.deq_solve
    x  = v + conv_out(z*)                      decoded image (B, c, H, W), v as a residual

Choices: the activation is ``act`` (GELU by default). Normalisation: none inside the loop by
default, and spectral normalisation of the block's convolutions as the option (``spectral_norm=True``,
``s = sn_scale``, else ``s = 1``): ``Lip_z(f) <= s prod_i ||conv_i|| Lip(act)^(depth - 1)``, so
spectral normalisation bounds the cell's Lipschitz constant directly. A GroupNorm in the loop (as in
MDEQ) would multiply the Jacobian by ``gamma / std`` of its input, making contraction depend on the
state's scale and undoing any bound on the convolutions; a GroupNorm on the injection would be
saved for backward (one more W-channel map per step). ``z_0 = 0``, the usual DEQ start. At
initialisation the block's last convolution is scaled by 0.1 (zero bias), so ``f`` starts strongly
contractive, and ``conv_out`` by 0.1 (zero bias), so ``x ~ v`` and LUSER starts close to plain
gradient descent.

Memory: the injection and the decoder are ordinary tracked layers (they save ``v`` and ``z*``), the
solve saves only ``z*`` and ``u`` (``ift``, ``jfb``), so a step saves ``2 W + c`` planes per sample
whatever ``max_iter`` and the block's depth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.checks import check_int
from models.deq import deq_solve
from models.regularisers import CELL_DEPTHS, _bias, _conv3x3, make_activation

if TYPE_CHECKING:
    from models.deq import DEQConfig, DEQStats


class FeatureBlock(nn.Module):
    """The map ``f(z; u) = act(s B(z) + u)`` iterated by the solver; ``z``, ``u`` are ``(B, W, H, W)``."""

    def __init__(self, width: int, depth: int, act: str, spectral_norm: bool, sn_scale: float) -> None:
        super().__init__()
        convs = [_conv3x3(width, width) for _ in range(depth)]
        with torch.no_grad():
            if not spectral_norm:
                convs[-1].weight.mul_(0.1)
            _bias(convs[-1]).zero_()
        layers: list[nn.Module] = [_spectral_norm(conv) for conv in convs] if spectral_norm else list(convs)
        self.convs = nn.ModuleList(layers)
        self.acts = nn.ModuleList([make_activation(act) for _ in range(depth)])
        self.scale = float(sn_scale) if spectral_norm else 1.0

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        if z.shape != u.shape:
            raise ValueError(
                f"FeatureBlock: z and u must have one shape, got {tuple(z.shape)} and {tuple(u.shape)}"
            )
        h = self.convs[0](z)  # (B, W, H, W)
        for act, conv in zip(self.acts[:-1], self.convs[1:], strict=True):
            h = conv(act(h))
        if self.scale != 1.0:
            h = self.scale * h
        return self.acts[-1](h + u)  # (B, W, H, W)


class FeatureCell(nn.Module):
    """Injection, equilibrium block and decoder of one LU step (see the module docstring).

    Args:
        channels: image channels ``c`` (2x the complex channels for complex images).
        depth: convolutions in the block, one of 1, 2, 3.
        width: state channels ``W``.
        act: activation name in :data:`models.regularisers.ACTIVATIONS`.
        spectral_norm: spectral-normalise the block's convolutions and scale ``B`` by ``sn_scale``.
        sn_scale: the scale used with spectral normalisation, in (0, 1].
    """

    def __init__(
        self,
        channels: int,
        depth: int = 2,
        width: int = 32,
        act: str = "gelu",
        spectral_norm: bool = False,
        sn_scale: float = 0.9,
    ) -> None:
        super().__init__()
        check_int("channels", channels)
        check_int("width", width)
        if depth not in CELL_DEPTHS:
            raise ValueError(f"FeatureCell depth must be one of {CELL_DEPTHS}, got {depth!r}")
        if not 0.0 < sn_scale <= 1.0:
            raise ValueError(f"sn_scale must be in (0, 1], got {sn_scale}")
        self.channels = channels
        self.inject = _conv3x3(channels, width)
        self.block = FeatureBlock(width, depth, act, spectral_norm, sn_scale)
        self.decode = _conv3x3(width, channels)
        with torch.no_grad():
            self.decode.weight.mul_(0.1)
            _bias(self.decode).zero_()

    def injection(self, v: Tensor) -> Tensor:
        """``u = conv_in(v)``: ``(B, c, H, W) -> (B, W, H, W)``, once per solve."""
        if v.ndim != 4 or v.shape[1] != self.channels:
            raise ValueError(
                f"FeatureCell expects v of shape (B, {self.channels}, H, W), got {tuple(v.shape)}"
            )
        return self.inject(v)

    def solve(self, v: Tensor, cfg: DEQConfig) -> tuple[Tensor, DEQStats]:
        """The regularised image ``v + conv_out(z*)`` with ``z* = f(z*; u)`` solved from ``z_0 = 0``."""
        u = self.injection(v)  # (B, W, H, W)
        z0 = torch.zeros_like(u)
        z, stats = deq_solve(self.block, z0, (u,), list(self.block.parameters()), cfg)  # (B, W, H, W)
        return v + self.decode(z), stats  # (B, c, H, W)
