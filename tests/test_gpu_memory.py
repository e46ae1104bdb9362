"""The live-storage tracker against CUDA's allocator on the real models (needs a GPU; skipped without).

For each model and K in (1, 2, 4, 8), one warm training step (forward, MSE loss, backward, Adam step)
on 128x128 deblurring, batch 4, width 32, is measured twice by `measure_step_memory`: under the
tracker, then (next step) by `torch.cuda.max_memory_allocated`. The claim checked: the tracked peak
grows with K at the same rate as the CUDA peak (least-squares slopes within 1 %), and the two differ
by a constant offset of at most 32 MiB (cuDNN workspace, allocator rounding). Slopes, their ratio
and the offsets go to the junit XML as properties (`python -m bench gpu-check` prints them).

K is the number of LU steps (`n_iters`), except for `deq`, which has none: there K is the number of
hidden layers of its DnCNN (`reg_depth = K + 2`), the quantity its memory grows with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MIB = 2**20
KS = (1, 2, 4, 8)
BATCH, IMAGE_SIZE, WIDTH = 4, 128, 32
MAX_OFFSET_BYTES = 32 * MIB
SLOPE_RTOL = 0.01

# case -> (model name, config as a function of K)
CASES: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "lu": ("lu", lambda k: {"n_iters": k}),
    "lu_ckpt": ("lu_ckpt", lambda k: {"n_iters": k}),
    "luser_ift": ("luser", lambda k: {"n_iters": k, "backward": "ift"}),
    "luser_ift_hook": ("luser", lambda k: {"n_iters": k, "backward": "ift_hook"}),
    "luser_jfb": ("luser", lambda k: {"n_iters": k, "backward": "jfb"}),
    "deq": ("deq", lambda k: {"reg_depth": k + 2}),
}


def _warm_step_memory(model_name: str, cfg: dict[str, Any], device: str = "cuda") -> Any:
    """MemoryReport of a warm training step, built by the harness's own `prepare` (two warm-up steps
    first: cuDNN set-up, Adam state)."""
    from bench.harness.run import prepare
    from bench.harness.specs import RunSpec

    if device == "cuda":
        torch.cuda.empty_cache()  # every K starts from the same allocator state
    spec = RunSpec(
        task="deblur", model=model_name, batch_size=BATCH, image_size=IMAGE_SIZE, n_train=BATCH, n_test=1,
        reg_width=WIDTH, device=device, **cfg,
    )  # fmt: skip
    run = prepare(spec)
    for _ in range(2):
        run.step()
    return run.measure_memory()


def _slope(ks: tuple[int, ...], values: list[int]) -> float:
    """Least-squares slope of values against ks."""
    k_mean = sum(ks) / len(ks)
    v_mean = sum(values) / len(values)
    cov = sum((k - k_mean) * (v - v_mean) for k, v in zip(ks, values, strict=True))
    return cov / sum((k - k_mean) ** 2 for k in ks)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tracked_peak_slope_matches_cuda_peak(
    case: str, record_property: Callable[[str, object], None]
) -> None:
    model_name, cfg_of_k = CASES[case]
    reports = [_warm_step_memory(model_name, cfg_of_k(k)) for k in KS]
    tracked = [r.tracked_peak_bytes for r in reports]
    cuda = [r.cuda_peak_bytes for r in reports]
    assert all(c is not None for c in cuda)
    table = ", ".join(
        f"K={k}: tracked {t / MIB:.2f} MiB, cuda {c / MIB:.2f} MiB"
        for k, t, c in zip(KS, tracked, cuda, strict=True)
    )
    slope_tracked, slope_cuda = _slope(KS, tracked), _slope(KS, cuda)
    offsets = [c - t for c, t in zip(cuda, tracked, strict=True)]
    # Reported before the checks, so a failing case still leaves its numbers in the junit XML.
    record_property("slope_tracked_mib_per_k", f"{slope_tracked / MIB:.4f}")
    record_property("slope_cuda_mib_per_k", f"{slope_cuda / MIB:.4f}")
    record_property("slope_ratio", f"{slope_tracked / slope_cuda:.5f}" if slope_cuda else "nan")
    record_property("offset_mib_min", f"{min(offsets) / MIB:.3f}")
    record_property("offset_mib_max", f"{max(offsets) / MIB:.3f}")
    record_property("table", table)
    assert slope_cuda > 0, f"{case}: the CUDA peak does not grow with K ({table})"
    assert abs(slope_tracked - slope_cuda) <= SLOPE_RTOL * slope_cuda, (
        f"{case}: slopes differ: tracked {slope_tracked / MIB:.4f} MiB/K, "
        f"cuda {slope_cuda / MIB:.4f} MiB/K ({table})"
    )
    assert max(abs(o) for o in offsets) <= MAX_OFFSET_BYTES, f"{case}: offset above 32 MiB ({table})"


@pytest.mark.parametrize("case", sorted(CASES))
def test_on_cuda_the_allocator_peak_is_the_cuda_peak_and_nothing_leaks(case: str) -> None:
    model_name, cfg_of_k = CASES[case]
    report = _warm_step_memory(model_name, cfg_of_k(KS[0]))
    assert report.alloc_peak_bytes == report.cuda_peak_bytes  # the same step feeds both
    assert report.leaked_bytes == 0
