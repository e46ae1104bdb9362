"""The memory gate passes on the committed baseline and fails on a planted regression."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from bench import gate

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "memory.json"
CONFIG = "deblur/lu K=3 D=3"  # one gate configuration, to keep the test fast


def _args(**kw) -> argparse.Namespace:
    ns = dict(baseline=BASELINE, update=False, max_increase=0.01, report_decrease=0.05, only=CONFIG)
    ns.update(kw)
    return argparse.Namespace(**ns)


def _plant(monkeypatch: pytest.MonkeyPatch, n_floats: int, *, leak: bool = False) -> None:
    """Make every LU forward call allocate an extra tensor of `n_floats` float32, held by the
    reconstruction until the step ends (`leak=False`: a larger peak, nothing outlives the step) or
    kept forever in a list (`leak=True`: a leak between steps)."""
    import models.lu

    kept: list[torch.Tensor] = []
    forward = models.lu.LU.forward

    def planted(self, y, op):
        extra = torch.empty(n_floats)
        recon = forward(self, y, op)
        if leak:
            kept.append(extra)
        else:
            recon.x.planted = extra  # alive as long as the step's graph
        return recon

    monkeypatch.setattr(models.lu.LU, "forward", planted)


def _baseline_peak() -> int:
    configs = gate.read_baseline(BASELINE)["configs"]
    (peak,) = [c["tracked_peak_bytes"] for label, c in configs.items() if label.startswith(CONFIG)]
    return peak


def test_gate_passes_on_committed_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    assert gate.main(_args()) == 0
    assert "PASS" in capsys.readouterr().out


def test_gate_fails_on_planted_regression(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    baseline = gate.read_baseline(BASELINE)
    (peak,) = [
        c["tracked_peak_bytes"] for label, c in baseline["configs"].items() if label.startswith(CONFIG)
    ]
    # A held tensor of 2 % of the peak must fail a 1 % gate ...
    _plant(monkeypatch, int(0.02 * peak) // 4)
    assert gate.main(_args()) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and CONFIG in out


def test_gate_tolerates_growth_below_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = gate.read_baseline(BASELINE)
    (peak,) = [
        c["tracked_peak_bytes"] for label, c in baseline["configs"].items() if label.startswith(CONFIG)
    ]
    # ... and one of 0.5 % must pass: the gate measures what it claims, to the byte.
    _plant(monkeypatch, int(0.005 * peak) // 4)
    assert gate.main(_args()) == 0


def test_gate_fails_on_a_planted_leak_below_the_peak_threshold(monkeypatch, capsys) -> None:
    # 64 bytes kept from every step: far below 1 % of the peak, but it outlives the steps.
    _plant(monkeypatch, 16, leak=True)
    assert gate.main(_args()) == 1
    out = capsys.readouterr().out
    assert "leaked_bytes > 0" in out and CONFIG in out
    (row,) = gate.measure(CONFIG)
    assert row["leaked_bytes"] == 3 * 16 * 4 and row["steady_steps"] == 3  # one per steady step


def test_gate_reports_the_new_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert gate.main(_args()) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:4] == ["config", "baseline", "now", "change"] and "leaked" in header
    (line,) = [ln for ln in out.splitlines() if ln.startswith(CONFIG)]
    assert line.split()[-1] == "0"  # leaked bytes of our LU
    (row,) = gate.measure(CONFIG)
    assert int(row["alloc_peak_bytes"]) > int(row["tracked_peak_bytes"])  # kernel scratch on top
    assert int(row["steady_peak_bytes"]) == int(row["tracked_peak_bytes"])


def test_gate_update_round_trip_and_missing_config(tmp_path: Path, capsys) -> None:
    path = tmp_path / "memory.json"
    assert gate.main(_args(baseline=path, update=True)) == 0
    doc = gate.read_baseline(path)
    assert len(doc["configs"]) == 1
    # A configuration absent from the baseline fails the gate and names the fix.
    doc["configs"] = {}
    path.write_text(__import__("json").dumps(doc))
    assert gate.main(_args(baseline=path)) == 1
    assert "--update" in capsys.readouterr().out


def test_verdict_rule_known_answer() -> None:
    entries = [
        gate.GateEntry("a", "a", now_bytes=1010, baseline_bytes=1000),  # +1.0 %: allowed
        gate.GateEntry("b", "b", now_bytes=900, baseline_bytes=1000),  # -10 %: improvement, listed
    ]
    code, message = gate.verdict(entries, max_increase=0.01, report_decrease=0.05)
    assert code == 0 and "improved" in message
    entries.append(gate.GateEntry("c", "c", now_bytes=1011, baseline_bytes=1000))  # +1.1 %
    code, message = gate.verdict(entries, max_increase=0.01, report_decrease=0.05)
    assert code == 1 and "c" in message
