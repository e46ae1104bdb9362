"""Additive white Gaussian noise, drawn from an explicit generator (never the global RNG)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_noise(y: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """A noise tensor (not ``y + noise``) with the shape, dtype and device of ``y``.

    Real ``y``: i.i.d. ``N(0, sigma^2)`` entries. Complex ``y``: real and imaginary parts i.i.d.
    ``N(0, sigma^2 / 2)``, so ``E|n|^2 = sigma^2`` per entry either way. The noise is drawn on the
    generator's device (a CPU generator may serve a CUDA ``y``: same numbers on either device), then
    moved to ``y.device``.
    """
    if not isinstance(y, Tensor) or not (y.is_floating_point() or y.is_complex()):
        raise TypeError(f"y must be a floating or complex torch.Tensor, got {getattr(y, 'dtype', type(y))}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if y.is_complex():
        real_dtype = y.real.dtype
        parts = torch.randn((*y.shape, 2), generator=generator, dtype=real_dtype, device=generator.device)
        noise = torch.view_as_complex(parts * (sigma / math.sqrt(2.0)))
    else:
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=generator.device) * sigma
    return noise.to(y.device)
