"""`python -m bench gpu-check`: the plan and its estimate, the part runner's failure isolation and time
budget, the deselection of missing peers, and the one-screen summary of a finished folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli, gpu_check
from bench.analysis.gpu_summary import summarise
from bench.gpu_check import PART_ESTIMATE_S, Part, Plan, build_plan, run_plan
from bench.harness.expand import load_preset
from bench.harness.results import append_row
from bench.harness.specs import spec_columns


def _stated_sweep_s() -> float:
    """The gpu preset's stated time from the per-step figures, computed here run by run."""
    total = PART_ESTIMATE_S["sweep-start"]
    for spec in load_preset("gpu").specs:
        steps = spec.warmup_steps + spec.timed_steps + spec.steps + 1 + gpu_check.TRACKED_STEP_COST
        total += gpu_check.RUN_OVERHEAD_S + steps * gpu_check.STEP_MS[spec.model](spec) / 1e3
    return total


@pytest.mark.parametrize("have_peers", [True, False])
def test_dry_run_prints_run_count_and_the_sum_of_stated_figures(
    have_peers: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        gpu_check, "installed_packages", lambda names=gpu_check.PEERS: dict.fromkeys(names, have_peers)
    )
    out = tmp_path / "gpu"
    assert cli.main(["gpu-check", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # a dry run writes nothing

    specs = load_preset("gpu").specs
    runs = re.search(r"^runs: (\d+) sweep runs", text, re.M)
    assert runs is not None and int(runs.group(1)) == len(specs)
    grouped = [int(n) for n in re.findall(r"^\s{6}\S.*?\s(\d+) runs\s", text, re.M)]
    assert sum(grouped) == len(specs)  # the per-configuration lines cover every run once

    n_peers = 2 if have_peers else 0
    expected_s = (
        PART_ESTIMATE_S["probe"]
        + PART_ESTIMATE_S["gpu-tests"]
        + _stated_sweep_s()
        + PART_ESTIMATE_S["operators"]
        + (PART_ESTIMATE_S["operators-deepinv"] if have_peers else 0.0)
        + PART_ESTIMATE_S["race"]
        + n_peers * PART_ESTIMATE_S["race-peer"]
    )
    estimate = re.search(r"^estimate: (\d+) s of the (\d+) s budget", text, re.M)
    assert estimate is not None and int(estimate.group(1)) == round(expected_s)
    # The promise: everything fits the eight minutes, less what is kept for interrupts and the summary.
    assert expected_s <= gpu_check.BUDGET_S - gpu_check.RESERVE_S
    assert ("skipped: deepinv not installed" in text) is not have_peers


def test_every_output_of_the_plan_lies_under_out(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    plan = build_plan(out, installed={"deepinv": True, "torchdeq": True})
    for part in plan.parts:
        for arg in part.argv:
            if arg.startswith(("--junitxml=", "--benchmark-json=")):
                assert Path(arg.split("=", 1)[1]).is_relative_to(out), (part.name, arg)
    sweep = next(p for p in plan.parts if p.name == "sweep")
    assert sweep.argv[sweep.argv.index("--out") + 1] == str(out)


def test_missing_peers_deselect_exactly_their_race_cases(tmp_path: Path) -> None:
    plan = build_plan(tmp_path, installed={"deepinv": False, "torchdeq": False}, names=["race"])
    (race,) = plan.parts
    assert "race vs deepinv skipped: deepinv not installed" in race.notes
    assert "race vs torchdeq skipped: torchdeq not installed" in race.notes
    # The -k expression against the race file's real test ids: only our own step is left.
    argv = [a for a in race.argv if not a.startswith(("--junitxml=", "--benchmark-json="))]
    done = subprocess.run(
        [*argv, "--collect-only"], cwd=gpu_check.REPO_ROOT, capture_output=True, text=True, check=False
    )
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert collected == ["bench/benchmarks/test_race.py::test_race_ours"], done.stdout + done.stderr


def _part(name: str, code: str, estimate_s: float = 1.0) -> Part:
    return Part(name, name, estimate_s, (sys.executable, "-c", code))


def _result(out: Path, name: str) -> dict:
    return json.loads((out / name / "result.json").read_text())


def test_a_failing_part_does_not_stop_the_next(tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    plan = Plan(
        out=tmp_path,
        parts=(_part("first", "import sys; sys.exit(3)"), _part("second", f"open({str(marker)!r}, 'w')")),
        n_runs=0,
        budget_s=600.0,
    )
    results = run_plan(plan, repo_root=tmp_path, echo=lambda _: None)
    assert [(r.name, r.status, r.returncode) for r in results] == [
        ("first", "failed", 3),
        ("second", "ok", 0),
    ]
    assert marker.exists()
    assert _result(tmp_path, "first")["status"] == "failed"  # recorded on disk, not only returned
    assert (tmp_path / "first" / "log.txt").read_text().startswith("$ ")


def test_a_part_past_its_share_is_interrupted_with_sigint_first(tmp_path: Path) -> None:
    said = tmp_path / "said-goodbye"
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGINT, lambda *a: (open({str(said)!r}, 'w').write('bye'), sys.exit(0)))\n"
        "time.sleep(600)\n"
    )
    plan = Plan(out=tmp_path, parts=(_part("hang", code),), n_runs=0, budget_s=gpu_check.RESERVE_S + 5.0)
    (result,) = run_plan(plan, repo_root=tmp_path, echo=lambda _: None)
    assert result.status == "interrupted"
    assert said.read_text() == "bye"  # SIGINT reached it: pytest would still write its junit file


def test_no_part_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    plan = Plan(
        out=tmp_path,
        parts=(_part("late", f"open({str(marker)!r}, 'w')", estimate_s=20.0),),
        n_runs=0,
        budget_s=gpu_check.RESERVE_S + 5.0,  # a 5 s share, under the part's 10 s minimum
    )
    (result,) = run_plan(plan, repo_root=tmp_path, echo=lambda _: None)
    assert result.status == "not started" and "time budget spent" in result.notes[0]
    assert not marker.exists()


def test_without_cuda_gpu_check_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu"
    assert cli.main(["gpu-check", "--out", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["gpu-check", "--out", str(out), "--parts", "probe,nosuch", "--dry-run"]) == 2
    assert "'nosuch'" in capsys.readouterr().err


MIB = 2**20


def _write_finished_folder(out: Path) -> None:
    """A gpu-check folder as the parts leave it, with known numbers."""
    for name, status in (("gpu-tests", "ok"), ("sweep", "ok"), ("operators", "ok"), ("race", "failed")):
        (out / name).mkdir(parents=True)
        result = {"name": name, "status": status, "estimate_s": 60.0, "share_s": 70.0, "took_s": 50.0,
                  "returncode": 0 if status == "ok" else 1, "notes": []}  # fmt: skip
        if name == "race":
            result["notes"] = ["race vs deepinv skipped: deepinv not installed"]
        (out / name / "result.json").write_text(json.dumps(result))
    (out / "gpu-tests" / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase name="test_tracked_peak_slope_matches_cuda_peak[lu]"><properties>'
        '<property name="slope_ratio" value="0.99950"/><property name="offset_mib_min" value="2.000"/>'
        '<property name="offset_mib_max" value="4.500"/></properties></testcase>'
        '<testcase name="test_adjoint[cuda]"><failure message="x"/></testcase>'
        "</testsuite></testsuites>"
    )
    spec = load_preset("gpu").specs[0]  # deblur, lu-17, K=1
    for k, peak, proc in ((1, 700, 1200), (10, 5217, 6000)):
        row = spec_columns(spec) | {"run_id": f"r{k}", "n_iters": k, "status": "ok", "device": "NVIDIA H200"}
        row |= {"cuda_peak_bytes": peak * MIB, "nvml_status": "ok", "nvml_process_used_bytes": proc * MIB}
        append_row(out / "runs.csv", row)
    bench = {"benchmarks": [{"name": "test_ct", "params": {"n_angles": 60, "batch": 16, "backend": "csr"},
                             "extra_info": {"speedup_vs_deepinv": 4.25, "target_speedup": 2.0}}]}  # fmt: skip
    (out / "operators" / "benchmark.json").write_text(json.dumps(bench))
    race = {"benchmarks": [{"name": "test_race[torchdeq]", "extra_info": {
        "impl": "torchdeq", "time_ratio_ours_over_peer": 0.5, "peak_ratio_ours_over_peer": 0.25,
        "ops_ratio_ours_over_peer": 0.48, "step_ms_ours": 10.0, "step_ms_torchdeq": 20.0, "step_ms_bare": 8.0,
    }}]}  # fmt: skip
    (out / "race" / "benchmark.json").write_text(json.dumps(race))


def test_summary_reports_the_numbers_of_every_part_on_one_screen(tmp_path: Path) -> None:
    _write_finished_folder(tmp_path)
    text = summarise(tmp_path, gpu_check.PART_NAMES)
    lines = text.splitlines()
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 160
    assert re.search(r"^probe\s+not run", text, re.M)
    assert "1 passed, 1 failed" in text and "not passed: test_adjoint[cuda]" in text
    assert "lu 0.9995 (offset 2.0..4.5 MiB)" in text
    assert "2 rows: 2 ok" in text
    assert "deblur CUDA peak MiB: lu-17 K10 5217" in text  # the largest K of the configuration
    assert "NVML: 2 ok; process used 1200..6000 MiB" in text
    assert "(targets B16 >= 2x): 60a B16 csr 4.2x" in text
    assert "vs torchdeq: time 0.50x, peak 0.25x, ops 0.48x" in text
    assert re.search(r"^race\s+failed\s+50s\s+70s\s+60s\s+exit 1$", text, re.M)
    assert "race vs deepinv skipped: deepinv not installed" in text
