"""The memory estimate (bench/harness/run.py).

- The estimate covers the whole run: for every run of the smoke preset, ``estimated_bytes`` is at
  least the peak of the CPU allocator over the entire run, measured independently in a fresh process.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import torch

from bench.harness.run import SOLVER_STEP_MARGIN, MemoryEstimate, step_factor
from bench.harness.specs import RunSpec, load_preset, normalise, spec_from_json, spec_to_json
from models.deq import DEQStats
from models.solvers import SolverStats

_END_MARK = "test_budget: the run returned"


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # children start faster on a busy 2-core machine


# ----------------------------------------------------------------------------- the estimate's terms


def test_estimate_is_the_larger_of_setup_and_steps_plus_the_cuda_overhead() -> None:
    steps_win = MemoryEstimate(
        setup_peak_bytes=100, resident_bytes=60, step_bytes=50, batch_bytes=7, overhead_bytes=0
    )
    assert steps_win.estimated_bytes == 117
    setup_wins = MemoryEstimate(
        setup_peak_bytes=500, resident_bytes=60, step_bytes=50, batch_bytes=7, overhead_bytes=0
    )
    assert setup_wins.estimated_bytes == 500
    on_cuda = MemoryEstimate(
        setup_peak_bytes=500, resident_bytes=60, step_bytes=50, batch_bytes=7, overhead_bytes=1000
    )
    assert on_cuda.estimated_bytes == 1500
    assert "set-up peak 500" in on_cuda.describe() and "CUDA overhead 1000" in on_cuda.describe()


def _stats(*forward_iters: int) -> list[DEQStats]:
    def solve(iters: int) -> SolverStats:
        return SolverStats(iters=iters, rel_residual=torch.tensor([1e-3]), converged=torch.tensor([True]))

    return [DEQStats(forward=solve(n), backward=None) for n in forward_iters]


def test_step_factor_covers_solver_iterations_and_unrolled_graphs() -> None:
    lu = normalise(RunSpec(task="deblur", model="lu"))
    assert step_factor(lu, []) == 1.0  # feed-forward: every step allocates the same
    ift = normalise(RunSpec(task="deblur", model="luser", backward="ift", max_iter=40))
    assert step_factor(ift, _stats(4, 8)) == pytest.approx(1 + SOLVER_STEP_MARGIN)
    unrolled = normalise(RunSpec(task="deblur", model="luser", backward="unrolled", max_iter=40))
    # the graph grows with the iterations: 40 against the fewest measured (4)
    assert step_factor(unrolled, _stats(4, 8)) == pytest.approx((1 + SOLVER_STEP_MARGIN) * 10)
    assert step_factor(unrolled, []) == pytest.approx((1 + SOLVER_STEP_MARGIN) * 40)


# ----------------------------------------------------------------------------- the whole run


def _estimate_row(spec_json: str) -> dict[str, Any]:
    """In a fresh process: the run's row (its estimate and status)."""
    from bench.harness.run import run_spec

    row = run_spec(spec_from_json(spec_json))
    return {k: row[k] for k in ("status", "error", "estimated_bytes", "setup_peak_bytes", "alloc_peak_bytes")}


def _whole_run_peak(spec_json: str) -> tuple[str, int, int, bool]:
    """In a fresh process: the CPU allocator's peak over the whole `run_spec` call.

    One `torch.autograd.profiler.profile(profile_memory=True)` spans the run; the c10 CPU allocator
    reports every allocation (+bytes) and free (-bytes) to it, and the peak of their running sum in
    time order is the run's peak (everything the run allocates counts: the process had allocated
    nothing for it before). The run's own CPU allocator meters open a profiler of their own, which
    would end this one's session, so `bench.meters.memory.cpu_alloc_peak` (the one function through
    which they all profile) is replaced by a plain call of its argument: the run then allocates
    exactly what it would, and this profiler sees it. Returns the status, the peak, how many times
    the run's meter was called, and whether the profiler was still recording when the run returned.
    """
    from torch.autograd.profiler import profile, record_function

    from bench.harness.run import run_spec
    from bench.meters import memory

    calls = 0

    def plain_call(fn: Any) -> memory.AllocPeak:
        nonlocal calls
        calls += 1
        fn()
        return memory.AllocPeak(peak_bytes=0, end_bytes=0)

    memory.cpu_alloc_peak = plain_call  # type: ignore[assignment]  # this process only
    spec = spec_from_json(spec_json)
    with profile(use_cpu=True, profile_memory=True, use_kineto=True) as prof:
        row = run_spec(spec)
        with record_function(_END_MARK):
            pass
    result = prof.kineto_results
    assert result is not None
    events: list[Any] = []
    stack = list(result.experimental_event_tree())
    while stack:
        ev = stack.pop()
        events.append(ev)
        stack.extend(ev.children)
    allocations = sorted(
        (ev for ev in events if type(ev.extra_fields).__name__ == "_ExtraFields_Allocation"),
        key=lambda ev: ev.start_time_ns,
    )
    live_bytes = peak_bytes = 0
    for ev in allocations:
        if ev.extra_fields.device.type == "cpu":
            live_bytes += int(ev.extra_fields.alloc_size)
            peak_bytes = max(peak_bytes, live_bytes)
    recorded_to_the_end = any(ev.name == _END_MARK for ev in events)
    return str(row["status"]), peak_bytes, calls, recorded_to_the_end


def _label(spec: RunSpec) -> str:
    parts = [spec.task, spec.model, spec.backward or ""]
    parts += [f"{k}={v}" for k, v in spec.model_extra if k != "x0"]
    parts += [f"operator.{k}={v}" for k, v in spec.operator]
    parts += [spec.precision] if spec.precision != "fp32" else []
    return " ".join(p for p in parts if p)


@pytest.mark.slow
def test_estimate_covers_the_whole_run_peak_of_every_smoke_run() -> None:
    """Each smoke run twice, each time in a fresh process forked from a fork server that only
    imported the modules: once as a sweep runs it (its ``estimated_bytes``), once under the
    whole-run meter (`_whole_run_peak`)."""
    specs = [normalise(s) for s in load_preset("smoke").specs]
    assert {s.model for s in specs} == {"lu", "lu_ckpt", "luser", "deq", "classical"}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torchmetrics", "models", "bench.harness.run"])
    short: list[str] = []
    with ctx.Pool(1, maxtasksperchild=1) as pool:  # a new process for every call
        for spec in specs:
            spec_json = spec_to_json(spec)
            row = pool.apply(_estimate_row, (spec_json,))
            status, whole_bytes, calls, to_the_end = pool.apply(_whole_run_peak, (spec_json,))
            assert row["status"] == "ok" and status == "ok", (_label(spec), row["error"])
            assert calls >= 3 and to_the_end, (_label(spec), calls, to_the_end)  # no nested profiler
            assert whole_bytes >= row["setup_peak_bytes"] > 0, _label(spec)
            if row["estimated_bytes"] < whole_bytes:
                short.append(f"{_label(spec)}: estimated {row['estimated_bytes']} < whole run {whole_bytes}")
    assert not short, "\n".join(short)
