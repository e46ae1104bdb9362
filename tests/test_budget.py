"""The memory estimate and --memory-budget (bench/harness/run.py, bench/harness/results.py).

- The estimate covers the whole run: for every run of the smoke preset, ``estimated_bytes`` is at
  least the peak of the CPU allocator over the entire run, measured independently in a fresh process.
- An estimate over the budget is its own status, ``over_budget``, with the budget and the estimate in
  their columns; a later sweep with another budget (or none) evaluates the run again, the same budget
  skips it (with or without --retry-failed), and nothing already written is lost.
- The analysis counts and marks ``over_budget`` like every other status that is not ``ok``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import cli
from bench.harness.estimate import SOLVER_STEP_MARGIN, MemoryEstimate, step_factor
from bench.harness.expand import load_preset
from bench.harness.results import read_rows
from bench.harness.specs import RunSpec, normalise, spec_from_json, spec_to_json
from bench.schema import OVER_BUDGET
from models.deq import DEQStats
from models.solvers import SolverStats

FIXTURES = Path(__file__).parent / "fixtures"
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
    would end this one's session, so `bench.meters.allocator.cpu_alloc_peak` (the one function through
    which they all profile) is replaced by a plain call of its argument: the run then allocates
    exactly what it would, and this profiler sees it. Returns the status, the peak, how many times
    the run's meter was called, and whether the profiler was still recording when the run returned.
    """
    from torch.autograd.profiler import profile, record_function

    from bench.harness.run import run_spec
    from bench.meters import allocator

    calls = 0

    def plain_call(fn: Any) -> allocator.AllocPeak:
        nonlocal calls
        calls += 1
        fn()
        return allocator.AllocPeak(peak_bytes=0, end_bytes=0)

    allocator.cpu_alloc_peak = plain_call  # type: ignore[assignment]  # this process only
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


# ----------------------------------------------------------------------------- over_budget in sweeps

TINY = (
    '[defaults]\ntask = "deblur"\nmodel = "classical"\nmethod = "adjoint"\nimage_size = 16\n'
    "batch_size = 1\nn_train = 2\nn_test = 1\nn_val = 1\nwarmup_steps = 1\ntimed_steps = 1\n"
    'device = "cpu"\ncpu_threads = 1\n'
)


def _sweep(
    sweep: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[list[dict[str, str]], str]:
    """Run the sweep CLI; the rows of OUT/runs.csv and the sweep's summary line."""
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", *extra]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("finished in ")
    return read_rows(out / "runs.csv"), summary


def test_over_budget_is_a_verdict_of_its_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(TINY)
    out = tmp_path / "out"

    rows, summary = _sweep(sweep, out, capsys, "--memory-budget", "1000")
    assert [r["status"] for r in rows] == [OVER_BUDGET]
    first = rows[0]
    assert first["memory_budget_bytes"] == "1000" and int(first["estimated_bytes"]) > 1000
    estimated = first["estimated_bytes"]
    assert first["error"].startswith(f"would not fit: estimated {estimated} bytes > budget 1000 bytes")
    assert first["train_s"] == first["psnr_db"] == first["step_ms_median"] == ""  # stopped before them
    assert "1 over_budget" in summary and "another --memory-budget runs them again" in summary

    # the same budget: a result, with or without --retry-failed
    assert _sweep(sweep, out, capsys, "--memory-budget", "1000", "--retry-failed")[0] == rows
    assert _sweep(sweep, out, capsys, "--memory-budget", "1KB")[0] == rows  # 1KB is 1000 bytes
    # another budget evaluates it again (a new row; the first one stays)
    rows, _ = _sweep(sweep, out, capsys, "--memory-budget", "2000", "--retry-failed")
    assert [(r["status"], r["memory_budget_bytes"]) for r in rows] == [
        (OVER_BUDGET, "1000"),
        (OVER_BUDGET, "2000"),
    ]
    assert _sweep(sweep, out, capsys, "--memory-budget", "2000")[0] == rows
    # no budget: it runs, and an ok row is a result whatever the next budget
    rows, summary = _sweep(sweep, out, capsys)
    assert [r["status"] for r in rows] == [OVER_BUDGET, OVER_BUDGET, "ok"]
    assert rows[-1]["memory_budget_bytes"] == "" and int(rows[-1]["estimated_bytes"]) > 2000
    assert rows[-1]["psnr_db"] != "" and "1 ok" in summary and "over" not in summary
    assert _sweep(sweep, out, capsys, "--memory-budget", "1000")[0] == rows


def _fixture_with_one_over_budget(path: Path) -> dict[str, str]:
    """The fixture table (written before the budget columns) with one ct LU K=10 profile run turned
    ``over_budget``, written to `path`; returns that row."""
    with (FIXTURES / "runs_fixture.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)
    assert "memory_budget_bytes" not in columns
    target = next(
        r for r in rows if (r["task"], r["model"], r["part"], r["n_iters"]) == ("ct", "lu", "profile", "10")
    )
    target.update(status=OVER_BUDGET, error="would not fit: estimated 9 bytes > budget 8 bytes (...)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return target


def test_an_over_budget_row_without_its_budget_is_evaluated_again(tmp_path: Path) -> None:
    """A table without the budget columns reads them as empty; its rows stay finished, except an
    ``over_budget`` row, whose budget is unknown: any sweep evaluates it again."""
    from bench.harness.results import finished_run_ids

    csv_path = tmp_path / "runs.csv"
    target = _fixture_with_one_over_budget(csv_path)
    rows = read_rows(csv_path)
    assert all(r["memory_budget_bytes"] == r["estimated_bytes"] == "" for r in rows)
    others = {r["run_id"] for r in rows} - {target["run_id"]}
    for budget in (None, 8, 2**30):
        assert finished_run_ids(csv_path, memory_budget_bytes=budget) == others


def test_analysis_counts_and_marks_over_budget_runs(tmp_path: Path) -> None:
    from bench.analysis import figures, report, runtable

    sweep = tmp_path / "sweep"
    target = _fixture_with_one_over_budget(sweep / "runs.csv")
    runs = runtable.load_runs(sweep)
    assert (runs["status"] == OVER_BUDGET).sum() == 1
    fig = figures.draw("memory_vs_k", runs)
    marked = [t for ax in fig.axes for t in ax.texts if t.get_text() == OVER_BUDGET]
    assert len(marked) == 1  # drawn as a failed run with its status beside it
    assert report.main(argparse.Namespace(dir=sweep, psnr_tol_db=0.5)) == 0
    text = (sweep / "report.md").read_text()
    source = next(line for line in text.splitlines() if line.startswith("Source: "))
    assert f"{OVER_BUDGET} 1" in source  # counted among the failed runs
    failed = text[text.index("## Failed runs") :]
    line = next(line for line in failed.splitlines() if f"`{target['run_id']}`" in line)
    assert f"**{OVER_BUDGET}**" in line and "would not fit" in line
