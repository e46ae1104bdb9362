"""The results CSV (`DIR/runs.csv`): the columns of `bench.schema.COLUMNS` in order, atomic appends,
resumable reads.

Writing: `append_row` takes an exclusive `fcntl.flock` on `runs.csv.lock`, repairs a torn last line
(a line cut by a crash: the file does not end with a newline, so it is truncated back to its last
newline; complete rows are never touched), writes the header if the file is empty, then writes the
row as one line, flushes and fsyncs. Concurrent workers (a local pool, SLURM array jobs on a shared
file system with working flock) therefore never interleave. Every value is written on one physical
line (newlines in messages become " | ").

Older files: a header of `bench.schema.FIRST_COLUMNS` plus a prefix of the later columns (written
before those existed) stays readable, the columns it lacks read as "", and rows appended to it are
written in its own columns (the newer values are not recorded there).

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

from bench.schema import COLUMNS, FIRST_COLUMNS, RETRYABLE, STATUSES


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN: not measured
        return ""
    text = str(value)
    return text.replace("\r\n", " | ").replace("\n", " | ").replace("\r", " | ")


def format_row(row: Mapping[str, Any], columns: tuple[str, ...] = COLUMNS) -> str:
    """One CSV line (with its newline) in `columns` order (COLUMNS, or an older file's prefix of them);
    keys not in COLUMNS raise KeyError."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown result columns {sorted(unknown)}; known: {list(COLUMNS)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_cell(row.get(c)) for c in columns])
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


def _schema_prefix(header: list[str], path: Path) -> tuple[str, ...]:
    """The schema columns a header holds: COLUMNS, or (an older file) FIRST_COLUMNS and a prefix of the
    later ones; anything else raises ValueError."""
    known = tuple(header[: len(COLUMNS)])
    if len(known) < len(FIRST_COLUMNS) or known != COLUMNS[: len(known)]:
        raise ValueError(f"{path}: header does not match the run-row schema; expected {list(COLUMNS)}")
    return known


def _file_columns(fd: int, path: Path) -> tuple[str, ...]:
    """The schema columns of the header of a non-empty file (caller holds the lock)."""
    head = b""
    while b"\n" not in head and (block := os.pread(fd, 65536, len(head))):
        head += block
    return _schema_prefix(next(csv.reader([head.split(b"\n", 1)[0].decode()]), []), path)


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one row atomically (lock, repair torn tail, header if empty, write, fsync). A file with an
    older header (fewer columns) gets the row in its own columns, so every line keeps the header's width."""
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
            elif (columns := _file_columns(fd, path)) != COLUMNS:
                data = format_row(row, columns).encode()
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
    absent = dict.fromkeys(COLUMNS[len(_schema_prefix(header, path)) :], "")  # an older file lacks these
    width = len(header)
    return [absent | dict(zip(header, fields, strict=True)) for fields in reader if len(fields) == width]


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
