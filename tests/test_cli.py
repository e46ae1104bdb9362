"""`python -m bench`: sizes, bad input exits 2 and writes nothing, dry runs, lazy subcommands."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli
from bench.harness import sweep
from bench.harness.expand import load_preset
from bench.harness.results import append_row
from bench.harness.specs import spec_columns


@pytest.mark.parametrize(
    ("text", "n_bytes"),
    [
        ("24GiB", 24 * 2**30),
        ("512MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("1KiB", 1024),
        ("2 kb", 2000),
        ("100", 100),
        ("0.5TiB", 2**39),
    ],
)
def test_parse_size(text: str, n_bytes: int) -> None:
    assert sweep.parse_size(text) == n_bytes


@pytest.mark.parametrize("text", ["24GX", "-1GiB", "GiB", "", "1.2.3MB", "ten"])
def test_parse_size_rejects_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="KiB, MiB, GiB"):
        sweep.parse_size(text)


def test_parse_size_accepts_zero_but_a_budget_must_be_positive() -> None:
    assert sweep.parse_size("0") == 0 and sweep.parse_size("0GiB") == 0  # a size may be 0 ...
    assert sweep.size_arg("1") == 1 and sweep.size_arg("0.5KB") == 500
    for text in ("0", "0GiB", "0.4"):  # ... a budget may not (0.4 bytes rounds to 0)
        with pytest.raises(argparse.ArgumentTypeError, match="expected a positive size"):
            sweep.size_arg(text)


@pytest.mark.parametrize("budget", ["0", "0MiB", "-1GiB", "0.1"])
def test_a_budget_of_zero_or_less_exits_2_naming_what_is_accepted(
    budget: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), f"--memory-budget={budget}"]) == 2
    err = capsys.readouterr().err
    assert "--memory-budget" in err and repr(budget) in err
    assert "positive size" in err or "KiB, MiB, GiB" in err  # "-1GiB" is no size at all
    assert "e.g. 24GiB" in err
    assert not out.exists()


BAD_SWEEPS = {
    "malformed": ("[defaults\ntask='ct'", ["malformed TOML"]),
    "unknown key": ("[defaults]\ntask='ct'\nmodel='lu'\nbatchsize=2", ["'batchsize'", "batch_size"]),
    "wrong type": ("[defaults]\ntask='ct'\nmodel='lu'\nn_iters=1.5", ["'n_iters'", "expects int"]),
    "empty axis": (
        "[defaults]\ntask='ct'\n[[grid]]\nmodel='lu'\nn_iters=[]",
        ["[[grid]] #1", "'n_iters'", "empty axis", "type int"],
    ),
    "unknown model": ("[defaults]\ntask='ct'\nmodel='unet'", ["'unet'", "lu_ckpt"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_bad_sweep_exits_2_naming_the_key_and_writes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, needles = BAD_SWEEPS[case]
    sweep = tmp_path / "bad.toml"
    sweep.write_text(text)
    out = tmp_path / "out"
    assert cli.main(["sweep", str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert not out.exists()


def test_bad_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), "--memory-budget", "24GX"]) == 2
    assert "bad size" in capsys.readouterr().err
    assert cli.main(["sweep", "--preset", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "available presets" in err and "'smoke'" in err and "'paper'" in err
    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), "--launcher", "mpi"]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert not out.exists()


def test_dry_run_lists_runs_and_counts_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    specs = load_preset("smoke").specs
    done = spec_columns(specs[0]) | {"status": "ok", "error": ""}
    failed = spec_columns(specs[1]) | {"status": "error", "error": "Boom: x"}
    append_row(out / "runs.csv", done)
    append_row(out / "runs.csv", failed)
    before = sorted(p.name for p in out.iterdir())

    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{len(specs)} runs in sweep 'smoke': 2 already done, {len(specs) - 2} to run"
    assert lines[0].startswith(f"sweep 'smoke': up to {len(specs)} runs in its grids")
    assert lines[1].startswith(f"{specs[0].run_id}  done  smoke")
    assert cli.main(["sweep", "--preset", "smoke", "--out", str(out), "--dry-run", "--retry-failed"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"1 already done, {len(specs) - 1} to run")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_missing_subcommand_module_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.SUBCOMMANDS, "later", "bench.not_written_yet")
    assert cli.main(["later"]) == 2
    assert "module bench.not_written_yet does not exist yet" in capsys.readouterr().err


def test_sweep_does_not_import_pandas_or_matplotlib(tmp_path: Path) -> None:
    """One fresh interpreter: `python -m bench sweep --dry-run` and the modules it loaded."""
    code = (
        "import json, sys, runpy\n"
        "sys.argv = ['bench', 'sweep', '--preset', 'smoke', '--out', sys.argv[1], '--dry-run']\n"
        "try:\n    runpy.run_module('bench', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('pandas', 'matplotlib', 'seaborn') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, proc.stderr[-2000:]
