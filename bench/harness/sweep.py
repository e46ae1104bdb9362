"""`python -m bench sweep`: expand a sweep file, skip finished runs, launch the rest, summarise.

    python -m bench sweep FILE | --preset NAME --out DIR [--dry-run]
        [--launcher sequential|local|pool|slurm] [--memory-budget 24GiB] [--run-timeout S]
        [--workers N] [--retry-failed] [--max-runs N] [--time-budget S]
        [--partition P] [--time-min M] [--gpus-per-task G] [--no-wait]
        [--start forkserver|subprocess] [--quiet]

`--launcher local` is another name for `sequential` (the default). `--start` picks how each run's
fresh process starts (bench/harness/launchers.py: a preloaded fork server by default, or a new
interpreter). `--max-runs` / `--time-budget` stop starting runs after N runs / when the next run would
end past S seconds (by the mean run time so far), so a long sweep runs in resumable chunks. Sizes: a
bare number is bytes; KB/MB/GB/TB are powers of 10, KiB/MiB/GiB/TiB powers of 2 (`24GiB`, `512MiB`,
`1.5GB`). Exit codes: 0 done (whatever the rows' statuses), 1 the sweep stopped on a write error or a
dead fork server, 2 bad input (sweep file, size, option, --out) with nothing written, 130 / 143
interrupted by SIGINT / SIGTERM.

`--dry-run` writes nothing: it prints how many runs the grids describe (read off the file, before any
run is built), lists each run (run id, done/todo, its settings) as the expansion produces it, then
`N runs in sweep NAME: D already done, T to run`; an invalid run stops it with exit
2 after the lines before it, and a reader that closes its stdout early (`| head`) with exit 1.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.harness.expand import SweepPlan
    from bench.harness.specs import RunSpec

#: Size units of --memory-budget (upper-cased): KB.. powers of 10, KiB.. powers of 2.
_UNITS: dict[str, int] = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
#: A dry run flushes its listing at most this often (and at its first line), so a reader sees it grow.
_FLUSH_EVERY_S = 0.5


def parse_size(text: str) -> int:
    """'24GiB' -> 25769803776; GB = 10**9, GiB = 2**30, bare number = bytes. Bad input: ValueError."""
    m = _SIZE_RE.match(text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(
            f"bad size {text!r}: expected a number with an optional unit in "
            "B, KB, MB, GB, TB (powers of 10), KiB, MiB, GiB, TiB (powers of 2), e.g. 24GiB or 1.5GB"
        )
    return int(round(float(m.group(1)) * _UNITS[m.group(2).upper()]))


def size_arg(text: str) -> int:
    """argparse type of --memory-budget: a size (`parse_size`) of at least one byte. A budget of 0
    (or one that rounds to 0 bytes) would mark every run over budget, so it is refused here."""
    try:
        n_bytes = parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if n_bytes <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive size (at least 1 byte), e.g. 24GiB or 1.5GB, got {text!r}"
        )
    return n_bytes


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("file", nargs="?", help="sweep TOML file")
    src.add_argument("--preset", help="a preset from bench/sweeps/ (e.g. smoke, paper)")
    p.add_argument("--out", required=True, help="output folder; rows go to OUT/runs.csv")
    p.add_argument("--dry-run", action="store_true", help="print the expanded runs, write nothing")
    p.add_argument(
        "--launcher",
        default="sequential",
        choices=["sequential", "local", "pool", "slurm"],
        help="local is an alias of sequential (default)",
    )
    p.add_argument(
        "--memory-budget",
        type=size_arg,
        help="e.g. 24GiB (> 0): runs whose estimate would not fit get status over_budget",
    )
    p.add_argument("--run-timeout", type=_positive_float, help="kill a run after S seconds (status timeout)")
    p.add_argument("--workers", type=int, default=1, help="pool launcher without GPUs: CPU workers")
    p.add_argument(
        "--retry-failed", action="store_true", help="run again run_ids whose last row is error/timeout"
    )
    p.add_argument("--max-runs", type=int, help="start at most N runs, then stop (resume later)")
    p.add_argument("--time-budget", type=_positive_float, help="start no run that would end after S seconds")
    p.add_argument("--partition", help="slurm: partition")
    p.add_argument("--time-min", type=int, default=60, help="slurm: time limit per job in minutes")
    p.add_argument("--gpus-per-task", type=int, default=1, help="slurm: GPUs per job")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.add_argument(
        "--start",
        default="forkserver",
        choices=["forkserver", "subprocess"],
        help="how each run's fresh process starts (forkserver: preloaded imports, fast)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _listing_line(spec: RunSpec, mark: str) -> str:
    """A dry run's line for one normalised spec (its fields are the effective values)."""
    head = f"{spec.run_id}  {mark}  {spec.part:<8} {spec.task:<8} {spec.model:<10}"
    keys = ("n_iters", "reg_depth", "reg_width", "solver", "tol", "max_iter", "backward", "steps")
    fields = " ".join(f"{k}={getattr(spec, k)}" for k in keys if getattr(spec, k) is not None)
    extra = "".join(f" {k}={v}" for k, v in spec.model_extra)
    extra += "".join(f" operator.{k}={v}" for k, v in spec.operator)
    extra += f" data={spec.data}:{spec.data_split}" if spec.data else ""
    extra += f" precision={spec.precision}" if spec.precision != "fp32" else ""
    return f"{head} {fields}{extra}"


def _dry_run(plan: SweepPlan, done: set[str]) -> int:
    """The grids' size first (read off the file), then the runs as they are expanded (the first
    lines come before the grid is built), then the counts; 2 at the first invalid run (its lines
    before it were listed), 1 if stdout closes early."""
    from bench.harness.specs import SweepError

    n_grid = plan.grid_size()
    print(f"sweep {plan.name!r}: up to {n_grid} runs in its grids (before checks and de-duplication)")
    sys.stdout.flush()
    n_runs = n_done = 0
    flushed_at = -math.inf
    write = sys.stdout.write  # buffered; flushed below
    try:
        for spec in plan.runs():
            mark = "done" if spec.run_id in done else "todo"
            n_runs += 1
            n_done += mark == "done"
            write(_listing_line(spec, mark) + "\n")
            now = time.monotonic()
            if now - flushed_at >= _FLUSH_EVERY_S:  # the first line at once, then a few times a second
                sys.stdout.flush()
                flushed_at = now
        print(f"{n_runs} runs in sweep {plan.name!r}: {n_done} already done, {n_runs - n_done} to run")
        sys.stdout.flush()
    except SweepError as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`... --dry-run | head`): stop listing, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _out_error(out: Path) -> str | None:
    """Why --out cannot be the sweep's folder (None when it can): not a folder, or not creatable."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is not a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"--out {out}: cannot create the folder: {err.strerror or err}"
    if not os.access(out, os.W_OK):
        return f"--out {out}: the folder is not writable"
    return None


def _summary_line(specs: Sequence[Any], csv_path: Path, elapsed_s: float) -> str:
    """Counts per status of the sweep's runs and how many are still to run (failures apart)."""
    from bench.harness.results import RETRYABLE, STATUSES, latest_rows
    from bench.schema import OVER_BUDGET

    latest = latest_rows(csv_path)
    statuses = [latest[s.run_id]["status"] for s in specs if s.run_id in latest]
    counts = ", ".join(f"{statuses.count(k)} {k}" for k in STATUSES if statuses.count(k))
    failed = sum(statuses.count(k) for k in RETRYABLE)
    todo = len(specs) - len(statuses)
    line = f"finished in {elapsed_s:.1f} s: {counts or 'no rows'}; {todo} run(s) still to run"
    if failed:
        line += f" ({failed} failed: --retry-failed runs them again)"
    if OVER_BUDGET in statuses:
        line += f" ({statuses.count(OVER_BUDGET)} over budget: another --memory-budget runs them again)"
    return line


def main(args: argparse.Namespace) -> int:
    from bench.harness.children import ForkServerDied, SweepInterrupted
    from bench.harness.expand import read_preset, read_sweep
    from bench.harness.launchers import LAUNCHERS, LaunchOptions, SlurmOptions, launch_slurm
    from bench.harness.owner import FolderOwned, own
    from bench.harness.results import WriteError, finished_run_ids
    from bench.harness.specs import SweepError

    try:
        plan = read_preset(args.preset) if args.preset else read_sweep(args.file)
        sweep = None if args.dry_run else plan.load()  # a real sweep checks every run before any starts
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, value in (("--workers", args.workers), ("--max-runs", args.max_runs)):
        if value is not None and value < 1:
            print(f"error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2

    out = Path(args.out)
    csv_path = out / "runs.csv"
    try:
        done = finished_run_ids(
            csv_path, retry_failed=args.retry_failed, memory_budget_bytes=args.memory_budget
        )
    except (OSError, ValueError) as err:
        print(f"error: cannot read {csv_path}: {err}", file=sys.stderr)
        return 2
    if sweep is None:
        return _dry_run(plan, done)
    todo = [s for s in sweep.specs if s.run_id not in done]
    n_done = len(sweep.specs) - len(todo)

    problem = _out_error(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    opts = LaunchOptions(
        memory_budget_bytes=args.memory_budget,
        run_timeout_s=args.run_timeout,
        max_runs=args.max_runs,
        time_budget_s=args.time_budget,
        workers=args.workers,
        show_progress=not args.quiet,
        start=args.start,
    )
    try:
        with own(out) as stale:
            if stale:
                print(f"note: took over {out} from a sweep that is gone ({stale})", file=sys.stderr)
            head = f"sweep {sweep.name!r}: {len(sweep.specs)} runs, {n_done} done, {len(todo)} to run"
            print(f"{head} -> {csv_path}", file=sys.stderr)
            t0 = time.monotonic()
            if args.launcher == "slurm":
                slurm = SlurmOptions(
                    partition=args.partition,
                    time_min=args.time_min,
                    gpus_per_task=args.gpus_per_task,
                    wait=not args.no_wait,
                )
                launch_slurm(todo, str(csv_path), opts, slurm)
                if args.no_wait:
                    return 0
            else:
                LAUNCHERS[args.launcher](todo, str(csv_path), opts)
    except FolderOwned as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepInterrupted as err:
        print(f"interrupted by {err}; a resume runs them again", file=sys.stderr)
        return err.exit_code
    except (WriteError, ForkServerDied) as err:
        print(f"error: {err}; the sweep stopped (rows already in {csv_path} are intact)", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: cannot use --out {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(_summary_line(sweep.specs, csv_path, time.monotonic() - t0), file=sys.stderr)
    return 0
