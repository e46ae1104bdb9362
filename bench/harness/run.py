"""One run -> one CSV row: `run_spec(spec, memory_budget_bytes=None) -> dict`.

Steps (each fills its columns, so a run that fails late keeps what it measured):

1. Build the task (`bench.data.tasks.build_task`, on ``spec.device`` or cuda when available, else cpu)
   and the model (`models.build_model` with exactly ``spec.model_kwargs()``), the model under
   ``torch.random.fork_rng()`` + ``torch.manual_seed`` of the run's ``model_init`` stream
   (`bench.data.seeds`): its initialisation is reproducible and the caller's global RNG state is
   left untouched. The task's held-out measurements (validation and test, cached by the task) are
   made here too, and a CPU copy of the model's initial state is taken; all of it at the allocator
   (`bench.meters.allocator.alloc_call`): the peak of the build and what it leaves resident.
2. Measurement on one fixed batch (the first ``batch_size`` training images, noise from the run's
   ``measure_noise`` stream): ``warmup_steps`` training steps (Adam state and cuDNN set-up happen
   here; at the allocator too), then one warm step under `bench.meters.memory.measure_step_memory`
   (tracked peak, saved-for-backward bytes, and on CUDA a second warm step for the allocator peaks,
   then NVML's view: `nvml_columns`), then the allocator-level peak of one evaluation batch
   (`bench.harness.train.evaluate` with ``max_batches=1``), then ``timed_steps`` timed steps
   (`bench.meters.timing.time_steps`: median and IQR in ms). Models without parameters (classical) run
   forward-only steps. With ``warmup_steps = 0`` the measured step also creates Adam's state.
   Static bytes: ``param_bytes`` (all parameters), ``buffer_bytes`` (the model's buffers after
   warm-up), ``grad_bytes`` (the gradients a step creates: one
   per trainable parameter, same size; they are freed by ``zero_grad(set_to_none=True)`` and so are
   already inside the tracked peak), ``optimizer_bytes`` (Adam state after warm-up),
   ``operator_bytes`` (the operator's parameters and buffers, e.g. the CT matrix). The warm-up steps
   run under a `bench.meters.memory.LiveStorageTracker`: ``warmup_kept_bytes`` is what they created
   and left alive (Adam's state, a cache a model builds on its first call and keeps, the last step's
   solver statistics), which neither the per-step peaks nor the static sizes would show.
3. "Would it fit?": every run gets ``estimated_bytes``, a conservative estimate of the whole run's
   peak of device memory (`bench.harness.estimate.MemoryEstimate`: the larger of the set-up peak and
   what is resident plus a step, plus `CUDA_OVERHEAD_BYTES` on CUDA). With ``memory_budget_bytes``
   (recorded in the row) an estimate over the budget stops the run with status ``over_budget`` and
   "would not fit: estimated X bytes > budget Y bytes (...)": no timing, no training.
4. Training (``steps > 0``): the model reset to its initial state (a CPU copy taken before the
   measurement steps, so they do not leak into training) and trained by `bench.harness.train.train` for
   at most ``steps`` steps with a fresh Adam (validation, plateau stopping and the learning-rate
   schedule from the spec) -> ``train_s`` (validations included), ``steps_run``, ``best_step``,
   ``stopped_by``, ``val_psnr_db``, and the learning curve (`run_with_curve`).
5. Evaluation when the model was trained or has no parameters: `bench.harness.train.evaluate` on the
   test split (of the best-validation weights in plateau mode) -> ``psnr_db``, ``ssim``. Solver
   columns: of the evaluation solves when evaluated (``bwd_iters_mean`` from the
   last training step, evaluation has no backward), else of the last warm measurement step.

``spec.cpu_threads`` sets torch's intra-op threads for the run (restored afterwards): on a small
shared CPU, tiny ops run far faster on one thread than on a contended pool.

Failures become statuses, never exceptions: an estimate over the budget -> ``over_budget``; an
out-of-memory error (``torch.OutOfMemoryError``, or a
CPU allocator failure) -> ``oom``; `bench.harness.train.Diverged` (NaN/inf loss or parameters, a solver
blow-up, a non-finite reconstruction) -> ``diverged``; anything else -> ``error`` with
``"Type: message"``.

``spec.inject`` (a testing aid, `bench.harness.faults`) wraps the model so that its second call fails.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.data import seeds
from bench.harness import problem
from bench.harness.estimate import CUDA_OVERHEAD_BYTES, BudgetExceeded, MemoryEstimate, step_factor
from bench.harness.specs import RunSpec, normalise, spec_columns
from bench.harness.train import (
    CurvePoint,
    Diverged,
    StepResult,
    TrainConfig,
    check_finite,
    evaluate,
    train,
    train_step,
)
from bench.schema import COLUMNS, OVER_BUDGET, SOLVER_COLUMNS

# ----------------------------------------------------------------------------- helpers


def resolve_device(spec: RunSpec) -> torch.device:
    if spec.device:
        return torch.device(spec.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model_for(spec: RunSpec, op: Any, device: torch.device) -> nn.Module:
    """The spec's model, initialised from spec.seed without touching the global RNG state."""
    from models import build_model
    from models.precision import set_precision

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seeds.stream_seed(spec.seed, "model_init"))
        model = build_model(spec.model, op, **spec.model_kwargs())
    model = set_precision(model, spec.precision).to(device)
    if spec.inject:
        from bench.harness.faults import FaultInjector

        model = FaultInjector(model, spec.inject, device)
    return model


def is_oom(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA) or the CPU allocator's failure."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def _summary(stats: list[Any]) -> dict[str, Any]:
    from bench.meters.quality import solver_summary

    summary = solver_summary(stats)
    return {k: summary.get(k) for k in SOLVER_COLUMNS}


def _bytes(tensors: Any) -> int:
    from bench.meters.memory import tensor_bytes

    return sum(tensor_bytes(t) for t in tensors)


# ----------------------------------------------------------------------------- the run


@dataclass
class PreparedRun:
    """A spec's task, model and optimiser on their device, with one fixed measurement batch.

    Sweeps (`run_spec`), the pytest-benchmark files and the memory gate all measure through this, so
    their numbers are the same numbers.
    """

    spec: RunSpec
    device: torch.device
    task: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    x: torch.Tensor  # (B, *in_shape) targets
    y: torch.Tensor  # (B, *out_shape) measurements
    last: list[StepResult] = field(default_factory=list)

    @property
    def params(self) -> int:
        from models import count_params

        return count_params(self.model)

    def step(self) -> StepResult:
        """One training step on the measurement batch (forward only for models without parameters);
        its result is kept as `last` until the next step."""
        result = self._step()
        self.last[:] = [result]
        return result

    def _step(self) -> StepResult:
        result = train_step(
            self.model, self.task.operator, self.x, self.y, self.optimizer, grad_clip=self.spec.grad_clip
        )
        check_finite(result, "a measurement step")
        return result

    def warm_up(self, n_steps: int) -> int:
        """Run `n_steps` steps (`step`); return the bytes of the storages they created that are still
        alive after them (a `bench.meters.memory.LiveStorageTracker` around the steps)."""
        from bench.meters.memory import LiveStorageTracker

        with LiveStorageTracker() as tracker:
            for _ in range(n_steps):
                self.step()
        return tracker.live_bytes

    def measure_memory(self, steady_steps: int | None = None) -> Any:
        """`bench.meters.memory.MemoryReport` of warm steps (run the warm-up steps first).

        The measured steps drop their results at once (`last` stays the warm-up's), so whatever
        outlives them is what the model or optimiser keeps: ``leaked_bytes``. `steady_steps`
        defaults to `bench.meters.memory.STEADY_STEPS`.
        """
        from bench.meters.memory import STEADY_STEPS, measure_step_memory

        n = STEADY_STEPS if steady_steps is None else steady_steps
        return measure_step_memory(self._step, device=self.device, steady_steps=n)

    def last_stats(self) -> list[Any]:
        """The DEQ stats of the last step (empty for feed-forward models)."""
        return list(self.last[0].stats) if self.last else []


def prepare(spec: RunSpec) -> PreparedRun:
    """Build the task (on the spec's device), the seeded model, Adam, and the measurement batch: the
    first ``batch_size`` training images with noise from the run's ``measure_noise`` stream."""
    from bench.data.tasks import build_task

    spec = normalise(spec)
    device = resolve_device(spec)
    task = build_task(
        spec.task,
        image_size=spec.image_size,
        n_train=spec.n_train,
        n_test=spec.n_test,
        n_val=spec.n_val,
        noise_sigma=spec.noise_sigma,
        seed=spec.seed,
        device=device,
        operator_kwargs=problem.operator_kwargs(spec.task, spec.operator),
        data=spec.data,
        data_root=spec.data_root,
        data_split=spec.data_split,
    )
    model = build_model_for(spec, task.operator, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=spec.lr) if params else None
    if spec.batch_size > len(task.x_train):
        raise ValueError(f"batch_size {spec.batch_size} is larger than n_train {len(task.x_train)}")
    x = task.x_train[: spec.batch_size]  # (B, *in_shape)
    y = task.measure(x, seeds.generator(spec.seed, "measure_noise"))  # (B, *out_shape)
    return PreparedRun(spec, device, task, model, optimizer, x, y)


def _build(spec: RunSpec) -> tuple[PreparedRun, dict[str, torch.Tensor]]:
    """`prepare` plus the task's held-out measurements (cached by the task from here on, so they are
    part of what the build leaves resident) and a CPU copy of the model's initial state."""
    run = prepare(spec)
    for split in ("val", "test"):
        run.task.measurements(split)
    init_state = {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()}
    return run, init_state


def _training_bytes(spec: RunSpec, run: PreparedRun, *, copies_best: bool) -> int:
    """What the training loop holds beside a step (the estimate's ``batch_bytes``): its own batch of
    images and measurements (made beside the measurement batch, the same sizes), the batch order
    it draws before the loop, and with patience (``copies_best``: on CPU, where the copy of the best
    weights is device memory) a copy of the model's state."""
    from bench.harness.train import batch_order_bytes
    from bench.meters.memory import module_bytes

    if spec.steps <= 0 or run.optimizer is None:
        return 0
    held = _bytes([run.x, run.y]) + batch_order_bytes(len(run.task.x_train), spec.batch_size, spec.steps)
    return held + (module_bytes(run.model) if copies_best and spec.patience > 0 else 0)


def _execute(
    spec: RunSpec, row: dict[str, Any], memory_budget_bytes: int | None, curve: list[CurvePoint]
) -> None:
    """The run's phases in order, each filling its columns of `row` (module docstring, steps 1-5)."""
    from bench.meters.allocator import alloc_call
    from bench.meters.environment import environment_columns

    row.update(environment_columns(resolve_device(spec)))
    built: list[tuple[PreparedRun, dict[str, torch.Tensor]]] = []
    build = alloc_call(lambda: built.append(_build(spec)), resolve_device(spec))
    run, init_state = built.pop()
    warm, mem = _measure(spec, run, row)
    _check_budget(spec, run, row, build, warm, mem, memory_budget_bytes)
    _time(spec, run, row)
    _train_and_evaluate(spec, run, row, init_state, curve)


def _measure(spec: RunSpec, run: PreparedRun, row: dict[str, Any]) -> tuple[Any, Any]:
    """Static sizes, the warm-up (allocator view and what it leaves alive), then the warm steps'
    memory and NVML's view. Returns the warm-up's `AllocPeak` and the `MemoryReport`."""
    from bench.meters.allocator import alloc_call
    from bench.meters.memory import module_bytes, optimizer_state_bytes
    from bench.meters.nvml import nvml_columns

    model = run.model
    row["operator_bytes"] = module_bytes(run.task.operator)
    row["params"] = run.params
    row["param_bytes"] = _bytes(model.parameters())
    row["grad_bytes"] = _bytes(p for p in model.parameters() if p.requires_grad)
    kept: list[int] = []  # what the warm-up steps leave alive (tracker), beside the allocator view
    warm = alloc_call(lambda: kept.append(run.warm_up(spec.warmup_steps)), run.device)
    row["warmup_kept_bytes"] = kept[0]
    row["buffer_bytes"] = _bytes(model.buffers())
    row["optimizer_bytes"] = optimizer_state_bytes(run.optimizer) if run.optimizer is not None else 0
    mem = run.measure_memory()
    row.update(
        tracked_peak_bytes=mem.tracked_peak_bytes,
        saved_bytes=mem.saved_bytes,
        cuda_peak_bytes=mem.cuda_peak_bytes,
        cuda_reserved_bytes=mem.cuda_reserved_bytes,
        alloc_peak_bytes=mem.alloc_peak_bytes,
        steady_peak_bytes=mem.steady_peak_bytes,
        leaked_bytes=mem.leaked_bytes,
        steady_steps=mem.steady_steps,
    )
    row.update(nvml_columns(run.device))  # the driver's view after the measured steps (None off CUDA)
    return warm, mem


def _check_budget(
    spec: RunSpec,
    run: PreparedRun,
    row: dict[str, Any],
    build: Any,
    warm: Any,
    mem: Any,
    memory_budget_bytes: int | None,
) -> None:
    """The memory estimate's columns; BudgetExceeded when it is over `memory_budget_bytes`."""
    from bench.meters.allocator import alloc_step_peak
    from bench.meters.memory import optimizer_state_bytes

    def score_one_batch() -> None:
        try:
            evaluate(run.model, run.task, spec.batch_size, max_batches=1)
        except Diverged:
            pass  # only its memory is wanted here: the reconstruction is judged after training

    eval_bytes = alloc_step_peak(score_one_batch, run.device)
    optimizer_bytes = optimizer_state_bytes(run.optimizer) if run.optimizer is not None else 0
    step_peak_bytes = max(mem.alloc_peak_bytes or 0, eval_bytes)
    estimate = MemoryEstimate(
        setup_peak_bytes=max(build.peak_bytes, build.end_bytes + warm.peak_bytes),
        # with warmup_steps = 0 the optimiser state is made by the measured steps, after the window
        resident_bytes=build.end_bytes + max(warm.end_bytes, optimizer_bytes) + (mem.leaked_bytes or 0),
        step_bytes=math.ceil(step_peak_bytes * step_factor(spec, run.last_stats())),
        batch_bytes=_training_bytes(spec, run, copies_best=run.device.type == "cpu"),
        overhead_bytes=CUDA_OVERHEAD_BYTES if run.device.type == "cuda" else 0,
    )
    row.update(
        estimated_bytes=estimate.estimated_bytes,
        setup_peak_bytes=estimate.setup_peak_bytes,
        resident_bytes=estimate.resident_bytes,
    )
    if memory_budget_bytes is not None and estimate.estimated_bytes > memory_budget_bytes:
        raise BudgetExceeded(
            f"would not fit: estimated {estimate.estimated_bytes} bytes > budget {memory_budget_bytes}"
            f" bytes ({estimate.describe()})"
        )


def _time(spec: RunSpec, run: PreparedRun, row: dict[str, Any]) -> None:
    """Step times (median, IQR) of ``timed_steps`` warm steps, and the last step's solver columns."""
    from bench.meters.timing import time_steps

    if spec.timed_steps > 0:
        times = time_steps(run.step, n_warmup=0, n_steps=spec.timed_steps, device=run.device)
        row["step_ms_median"] = times.median_ms
        row["step_ms_iqr"] = times.iqr_ms
    row.update(_summary(run.last_stats()))


def _train_and_evaluate(
    spec: RunSpec, run: PreparedRun, row: dict[str, Any], init_state: dict[str, Any], curve: list[CurvePoint]
) -> None:
    """Train from the initial state (``steps > 0``), then score the test split (trained models and
    models without parameters); solver columns then come from the evaluation."""
    model, task = run.model, run.task
    has_params = any(p.requires_grad for p in model.parameters())
    trained = None
    if spec.steps > 0 and has_params:
        run.optimizer = None
        model.load_state_dict(init_state)  # back to the initialisation: measurement steps do not count
        cfg = TrainConfig(
            steps=spec.steps,
            batch_size=spec.batch_size,
            lr=spec.lr,
            seed=spec.seed,
            grad_clip=spec.grad_clip,
            val_every=spec.val_every,
            patience=spec.patience,
            min_delta_db=spec.min_delta_db,
            lr_schedule=spec.lr_schedule,
        )
        trained = train(model, task, cfg)
        curve.extend(trained.curve)
        row.update(
            train_s=trained.train_s,
            steps_run=trained.steps_run,
            best_step=trained.best_step,
            stopped_by=trained.stopped_by,
            val_psnr_db=trained.val_psnr_db,
        )
    if trained is not None or not has_params:
        ev = evaluate(model, task, spec.batch_size)
        bwd = row["bwd_iters_mean"] if trained is None else _summary(trained.last_stats)["bwd_iters_mean"]
        row.update(psnr_db=ev["psnr_db"], ssim=ev["ssim"])
        row.update({k: ev[k] for k in SOLVER_COLUMNS})
        row["bwd_iters_mean"] = bwd  # evaluation has no backward: the last training step's


def run_spec(spec: RunSpec, *, memory_budget_bytes: int | None = None) -> dict[str, Any]:
    """Run one spec in this process and return its full CSV row (every column of
    bench.schema.COLUMNS).

    Never raises for a failed run: the failure is the row's status (ok, oom, over_budget, diverged,
    error).
    """
    return run_with_curve(spec, memory_budget_bytes=memory_budget_bytes)[0]


def run_with_curve(
    spec: RunSpec, *, memory_budget_bytes: int | None = None
) -> tuple[dict[str, Any], list[CurvePoint]]:
    """`run_spec`'s row and the run's learning curve (empty when it did not train to the end)."""
    curve: list[CurvePoint] = []
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(status="ok", error="", memory_budget_bytes=memory_budget_bytes)
    threads = torch.get_num_threads()
    try:
        if spec.cpu_threads is not None:
            torch.set_num_threads(spec.cpu_threads)
        spec = normalise(spec)
        row.update(spec_columns(spec))
        _execute(spec, row, memory_budget_bytes, curve)
    except Diverged as err:
        row.update(status="diverged", error=f"Diverged: {err}")
    except BudgetExceeded as err:
        row.update(status=OVER_BUDGET, error=str(err))
    except Exception as err:
        status = "oom" if is_oom(err) else "error"
        row.update(status=status, error=f"{type(err).__name__}: {err}")
        traceback.print_exc()  # the whole story goes to the run's log; the row keeps one line
    finally:
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not row.get("device"):
        row["device"] = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")  # never raises
    return {k: _plain(v) for k, v in row.items()}, curve


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (tensors and numpy numbers become Python numbers)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value
