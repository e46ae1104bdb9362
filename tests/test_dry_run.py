"""What `python -m bench sweep` prints: the dry run's listing, then the counts, and the summary line
at the end of a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cli
from bench.harness import sweep
from bench.harness.expand import load_preset, load_sweep
from bench.harness.results import append_row
from bench.harness.specs import RunSpec, spec_columns

FIXTURES = Path(__file__).parent / "fixtures"


def _line_from_columns(spec: RunSpec, mark: str) -> str:
    """The listing line from `spec_columns` (the effective values)."""
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
    assert lines[:-1] == [_line_from_columns(s, m) for s, m in zip(specs, marks, strict=True)]
    assert lines[-1].endswith(f": 1 already done, {len(specs) - 1} to run")


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
