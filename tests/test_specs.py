"""RunSpec identity and normalisation, TOML sweep expansion and its validation errors, presets."""

from __future__ import annotations

import dataclasses

import pytest

from bench.harness.expand import available_presets, load_preset, loads_sweep
from bench.harness.specs import (
    RunSpec,
    SweepError,
    normalise,
    spec_from_json,
    spec_to_json,
)
from models import MODELS, build_config


def test_run_id_is_stable_and_survives_json_round_trip() -> None:
    spec = RunSpec(task="deblur", model="luser", n_iters=3, tol=1e-2, steps=5)
    assert spec.run_id == RunSpec(task="deblur", model="luser", n_iters=3, tol=1e-2, steps=5).run_id
    assert spec_from_json(spec_to_json(spec)).run_id == spec.run_id
    assert len(spec.run_id) == 12 and int(spec.run_id, 16) >= 0
    # A relevant field changes the id.
    assert dataclasses.replace(spec, tol=1e-3).run_id != spec.run_id
    assert dataclasses.replace(spec, seed=1).run_id != spec.run_id


def test_normalisation_blanks_irrelevant_keys_and_fills_defaults() -> None:
    lu_a = RunSpec(task="deblur", model="lu", tol=1e-2, solver="broyden", backward="jfb")
    lu_b = RunSpec(task="deblur", model="lu", tol=1e-4)
    assert lu_a.run_id == lu_b.run_id  # tol/solver/backward are not LU keys
    norm = normalise(lu_a)
    assert (norm.tol, norm.solver, norm.backward) == (None, None, None)
    lu_fields = {f.name: f.default for f in dataclasses.fields(MODELS["lu"].config_cls)}
    assert norm.n_iters == lu_fields["n_iters"]  # default filled in: the CSV shows effective values
    # Spelling out a default is the same run as leaving it out.
    deq_default_tol = {f.name: f.default for f in dataclasses.fields(MODELS["deq"].config_cls)}["tol"]
    assert (
        RunSpec(task="ct", model="deq").run_id == RunSpec(task="ct", model="deq", tol=deq_default_tol).run_id
    )


@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_kwargs_are_exactly_the_config_keys(model: str) -> None:
    spec = RunSpec(task="deblur", model=model, n_iters=2, reg_depth=3, tol=1e-2, backward="jfb")
    kwargs = spec.model_kwargs()
    config_keys = {f.name for f in dataclasses.fields(MODELS[model].config_cls)}
    assert set(kwargs) <= config_keys
    build_config(model, **kwargs)  # accepted by the model's own validation


SWEEP = """
[sweep]
name = "t"
[defaults]
task = "deblur"
steps = 2
[[grid]]
part = "profile"
model = ["lu", "luser"]
tol = [1e-2, 1e-3]
[[grid]]
model = "classical"
method = ["adjoint", "landweber"]
"""


def test_expansion_cross_product_dedup_and_order() -> None:
    sweep = loads_sweep(SWEEP)
    got = [(s.part, s.model, s.tol, dict(s.model_extra).get("method")) for s in sweep.specs]
    # lu x 2 tols collapse into one run (tol is not an LU key); landweber is classical's default.
    assert got == [
        ("profile", "lu", None, None),
        ("profile", "luser", 1e-2, None),
        ("profile", "luser", 1e-3, None),
        ("t", "classical", None, "adjoint"),
        ("t", "classical", None, None),
    ]
    assert len({s.run_id for s in sweep.specs}) == len(sweep.specs)
    assert loads_sweep(SWEEP).specs == sweep.specs  # deterministic


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[defaults\ntask = 'deblur'", ["malformed TOML"]),
        ("[defaults]\ntask='deblur'\nmodel='lu'\nstpes=3", ["'stpes'", "allowed keys", "steps"]),
        ("[defaults]\ntask='deblur'\nmodel='lu'\nsteps='many'", ["'steps'", "expects int", "'many'"]),
        ("[defaults]\ntask='deblur'\nmodel='lu'\nsteps=true", ["'steps'", "expects int"]),
        (
            "[defaults]\ntask='deblur'\n[[grid]]\nmodel=[]",
            ["[[grid]] #1", "'model'", "empty axis", "'luser'"],
        ),
        ("[defaults]\ntask='deblurr'\nmodel='lu'", ["'task'", "'deblurr'", "deblur", "ct", "mri"]),
        ("[defaults]\ntask='ct'\nmodel='lux'", ["'model'", "'lux'", "luser", "classical"]),
        ("[defaults]\ntask='ct'\nmodel='deq'\nsolver='newton'", ["'solver'", "'newton'", "anderson"]),
        ("[defaults]\ntask='ct'\nmodel='deq'\nbackward='adjoint'", ["'backward'", "ift_hook", "jfb"]),
        ("[[grid]]\ntask='ct'\nmodel='lu'\ntol=1e-3", ["[[grid]] #1", "'tol'", "not a config key"]),
        ("[defaults]\ntask='ct'\nmodel='lu'\nn_iters=0", ["rejects its config", "n_iters"]),
        ("[grid]\ntask='ct'\nmodel='lu'", ["[[grid]]"]),
        ("[defualts]\ntask='ct'", ["defualts", "allowed"]),
        ("[defaults]\nmodel='lu'", ["missing required key 'task'"]),
        ("[defaults]\ntask='ct'\nmodel='lu'\nbatch_size=0", ["RunSpec.batch_size must be >= 1"]),
    ],
)
def test_invalid_sweeps_raise_sweep_error_naming_the_key(text: str, needles: list[str]) -> None:
    with pytest.raises(SweepError) as info:
        loads_sweep(text)
    for needle in needles:
        assert needle in str(info.value)


def test_presets_expand_to_valid_runs() -> None:
    assert {"smoke", "paper"} <= set(available_presets())
    smoke = load_preset("smoke")
    assert {s.task for s in smoke.specs} == {"deblur", "ct", "mri"}
    assert {s.model for s in smoke.specs} == set(MODELS)
    assert len(smoke.specs) <= 25  # one fresh process per run: keep the smoke preset small
    assert all(s.device == "cpu" and s.image_size <= 32 for s in smoke.specs)
    paper = load_preset("paper")
    assert {s.part for s in paper.specs} == {"profile", "quality"}
    assert all(s.steps == 0 for s in paper.specs if s.part == "profile")
    assert all(s.steps >= 1000 for s in paper.specs if s.part == "quality" and s.model != "classical")
    assert 300 <= len(paper.specs) <= 400  # the count and GPU-time estimate in paper.toml's header
    with pytest.raises(SweepError, match="available presets"):
        load_preset("nope")
