"""The results files: checked writes (short writes, a full disk, a child that cannot write its row)
and the one reader every consumer uses (torn last line, extra trailing columns, non-UTF-8 bytes)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
from pathlib import Path

import pytest

from bench import cli
from bench.analysis import report, runtable
from bench.harness.expand import load_sweep
from bench.harness.results import (
    COLUMNS,
    TornLineWarning,
    WriteError,
    append_record,
    append_row,
    read_rows,
    read_table,
)

FIXTURE = Path(__file__).parent / "fixtures" / "runs_fixture.csv"
TINY = (
    'task = "deblur"\nmodel = "classical"\nmethod = "adjoint"\nimage_size = 16\nbatch_size = 1\n'
    'n_train = 2\nn_test = 1\nwarmup_steps = 1\ntimed_steps = 1\ndevice = "cpu"\ncpu_threads = 1\n'
)


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _row(run_id: str, status: str = "ok", **kw: object) -> dict[str, object]:
    return {"run_id": run_id, "status": status, "error": "", "task": "deblur", "model": "lu", **kw}


def _sweep(path: Path, seeds: list[int]) -> Path:
    path.write_text(f"[sweep]\nname = 't'\n[defaults]\n{TINY}[[grid]]\nseed = {seeds}\n")
    return path


def _fd_is(fd: int, name: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(name)
    except OSError:
        return False


class _Disk:
    """Patches os.write for one file: at most `chunk` bytes per call, `capacity` bytes in all, then
    ENOSPC (what a full file system answers); writes to other files pass through."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, name: str, capacity: int, chunk: int, fill_at: int = 0
    ) -> None:
        """fill_at > 0: the capacity applies once the file has that many lines (before: unlimited)."""
        self.name, self.capacity, self.chunk, self.fill_at = name, capacity, chunk, fill_at
        self.real = os.write
        self.calls = 0
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes) -> int:
        if not _fd_is(fd, self.name):
            return self.real(fd, data)
        self.calls += 1
        if self.fill_at and os.pread(fd, 1 << 20, 0).count(b"\n") < self.fill_at:
            return self.real(fd, data)
        if self.capacity <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.real(fd, bytes(memoryview(data)[: min(self.chunk, self.capacity)]))
        self.capacity -= n
        return n


# ----------------------------------------------------------------------------- writes


def test_short_writes_are_continued_until_the_row_is_whole(tmp_path: Path, monkeypatch) -> None:
    csv = tmp_path / "runs.csv"
    disk = _Disk(monkeypatch, "runs.csv", capacity=10**9, chunk=7)
    append_row(csv, _row("a", error="x" * 300))
    append_row(csv, _row("b"))
    assert disk.calls > 40  # the writes really were short
    rows = read_rows(csv)
    assert [r["run_id"] for r in rows] == ["a", "b"] and rows[0]["error"] == "x" * 300


def test_full_disk_mid_row_raises_naming_file_and_cause_and_keeps_earlier_rows(
    tmp_path: Path, monkeypatch
) -> None:
    csv = tmp_path / "runs.csv"
    append_row(csv, _row("a"))
    before = csv.read_bytes()
    _Disk(monkeypatch, "runs.csv", capacity=40, chunk=4096)  # the next row stops after 40 bytes
    with pytest.raises(WriteError, match=r"runs\.csv: No space left on device"):
        append_row(csv, _row("b", error="y" * 200))
    assert csv.read_bytes() == before  # truncated back: no torn row, row a intact
    monkeypatch.undo()
    append_row(csv, _row("b"))
    assert [r["run_id"] for r in read_rows(csv)] == ["a", "b"]


def test_full_disk_stops_the_sweep_with_the_file_and_cause(tmp_path: Path, monkeypatch, capsys) -> None:
    sweep = _sweep(tmp_path / "t.toml", [1, 2, 3])
    out = tmp_path / "out"
    _Disk(monkeypatch, "runs.csv", capacity=40, chunk=4096, fill_at=2)  # full after header + one row
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"cannot write a row to {out / 'runs.csv'}: No space left on device" in err
    assert "the sweep stopped" in err
    rows = read_rows(out / "runs.csv")
    assert len(rows) == 1 and rows[0]["status"] == "ok"  # the written row is whole, no second one
    monkeypatch.undo()  # space freed: a resume completes the others, each once
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    ids = [r["run_id"] for r in read_rows(out / "runs.csv")]
    assert sorted(ids) == sorted(s.run_id for s in load_sweep(sweep).specs)


def test_a_child_that_cannot_write_its_row_is_reported_as_such(tmp_path: Path, capsys) -> None:
    sweep = _sweep(tmp_path / "t.toml", [1])
    (spec,) = load_sweep(sweep).specs
    out = tmp_path / "out"
    (out / "rows").mkdir(parents=True)
    (out / "rows" / f"{spec.run_id}.json.tmp").symlink_to("/dev/full")  # writes there fail: ENOSPC
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"run {spec.run_id}: its process could not write its row" in err
    assert "No space left on device" in err
    assert read_rows(out / "runs.csv") == []  # not an error row: nothing was learnt about the run


# ----------------------------------------------------------------------------- the one reader


def test_torn_last_line_is_dropped_with_a_warning_by_the_report(tmp_path: Path) -> None:
    lines = FIXTURE.read_text().splitlines(keepends=True)
    last = lines[-1]
    fields = last.split(",")
    at = COLUMNS.index("tracked_peak_bytes")
    cut = len(",".join(fields[:at])) + 3  # two digits into the last row's tracked peak
    assert len(fields[at]) > 2
    whole, torn = tmp_path / "whole", tmp_path / "torn"
    whole.mkdir()
    torn.mkdir()
    (whole / "runs.csv").write_text("".join(lines[:-1]))
    (torn / "runs.csv").write_text("".join(lines[:-1]) + last[:cut])
    with pytest.warns(TornLineWarning, match="dropped a torn last line"):
        runs = runtable.load_runs(torn)
    assert runs.attrs["rows_read"] == len(lines) - 2
    # The report (without its figures, which do not count rows) is the one of the file without that line.
    whole_md = report.render_report(runtable.load_runs(whole), [], 0.5)
    assert report.render_report(runs, [], 0.5) == whole_md
    assert f"Source: `runs.csv`, {len(lines) - 2} rows" in whole_md


def test_extra_trailing_column_keeps_the_sweep_resuming(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "t.toml", [1])
    out = tmp_path / "out"
    csv = out / "runs.csv"
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    header, row = csv.read_text().splitlines()
    csv.write_text(f"{header},note\n{row},checked by hand\n")  # "extra columns may follow"
    for _ in range(2):  # re-runs find the run done and add nothing
        assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert len(read_rows(csv)) == 1 and read_rows(csv)[0]["note"] == "checked by hand"
    append_row(csv, _row("b"))  # the sweep's own rows (without the extra cell) are padded
    rows = read_rows(csv)
    assert [r["run_id"] for r in rows][1:] == ["b"] and rows[1]["note"] == ""
    assert csv.read_text().splitlines()[-1].endswith(",")  # padded to the header's width
    assert runtable.load_runs(out)["note"].tolist() == ["checked by hand", ""]


def test_rows_without_the_extra_cell_and_other_tables(tmp_path: Path) -> None:
    table = tmp_path / "curves.csv"
    columns = ("run_id", "step", "loss")
    append_record(table, {"run_id": "a", "step": 1, "loss": 0.5}, columns)
    with open(table, "a") as f:
        f.write("a,2,0.2")  # torn
    with pytest.warns(TornLineWarning):
        assert read_table(table, columns) == [{"run_id": "a", "step": "1", "loss": "0.5"}]
    with pytest.raises(ValueError, match=r"curves\.csv lacks required column\(s\): epoch"):
        read_table(table, (*columns, "epoch"))


def test_non_utf8_csv_names_file_and_line(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "runs.csv"
    append_row(csv, _row("a"))
    append_row(csv, _row("b", error="caf\xe9"))
    data = csv.read_bytes().replace("é".encode(), b"\xe9")  # a Latin-1 byte in row b
    csv.write_bytes(data)
    with pytest.raises(ValueError, match=r"runs\.csv: line 3 is not UTF-8 \(byte 0xe9"):
        read_rows(csv)
    assert report.main(argparse.Namespace(dir=tmp_path, psnr_tol_db=0.5)) == 2
    assert "line 3 is not UTF-8" in capsys.readouterr().err
    sweep = _sweep(tmp_path / "t.toml", [1])
    assert cli.main(["sweep", str(sweep), "--out", str(tmp_path), "--quiet"]) == 2
    assert "line 3 is not UTF-8" in capsys.readouterr().err


def test_unusable_out_paths_are_one_line_errors(tmp_path: Path, capsys) -> None:
    sweep = _sweep(tmp_path / "t.toml", [1])
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, expected in ((a_file, "is not a folder"), (a_file / "sub", "cannot create the folder")):
        assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_out_on_a_read_only_file_system_is_a_one_line_error(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read-only mount answers (EROFS to mkdir, access(W_OK) False even for root), imitated:
    the test runs as root, for whom permission bits prove nothing."""
    sweep = _sweep(tmp_path / "t.toml", [1])
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access, real_mkdir = os.access, Path.mkdir

    def access(path: object, mode: int, *a: object, **k: object) -> bool:
        return False if Path(str(path)).is_relative_to(ro) and mode & os.W_OK else real_access(path, mode)

    def mkdir(self: Path, *a: object, **k: object) -> None:
        if self.is_relative_to(ro) and not self.exists():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    for out, expected in ((ro, "the folder is not writable"), (ro / "sub", "Read-only file system")):
        assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(ro.iterdir()) == []


def test_non_utf8_sweep_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "bad.toml"
    sweep.write_bytes(b'[sweep]\nname = "caf\xe9"\n')
    assert cli.main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "bad.toml" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_copy_of_fixture_reads_the_same(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "runs.csv")
    assert len(read_rows(tmp_path / "runs.csv")) == len(FIXTURE.read_text().splitlines()) - 1


# ----------------------------------------------------------------------------- older tables resume


def _older_table(csv: Path, n_new: int) -> tuple[list[str], list[dict[str, str]]]:
    """A runs.csv written before the schema's last `n_new` columns (all in LATER_COLUMNS), with an extra
    trailing column of the user's: its header and rows, as written."""
    from bench.schema import LATER_COLUMNS

    old = list(COLUMNS[:-n_new])
    assert set(COLUMNS[-n_new:]) <= set(LATER_COLUMNS)
    header = [*old, "note"]
    rows = [
        {**dict.fromkeys(old, ""), "run_id": rid, "status": "ok", "task": "deblur", "model": "lu",
         "tracked_peak_bytes": str(1000 + i), "error": "a, b | c", "note": f"n{i}"}
        for i, rid in enumerate(["a", "b"])
    ]  # fmt: skip
    text = ",".join(header) + "\n" + "".join(append_format(r, header) for r in rows)
    csv.write_text(text)
    return header, rows


def append_format(row: dict[str, str], header: list[str]) -> str:
    from bench.harness.results import format_record

    return format_record(row, header)


def test_an_older_table_is_upgraded_in_place_and_resumes_keeping_every_cell(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    _, old_rows = _older_table(csv, n_new=6)
    append_row(csv, _row("c", tracked_peak_bytes=7))
    assert csv.read_text().splitlines()[0].split(",") == [*COLUMNS, "note"]
    rows = read_rows(csv)
    assert [r["run_id"] for r in rows] == ["a", "b", "c"]
    for old, new in zip(old_rows, rows, strict=False):
        assert {k: new[k] for k in old} == old  # every cell kept, the user's column too
        assert all(new[c] == "" for c in COLUMNS[-6:])  # the new columns read as not measured
    assert rows[2]["note"] == "" and rows[2]["tracked_peak_bytes"] == "7"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_table_missing_a_required_column_is_refused_untouched(tmp_path: Path) -> None:
    csv = tmp_path / "runs.csv"
    header = [c for c in COLUMNS if c != "psnr_db"]  # psnr_db was there from the start
    csv.write_text(",".join(header) + "\n")
    before = csv.read_bytes()
    with pytest.raises(ValueError, match="refusing to append"):
        append_row(csv, _row("a"))
    assert csv.read_bytes() == before


def test_a_full_disk_during_the_upgrade_leaves_the_older_table_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    csv = tmp_path / "runs.csv"
    _older_table(csv, n_new=4)
    before = csv.read_bytes()
    _Disk(monkeypatch, "runs.csv.upgrade.tmp", capacity=100, chunk=4096)
    with pytest.raises(WriteError, match=r"cannot upgrade the header of .*runs\.csv: No space left"):
        append_row(csv, _row("c"))
    assert csv.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    append_row(csv, _row("c"))
    assert [r["run_id"] for r in read_rows(csv)] == ["a", "b", "c"]


def test_a_sweep_resumes_into_a_folder_written_before_the_newest_columns(tmp_path: Path) -> None:
    import csv as csvlib

    sweep = _sweep(tmp_path / "t.toml", [1, 2])
    out = tmp_path / "out"
    table = out / "runs.csv"
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", "--max-runs", "1"]) == 0
    n_old = len(COLUMNS) - 4  # as if the last four columns came later
    with open(table, newline="") as f:
        records = [fields[:n_old] for fields in csvlib.reader(f)]
    with open(table, "w", newline="") as f:
        csvlib.writer(f, lineterminator="\n").writerows(records)
    (first,) = read_rows(table)
    assert first["status"] == "ok" and first["estimated_bytes"] == ""
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(table)
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in load_sweep(sweep).specs)
    assert rows[0] == first and rows[1]["estimated_bytes"] != ""  # the older row kept, cell for cell


def test_an_older_tables_budget_refusal_is_evaluated_again_but_a_real_oom_is_kept(tmp_path: Path) -> None:
    from bench.harness.results import finished_run_ids

    table = tmp_path / "runs.csv"
    refusal = "would not fit: estimated 900 bytes (tracked peak 800 + resident 100) > budget 512 bytes"
    append_row(table, _row("a", "oom", error=refusal))
    append_row(table, _row("b", "oom", error="OutOfMemoryError: CUDA out of memory"))
    assert finished_run_ids(table) == {"b"}
    assert finished_run_ids(table, memory_budget_bytes=512) == {"b"}
