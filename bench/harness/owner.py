"""One sweep per output folder: `own(out_dir)` holds `DIR/sweep.owner` while a sweep writes there.

The owner file holds an exclusive, non-blocking `fcntl.flock` for the sweep's whole life and the
owner's pid, host and start time as text. A second sweep on the same folder finds the lock taken and
raises `FolderOwned` naming the owner's pid (the CLI exits 2): two sweeps would otherwise both run
every run not yet in `runs.csv`. The kernel drops the lock when its holder dies however it dies
(SIGKILL included), so a stale owner file (a dead pid) is simply taken over, and `own` reports whom it
took over from. (flock must work on the folder's file system, as for `runs.csv` itself.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_FILE = "sweep.owner"


class FolderOwned(RuntimeError):
    """Another live sweep owns the output folder."""


def _describe(text: str) -> str:
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    return f"pid {fields.get('pid', '?')} on {fields.get('host', '?')}, started {fields.get('started', '?')}"


@contextmanager
def own(out_dir: str | Path) -> Iterator[str | None]:
    """Own `out_dir` for the duration; yields a description of a dead owner taken over, else None."""
    path = Path(out_dir) / OWNER_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 4096, 0).decode(errors="replace")
            raise FolderOwned(
                f"{out_dir} is in use by another sweep ({_describe(owner)}); wait for it to finish, "
                f"stop it, or use another --out"
            ) from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()} started={stamp}\n".encode(), 0)
        try:
            yield _describe(previous) if previous else None
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no owner behind
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
