"""bench.schema is the one list of the names the harness, the analysis and the gate share: each list
here agrees with the registry or the code that fills it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from bench import schema
from bench.data.tasks import TASKS
from bench.harness import faults
from bench.harness.specs import RunSpec, spec_columns
from bench.meters.environment import environment_columns, environment_stamp
from bench.meters.quality import solver_summary
from models import MODELS
from models.deq import BACKWARD_MODES, DEQSettings, DEQStats
from models.solvers import SolverStats


def _is_subsequence(part: tuple[str, ...], whole: tuple[str, ...]) -> bool:
    rest = iter(whole)
    return all(name in rest for name in part)


def test_subsequence_check_sees_order() -> None:
    assert _is_subsequence(("a", "c"), ("a", "b", "c")) and not _is_subsequence(("c", "a"), ("a", "b", "c"))


def test_column_groups_are_ordered_parts_of_the_row() -> None:
    assert len(set(schema.COLUMNS)) == len(schema.COLUMNS)
    assert schema.COLUMNS[:3] == ("run_id", "status", "error")
    groups = (schema.SPEC_COLUMNS, schema.ENV_COLUMNS, schema.SOLVER_COLUMNS, schema.STRING_COLUMNS)
    for group in (*groups, schema.PROBLEM_COLUMNS, schema.LATER_COLUMNS, schema.BUDGET_COLUMNS):
        assert _is_subsequence(group, schema.COLUMNS), group
    assert schema.RETRYABLE < set(schema.STATUSES)
    assert set(schema.BUDGET_COLUMNS) <= set(schema.LATER_COLUMNS)  # older tables lack them
    assert schema.OVER_BUDGET in set(schema.STATUSES) - schema.RETRYABLE - {"oom"}


def test_spec_keys_are_runspec_fields_with_the_model_configs_types() -> None:
    fields = [f.name for f in dataclasses.fields(RunSpec)]
    assert [f for f in fields if f in schema.MODEL_KEYS] == list(schema.MODEL_KEYS)
    assert set(schema.SPEC_COLUMNS) <= set(fields)
    spec_hints = typing.get_type_hints(RunSpec)
    for key in schema.MODEL_KEYS:
        takers = [e.config_cls for e in MODELS.values() if key in typing.get_type_hints(e.config_cls)]
        assert takers, f"no model takes {key}"
        for config_cls in takers:
            assert spec_hints[key] == typing.get_type_hints(config_cls)[key] | None, (key, config_cls)
    spec = RunSpec(task="deblur", model="luser")
    assert set(spec_columns(spec)) == {"run_id", *schema.SPEC_COLUMNS, "model_extra", *schema.PROBLEM_COLUMNS}


def test_display_orders_are_the_registries() -> None:
    assert tuple(TASKS) == schema.TASK_ORDER
    assert tuple(MODELS) == schema.MODEL_ORDER
    assert tuple(BACKWARD_MODES) == schema.BACKWARD_ORDER
    solving = tuple(m for m, entry in MODELS.items() if issubclass(entry.config_cls, DEQSettings))
    assert schema.SOLVER_MODELS == solving


def test_fault_names_are_the_injectable_faults() -> None:
    assert tuple(faults.FAULTS) == schema.FAULT_NAMES
    assert schema.INJECTS == ("", *schema.FAULT_NAMES)
    for name in schema.INJECTS:
        RunSpec(task="deblur", model="lu", inject=name)
    with pytest.raises(ValueError, match="inject must be one of"):
        RunSpec(task="deblur", model="lu", inject="segfault")


def test_filled_column_groups_come_from_their_meters() -> None:
    assert set(environment_columns("cpu")) == set(schema.ENV_COLUMNS) <= set(environment_stamp("cpu"))
    stats = SolverStats(iters=3, rel_residual=torch.tensor([1e-4]), converged=torch.tensor([True]))
    for given in ([], [DEQStats(forward=stats, backward=stats)]):
        assert set(solver_summary(given)) == set(schema.SOLVER_COLUMNS)


def test_schema_imports_nothing_heavy() -> None:
    probes = "('torch', 'pandas', 'models')"
    code = f"import sys, bench.schema; print(sorted(m for m in {probes} if m in sys.modules))"
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_nvml_columns_are_the_meters_and_at_the_end_of_the_row() -> None:
    from bench.meters.nvml import nvml_columns

    assert tuple(nvml_columns("cpu")) == schema.NVML_COLUMNS
    start = schema.COLUMNS.index(schema.NVML_COLUMNS[0])  # one block, among the later columns
    assert schema.COLUMNS[start : start + len(schema.NVML_COLUMNS)] == schema.NVML_COLUMNS
    assert _is_subsequence(schema.NVML_COLUMNS, schema.LATER_COLUMNS)  # older tables read them as empty
