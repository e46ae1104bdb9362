"""Sweep files (TOML) and their expansion into `RunSpec`s.

A sweep file has three tables, all optional but `grid` usually present::

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
import functools
import importlib.resources
import itertools
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import problem
from bench.harness.checks import check_spec
from bench.harness.coerce import coerce, type_name
from bench.harness.specs import SPEC_FIELDS, SPEC_KEYS, RunSpec, SweepError, config_fields, normalise
from bench.schema import INJECTS, MODEL_KEYS

OPERATOR_PREFIX = "operator."
_TOP_KEYS = ("sweep", "defaults", "grid")
_SWEEP_KEYS = {"name": str, "description": str}


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
    "precision": problem.precisions,
    "data": problem.datasets,
}


def _key_types() -> dict[str, Any]:
    """Every key a sweep may set -> its expected type (RunSpec fields, then model config keys)."""
    spec_types = typing.get_type_hints(RunSpec)
    types_: dict[str, Any] = {k: spec_types[k] for k in SPEC_KEYS}
    for entry in _models().values():
        hints = typing.get_type_hints(entry.config_cls)
        for f in dataclasses.fields(entry.config_cls):
            types_.setdefault(f.name, hints.get(f.name, Any))
    return types_


# ----------------------------------------------------------------------------- checks of one table


def _check_table(where: str, table: Any, key_types: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Validate one table; return key -> list of values (a scalar becomes a one-element list)."""
    if not isinstance(table, dict):
        raise SweepError(f"{where}: expected a table, got {type(table).__name__}")
    out: dict[str, list[Any]] = {}
    if "operator" in table:
        try:
            settings = problem.flatten_operator_table(where, table["operator"])
        except ValueError as err:
            raise SweepError(str(err)) from None
        table = {**{k: v for k, v in table.items() if k != "operator"}, **settings}
    for key, raw in table.items():
        if key.startswith(OPERATOR_PREFIX):  # checked per task, by the task's operator (_make_spec)
            if isinstance(raw, list) and not raw:
                raise SweepError(f"{where}: key {key!r} is an empty axis; give at least one value")
            # A list is an axis; a list-valued setting (angles) is written as a list of lists.
            out[key] = list(raw) if isinstance(raw, list) else [raw]
            continue
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


def _check_operator_key(where: str, key: str, tasks: Sequence[str]) -> None:
    if not any(problem.operator_takes(t, key) for t in tasks if t in _tasks()):
        accepted = {t: sorted(problem.operator_class(t).SETTINGS) for t in tasks if t in _tasks()}
        ops = {t: _tasks()[t].operator for t in accepted}
        raise SweepError(
            f"{where}: no operator of task(s) {list(tasks)} has the setting {key!r}; accepted settings: "
            + "; ".join(f"operator {ops[t]!r} (task {t!r}): {keys}" for t, keys in accepted.items())
        )


def _grid_axes(
    where: str, defaults: Mapping[str, list[Any]], grid: Any, key_types: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """One grid's axes (the defaults updated by the grid's keys), checked as a whole."""
    axes = dict(defaults)
    grid_axes = _check_table(where, grid, key_types)
    axes.update(grid_axes)
    for key in axes:  # an operator setting must be one of at least one of the grid's tasks
        if key.startswith(OPERATOR_PREFIX):
            _check_operator_key(where, key[len(OPERATOR_PREFIX) :], axes.get("task", []))
    for key in grid_axes:  # a key set in the grid must matter to at least one of its models
        if (key in SPEC_FIELDS and key not in MODEL_KEYS) or key.startswith(OPERATOR_PREFIX):
            continue
        takers = [m for m in axes.get("model", []) if key in config_fields(m)]
        if not takers:
            raise SweepError(f"{where}: key {key!r} is not a config key of model(s) {axes.get('model', [])}")
    return axes


# ----------------------------------------------------------------------------- one run


@functools.lru_cache(maxsize=64)
def _check_data(data: str, root: str, split: str, n_train: int, n_val: int, n_test: int) -> None:
    """Check a dataset root once per sweep load (the sizes may need more of it than one spec)."""
    problem.check_data(data, root, split, n_train, n_val, n_test)


def _make_spec(where: str, values: Mapping[str, Any], default_part: str) -> RunSpec:
    """The normalised, checked spec of one run of a grid (key -> value); SweepError naming `where`."""
    for required in ("task", "model"):
        if required not in values:
            raise SweepError(f"{where}: missing required key {required!r}")
    cfg_fields = config_fields(values["model"])
    spec_kw = {k: v for k, v in values.items() if k in SPEC_FIELDS}
    extra = {k: v for k, v in values.items() if k not in SPEC_FIELDS and k in cfg_fields}
    settings = {  # the keys this task's operator takes (the grid check made sure some task takes each)
        k[len(OPERATOR_PREFIX) :]: v
        for k, v in values.items()
        if k.startswith(OPERATOR_PREFIX) and problem.operator_takes(values["task"], k[len(OPERATOR_PREFIX) :])
    }
    spec_kw.setdefault("part", default_part)
    try:
        spec = normalise(
            RunSpec(
                **spec_kw, model_extra=tuple(sorted(extra.items())), operator=tuple(sorted(settings.items()))
            )
        )
        if spec.data:
            sizes = (spec.n_train or 0, spec.n_val or 0, spec.n_test or 0)
            _check_data(spec.data, spec.data_root, spec.data_split, *sizes)
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


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    """A sweep expanded: its distinct runs in order, every one checked."""

    name: str
    description: str
    specs: tuple[RunSpec, ...]


def expand(doc: Mapping[str, Any], *, default_name: str = "sweep") -> Sweep:
    """Expand a parsed sweep document (the dict `tomllib` returns) into a `Sweep`."""
    _check_data.cache_clear()  # a sweep load sees the data roots as they are now
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
        axes = _grid_axes(where, defaults, grid, key_types)
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
    """Parse and expand sweep TOML text; any problem raises SweepError naming `source`."""
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
