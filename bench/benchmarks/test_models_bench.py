"""Warm training steps of every model on every task at a few LU depths K.

`pytest bench/ --benchmark-save=NAME` times one training step (forward, loss, backward, Adam step;
synchronised on CUDA) per configuration with ``benchmark(step)`` (pytest-benchmark's round options,
e.g. ``--benchmark-min-rounds``, decide the rounds), grouped by task, and stores in ``extra_info``
what the memory gate and the plots need: tracked peak bytes, allocator-level peak bytes (and their
difference, the offset of kernel scratch the tracker cannot see, printed per configuration: it
differs by model, so it is reported, never assumed), steady peak and leaked bytes over consecutive
warm steps, the bytes the warm-up steps leave alive, saved-for-backward bytes, CUDA peak bytes (on
GPU), solver iterations (None for feed-forward models: JSON null) and the parameter count. Small
sizes on CPU (32x32, batch 2, width 8); paper sizes when CUDA is present (128x128, batch 8, width 64,
LU depth 17). Every configuration is built by the same `bench.harness.run.prepare` that sweeps use,
so the numbers match a sweep's columns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from bench.harness.run import prepare
from bench.harness.specs import RunSpec
from bench.meters.quality import solver_summary

ON_GPU = torch.cuda.is_available()
# Any values: the dicts are splatted into RunSpec, whose fields have several types.
SIZE: dict[str, Any] = (
    dict(image_size=128, batch_size=8, reg_width=64)
    if ON_GPU
    else dict(image_size=32, batch_size=2, reg_width=8)
)
LU_DEPTH = 17 if ON_GPU else 5
KS = (1, 5, 10) if ON_GPU else (1, 4)
DEQ: dict[str, Any] = (
    dict(tol=1e-3, max_iter=25, bwd_tol=1e-3, bwd_max_iter=25) if ON_GPU else dict(max_iter=8, bwd_max_iter=8)
)

#: (label, model, model keys) for every configuration with an LU depth K.
K_MODELS = [
    ("lu", "lu", dict(reg_depth=LU_DEPTH)),
    ("lu_ckpt", "lu_ckpt", dict(reg_depth=LU_DEPTH)),
    *[(f"luser_{b}", "luser", dict(reg_depth=2, backward=b, **DEQ)) for b in ("ift", "ift_hook", "jfb")],
]
CASES = [
    pytest.param(task, model, dict(keys, n_iters=k), id=f"{task}-{label}-K{k}")
    for task in ("deblur", "ct", "mri")
    for label, model, keys in K_MODELS
    for k in KS
] + [
    pytest.param(task, model, keys, id=f"{task}-{model}")
    for task in ("deblur", "ct", "mri")
    for model, keys in (("deq", dict(reg_depth=5, **DEQ)), ("classical", dict(n_iters=20)))
]


@pytest.mark.parametrize(("task", "model", "keys"), CASES)
def test_training_step(benchmark, task: str, model: str, keys: dict) -> None:
    spec = RunSpec(
        task=task, model=model, n_train=SIZE["batch_size"], n_test=2, warmup_steps=2, **SIZE, **keys
    )
    if model == "classical":
        spec = dataclasses.replace(spec, reg_width=None)
    run = prepare(spec)
    warmup_kept_bytes = run.warm_up(spec.warmup_steps)
    memory = run.measure_memory()
    benchmark.group = f"train step / {task} / {run.device.type}"

    def step() -> None:
        result = run.step()
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        assert torch.isfinite(torch.tensor(result.loss))

    benchmark(step)
    solver = solver_summary(run.last_stats())
    offset = None if memory.alloc_peak_bytes is None else memory.alloc_peak_bytes - memory.tracked_peak_bytes
    print(f"\n{task} {model} {keys}: allocator peak - tracked peak = {offset} bytes")
    benchmark.extra_info.update(
        task=task,
        model=model,
        **{k: v for k, v in keys.items() if k in ("n_iters", "reg_depth", "backward")},
        params=run.params,
        tracked_peak_bytes=memory.tracked_peak_bytes,
        alloc_peak_bytes=memory.alloc_peak_bytes,
        alloc_offset_bytes=offset,
        steady_peak_bytes=memory.steady_peak_bytes,
        leaked_bytes=memory.leaked_bytes,
        warmup_kept_bytes=warmup_kept_bytes,
        steady_steps=memory.steady_steps,
        saved_bytes=memory.saved_bytes,
        cuda_peak_bytes=memory.cuda_peak_bytes,
        fwd_iters_mean=solver["fwd_iters_mean"],
        bwd_iters_mean=solver["bwd_iters_mean"],
    )
    # The tracker saw the step: a trained model's step holds at least its gradients.
    assert memory.tracked_peak_bytes >= (4 * run.params if run.params else 0)
