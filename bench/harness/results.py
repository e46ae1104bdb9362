"""The results CSVs (`DIR/runs.csv`, the columns of `bench.schema.COLUMNS` in order, and any table
written the same way): checked atomic appends, one reader.

Writing: `append_row` (and `append_record` for any column list) takes an exclusive `fcntl.flock` on
`<file>.lock`, repairs a torn last line (a line cut by a crash: the file does not end with a newline,
so it is truncated back to its last newline; complete rows are never touched), writes the header if
the file is empty, then writes the row as one line and fsyncs. Every write is checked: a short write
is continued until the whole line is down, and a write that fails (a full disk, an I/O error) raises
`WriteError` naming the file and the cause after truncating the file back to its size before the
append, so the rows already there stay whole. Concurrent workers (a local pool, SLURM array jobs on a
shared file system with working flock) therefore never interleave. Every value is written on one
physical line (newlines in messages become " | "). A table whose header has extra columns after the
schema's (allowed: "extra columns may follow") gets rows padded with empty cells to its width. A table
written before columns were added to the schema (its header lacks some of `LATER_COLUMNS`) is upgraded
before the append, so an older sweep folder resumes: under the lock, every row is rewritten under
the current header (the new columns empty, extra trailing columns kept after them) into a temporary
file beside it, fsynced, and renamed over the table: a reader sees the old table or the new one,
never a mix, and a failure (a full disk) leaves the old table as it was.

Reading: `read_table` is the one reader of these files, for every consumer (sweeps resuming, plots,
reports): the bytes must be UTF-8 (else ValueError naming the file, line and byte), the header must
hold the schema's columns, a torn last line is dropped with a `TornLineWarning`, rows may carry the
extra trailing columns the header names (or omit them), and a malformed row is dropped with a
warning naming its line. `read_rows` is `read_table` for `runs.csv`. Several rows may share a run_id
(a retried failure appends a new row): readers take the last row per run_id (`latest_rows`).

Resuming: a sweep skips every run_id already present, whatever its status, with one exception: a
row with status `over_budget` is a verdict of the --memory-budget it was checked against (its
`memory_budget_bytes`), so a sweep with another budget, or none, runs it again; the same budget
skips it (a table written before that status recorded such a refusal as `oom` with "would not fit:
estimated ...": it is evaluated again too). With `retry_failed`, run_ids whose latest row is
`error` or `timeout` are run again (their new row is appended); `ok`, `oom` and `diverged` are
results, never retried.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.schema import COLUMNS, LATER_COLUMNS, OVER_BUDGET, RETRYABLE, STATUSES


class WriteError(OSError):
    """A results file could not be written (full disk, I/O error); the message names the file and cause."""


class TornLineWarning(UserWarning):
    """A table's last line was cut (no final newline) and was not read."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN: not measured
        return ""
    text = str(value)
    return text.replace("\r\n", " | ").replace("\n", " | ").replace("\r", " | ")


def format_record(row: Mapping[str, Any], columns: Sequence[str], width: int | None = None) -> str:
    """One CSV line (with its newline) in `columns` order, padded with empty cells to `width` fields;
    unknown keys raise KeyError."""
    unknown = set(row) - set(columns)
    if unknown:
        raise KeyError(f"unknown result columns {sorted(unknown)}; known: {list(columns)}")
    cells = [_cell(row.get(c)) for c in columns]
    cells += [""] * ((width or 0) - len(cells))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def format_row(row: Mapping[str, Any]) -> str:
    """One run-row line in COLUMNS order; unknown keys raise KeyError, an unknown status ValueError."""
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
    return format_record(row, COLUMNS)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<path>.lock` (created beside the CSV)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise WriteError(err.errno, f"cannot open the lock file {lock_path}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write continues); a write of 0 bytes is ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


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


def _header(fd: int) -> list[str]:
    """The first line of the file as CSV fields ([] for an empty file)."""
    head = b""
    while b"\n" not in head:
        block = os.pread(fd, 65536, len(head))
        if not block:
            break
        head += block
    line = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return next(csv.reader([line]), []) if line else []


def upgraded_header(
    header: Sequence[str], columns: Sequence[str], optional: Sequence[str]
) -> list[str] | None:
    """The header a table should have to take rows of `columns`, when it differs from `header` only by
    missing `optional` columns (extra trailing columns kept after the schema's); None when `header`
    needs no upgrade or cannot be upgraded (the append then refuses it)."""
    header = [h.strip() for h in header]
    known = [h for h in header if h in columns]
    extras = [h for h in header if h not in columns]
    missing = [c for c in columns if c not in known]
    if not missing or header != known + extras or known != [c for c in columns if c in known]:
        return None
    if any(c not in optional for c in missing):
        return None
    return [*columns, *extras]


def _upgrade_header(path: Path, columns: Sequence[str], optional: Sequence[str]) -> None:
    """Rewrite `path` under the upgraded header (caller holds the lock); a no-op when none is needed."""
    if not optional or not path.exists() or path.stat().st_size == 0:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        target = upgraded_header(_header(fd), columns, optional)  # the first line only: every append
    finally:
        os.close(fd)
    if target is None:
        return
    text = path.read_bytes().decode("utf-8", errors="strict")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last line: repaired on append anyway
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    lines = [",".join(target) + "\n"]
    for fields in reader:
        if len(fields) > len(header):
            raise ValueError(f"{path}: line {reader.line_num} has more fields than its header; not upgraded")
        cells = dict(zip(header, fields + [""] * (len(header) - len(fields)), strict=True))
        lines.append(format_record({h.strip(): v for h, v in cells.items()}, target))
    tmp = path.with_name(path.name + ".upgrade.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, "".join(lines).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(err.errno, f"cannot upgrade the header of {path}: {err.strerror or err}") from None


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


def append_record(
    path: str | Path, row: Mapping[str, Any], columns: Sequence[str], optional: Sequence[str] = ()
) -> None:
    """Append one row of a table with `columns` atomically (lock, repair a torn tail, upgrade a header
    that lacks only `optional` columns, header if empty, checked write, fsync). Raises WriteError (file
    and cause) when the row could not be written; the file is then truncated back to its size before
    the append."""
    path = Path(path)
    line = format_record(row, columns).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(err.errno, f"cannot create the folder of {path}: {err.strerror}") from None
    with locked(path):
        _upgrade_header(path, columns, optional)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WriteError(err.errno, f"cannot open {path} for writing: {err.strerror}") from None
        try:
            _append_locked(fd, path, row, line, columns)
        finally:
            os.close(fd)


def _append_locked(fd: int, path: Path, row: Mapping[str, Any], line: bytes, columns: Sequence[str]) -> None:
    size = 0
    try:
        _repair_torn_tail(fd)
        size = os.fstat(fd).st_size
        if size == 0:
            data = (",".join(columns) + "\n").encode() + line
        else:
            header = _header(fd)
            if tuple(header[: len(columns)]) != tuple(columns):
                raise ValueError(
                    f"{path}: its header does not start with the columns of this table; refusing to append"
                    f" (expected {list(columns)}, found {header})"
                )
            data = line if len(header) == len(columns) else format_record(row, columns, len(header)).encode()
        os.lseek(fd, size, os.SEEK_SET)
        write_all(fd, data)
        os.fsync(fd)
    except OSError as err:
        try:
            os.ftruncate(fd, size)  # the rows already there stay whole
        except OSError:
            pass
        raise WriteError(err.errno, f"cannot write a row to {path}: {err.strerror or err}") from None


def append_row(path: str | Path, row: Mapping[str, Any]) -> None:
    """Append one run row to `runs.csv` (see `append_record`); an unknown status raises ValueError."""
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
    append_record(path, row, COLUMNS, LATER_COLUMNS)


def read_table(
    path: str | Path, columns: Sequence[str] = COLUMNS, optional: Sequence[str] = ()
) -> list[dict[str, str]]:
    """All complete rows of a table written by `append_record`, in file order ([] without a file).

    The header must contain every name in `columns` (extra columns may follow; rows may omit them);
    a torn last line is dropped with a TornLineWarning, a row with more fields than the header or
    fewer than `columns` is dropped with a warning naming its line. Bytes that are not UTF-8 raise
    ValueError naming the file, line and byte offset.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}: line {line_no} is not UTF-8 (byte {data[err.start]:#04x} at offset {err.start});"
            " the table must be UTF-8 text"
        ) from None
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        warnings.warn(
            f"{path}: dropped a torn last line (no final newline, {len(text) - cut} characters): "
            f"{text[cut:cut + 60]!r}",
            TornLineWarning,
            stacklevel=2,
        )
        text = text[:cut]
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header:
        return []
    missing = [c for c in columns if c not in header and c not in optional]
    if missing:
        raise ValueError(
            f"{path} lacks required column(s): {', '.join(missing)}; the table has the {len(columns)} "
            f"columns {', '.join(columns)} (extra columns may follow)"
        )
    absent = {c: "" for c in columns if c not in header}  # optional columns of a newer schema
    known = sum(h in columns for h in header)  # the schema's columns come first, extras follow
    rows = []
    for fields in reader:
        if len(header) >= len(fields) >= known:
            padded = fields + [""] * (len(header) - len(fields))
            rows.append({**absent, **dict(zip(header, padded, strict=True))})
        else:
            warnings.warn(
                f"{path}: dropped line {reader.line_num}: {len(fields)} fields, expected {len(header)}",
                stacklevel=2,
            )
    return rows


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """All complete run rows of `runs.csv`, in file order (see `read_table`); columns added to the
    schema later (`bench.schema.LATER_COLUMNS`) are empty in tables written before them."""
    return read_table(path, COLUMNS, LATER_COLUMNS)


def latest_rows(path: str | Path) -> dict[str, dict[str, str]]:
    """run_id -> its last row (retries append, so the last one wins)."""
    return {row["run_id"]: row for row in read_rows(path)}


def _budget_of(row: Mapping[str, str]) -> int | None:
    """A row's ``memory_budget_bytes``: None when empty (tables written before the column) or not a
    number, so such an ``over_budget`` row is evaluated again rather than trusted."""
    try:
        return int(float((row.get("memory_budget_bytes") or "").strip()))
    except (ValueError, OverflowError):
        return None


#: How tables written before the `over_budget` status recorded a budget refusal: status oom, this error.
_OLD_BUDGET_REFUSAL = "would not fit: estimated"


def finished_run_ids(
    path: str | Path, *, retry_failed: bool = False, memory_budget_bytes: int | None = None
) -> set[str]:
    """run_ids a sweep with `memory_budget_bytes` (None: no budget) should skip: all present, but an
    `over_budget` row only when its recorded budget is this same budget, and with retry_failed none
    whose latest row is error/timeout."""
    done = set()
    for run_id, row in latest_rows(path).items():
        if retry_failed and row["status"] in RETRYABLE:
            continue
        if row["status"] == "oom" and row.get("error", "").startswith(_OLD_BUDGET_REFUSAL):
            continue  # an older table's budget refusal (recorded as oom, its budget not kept)
        if row["status"] == OVER_BUDGET:
            budget = _budget_of(row)
            if budget is None or budget != memory_budget_bytes:
                continue  # a verdict of another budget (or of one not recorded): evaluated again
        done.add(run_id)
    return done
