"""Validation splits, plateau stopping, the learning-rate schedule and learning curves (curves.csv)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import cli
from bench.data import datasets
from bench.data.tasks import build_task
from bench.harness.curves import CURVE_COLUMNS, read_curves, write_curve
from bench.harness.expand import load_sweep, loads_sweep
from bench.harness.results import read_rows
from bench.harness.run import run_with_curve
from bench.harness.specs import RunSpec, SweepError
from bench.harness.train import LR_SCHEDULES, TrainConfig, _Plateau, evaluate, train
from models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- validation splits


def test_validation_split_is_disjoint_from_train_and_test_for_every_task() -> None:
    # deblur: by picture
    names = {s: set(datasets.NATURAL_SPLITS[s]) for s in datasets.SPLITS}
    assert not (names["val"] & names["train"]) and not (names["val"] & names["test"])
    assert set().union(*names.values()) == set(datasets.NATURAL_SOURCES)
    assert len(datasets.natural_sources("val", channels=3)) >= 2
    # mri: by slice, the three splits partition the stored slices
    pos = {s: set(datasets.mni_split_positions(s).tolist()) for s in datasets.SPLITS}
    assert sum(len(p) for p in pos.values()) == len(set().union(*pos.values())) == 60
    assert (len(pos["train"]), len(pos["val"]), len(pos["test"])) == (42, 6, 12)
    # ct: by phantom seed; no validation phantom equals a training or test phantom, and the
    # validation phantoms follow the seed (a stream of their own) while the test ones do not
    a, b = build_task("ct", image_size=16, n_train=16, n_test=8, n_val=8, seed=0), None
    b = build_task("ct", image_size=16, n_train=16, n_test=8, n_val=8, seed=1)
    for task in (a, b):
        flat = {k: getattr(task, k).flatten(1) for k in ("x_train", "x_val", "x_test")}
        for other in ("x_train", "x_test"):
            assert torch.cdist(flat["x_val"], flat[other]).min() > 1e-3
    assert not torch.equal(a.x_val, b.x_val) and torch.equal(a.x_test, b.x_test)
    # every task builds its validation split with its own fixed noise (not the test noise)
    for name in ("deblur", "mri"):
        task = build_task(name, image_size=16, n_train=2, n_test=2, n_val=2)
        assert task.x_val.shape[1:] == task.x_test.shape[1:] and len(task.x_val) == 2
        assert torch.equal(task.val_measurements(), task.measurements("val"))
        noise_val = task.val_measurements() - task.operator.A(task.x_val)
        noise_test = task.test_measurements() - task.operator.A(task.x_test)
        assert not torch.allclose(noise_val, noise_test)
    with pytest.raises(KeyError, match="known: \\['test', 'val'\\]"):
        a.images("train")


# ----------------------------------------------------------------------------- plateau logic


def test_plateau_counts_validations_without_min_delta_gain_and_keeps_the_best_weights() -> None:
    model = nn.Linear(1, 1, bias=False)
    plateau = _Plateau(TrainConfig(steps=100, val_every=10, patience=3, min_delta_db=0.1))
    values = [20.0, 21.0, 21.05, 21.08, 21.02]  # gains after 21.0 are all <= 0.1 dB
    stops = []
    for i, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(float(i))
        stops.append(plateau.update(10 * i, value, model))
    assert stops == [False, False, False, False, True]
    assert plateau.best_step == 40 and plateau.best_db == 21.08  # the highest, not the last reset
    assert plateau.best_state is not None and float(plateau.best_state["weight"]) == 4.0
    fixed = _Plateau(TrainConfig(steps=100, val_every=10, patience=0))
    assert not any(fixed.update(10 * i, 20.0, model) for i in range(1, 20))  # never stops


def test_config_rejects_patience_without_validation_and_unknown_schedules() -> None:
    with pytest.raises(ValueError, match="needs validation: set val_every > 0"):
        TrainConfig(patience=2)
    with pytest.raises(ValueError, match="lr_schedule must be one of \\['constant', 'cosine'\\]"):
        TrainConfig(lr_schedule="warm")
    with pytest.raises(ValueError, match="needs validation"):
        RunSpec(task="deblur", model="lu", patience=2)
    with pytest.raises(SweepError, match="'lr_schedule' has unknown value 'warm'"):
        loads_sweep('[defaults]\ntask = "deblur"\nmodel = "lu"\nlr_schedule = "warm"\n')


def _tiny_lu(task):  # type: ignore[no-untyped-def]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model("lu", task.operator, n_iters=1, reg_depth=2, reg_width=4)


def test_plateau_stops_after_patience_flat_validations_and_restores_the_best_weights() -> None:
    task = build_task("deblur", image_size=16, n_train=4, n_test=2, n_val=2)
    model = _tiny_lu(task)
    # lr 1e-12: validation PSNR is flat to far below min_delta, so it stops after 1 + patience validations
    cfg = TrainConfig(steps=1000, batch_size=2, lr=1e-12, val_every=5, patience=3, min_delta_db=0.01)
    result = train(model, task, cfg)
    assert result.stopped_by == "plateau" and result.steps_run == 5 * (1 + 3)
    assert [p.step for p in result.curve] == [5, 10, 15, 20]
    assert result.best_step in (5, 10, 15, 20)
    val = evaluate(model, task, 2, split="val")["psnr_db"]
    assert val == result.val_psnr_db == max(p.val_psnr_db for p in result.curve)  # the best weights


def test_fixed_step_training_runs_all_steps_with_cosine_lr_on_the_curve() -> None:
    task = build_task("deblur", image_size=16, n_train=4, n_test=2, n_val=2)
    model = _tiny_lu(task)
    cfg = TrainConfig(steps=20, batch_size=2, lr=1e-2, lr_schedule="cosine")
    result = train(model, task, cfg)
    assert result.stopped_by == "max_steps" and result.steps_run == result.best_step == 20
    assert [p.step for p in result.curve] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert all(math.isnan(p.val_psnr_db) for p in result.curve) and math.isnan(result.val_psnr_db)
    for p in result.curve:  # the lr of the point's last step (step p.step - 1 counting from 0)
        assert p.lr == pytest.approx(1e-2 * LR_SCHEDULES["cosine"](p.step - 1, 20))
    assert result.curve[0].train_loss == pytest.approx(sum(result.losses[:2]) / 2)
    assert LR_SCHEDULES["cosine"](20, 20) == pytest.approx(0.0, abs=1e-12)
    elapsed = [p.elapsed_s for p in result.curve]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= result.train_s


def test_a_plateau_run_writes_its_columns_and_curve() -> None:
    spec = RunSpec(
        task="ct", model="lu", n_iters=1, reg_depth=2, reg_width=4, image_size=16, batch_size=2,
        n_train=4, n_test=2, n_val=2, steps=400, val_every=4, patience=2, min_delta_db=50.0,
        warmup_steps=0, timed_steps=0, device="cpu",
    )  # fmt: skip
    row, curve = run_with_curve(spec)
    assert row["status"] == "ok", row["error"]
    # min_delta 50 dB: nothing counts as a gain, so it stops after 1 + 2 validations
    assert row["stopped_by"] == "plateau" and row["steps_run"] == 12 and row["best_step"] in (4, 8, 12)
    assert row["val_psnr_db"] == max(p.val_psnr_db for p in curve) and len(curve) == 3
    settings = (row["val_every"], row["patience"], row["min_delta_db"], row["lr_schedule"])
    assert settings == (4, 2, 50.0, "constant")


# ----------------------------------------------------------------------------- curves.csv


def _points(steps: list[int], tag: float) -> list[dict[str, float]]:
    return [dict(step=s, train_loss=tag, val_psnr_db=20.0 + s, elapsed_s=0.1 * s, lr=1e-3) for s in steps]


def test_write_curve_appends_replaces_a_redone_run_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "curves.csv"
    write_curve(path, "aaa", _points([1, 2], 1.0))
    write_curve(path, "bbb", _points([1, 2, 3], 2.0))
    with open(path, "a") as f:
        f.write("ccc,1,0.5")  # a torn line, as if cut by a crash
    write_curve(path, "aaa", _points([5], 3.0))  # the re-done run replaces its curve
    rows = read_curves(path)
    assert [(r["run_id"], r["step"], r["train_loss"]) for r in rows] == [
        ("bbb", "1", "2.0"), ("bbb", "2", "2.0"), ("bbb", "3", "2.0"), ("aaa", "5", "3.0"),
    ]  # fmt: skip
    assert path.read_text().count(",".join(CURVE_COLUMNS)) == 1 and "ccc" not in path.read_text()
    write_curve(path, "bbb", [])  # a failed re-run: its old curve goes
    assert [r["run_id"] for r in read_curves(path)] == ["aaa"]


def test_killed_and_resumed_sweep_has_every_curve_row_exactly_once(tmp_path: Path) -> None:
    sweep = tmp_path / "curves.toml"
    sweep.write_text(
        '[sweep]\nname = "c"\n[defaults]\ntask = "deblur"\nmodel = "lu"\nn_iters = 1\nreg_depth = 2\n'
        "reg_width = 4\nimage_size = 16\nbatch_size = 2\nn_train = 4\nn_test = 2\nn_val = 2\n"
        'warmup_steps = 0\ntimed_steps = 0\ndevice = "cpu"\ncpu_threads = 1\nval_every = 10\n'
        "[[grid]]\nseed = 0\nsteps = 30\n[[grid]]\nseed = [1, 2]\nsteps = 200\n"
    )
    specs = load_sweep(sweep).specs
    out = tmp_path / "out"
    csv, curves = out / "runs.csv", out / "curves.csv"
    cmd = [sys.executable, "-m", "bench", "sweep", str(sweep), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not read_rows(csv) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running child
        proc.wait()
    first = {r["run_id"] for r in read_rows(csv)}
    assert 1 <= len(first) < 3
    unfinished = next(s.run_id for s in specs if s.run_id not in first)
    # as if killed between a run's curve and its row: a partial curve and a torn line
    write_curve(curves, unfinished, _points([10, 20], 9.0))
    with open(curves, "a") as f:
        f.write(f"{unfinished},30,0.1")
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0  # a re-run adds nothing
    rows = read_curves(curves)
    keys = [(r["run_id"], int(r["step"])) for r in rows]
    assert len(keys) == len(set(keys))  # no duplicates
    expected = {(s.run_id, step) for s in specs for step in range(10, s.steps + 1, 10)}
    assert set(keys) == expected  # nothing lost, the partial curve replaced
    assert all(r["train_loss"] != "9.0" for r in rows)
    assert sorted(r["run_id"] for r in read_rows(csv)) == sorted(s.run_id for s in specs)


@pytest.mark.parametrize("start", ["forkserver", "subprocess"])
def test_a_runs_log_shows_its_training_progress(tmp_path: Path, start: str) -> None:
    sweep = tmp_path / "progress.toml"
    sweep.write_text(
        '[sweep]\nname = "p"\n[defaults]\ntask = "deblur"\nmodel = "lu"\nn_iters = 1\nreg_depth = 2\n'
        "reg_width = 4\nimage_size = 16\nbatch_size = 2\nn_train = 4\nn_test = 2\nn_val = 2\n"
        'warmup_steps = 0\ntimed_steps = 0\ndevice = "cpu"\ncpu_threads = 1\nval_every = 10\nsteps = 30\n'
    )
    (spec,) = load_sweep(sweep).specs
    out = tmp_path / "out"
    assert cli.main(["sweep", str(sweep), "--out", str(out), "--quiet", "--start", start]) == 0
    log = (out / "logs" / f"{spec.run_id}.log").read_text()
    (curve,) = [[r for r in read_curves(out / "curves.csv") if r["run_id"] == spec.run_id]]
    for row in curve:  # one progress line per curve point, with its validation PSNR
        assert f"step {row['step']} of 30: mean training loss" in log
        assert f"validation PSNR {float(row['val_psnr_db']):.2f} dB" in log
