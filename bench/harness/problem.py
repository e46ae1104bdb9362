"""The problem a run solves beside its model: operator settings, real data, precision.

These are the spec fields that change the inverse problem (or its arithmetic) rather than the
reconstructor. This module normalises and checks them for `bench.harness.specs` (so that run ids
mean the same computation) and turns them into row values; it asks the owners what they accept:

- operator settings: the operator class's ``SETTINGS`` (``operators.settings``), with the task's
  defaults (``bench.data.tasks.TASKS[task].operator_kwargs`` over the constructor's own defaults).
  Normalised settings keep only values that differ from the task's default, so writing a default
  explicitly gives the same run id as leaving it out;
- data: ``bench.data.realsources.REAL_DATA`` (layouts, split names); the root is checked on disk
  (metadata only) before any run;
- precision: ``models.precision.PRECISIONS``; a model without a network (no ``reg_depth`` config
  key: ``classical``) is always fp32, as a model key it does not take is blanked.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

Pairs = tuple[tuple[str, Any], ...]


def _task(task: str) -> Any:
    from bench.data.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)}")
    return TASKS[task]


def operator_class(task: str) -> Any:
    from operators import OPERATORS

    return OPERATORS[_task(task).operator]


def operator_takes(task: str, key: str) -> bool:
    """Whether the task's operator has the setting ``key``."""
    return key in operator_class(task).SETTINGS


def operator_defaults(task: str) -> dict[str, Any]:
    """Every setting of the task's operator at the task's default (constructor default, then the
    task's own ``operator_kwargs``), in canonical form; None where the default is "not given"."""
    from operators.settings import check_settings

    cls = operator_class(task)
    signature = inspect.signature(cls.__init__).parameters
    defaults: dict[str, Any] = {k: signature[k].default for k in cls.SETTINGS}
    defaults.update(dict(_task(task).operator_kwargs))
    given = {k: v for k, v in defaults.items() if v is not None}
    defaults.update(check_settings(f"operator {_task(task).operator!r}", cls.SETTINGS, given))
    return defaults


def normalise_operator(task: str, settings: Pairs) -> Pairs:
    """Checked settings in canonical form, sorted, without those equal to the task's default.

    Raises ``ValueError`` naming the operator, the key and what it accepts."""
    from operators import check_operator_kwargs

    checked = check_operator_kwargs(_task(task).operator, dict(settings))
    defaults = operator_defaults(task)
    return tuple(sorted((k, v) for k, v in checked.items() if defaults.get(k) != v))


def operator_kwargs(task: str, settings: Pairs) -> dict[str, Any]:
    """The overrides for ``build_task(operator_kwargs=...)`` (lists for "floats" settings)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings}


def operator_column(task: str, settings: Pairs) -> str:
    """The row's ``operator_settings``: JSON of every effective setting (task defaults + overrides)."""
    effective = operator_defaults(task)
    effective.update(dict(settings))
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in effective.items() if v is not None}
    return json.dumps(plain, sort_keys=True)


def has_network(model: str) -> bool:
    """Models with a regulariser network (a ``reg_depth`` config key) are the ones precision affects."""
    import dataclasses

    from models import MODELS

    return "reg_depth" in {f.name for f in dataclasses.fields(MODELS[model].config_cls)}


def precisions() -> tuple[str, ...]:
    from models.precision import PRECISIONS

    return tuple(PRECISIONS)


def datasets() -> tuple[str, ...]:
    from bench.data.realsources import REAL_DATA

    return ("", *REAL_DATA)


def normalise_data(data: str, root: str, split: str) -> tuple[str, str, str]:
    """``(data, data_root, data_split)``: all blank for the embedded images; the dataset's default
    test split filled in; an unknown split raises ValueError naming the dataset's splits."""
    if not data:
        return "", "", ""
    from bench.data.realsources import REAL_DATA, check_split

    if data not in REAL_DATA:
        raise ValueError(
            f"unknown data {data!r}; known datasets: {sorted(REAL_DATA)} (or '' for the embedded)"
        )
    split = split or REAL_DATA[data].default_test_split
    check_split(data, split)
    return data, root, split


def check_data(data: str, root: str, split: str, n_train: int, n_val: int, n_test: int) -> None:
    """The root exists, has the expected layout, and holds ``n_train`` training, ``n_val`` validation
    and ``n_test`` test images: ``DatasetFormatError`` / ``ValueError`` naming the layout otherwise.
    Reads no image."""
    from bench.data.realsources import REAL_DATA, check_root, split_indices

    sizes = check_root(data, root, split)
    layout = f"; expected layout: {REAL_DATA[data].layout}"
    if n_train > sizes["train"]:
        raise ValueError(
            f"data {data!r} at {root!r}: the train split has {sizes['train']} images, "
            f"n_train = {n_train}{layout}"
        )
    try:
        split_indices(sizes, split, n_test, n_val)
    except ValueError as err:
        where = f"data {data!r} at {root!r} (n_test = {n_test}, n_val = {n_val})"
        raise ValueError(f"{where}: {err}{layout}") from None


def data_column(data: str, root: str, split: str) -> str:
    """The row's ``data``: JSON ``{"name", "root", "split"}``, empty for the embedded images."""
    return json.dumps({"name": data, "root": root, "split": split}, sort_keys=True) if data else ""


def flatten_operator_table(where: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep table's ``operator`` sub-table -> ``{"operator.KEY": raw value}``."""
    if not isinstance(table, Mapping):
        raise ValueError(
            f"{where}: 'operator' must be a table of operator settings, e.g. operator.n_angles = [30, 60]"
        )
    return {f"operator.{k}": v for k, v in table.items()}
