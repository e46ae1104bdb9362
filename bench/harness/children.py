"""A run's own process: how it starts, how it ends, and the guard that ties every run to its sweep.

Each run is a fresh process in its own process group (so that stopping a run ends everything it
started), asked to die with its parent (Linux `PR_SET_PDEATHSIG`: a forked run's parent is the fork
server, which exits with the sweep, so even a SIGKILLed sweep leaves no run behind). Two ways to start
it (`STARTERS`): "forkserver" forks it from a multiprocessing fork server that imported the heavy
modules once (`PRELOAD`), "subprocess" runs `python -m bench _run-one` in a new interpreter.

`RunGuard` is what a sweep holds while it runs: SIGTERM or SIGINT set its `signum`, and every live
run's process group is killed at once; `admit` refuses to start a run after that. The launchers then
write nothing for the killed runs (a resume re-runs them) and raise `SweepInterrupted`.

The child writes its row to a JSON file; a child that cannot (a full disk) exits with
`ROW_WRITE_FAILED` after printing the cause to its log, and the parent reports that as a write failure
of the harness rather than as a failed run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
#: Exit code of a run process that could not write its row file (the cause is in its log).
ROW_WRITE_FAILED = 3
_PR_SET_PDEATHSIG = 1

#: Modules the fork server imports once, so that each run's process starts in a fraction of a second
#: instead of re-importing torch, torch._dynamo (pulled in by the memory tracker's dispatch mode) and
#: torchmetrics (seconds on a small CPU). Importing them does not initialise CUDA.
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


class SweepInterrupted(Exception):
    """The sweep got SIGTERM or SIGINT: no run was started after it and the live ones were ended."""

    def __init__(self, signum: int, stopped: list[str]) -> None:
        self.signum, self.stopped = signum, stopped
        name = signal.Signals(signum).name
        runs = ", ".join(stopped) if stopped else "none"
        super().__init__(f"{name}: stopped the run(s) in progress ({runs}); nothing was written for them")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ForkServerDied(RuntimeError):
    """The fork server that starts the runs died; runs can no longer be started or trusted."""


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def death_text(code: int) -> str:
    """How a run process that wrote no row ended, in words: its exit code, or the signal that killed
    it by name (and, for SIGKILL, that this is what the out-of-memory killer sends)."""
    if code >= 0:
        return f"process exited with code {code} without writing its row"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    text = f"process killed by {name} (signal {-code}) before writing its row"
    if -code == signal.SIGKILL:
        text += "; SIGKILL is what the kernel's out-of-memory killer sends (see `dmesg`)"
    return text


def curve_path_of(row_path: Path) -> Path:
    """Where a run's child leaves its learning curve, beside its row: `rows/<run_id>.curve.json`."""
    return row_path.with_name(row_path.stem + ".curve.json")


def write_child_result(row_path: Path, row: Mapping[str, Any], curve: Sequence[Any]) -> None:
    """Write the curve, then the row, each atomically (the parent sees a whole row or none, and a
    row means its curve is there). On failure print the cause and exit with ROW_WRITE_FAILED."""
    from bench.harness.curves import curve_rows

    for path, payload in ((curve_path_of(row_path), curve_rows(str(row["run_id"]), curve)), (row_path, row)):
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, path)
        except OSError as err:
            print(f"cannot write the row file {tmp}: {err.strerror or err}", file=sys.stderr, flush=True)
            sys.exit(ROW_WRITE_FAILED)


def log_progress_to_stdout() -> None:
    """Send the harness's INFO lines (training progress) to this process's stdout: a run's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True)


def _child_main(
    spec_json: str, row_path: str, log_path: str, memory_budget_bytes: int | None, env: dict[str, str]
) -> None:
    """Body of a forked run process: own group, log to log_path, apply env, run, write the row."""
    os.setpgid(0, 0)
    die_with_parent()
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)  # before anything touches CUDA (CUDA_VISIBLE_DEVICES)
    log_progress_to_stdout()
    from bench.harness.run import run_with_curve
    from bench.harness.specs import spec_from_json

    row, curve = run_with_curve(spec_from_json(spec_json), memory_budget_bytes=memory_budget_bytes)
    write_child_result(Path(row_path), row, curve)


class Child:
    """A started run process: `wait(timeout)` -> exit code (negative: killed by that signal) or None
    while it runs; `kill()` SIGKILLs its whole process group; `lost()` says whether the process that
    reports its exit (the fork server) is gone."""

    def __init__(
        self, pid: int, wait: Callable[[float | None], int | None], lost: Callable[[], bool] = lambda: False
    ) -> None:
        self.pid, self.wait, self.lost = pid, wait, lost

    def kill(self) -> None:
        for kill in (os.killpg, os.kill):  # the group; the pid itself if it has no group of its own yet
            try:
                kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _forkserver_gone(settle_s: float = 2.0) -> bool:
    """Whether the fork server has exited. Asked after a run "exited 255", which is also what
    multiprocessing reports when the server's pipe closed: a dying server closes its pipe an instant
    before it becomes a zombie, so its state is looked at for up to `settle_s` before answering no."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return False
    deadline = time.monotonic() + settle_s
    while True:
        try:  # WNOWAIT: look without reaping, multiprocessing reaps it itself
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _start_forkserver(
    spec_json: str, row_path: Path, log_path: Path, memory_budget_bytes: int | None, env: Mapping[str, str]
) -> Child:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    proc = ctx.Process(
        target=_child_main,
        args=(spec_json, str(row_path), str(log_path), memory_budget_bytes, dict(env)),
        name="bench-run",
    )
    proc.start()
    assert proc.pid is not None  # started

    def wait(timeout: float | None) -> int | None:
        proc.join(timeout)
        return proc.exitcode

    return Child(proc.pid, wait, _forkserver_gone)


def _start_subprocess(
    spec_json: str, row_path: Path, log_path: Path, memory_budget_bytes: int | None, env: Mapping[str, str]
) -> Child:
    cmd = [sys.executable, "-m", "bench", "_run-one", "--spec-json", spec_json, "--row-out", str(row_path)]
    if memory_budget_bytes is not None:
        cmd += ["--memory-budget", str(memory_budget_bytes)]
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH")) if p)
    child_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=_REPO_ROOT, process_group=0
        )

    def wait(timeout: float | None) -> int | None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return Child(proc.pid, wait)


#: How a run's fresh process is started: "forkserver" (default: forked from a server that has the
#: heavy modules imported, well under a second) or "subprocess" (`python -m bench _run-one`, a new
#: interpreter, several seconds of imports). Both give a new process with its own CUDA context.
STARTERS: dict[str, Callable[..., Child]] = {
    "forkserver": _start_forkserver,
    "subprocess": _start_subprocess,
}


class RunGuard:
    """The live runs of a sweep; on SIGTERM/SIGINT (or `stop`) they are killed and no more start."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped: list[str] = []
        self._live: dict[str, Child] = {}
        self._lock = threading.Lock()

    def admit(self, run_id: str, child: Child) -> bool:
        """Register a started run; False (and the run killed) when the sweep is already stopping."""
        with self._lock:
            if self.signum is not None:
                child.kill()
                self.stopped.append(run_id)
                return False
            self._live[run_id] = child
            return True

    def release(self, run_id: str) -> None:
        with self._lock:
            self._live.pop(run_id, None)

    def may_start(self) -> bool:
        return self.signum is None

    def was_stopped(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self.stopped

    def stop(self, signum: int) -> None:
        """Stop starting runs and kill the live ones (their process groups)."""
        with self._lock:
            if self.signum is None:
                self.signum = signum
            for run_id, child in self._live.items():
                child.kill()
                self.stopped.append(run_id)
            self._live.clear()

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum  # no run starts from now on
        threading.Thread(target=self.stop, args=(signum,), daemon=True).start()  # never block a handler

    @contextmanager
    def installed(self) -> Iterator[RunGuard]:
        """SIGTERM and SIGINT call `stop` while inside (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def raise_if_stopped(self) -> None:
        if self.signum is not None:
            raise SweepInterrupted(self.signum, sorted(set(self.stopped)))
