"""Learning curves (`DIR/curves.csv`, beside `runs.csv`): one row per curve point of a trained run.

Columns (`CURVE_COLUMNS`): ``run_id, step, train_loss, val_psnr_db, elapsed_s, lr`` (``val_psnr_db``
empty where the point has no validation; ``elapsed_s`` is training wall time, validations included).

Writing uses the run CSV's lock and torn-line repair (bench/harness/results.py): `write_curve` takes
the exclusive flock on `curves.csv.lock`, drops a torn last line, and then

- if the file already holds rows of this run_id (a run re-done after a failure or after a sweep was
  killed between its curve and its run row), rewrites the file without them (a temporary file,
  fsynced, renamed over the old one: readers see the old or the new file, never half of one);
- appends the header if the file is empty and all the run's points in one write, then fsyncs.

The launchers write a run's curve *before* its run row, so a run with a row in `runs.csv` has its
whole curve, and a run without one has at most a partial curve that its next attempt replaces. A
resumed sweep therefore never duplicates or loses curve rows.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.harness.results import _cell, _repair_torn_tail, locked
from bench.schema import CURVE_COLUMNS

CURVES_FILE = "curves.csv"


def curve_rows(run_id: str, points: Iterable[Any]) -> list[dict[str, Any]]:
    """Rows for `write_curve` from `bench.harness.train.CurvePoint`s (or any objects/dicts with
    the fields step, train_loss, val_psnr_db, elapsed_s, lr)."""
    rows = []
    for p in points:
        get = p.get if isinstance(p, dict) else lambda k, p=p: getattr(p, k)
        rows.append({"run_id": run_id, **{k: get(k) for k in CURVE_COLUMNS[1:]}})
    return rows


def _format(rows: Sequence[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for row in rows:
        unknown = set(row) - set(CURVE_COLUMNS)
        if unknown:
            raise KeyError(f"unknown curve columns {sorted(unknown)}; known: {list(CURVE_COLUMNS)}")
        writer.writerow([_cell(row.get(c)) for c in CURVE_COLUMNS])
    return buf.getvalue().encode()


def _rewrite_without(path: Path, run_id: str) -> None:
    """Replace ``path`` by a copy without the rows of ``run_id`` (caller holds the lock)."""
    lines = path.read_bytes().splitlines(keepends=True)
    prefix = run_id.encode() + b","
    kept = [line for i, line in enumerate(lines) if i == 0 or not line.startswith(prefix)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"".join(kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_curve(path: str | Path, run_id: str, points: Iterable[Any]) -> None:
    """Make ``points`` the curve of ``run_id`` in ``path`` (replacing any earlier rows of it; an empty
    ``points`` just removes them). Locked and atomic, see the module docstring."""
    path = Path(path)
    data = _format(curve_rows(run_id, points))
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _repair_torn_tail(fd)
            if any(r["run_id"] == run_id for r in read_curves(path)):
                os.close(fd)
                fd = -1
                _rewrite_without(path, run_id)
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            if not data:
                return
            if os.fstat(fd).st_size == 0:
                data = (",".join(CURVE_COLUMNS) + "\n").encode() + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)


def read_curves(path: str | Path) -> list[dict[str, str]]:
    """All complete curve rows in file order; a torn last line or a malformed row is skipped."""
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
    if tuple(header) != CURVE_COLUMNS:
        raise ValueError(f"{path}: header does not match the curve schema; expected {list(CURVE_COLUMNS)}")
    return [dict(zip(header, fields, strict=True)) for fields in reader if len(fields) == len(header)]
