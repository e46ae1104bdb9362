"""The problem beside the model: operator settings, precision and real data in specs, sweeps and rows."""

from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path

import pytest
import torch

from bench import cli
from bench.harness.expand import loads_sweep
from bench.harness.run import prepare
from bench.harness.specs import (
    RunSpec,
    SweepError,
    normalise,
    spec_columns,
    spec_from_json,
    spec_to_json,
)
from models import build_model
from models.precision import Autocast, set_precision
from operators import OPERATORS, check_operator_kwargs, gaussian_kernel

SMALL = dict(image_size=16, batch_size=2, n_train=2, n_test=2, device="cpu", cpu_threads=1)
LU_SMALL = dict(model="lu", n_iters=2, reg_depth=3, reg_width=8)

CT_SWEEP = """
[defaults]
task = "ct"
image_size = 16
batch_size = 2
n_train = 2
n_test = 2
steps = 2
timed_steps = 1
device = "cpu"
cpu_threads = 1
[[grid]]
model = "lu"
n_iters = 2
reg_depth = 3
reg_width = 8
"""


# --------------------------------------------------------------------------------------------------
# operator settings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_setting_is_a_constructor_argument_and_its_default_passes(name):
    cls = OPERATORS[name]
    params = inspect.signature(cls.__init__).parameters
    assert cls.SETTINGS, name
    for key, setting in cls.SETTINGS.items():
        assert key in params, (name, key)
        default = params[key].default
        if default is not None:
            assert setting.check(default) == default, (name, key)


def test_operator_setting_errors_name_operator_key_and_what_is_accepted():
    with pytest.raises(ValueError, match=r"operator 'ct' has no setting 'n_angels'.*'n_angles'"):
        check_operator_kwargs("ct", {"n_angels": 30})
    with pytest.raises(ValueError, match=r"operator 'ct': setting 'n_angles' must be an int >= 1, got 0"):
        check_operator_kwargs("ct", {"n_angles": 0})
    with pytest.raises(
        ValueError, match=r"operator 'mri': setting 'center_fraction' must be a number >= 0 and <= 1"
    ):
        check_operator_kwargs("mri", {"center_fraction": 1.5})
    with pytest.raises(
        ValueError, match=r"operator 'blur': setting 'boundary' must be one of 'circular', 'zero'"
    ):
        check_operator_kwargs("blur", {"boundary": "reflect"})
    with pytest.raises(ValueError, match=r"'sigma' must be a number > 0"):
        check_operator_kwargs("blur", {"sigma": 0.0})
    with pytest.raises(ValueError, match=r"'angles' must be a non-empty list of numbers"):
        check_operator_kwargs("ct", {"angles": 0.5})
    assert check_operator_kwargs("mri", {"acceleration": 8}) == {"acceleration": 8.0}


def test_an_explicit_default_gives_the_run_id_of_leaving_it_out():
    base = RunSpec(task="ct", **LU_SMALL)
    assert RunSpec(task="ct", operator=(("n_angles", 60),), **LU_SMALL).run_id == base.run_id
    assert RunSpec(task="ct", operator=(("backend", "csr"),), **LU_SMALL).run_id == base.run_id
    assert (
        RunSpec(task="mri", operator=(("acceleration", 4),), **LU_SMALL).run_id
        == RunSpec(task="mri", **LU_SMALL).run_id
    )
    assert RunSpec(task="ct", operator=(("n_angles", 30),), **LU_SMALL).run_id != base.run_id
    spec = normalise(RunSpec(task="ct", operator=(("angles", [0.0, 1.0]), ("n_angles", 60)), **LU_SMALL))
    assert spec.operator == (("angles", (0.0, 1.0)),)
    assert spec_from_json(spec_to_json(spec)).run_id == spec.run_id


def test_n_angles_axis_gives_two_runs_with_their_settings_in_the_row(tmp_path: Path):
    text = CT_SWEEP + "operator.n_angles = [30, 60]\n"
    sweep = loads_sweep(text)
    assert len({s.run_id for s in sweep.specs}) == 2
    assert [dict(s.operator) for s in sweep.specs] == [{"n_angles": 30}, {}]
    path = tmp_path / "ct.toml"
    path.write_text(text)
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "runs.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sorted(json.loads(r["operator_settings"])["n_angles"] for r in rows) == [30, 60]
    assert all(float(r["noise_sigma"]) == 0.008 for r in rows)
    by_angles = {json.loads(r["operator_settings"])["n_angles"]: r for r in rows}
    assert int(by_angles[30]["operator_bytes"]) < int(by_angles[60]["operator_bytes"])  # half the CSR matrix


def test_settings_reach_the_operator():
    ct = prepare(RunSpec(task="ct", operator=(("n_angles", 12), ("n_detectors", 20)), **LU_SMALL, **SMALL))
    assert ct.task.operator.out_shape == (1, 12, 20) and ct.y.shape == (2, 1, 12, 20)
    limited = prepare(RunSpec(task="ct", operator=(("angles", (0.0, 0.5, 1.0)),), **LU_SMALL, **SMALL))
    assert torch.allclose(limited.task.operator.angles, torch.tensor([0.0, 0.5, 1.0]))
    blur = prepare(RunSpec(task="deblur", operator=(("kernel_size", 5), ("sigma", 0.7)), **LU_SMALL, **SMALL))
    assert torch.allclose(blur.task.operator.kernel, gaussian_kernel(5, 0.7))
    mri = prepare(
        RunSpec(task="mri", operator=(("acceleration", 8), ("center_fraction", 0.0)), **LU_SMALL, **SMALL)
    )
    assert int(mri.task.operator.mask.sum()) == 2  # 16 columns / 8


def test_operator_keys_apply_to_the_tasks_that_take_them_and_bad_ones_exit_2(tmp_path: Path):
    mixed = CT_SWEEP.replace('task = "ct"', 'task = ["ct", "deblur"]') + "operator.n_angles = [30, 60]\n"
    specs = loads_sweep(mixed).specs
    assert sorted((s.task, dict(s.operator).get("n_angles", 0)) for s in specs) == [
        ("ct", 0), ("ct", 30), ("deblur", 0),
    ]  # fmt: skip
    for bad, message in (
        ("operator.n_angels = 30", "no operator of task.*'n_angels'.*accepted settings: operator 'ct'"),
        ("operator.n_angles = [30, 0]", "operator 'ct': setting 'n_angles' must be an int >= 1, got 0"),
        ("operator.sigma = 2.0", "no operator of task.*'sigma'.*'angles', 'backend', 'n_angles'"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(CT_SWEEP + bad + "\n")
        with pytest.raises(SweepError, match=message):
            loads_sweep(path.read_text())
        out = tmp_path / "out"
        assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
        assert not out.exists()


# --------------------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------------------


def _saved_and_loss(task: str, precision: str, **kw) -> tuple[int, float]:
    run = prepare(RunSpec(task=task, precision=precision, **{**LU_SMALL, **SMALL, "image_size": 32, **kw}))
    run.step()
    mem = run.measure_memory()
    return mem.saved_bytes, float(run.last[0].loss)


def test_bf16_halves_an_lu_steps_activations_and_keeps_the_loss():
    saved32, loss32 = _saved_and_loss("deblur", "fp32", reg_depth=5, reg_width=16)
    saved16, loss16 = _saved_and_loss("deblur", "bf16", reg_depth=5, reg_width=16)
    ratio = saved16 / saved32
    # Measured 0.52: the conv activations halve; the data term's float32 tensors do not.
    assert 0.45 < ratio < 0.6, ratio
    assert abs(loss16 - loss32) < 0.05 * loss32  # bf16 rounding, not another computation


def test_bf16_wraps_only_networks_and_keeps_parameters_and_operator_fp32():
    run = prepare(RunSpec(task="mri", precision="bf16", **LU_SMALL, **SMALL))
    wrapped = [m for m in run.model.modules() if isinstance(m, Autocast)]
    assert len(wrapped) == 2  # one DnCNN per LU step
    result = run.step()
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert run.y.dtype == torch.complex64 and math.isfinite(result.loss)
    x = run.model(run.y, run.task.operator).x
    assert x.dtype == torch.complex64  # the complex operator and images never leave float32


def test_precision_is_blank_for_models_without_a_network_and_rejected_by_set_precision():
    fp32 = RunSpec(task="deblur", model="classical")
    assert RunSpec(task="deblur", model="classical", precision="bf16").run_id == fp32.run_id
    assert (
        RunSpec(task="deblur", precision="bf16", **LU_SMALL).run_id
        != RunSpec(task="deblur", **LU_SMALL).run_id
    )
    op = OPERATORS["blur"](image_size=16)
    with pytest.raises(ValueError, match="has none"):
        set_precision(build_model("classical", op), "bf16")
    with pytest.raises(ValueError, match="known precisions: \\['fp32', 'bf16'\\]"):
        set_precision(build_model("lu", op, n_iters=1, reg_depth=3, reg_width=4), "fp16")
    with pytest.raises(SweepError, match="'precision' has unknown value 'fp16'"):
        loads_sweep(CT_SWEEP + 'precision = "fp16"\n')
    assert spec_columns(RunSpec(task="ct", precision="bf16", **LU_SMALL))["precision"] == "bf16"


def test_luser_bf16_runs_its_solver_in_float32():
    kw = dict(
        model="luser", n_iters=1, reg_depth=2, reg_width=8, tol=1e-2, max_iter=5, bwd_tol=1e-2, bwd_max_iter=5
    )
    run = prepare(RunSpec(task="ct", precision="bf16", **{**SMALL, **kw}))
    run.step()
    stats = run.last_stats()[0]
    assert stats.forward.rel_residual.dtype == torch.float32
    assert math.isfinite(stats.forward.trace[-1]) and stats.backward is not None


# --------------------------------------------------------------------------------------------------
# analysis: runs at different problem settings are labelled and never compared as one
# --------------------------------------------------------------------------------------------------


def test_report_keeps_operator_settings_apart(tmp_path: Path):
    import pandas as pd

    from bench.analysis.compare import compare_memory
    from bench.analysis.runtable import load_runs

    base = pd.read_csv(
        Path(__file__).parent / "fixtures" / "runs_fixture.csv", dtype=str, keep_default_na=False
    )
    ct = base[base["task"] == "ct"].copy()
    ct["operator_settings"] = '{"backend": "csr", "n_angles": 60}'
    sparse = ct.copy()
    sparse["operator_settings"] = '{"backend": "csr", "n_angles": 30}'
    sparse["run_id"] = sparse["run_id"] + "-a30"
    # LUSER is cheaper at 30 angles only: mixing the settings would pick its peak against LU's at 60.
    is_luser = sparse["model"] == "luser"
    sparse.loc[is_luser, "tracked_peak_bytes"] = (
        sparse.loc[is_luser, "tracked_peak_bytes"].astype(float) / 10
    ).map(lambda v: str(int(v)) if v == v else "")
    pd.concat([base[base["task"] != "ct"], ct, sparse]).to_csv(
        tmp_path / "runs.csv", index=False
    )  # no precision column: old tables load
    df = load_runs(tmp_path)
    assert set(df.loc[df["task"] == "ct", "problem"]) == {"n_angles=30", "n_angles=60"}
    assert set(df.loc[df["task"] == "deblur", "problem"]) == {""}
    assert df.loc[df["run_id"].str.endswith("-a30"), "setting"].str.endswith(", n_angles=30").all()
    comps = {c.name: c for c in compare_memory(df)}
    assert {"ct · n_angles=30", "ct · n_angles=60", "deblur", "mri"} <= set(comps)
    for label in ("n_angles=30", "n_angles=60"):
        comp = comps[f"ct · {label}"]
        for row in (comp.lu, comp.luser, comp.lu_ckpt, comp.deq):
            assert row is None or row["problem"] == label
    assert comps["ct · n_angles=30"].ratio == pytest.approx(10 * comps["ct · n_angles=60"].ratio, rel=1e-6)
