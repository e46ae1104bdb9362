"""Learned regularisers: a feed-forward DnCNN and a shallow equilibrium cell.

Both work on real images ``(B, c, H, W)``; complex images enter as two real channels each
(``models/complex.py``). All convolutions are 3x3 with zero padding 1, so spatial size is kept.

- :class:`DnCNN` is the regulariser of loop-unrolled (LU) networks and of the whole-iteration DEQ:
  ``R(x) = x + N(x)`` with ``N`` a stack of ``depth`` convolutions (a residual *correction*, added).
- :class:`EquilibriumCell` is the map ``f(z; v)`` whose fixed point ``z* = f(z*; v)`` is LUSER's
  regulariser output. ``z`` and ``v`` are both image-shaped, so a DEQ backward that saves only
  ``(z*, v)`` keeps image-sized memory per LU step, whatever the cell's width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.checks import check_int

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

CELL_DEPTHS = (1, 2, 3)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from :data:`ACTIVATIONS`; unknown names raise ``KeyError``."""
    if name not in ACTIVATIONS:
        raise KeyError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _bias(conv: nn.Conv2d) -> Tensor:
    """The bias of ``conv`` (``_conv3x3`` always builds one); ``ValueError`` when it has none."""
    if conv.bias is None:
        raise ValueError(f"expected a convolution with a bias, got {conv}")
    return conv.bias


def group_count(width: int, max_groups: int = 4) -> int:
    """Groups for GroupNorm over ``width`` channels: the largest divisor of ``width`` up to ``max_groups``."""
    return math.gcd(width, max_groups)


class DnCNN(nn.Module):
    """DnCNN-style residual CNN: ``R(x) = x + N(x)``.

    ``N`` = conv(c -> W), act, then ``depth - 2`` times [conv(W -> W), GroupNorm (if ``norm``), act],
    then conv(W -> c): ``depth`` convolutions in all. The sign convention is *added* correction (the
    original DnCNN subtracts a predicted noise; the two differ only by the sign of the last layer).
    The last convolution is initialised 10x smaller with zero bias, so ``R`` starts close to the
    identity and an LU network starts close to plain gradient descent.

    Args:
        channels: image channels ``c`` (2x the complex channels for complex images).
        depth: number of convolutions, >= 2.
        width: hidden channels ``W``.
        act: activation name in :data:`ACTIVATIONS`.
        norm: GroupNorm(gcd(W, 4), W) after each hidden (W -> W) convolution.
    """

    def __init__(self, channels: int, depth: int = 5, width: int = 32, act: str = "relu", norm: bool = False):
        super().__init__()
        check_int("channels", channels)
        check_int("depth", depth, minimum=2)
        check_int("width", width)
        layers: list[nn.Module] = [_conv3x3(channels, width), make_activation(act)]
        for _ in range(depth - 2):
            layers.append(_conv3x3(width, width))
            if norm:
                layers.append(nn.GroupNorm(group_count(width), width))
            layers.append(make_activation(act))
        last = _conv3x3(width, channels)
        with torch.no_grad():
            last.weight.mul_(0.1)
            _bias(last).zero_()
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)  # (B, c, H, W)


class EquilibriumCell(nn.Module):
    """Shallow equilibrium cell ``f(z; v) = v + s * g(cat[z, v])``, ``z`` and ``v`` both ``(B, c, H, W)``.

    ``g`` has ``depth`` (1-3) convolutions: depth 1: conv(2c -> c); depth 2: conv(2c -> W), act,
    conv(W -> c); depth 3: conv(2c -> W), act, conv(W -> W), act, conv(W -> c). The residual on the
    injected iterate ``v`` makes ``z = v`` the natural starting point and the identity the natural
    initial regulariser. ``f`` is a contraction in ``z`` when ``s * Lip_z(g) < 1``; its fixed point
    ``z* = f(z*; v)`` is then unique and solvers converge to it.

    Initialisation (contractive-ish at init): without spectral normalisation, ``s = 1`` and the last
    convolution is scaled by 0.1 (zero bias) and the z-half of the first convolution by 0.5, so
    ``Lip_z(f)`` starts well below 1 and ``f(z; v) ~ v``.

    With ``spectral_norm=True`` every convolution is wrapped in
    ``torch.nn.utils.parametrizations.spectral_norm`` (weight divided by the largest singular value of
    its ``(out, in*3*3)`` matrix, one power-iteration step per call in training mode) and
    ``s = sn_scale`` (default 0.9). This bounds each layer's *matrix* norm by 1; a 3x3 convolution's
    operator norm can still exceed its matrix norm (by at most 3), so it is a strong regulariser of the
    Lipschitz constant, not a certificate. Activations here are 1-Lipschitz (ReLU, tanh) or close (GELU 1.13).

    Args:
        channels: image channels ``c``.
        depth: convolutions in ``g``, one of 1, 2, 3.
        width: hidden channels ``W`` (unused when ``depth == 1``).
        act: activation name in :data:`ACTIVATIONS`.
        spectral_norm: spectral-normalise the convolutions and scale ``g`` by ``sn_scale``.
        sn_scale: the scale ``s`` used with spectral normalisation, in (0, 1].
    """

    def __init__(
        self,
        channels: int,
        depth: int = 2,
        width: int = 32,
        act: str = "gelu",
        spectral_norm: bool = False,
        sn_scale: float = 0.9,
    ):
        super().__init__()
        check_int("channels", channels)
        check_int("width", width)
        if depth not in CELL_DEPTHS:
            raise ValueError(f"EquilibriumCell depth must be one of {CELL_DEPTHS}, got {depth!r}")
        if not 0.0 < sn_scale <= 1.0:
            raise ValueError(f"sn_scale must be in (0, 1], got {sn_scale}")
        sizes = [2 * channels] + [width] * (depth - 1) + [channels]
        convs = [_conv3x3(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        with torch.no_grad():
            convs[0].weight[:, :channels].mul_(0.5)  # the z half of the first conv's input
            if not spectral_norm:
                convs[-1].weight.mul_(0.1)
            _bias(convs[-1]).zero_()
        layers: list[nn.Module] = [_spectral_norm(conv) for conv in convs] if spectral_norm else list(convs)
        self.convs = nn.ModuleList(layers)
        self.acts = nn.ModuleList([make_activation(act) for _ in range(depth - 1)])
        self.scale = float(sn_scale) if spectral_norm else 1.0

    def forward(self, z: Tensor, v: Tensor) -> Tensor:
        if z.shape != v.shape:
            raise ValueError(
                f"EquilibriumCell: z and v must have one shape, got {tuple(z.shape)} and {tuple(v.shape)}"
            )
        h = torch.cat((z, v), dim=1)  # (B, 2c, H, W)
        for i, conv in enumerate(self.convs):
            h = conv(h)  # (B, W, H, W) hidden, (B, c, H, W) last
            if i < len(self.acts):
                h = self.acts[i](h)
        return v + self.scale * h if self.scale != 1.0 else v + h  # (B, c, H, W)
