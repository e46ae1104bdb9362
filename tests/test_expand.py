"""Sweep expansion (bench/harness/expand.py): run ids, order, de-duplication and validation errors
stay what they are (ids are stored in committed result tables)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bench.harness.expand import available_presets, load_preset, load_sweep, loads_sweep
from bench.harness.specs import SweepError, normalise

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
#: Run ids computed by the expansion that checks and normalises every run on its own: every preset
#: and tests/fixtures/mixed_sweep.toml, in order.
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


def test_expanded_specs_are_normalised_and_distinct() -> None:
    specs = [*load_sweep(FIXTURES / "mixed_sweep.toml").specs, *load_preset("paper").specs]
    for spec in specs:
        assert normalise(spec) == spec
    assert len({s.run_id for s in specs}) == len(specs)


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
    # The bad value comes after every combination of the other keys.
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


def test_repeated_values_of_an_axis_give_one_run_each() -> None:
    """`lr = [1, 1.0]` and a repeated seed are one run; the first occurrence is kept, in order."""
    text = "[defaults]\ntask = 'deblur'\nmodel = 'lu'\n[[grid]]\nlr = [1, 1.0, 0.5]\nseed = [2, 2, 0]\n"
    got = [(s.lr, s.seed) for s in loads_sweep(text).specs]
    assert got == [(1.0, 2), (1.0, 0), (0.5, 2), (0.5, 0)]
    assert all(isinstance(s.lr, float) for s in loads_sweep(text).specs)
