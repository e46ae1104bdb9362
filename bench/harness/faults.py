"""Fault injection, a testing aid: `spec.inject` makes a run fail in a chosen way.

`FaultInjector` wraps a model so that its *second* call fails (the first is a warm-up step): "nan"
returns NaN images from then on, "oom" raises an out-of-memory error (a real one on CUDA: an
impossible allocation), "crash" SIGKILLs this process, "hang" waits (forever, or until the file named
by $BENCH_HANG_RELEASE exists; it prints its pid to the log first). Run "crash" and "hang" only in a
child process (the launchers do). The names are `bench.schema.FAULT_NAMES`, the keys of `FAULTS`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: "hang" waits until the file named by this environment variable exists (forever when unset), so that
#: tests have a run that is slow for exactly as long as they need.
HANG_RELEASE_ENV = "BENCH_HANG_RELEASE"


def _fault_nan(recon: Any, device: torch.device) -> Any:
    return dataclasses.replace(recon, x=recon.x * float("nan"))


def _fault_oom(recon: Any, device: torch.device) -> Any:
    if device.type == "cuda":
        torch.empty(2**50, dtype=torch.uint8, device=device)  # 1 PiB: a real CUDA out-of-memory error
    raise torch.OutOfMemoryError("injected out-of-memory error (spec.inject='oom')")


def _fault_crash(recon: Any, device: torch.device) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)
    return recon


def _fault_hang(recon: Any, device: torch.device) -> Any:
    release = os.environ.get(HANG_RELEASE_ENV)
    print(f"injected hang: pid {os.getpid()} waiting for {release or 'ever'}", flush=True)
    while not (release and os.path.exists(release)):
        time.sleep(0.05)
    return recon


#: inject name -> what happens from the model's second call on (the first call is a warm-up step).
FAULTS: dict[str, Callable[[Any, torch.device], Any]] = {
    "nan": _fault_nan,
    "oom": _fault_oom,
    "crash": _fault_crash,
    "hang": _fault_hang,
}


class FaultInjector(nn.Module):
    """Wraps a model; from its second call on, applies FAULTS[fault] to the reconstruction."""

    def __init__(self, model: nn.Module, fault: str, device: torch.device) -> None:
        super().__init__()
        if fault not in FAULTS:
            raise KeyError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        self.inner = model
        self.fault = fault
        self.device = device
        self.calls = 0

    def forward(self, y: torch.Tensor, op: Any) -> Any:
        recon = self.inner(y, op)
        self.calls += 1
        return recon if self.calls < 2 else FAULTS[self.fault](recon, self.device)
