"""Sweep robustness: atomic CSV appends, torn lines, kill and resume, injected faults, timeouts, submitit.

Every run of a sweep is a fresh process (forked from a fork server that imported torch once; the
server itself, and the "subprocess" start method, cost several seconds of imports), so these tests
use the tiny learning-free "classical" model and few runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cli
from bench.harness.curves import read_curves
from bench.harness.expand import load_preset, load_sweep
from bench.harness.launchers import (
    LaunchOptions,
    SlurmOptions,
    _Budget,
    launch_slurm,
    run_in_fresh_process,
    visible_gpus,
)
from bench.harness.results import COLUMNS, append_row, finished_run_ids, latest_rows, locked, read_rows
from bench.harness.specs import RunSpec, spec_columns, spec_to_json

REPO = Path(__file__).resolve().parents[1]
TINY = (
    'task = "deblur"\nmodel = "classical"\nmethod = "adjoint"\nimage_size = 16\nbatch_size = 1\n'
    'n_train = 2\nn_test = 1\nwarmup_steps = 1\ntimed_steps = 1\ndevice = "cpu"\ncpu_threads = 1\n'
)


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # children start faster on a busy 2-core machine


def _row(run_id: str, status: str = "ok", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "run_id": run_id,
        "status": status,
        "error": "",
        "task": "deblur",
        "model": "lu",
    }
    row.update(kw)
    return row


# ----------------------------------------------------------------------------- results.csv


def test_torn_last_line_is_ignored_then_repaired_without_losing_rows(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    append_row(csv, _row("a"))
    append_row(csv, _row("b", "error", error="Boom: line one\nline two"))  # newline kept on one line
    with open(csv, "a") as f:
        f.write("c,ok,,,deblur,lu,3")  # a crash mid-line
    assert [r["run_id"] for r in read_rows(csv)] == ["a", "b"]
    assert finished_run_ids(csv) == {"a", "b"}
    assert finished_run_ids(csv, retry_failed=True) == {"a"}
    append_row(csv, _row("d"))
    lines = csv.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert [line.split(",")[0] for line in lines[1:]] == ["a", "b", "d"]
    assert read_rows(csv)[1]["error"] == "Boom: line one | line two"
    # A retried run appends a row; readers take the last one.
    append_row(csv, _row("b", "ok"))
    assert latest_rows(csv)["b"]["status"] == "ok" and len(read_rows(csv)) == 4


def test_header_only_written_once_and_unknown_columns_rejected(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    csv.write_text(",".join(COLUMNS)[:20])  # torn header: repaired to an empty file, header rewritten
    append_row(csv, _row("a"))
    assert csv.read_text().count("run_id") == 1 and len(read_rows(csv)) == 1
    with pytest.raises(KeyError, match="psnr"):
        append_row(csv, _row("b", psnr=3.0))
    with pytest.raises(ValueError, match="status"):
        append_row(csv, _row("b", "fine"))


def _append_many(csv: str, worker: int, n: int) -> None:
    for i in range(n):
        append_row(csv, _row(f"w{worker}-{i}", error="x" * 5000))  # long lines: > one pipe buffer


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    csv = str(tmp_path / "runs.csv")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(csv, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    rows = read_rows(csv)
    assert len(rows) == 160 and len({r["run_id"] for r in rows}) == 160
    assert all(r["error"] == "x" * 5000 for r in rows)


def test_time_budget_stops_starting_runs() -> None:
    budget = _Budget(max_runs=None, time_budget_s=10.0)
    budget.start_s -= 6.0  # 6 s elapsed
    budget.durations_s = [3.0]
    assert budget.may_start()  # 6 + 3 <= 10
    budget.durations_s = [5.0]
    assert not budget.may_start()  # 6 + 5 > 10
    capped = _Budget(max_runs=2, time_budget_s=None)
    capped.started = 2
    assert not capped.may_start()


# ----------------------------------------------------------------------------- runs in fresh processes


def _write_sweep(path: Path, grid: str) -> Path:
    path.write_text(f"[sweep]\nname = 't'\n[defaults]\n{TINY}[[grid]]\n{grid}\n")
    return path


def test_visible_gpus_parses_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 2")
    assert visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_faults_give_status_rows_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the pool falls back to --workers CPU workers
    sweep = _write_sweep(tmp_path / "faults.toml", 'inject = ["", "nan", "oom", "crash"]')
    out = tmp_path / "out"
    argv = ["sweep", str(sweep), "--out", str(out), "--quiet", "--launcher", "pool", "--workers", "2"]
    assert cli.main(argv) == 0
    rows = read_rows(out / "runs.csv")
    by_inject = {spec.inject: latest_rows(out / "runs.csv")[spec.run_id] for spec in load_sweep(sweep).specs}
    assert len(rows) == 4
    assert by_inject[""]["status"] == "ok" and float(by_inject[""]["psnr_db"]) > 10
    assert by_inject["nan"]["status"] == "diverged"
    assert by_inject["oom"]["status"] == "oom" and "OutOfMemoryError" in by_inject["oom"]["error"]
    crash = by_inject["crash"]
    assert crash["status"] == "error" and "process killed by SIGKILL (signal 9)" in crash["error"]
    assert "out-of-memory killer" in crash["error"] and "\n" not in crash["error"]
    assert crash["error"].endswith(f"(log: {out / 'logs' / crash['run_id']}.log)")
    assert crash["model"] == "classical" and crash["torch_version"]  # spec columns and stamp filled in
    # Re-running skips every finished run; --retry-failed runs the error row again (a new row).
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert len(read_rows(out / "runs.csv")) == 4
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", "--retry-failed"]) == 0
    rows = read_rows(out / "runs.csv")
    assert len(rows) == 5 and rows[-1]["run_id"] == crash["run_id"] and rows[-1]["status"] == "error"


@pytest.mark.timeout(300)  # a guard: without the kill this test would never end
def test_hang_is_killed_by_run_timeout(tmp_path: Path) -> None:
    spec = RunSpec(
        task="deblur", model="classical", image_size=16, n_train=2, n_test=1, batch_size=1, inject="hang"
    )
    csv = str(tmp_path / "runs.csv")
    row = run_in_fresh_process(spec_to_json(spec), csv, run_timeout_s=6.0, start="subprocess")
    assert row["status"] == "timeout" and "--run-timeout 6 s" in row["error"]
    assert [r["status"] for r in read_rows(tmp_path / "runs.csv")] == ["timeout"]


def _lock_waiters(lock_path: Path) -> set[int]:
    """PIDs blocked on the flock of ``lock_path``: Linux lists blocked requests in /proc/locks after "->"."""
    inode = f":{os.stat(lock_path).st_ino}"
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[1] == "->" and fields[6].endswith(inode):
            waiters.add(int(fields[5]))
    return waiters


@pytest.mark.timeout(300)  # a guard: the waits below end on events, never on a speed
def test_sigkill_mid_run_then_resume_completes_every_run_once(tmp_path: Path) -> None:
    """A sweep killed while a run is going keeps the rows written before; resuming runs the rest once.

    Run 1 is finished by a first chunk of one run. The test then holds the CSV's lock and starts the
    sweep: run 2 does its work and its row waits for the lock, so the SIGKILL lands before run 2 is
    recorded whatever the machine's speed (the test waits until the sweep is blocked on the lock).
    """
    sweep = _write_sweep(tmp_path / "kill.toml", "seed = [0, 1, 2]")
    specs = load_sweep(sweep).specs
    out = tmp_path / "out"
    csv = out / "runs.csv"
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", "--max-runs", "1"]) == 0
    first = {r["run_id"] for r in read_rows(csv)}
    assert first == {specs[0].run_id}
    cmd = [sys.executable, "-m", "bench", "sweep", str(sweep), "--out", str(out), "--quiet"]
    with locked(csv):
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stderr=subprocess.DEVNULL)
        try:
            lock_path = csv.with_name(csv.name + ".lock")
            while proc.poll() is None and not _lock_waiters(lock_path):
                time.sleep(0.05)  # waiting for an event (the sweep blocked on the lock), not for a duration
            assert proc.poll() is None, "the sweep ended before it blocked on the CSV lock"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running child
            proc.wait()
    assert {r["run_id"] for r in read_rows(csv)} == first  # the killed run wrote nothing
    with open(csv, "a") as f:
        f.write(",".join(["zzz", "ok", ""]))  # and a torn line, as if cut by the kill
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", "--max-runs", "1"]) == 0
    assert len(read_rows(csv)) == len(first) + 1  # a chunk of one run
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(csv)
    ids = [r["run_id"] for r in rows]
    assert sorted(ids) == sorted(s.run_id for s in specs)  # each exactly once
    assert ids[0] in first and all(r["status"] == "ok" for r in rows)
    assert "zzz" not in csv.read_text()


def test_submitit_local_executor_writes_rows(tmp_path: Path) -> None:
    import submitit  # a runtime dependency: a missing install must fail, not skip

    spec = RunSpec(
        task="mri",
        model="classical",
        image_size=16,
        n_train=2,
        n_test=1,
        batch_size=1,
        device="cpu",
        cpu_threads=1,
    )
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=5)
    csv = tmp_path / "runs.csv"
    opts = LaunchOptions(start="subprocess")  # also covers `python -m bench _run-one` writing its row
    jobs = launch_slurm([spec], str(csv), opts, SlurmOptions(wait=True), executor=executor)
    assert [j.result() for j in jobs] == ["ok"]
    rows = read_rows(csv)
    assert [r["run_id"] for r in rows] == [spec.run_id] and rows[0]["status"] == "ok"
    assert {k: rows[0][k] for k in ("task", "model")} == {
        k: str(v) for k, v in spec_columns(spec).items() if k in ("task", "model")
    }


@pytest.mark.slow
def test_smoke_preset_runs_every_task_and_model_ok(tmp_path: Path) -> None:
    """End to end: the smoke preset (22 runs) gives one ok row per run with its metrics and curves."""
    out = tmp_path / "smoke"
    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out / "runs.csv")
    assert len(rows) == len(load_preset("smoke").specs) == len({r["run_id"] for r in rows})
    assert [r["error"] for r in rows if r["status"] != "ok"] == []
    assert all(int(r["tracked_peak_bytes"]) > 0 and float(r["psnr_db"]) > 0 for r in rows)
    deq_rows = [r for r in rows if r["model"] in ("luser", "deq")]
    assert deq_rows and all(float(r["fwd_iters_mean"]) >= 1 for r in deq_rows)
    feature = [r for r in rows if '"cell": "feature"' in r["model_extra"]]
    assert sorted(r["task"] for r in feature) == ["ct", "deblur", "mri"]
    trained = {r["run_id"] for r in rows if r["model"] != "classical"}
    curve_ids = [c["run_id"] for c in read_curves(out / "curves.csv")]
    assert set(curve_ids) == trained and len(curve_ids) == 3 * len(trained)  # a point every 10 of 30 steps
