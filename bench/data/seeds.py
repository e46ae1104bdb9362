"""One seed scheme: every random stream of a run is derived here from the run's seed.

A run draws from several independent random streams (its training images, the fixed test images,
MRI phases, the training batch order, noise, model initialisation). Each has a name in `STREAMS`
with a fixed slot; the generator seed of stream ``name`` for run seed ``s`` is
``s * STRIDE + slot`` (``0 * STRIDE + slot`` for the fixed streams, which do not depend on the
run). That map is one-to-one on (run seed, per-run slot) and on the fixed slots, and no per-run
slot is a fixed slot, so:

- no two streams of one run share a generator seed;
- two different run seeds share no per-run stream (only the fixed test streams, on purpose: every
  run is scored on the same test images and test noise);
- adding a stream (a new name with an unused slot below `STRIDE`) changes no existing stream.

Nothing else in the library derives seeds (no ad-hoc offsets added to a seed): callers ask for
``generator(seed, "batch_order")`` or ``stream_seed(seed, "train_images")``. To add a stream, add
one `Stream` here with the next free slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Slots available per run seed: the largest stream slot is ``STRIDE - 1``.
STRIDE = 64


@dataclass(frozen=True)
class Stream:
    """A named random stream: its slot, whether it follows the run's seed, and what it draws."""

    slot: int
    per_run: bool
    draws: str


STREAMS: dict[str, Stream] = {
    "train_images": Stream(0, True, "which training images (crops, phantoms, MNI slices)"),
    "test_images": Stream(1, False, "the fixed test images (crops, phantoms)"),
    "train_phase": Stream(2, True, "the smooth phase of the MRI training images"),
    "test_phase": Stream(3, False, "the smooth phase of the fixed MRI test images"),
    "batch_order": Stream(4, True, "the training batches (epochs of random permutations)"),
    "train_noise": Stream(5, True, "the measurement noise of each training batch"),
    "measure_noise": Stream(6, True, "the noise of the fixed batch memory and time are measured on"),
    "test_noise": Stream(7, False, "the noise of the fixed test measurements"),
    "model_init": Stream(8, True, "the model's initial parameters (torch's global RNG, forked)"),
    "val_images": Stream(9, True, "which validation images (crops, phantoms)"),
    "val_phase": Stream(10, True, "the smooth phase of the MRI validation images"),
    "val_noise": Stream(11, True, "the noise of the validation measurements"),
}


def _check_streams() -> None:
    slots = [s.slot for s in STREAMS.values()]
    if len(set(slots)) != len(slots) or not all(0 <= s < STRIDE for s in slots):
        raise ValueError(f"stream slots must be distinct and in [0, {STRIDE}), got {slots}")


_check_streams()


def stream_seed(seed: int, name: str) -> int:
    """The generator seed of stream `name` for run seed `seed` (>= 0); fixed streams ignore `seed`."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; known streams: {sorted(STREAMS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    stream = STREAMS[name]
    return (seed if stream.per_run else 0) * STRIDE + stream.slot


def generator(seed: int, name: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh `torch.Generator` on `device` seeded with ``stream_seed(seed, name)``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, name))
