"""Run specifications and TOML sweep expansion.

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

A sweep file (TOML) has three tables, all optional but `grid` usually present::

    [sweep]                       # name (str) and description (str)
    name = "smoke"
    [defaults]                    # fields shared by every grid
    task = "blur"
    steps = 20
    [[grid]]                      # one sub-grid; a list is an axis, a scalar is fixed
    part = "profile"
    model = ["lu", "lu_ckpt"]
    n_iters = [1, 2, 4]

Expansion: for each grid, the cross product of its axes (lists) over `defaults` updated by the
grid's scalars, axes in the order the keys appear (defaults first); runs whose run_id was already
produced are dropped, keeping the first (stable order). Lists in `defaults` are axes of every grid
that does not override the key. `part` defaults to the sweep's name.

Validation raises `SweepError` naming where (`defaults`, `[[grid]] #2`), the key and what is allowed:
malformed TOML, an unknown key, a wrong type, an empty axis, an unknown task/model/solver/backward
name, a key that none of a grid's models takes, a config rejected by the model's config class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.checks import check_spec
from bench.harness.coerce import coerce, type_name
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

    @property
    def run_id(self) -> str:
        """12 hex digits of sha1 over the normalised spec's canonical JSON."""
        canonical = json.dumps(spec_to_dict(normalise(self)), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

    def model_kwargs(self) -> dict[str, Any]:
        """Exactly the keyword arguments for `build_model(self.model, op, **kwargs)`."""
        spec = normalise(self)
        kwargs = {k: getattr(spec, k) for k in MODEL_KEYS if getattr(spec, k) is not None}
        kwargs.update(dict(spec.model_extra))
        return kwargs


_SPEC_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunSpec)}
_SPEC_TYPES: dict[str, Any] = typing.get_type_hints(RunSpec)
#: Keys a sweep file may set directly (model_extra is filled from other models' config keys).
SPEC_KEYS: tuple[str, ...] = tuple(k for k in _SPEC_FIELDS if k != "model_extra")


# ----------------------------------------------------------------------------- registries (lazy)


def _models() -> Mapping[str, Any]:
    from models import MODELS

    return MODELS


def _tasks() -> Mapping[str, Any]:
    from bench.data.tasks import TASKS

    return TASKS


def _solvers() -> Sequence[str]:
    from models.solvers import SOLVERS

    return tuple(SOLVERS)


def _lr_schedules() -> Sequence[str]:
    from bench.harness.train import LR_SCHEDULES

    return tuple(LR_SCHEDULES)


def _backward_modes() -> Sequence[str]:
    from models.deq import BACKWARD_MODES

    return tuple(BACKWARD_MODES)


#: Keys whose values are names from a registry: key -> function returning the allowed names.
_CHOICES: dict[str, Callable[[], Sequence[str]]] = {
    "task": lambda: tuple(_tasks()),
    "model": lambda: tuple(_models()),
    "solver": _solvers,
    "backward": _backward_modes,
    "inject": lambda: INJECTS,
    "lr_schedule": _lr_schedules,
}


def _config_fields(model: str) -> dict[str, dataclasses.Field]:
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
    cfg_fields = _config_fields(spec.model)
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
    return dataclasses.replace(spec, **changes)


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """JSON-ready dict of a spec (model_extra as a dict)."""
    d = {f: getattr(spec, f) for f in _SPEC_FIELDS}
    d["model_extra"] = dict(spec.model_extra)
    return d


def spec_from_dict(d: Mapping[str, Any]) -> RunSpec:
    """Inverse of `spec_to_dict`; unknown keys raise KeyError listing the known ones."""
    unknown = set(d) - set(_SPEC_FIELDS)
    if unknown:
        raise KeyError(f"unknown RunSpec keys {sorted(unknown)}; known: {list(_SPEC_FIELDS)}")
    kw = dict(d)
    kw["model_extra"] = tuple(sorted(dict(kw.get("model_extra", {})).items()))
    return RunSpec(**kw)


def spec_to_json(spec: RunSpec) -> str:
    return json.dumps(spec_to_dict(spec), sort_keys=True)


def spec_from_json(text: str) -> RunSpec:
    return spec_from_dict(json.loads(text))


def _key_types() -> dict[str, Any]:
    """Every key a sweep may set -> its expected type (RunSpec fields, then model config keys)."""
    types_: dict[str, Any] = {k: _SPEC_TYPES[k] for k in SPEC_KEYS}
    for entry in _models().values():
        hints = typing.get_type_hints(entry.config_cls)
        for f in dataclasses.fields(entry.config_cls):
            types_.setdefault(f.name, hints.get(f.name, Any))
    return types_


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    specs: tuple[RunSpec, ...]


_TOP_KEYS = ("sweep", "defaults", "grid")
_SWEEP_KEYS = {"name": str, "description": str}


def _check_table(where: str, table: Any, key_types: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Validate one table; return key -> list of values (a scalar becomes a one-element list)."""
    if not isinstance(table, dict):
        raise SweepError(f"{where}: expected a table, got {type(table).__name__}")
    out: dict[str, list[Any]] = {}
    for key, raw in table.items():
        if key not in key_types:
            raise SweepError(f"{where}: unknown key {key!r}; allowed keys: {sorted(key_types)}")
        values = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, list) and not raw:
            hint = (
                f" from {list(_CHOICES[key]())}"
                if key in _CHOICES
                else f" of type {type_name(key_types[key])}"
            )
            raise SweepError(f"{where}: key {key!r} is an empty axis; give at least one value{hint}")
        checked = []
        for v in values:
            try:
                v = coerce(v, key_types[key])
            except TypeError:
                raise SweepError(
                    f"{where}: key {key!r} expects {type_name(key_types[key])}, got {v!r} "
                    f"({type(v).__name__})"
                ) from None
            if key in _CHOICES:
                allowed = _CHOICES[key]()
                if v not in allowed:
                    raise SweepError(
                        f"{where}: key {key!r} has unknown value {v!r}; allowed: {list(allowed)}"
                    )
            checked.append(v)
        out[key] = checked
    return out


def _make_spec(where: str, values: Mapping[str, Any], default_part: str) -> RunSpec:
    for required in ("task", "model"):
        if required not in values:
            raise SweepError(f"{where}: missing required key {required!r}")
    cfg_fields = _config_fields(values["model"])
    spec_kw = {k: v for k, v in values.items() if k in _SPEC_FIELDS}
    extra = {k: v for k, v in values.items() if k not in _SPEC_FIELDS and k in cfg_fields}
    spec_kw.setdefault("part", default_part)
    try:
        spec = normalise(RunSpec(**spec_kw, model_extra=tuple(sorted(extra.items()))))
    except ValueError as err:
        raise SweepError(f"{where}: {err}") from None
    config_cls = _models()[spec.model].config_cls
    try:
        config_cls(**spec.model_kwargs())
    except (TypeError, ValueError, KeyError) as err:
        raise SweepError(f"{where}: model {spec.model!r} rejects its config: {err}") from None
    try:
        check_spec(spec)
    except ValueError as err:
        raise SweepError(f"{where}: {err}") from None
    return spec


def expand(doc: Mapping[str, Any], *, default_name: str = "sweep") -> Sweep:
    """Expand a parsed sweep document (the dict `tomllib` returns) into a `Sweep`."""
    unknown = set(doc) - set(_TOP_KEYS)
    if unknown:
        raise SweepError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {list(_TOP_KEYS)}")
    meta = doc.get("sweep", {})
    if not isinstance(meta, dict):
        raise SweepError("[sweep]: expected a table with keys 'name', 'description'")
    for key, value in meta.items():
        if key not in _SWEEP_KEYS:
            raise SweepError(f"[sweep]: unknown key {key!r}; allowed keys: {sorted(_SWEEP_KEYS)}")
        if not isinstance(value, _SWEEP_KEYS[key]):
            raise SweepError(f"[sweep]: key {key!r} expects str, got {value!r}")
    name = meta.get("name", default_name)

    key_types = _key_types()
    defaults = _check_table("[defaults]", doc.get("defaults", {}), key_types)
    grids = doc.get("grid", [{}])
    if not isinstance(grids, list):
        raise SweepError("'grid' must be an array of tables: write [[grid]], not [grid]")

    specs: dict[str, RunSpec] = {}
    for index, grid in enumerate(grids, start=1):
        where = f"[[grid]] #{index}"
        axes = dict(defaults)
        grid_axes = _check_table(where, grid, key_types)
        axes.update(grid_axes)
        for key in grid_axes:  # a key set in the grid must matter to at least one of its models
            if key in _SPEC_FIELDS and key not in MODEL_KEYS:
                continue
            takers = [m for m in axes.get("model", []) if key in _config_fields(m)]
            if not takers:
                raise SweepError(
                    f"{where}: key {key!r} is not a config key of model(s) {axes.get('model', [])}"
                )
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)):
            spec = _make_spec(where, dict(zip(keys, combo, strict=True)), name)
            specs.setdefault(spec.run_id, spec)
    return Sweep(name=name, description=meta.get("description", ""), specs=tuple(specs.values()))


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep TOML file; any problem raises SweepError."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SweepError(f"cannot read sweep file {str(path)!r}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise SweepError(
            f"sweep file {str(path)!r} is not UTF-8 (byte {err.object[err.start]:#04x} at offset"
            f" {err.start}); TOML files must be UTF-8"
        ) from None
    return loads_sweep(text, default_name=path.stem, source=str(path))


def loads_sweep(text: str, *, default_name: str = "sweep", source: str = "<string>") -> Sweep:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{source}: malformed TOML: {err}") from None
    try:
        return expand(doc, default_name=default_name)
    except SweepError as err:
        raise SweepError(f"{source}: {err}") from None


def available_presets() -> list[str]:
    """Names of the TOML presets shipped in bench/sweeps/."""
    folder = importlib.resources.files("bench") / "sweeps"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Sweep:
    """Load bench/sweeps/NAME.toml; an unknown name raises SweepError listing the presets."""
    presets = available_presets()
    if name not in presets:
        raise SweepError(f"unknown preset {name!r}; available presets: {presets}")
    text = (importlib.resources.files("bench") / "sweeps" / f"{name}.toml").read_text()
    return loads_sweep(text, default_name=name, source=f"preset {name!r}")


def spec_columns(spec: RunSpec) -> dict[str, Any]:
    """run_id and the spec's CSV columns (effective values: the spec is normalised first)."""
    spec = normalise(spec)
    row: dict[str, Any] = {"run_id": spec.run_id}
    row.update({c: getattr(spec, c) for c in SPEC_COLUMNS})
    # The model's other config keys (e.g. a classical method, x0), so every row names its configuration.
    row["model_extra"] = json.dumps(dict(spec.model_extra), sort_keys=True) if spec.model_extra else ""
    return row
