"""Sweep expansion (bench/harness/expand.py, bench/harness/grid.py): run ids, order, de-duplication
and validation errors are those of checking every run on its own, although each distinct part of a
grid is checked once."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.harness.expand import (
    available_presets,
    load_preset,
    load_sweep,
    loads_sweep,
    parse_sweep,
)
from bench.harness.grid import make_spec
from bench.harness.specs import (
    PER_VALUE_FIELDS,
    RunSpec,
    SweepError,
    id_pieces,
    normalise,
    run_id_of_pieces,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
#: Run ids computed by the expansion that checked and normalised every run on its own (before the
#: expansion cached per distinct part): every preset and tests/fixtures/mixed_sweep.toml, in order.
#: A preset edited on purpose gets new ids: regenerate its entry then, never for an unchanged preset.
RUN_IDS = json.loads((FIXTURES / "run_ids.json").read_text())


@pytest.mark.parametrize("preset", sorted(RUN_IDS["presets"]))
def test_preset_run_ids_order_and_dedup_are_unchanged(preset: str) -> None:
    assert [s.run_id for s in load_preset(preset).specs] == RUN_IDS["presets"][preset]


def test_every_preset_has_recorded_run_ids() -> None:
    assert sorted(RUN_IDS["presets"]) == available_presets()


def test_mixed_sweep_run_ids_are_unchanged() -> None:
    """Tasks x models x precision with duplicate seeds, operator settings, classical methods, LUSER
    cells: runs collapse (a key a model does not take, a repeated value) exactly as before."""
    specs = load_sweep(FIXTURES / "mixed_sweep.toml").specs
    assert [s.run_id for s in specs] == RUN_IDS["mixed_sweep"]


def test_committed_smoke_results_are_the_smoke_preset() -> None:
    with open(REPO / "results" / "smoke" / "runs.csv", newline="") as f:
        committed = [row["run_id"] for row in csv.DictReader(f)]
    assert committed == [s.run_id for s in load_preset("smoke").specs]


def test_expanded_specs_are_normalised_and_their_ids_recomputed_agree() -> None:
    specs = [*load_sweep(FIXTURES / "mixed_sweep.toml").specs, *load_preset("paper").specs]
    for spec in specs:
        assert normalise(spec) == spec
        fresh = dataclasses.replace(spec)  # a new object: its run_id is computed, not carried over
        assert fresh.run_id == spec.run_id
        assert run_id_of_pieces(id_pieces(spec).values()) == spec.run_id
    assert len({s.run_id for s in specs}) == len(specs)


def test_id_pieces_agree_with_run_id_off_the_neutral_values() -> None:
    """The fields left out of the id at their neutral value (operator, precision, data) count once set."""
    spec = RunSpec(
        task="ct", model="luser", operator=(("n_angles", 30),), precision="bf16", seed=3, grad_clip=1.0
    )
    norm = normalise(spec)
    assert run_id_of_pieces(id_pieces(norm).values()) == spec.run_id
    assert id_pieces(norm)["operator"] == ',"operator":{"n_angles":30}'
    assert id_pieces(normalise(RunSpec(task="ct", model="lu")))["precision"] == ""


#: Later runs with an invalid value: the message is the one the expansion gave when it checked every
#: run on its own (the first invalid run in order, its first failing check).
HEAD = "[defaults]\ntask = ['deblur', 'ct']\nmodel = ['lu', 'luser']\nsteps = 2\n[[grid]]\n"
LATE = "task = ['deblur', 'ct']\nmodel = ['lu', 'luser']\n[[grid]]\nn_iters = [1, 2]\n"
BAD_LATER_RUNS: dict[str, tuple[str, str]] = {
    "seed": (HEAD + "n_iters = [1, 2]\nseed = [0, 1, -1]\n", "RunSpec.seed must be >= 0, got -1"),
    "lr": (
        HEAD + "seed = [0, 1]\nlr = [1e-3, 0.0]\n",
        "RunSpec.lr and grad_clip must be > 0, got lr=0.0, grad_clip=None",
    ),
    "lr nan": (HEAD + "seed = [0, 1]\nlr = [1e-3, nan]\n", "key 'lr' must be a finite number, got nan"),
    "grad_clip": (
        HEAD + "seed = [0, 1]\ngrad_clip = [1.0, -2.0]\n",
        "RunSpec.lr and grad_clip must be > 0, got lr=0.001, grad_clip=-2.0",
    ),
    "device": (
        HEAD + "seed = [0, 1]\ndevice = ['cpu', 'gpu']\n",
        "key 'device' has unknown value 'gpu'; accepted: '' (cuda when available, else cpu), 'cpu', "
        "'cuda' or 'cuda:N'",
    ),
    "min_delta_db": (
        HEAD + "seed = [0, 1]\nmin_delta_db = [0, -1]\n",
        "RunSpec.min_delta_db must be >= 0 (dB), got -1.0",
    ),
    "steps": (HEAD + "seed = [0, 1]\nsteps = [0, -3]\n", "RunSpec.steps must be >= 0, got -3"),
    "cpu_threads": (
        HEAD + "seed = [0, 1]\ncpu_threads = [1, 0]\n",
        "RunSpec.cpu_threads must be >= 1, got 0",
    ),
    "n_iters": (
        HEAD + "seed = [0, 1]\nn_iters = [1, 0]\n",
        "model 'lu' rejects its config: n_iters must be >= 1, got 0",
    ),
    "batch_size": (
        HEAD + "seed = [0, 1]\nbatch_size = [2, 400]\n",
        "key 'batch_size' must be <= n_train (256: batches are drawn from the training images), got 400",
    ),
    "patience": (
        HEAD + "seed = [0, 1]\npatience = 2\nval_every = [5, 0]\n",
        "RunSpec.patience 2 needs validation: set val_every > 0",
    ),
    "image_size": (
        HEAD + "seed = [0, 1]\nimage_size = [32, 8]\n",
        "key 'image_size' must be >= 11 (the largest SSIM window, in pixels), got 8 for task 'deblur'",
    ),
    "int then float operator setting": (
        "[defaults]\ntask = 'ct'\nmodel = 'lu'\n[[grid]]\nseed = [0, 1]\noperator.n_angles = [30, 30.0]\n",
        "operator 'ct': setting 'n_angles' must be an int >= 1, got 30.0",
    ),
    "classical method": (
        "[defaults]\ntask = ['deblur', 'ct']\nmodel = 'classical'\n[[grid]]\nseed = [0, 1]\n"
        "method = ['adjoint', 'fbp']\n",
        "key 'method' 'fbp' does not apply to task 'deblur'; accepted there: "
        "['adjoint', 'landweber', 'tikhonov']",
    ),
    "model key before seed": (
        HEAD + "seed = [0, -1]\nn_iters = [1, 0]\n",
        "model 'lu' rejects its config: n_iters must be >= 1, got 0",
    ),
    "seed before model key": (
        HEAD + "n_iters = [1, 0]\nseed = [0, -1]\n",
        "RunSpec.seed must be >= 0, got -1",
    ),
    # The bad value comes after every other part was seen (its earlier runs took the cached path).
    "seed after the rest": ("[defaults]\nseed = [0, 1, -1]\n" + LATE, "RunSpec.seed must be >= 0, got -1"),
    "device after the rest": (
        "[defaults]\ndevice = ['cpu', 'cuda:0', 'gpu']\n" + LATE,
        "key 'device' has unknown value 'gpu'; accepted: '' (cuda when available, else cpu), 'cpu', "
        "'cuda' or 'cuda:N'",
    ),
    "lr after the rest": (
        "[defaults]\nlr = [1e-3, 2e-3, inf]\n" + LATE,
        "key 'lr' must be a finite number, got inf",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LATER_RUNS))
def test_an_invalid_later_run_raises_the_same_error(case: str) -> None:
    text, message = BAD_LATER_RUNS[case]
    with pytest.raises(SweepError) as info:
        loads_sweep(text, source="case")
    assert str(info.value) == f"case: [[grid]] #1: {message}"


def test_runs_before_the_first_invalid_one_are_yielded_then_it_raises() -> None:
    """`SweepPlan.runs` is lazy: the runs before an invalid one come out, then the error; loading
    the whole sweep raises before returning any run."""
    text = "[defaults]\nseed = [0, 1, -1]\n" + LATE  # 2 seeds x 2 tasks x 2 models x 2 n_iters valid
    runs = parse_sweep(text, source="case").runs()
    first = [next(runs) for _ in range(16)]
    assert {s.seed for s in first} == {0, 1} and len({s.run_id for s in first}) == 16
    with pytest.raises(SweepError, match=r"^case: \[\[grid\]\] #1: RunSpec.seed must be >= 0, got -1$"):
        next(runs)
    text = "[defaults]\ntask = 'deblur'\nmodel = 'lu'\n[[grid]]\nseed = [0, 1]\n[[grid]]\nmodelx = 1\n"
    runs = parse_sweep(text, source="case").runs()
    assert [s.seed for s in (next(runs), next(runs))] == [0, 1]  # grid #2 is checked when reached
    with pytest.raises(SweepError, match=r"\[\[grid\]\] #2: unknown key 'modelx'"):
        next(runs)
    with pytest.raises(SweepError, match="modelx"):
        loads_sweep(text)


def test_repeated_values_of_a_free_axis_give_one_run_each() -> None:
    """`lr = [1, 1.0]` and a repeated seed are one run; the first occurrence is kept, in order."""
    text = "[defaults]\ntask = 'deblur'\nmodel = 'lu'\n[[grid]]\nlr = [1, 1.0, 0.5]\nseed = [2, 2, 0]\n"
    got = [(s.lr, s.seed) for s in loads_sweep(text).specs]
    assert got == [(1.0, 2), (1.0, 0), (0.5, 2), (0.5, 0)]
    assert all(isinstance(s.lr, float) for s in loads_sweep(text).specs)


#: Specs of different models, tasks and settings around which a per-value field is varied.
BASES: list[dict[str, Any]] = [
    {"task": "deblur", "model": "lu", "n_iters": 2},
    {"task": "ct", "model": "luser", "tol": 1e-2, "val_every": 5, "patience": 2, "cell": "feature"},
    {"task": "mri", "model": "classical", "method": "adjoint", "batch_size": 1},
    {"task": "deblur", "model": "deq", "precision": "bf16", "operator.sigma": 2.0, "image_size": 32},
]
#: Valid and invalid values of every per-value field.
PER_VALUE_SAMPLES: dict[str, list[Any]] = {
    "part": ["", "quality"],
    "steps": [0, 7, -1],
    "seed": [0, 11, -2],
    "lr": [1e-3, 0.0, -1.0, math.inf, math.nan],
    "grad_clip": [None, 1.0, 0.0, math.inf],
    "min_delta_db": [0.0, 0.2, -0.1, math.nan],
    "lr_schedule": ["constant", "cosine"],
    "warmup_steps": [0, 2, -1],
    "timed_steps": [0, 5, -1],
    "device": ["", "cpu", "cuda:1", "tpu"],
    "cpu_threads": [None, 1, 0],
    "inject": ["", "nan", "nope"],
}


def _outcome(values: dict[str, Any]) -> RunSpec | str:
    try:
        return make_spec("t", values, "p")
    except SweepError as err:
        return str(err)


def test_per_value_fields_are_checked_alone_and_copied_by_normalisation() -> None:
    """What the expansion relies on: a per-value field's validity does not depend on the rest of the
    spec, and the normalised spec with another value of it is the normalised spec with that value."""
    assert set(PER_VALUE_SAMPLES) == PER_VALUE_FIELDS
    for field, samples in PER_VALUE_SAMPLES.items():
        for value in samples:
            outcomes = [_outcome({**base, field: value}) for base in BASES]
            valid = [isinstance(o, RunSpec) for o in outcomes]
            assert all(valid) or not any(valid), (field, value, outcomes)
            for base, got in zip(BASES, outcomes, strict=True):
                if isinstance(got, RunSpec):
                    reference = _outcome(base)
                    assert isinstance(reference, RunSpec), reference
                    assert got == dataclasses.replace(reference, **{field: value}), (field, value)
        assert any(isinstance(_outcome({**BASES[0], field: v}), str) for v in samples) or field in (
            "part",
            "lr_schedule",
        ), f"no invalid sample of {field!r}"
