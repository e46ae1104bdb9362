"""Step timing: warm-up, then one synchronised wall-clock measurement per step; median and IQR.

On CUDA, kernels run asynchronously, so every timed region is bracketed by
``torch.cuda.synchronize()``; elsewhere ``time.perf_counter`` is read directly. The median and the
interquartile range (IQR = Q3 - Q1, quartiles by linear interpolation between order statistics) are
robust to the occasional slow step. Never gate on absolute times: on a shared CPU the median drifts.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

Clock = Callable[[], float]  # seconds, monotonic


@dataclass(frozen=True)
class StepTimes:
    """Per-step wall times (ms) and their median and interquartile range (ms)."""

    step_ms: tuple[float, ...]
    median_ms: float
    iqr_ms: float


def step_time_stats(step_ms: Sequence[float]) -> StepTimes:
    """Median and IQR (inclusive quartiles, linear interpolation) of step times in milliseconds."""
    if len(step_ms) == 0:
        raise ValueError("step_time_stats needs at least one step time, got none")
    times = tuple(float(t) for t in step_ms)
    if len(times) == 1:
        return StepTimes(step_ms=times, median_ms=times[0], iqr_ms=0.0)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return StepTimes(step_ms=times, median_ms=statistics.median(times), iqr_ms=q3 - q1)


def synchronize(device: torch.device | str) -> None:
    """Wait for `device`'s queued kernels (CUDA); nothing to wait for elsewhere. The one sync helper:
    every timed or measured region in the suite goes through it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Context manager for a total wall time in seconds, synchronising `device` on entry and exit.

    Example::

        with Stopwatch(device) as watch:
            train(...)
        watch.elapsed_s
    """

    def __init__(self, device: torch.device | str = "cpu", clock: Clock = time.perf_counter) -> None:
        self.device = torch.device(device)
        self.clock = clock
        self.elapsed_s = 0.0
        self._start_s = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start_s = self.clock()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        synchronize(self.device)
        self.elapsed_s = self.clock() - self._start_s


def time_steps(
    step_fn: Callable[[], Any],
    *,
    n_warmup: int,
    n_steps: int,
    device: torch.device | str,
    clock: Clock = time.perf_counter,
) -> StepTimes:
    """Run `n_warmup` untimed steps, then time `n_steps` steps one by one (synchronised on CUDA).

    `clock` returns seconds (injectable for tests); the result is in milliseconds.
    """
    if n_warmup < 0 or n_steps < 1:
        raise ValueError(f"need n_warmup >= 0 and n_steps >= 1, got n_warmup={n_warmup}, n_steps={n_steps}")
    for _ in range(n_warmup):
        step_fn()
    step_ms = []
    for _ in range(n_steps):
        with Stopwatch(device, clock) as watch:
            step_fn()
        step_ms.append(1e3 * watch.elapsed_s)
    return step_time_stats(step_ms)
