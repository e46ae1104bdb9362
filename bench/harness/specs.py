"""Run specifications: `RunSpec`, its normalisation, its run id and its (de)serialisation.

A `RunSpec` is one run: a task, a model with its config keys, and the harness settings (batch size,
image size, training steps, ...). Its `run_id` is a short sha1 of the *normalised* spec, so the same
run is recognised across sweeps and restarts.

Normalisation (`normalise`) makes run ids mean "the same computation":
- model config keys the model does not take are blanked (None): the model's keys are read from
  `dataclasses.fields(MODELS[model].config_cls)`, never from a table here. A sweep over `tol` that
  also lists `lu` therefore gives one `lu` run, not one per tol;
- model keys the model takes but the spec leaves unset are filled with the config's default, so
  `{model="deq"}` and `{model="deq", tol=<default>}` are one run and the CSV shows effective values;
- extra model keys (`model_extra`, any config key without its own column) equal to the default are
  dropped;
- task sizes left unset (image_size, n_train, n_test, noise_sigma, n_val) take the task's defaults
  (`bench.data.tasks.TASKS[task]`).

Sweep files (TOML) and their expansion into RunSpecs live in `bench.harness.expand` and
`bench.harness.grid`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.harness import problem
from bench.schema import INJECTS, MODEL_KEYS, SPEC_COLUMNS

#: Smallest allowed value of the harness's integer fields (None, where allowed, means a default).
_HARNESS_MINIMUMS: dict[str, int] = {
    "batch_size": 1,
    "image_size": 1,
    "steps": 0,
    "seed": 0,
    "n_train": 1,
    "n_test": 1,
    "warmup_steps": 0,
    "timed_steps": 0,
    "cpu_threads": 1,
    "val_every": 0,
    "patience": 0,
    "n_val": 1,
}


class SweepError(ValueError):
    """A sweep file or spec is invalid; the message names the place, the key and what is allowed."""


@dataclass(frozen=True)
class RunSpec:
    """One run. Model keys left as None mean "not used by this model" or "the model's default"."""

    task: str
    model: str
    part: str = ""
    # Model config keys (passed to build_model when the model's config class has them).
    n_iters: int | None = None
    reg_depth: int | None = None
    reg_width: int | None = None
    solver: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    backward: str | None = None
    act: str | None = None
    bwd_tol: float | None = None
    bwd_max_iter: int | None = None
    #: Any other config key of the model, as sorted (key, value) pairs (e.g. ("anderson_m", 6)).
    model_extra: tuple[tuple[str, Any], ...] = ()
    # Harness settings.
    batch_size: int = 4
    image_size: int | None = None  # None (also n_train, n_test, noise_sigma): the task's default
    steps: int = 0
    seed: int = 0
    lr: float = 1e-3
    grad_clip: float | None = None
    # Validation, plateau stopping and the schedule (bench/harness/train.py); steps is then max_steps.
    val_every: int = 0  # steps between validations (0: none)
    patience: int = 0  # validations without improvement before stopping (0: fixed-step training)
    min_delta_db: float = 0.0  # an improvement must exceed this many dB
    lr_schedule: str = "constant"  # a key of bench.harness.train.LR_SCHEDULES
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    noise_sigma: float | None = None
    warmup_steps: int = 1
    timed_steps: int = 3
    device: str = ""  # "" picks cuda when available, else cpu
    cpu_threads: int | None = None  # torch intra-op threads for the run (None: torch's default)
    inject: str = ""  # testing aid: a name of bench.schema.FAULT_NAMES, or "" for none
    # The problem beside the model (bench/harness/problem.py).
    #: Operator settings that differ from the task's default, sorted (key, value) pairs; a sweep sets
    #: them as ``operator.KEY`` (e.g. ``operator.n_angles = [30, 60]``).
    operator: tuple[tuple[str, Any], ...] = ()
    precision: str = "fp32"  # the networks' arithmetic: "fp32" or "bf16" (autocast), models/precision.py
    data: str = ""  # "" = the task's embedded images, else a dataset of bench.data.realsources.REAL_DATA
    data_root: str = ""  # the dataset's folder (data only)
    data_split: str = ""  # the dataset split of the test images ("" = the dataset's default)

    def __post_init__(self) -> None:
        for name, minimum in _HARNESS_MINIMUMS.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"RunSpec.{name} must be >= {minimum}, got {value!r}")
        if self.lr <= 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ValueError(
                f"RunSpec.lr and grad_clip must be > 0, got lr={self.lr!r}, grad_clip={self.grad_clip!r}"
            )
        if self.inject not in INJECTS:
            raise ValueError(f"RunSpec.inject must be one of {INJECTS}, got {self.inject!r}")
        if self.patience > 0 and self.val_every == 0:
            raise ValueError(f"RunSpec.patience {self.patience} needs validation: set val_every > 0")
        if self.min_delta_db < 0:
            raise ValueError(f"RunSpec.min_delta_db must be >= 0 (dB), got {self.min_delta_db!r}")

    @functools.cached_property
    def run_id(self) -> str:
        """12 hex digits of sha1 over the normalised spec's canonical JSON (computed once per object:
        the fields are frozen)."""
        d = spec_to_dict(normalise(self))
        d = {k: v for k, v in d.items() if k not in _ID_NEUTRAL or v != _ID_NEUTRAL[k]}
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

    def model_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments for `build_model(self.model, op, **kwargs)`."""
        spec = normalise(self)
        kwargs = {k: getattr(spec, k) for k in MODEL_KEYS if getattr(spec, k) is not None}
        kwargs.update(dict(spec.model_extra))
        return kwargs


#: RunSpec's fields by name, in declaration order.
SPEC_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunSpec)}
#: Keys a sweep file may set directly (model_extra is filled from other models' config keys, operator
#: from the ``operator.KEY`` keys).
SPEC_KEYS: tuple[str, ...] = tuple(k for k in SPEC_FIELDS if k not in ("model_extra", "operator"))
#: Fields that normalisation copies unchanged and whose checks (`RunSpec.__post_init__`,
#: `bench.harness.checks.check_spec`) read no other field: whether a spec is valid is then "every one
#: of these values is valid, and the rest of the spec is", and the normalised spec is the rest's
#: normalised form with these values in place. The sweep expansion relies on it to check each value
#: of such an axis once instead of once per run (`bench.harness.grid`; tests/test_expand.py checks
#: it field by field); a field that gains a normalisation or a check involving another field must
#: leave this set.
PER_VALUE_FIELDS: frozenset[str] = frozenset({
    "part", "steps", "seed", "lr", "grad_clip", "min_delta_db", "lr_schedule", "warmup_steps",
    "timed_steps", "device", "cpu_threads", "inject",
})  # fmt: skip
#: Fields left out of the run id's canonical JSON while at these values, so that adding them left
#: every earlier run id unchanged.
_ID_NEUTRAL: dict[str, Any] = {
    "operator": {}, "precision": "fp32", "data": "", "data_root": "", "data_split": "",
}  # fmt: skip
#: The canonical JSON's key order.
_ID_ORDER: tuple[str, ...] = tuple(sorted(SPEC_FIELDS))


# ----------------------------------------------------------------------------- registries (lazy)


def _models() -> Mapping[str, Any]:
    from models import MODELS

    return MODELS


def _tasks() -> Mapping[str, Any]:
    from bench.data.tasks import TASKS

    return TASKS


def config_fields(model: str) -> dict[str, dataclasses.Field]:
    """The config keys of `model` (its config class's fields); SweepError for an unknown model."""
    models = _models()
    if model not in models:
        raise SweepError(f"unknown model {model!r}; known models: {sorted(models)}")
    return {f.name: f for f in dataclasses.fields(models[model].config_cls)}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# ----------------------------------------------------------------------------- normalisation


#: RunSpec fields that default (None) to the task's own default (`bench.data.tasks.TaskSpec`).
TASK_KEYS: tuple[str, ...] = ("image_size", "n_train", "n_test", "noise_sigma", "n_val")


def normalise(spec: RunSpec) -> RunSpec:
    """Blank model keys the model does not take, fill unset ones with the config's defaults, and
    fill unset task sizes (image_size, n_train, n_test, noise_sigma, n_val) with the task's defaults."""
    cfg_fields = config_fields(spec.model)
    tasks = _tasks()
    if spec.task not in tasks:
        raise SweepError(f"unknown task {spec.task!r}; known tasks: {sorted(tasks)}")
    changes: dict[str, Any] = {
        key: getattr(tasks[spec.task], key) for key in TASK_KEYS if getattr(spec, key) is None
    }
    for key in MODEL_KEYS:
        if key not in cfg_fields:
            changes[key] = None
        elif getattr(spec, key) is None:
            changes[key] = _field_default(cfg_fields[key])
    extra = {
        k: v
        for k, v in spec.model_extra
        if k in cfg_fields and k not in MODEL_KEYS and v != _field_default(cfg_fields[k])
    }
    changes["model_extra"] = tuple(sorted(extra.items()))
    changes["operator"] = problem.normalise_operator(spec.task, spec.operator)
    if not problem.has_network(spec.model):
        changes["precision"] = "fp32"
    elif spec.precision not in problem.precisions():
        raise ValueError(f"unknown precision {spec.precision!r}; known: {list(problem.precisions())}")
    changes["data"], changes["data_root"], changes["data_split"] = problem.normalise_data(
        spec.data, spec.data_root, spec.data_split
    )
    return dataclasses.replace(spec, **changes)


def _json_value(name: str, value: Any) -> Any:
    """A field's value as it appears in JSON (model_extra and operator as objects, lists for tuples)."""
    if name == "model_extra":
        return dict(value)
    if name == "operator":
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value}
    return value


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """JSON-ready dict of a spec (model_extra as a dict)."""
    return {f: _json_value(f, getattr(spec, f)) for f in SPEC_FIELDS}


def spec_from_dict(d: Mapping[str, Any]) -> RunSpec:
    """Inverse of `spec_to_dict`; unknown keys raise KeyError listing the known ones."""
    unknown = set(d) - set(SPEC_FIELDS)
    if unknown:
        raise KeyError(f"unknown RunSpec keys {sorted(unknown)}; known: {list(SPEC_FIELDS)}")
    kw = dict(d)
    kw["model_extra"] = tuple(sorted(dict(kw.get("model_extra", {})).items()))
    kw["operator"] = tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(kw.get("operator", {})).items())
    )
    return RunSpec(**kw)


def spec_to_json(spec: RunSpec) -> str:
    return json.dumps(spec_to_dict(spec), sort_keys=True)


def spec_from_json(text: str) -> RunSpec:
    return spec_from_dict(json.loads(text))


# ----------------------------------------------------------------------------- run ids in pieces


def id_piece(name: str, value: Any) -> str:
    """One field's item of the run id's canonical JSON, with its leading comma (``',"seed":3'``), or ""
    where the field is left out (its id-neutral value). `run_id_of_pieces` over every field's piece of
    a normalised spec, in `id_pieces` order, is that spec's `run_id` (tests/test_expand.py checks)."""
    plain = _json_value(name, value)
    if name in _ID_NEUTRAL and plain == _ID_NEUTRAL[name]:
        return ""
    return f",{json.dumps(name)}:{json.dumps(plain, sort_keys=True, separators=(',', ':'))}"


def id_pieces(spec: RunSpec) -> dict[str, str]:
    """Field -> `id_piece` of the *normalised* spec `spec`, in the canonical JSON's key order."""
    return {name: id_piece(name, getattr(spec, name)) for name in _ID_ORDER}


def run_id_of_pieces(pieces: Iterable[str]) -> str:
    """The run id from a normalised spec's `id_pieces` values, in order: a spec built field by field
    (`bench.harness.grid`) gets its id without a normalisation or a JSON encoding per run."""
    canonical = "{" + "".join(pieces)[1:] + "}"
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def prechecked(fields: Mapping[str, Any], run_id: str) -> RunSpec:
    """The RunSpec with these field values (every field given), taken as already normalised and
    checked, with its run id already computed (`run_id_of_pieces`): no `__post_init__`, no
    normalisation. Only for a caller that has checked each part of the spec, as the sweep expansion
    does once per distinct part (`PER_VALUE_FIELDS`); anything else builds `RunSpec(...)`."""
    spec = object.__new__(RunSpec)
    spec.__dict__.update(fields)
    spec.__dict__["run_id"] = run_id  # the cached_property's slot
    return spec


def spec_columns(spec: RunSpec) -> dict[str, Any]:
    """run_id and the spec's CSV columns (effective values: the spec is normalised first)."""
    spec = normalise(spec)
    row: dict[str, Any] = {"run_id": spec.run_id}
    row.update({c: getattr(spec, c) for c in SPEC_COLUMNS})
    # The model's other config keys (e.g. a classical method, x0), so every row names its configuration.
    row["model_extra"] = json.dumps(dict(spec.model_extra), sort_keys=True) if spec.model_extra else ""
    # The problem beside the model (bench.schema.PROBLEM_COLUMNS).
    row["noise_sigma"] = spec.noise_sigma
    row["operator_settings"] = problem.operator_column(spec.task, spec.operator)
    row["precision"] = spec.precision
    row["data"] = problem.data_column(spec.data, spec.data_root, spec.data_split)
    return row
