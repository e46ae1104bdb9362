"""Launchers: every run in its own fresh process, one shared run function, three ways to schedule.

`run_in_fresh_process(spec_json, csv_path, ...)` is the one run function. It starts a new process for
the run (bench/harness/children.py: forked from a preloaded fork server, or `--start subprocess`; its
own process group, killed with its parent), waits for it, reads the row the child wrote to
`DIR/rows/<run_id>.json`, and appends it to `runs.csv` under the file lock (bench/harness/results.py).
The process is new for every run (its own CUDA context and statistics, its own RSS; a crash cannot
take the sweep down). (As with any multiprocessing fork server, a script that calls the launchers
must guard its entry point with `if __name__ == "__main__":`; `python -m bench` does.)
If the child dies without a row (SIGKILL, segfault, os._exit) the row is `status=error` with one
line: how it ended (a signal by name; SIGKILL is also what the out-of-memory killer sends), its last
log line and the log's path; with `run_timeout_s` the child is killed after that many seconds and
the row is `status=timeout`. The child's stdout/stderr go to `DIR/logs/<run_id>.log`.

What is not a run's result stops the sweep instead of becoming a row: a row that cannot be written
(`WriteError`, by the child or by the sweep), a dead fork server (`ForkServerDied`), and SIGTERM or
SIGINT (`SweepInterrupted`: no run starts after the signal, the runs in progress are killed with
their process groups and get no row, so a resume runs them again).

Launchers (`LAUNCHERS`):
- `sequential` (alias `local`): one run after another;
- `pool`: one worker per visible GPU (`CUDA_VISIBLE_DEVICES` parsed, else
  `torch.cuda.device_count()`), each child pinned with `CUDA_VISIBLE_DEVICES=<its gpu>` (set in the
  child before CUDA is touched); without a GPU, `workers` CPU workers (default 1);
- `slurm`: a submitit job array (`executor.map_array`); each array job calls the same
  `run_in_fresh_process`, which appends under the lock (flock must work on the shared file system).
  Tests pass a `submitit.LocalExecutor`.

Sequential and pool show a tqdm progress bar with ETA and honour `max_runs` / `time_budget_s` (no new
run starts after `max_runs` runs, or when the elapsed time plus the mean run time so far would pass
the budget), so a long sweep can be done in resumable chunks.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.children import (
    ROW_WRITE_FAILED,
    STARTERS,
    ForkServerDied,
    RunGuard,
    curve_path_of,
    death_text,
)
from bench.harness.curves import CURVES_FILE, write_curve
from bench.harness.results import WriteError, append_row
from bench.harness.specs import RunSpec, spec_columns, spec_from_json, spec_to_json

_LOG_TAIL_CHARS = 300


@dataclass(frozen=True)
class LaunchOptions:
    """Settings shared by all launchers."""

    memory_budget_bytes: int | None = None
    run_timeout_s: float | None = None
    max_runs: int | None = None
    time_budget_s: float | None = None
    workers: int = 1
    show_progress: bool = True
    start: str = "forkserver"  # a key of STARTERS


def failure_row(
    spec: RunSpec, status: str, error: str, *, memory_budget_bytes: int | None = None
) -> dict[str, Any]:
    """A row for a run whose process produced none (crash, timeout): spec columns + environment, and
    the --memory-budget the run was started with."""
    row: dict[str, Any] = spec_columns(spec)
    row.update(status=status, error=error, memory_budget_bytes=memory_budget_bytes)
    try:
        from bench.meters.environment import environment_columns

        row.update(environment_columns(spec.device or None))
    except Exception as err:  # the stamp must never hide the failure it describes
        row["error"] = f"{error} (environment stamp failed: {type(err).__name__}: {err})"
    return row


def _last_log_line(path: Path) -> str:
    """The log's last non-empty line, shortened (the whole log stays in the file)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= _LOG_TAIL_CHARS else last[: _LOG_TAIL_CHARS - 3] + "..."


def one_line(message: str, log_path: Path) -> str:
    """A run's error as one readable line (its first line, shortened) plus where the log is."""
    first = next((line.strip() for line in str(message).splitlines() if line.strip()), "")
    if len(first) > _LOG_TAIL_CHARS:
        first = first[: _LOG_TAIL_CHARS - 3] + "..."
    return f"{first} (log: {log_path})"


def run_in_fresh_process(
    spec_json: str,
    csv_path: str,
    *,
    memory_budget_bytes: int | None = None,
    run_timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    start: str = "forkserver",
    guard: RunGuard | None = None,
) -> dict[str, Any] | None:
    """Run one spec in a fresh process, append its row to csv_path, and return the row.

    With a `guard` (the sweep's), a run ended by the sweep's SIGTERM/SIGINT writes no row and
    returns None. Raises ForkServerDied when the fork server died under the run, WriteError when the
    run's process or this one could not write the row.

    spec_json is `bench.harness.specs.spec_to_json(spec)` (a string, so submitit pickles it cheaply).
    env entries are set in the child's environment (e.g. CUDA_VISIBLE_DEVICES). start: a key of
    STARTERS.
    """
    if start not in STARTERS:
        raise KeyError(f"unknown start method {start!r}; known: {sorted(STARTERS)}")
    spec = spec_from_json(spec_json)
    out_dir = Path(csv_path).parent
    run_id = spec.run_id
    row_path = out_dir / "rows" / f"{run_id}.json"
    log_path = out_dir / "logs" / f"{run_id}.log"
    row_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    row_path.unlink(missing_ok=True)
    curve_path_of(row_path).unlink(missing_ok=True)

    child = STARTERS[start](spec_json, row_path, log_path, memory_budget_bytes, dict(env or {}))
    if guard is not None and not guard.admit(run_id, child):
        child.wait(None)
        return None
    try:
        code = child.wait(run_timeout_s)
        timed_out = code is None
        if timed_out:
            child.kill()
            code = child.wait(None)
    finally:
        if guard is not None:
            guard.release(run_id)
    if guard is not None and guard.was_stopped(run_id):
        return None  # ended by the sweep's signal: no row, a resume runs it again
    if code == 255 and child.lost():
        child.kill()
        raise ForkServerDied(
            f"the fork server that starts the runs died during run {run_id}; the sweep stops"
            " (nothing was written for that run, a resume re-runs it)"
        )
    if code == ROW_WRITE_FAILED and not row_path.exists():
        raise WriteError(
            errno.EIO, f"run {run_id}: its process could not write its row: {_last_log_line(log_path)}"
        )

    curve: list[dict[str, Any]] = []
    if timed_out:
        row = failure_row(
            spec,
            "timeout",
            f"run exceeded --run-timeout {run_timeout_s:g} s and was killed",
            memory_budget_bytes=memory_budget_bytes,
        )
    elif code == 0 and row_path.exists():
        row = json.loads(row_path.read_text())
        curve = json.loads(curve_path_of(row_path).read_text())
        if row.get("status") == "error":
            row["error"] = one_line(row.get("error", ""), log_path)
    else:
        last = _last_log_line(log_path)
        row = failure_row(
            spec,
            "error",
            death_text(code or 0)
            + (f"; last log line: {last}" if last else "")
            + f" (log: {log_path})",
            memory_budget_bytes=memory_budget_bytes,
        )
    write_curve(out_dir / CURVES_FILE, run_id, curve)  # before the row: a row means a whole curve
    append_row(csv_path, row)
    return row


# ----------------------------------------------------------------------------- local launchers


class _Budget:
    """Decides whether another run may start (max_runs, time budget from the mean run time)."""

    def __init__(self, max_runs: int | None, time_budget_s: float | None) -> None:
        self.max_runs = max_runs
        self.time_budget_s = time_budget_s
        self.start_s = time.monotonic()
        self.started = 0
        self.durations_s: list[float] = []

    def may_start(self) -> bool:
        if self.max_runs is not None and self.started >= self.max_runs:
            return False
        if self.time_budget_s is None:
            return True
        elapsed_s = time.monotonic() - self.start_s
        mean_s = sum(self.durations_s) / len(self.durations_s) if self.durations_s else 0.0
        return elapsed_s + mean_s <= self.time_budget_s


def _run_with_slots(
    specs: Sequence[RunSpec],
    csv_path: str,
    slots: Sequence[Mapping[str, str]],
    opts: LaunchOptions,
    desc: str,
) -> list[dict[str, Any]]:
    """Run specs on len(slots) worker threads, each starting fresh processes with its slot's env."""
    from tqdm import tqdm

    budget = _Budget(opts.max_runs, opts.time_budget_s)
    guard = RunGuard()
    lock = threading.Lock()
    pending = iter(specs)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(specs), desc=desc, unit="run", disable=not opts.show_progress, file=sys.stderr)
    errors: list[BaseException] = []

    def worker(env: Mapping[str, str]) -> None:
        while True:
            with lock:
                ok = guard.may_start() and not errors and budget.may_start()
                spec = next(pending, None) if ok else None
                if spec is None:
                    return
                budget.started += 1
            t0 = time.monotonic()
            try:
                row = run_in_fresh_process(
                    spec_to_json(spec),
                    csv_path,
                    memory_budget_bytes=opts.memory_budget_bytes,
                    run_timeout_s=opts.run_timeout_s,
                    env=env,
                    start=opts.start,
                    guard=guard,
                )
            except BaseException as err:  # harness failure (disk full, fork server died): stop, report
                with lock:
                    errors.append(err)
                guard.stop(0)  # end the other workers' runs: their rows could not be trusted either
                return
            if row is None:  # stopped by a signal
                return
            with lock:
                budget.durations_s.append(time.monotonic() - t0)
                rows.append(row)
                bar.set_postfix_str(f"{row['model']} {row['status']}")
                bar.update(1)

    with guard.installed():
        threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    bar.close()
    if errors:
        raise errors[0]
    guard.raise_if_stopped()
    return rows


def launch_sequential(specs: Sequence[RunSpec], csv_path: str, opts: LaunchOptions) -> list[dict[str, Any]]:
    """One run after another, each in a fresh process."""
    return _run_with_slots(specs, csv_path, [{}], opts, desc="sweep")


def visible_gpus() -> list[str]:
    """GPU ids the pool may use: CUDA_VISIBLE_DEVICES if set, else 0..device_count()-1."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def launch_pool(specs: Sequence[RunSpec], csv_path: str, opts: LaunchOptions) -> list[dict[str, Any]]:
    """One worker per visible GPU (child pinned by CUDA_VISIBLE_DEVICES), else opts.workers CPU workers."""
    gpus = visible_gpus()
    if gpus:
        slots: list[dict[str, str]] = [{"CUDA_VISIBLE_DEVICES": g} for g in gpus]
    else:
        if opts.workers < 1:
            raise ValueError(f"workers must be >= 1, got {opts.workers}")
        slots = [{} for _ in range(opts.workers)]
    return _run_with_slots(specs, csv_path, slots, opts, desc=f"pool x{len(slots)}")


# ----------------------------------------------------------------------------- SLURM (submitit)


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 60
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    array_parallelism: int = 64
    wait: bool = True


def make_slurm_executor(folder: str | Path, slurm: SlurmOptions) -> Any:
    """A submitit AutoExecutor for one-GPU array jobs (imported lazily: submitit is optional)."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder))
    params: dict[str, Any] = {
        "timeout_min": slurm.time_min,
        "gpus_per_node": slurm.gpus_per_task,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": slurm.array_parallelism,
    }
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    if slurm.cpus_per_task:
        params["cpus_per_task"] = slurm.cpus_per_task
    executor.update_parameters(**params)
    return executor


def launch_slurm(
    specs: Sequence[RunSpec],
    csv_path: str,
    opts: LaunchOptions,
    slurm: SlurmOptions = SlurmOptions(),
    *,
    executor: Any = None,
) -> list[Any]:
    """Submit one array job per spec; returns the jobs (and waits for them when slurm.wait)."""
    if opts.max_runs is not None:
        specs = specs[: opts.max_runs]
    if not specs:
        return []
    if executor is None:
        executor = make_slurm_executor(Path(csv_path).parent / "slurm", slurm)
    n = len(specs)
    jobs = executor.map_array(
        run_in_fresh_process_job,
        [spec_to_json(s) for s in specs],
        [str(csv_path)] * n,
        [opts.memory_budget_bytes] * n,
        [opts.run_timeout_s] * n,
        [opts.start] * n,
    )
    print(f"submitted {n} job(s): {jobs[0].job_id.split('_')[0]}", file=sys.stderr)
    if slurm.wait:
        for job in jobs:
            job.result()
    return jobs


def run_in_fresh_process_job(
    spec_json: str, csv_path: str, memory_budget_bytes: int | None, run_timeout_s: float | None, start: str
) -> str:
    """submitit entry point (positional args for map_array); returns the row's status."""
    row = run_in_fresh_process(
        spec_json, csv_path, memory_budget_bytes=memory_budget_bytes, run_timeout_s=run_timeout_s, start=start
    )
    assert row is not None  # None only with a guard
    return str(row["status"])


#: Launcher name -> function(specs, csv_path, opts). "local" is another name for sequential.
LAUNCHERS: dict[str, Callable[..., list[Any]]] = {
    "sequential": launch_sequential,
    "local": launch_sequential,
    "pool": launch_pool,
    "slurm": launch_slurm,
}
