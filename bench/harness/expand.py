"""Sweep files (TOML) and their expansion into `RunSpec`s, checked run by run.

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
name, a key that none of a grid's models takes, a config rejected by the model's config class. Each
grid's tables are checked before its runs, grid after grid, and the first invalid run (in expansion
order) raises.

`read_sweep` / `read_preset` / `parse_sweep` give a `SweepPlan` whose `runs()` expands lazily, one
run at a time (a dry run lists a large grid as it goes); `load_sweep` / `load_preset` /
`loads_sweep` expand the whole sweep into a `Sweep`, so every run is checked before any starts.
One grid's runs are built and checked by `bench.harness.grid`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import problem
from bench.harness.coerce import coerce, type_name
from bench.harness.grid import OPERATOR_PREFIX, forget_data_checks, grid_runs
from bench.harness.specs import SPEC_FIELDS, SPEC_KEYS, RunSpec, SweepError, config_fields
from bench.schema import INJECTS, MODEL_KEYS

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
        if key.startswith(OPERATOR_PREFIX):  # checked per task, by the task's operator (make_spec)
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


# ----------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class Sweep:
    """A sweep expanded: its distinct runs in order, every one checked."""

    name: str
    description: str
    specs: tuple[RunSpec, ...]


@dataclass(frozen=True)
class SweepPlan:
    """A parsed sweep document whose top level and ``[sweep]`` table are checked; its runs are
    expanded (and checked) on demand by `runs`. ``source`` prefixes error messages ("" for none)."""

    name: str
    description: str
    doc: Mapping[str, Any]
    source: str = ""

    def runs(self) -> Iterator[RunSpec]:
        """Yield the sweep's distinct runs in expansion order, each as soon as it is built; raise
        SweepError at the first invalid table or run (the runs before it were yielded)."""
        try:
            yield from _expand_runs(self.doc, self.name)
        except SweepError as err:
            if not self.source:
                raise
            raise SweepError(f"{self.source}: {err}") from None

    def grid_size(self) -> int:
        """Runs the grids describe before checks and de-duplication (each grid's axes over the defaults,
        a list being an axis): read off the document alone, so known before anything is imported or
        expanded. An upper bound of `len(self.load().specs)`."""
        defaults = self.doc.get("defaults", {})
        grids = self.doc.get("grid", [{}])
        if not isinstance(defaults, dict) or not isinstance(grids, list):
            return 0
        total = 0
        for grid in grids:
            if not isinstance(grid, dict):
                continue
            n = 1
            for table in _axis_tables({**defaults, **grid}, defaults, grid):
                n *= math.prod(len(v) for v in table.values() if isinstance(v, list))
            total += n
        return total

    def load(self) -> Sweep:
        """Every run, expanded and checked (SweepError before any is returned)."""
        return Sweep(name=self.name, description=self.description, specs=tuple(self.runs()))


def _axis_tables(
    merged: Mapping[str, Any], defaults: Mapping[str, Any], grid: Mapping[str, Any]
) -> list[Any]:
    """The tables whose list values are axes of one grid: its keys over the defaults, and its
    ``operator`` table over the defaults' (``operator.KEY`` settings merge key by key)."""
    operator = {**(defaults.get("operator") or {}), **(grid.get("operator") or {})}
    top = {k: v for k, v in merged.items() if k != "operator"}
    return [top, operator] if isinstance(operator, dict) else [top]


def _expand_runs(doc: Mapping[str, Any], name: str) -> Iterator[RunSpec]:
    forget_data_checks()  # a sweep load sees the data roots as they are now
    key_types = _key_types()
    defaults = _check_table("[defaults]", doc.get("defaults", {}), key_types)
    grids = doc.get("grid", [{}])
    if not isinstance(grids, list):
        raise SweepError("'grid' must be an array of tables: write [[grid]], not [grid]")
    seen: set[str] = set()
    for index, grid in enumerate(grids, start=1):
        where = f"[[grid]] #{index}"
        yield from grid_runs(where, _grid_axes(where, defaults, grid, key_types), name, seen)


def plan(doc: Mapping[str, Any], *, default_name: str = "sweep", source: str = "") -> SweepPlan:
    """Check a parsed sweep document's top level and ``[sweep]`` table; its runs come later."""
    try:
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
    except SweepError as err:
        raise SweepError(f"{source}: {err}" if source else str(err)) from None
    return SweepPlan(meta.get("name", default_name), meta.get("description", ""), doc, source)


def expand(doc: Mapping[str, Any], *, default_name: str = "sweep") -> Sweep:
    """Expand a parsed sweep document (the dict `tomllib` returns) into a `Sweep`."""
    return plan(doc, default_name=default_name).load()


def parse_sweep(text: str, *, default_name: str = "sweep", source: str = "<string>") -> SweepPlan:
    """Parse sweep TOML text into a `SweepPlan`; errors name `source`."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{source}: malformed TOML: {err}") from None
    return plan(doc, default_name=default_name, source=source)


def read_sweep(path: str | Path) -> SweepPlan:
    """Read a sweep TOML file into a `SweepPlan` (its name defaults to the file's stem)."""
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
    return parse_sweep(text, default_name=path.stem, source=str(path))


def available_presets() -> list[str]:
    """Names of the TOML presets shipped in bench/sweeps/."""
    folder = importlib.resources.files("bench") / "sweeps"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_preset(name: str) -> SweepPlan:
    """bench/sweeps/NAME.toml as a `SweepPlan`; an unknown name raises SweepError listing the presets."""
    presets = available_presets()
    if name not in presets:
        raise SweepError(f"unknown preset {name!r}; available presets: {presets}")
    text = (importlib.resources.files("bench") / "sweeps" / f"{name}.toml").read_text()
    return parse_sweep(text, default_name=name, source=f"preset {name!r}")


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep TOML file; any problem raises SweepError."""
    return read_sweep(path).load()


def loads_sweep(text: str, *, default_name: str = "sweep", source: str = "<string>") -> Sweep:
    """Parse and expand sweep TOML text; any problem raises SweepError naming `source`."""
    return parse_sweep(text, default_name=default_name, source=source).load()


def load_preset(name: str) -> Sweep:
    """Load bench/sweeps/NAME.toml; an unknown name raises SweepError listing the presets."""
    return read_preset(name).load()
