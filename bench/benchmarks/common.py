"""Helpers the pytest-benchmark files share.

- `json_safe`: a benchmark document with every non-finite float (NaN, inf) replaced by None, so
  missing values are written as JSON ``null`` (bare ``NaN`` is not JSON; strict parsers reject it).
  `bench/benchmarks/conftest.py` applies it to the whole ``--benchmark-json``/``--benchmark-save``
  document.
- `dispatched_ops`: how many operators a call dispatches below autograd, a device-independent proxy
  for kernel launches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, through nested dicts, lists and tuples
    (tuples become lists, as JSON writes them); everything else is returned as it is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dispatched_ops(fn: Callable[[], object]) -> dict[str, int]:
    """Operators dispatched by ``fn()`` below autograd (forward and backward), views excluded:
    ``{"ops": total, "conv_ops": convolution forward + backward calls}``."""
    counts = {"ops": 0, "conv_ops": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                counts["ops"] += 1
                counts["conv_ops"] += func.name() in ("aten::convolution", "aten::convolution_backward")
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return counts
