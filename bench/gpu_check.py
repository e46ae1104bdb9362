"""`python -m bench gpu-check --out DIR`: every check only a GPU can answer, in one call of bounded time.

Five parts, in this order (what a short GPU session needs most comes first), each a child process in
its own process group, writing under DIR:

- ``probe``: device, driver (NVML), torch / CUDA / cuDNN versions, optional packages present
  -> ``probe/environment.json``;
- ``gpu-tests``: ``pytest -m gpu tests`` (CUDA operator paths against CPU results; the tracked peak's
  growth in K against ``max_memory_allocated`` for every model, slopes and offsets kept as junit
  properties) -> ``gpu-tests/junit.xml``;
- ``sweep``: the ``gpu`` preset (bench/sweeps/gpu.toml) -> ``runs.csv``, the usual run rows (CUDA
  allocated and reserved peaks, tracked peak, NVML's view, synchronised step times); resumable;
- ``operators``: the CUDA cases of bench/benchmarks/test_operators_bench.py -> ``operators/benchmark.json``;
- ``race``: bench/benchmarks/test_race.py on CUDA -> ``race/benchmark.json``.

Time. The budget (``--budget-s``, default eight minutes for the whole call) less ``RESERVE_S`` is
shared by the parts in proportion to their estimates; each part's share is fixed when it starts, from
the time then left, so a part that ends early leaves its time to the later ones. A part still running
at the end of its share is interrupted: SIGINT to its process group (pytest still writes its junit
and benchmark files, the sweep keeps every row it appended), SIGKILL ``GRACE_S`` later. A part whose
share is under ``MIN_START_S`` (or its estimate, if less) is not started. The sweep also gets its
share as ``--time-budget`` (it stops starting runs) and ``RUN_TIMEOUT_S`` as ``--run-timeout``.

Estimates are stated figures, not measured by this module: ``PART_ESTIMATE_S`` per part, and per
sweep run ``RUN_OVERHEAD_S`` plus its steps at ``STEP_MS`` (FACTS.md's H100 figures at paper scale).
The first GPU run's ``took_s`` (``DIR/<part>/result.json``) are the measured ones.

Failures are recorded, never fatal: each part runs whatever happened to the ones before it; its
outcome (ok, failed with its exit code, interrupted, not started, skipped) goes to
``DIR/<part>/result.json``, and the summary (``DIR/summary.txt``, also printed) is built from those
files, so a second call with ``--parts`` completes the first. Optional packages are never imported
here: a missing peer (deepinv, torchdeq) deselects its benchmarks and is recorded as
"skipped: deepinv not installed".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.harness.specs import RunSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 480.0  # the whole call: eight minutes
RESERVE_S = 15.0  # kept back from the parts: interrupt grace and the summary
GRACE_S = 10.0  # between SIGINT and SIGKILL of an interrupted part
MIN_START_S = 10.0  # a part whose share is under this (or under its estimate, if less) is not started
RUN_TIMEOUT_S = 90.0  # one sweep run
PRESET = "gpu"
PEERS = ("deepinv", "torchdeq")
PART_NAMES = ("probe", "gpu-tests", "sweep", "operators", "race")
SHARE = "{share_s}"  # placeholder in a part's argv, replaced by its share of the budget at start

#: Stated wall times (s) of the parts other than the sweep, on one H100, interpreter start included.
#: probe: an interpreter with torch, one CUDA init. gpu-tests: collection of every test module (torch,
#: pandas, matplotlib imports) ~15 s, the slope test's 6 models x 4 K at 128x128 ~25 s, the CUDA
#: operator cases ~20 s. operators: 40 of our CUDA cases, each timed for BENCH_MAX_TIME_S (at least 5
#: rounds), plus the CT matrices' set-up (1.2 s at 60 angles, 3x at 180); deepinv's 28 cases. race:
#: per contender pair 3 models x ~70 steps of ~100 ms plus tracked and op-counted steps.
#: ``--benchmark-max-time`` of the benchmark parts: the benchmarks time with ``benchmark(fn)``, whose
#: rounds follow pytest-benchmark's options (default: a second per case), so the parts bound them here.
BENCH_MAX_TIME_S = 0.1
PART_ESTIMATE_S: dict[str, float] = {
    "probe": 5.0,
    "gpu-tests": 60.0,
    "sweep-start": 5.0,  # the sweep command itself: interpreter, preset expansion, fork server
    "operators": 40.0,
    "operators-deepinv": 20.0,
    "race": 25.0,  # our step alone
    "race-peer": 30.0,  # each installed peer
}

#: Seconds every sweep run costs besides its steps: a fork from the preloaded server, the task's
#: 8 images (the CT matrix ~1.2 s), CUDA and cuDNN initialisation in the fresh process.
RUN_OVERHEAD_S = 3.0
#: The tracked warm step (a Python call per dispatched operator) counted as this many plain steps.
TRACKED_STEP_COST = 5.0
#: Warm training steps measured per run besides warm-up and timed ones: the CUDA-peak step.
CUDA_PEAK_STEPS = 1


def _k(spec: RunSpec) -> int:
    return spec.n_iters or 1


def _depth(spec: RunSpec) -> int:
    return spec.reg_depth or 1


def _cell_factor(spec: RunSpec) -> float:
    return 3.0 if dict(spec.model_extra).get("cell") == "feature" else 1.0


#: Milliseconds of one warm training step at paper scale (B=8, 128x128, width 64) on an H100, by
#: model. From FACTS.md ("Memory ratios at realistic sizes", K=10, B=8): LU-17 83 ms (114 / 1.37),
#: LU-17 checkpointed 114 ms, LUSER 2-layer cell rebuilt in backward 60 ms, taken per LU step, LU
#: scaled by depth / 17; the feature cell at 3x the image cell (10.8 against 3.0 forward iterations);
#: the DEQ from paper.toml (about 100 ms at depth 5 and 25 iterations), scaled by depth and iterations.
STEP_MS: dict[str, Callable[[RunSpec], float]] = {
    "lu": lambda s: 8.3 * _k(s) * _depth(s) / 17,
    "lu_ckpt": lambda s: 11.4 * _k(s) * _depth(s) / 17,
    "luser": lambda s: 6.0 * _k(s) * _cell_factor(s),
    "deq": lambda s: 100.0 * _depth(s) / 5 * (s.max_iter or 40) / 25,
    "classical": lambda s: 1.0,
}


def run_estimate_s(spec: RunSpec) -> float:
    """Stated wall time of one sweep run: RUN_OVERHEAD_S plus its steps at STEP_MS."""
    if spec.model not in STEP_MS:
        raise KeyError(f"no stated step time for model {spec.model!r}; known: {sorted(STEP_MS)}")
    steps = spec.warmup_steps + spec.timed_steps + CUDA_PEAK_STEPS + TRACKED_STEP_COST + spec.steps
    return RUN_OVERHEAD_S + steps * STEP_MS[spec.model](spec) / 1e3


@dataclass(frozen=True)
class Part:
    """One child command of the check; `blocked` non-empty: not run, for that reason."""

    name: str
    what: str
    estimate_s: float
    argv: tuple[str, ...]
    notes: tuple[str, ...] = ()  # e.g. "race vs deepinv skipped: deepinv not installed"
    blocked: str = ""


@dataclass(frozen=True)
class Plan:
    out: Path
    parts: tuple[Part, ...]
    n_runs: int  # sweep runs: the preset's expansion
    budget_s: float

    @property
    def estimate_s(self) -> float:
        return sum(p.estimate_s for p in self.parts if not p.blocked)


@dataclass
class PartResult:
    name: str
    status: str  # ok | failed | interrupted | not started | skipped
    estimate_s: float
    share_s: float = 0.0
    took_s: float = 0.0
    returncode: int | None = None
    started_utc: str = ""
    notes: list[str] = field(default_factory=list)


def installed_packages(names: Sequence[str] = PEERS) -> dict[str, bool]:
    """Whether each optional package can be found, without importing it."""
    return {name: importlib.util.find_spec(name) is not None for name in names}


def _pytest(out_file: Path, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, f"--junitxml={out_file}")


def build_plan(
    out: Path,
    *,
    budget_s: float = BUDGET_S,
    installed: Mapping[str, bool] | None = None,
    names: Sequence[str] = PART_NAMES,
    repo_root: Path = REPO_ROOT,
) -> Plan:
    """The parts to run (those in `names`), their commands and stated estimates."""
    from bench.harness.expand import load_preset

    have = dict(installed) if installed is not None else installed_packages()
    missing = [p for p in PEERS if not have.get(p, False)]
    skip = {p: f"skipped: {p} not installed" for p in missing}
    est = PART_ESTIMATE_S
    specs = load_preset(PRESET).specs
    bench_dir = repo_root / "bench" / "benchmarks"
    tests_dir = repo_root / "tests"
    probe_code = f"from bench.gpu_check import probe; probe({str(out / 'probe' / 'environment.json')!r})"

    max_time = f"--benchmark-max-time={BENCH_MAX_TIME_S:g}"
    op_args = ["-m", "gpu", max_time, f"--benchmark-json={out / 'operators' / 'benchmark.json'}"]
    if "deepinv" in skip:
        op_args += ["-k", "not deepinv"]
    race_args = [max_time, f"--benchmark-json={out / 'race' / 'benchmark.json'}"]
    if missing:
        race_args += ["-k", " and ".join(f"not {p}" for p in missing)]
    peers_in_race = [p for p in PEERS if p not in skip]
    parts = {
        "probe": Part(
            "probe", "device, driver (NVML), versions, optional packages -> probe/environment.json",
            est["probe"], (sys.executable, "-c", probe_code),
        ),
        "gpu-tests": Part(
            "gpu-tests", "pytest -m gpu tests (CUDA vs CPU, tracked-vs-CUDA slopes) -> gpu-tests/junit.xml",
            est["gpu-tests"],
            _pytest(out / "gpu-tests" / "junit.xml", "-m", "gpu", "-o", "junit_family=xunit1",
                    "--continue-on-collection-errors", str(tests_dir)),
            blocked="" if tests_dir.is_dir() else f"skipped: no tests folder at {tests_dir}",
        ),
        "sweep": Part(
            "sweep", f"preset {PRESET!r}: {len(specs)} runs -> runs.csv",
            est["sweep-start"] + sum(run_estimate_s(s) for s in specs),
            (sys.executable, "-m", "bench", "sweep", "--preset", PRESET, "--out", str(out), "--quiet",
             "--time-budget", SHARE, "--run-timeout", f"{RUN_TIMEOUT_S:g}"),
        ),
        "operators": Part(
            "operators", "CUDA operator benchmarks, ours" + ("" if "deepinv" in skip else " and deepinv's")
            + " -> operators/benchmark.json",
            est["operators"] + (0.0 if "deepinv" in skip else est["operators-deepinv"]),
            _pytest(out / "operators" / "junit.xml", *op_args, str(bench_dir / "test_operators_bench.py")),
            notes=(f"operators vs deepinv {skip['deepinv']}",) if "deepinv" in skip else (),
        ),
        "race": Part(
            "race", "LUSER step race: ours" + "".join(f", {p}" for p in peers_in_race) + ", bare"
            + " -> race/benchmark.json",
            est["race"] + est["race-peer"] * len(peers_in_race),
            _pytest(out / "race" / "junit.xml", *race_args, str(bench_dir / "test_race.py")),
            notes=tuple(f"race vs {p} {skip[p]}" for p in missing),
        ),
    }  # fmt: skip
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise KeyError(f"unknown parts {unknown}; known: {list(PART_NAMES)}")
    chosen = tuple(parts[n] for n in PART_NAMES if n in names)
    return Plan(out=out, parts=chosen, n_runs=len(specs) if "sweep" in names else 0, budget_s=budget_s)


def _sweep_groups() -> list[str]:
    """The gpu preset's runs grouped by configuration: one line per group with count and estimate."""
    from bench.harness.expand import load_preset

    groups: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    for spec in load_preset(PRESET).specs:
        extra = "".join(f" {k}={v}" for k, v in spec.model_extra)
        label = f"{spec.model} depth={spec.reg_depth}{' ' + spec.backward if spec.backward else ''}{extra}"
        groups[label] += 1
        seconds[label] = seconds.get(label, 0.0) + run_estimate_s(spec)
    return [f"      {label:<40} {n:>3} runs {seconds[label]:6.1f} s" for label, n in groups.items()]


def format_plan(plan: Plan) -> str:
    lines = [f"gpu-check plan -> {plan.out} (stated estimates, not measured here)"]
    for part in plan.parts:
        est = "blocked" if part.blocked else f"{part.estimate_s:5.0f} s"
        lines.append(f"  {part.name:<10} {est:>8}  {part.what}")
        if part.name == "sweep":
            lines += _sweep_groups()
        lines += [f"      {note}" for note in (*part.notes, part.blocked) if note]
    usable = plan.budget_s - RESERVE_S
    lines.append(f"runs: {plan.n_runs} sweep runs in preset {PRESET!r}")
    lines.append(
        f"estimate: {plan.estimate_s:.0f} s of the {plan.budget_s:.0f} s budget"
        f" ({usable:.0f} s shared by the parts, {RESERVE_S:.0f} s kept for interrupts and the summary)"
    )
    if plan.estimate_s > usable:
        lines.append("warning: the estimate exceeds the parts' time: later parts get less than estimated")
    return "\n".join(lines)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _run_part(part: Part, out: Path, share_s: float, repo_root: Path) -> PartResult:
    """Run one part's command in its own process group; interrupt it at the end of its share."""
    folder = out / part.name
    folder.mkdir(parents=True, exist_ok=True)
    argv = [a.replace(SHARE, f"{max(share_s - GRACE_S, 1.0):.0f}") for a in part.argv]
    result = PartResult(part.name, "failed", part.estimate_s, share_s=share_s, started_utc=_utc_now())
    result.notes = list(part.notes)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    with open(folder / "log.txt", "wb") as log:
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(
                argv, cwd=repo_root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except OSError as err:
            result.notes.append(f"could not start: {err}")
            return result
        try:
            result.returncode = proc.wait(timeout=share_s)
        except subprocess.TimeoutExpired:
            result.returncode = _interrupt(proc)
            result.status = "interrupted"
            result.notes.append(f"interrupted at the end of its {share_s:.0f} s share")
    result.took_s = round(time.monotonic() - t0, 1)
    if result.status != "interrupted":
        result.status = "ok" if result.returncode == 0 else "failed"
    return result


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT to the part's process group, SIGKILL after GRACE_S; the exit code."""
    for sig, wait_s in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def run_plan(
    plan: Plan, *, repo_root: Path = REPO_ROOT, echo: Callable[[str], None] = print
) -> list[PartResult]:
    """Run the parts in order, each within its share of the budget; write DIR/<part>/result.json."""
    t0 = time.monotonic()
    usable_s = plan.budget_s - RESERVE_S
    results = []
    for i, part in enumerate(plan.parts):
        left_s = usable_s - (time.monotonic() - t0)
        rest_s = sum(p.estimate_s for p in plan.parts[i:] if not p.blocked)
        share_s = left_s * part.estimate_s / rest_s if rest_s > 0 else 0.0
        if part.blocked:
            result = PartResult(part.name, "skipped", part.estimate_s, notes=[part.blocked])
        elif share_s < min(part.estimate_s, MIN_START_S):
            note = f"time budget spent: {max(left_s, 0):.0f} s left, share {share_s:.0f} s too short to start"
            result = PartResult(part.name, "not started", part.estimate_s, notes=[note])
        else:
            echo(
                f"[gpu-check] {part.name}: started, share {share_s:.0f} s (estimate {part.estimate_s:.0f} s)"
            )
            result = _run_part(part, plan.out, share_s, repo_root)
        folder = plan.out / part.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
        echo(f"[gpu-check] {part.name}: {result.status} after {result.took_s:.0f} s" + "".join(
            f"; {n}" for n in result.notes))  # fmt: skip
        results.append(result)
    return results


def probe(path: str) -> None:
    """Write the environment a GPU run measured in: devices, NVML, versions, optional packages."""
    import importlib.metadata
    import platform

    import torch

    from bench.meters.environment import environment_stamp
    from bench.meters.nvml import nvml_columns, nvml_info

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    a = torch.arange(12.0).reshape(3, 4)  # small integers: the product is exact in float32
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        on_device = a.to(f"cuda:{i}")
        devices.append({
            "index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
            "total_bytes": props.total_memory, "uuid": str(getattr(props, "uuid", "")),
            "matmul_matches_cpu": bool(torch.equal((on_device @ on_device.T).cpu(), a @ a.T)),
            "nvml": nvml_columns(f"cuda:{i}"),
        })  # fmt: skip
    record = {
        "stamp": environment_stamp(),
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "cudnn_version": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "devices": devices,
        "nvml": nvml_info(0),
        "packages": {n: version(n) for n in ("torch", "torchvision", "pytest-benchmark", "nvidia-ml-py",
                                            *PEERS, "submitit")},
    }  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (commit it as results/gpu/)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimate, run nothing")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-time budget of the whole call")
    p.add_argument(
        "--parts", default=",".join(PART_NAMES), help=f"comma-separated subset of {','.join(PART_NAMES)}"
    )
    p.add_argument("--summary", action="store_true", help="print the summary of an existing DIR and exit")


def main(args: argparse.Namespace) -> int:
    from bench.analysis.gpu_summary import summarise

    out = Path(args.out)
    if args.summary:
        print(summarise(out, PART_NAMES))
        return 0
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    if args.budget_s <= RESERVE_S + MIN_START_S:
        print(
            f"error: --budget-s must be > {RESERVE_S + MIN_START_S:g}, got {args.budget_s:g}", file=sys.stderr
        )
        return 2
    try:
        plan = build_plan(out, budget_s=args.budget_s, names=names)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    text = format_plan(plan)
    print(text, flush=True)
    if args.dry_run:
        return 0
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device visible (torch.cuda.is_available() is False); gpu-check measures "
              "CUDA paths. --dry-run prints the plan.", file=sys.stderr)  # fmt: skip
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.txt").write_text(text + "\n")
    results = run_plan(plan)
    summary = summarise(out, PART_NAMES)  # parts of earlier calls too
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 0 if all(r.status in ("ok", "skipped") for r in results) else 1
