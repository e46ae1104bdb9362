"""The training loop and one-run execution (in process): determinism, loss, clipping, statuses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from bench.data.tasks import build_task
from bench.harness.results import COLUMNS
from bench.harness.run import run_spec
from bench.harness.specs import RunSpec
from bench.harness.train import (
    Diverged,
    StepResult,
    TrainConfig,
    batch_indices,
    check_finite,
    evaluate,
    mse_loss,
    train,
    train_step,
)
from models import build_model

TINY = dict(
    image_size=16,
    n_train=4,
    n_test=3,
    batch_size=2,
    warmup_steps=1,
    timed_steps=1,
    device="cpu",
    cpu_threads=1,
)
TINY_LU = dict(model="lu", n_iters=1, reg_depth=2, reg_width=4, **TINY)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny ops on a shared 2-core machine: one intra-op thread is far faster than a contended pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_same_seed_gives_same_bytes_and_psnr_and_leaves_global_rng_alone() -> None:
    spec = RunSpec(task="deblur", steps=3, seed=0, **TINY_LU)
    state = torch.random.get_rng_state()
    a, b = run_spec(spec), run_spec(spec)
    assert torch.equal(state, torch.random.get_rng_state())  # fork_rng: no global RNG leak
    assert a["status"] == b["status"] == "ok", (a["error"], b["error"])
    assert set(a) == set(COLUMNS)
    for key in (
        "tracked_peak_bytes",
        "saved_bytes",
        "param_bytes",
        "grad_bytes",
        "optimizer_bytes",
        "psnr_db",
        "ssim",
    ):
        assert a[key] == b[key], key
    assert a["tracked_peak_bytes"] > a["param_bytes"] > 0
    assert a["grad_bytes"] == a["param_bytes"]  # every LU parameter is trainable
    # Adam keeps two moments per parameter plus a step counter per tensor.
    assert 2 * a["param_bytes"] <= a["optimizer_bytes"] < 3 * a["param_bytes"]
    c = run_spec(RunSpec(task="deblur", steps=3, seed=1, **TINY_LU))
    assert c["psnr_db"] != a["psnr_db"]  # the seed matters (init and batches)
    assert c["tracked_peak_bytes"] == a["tracked_peak_bytes"]  # ... but not the memory of a step


def test_mse_loss_complex_is_mean_squared_modulus() -> None:
    x = torch.tensor([1 + 1j, 0j], dtype=torch.complex64)
    x_hat = torch.tensor([1 + 3j, 3 + 4j], dtype=torch.complex64)
    assert float(mse_loss(x_hat, x)) == pytest.approx((4 + 25) / 2)
    assert float(mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))) == pytest.approx(5.0)


def test_training_improves_psnr_and_evaluate_is_batch_size_independent() -> None:
    task = build_task("ct", image_size=16, n_train=8, n_test=5, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("lu", task.operator, n_iters=2, reg_depth=2, reg_width=8)
    before = evaluate(model, task, batch_size=5)  # A^T y start: far off (about -1 dB)
    losses: list[float] = []
    cfg = TrainConfig(steps=40, batch_size=4, lr=1e-2)
    result = train(model, task, cfg, on_step=lambda i, r: losses.append(r.loss))
    assert result.trained and len(result.losses) == 40 and losses == result.losses
    after, after_b2 = evaluate(model, task, batch_size=5), evaluate(model, task, batch_size=2)
    assert after["psnr_db"] > before["psnr_db"] + 10.0  # measured: -1.4 -> 18.4 dB
    assert sum(losses[-5:]) < 0.1 * sum(losses[:5])
    assert after_b2["psnr_db"] == pytest.approx(after["psnr_db"], abs=1e-4)
    assert after_b2["ssim"] == pytest.approx(after["ssim"], abs=1e-6)
    assert math.isnan(after["fwd_iters_mean"])  # feed-forward: no solver stats


def test_grad_clip_bounds_the_update() -> None:
    task = build_task("deblur", image_size=16, n_train=2, n_test=1, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("lu", task.operator, n_iters=1, reg_depth=2, reg_width=4)
    x = task.x_train
    y = task.measure(x, torch.Generator().manual_seed(0))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train_step(model, task.operator, x, y, torch.optim.SGD(model.parameters(), lr=1.0), grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < float((after - before).norm()) <= 1e-3 * (1 + 1e-4)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_batches_are_epochs_of_permutations() -> None:
    batches = batch_indices(6, 2, 6, torch.Generator().manual_seed(3))
    first, second = torch.cat(batches[:3]), torch.cat(batches[3:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(6))
    again = batch_indices(6, 2, 6, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    with pytest.raises(ValueError, match="larger than the training set"):
        batch_indices(2, 3, 1, torch.Generator())


@dataclass
class _Recon:
    x: torch.Tensor
    stats: list


class _NaNAfterOne(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, y: torch.Tensor, op: object) -> _Recon:
        self.calls += 1
        return _Recon(self.w * y * (1.0 if self.calls < 3 else float("nan")), [])


def test_train_raises_diverged_on_nan_loss() -> None:
    task = build_task("deblur", image_size=16, n_train=2, n_test=1, seed=0)
    with pytest.raises(Diverged, match="training step 2"):
        train(_NaNAfterOne(), task, TrainConfig(steps=5, batch_size=1))


@pytest.mark.parametrize(
    ("inject", "budget", "status", "needle"),
    [
        ("nan", None, "diverged", "non-finite loss"),
        ("oom", None, "oom", "OutOfMemoryError"),
        ("", 1024, "over_budget", "> budget 1024 bytes"),
    ],
)
def test_failures_become_statuses(inject: str, budget: int | None, status: str, needle: str) -> None:
    row = run_spec(RunSpec(task="deblur", steps=2, inject=inject, **TINY_LU), memory_budget_bytes=budget)
    assert row["status"] == status and needle in row["error"], row["error"]
    assert row["train_s"] is None and row["psnr_db"] is None  # never trained


def test_bad_config_is_an_error_row_not_an_exception() -> None:
    spec = RunSpec(task="ct", model="classical", model_extra=(("method", "zero_filled"),), **TINY)
    row = run_spec(spec)  # zero-filled needs a complex (MRI) operator
    assert (
        row["status"] == "error" and row["error"].startswith("ValueError:") and "zero_filled" in row["error"]
    )


def test_check_finite_flags_a_solver_blow_up() -> None:
    from models.deq import DEQStats
    from models.solvers import SolverStats

    def stats(residual: float) -> DEQStats:
        fwd = SolverStats(
            iters=3, rel_residual=torch.tensor([0.1, residual]), converged=torch.tensor([True, False])
        )
        return DEQStats(forward=fwd, backward=None)

    check_finite(StepResult(loss=0.5, stats=[stats(0.2)]), "here")  # finite: no exception
    with pytest.raises(Diverged, match="equilibrium solve 1 blew up"):
        check_finite(StepResult(loss=0.5, stats=[stats(0.2), stats(float("nan"))]), "here")
    with pytest.raises(Diverged, match="non-finite loss inf"):
        check_finite(StepResult(loss=float("inf")), "here")


def test_classical_runs_without_training_and_is_evaluated() -> None:
    torch.set_num_threads(2)
    row = run_spec(RunSpec(task="mri", model="classical", steps=5, **TINY))  # cpu_threads=1 in the run
    assert torch.get_num_threads() == 2  # ... and restored afterwards
    assert row["status"] == "ok", row["error"]
    assert row["params"] == 0 and row["train_s"] is None
    assert row["psnr_db"] > 10 and 0 < row["ssim"] <= 1
