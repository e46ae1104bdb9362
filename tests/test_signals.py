"""The sweep owns its runs: SIGTERM/SIGINT end the run in progress (its process group) with no row and
one line, a dead fork server stops the sweep, and one sweep at a time owns an output folder.

The slow run is the "hang" fault, which prints its pid to its log and waits until a release file
exists: the tests synchronise on that log line and on the release file, never on time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli
from bench.harness.expand import load_sweep
from bench.harness.faults import HANG_RELEASE_ENV
from bench.harness.owner import OWNER_FILE
from bench.harness.results import read_rows

REPO = Path(__file__).resolve().parents[1]
TINY = (
    'task = "deblur"\nmodel = "classical"\nmethod = "adjoint"\nimage_size = 16\nbatch_size = 1\n'
    'n_train = 2\nn_test = 1\nwarmup_steps = 1\ntimed_steps = 1\ndevice = "cpu"\ncpu_threads = 1\n'
)
#: Three runs: a quick one, the slow one, a quick one (expansion keeps this order).
GRIDS = '[[grid]]\nseed = 1\n[[grid]]\nseed = 2\ninject = "hang"\n[[grid]]\nseed = 3\n'


def _sweep_file(tmp_path: Path) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f"[sweep]\nname = 's'\n[defaults]\n{TINY}{GRIDS}")
    return path


def _start(sweep: Path, out: Path, release: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **{HANG_RELEASE_ENV: str(release)})
    cmd = [sys.executable, "-m", "bench", "sweep", str(sweep), "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _hanging_pid(proc: subprocess.Popen[str], log: Path) -> int:
    """Wait until the slow run has printed its pid (or the sweep ended); return that pid."""
    deadline = time.monotonic() + 300  # a safety net for a broken sweep, not a timing assertion
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"injected hang: pid (\d+)", log.read_text() if log.exists() else "")
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the slow run never started; sweep stderr: {proc.communicate()[1]}")


def _gone(pid: int) -> bool:
    """No such process (or only a zombie about to be reaped: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _resume_completes_every_run_once(sweep: Path, out: Path, release: Path) -> None:
    release.write_text("")
    proc = _start(sweep, out, release)
    assert proc.wait(timeout=600) == 0, proc.communicate()[1]
    rows = read_rows(out / "runs.csv")
    ids = [r["run_id"] for r in rows]
    assert sorted(ids) == sorted(s.run_id for s in load_sweep(sweep).specs)  # each exactly once
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [(signal.SIGTERM, False, 143), (signal.SIGINT, False, 130), (signal.SIGINT, True, 130)],
    ids=["sigterm", "sigint", "ctrl-c-to-group"],
)
def test_signal_ends_the_run_in_progress_writes_nothing_for_it_and_resume_completes(
    tmp_path: Path, signum: int, to_group: bool, code: int
) -> None:
    sweep, out, release = _sweep_file(tmp_path), tmp_path / "out", tmp_path / "release"
    first, slow, third = load_sweep(sweep).specs
    proc = _start(sweep, out, release)
    pid = _hanging_pid(proc, out / "logs" / f"{slow.run_id}.log")
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("interrupted")]
    assert signal.Signals(signum).name in line and slow.run_id in line
    assert _gone(pid)  # the slow run did not outlive its sweep
    assert [r["run_id"] for r in read_rows(out / "runs.csv")] == [first.run_id]  # none for slow, third
    assert not (out / "rows" / f"{slow.run_id}.json").exists()
    _resume_completes_every_run_once(sweep, out, release)


def test_a_dead_fork_server_fails_the_sweep_loudly(tmp_path: Path) -> None:
    sweep, out, release = _sweep_file(tmp_path), tmp_path / "out", tmp_path / "release"
    first, slow, third = load_sweep(sweep).specs
    proc = _start(sweep, out, release)
    pid = _hanging_pid(proc, out / "logs" / f"{slow.run_id}.log")
    server = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the run's parent
    assert server != proc.pid
    os.kill(server, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "the fork server that starts the runs died" in err
    assert "Traceback" not in err
    assert _gone(pid)  # the run died with its fork server (parent-death signal)
    assert [r["run_id"] for r in read_rows(out / "runs.csv")] == [first.run_id]  # nothing mislabelled
    _resume_completes_every_run_once(sweep, out, release)


def test_second_sweep_on_a_folder_refuses_and_a_dead_owner_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, out, release = _sweep_file(tmp_path), tmp_path / "out", tmp_path / "release"
    slow = load_sweep(sweep).specs[1]
    proc = _start(sweep, out, release)
    _hanging_pid(proc, out / "logs" / f"{slow.run_id}.log")
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another sweep (pid {proc.pid} " in err
    release.write_text("")  # the owner finishes its runs, each once
    assert proc.wait(timeout=600) == 0
    assert len(read_rows(out / "runs.csv")) == 3
    # A stale owner file (its sweep died without cleaning up, e.g. SIGKILL) is taken over.
    (out / OWNER_FILE).write_text("pid=999999 host=elsewhere started=2000-01-01T00:00:00\n")
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "took over" in err and "pid 999999" in err
    assert (out / OWNER_FILE).read_text() == ""  # released on exit
