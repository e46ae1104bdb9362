"""The one-screen summary of a `python -m bench gpu-check` folder, read from the files its parts wrote.

Inputs (any may be missing: a part that did not run is shown as such): ``probe/environment.json``,
``<part>/result.json`` (status, times, notes), ``gpu-tests/junit.xml`` (counts, failures, and the
slope test's properties: tracked and CUDA slopes in K, offsets), ``runs.csv`` (the ``gpu`` sweep:
statuses, CUDA peaks at the largest K per configuration and task, NVML's per-process reading),
``operators/benchmark.json`` (CT ``A+A_adjoint`` speed-up over deepinv) and ``race/benchmark.json``
(our LUSER step over each peer's: time, peak and operator-count ratios). Reads files only: no torch.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness.results import read_rows

MIB = 2**20
TASK_ORDER: tuple[str, ...] = ("deblur", "ct", "mri")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- junit


def junit_cases(path: Path) -> list[dict[str, Any]]:
    """Test cases of a junit XML file: name, outcome (passed/failed/error/skipped), properties."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    cases = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            if case.find(tag) is not None:
                outcome = name
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        cases.append({"name": case.get("name", ""), "outcome": outcome, "properties": props})
    return cases


def _junit_lines(path: Path) -> list[str]:
    cases = junit_cases(path)
    if not cases:
        return [f"no test cases in {path.parent.name}/{path.name}" + ("" if path.exists() else " (no file)")]
    counts = Counter(c["outcome"] for c in cases)
    lines = [", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped") if counts[k])]
    bad = [c["name"] for c in cases if c["outcome"] in ("failed", "error")]
    if bad:
        lines.append("not passed: " + ", ".join(bad[:6]) + (f" (+{len(bad) - 6})" if len(bad) > 6 else ""))
    return lines


def _slope_lines(path: Path) -> list[str]:
    """The slope test's properties: tracked/CUDA slope ratio and the offset range per model."""
    parts = []
    for case in junit_cases(path):
        p = case["properties"]
        if "slope_ratio" not in p:
            continue
        model = case["name"].partition("[")[2].rstrip("]") or case["name"]
        parts.append(
            f"{model} {float(p['slope_ratio']):.4f}"
            f" (offset {float(p['offset_mib_min']):.1f}..{float(p['offset_mib_max']):.1f} MiB)"
        )
    return ["tracked/CUDA slope in K: " + "; ".join(parts)] if parts else []


def _gpu_tests(out: Path) -> list[str]:
    return _junit_lines(out / "gpu-tests" / "junit.xml") + _slope_lines(out / "gpu-tests" / "junit.xml")


# ----------------------------------------------------------------------------- sweep


def config_label(row: dict[str, str]) -> str:
    """'lu-17', 'lu_ckpt-17', 'luser-ift', 'luser-feature-jfb', 'deq-17' from a run row."""
    extra = _json_text(row.get("model_extra", ""))
    if row["model"] in ("lu", "lu_ckpt", "deq"):
        return f"{row['model']}-{row.get('reg_depth', '')}"
    cell = extra.get("cell")
    return "-".join(x for x in (row["model"], cell if cell and cell != "image" else "", row.get("backward"))
                    if x)  # fmt: skip


def _json_text(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _latest_rows(path: Path) -> list[dict[str, str]]:
    """The last row per run_id of a runs.csv ([] when missing or unreadable)."""
    try:
        return list({r["run_id"]: r for r in read_rows(path)}.values())
    except (OSError, ValueError):
        return []


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _sweep(out: Path) -> list[str]:
    rows = _latest_rows(out / "runs.csv")
    if not rows:
        return ["no rows (runs.csv missing, empty or unreadable)"]
    statuses = Counter(r["status"] for r in rows)
    lines = [f"{len(rows)} rows: " + ", ".join(f"{n} {s}" for s, n in statuses.most_common())]
    devices = Counter(r["device"] for r in rows)
    lines.append("device: " + ", ".join(f"{d} ({n})" for d, n in devices.most_common()))
    for task in sorted({r["task"] for r in rows}, key=_task_key):
        peak: dict[str, tuple[int, float]] = {}
        for r in rows:
            value = _float(r.get("cuda_peak_bytes"))
            if r["task"] != task or r["status"] != "ok" or value is None:
                continue
            k = int(_float(r.get("n_iters")) or 0)
            label = config_label(r)
            if label not in peak or k > peak[label][0]:
                peak[label] = (k, value)
        if peak:
            cells = ", ".join(
                f"{label}{f' K{k}' if k else ''} {v / MIB:.0f}" for label, (k, v) in peak.items()
            )
            lines.append(f"{task} CUDA peak MiB: {cells}")
    nvml = [
        _float(r.get("nvml_process_used_bytes")) for r in rows if r.get("nvml_status", "").startswith("ok")
    ]
    seen = [v for v in nvml if v is not None]
    nvml_status = Counter((r.get("nvml_status") or "empty").split(":")[0] for r in rows)
    text = ", ".join(f"{n} {s}" for s, n in nvml_status.most_common())
    if seen:
        text += f"; process used {min(seen) / MIB:.0f}..{max(seen) / MIB:.0f} MiB"
    lines.append(f"NVML: {text}")
    return lines


# ----------------------------------------------------------------------------- benchmarks


def _benchmarks(path: Path) -> list[dict[str, Any]]:
    doc = _json(path)
    return list(doc.get("benchmarks", [])) if isinstance(doc, dict) else []


def _operators(out: Path) -> list[str]:
    benches = _benchmarks(out / "operators" / "benchmark.json")
    lines = [f"{len(benches)} benchmarks"] + _junit_lines(out / "operators" / "junit.xml")
    ratios, targets, skipped = [], {}, ""
    for b in benches:
        info, params = b.get("extra_info", {}), b.get("params") or {}
        if info.get("speedup_vs_deepinv") is not None:
            batch = params.get("batch")
            ratios.append(f"{params.get('n_angles')}a B{batch} {params.get('backend')}"
                          f" {info['speedup_vs_deepinv']:.1f}x")  # fmt: skip
            targets[str(batch)] = info.get("target_speedup")
        skipped = skipped or str(info.get("deepinv") or "")
    if ratios:
        wanted = ", ".join(f"B{b} >= {t:g}x" for b, t in sorted(targets.items()))
        lines.append(f"CT A+A^T speed-up over deepinv (targets {wanted}): " + ", ".join(ratios))
    elif skipped:
        lines.append(f"CT A+A^T speed-up over deepinv: {skipped}")
    return lines


def _race(out: Path) -> list[str]:
    benches = _benchmarks(out / "race" / "benchmark.json")
    lines = _junit_lines(out / "race" / "junit.xml")
    for b in benches:
        info = b.get("extra_info", {})
        if info.get("impl") == "ours":
            median = (b.get("stats") or {}).get("median")
            ms = f"{1e3 * median:.1f} ms" if median is not None else "untimed"
            lines.append(f"ours: {ms}, tracked peak {info.get('peak_bytes', 0) / MIB:.1f} MiB")
        elif "time_ratio_ours_over_peer" in info:
            peer = info["impl"]
            lines.append(
                f"vs {peer}: time {info['time_ratio_ours_over_peer']:.2f}x, peak"
                f" {info['peak_ratio_ours_over_peer']:.2f}x, ops {info['ops_ratio_ours_over_peer']:.2f}x"
                f" (ours {info['step_ms_ours']:.1f} ms, {peer} {info[f'step_ms_{peer}']:.1f} ms,"
                f" bare {info['step_ms_bare']:.1f} ms)"
            )
    return lines


def _probe_header(out: Path) -> str:
    env = _json(out / "probe" / "environment.json")
    if not isinstance(env, dict):
        return "gpu-check: no probe/environment.json"
    devices = env.get("devices") or []
    dev = devices[0] if devices else {}
    nvml = env.get("nvml") or {}
    stamp = env.get("stamp") or {}
    packages = env.get("packages") or {}
    peers = ", ".join(f"{n} {v or 'missing'}" for n, v in packages.items() if n in ("deepinv", "torchdeq"))
    return (
        f"gpu-check: {dev.get('name', 'no CUDA device')} ({(dev.get('total_bytes') or 0) / 2**30:.0f} GiB),"
        f" driver {nvml.get('driver_version', '?')}, torch {stamp.get('torch_version', '?')}"
        f" CUDA {stamp.get('cuda_version', '?')}, git {str(stamp.get('git_sha', '?'))[:12]}; {peers}"
    )


DETAILS: dict[str, Callable[[Path], list[str]]] = {
    "probe": lambda out: [],
    "gpu-tests": _gpu_tests,
    "sweep": _sweep,
    "operators": _operators,
    "race": _race,
}


def summarise(out: Path, parts: Sequence[str]) -> str:
    """The summary of the gpu-check folder `out` for `parts`, about one screen of text."""
    lines = [_probe_header(out), f"{'part':<10} {'status':<12} {'took':>6} {'share':>6} {'est.':>6}"]
    total = 0.0
    for name in parts:
        result = _json(out / name / "result.json")
        if not isinstance(result, dict):
            lines.append(f"{name:<10} {'not run':<12}")
            continue
        total += float(result.get("took_s") or 0)
        rc = result.get("returncode")
        times = " ".join(f"{float(result.get(k) or 0):5.0f}s" for k in ("took_s", "share_s", "estimate_s"))
        exit_code = f"  exit {rc}" if rc not in (None, 0) else ""
        lines.append(f"{name:<10} {result['status']:<12} {times}{exit_code}")
        details = DETAILS.get(name, lambda _: [])(out) if result["status"] != "not started" else []
        lines += [f"    {text}" for text in (*result.get("notes", []), *details)]
    lines.append(f"total {total:.0f} s in the parts; files under {out}")
    return "\n".join(lines)
