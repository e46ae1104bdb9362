"""The results CSV (`DIR/runs.csv`): exact column order, atomic appends, resumable reads.

Writing: `append_row` takes an exclusive `fcntl.flock` on `runs.csv.lock`, repairs a torn last line
(a line cut by a crash: the file does not end with a newline, so it is truncated back to its last
newline; complete rows are never touched), writes the header if the file is empty, then writes the
row as one line, flushes and fsyncs. Concurrent workers (a local pool, SLURM array jobs on a shared
file system with working flock) therefore never interleave. Every value is written on one physical
line (newlines in messages become " | ").

Reading: `read_rows` ignores a torn last line and rows with the wrong number of fields. Several rows
may share a run_id (a retried failure appends a new row): readers take the last row per run_id
(`latest_rows`).

Resuming: a sweep skips every run_id already present, whatever its status. With `retry_failed`,
run_ids whose latest row is `error` or `timeout` are run again (their new row is appended); `ok`,
`oom` and `diverged` are results, never retried.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COLUMNS: tuple[str, ...] = (
    "run_id", "status", "error", "part", "task", "model", "n_iters", "reg_depth", "reg_width", "solver",
    "tol", "max_iter", "backward", "batch_size", "image_size", "steps", "seed", "lr", "params",
    "tracked_peak_bytes", "saved_bytes", "param_bytes", "grad_bytes", "optimizer_bytes", "operator_bytes",
    "cuda_peak_bytes", "cuda_reserved_bytes", "step_ms_median", "step_ms_iqr", "train_s", "psnr_db", "ssim",
    "fwd_iters_mean", "bwd_iters_mean", "final_residual_max", "converged_frac", "device", "torch_version",
    "cuda_version", "git_sha", "timestamp", "model_extra",
    "nvml_device_name", "nvml_driver_version", "nvml_process_used_bytes", "nvml_used_bytes", "nvml_status",
)  # fmt: skip

STATUSES: tuple[str, ...] = ("ok", "oom", "diverged", "error", "timeout")
#: Statuses that `retry_failed` runs again (the others are results of the configuration).
RETRYABLE: frozenset[str] = frozenset({"error", "timeout"})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN: not measured
        return ""
    text = str(value)
    return text.replace("\r\n", " | ").replace("\n", " | ").replace("\r", " | ")


def format_row(row: Mapping[str, Any]) -> str:
    """One CSV line (with its newline) in COLUMNS order; unknown keys raise KeyError."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown result columns {sorted(unknown)}; known: {list(COLUMNS)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in COLUMNS])
    return buf.getvalue()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<path>.lock` (created beside the CSV)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _repair_torn_tail(fd: int) -> None:
    """Truncate a file not ending with a newline back to its last newline (caller holds the lock)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) == b"\n":
        return
    pos = size
    chunk = 4096
    while pos > 0:
        start = max(0, pos - chunk)
        block = os.pread(fd, pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            os.ftruncate(fd, start + nl + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def repair(path: str | Path) -> None:
    """Drop a torn last line of `path` under the lock (a no-op for a missing or clean file)."""
    path = Path(path)
    if not path.exists():
        return
    with locked(path):
        fd = os.open(path, os.O_RDWR)
        try:
            _repair_torn_tail(fd)
        finally:
            os.close(fd)


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row atomically (lock, repair torn tail, header if empty, write, fsync)."""
    path = Path(path)
    line = format_row(row).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _repair_torn_tail(fd)
            data = line
            if os.fstat(fd).st_size == 0:
                data = (",".join(COLUMNS) + "\n").encode() + line
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All complete rows, in file order; a torn last line or a malformed row is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header[: len(COLUMNS)]) != COLUMNS:
        raise ValueError(f"{path}: header does not match the run-row schema; expected {list(COLUMNS)}")
    return [dict(zip(header, fields, strict=True)) for fields in reader if len(fields) == len(header)]


def latest_rows(path: str | Path) -> dict[str, dict[str, str]]:
    """run_id -> its last row (retries append, so the last one wins)."""
    return {row["run_id"]: row for row in read_rows(path)}


def finished_run_ids(path: str | Path, *, retry_failed: bool = False) -> set[str]:
    """run_ids a sweep should skip: all present, or with retry_failed all but error/timeout."""
    return {
        run_id
        for run_id, row in latest_rows(path).items()
        if not (retry_failed and row["status"] in RETRYABLE)
    }
