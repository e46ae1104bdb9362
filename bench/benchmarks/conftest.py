"""pytest-benchmark hooks for the benchmark files: missing values are written as JSON ``null``.

Benchmarks record values that may be missing as NaN (e.g. a feed-forward model's solver iterations),
and pytest-benchmark would write them as bare ``NaN``, which is not JSON. Every non-finite float of
the saved document (extra_info and stats alike) becomes None (`bench.benchmarks.common.json_safe`).
"""

from __future__ import annotations

from typing import Any

from bench.benchmarks.common import json_safe


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    safe = json_safe(output_json)
    output_json.clear()
    output_json.update(safe)
