"""Load-time checks of a run spec: everything that can be known wrong before a run starts.

`check_spec(spec)` raises ValueError (a `SweepError` once out of `bench.harness.grid`) naming
the key and what is accepted, so that a sweep file
with a value no run could use fails at load (exit 2, nothing written) instead of as error rows, or
worse, as runs that "diverge". Checked: the device; every number finite (TOML allows nan and inf);
the noise level; the batch against the training set; the image size against the metric's window
(`min_image_size`, the largest SSIM window) and against the operator, which is asked
(`LinearOperator.image_size_error`, a class method: nothing is built); and a classical method
against the task's operator (`CLASSICAL_METHODS[m].applies`, asked of a small instance of that
operator, built once per task).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

#: Accepted `device` values: "" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
DEVICE_PATTERN = re.compile(r"(cpu|cuda(:\d+)?)?")
_DEVICES_TEXT = "'' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'"
_PROBE_SIZE = 16  # the size of the operator instance asked which classical methods apply


def _numbers(spec: Any) -> list[tuple[str, Any]]:
    fields = [(k, getattr(spec, k)) for k in spec.__dataclass_fields__ if k != "model_extra"]
    return [(k, v) for k, v in [*fields, *spec.model_extra] if isinstance(v, float)]


@functools.cache
def _probe_operator(task: str) -> Any:
    from bench.data.tasks import TASKS
    from operators import build_operator

    spec = TASKS[task]
    return build_operator(spec.operator, image_size=_PROBE_SIZE, **dict(spec.operator_kwargs))


def min_image_size() -> int:
    """The smallest image every SSIM convention can score (`bench.meters.quality.ssim_window_px`)."""
    from bench.meters.quality import SSIM_CONVENTIONS, ssim_window_px

    return max(ssim_window_px(c) for c in SSIM_CONVENTIONS)


def _image_size_error(spec: Any) -> str | None:
    from bench.data.tasks import TASKS
    from operators import OPERATORS

    size = spec.image_size
    assert size is not None  # normalised
    if size < min_image_size():
        return f"must be >= {min_image_size()} (the largest SSIM window, in pixels), got {size}"
    task = TASKS[spec.task]
    return OPERATORS[task.operator].image_size_error(size, **dict(task.operator_kwargs))


def _method_error(spec: Any) -> str | None:
    if spec.model != "classical":
        return None
    from models import MODELS
    from models.classical import CLASSICAL_METHODS, applicable_methods

    default = MODELS["classical"].config_cls().method
    method = dict(spec.model_extra).get("method", default)
    op = _probe_operator(spec.task)
    if CLASSICAL_METHODS[method].applies(op):
        return None
    return f"{method!r} does not apply to task {spec.task!r}; accepted there: {applicable_methods(op)}"


def check_spec(spec: Any) -> None:
    """Raise ValueError naming the first key of the normalised RunSpec `spec` no run could use, and
    what is accepted (`bench.harness.grid.make_spec` turns it into a SweepError naming where)."""
    if not DEVICE_PATTERN.fullmatch(spec.device):
        raise ValueError(f"key 'device' has unknown value {spec.device!r}; accepted: {_DEVICES_TEXT}")
    for key, value in _numbers(spec):
        if not math.isfinite(value):
            raise ValueError(f"key {key!r} must be a finite number, got {value!r}")
    assert spec.noise_sigma is not None and spec.n_train is not None  # normalised
    if spec.noise_sigma < 0:
        raise ValueError(f"key 'noise_sigma' must be >= 0, got {spec.noise_sigma!r}")
    if spec.batch_size > spec.n_train:
        raise ValueError(
            f"key 'batch_size' must be <= n_train ({spec.n_train}: batches are drawn from the training"
            f" images), got {spec.batch_size}"
        )
    problem = _image_size_error(spec)
    if problem:
        raise ValueError(f"key 'image_size' {problem.removeprefix('image_size ')} for task {spec.task!r}")
    problem = _method_error(spec)
    if problem:
        raise ValueError(f"key 'method' {problem}")
