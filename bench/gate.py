"""`python -m bench gate [--baseline results/baselines/memory.json] [--update]`: the memory-regression gate.

The gate measures the tracked peak bytes (`bench.meters.memory.LiveStorageTracker`, device-independent and
deterministic) of one warm training step for a fixed set of configurations, every model on every task
at small sizes (the sweep `bench/sweeps/gate.toml`), and compares them with a committed baseline:

- a configuration whose peak grew by more than `--max-increase` (1 %) fails the gate (exit 1);
- a configuration that keeps bytes alive between steps (``leaked_bytes > 0`` over the run's
  consecutive warm steps, `bench.meters.memory.steady_memory`) fails, whatever its peak;
- one that shrank by more than `--report-decrease` (5 %) is listed as an improvement, with a
  suggestion to refresh the baseline with `--update`;
- a configuration missing from the baseline, or a run that did not finish (`status != ok`), fails.

The table also shows the allocator-level peak (``alloc_peak_bytes``, kernel scratch included) and the
steady peak over several steps beside the tracked one. The allocator peak is recorded in the baseline
and its change shown, but not gated: the scratch a CPU kernel allocates depends on the CPU's
instruction set and the oneDNN build, so it is a property of the machine as much as of the code.

Configurations are keyed by their label (task/model and the swept fields), not by run_id: a changed
model default then shows up as a change in bytes rather than as a missing configuration.
Runs execute in this process, one after another (memory of one step does not depend on what ran
before: the tracker only sees storages created inside the step). The baseline records the torch
version it was made with; a different version is reported, since torch's kernels decide which
temporaries an operation allocates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASELINE = Path("results/baselines/memory.json")
GATE_PRESET = "gate"


@dataclass(frozen=True)
class GateEntry:
    """One configuration's tracked peak now, against its baseline (None when absent)."""

    run_id: str
    label: str
    now_bytes: int | None
    baseline_bytes: int | None
    status: str = "ok"
    alloc_bytes: int | None = None
    alloc_baseline_bytes: int | None = None
    steady_bytes: int | None = None
    leaked_bytes: int | None = None

    @property
    def change(self) -> float | None:
        """Relative change now / baseline - 1, None when either side is missing."""
        if self.now_bytes is None or not self.baseline_bytes:
            return None
        return self.now_bytes / self.baseline_bytes - 1.0


def config_label(row: Mapping[str, Any]) -> str:
    """A readable name for a gate configuration, e.g. 'ct/luser K=2 D=2 ift' ('... ift cell=feature'
    for a non-default LUSER cell, so the image-cell labels stay what they were)."""
    parts = [f"{row['task']}/{row['model']}"]
    for key, short in (("n_iters", "K"), ("reg_depth", "D"), ("reg_width", "C")):
        if row.get(key) not in (None, ""):
            parts.append(f"{short}={row[key]}")
    if row.get("backward") not in (None, ""):
        parts.append(str(row["backward"]))
    extra = str(row.get("model_extra") or "")
    cell = json.loads(extra).get("cell") if extra.startswith("{") else None
    if cell:
        parts.append(f"cell={cell}")
    return " ".join(parts)


def measure(only: str | None = None) -> list[dict[str, Any]]:
    """Run the gate configurations in this process; one run row each (see `bench.harness.run.run_spec`)."""
    from bench.harness.expand import load_preset
    from bench.harness.run import run_spec
    from bench.harness.specs import normalise, spec_columns

    rows = []
    for spec in load_preset(GATE_PRESET).specs:
        label = config_label(spec_columns(normalise(spec)))
        if only is not None and only not in label:
            continue
        rows.append({**run_spec(spec), "label": label})
    labels = [r["label"] for r in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{GATE_PRESET}.toml: gate labels must be unique, got {sorted(labels)}")
    return rows


def read_baseline(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no memory baseline at {path}: create it with `python -m bench gate --update`"
        ) from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected the gate's baseline format") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("configs"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'configs' mapping label -> entry")
    return doc


def write_baseline(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import torch

    bad = [r["label"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"refusing to write a baseline with failed runs: {bad}")
    doc = {
        "description": "tracked peak bytes (gated) and allocator-level peak bytes (reported) of one "
        "warm training step per gate configuration (bench/sweeps/gate.toml); regenerate with "
        "`python -m bench gate --update`",
        "torch_version": torch.__version__.split("+")[0],
        "configs": {
            r["label"]: {
                "run_id": r["run_id"],
                "tracked_peak_bytes": int(r["tracked_peak_bytes"]),
                "alloc_peak_bytes": _int(r.get("alloc_peak_bytes")),
            }
            for r in sorted(rows, key=lambda r: r["label"])
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def compare(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any]) -> list[GateEntry]:
    configs = baseline["configs"]
    entries = []
    for r in rows:
        base = configs.get(r["label"]) or {}
        ok = r["status"] == "ok"
        entries.append(
            GateEntry(
                run_id=r["run_id"],
                label=r["label"],
                now_bytes=_int(r["tracked_peak_bytes"]) if ok else None,
                baseline_bytes=_int(base.get("tracked_peak_bytes")),
                status=str(r["status"]) if ok else f"{r['status']}: {r['error']}",
                alloc_bytes=_int(r.get("alloc_peak_bytes")) if ok else None,
                alloc_baseline_bytes=_int(base.get("alloc_peak_bytes")),
                steady_bytes=_int(r.get("steady_peak_bytes")) if ok else None,
                leaked_bytes=_int(r.get("leaked_bytes")) if ok else None,
            )
        )
    return entries


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.3f} MiB"


def _pct(now: int | None, base: int | None) -> str:
    return "-" if now is None or not base else f"{100 * (now / base - 1):+.2f} %"


def format_table(entries: Sequence[GateEntry]) -> str:
    """Tracked peak (baseline, now, change: gated), allocator peak (now, change), steady peak, leak."""
    header = ("config", "baseline", "now", "change", "alloc now", "alloc change", "steady", "leaked B")
    lines = [header]
    for e in entries:
        lines.append(
            (
                e.label,
                _mib(e.baseline_bytes),
                _mib(e.now_bytes),
                _pct(e.now_bytes, e.baseline_bytes),
                _mib(e.alloc_bytes),
                _pct(e.alloc_bytes, e.alloc_baseline_bytes),
                _mib(e.steady_bytes),
                "-" if e.leaked_bytes is None else str(e.leaked_bytes),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def _exceeds(e: GateEntry, max_increase: float) -> bool:
    """Whether ``e``'s peak grew by more than ``max_increase`` (False without a change to compare)."""
    if e.change is None or e.now_bytes is None or e.baseline_bytes is None:
        return False
    return e.now_bytes > e.baseline_bytes * (1 + max_increase)


def verdict(entries: Sequence[GateEntry], max_increase: float, report_decrease: float) -> tuple[int, str]:
    """(exit code, message): 1 when any configuration regressed, is new or failed."""
    regressed = [e for e in entries if _exceeds(e, max_increase)]
    improved = [e for e in entries if e.change is not None and e.change < -report_decrease]
    missing = [e for e in entries if e.baseline_bytes is None]
    failed = [e for e in entries if e.status != "ok"]
    leaking = [e for e in entries if e.leaked_bytes]
    out = []
    if regressed:
        out.append(
            f"FAIL: {len(regressed)} configuration(s) exceed the baseline by more than "
            f"{100 * max_increase:.1f} %:"
        )
        out.append(format_table(regressed))
    if leaking:
        out.append(
            f"FAIL: {len(leaking)} configuration(s) keep bytes alive between steps (leaked_bytes > 0):"
        )
        out.append(format_table(leaking))
    if failed:
        out.append("FAIL: run(s) did not finish: " + "; ".join(f"{e.label} ({e.status})" for e in failed))
    if missing:
        out.append(
            "FAIL: not in the baseline (run `python -m bench gate --update` and commit it): "
            + ", ".join(e.label for e in missing)
        )
    if improved:
        out.append(
            f"note: {len(improved)} configuration(s) improved by more than {100 * report_decrease:.0f} %; "
            "refresh the baseline with `python -m bench gate --update`:"
        )
        out.append(format_table(improved))
    code = 1 if (regressed or failed or missing or leaking) else 0
    if code == 0:
        out.append(
            f"PASS: {len(entries)} configurations within +{100 * max_increase:.1f} % of the baseline, "
            "none leaking between steps"
        )
    return code, "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline", type=Path, default=DEFAULT_BASELINE, help="baseline JSON (default: %(default)s)"
    )
    p.add_argument("--update", action="store_true", help="measure and overwrite the baseline")
    p.add_argument("--max-increase", type=float, default=0.01, help="allowed relative growth (default 0.01)")
    p.add_argument("--report-decrease", type=float, default=0.05, help="list improvements beyond this (0.05)")
    p.add_argument("--only", default=None, help="only configurations whose label contains this text")


def main(args: argparse.Namespace) -> int:
    import torch

    rows = measure(args.only)
    if args.update:
        write_baseline(args.baseline, rows)
        print(f"wrote {args.baseline} ({len(rows)} configurations)")
        print(format_table(compare(rows, read_baseline(args.baseline))))
        return 0
    try:
        baseline = read_baseline(args.baseline)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    version = torch.__version__.split("+")[0]
    if baseline.get("torch_version") not in (None, version):
        print(f"note: baseline made with torch {baseline['torch_version']}, measuring with {version}")
    entries = compare(rows, baseline)
    print(format_table(entries))
    code, message = verdict(entries, args.max_increase, args.report_decrease)
    print(message)
    return code
