"""The names the harness, the analysis and the gate must agree on, kept in one place.

Torch-free and importing nothing from the project, so the analysis (pandas only) and the harness
(torch) read the same lists:

- the run row (`COLUMNS`, ARCHITECTURE.md "The run row") and its groups: the columns copied from the
  spec, the environment stamp's and the solver summary's, which columns are text, the values of
  ``stopped_by``; the learning-curve columns (`CURVE_COLUMNS`);
- the spec keys that are model config keys (`MODEL_KEYS`, fields of `bench.harness.specs.RunSpec`);
- the fault names a spec may inject (`FAULT_NAMES`, the keys of `bench.harness.faults.FAULTS`);
- the statuses a row may have (`OVER_BUDGET` among them);
- the display orders of tasks, models and backward modes (the registries' own order: `TASKS`,
  `models.MODELS`, `models.deq.BACKWARD_MODES`).

Where a torch-side registry must agree with a list here, `tests/test_schema.py` asserts it does.
"""

from __future__ import annotations

#: The run row, in CSV order. New columns go at the end (readers accept extra columns after these);
#: never reorder or rename, old CSVs must stay readable.
COLUMNS: tuple[str, ...] = (
    "run_id", "status", "error", "part", "task", "model", "n_iters", "reg_depth", "reg_width", "solver",
    "tol", "max_iter", "backward", "batch_size", "image_size", "steps", "seed", "lr", "params",
    "tracked_peak_bytes", "saved_bytes", "param_bytes", "grad_bytes", "optimizer_bytes", "operator_bytes",
    "cuda_peak_bytes", "cuda_reserved_bytes", "step_ms_median", "step_ms_iqr", "train_s", "psnr_db", "ssim",
    "fwd_iters_mean", "bwd_iters_mean", "final_residual_max", "converged_frac", "device", "torch_version",
    "cuda_version", "git_sha", "timestamp", "model_extra", "alloc_peak_bytes", "steady_peak_bytes",
    "leaked_bytes", "steady_steps", "val_every", "patience", "min_delta_db", "lr_schedule", "steps_run",
    "best_step", "stopped_by", "val_psnr_db",
    "nvml_device_name", "nvml_driver_version", "nvml_process_used_bytes", "nvml_used_bytes", "nvml_status",
    "noise_sigma", "operator_settings", "precision", "data", "buffer_bytes", "warmup_kept_bytes",
    "memory_budget_bytes", "estimated_bytes", "setup_peak_bytes", "resident_bytes",
)  # fmt: skip
#: Columns of NVML's view of a CUDA run (`bench.meters.nvml.nvml_columns`; empty off CUDA).
NVML_COLUMNS: tuple[str, ...] = (
    "nvml_device_name", "nvml_driver_version", "nvml_process_used_bytes", "nvml_used_bytes", "nvml_status",
)  # fmt: skip
#: Columns of the memory estimate (bench/harness/run.py): the --memory-budget the run was checked
#: against (empty without one), the estimate of the run's whole device-memory peak, and two of its
#: terms, the allocator-level peak of setting the run up and what is resident before its steps.
BUDGET_COLUMNS: tuple[str, ...] = (
    "memory_budget_bytes", "estimated_bytes", "setup_peak_bytes", "resident_bytes",
)  # fmt: skip
#: Columns added after the first ones: a table written before them reads them as not measured.
LATER_COLUMNS: tuple[str, ...] = (
    "alloc_peak_bytes", "steady_peak_bytes", "leaked_bytes", "steady_steps", "val_every", "patience",
    "min_delta_db", "lr_schedule", "steps_run", "best_step", "stopped_by", "val_psnr_db", *NVML_COLUMNS,
    "noise_sigma", "operator_settings", "precision", "data", "buffer_bytes", "warmup_kept_bytes",
    *BUDGET_COLUMNS,
)  # fmt: skip

#: Columns copied from the normalised spec (effective values), in COLUMNS order.
SPEC_COLUMNS: tuple[str, ...] = (
    "part", "task", "model", "n_iters", "reg_depth", "reg_width", "solver", "tol", "max_iter", "backward",
    "batch_size", "image_size", "steps", "seed", "lr", "val_every", "patience", "min_delta_db",
    "lr_schedule",
)  # fmt: skip
#: Columns of the environment stamp (`bench.meters.environment.environment_stamp`), in COLUMNS order.
ENV_COLUMNS: tuple[str, ...] = ("device", "torch_version", "cuda_version", "git_sha", "timestamp")
#: Columns of the solver summary (`bench.meters.quality.solver_summary`), in COLUMNS order.
SOLVER_COLUMNS: tuple[str, ...] = ("fwd_iters_mean", "bwd_iters_mean", "final_residual_max", "converged_frac")
#: Columns holding text; every other column is a number (empty where not measured).
STRING_COLUMNS: tuple[str, ...] = (
    "run_id", "status", "error", "part", "task", "model", "solver", "backward", "device", "torch_version",
    "cuda_version", "git_sha", "timestamp", "model_extra", "lr_schedule", "stopped_by", "nvml_device_name",
    "nvml_driver_version", "nvml_status", "operator_settings", "precision", "data",
)  # fmt: skip
#: Columns of the problem a run solved beside its model (`bench.harness.problem`): the effective noise
#: level, operator settings (JSON), the networks' precision and the data (JSON), in COLUMNS order.
PROBLEM_COLUMNS: tuple[str, ...] = ("noise_sigma", "operator_settings", "precision", "data")
#: Values of ``stopped_by``: a validation plateau, or the whole step budget.
STOP_REASONS: tuple[str, ...] = ("plateau", "max_steps")
#: The learning curves beside the run table (``DIR/curves.csv``, `bench.harness.curves`), in CSV order.
CURVE_COLUMNS: tuple[str, ...] = ("run_id", "step", "train_loss", "val_psnr_db", "elapsed_s", "lr")

#: The status of a run whose memory estimate is over the sweep's --memory-budget (it was not trained):
#: a verdict of that budget, not of the configuration. ``oom`` is a real out-of-memory error.
OVER_BUDGET = "over_budget"
#: A row's status: the run's outcome.
STATUSES: tuple[str, ...] = ("ok", "oom", OVER_BUDGET, "diverged", "error", "timeout")
#: Statuses a sweep with `--retry-failed` runs again (the others are results of the configuration;
#: an OVER_BUDGET row is run again by a sweep with another budget, with or without --retry-failed).
RETRYABLE: frozenset[str] = frozenset({"error", "timeout"})

#: RunSpec fields that are model config keys (CSV columns or common knobs), in RunSpec's order.
#: Whether a model takes a key is decided by its config class, not here.
MODEL_KEYS: tuple[str, ...] = (
    "n_iters", "reg_depth", "reg_width", "solver", "tol", "max_iter", "backward", "act", "bwd_tol",
    "bwd_max_iter",
)  # fmt: skip

#: Faults a spec may inject (a testing aid, `bench.harness.faults`): "nan" makes the model output NaN
#: from its second call, "oom" raises an out-of-memory error in a step (a real one on CUDA), "crash"
#: SIGKILLs the run's own process, "hang" sleeps forever.
FAULT_NAMES: tuple[str, ...] = ("nan", "oom", "crash", "hang")
#: Values of `RunSpec.inject`: no fault ("") or one of FAULT_NAMES.
INJECTS: tuple[str, ...] = ("", *FAULT_NAMES)

#: Display orders: the order of the registries (tasks, models, backward modes).
TASK_ORDER: tuple[str, ...] = ("deblur", "ct", "mri")
MODEL_ORDER: tuple[str, ...] = ("lu", "lu_ckpt", "luser", "deq", "classical")
BACKWARD_ORDER: tuple[str, ...] = ("ift", "ift_hook", "jfb", "phantom", "unrolled")
#: Models that solve fixed points (their configs take the DEQ settings: solver, tol, max_iter, backward).
SOLVER_MODELS: tuple[str, ...] = ("luser", "deq")
