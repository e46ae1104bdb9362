"""Complex images as real channels.

Networks are real: a complex image ``(B, C, H, W)`` enters them as ``(B, 2C, H, W)`` with the real and
imaginary parts of channel ``c`` at channels ``2c`` and ``2c + 1``. Both maps are exact (no arithmetic)
and differentiable, and ``from_channels(to_channels(x)) == x``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_channels(x: Tensor) -> Tensor:
    """Complex ``(B, C, H, W)`` -> real ``(B, 2C, H, W)`` as ``[re_0, im_0, re_1, im_1, ...]``."""
    if not x.is_complex():
        raise TypeError(f"to_channels: expected a complex tensor, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"to_channels: expected shape (B, C, ...), got {tuple(x.shape)}")
    return torch.stack((x.real, x.imag), dim=2).flatten(1, 2)  # (B, C, 2, H, W) -> (B, 2C, H, W)


def from_channels(x: Tensor) -> Tensor:
    """Real ``(B, 2C, H, W)`` -> complex ``(B, C, H, W)``: the inverse of :func:`to_channels`."""
    if x.is_complex():
        raise TypeError(f"from_channels: expected a real tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[1] % 2 != 0:
        raise ValueError(f"from_channels: expected shape (B, 2C, ...), 2C even, got {tuple(x.shape)}")
    return torch.complex(x[:, 0::2], x[:, 1::2])  # (B, C, H, W)
