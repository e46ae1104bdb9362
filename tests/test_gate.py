"""The memory gate passes on the committed baseline and fails on a planted regression: a larger step
peak, a leak, a buffer, or a cache a model builds on its first forward and keeps. The baseline is the
repository's whatever the working directory, read before anything is measured, and a partial update
merges into it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from bench import gate

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "memory.json"
CONFIG = "deblur/lu K=3 D=3"  # one gate configuration, to keep the test fast
PLANT_FLOATS = 4 * 2**20  # float32: 16 MiB, far over 1 % of any of the configuration's gated fields


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


def _baseline_entry() -> dict:
    configs = gate.read_baseline(BASELINE)["configs"]
    (entry,) = [c for label, c in configs.items() if label.startswith(CONFIG)]
    return entry


def _plant_cache(monkeypatch: pytest.MonkeyPatch, n_floats: int) -> None:
    """Make every LU build a tensor of `n_floats` float32 on its first forward and keep it as an
    attribute: allocated before any measured step and never freed, so no step's peak sees it."""
    import models.lu

    forward = models.lu.LU.forward

    def planted(self, y, op):
        if not hasattr(self, "_planted_cache"):
            self._planted_cache = torch.empty(n_floats)
        return forward(self, y, op)

    monkeypatch.setattr(models.lu.LU, "forward", planted)


def _plant_buffer(monkeypatch: pytest.MonkeyPatch, n_floats: int) -> None:
    """Make every LU register a buffer of `n_floats` float32 at construction."""
    import models.lu

    init = models.lu.LU.__init__

    def planted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.register_buffer("planted", torch.zeros(n_floats))

    monkeypatch.setattr(models.lu.LU, "__init__", planted)


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


def test_gate_fails_on_a_planted_first_forward_cache(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    base = _baseline_entry()
    _plant_cache(monkeypatch, PLANT_FLOATS)
    assert gate.main(_args()) == 1
    out = capsys.readouterr().out
    assert f"{CONFIG} C=8: warmup_kept_bytes {base['warmup_kept_bytes']} -> " in out
    (row,) = gate.measure(CONFIG)
    # The step peaks cannot see it (the cache predates every measured step) ...
    assert row["tracked_peak_bytes"] == base["tracked_peak_bytes"] and row["leaked_bytes"] == 0
    # ... the warm-up steps' kept bytes do, to the byte.
    assert row["warmup_kept_bytes"] == base["warmup_kept_bytes"] + 4 * PLANT_FLOATS


def test_gate_fails_on_a_planted_buffer(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    base = _baseline_entry()
    assert base["buffer_bytes"] == 0  # the rule allows no growth from 0
    _plant_buffer(monkeypatch, PLANT_FLOATS)
    assert gate.main(_args()) == 1
    out = capsys.readouterr().out
    assert f"{CONFIG} C=8: buffer_bytes 0 -> {4 * PLANT_FLOATS} bytes" in out
    (row,) = gate.measure(CONFIG)
    assert row["tracked_peak_bytes"] == base["tracked_peak_bytes"]  # invisible to the step's peak
    assert row["buffer_bytes"] == 4 * PLANT_FLOATS


def test_gate_resident_bytes_match_the_baseline_without_a_plant() -> None:
    (row,) = gate.measure(CONFIG)
    base = _baseline_entry()
    assert {k: row[k] for k in gate.GATED_FIELDS} == {k: base[k] for k in gate.GATED_FIELDS}
    # Adam's two moments per parameter plus one step counter per parameter tensor are what one
    # warm-up step of LU keeps (it returns no solver statistics).
    assert row["warmup_kept_bytes"] == row["optimizer_bytes"] > 2 * row["param_bytes"]


def _without_entry(text: str, label: str) -> str:
    """The baseline's text without the lines of `label`'s entry (the writer's indent-2 layout)."""
    lines = text.splitlines()
    start = lines.index(f'    "{label}": {{')
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip(",") == "    }")
    return "\n".join(lines[:start] + lines[end + 1 :])


def test_update_only_merges_into_the_baseline(tmp_path: Path, capsys) -> None:
    path = tmp_path / "memory.json"
    doc = json.loads(BASELINE.read_text())
    (label,) = [k for k in doc["configs"] if k.startswith(CONFIG)]
    doc["configs"][label]["tracked_peak_bytes"] = 1  # stale: the merge must replace it
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    before = path.read_text()
    assert gate.main(_args(baseline=path, update=True)) == 0
    assert "1 configurations measured, 41 kept as they were" in capsys.readouterr().out
    after = path.read_text()
    assert _without_entry(after, label) == _without_entry(before, label)  # the others, byte for byte
    assert json.loads(after)["configs"][label] == _baseline_entry()  # re-measured: the committed entry
    # A configuration absent from the baseline fails the gate and names the fix.
    doc = gate.read_baseline(path)
    del doc["configs"][label]
    path.write_text(json.dumps(doc))
    assert gate.main(_args(baseline=path)) == 1
    assert "--update" in capsys.readouterr().out


def _no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the gate measured before checking its inputs")

    monkeypatch.setattr(gate, "run_configs", refuse)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no memory baseline at"),
        ("{not json", "not valid JSON"),
        ('{"configs": []}', "'configs' mapping"),
        ('{"configs": {"a": {"tracked_peak_bytes": 5}}}', "entry 'a' lacks a non-negative integer param"),
    ],
)
def test_bad_baseline_fails_at_once_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, content: str | None, expected: str
) -> None:
    path = tmp_path / "memory.json"
    if content is not None:
        path.write_text(content)
    _no_measuring(monkeypatch)
    for update in (False, True):  # a merge (--update --only) needs a valid baseline too
        assert gate.main(_args(baseline=path, update=update)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(path) in err and expected in err, err


def test_only_matching_nothing_fails_at_once(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _no_measuring(monkeypatch)
    assert gate.main(_args(only="no/such config")) == 2
    err = capsys.readouterr().err
    assert "matches no gate configuration" in err and CONFIG in err


def test_merge_refuses_a_baseline_of_another_torch_version(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({**json.loads(BASELINE.read_text()), "torch_version": "1.0.0"}))
    _no_measuring(monkeypatch)
    assert gate.main(_args(baseline=path, update=True)) == 2
    assert "made with torch 1.0.0" in capsys.readouterr().err


def test_default_baseline_is_the_repositorys_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    assert gate.DEFAULT_BASELINE == BASELINE
    parser = argparse.ArgumentParser()
    gate.add_arguments(parser)
    monkeypatch.chdir(tmp_path)  # no results/ here
    args = parser.parse_args(["--only", CONFIG])
    assert args.baseline == BASELINE
    assert gate.main(args) == 0
    assert "PASS" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


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


def test_verdict_rule_for_resident_bytes_known_answer() -> None:
    def entry(now: dict, base: dict) -> gate.GateEntry:
        return gate.GateEntry("d", "d", 100, 100, resident_bytes=now, resident_baseline_bytes=base)

    # +1.0 % of a resident field is allowed, as for the peak ...
    code, _ = gate.verdict([entry({"param_bytes": 1010}, {"param_bytes": 1000})], 0.01, 0.05)
    assert code == 0
    # ... +1.1 % is not, and a field whose baseline is 0 may not grow by a single byte.
    code, message = gate.verdict([entry({"param_bytes": 1011}, {"param_bytes": 1000})], 0.01, 0.05)
    assert code == 1 and "param_bytes 1000 -> 1011" in message
    code, message = gate.verdict([entry({"buffer_bytes": 1}, {"buffer_bytes": 0})], 0.01, 0.05)
    assert code == 1 and "buffer_bytes 0 -> 1 bytes (from 0" in message
