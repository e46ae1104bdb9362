"""The pytest-benchmark files write strict JSON (missing values as null, never bare NaN) and take
their rounds from pytest-benchmark's options, not from fixed ``pedantic`` rounds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.benchmarks.common import json_safe

ROOT = Path(__file__).resolve().parents[1]
#: A feed-forward model's training step (no solver statistics: NaN before the mapping) and one
#: operator case (its peer check needs deepinv, a declared dependency).
CASES = (
    "bench/benchmarks/test_models_bench.py::test_training_step[deblur-lu-K1]",
    "bench/benchmarks/test_operators_bench.py::test_blur[cpu-ours-circular-1-A]",
)
MIN_ROUNDS = 7  # neither file's former fixed rounds (3 and 10)


def _refuse(name: str) -> None:
    raise ValueError(f"not JSON: bare {name}")


def test_json_safe_known_answer() -> None:
    doc = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, "x")], "c": {"d": None, "e": 2, "f": True}}
    assert json_safe(doc) == {"a": None, "b": [1.5, None, [None, "x"]], "c": {"d": None, "e": 2, "f": True}}


def test_benchmark_json_is_strict_and_rounds_follow_min_rounds(tmp_path: Path) -> None:
    out = tmp_path / "benchmark.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CASES, f"--benchmark-json={out}",
         f"--benchmark-min-rounds={MIN_ROUNDS}", "--benchmark-max-time=0"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text(), parse_constant=_refuse)  # NaN, Infinity: ValueError
    benches = {b["fullname"]: b for b in doc["benchmarks"]}
    assert set(benches) == set(CASES)
    # With no time budget, every benchmark runs exactly the minimum rounds it was given.
    assert {name: b["stats"]["rounds"] for name, b in benches.items()} == dict.fromkeys(CASES, MIN_ROUNDS)
    info = benches[CASES[0]]["extra_info"]
    assert info["fwd_iters_mean"] is None and info["bwd_iters_mean"] is None  # LU solves nothing
    assert info["tracked_peak_bytes"] > 0 and info["warmup_kept_bytes"] > 0
