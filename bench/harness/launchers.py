"""Launchers: every run in its own fresh process, one shared run function, three ways to schedule.

`run_in_fresh_process(spec_json, csv_path, ...)` is the one run function. It starts a new process for
the run, waits for it, reads the row the child wrote to `DIR/rows/<run_id>.json`, and appends it to
`runs.csv` under the file lock (bench/harness/results.py). The process is new for every run (its own CUDA
context and statistics, its own RSS; a crash cannot take the sweep down). Two ways to start it
(`STARTERS`): "forkserver" (default) forks it from a multiprocessing fork server that imported
torch, torchmetrics and the bench modules once (`PRELOAD`; importing does not initialise CUDA), so a
run starts in well under a second instead of the ~5 s an interpreter needs for those imports;
"subprocess" runs `python -m bench _run-one --spec-json ... --row-out ...` instead. (As with any
multiprocessing fork server, a script that calls the launchers must guard its entry point with
`if __name__ == "__main__":`; `python -m bench` does.)
If the child dies without a row (SIGKILL, segfault, os._exit) the row is `status=error, "process
exited with code -9"` plus the tail of its log; with `run_timeout_s` the child is killed after that
many seconds and the row is `status=timeout`. The child's stdout/stderr go to `DIR/logs/<run_id>.log`.

Launchers (`LAUNCHERS`):
- `sequential` (alias `local`, the issue's name): one run after another;
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

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.results import append_row
from bench.harness.specs import RunSpec, spec_columns, spec_from_json, spec_to_json

_REPO_ROOT = Path(__file__).resolve().parents[2]
_LOG_TAIL_CHARS = 800


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


def failure_row(spec: RunSpec, status: str, error: str) -> dict[str, Any]:
    """A row for a run whose process produced none (crash, timeout): spec columns + environment."""
    row: dict[str, Any] = spec_columns(spec)
    row.update(status=status, error=error)
    try:
        from bench.meters.environment import environment_columns

        row.update(environment_columns(spec.device or None))
    except Exception as err:  # the stamp must never hide the failure it describes
        row["error"] = f"{error} (environment stamp failed: {type(err).__name__}: {err})"
    return row


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " ".join(text[-_LOG_TAIL_CHARS:].split())


#: Modules the fork server imports once, so that each run's process starts in a fraction of a second
#: instead of re-importing torch, torch._dynamo (pulled in by the memory tracker's dispatch mode) and
#: torchmetrics (about 5 s on a small CPU). Importing them does not initialise CUDA.
PRELOAD: tuple[str, ...] = (
    "torch",
    "torch._dynamo",
    "torchmetrics",
    "models",
    "bench.harness.run",
    "bench.meters.memory",
    "bench.meters.quality",
    "bench.data.tasks",
    "bench.meters.timing",
    "bench.meters.environment",
)


def _child_main(
    spec_json: str, row_path: str, log_path: str, memory_budget_bytes: int | None, env: dict[str, str]
) -> None:
    """Body of a forked run process: log to log_path, apply env, run, write the row JSON atomically."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)  # before anything touches CUDA (CUDA_VISIBLE_DEVICES)
    from bench.harness.run import run_spec

    row = run_spec(spec_from_json(spec_json), memory_budget_bytes=memory_budget_bytes)
    tmp = Path(row_path + ".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, row_path)  # the parent sees a whole row or none


class _Child:
    """A started run process: wait(timeout) -> exit code (negative: killed by that signal), kill()."""

    def __init__(self, wait: Callable[[float | None], int | None], kill: Callable[[], None]) -> None:
        self.wait, self.kill = wait, kill


def _start_forkserver(
    spec_json: str, row_path: Path, log_path: Path, memory_budget_bytes: int | None, env: Mapping[str, str]
) -> _Child:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    proc = ctx.Process(
        target=_child_main,
        args=(spec_json, str(row_path), str(log_path), memory_budget_bytes, dict(env)),
        name="bench-run",
    )
    proc.start()

    def wait(timeout: float | None) -> int | None:
        proc.join(timeout)
        return proc.exitcode

    return _Child(wait, proc.kill)


def _start_subprocess(
    spec_json: str, row_path: Path, log_path: Path, memory_budget_bytes: int | None, env: Mapping[str, str]
) -> _Child:
    cmd = [sys.executable, "-m", "bench", "_run-one", "--spec-json", spec_json, "--row-out", str(row_path)]
    if memory_budget_bytes is not None:
        cmd += ["--memory-budget", str(memory_budget_bytes)]
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH")) if p)
    child_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=_REPO_ROOT)

    def wait(timeout: float | None) -> int | None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return _Child(wait, proc.kill)


#: How a run's fresh process is started: "forkserver" (default: forked from a server that has the
#: heavy modules imported, well under a second) or "subprocess" (`python -m bench _run-one`, a new
#: interpreter, several seconds of imports). Both give a new process with its own CUDA context.
STARTERS: dict[str, Callable[..., _Child]] = {
    "forkserver": _start_forkserver,
    "subprocess": _start_subprocess,
}


def run_in_fresh_process(
    spec_json: str,
    csv_path: str,
    *,
    memory_budget_bytes: int | None = None,
    run_timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    start: str = "forkserver",
) -> dict[str, Any]:
    """Run one spec in a fresh process, append its row to csv_path, and return the row.

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

    child = STARTERS[start](spec_json, row_path, log_path, memory_budget_bytes, dict(env or {}))
    code = child.wait(run_timeout_s)
    timed_out = code is None
    if timed_out:
        child.kill()
        code = child.wait(None)

    if timed_out:
        row = failure_row(spec, "timeout", f"run exceeded --run-timeout {run_timeout_s:g} s and was killed")
    elif code == 0 and row_path.exists():
        row = json.loads(row_path.read_text())
    else:
        row = failure_row(spec, "error", f"process exited with code {code}; log tail: {_log_tail(log_path)}")
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
    lock = threading.Lock()
    pending = iter(specs)
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(specs), desc=desc, unit="run", disable=not opts.show_progress, file=sys.stderr)
    errors: list[BaseException] = []

    def worker(env: Mapping[str, str]) -> None:
        while True:
            with lock:
                spec = next(pending, None) if budget.may_start() else None
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
                )
            except BaseException as err:  # harness failure (disk full, ...): stop this worker, report
                with lock:
                    errors.append(err)
                return
            with lock:
                budget.durations_s.append(time.monotonic() - t0)
                rows.append(row)
                bar.set_postfix_str(f"{row['model']} {row['status']}")
                bar.update(1)

    threads = [threading.Thread(target=worker, args=(env,), daemon=True) for env in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    if errors:
        raise errors[0]
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
    return str(row["status"])


#: Launcher name -> function(specs, csv_path, opts). "local" is the issue's name for sequential.
LAUNCHERS: dict[str, Callable[..., list[Any]]] = {
    "sequential": launch_sequential,
    "local": launch_sequential,
    "pool": launch_pool,
    "slurm": launch_slurm,
}
