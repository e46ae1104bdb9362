"""`python -m bench gate [--baseline PATH] [--update] [--only TEXT]`: the memory-regression gate.

The gate runs a fixed set of configurations (every model on every task at small sizes, the sweep
`bench/sweeps/gate.toml`) through `bench.harness.run.run_spec`, in this process, and compares each
with a committed baseline. Memory measured this way is deterministic and device-independent, so the
rules are tight. Every gated field is compared with its own baseline value by one rule: it fails
when it grew by more than `--max-increase` (1 %) of that value, so a field whose baseline is 0 (no
buffers, say) may not grow at all. The gated fields (`GATED_FIELDS`):

- ``tracked_peak_bytes``: the peak of one warm training step (`bench.meters.memory.LiveStorageTracker`);
- the resident bytes (`GATE_RESIDENT`): the model's parameters and buffers, the optimiser's state,
  the operator's tensors, and ``warmup_kept_bytes``, what the warm-up steps created and left alive.
  One step's peak cannot see memory that was allocated before it and stays put: a buffer registered
  at construction, or a cache a model builds on its first forward and keeps. Those would otherwise
  pass whatever their size.

Besides, a configuration fails when it keeps bytes alive between steps (``leaked_bytes > 0`` over
consecutive warm steps, `bench.meters.memory.steady_memory`), when its run did not finish
(``status != ok``) or when it is missing from the baseline. A gated field that shrank by more than
`--report-decrease` (5 %) is listed as an improvement, with a suggestion to refresh the baseline.

The table also shows the allocator-level peak (``alloc_peak_bytes``, kernel scratch included) and the
steady peak over several steps beside the tracked one. The allocator peak is recorded in the baseline
and its change shown, but not gated: the scratch a CPU kernel allocates depends on the CPU's
instruction set and the oneDNN build, so it is a property of the machine as much as of the code.

The baseline (`DEFAULT_BASELINE`: ``results/baselines/memory.json`` of the repository this package
lives in, whatever the working directory) is read and validated before anything is measured, so a
missing or broken one costs no measuring time: it exits 2 with one line naming the path. So does
``--only`` text that matches no configuration. ``--update`` measures every configuration and
replaces the baseline; ``--update --only TEXT`` measures the matching ones and merges them into the
existing baseline, leaving every other entry as it was (a partial update would otherwise drop
them). A merge needs a valid baseline made with the same torch version, since torch's kernels decide
which temporaries an operation allocates; a different version is reported when gating.

Configurations are keyed by their label (task/model and the swept fields), not by run_id: a changed
model default then shows up as a change in bytes rather than as a missing configuration.
Runs execute in this process, one after another (memory of a step does not depend on what ran
before: the trackers only see storages created inside the steps they follow, the warm-up steps
included).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The repository's baseline, found from this file (bench/gate.py), not from the working directory.
DEFAULT_BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "memory.json"
GATE_PRESET = "gate"
#: Resident bytes of a run row (`bench.harness.run`), each gated against its own baseline value.
GATE_RESIDENT: tuple[str, ...] = (
    "param_bytes", "buffer_bytes", "optimizer_bytes", "operator_bytes", "warmup_kept_bytes",
)  # fmt: skip
#: Every gated field; each baseline entry holds an integer for each.
GATED_FIELDS: tuple[str, ...] = ("tracked_peak_bytes", *GATE_RESIDENT)
#: The static part of the resident bytes, summed in the table's "resident" column.
_STATIC = ("param_bytes", "buffer_bytes", "optimizer_bytes", "operator_bytes")


class BaselineError(ValueError):
    """The baseline file is missing, unreadable or not in the gate's format (the message names it)."""


@dataclass(frozen=True)
class GateEntry:
    """One configuration now against its baseline: the tracked peak (None when absent), the resident
    bytes of `GATE_RESIDENT` (empty when the run failed or the configuration has no baseline), and the
    reported, ungated figures."""

    run_id: str
    label: str
    now_bytes: int | None
    baseline_bytes: int | None
    status: str = "ok"
    alloc_bytes: int | None = None
    alloc_baseline_bytes: int | None = None
    steady_bytes: int | None = None
    leaked_bytes: int | None = None
    resident_bytes: Mapping[str, int] = field(default_factory=dict)
    resident_baseline_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def change(self) -> float | None:
        """Relative change of the tracked peak now / baseline - 1, None when either side is missing."""
        if self.now_bytes is None or not self.baseline_bytes:
            return None
        return self.now_bytes / self.baseline_bytes - 1.0

    def compared(self) -> list[tuple[str, int, int]]:
        """(field, baseline, now) of every gated field measured on both sides."""
        pairs = [("tracked_peak_bytes", self.baseline_bytes, self.now_bytes)]
        pairs += [(k, self.resident_baseline_bytes.get(k), self.resident_bytes.get(k)) for k in GATE_RESIDENT]
        return [(k, base, now) for k, base, now in pairs if base is not None and now is not None]

    def grown(self, max_increase: float) -> list[tuple[str, int, int]]:
        """The gated fields that grew by more than ``max_increase`` of their baseline value."""
        return [(k, base, now) for k, base, now in self.compared() if now > base * (1 + max_increase)]

    def shrunk(self, report_decrease: float) -> list[tuple[str, int, int]]:
        """The gated fields that shrank by more than ``report_decrease`` of their baseline value."""
        return [(k, base, now) for k, base, now in self.compared() if now < base * (1 - report_decrease)]


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


def gate_specs(only: str | None = None) -> list[tuple[str, Any]]:
    """(label, spec) of the gate configurations whose label contains ``only`` (all with None); nothing
    is run. ValueError when two configurations share a label or ``only`` matches none."""
    from bench.harness.expand import load_preset
    from bench.harness.specs import normalise, spec_columns

    specs = [(config_label(spec_columns(normalise(s))), s) for s in load_preset(GATE_PRESET).specs]
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{GATE_PRESET}.toml: gate labels must be unique, got {sorted(labels)}")
    chosen = [(label, s) for label, s in specs if only is None or only in label]
    if not chosen:
        raise ValueError(
            f"--only {only!r} matches no gate configuration; the labels are: {', '.join(labels)}"
        )
    return chosen


def run_configs(specs: Sequence[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Run (label, spec) pairs in this process; one run row each (`bench.harness.run.run_spec`) with
    its label."""
    from bench.harness.run import run_spec

    return [{**run_spec(spec), "label": label} for label, spec in specs]


def measure(only: str | None = None) -> list[dict[str, Any]]:
    """Run the gate configurations whose label contains ``only`` (all with None)."""
    return run_configs(gate_specs(only))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_baseline(path: Path) -> dict[str, Any]:
    """The baseline document, validated: a JSON object whose ``configs`` maps label -> an object with
    a non-negative integer for every field of `GATED_FIELDS`. BaselineError (one line, naming the
    absolute path and what was expected) otherwise."""
    path = path.absolute()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BaselineError(
            f"no memory baseline at {path}: create it with `python -m bench gate --update`"
        ) from None
    except OSError as err:
        raise BaselineError(f"cannot read the memory baseline {path}: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BaselineError(f"{path}: not valid JSON ({err}); expected the gate's baseline format") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("configs"), dict):
        raise BaselineError(f"{path}: expected a JSON object with a 'configs' mapping label -> entry")
    for label, entry in doc["configs"].items():
        bad = [k for k in GATED_FIELDS if not _is_count(entry.get(k))] if isinstance(entry, dict) else ["all"]
        if bad:
            raise BaselineError(
                f"{path}: entry {label!r} lacks a non-negative integer {'/'.join(bad)} (every entry needs "
                f"{', '.join(GATED_FIELDS)}); refresh it with `python -m bench gate --update`"
            )
    return doc


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """A baseline entry of one ok run row."""
    return {
        "run_id": row["run_id"],
        **{k: int(row[k]) for k in GATED_FIELDS},
        "alloc_peak_bytes": _int(row.get("alloc_peak_bytes")),
    }


def write_baseline(
    path: Path, rows: Sequence[Mapping[str, Any]], keep: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write the baseline of `rows` (all ok) to `path` and return it; with `keep` (the configs of an
    existing baseline), the rows' entries are merged into those, every other entry kept as it was."""
    import torch

    bad = [r["label"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"refusing to write a baseline with failed runs: {bad}")
    configs = dict(keep or {})
    configs.update({r["label"]: _entry(r) for r in rows})
    doc = {
        "description": "tracked peak bytes and resident bytes (gated: "
        + ", ".join(GATED_FIELDS)
        + ") and allocator-level peak bytes (reported) of one warm training step per gate configuration "
        "(bench/sweeps/gate.toml); regenerate with `python -m bench gate --update`",
        "torch_version": torch.__version__.split("+")[0],
        "configs": configs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return doc


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
                resident_bytes={k: int(r[k]) for k in GATE_RESIDENT} if ok else {},
                resident_baseline_bytes={k: int(base[k]) for k in GATE_RESIDENT if k in base},
            )
        )
    return entries


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.3f} MiB"


def _pct(now: int | None, base: int | None) -> str:
    return "-" if now is None or not base else f"{100 * (now / base - 1):+.2f} %"


def format_table(entries: Sequence[GateEntry]) -> str:
    """Tracked peak (baseline, now, change), allocator peak (now, change), resident bytes now (static:
    parameters, buffers, optimiser, operator; kept: warmup_kept_bytes), steady peak, leak."""
    header = ("config", "baseline", "now", "change", "alloc now", "alloc change", "resident", "kept")
    lines: list[tuple[str, ...]] = [(*header, "steady", "leaked B")]
    for e in entries:
        res = e.resident_bytes
        lines.append(
            (
                e.label,
                _mib(e.baseline_bytes),
                _mib(e.now_bytes),
                _pct(e.now_bytes, e.baseline_bytes),
                _mib(e.alloc_bytes),
                _pct(e.alloc_bytes, e.alloc_baseline_bytes),
                _mib(sum(res.get(k, 0) for k in _STATIC) if res else None),
                _mib(res.get("warmup_kept_bytes")),
                _mib(e.steady_bytes),
                "-" if e.leaked_bytes is None else str(e.leaked_bytes),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def _changes(entries: Sequence[GateEntry], which: str, fraction: float) -> list[str]:
    """One line per changed gated field: ``label: field baseline -> now (change)``."""
    out = []
    for e in entries:
        for k, base, now in e.grown(fraction) if which == "grown" else e.shrunk(fraction):
            pct = f"{100 * (now / base - 1):+.2f} %" if base else "from 0"
            out.append(f"  {e.label}: {k} {base} -> {now} bytes ({pct}, {(now - base) / 2**20:+.3f} MiB)")
    return out


def verdict(entries: Sequence[GateEntry], max_increase: float, report_decrease: float) -> tuple[int, str]:
    """(exit code, message): 1 when any configuration grew, leaks, is new or failed."""
    grown = [e for e in entries if e.grown(max_increase)]
    improved = [e for e in entries if e.shrunk(report_decrease)]
    missing = [e for e in entries if e.baseline_bytes is None]
    failed = [e for e in entries if e.status != "ok"]
    leaking = [e for e in entries if e.leaked_bytes]
    out = []
    if grown:
        out.append(
            f"FAIL: {len(grown)} configuration(s) exceed the baseline by more than "
            f"{100 * max_increase:.1f} % (tracked peak or resident bytes):"
        )
        out += _changes(grown, "grown", max_increase)
        out.append(format_table(grown))
    if leaking:
        out.append(
            f"FAIL: {len(leaking)} configuration(s) keep bytes alive between steps (leaked_bytes > 0):"
        )
        out.append(format_table(leaking))
    if failed:
        out.append("FAIL: run(s) did not finish: " + "; ".join(f"{e.label} ({e.status})" for e in failed))
    if missing:
        out.append(
            "FAIL: not in the baseline (run `python -m bench gate --update --only TEXT` and commit it): "
            + ", ".join(e.label for e in missing)
        )
    if improved:
        out.append(
            f"note: {len(improved)} configuration(s) improved by more than {100 * report_decrease:.0f} %; "
            "refresh the baseline with `python -m bench gate --update`:"
        )
        out += _changes(improved, "shrunk", report_decrease)
    code = 1 if (grown or failed or missing or leaking) else 0
    if code == 0:
        out.append(
            f"PASS: {len(entries)} configurations within +{100 * max_increase:.1f} % of the baseline "
            "(tracked peak and resident bytes), none leaking between steps"
        )
    return code, "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--baseline", type=Path, default=DEFAULT_BASELINE, help="baseline JSON (default: %(default)s)"
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="measure and write the baseline (with --only: merge the matching entries into it)",
    )
    p.add_argument("--max-increase", type=float, default=0.01, help="allowed relative growth (default 0.01)")
    p.add_argument("--report-decrease", type=float, default=0.05, help="list improvements beyond this (0.05)")
    p.add_argument("--only", default=None, help="only configurations whose label contains this text")


def _check_before_measuring(
    args: argparse.Namespace, version: str
) -> tuple[list[tuple[str, Any]], dict[str, Any] | None]:
    """The chosen configurations and the baseline (None for a full --update, which replaces it),
    checked before anything runs; ValueError (BaselineError) with a one-line message otherwise."""
    if args.update and args.only is None:
        return gate_specs(args.only), None
    baseline = read_baseline(args.baseline)
    specs = gate_specs(args.only)
    made_with = baseline.get("torch_version")
    if args.update and made_with not in (None, version):
        raise BaselineError(
            f"{args.baseline}: made with torch {made_with}, measuring with {version}; a merge "
            "(--update --only) would mix the two: refresh every entry with `python -m bench gate --update`"
        )
    return specs, baseline


def _update(path: Path, rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None) -> int:
    """Write the measured rows as the baseline (merged into `baseline`'s configs when given)."""
    try:
        doc = write_baseline(path, rows, keep=None if baseline is None else baseline["configs"])
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kept = len(doc["configs"]) - len(rows)
    print(f"wrote {path} ({len(rows)} configurations measured, {kept} kept as they were)")
    print(format_table(compare(rows, doc)))
    return 0


def main(args: argparse.Namespace) -> int:
    import torch

    version = torch.__version__.split("+")[0]
    try:
        specs, baseline = _check_before_measuring(args, version)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = run_configs(specs)
    if args.update or baseline is None:  # baseline is None only for a full --update
        return _update(args.baseline, rows, baseline)
    if baseline.get("torch_version") not in (None, version):
        print(f"note: baseline made with torch {baseline['torch_version']}, measuring with {version}")
    entries = compare(rows, baseline)
    print(format_table(entries))
    code, message = verdict(entries, args.max_increase, args.report_decrease)
    print(message)
    return code
