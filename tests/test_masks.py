"""Cartesian MRI masks: acceleration reached, centre kept, reproducible per seed, global RNG untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators import MASKS, SingleCoilMRI
from operators.masks import equispaced_mask

# (n_cols, acceleration, center_fraction): fastMRI-like settings. Below about 96 columns the count of
# sampled columns is too small for 10 % (e.g. 8 columns at 64 x 8).
SETTINGS = [(96, 4, 0.08), (128, 4, 0.08), (128, 8, 0.04), (320, 4, 0.08), (368, 8, 0.04), (128, 2, 0.16)]


def center_band(n_cols: int, center_fraction: float) -> slice:
    n_low = round(n_cols * center_fraction)
    start = (n_cols - n_low + 1) // 2
    return slice(start, start + n_low)


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize(("n_cols", "acceleration", "center_fraction"), SETTINGS)
def test_acceleration_and_centre(name: str, n_cols: int, acceleration: float, center_fraction: float) -> None:
    for seed in range(5):
        mask = MASKS[name](n_cols, acceleration, center_fraction, seed)
        assert mask.dtype == torch.bool and mask.shape == (n_cols,)
        assert n_cols / int(mask.sum()) == pytest.approx(acceleration, rel=0.1)
        assert bool(mask[center_band(n_cols, center_fraction)].all())
        if name != "equispaced":  # random and gaussian draw exactly round(n_cols / acceleration)
            assert int(mask.sum()) == round(n_cols / acceleration)


@pytest.mark.parametrize("name", list(MASKS))
def test_reproducible_per_seed_and_different_across_seeds(name: str) -> None:
    masks = [MASKS[name](128, 4, 0.08, seed) for seed in range(8)]
    again = [MASKS[name](128, 4, 0.08, torch.Generator().manual_seed(seed)) for seed in range(8)]
    assert all(
        torch.equal(a, b) for a, b in zip(masks, again, strict=True)
    )  # an int seed = a seeded generator
    # Equispaced masks differ only by their offset (a few values), so ask for several distinct masks.
    assert len({tuple(m.tolist()) for m in masks}) >= (3 if name == "equispaced" else 8)


@pytest.mark.parametrize("name", list(MASKS))
def test_global_rng_untouched(name: str) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(state)
    MASKS[name](128, 4, 0.08, 7)
    MASKS[name](128, 4, 0.08, torch.Generator().manual_seed(7))
    SingleCoilMRI(image_size=32, mask_type=name, acceleration=4, center_fraction=0.125, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(3), expected_next)


def test_generator_advances() -> None:
    """One generator gives a stream of different masks (the caller owns the RNG state)."""
    gen = torch.Generator().manual_seed(0)
    first, second = MASKS["random"](128, 4, 0.08, gen), MASKS["random"](128, 4, 0.08, gen)
    assert not torch.equal(first, second)


def fastmri_equispaced_fraction(
    n_cols: int, acceleration: float, center_fraction: float, offset: int
) -> np.ndarray:
    """fastMRI's EquispacedMaskFractionFunc (calculate_center_mask + calculate_acceleration_mask),
    transcribed with numpy, for a given offset."""
    n_low = round(n_cols * center_fraction)
    center = np.zeros(n_cols, dtype=bool)
    pad = (n_cols - n_low + 1) // 2
    center[pad : pad + n_low] = True
    adjusted = (acceleration * (n_low - n_cols)) / (n_low * acceleration - n_cols)
    accel = np.zeros(n_cols, dtype=bool)
    accel[np.around(np.arange(offset, n_cols - 1, adjusted)).astype(np.uint)] = True
    return center | accel


@pytest.mark.parametrize(("n_cols", "acceleration", "center_fraction"), SETTINGS)
def test_equispaced_is_fastmri_fraction_func(
    n_cols: int, acceleration: float, center_fraction: float
) -> None:
    """Each of our masks is fastMRI's mask for one of its allowed offsets, and every offset occurs."""
    n_low = round(n_cols * center_fraction)
    adjusted = (acceleration * (n_low - n_cols)) / (n_low * acceleration - n_cols)
    references = {
        off: fastmri_equispaced_fraction(n_cols, acceleration, center_fraction, off)
        for off in range(round(adjusted))
    }
    seen = set()
    for seed in range(40):
        ours = equispaced_mask(n_cols, acceleration, center_fraction, seed).numpy()
        matches = [off for off, ref in references.items() if np.array_equal(ours, ref)]
        assert matches, f"seed {seed}: not a fastMRI equispaced-fraction mask"
        seen.update(matches)
    assert seen == set(references)


def test_gaussian_mask_prefers_the_centre() -> None:
    """Variable density: over many draws, columns near the centre are sampled more often than the edges."""
    counts = torch.stack([MASKS["gaussian"](128, 4, 0.0, seed) for seed in range(200)]).float().mean(0)
    assert float(counts[54:74].mean()) > 2 * float(torch.cat([counts[:20], counts[-20:]]).mean())


def test_full_sampling_and_validation() -> None:
    for name in MASKS:
        assert bool(MASKS[name](64, 1, 0.08, 0).all())
    with pytest.raises(ValueError, match="acceleration"):
        MASKS["random"](64, 0.5, 0.08, 0)
    with pytest.raises(ValueError, match="center_fraction"):
        MASKS["equispaced"](64, 4, 0.5, 0)  # 32 central columns, more than 64 / 4
    with pytest.raises(ValueError, match="center_fraction"):
        MASKS["gaussian"](64, 4, -0.1, 0)
    with pytest.raises(TypeError, match="Generator"):
        MASKS["random"](64, 4, 0.08, None)  # type: ignore[arg-type]
