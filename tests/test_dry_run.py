"""What `python -m bench sweep` prints: the dry run's listing (streamed while the grid is expanded,
then the counts) and the summary line at the end of a sweep."""

from __future__ import annotations

import io
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import cli
from bench.harness import sweep
from bench.harness.expand import SweepPlan, load_preset, load_sweep, parse_sweep
from bench.harness.results import append_row
from bench.harness.specs import RunSpec, spec_columns

FIXTURES = Path(__file__).parent / "fixtures"
#: 1000 seeds x 10 learning rates x 10 K = 10**5 runs.
BIG = (
    "[sweep]\nname = 'big'\n[defaults]\ntask = 'deblur'\nmodel = 'lu'\nsteps = 2\n"
    f"seed = {list(range(1000))}\nlr = {[k * 1e-4 for k in range(1, 11)]}\nn_iters = {list(range(1, 11))}\n"
)


class _Recorder(io.StringIO):
    """A stdout that notes how many runs were expanded when each of its first lines was written, and
    how many lines it held when it was first flushed."""

    def __init__(self, expanded: list[int]) -> None:
        super().__init__()
        self.expanded = expanded
        self.expanded_at_write: list[int] = []
        self.lines_at_first_flush: int | None = None

    def write(self, text: str) -> int:
        if text.strip() and len(self.expanded_at_write) < 2:  # print writes its newline apart
            self.expanded_at_write.append(self.expanded[0])
        return super().write(text)

    def flush(self) -> None:
        if self.lines_at_first_flush is None:
            self.lines_at_first_flush = self.getvalue().count("\n")
        super().flush()


def test_dry_run_streams_a_large_grid_as_it_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.toml"
    path.write_text(BIG)
    done = next(itertools.islice(parse_sweep(BIG).runs(), 54321, None))  # lazy: 54322 runs built
    out = tmp_path / "out"
    append_row(out / "runs.csv", spec_columns(done) | {"status": "ok", "error": ""})

    expanded = [0]
    runs = SweepPlan.runs

    def counted(self: SweepPlan) -> Iterator[RunSpec]:
        for spec in runs(self):
            expanded[0] += 1
            yield spec

    monkeypatch.setattr(SweepPlan, "runs", counted)
    recorder = _Recorder(expanded)
    monkeypatch.setattr(sys, "stdout", recorder)
    assert cli.main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    monkeypatch.undo()

    lines = recorder.getvalue().splitlines()
    # the grid's size before any run is built, flushed at once; the first run's line right after it
    assert lines[0] == "sweep 'big': up to 100000 runs in its grids (before checks and de-duplication)"
    assert recorder.expanded_at_write[0] == 0 and recorder.lines_at_first_flush == 1
    assert recorder.expanded_at_write[1] == 1
    assert expanded[0] == 10**5
    assert lines[-1] == "100000 runs in sweep 'big': 1 already done, 99999 to run"
    listing = lines[1:-1]
    assert len(listing) == 10**5 and len({line[:12] for line in listing}) == 10**5
    assert listing[54321].startswith(f"{done.run_id}  done  big      deblur   lu         n_iters=")
    assert sum("  done  " in line for line in listing) == 1


def _line_from_columns(spec: RunSpec, mark: str) -> str:
    """The listing line as the dry run wrote it from `spec_columns` before it streamed."""
    row = spec_columns(spec)
    head = f"{row['run_id']}  {mark}  {row['part']:<8} {row['task']:<8} {row['model']:<10}"
    keys = ("n_iters", "reg_depth", "reg_width", "solver", "tol", "max_iter", "backward", "steps")
    fields = " ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None)
    extra = "".join(f" {k}={v}" for k, v in spec.model_extra)
    extra += "".join(f" operator.{k}={v}" for k, v in spec.operator)
    extra += f" data={spec.data}:{spec.data_split}" if spec.data else ""
    extra += f" precision={spec.precision}" if spec.precision != "fp32" else ""
    return f"{head} {fields}{extra}"


@pytest.mark.parametrize("source", ["mixed", "paper"])
def test_dry_run_lines_are_the_spec_columns(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if source == "mixed":
        specs = load_sweep(FIXTURES / "mixed_sweep.toml").specs
        argv = ["sweep", str(FIXTURES / "mixed_sweep.toml")]
    else:
        specs = load_preset(source).specs
        argv = ["sweep", "--preset", source]
    out = tmp_path / "out"
    append_row(out / "runs.csv", spec_columns(specs[3]) | {"status": "ok", "error": ""})
    assert cli.main([*argv, "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marks = ["done" if i == 3 else "todo" for i in range(len(specs))]
    assert lines[0].startswith("sweep '") and "runs in its grids" in lines[0]
    assert lines[1:-1] == [_line_from_columns(s, m) for s, m in zip(specs, marks, strict=True)]
    assert lines[-1].endswith(f": 1 already done, {len(specs) - 1} to run")


BAD_SECOND_GRID = (
    "[defaults]\ntask = 'deblur'\nmodel = 'lu'\n[[grid]]\nseed = [0, 1, 2]\n"
    "[[grid]]\nseed = [3, 4]\nn_iters = [2, 0]\n"
)


def test_an_invalid_later_run_stops_the_dry_run_and_the_sweep_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_SECOND_GRID)
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 2
    captured = capsys.readouterr()
    head, *listed = captured.out.splitlines()
    assert head == "sweep 'bad': up to 7 runs in its grids (before checks and de-duplication)"
    assert [line.split()[1] for line in listed] == ["todo"] * 4  # the valid ones
    assert "[[grid]] #2: model 'lu' rejects its config: n_iters must be >= 1, got 0" in captured.err
    # A real sweep checks every run before it starts any: nothing is written.
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 2
    assert "n_iters must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_summary_line_counts_statuses_and_what_is_left(tmp_path: Path) -> None:
    specs = load_preset("smoke").specs
    csv_path = tmp_path / "runs.csv"
    statuses = ["ok", "ok", "oom", "diverged", "error", "timeout", "error"]
    for spec, status in zip(specs, statuses, strict=False):
        append_row(csv_path, spec_columns(spec) | {"status": status, "error": "" if status == "ok" else "x"})
    append_row(csv_path, spec_columns(specs[6]) | {"status": "ok", "error": ""})  # a retry: the last row wins
    other = RunSpec(task="deblur", model="lu", seed=99)  # a row of another sweep is not counted
    append_row(csv_path, spec_columns(other) | {"status": "error", "error": "x"})
    left = len(specs) - len(statuses)
    assert sweep._summary_line(specs, csv_path, 12.34) == (
        f"finished in 12.3 s: 3 ok, 1 oom, 1 diverged, 1 error, 1 timeout; {left} run(s) still to run"
        " (2 failed: --retry-failed runs them again)"
    )
    assert sweep._summary_line(specs, tmp_path / "none.csv", 0.0) == (
        f"finished in 0.0 s: no rows; {len(specs)} run(s) still to run"
    )


@pytest.mark.parametrize("preset", ["smoke", "paper", "gate", "cpu-study", "deblur-plateau"])
def test_grid_size_bounds_the_runs_and_is_exact_without_duplicates(preset: str) -> None:
    from bench.harness.expand import read_preset

    plan = read_preset(preset)
    n_runs = len(plan.load().specs)
    assert plan.grid_size() >= n_runs
    assert parse_sweep(BIG).grid_size() == 10**5  # every combination distinct: exact
    dup = "[defaults]\ntask = 'deblur'\nmodel = ['lu', 'classical']\nn_iters = [1, 2]\nsteps = 0\n"
    dup_plan = parse_sweep(dup)
    assert dup_plan.grid_size() == 4 and len(dup_plan.load().specs) == 4
    ops = "[defaults]\ntask = 'ct'\nmodel = 'lu'\n[[grid]]\noperator.n_angles = [30, 60, 90]\nseed = [0, 1]\n"
    assert parse_sweep(ops).grid_size() == 6 == len(parse_sweep(ops).load().specs)
