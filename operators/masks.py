"""Cartesian under-sampling masks for single-coil MRI: which k-space columns (phase encodes) are kept.

Every mask function has the signature ``(n_cols, acceleration, center_fraction, generator) -> (n_cols,)``
bool tensor, keeps the ``round(n_cols * center_fraction)`` central columns (fastMRI's rule: they start
at ``(n_cols - n_low + 1) // 2``) and samples about ``n_cols / acceleration`` columns in total.
Randomness comes only from ``generator`` (a CPU ``torch.Generator`` or an int seed); the global RNG is
never touched.

- ``random``: the central band plus columns drawn uniformly without replacement until the total is
  ``round(n_cols / acceleration)``. fastMRI's ``RandomMaskFunc`` draws each column independently
  with the same expected total; drawing the exact count removes the mask-to-mask spread of the
  acceleration from the benchmark.
- ``equispaced``: fastMRI's ``EquispacedMaskFractionFunc``: columns every ``a'`` (rounded) from a random
  offset, with ``a' = acceleration (n_low - n_cols) / (n_low acceleration - n_cols)`` chosen so the
  total sampled fraction is ``1 / acceleration`` (fastMRI's plain ``EquiSpacedMaskFunc`` over-samples,
  e.g. 3.26x at a nominal 4x).
- ``gaussian``: variable density: the central band plus columns drawn without replacement with
  probability proportional to ``exp(-(j - centre)^2 / (2 (std_fraction n_cols)^2))``, to the same
  total as ``random``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

MaskFn = Callable[[int, float, float, "torch.Generator | int"], Tensor]


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device="cpu").manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _center(n_cols: int, acceleration: float, center_fraction: float) -> Tensor:
    """Validate the arguments and return the bool mask of the central (low-frequency) band."""
    if not isinstance(n_cols, int) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive int, got {n_cols!r}")
    if not (isinstance(acceleration, int | float) and math.isfinite(acceleration) and acceleration >= 1):
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration!r}")
    if not (isinstance(center_fraction, int | float) and 0 <= center_fraction <= 1):
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction!r}")
    n_low = round(n_cols * center_fraction)
    if n_low > round(n_cols / acceleration):
        raise ValueError(
            f"center_fraction {center_fraction} keeps {n_low} columns, more than the "
            f"{round(n_cols / acceleration)} that acceleration {acceleration} allows for {n_cols} columns"
        )
    mask = torch.zeros(n_cols, dtype=torch.bool)
    start = (n_cols - n_low + 1) // 2
    mask[start : start + n_low] = True
    return mask


def _add_weighted(mask: Tensor, weights: Tensor, n_total: int, gen: torch.Generator) -> Tensor:
    """Add ``n_total - mask.sum()`` columns outside ``mask``, drawn without replacement by ``weights``."""
    n_extra = n_total - int(mask.sum())
    if n_extra <= 0:
        return mask
    w = weights.to(torch.float64).masked_fill(mask, 0.0)
    picked = torch.multinomial(w, n_extra, replacement=False, generator=gen)
    out = mask.clone()
    out[picked] = True
    return out


def random_mask(
    n_cols: int, acceleration: float, center_fraction: float, generator: torch.Generator | int
) -> Tensor:
    """Central band plus uniformly random columns, ``round(n_cols / acceleration)`` in total."""
    mask = _center(n_cols, acceleration, center_fraction)
    return _add_weighted(mask, torch.ones(n_cols), round(n_cols / acceleration), _generator(generator))


def equispaced_mask(
    n_cols: int, acceleration: float, center_fraction: float, generator: torch.Generator | int
) -> Tensor:
    """fastMRI ``EquispacedMaskFractionFunc``: central band plus every ``a'``-th column from a random
    offset in ``[0, round(a'))``, ``a'`` adjusted so the total fraction is ``1 / acceleration``."""
    mask = _center(n_cols, acceleration, center_fraction)
    gen = _generator(generator)
    n_low = int(mask.sum())
    if round(n_cols / acceleration) >= n_cols:
        return torch.ones(n_cols, dtype=torch.bool)
    if n_low * acceleration >= n_cols:  # the centre alone reaches the target (validated to be equal)
        return mask
    adjusted = acceleration * (n_low - n_cols) / (n_low * acceleration - n_cols)
    offset = int(torch.randint(0, max(round(adjusted), 1), (1,), generator=gen))
    positions = torch.arange(offset, n_cols - 1, adjusted, dtype=torch.float64)
    # np.around rounds half to even, as torch.round does.
    mask[torch.round(positions).long().clamp(max=n_cols - 1)] = True
    return mask


def gaussian_mask(
    n_cols: int,
    acceleration: float,
    center_fraction: float,
    generator: torch.Generator | int,
    *,
    std_fraction: float = 0.25,
) -> Tensor:
    """Central band plus columns drawn with a Gaussian density (std ``std_fraction * n_cols``) around
    the centre, ``round(n_cols / acceleration)`` in total."""
    mask = _center(n_cols, acceleration, center_fraction)
    if not std_fraction > 0:
        raise ValueError(f"std_fraction must be > 0, got {std_fraction!r}")
    j = torch.arange(n_cols, dtype=torch.float64) - n_cols // 2
    density = torch.exp(-(j**2) / (2 * (std_fraction * n_cols) ** 2))
    return _add_weighted(mask, density, round(n_cols / acceleration), _generator(generator))


MASKS: dict[str, MaskFn] = {"random": random_mask, "equispaced": equispaced_mask, "gaussian": gaussian_mask}
