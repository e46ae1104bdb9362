"""Allocator-level meters: what the caching (CUDA) or CPU allocator really hands out around a call.

- `cuda_step_peak`: ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` over one call, minus
  what was allocated (reserved) before it. ``None`` without CUDA (torch itself would return 0).
- `cpu_alloc_peak`: the peak of the running sum of the c10 CPU allocator's allocation and free
  records that the profiler (``profile_memory=True``) keeps for one call, kernel scratch included.
- `alloc_step_peak(fn, device)`: the one of the two that applies to `device`: what a machine must hold
  above the resident state for one step, and the figure the verdicts use.
- `alloc_call(fn, device)`: the same meter with what the call left allocated beside its peak (building
  a task, warm-up steps: what a run holds before and between its steps).

The profiler slows what it watches, so these run on a call of their own, never inside the live-storage
tracker's step (`bench.meters.memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bench.meters.timing import synchronize


@dataclass(frozen=True)
class CudaPeak:
    """CUDA caching-allocator peaks over one step, above what was allocated/reserved before it."""

    allocated_bytes: int
    reserved_bytes: int
    end_bytes: int = 0  # what the call left allocated


def cuda_device(device: torch.device | str) -> torch.device | None:
    """`device` as a CUDA device when it is one and CUDA is available, else None."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return device


def cuda_step_peak(fn: Callable[[], Any], device: torch.device | str) -> CudaPeak | None:
    """Peak CUDA memory of one call of `fn` above the memory in use before it; None without CUDA.

    Synchronise, reset the peak statistics, take the allocated and reserved baselines, run `fn`,
    synchronise, and subtract. Returns None, without calling `fn`, when `device` is not a CUDA device
    or CUDA is unavailable (torch's own counters would silently read 0).
    """
    cuda = cuda_device(device)
    if cuda is None:
        return None
    synchronize(cuda)
    torch.cuda.reset_peak_memory_stats(cuda)
    base_allocated = torch.cuda.memory_allocated(cuda)
    base_reserved = torch.cuda.memory_reserved(cuda)
    fn()
    synchronize(cuda)
    return CudaPeak(
        allocated_bytes=torch.cuda.max_memory_allocated(cuda) - base_allocated,
        reserved_bytes=torch.cuda.max_memory_reserved(cuda) - base_reserved,
        end_bytes=torch.cuda.memory_allocated(cuda) - base_allocated,
    )


def _allocations(events: Iterable[Any]) -> Iterator[Any]:
    """The allocation records (``_ExtraFields_Allocation``) of a profiler event tree, depth first."""
    for ev in events:
        if type(ev.extra_fields).__name__ == "_ExtraFields_Allocation":
            yield ev
        yield from _allocations(ev.children)


@dataclass(frozen=True)
class AllocPeak:
    """Allocator bytes of one call: the peak above the start, and what was still allocated at the end
    (above the start too; `cpu_alloc_peak`, `alloc_call`)."""

    peak_bytes: int
    end_bytes: int


def cpu_alloc_peak(fn: Callable[[], Any]) -> AllocPeak:
    """Peak bytes the CPU allocator handed out during one call of `fn`, above what was live before it.

    `fn` runs under ``torch.autograd.profiler.profile(profile_memory=True)``: the c10 CPU
    allocator then reports every allocation (+bytes) and free (-bytes) to the profiler, scratch that
    kernels allocate inside themselves included (the tracker cannot see those). The records are
    taken from the profiler's event tree in time order and summed; the peak of the running sum is
    returned with its final value. Frees of blocks allocated before the call are not reported by
    c10 (it does not know their size), so they never lower the sum: the result counts only the
    call's own allocations, like the tracker. Allocations made on threads the profiler does not
    follow (OpenMP workers; none by default on CPU, where backward runs on the calling thread) would
    be missed.
    """
    from torch.autograd.profiler import profile

    # torch.autograd.profiler rather than torch.profiler: the same records, without the wrapper's
    # seconds of set-up in every fresh process.
    with profile(use_cpu=True, profile_memory=True, use_kineto=True) as prof:
        fn()
    result = prof.kineto_results
    if result is None:
        raise RuntimeError("the autograd profiler returned no results; the CPU allocator peak needs them")
    records = sorted(_allocations(result.experimental_event_tree()), key=lambda ev: ev.start_time_ns)
    live_bytes = peak_bytes = 0
    for ev in records:
        if ev.extra_fields.device.type == "cpu":
            live_bytes += int(ev.extra_fields.alloc_size)
            peak_bytes = max(peak_bytes, live_bytes)
    return AllocPeak(peak_bytes=peak_bytes, end_bytes=live_bytes)


def alloc_step_peak(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Allocator-level peak bytes of one call of `fn` above what was allocated before it.

    CUDA: ``max_memory_allocated`` minus the bytes allocated before (`cuda_step_peak`); elsewhere the
    CPU allocator's peak (`cpu_alloc_peak`). Call it on a warm step of its own, never around a timed
    one: the CPU profiler slows the step.
    """
    return alloc_call(fn, device).peak_bytes


def alloc_call(fn: Callable[[], Any], device: torch.device | str) -> AllocPeak:
    """Allocator-level bytes of one call of `fn`: its peak above what was allocated before it, and what
    it left allocated (the bytes it made resident).

    CUDA: ``max_memory_allocated`` and ``memory_allocated`` against the allocated bytes before the call
    (the device's memory only: host-side temporaries do not count); elsewhere `cpu_alloc_peak`, whose
    ``end_bytes`` is never lowered by freeing blocks allocated before the call, so it can only
    overstate what the call left. Used around set-up work (building a task, warm-up steps), where
    the whole of what the call allocates matters, not one step's share of it.
    """
    cuda = cuda_step_peak(fn, device)
    if cuda is None:
        return cpu_alloc_peak(fn)
    return AllocPeak(peak_bytes=cuda.allocated_bytes, end_bytes=cuda.end_bytes)
