"""The one training loop: `train_step`, `train` and `evaluate`, shared by sweeps, benchmarks and tests.

Loss: the mean squared error of the final iterate, ``mean |x_hat - x|^2`` (for complex images the
squared modulus, i.e. the sum of the real and imaginary squared errors).

Randomness is explicit: batches are drawn from ``task.x_train`` by the run's ``batch_order`` stream
(epochs of random permutations), the measurement noise of each batch by its ``train_noise`` stream
(`bench.data.seeds`, CPU generators: ``Task.measure`` draws on the generator's device, so the same
noise reaches every device). Parameter initialisation is the caller's business (bench/harness/run.py
builds the model under ``torch.random.fork_rng`` with the run's seed).

Divergence: a non-finite loss, a non-finite forward residual of any equilibrium solve (a DEQ solver
blow-up) or non-finite parameters after training raise `Diverged`, which bench/harness/run.py records as
status ``diverged``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import seeds

#: Loss of a reconstruction against its target, ``mean |x_hat - x|^2``.
LossFn = Callable[[Tensor, Tensor], Tensor]


class Diverged(RuntimeError):
    """Training (or a solve) produced NaN/inf; the message says where."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. grad_clip: max global gradient norm (None: no clipping)."""

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be None or > 0, got {self.grad_clip!r}")


@dataclass(frozen=True)
class StepResult:
    """One step: the loss value and the DEQ stats of each equilibrium solve (empty for feed-forward)."""

    loss: float
    stats: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    """losses: one per step. train_s: wall time of the loop (device synchronised). trained: False for
    models without trainable parameters (nothing to train) or steps == 0."""

    losses: list[float]
    train_s: float
    trained: bool
    last_stats: list[Any] = field(default_factory=list)


def mse_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """``mean |x_hat - x|^2`` over all elements (complex: squared modulus)."""
    d = x_hat - x
    if d.is_complex():
        return (d.real.square() + d.imag.square()).mean()
    return d.square().mean()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def train_step(
    model: nn.Module,
    op: Any,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer | None,
    *,
    grad_clip: float | None = None,
) -> StepResult:
    """One step: forward ``model(y, op)``, MSE loss on the final iterate, backward, optional gradient
    clipping (global norm), ``optimizer.step()``, ``zero_grad(set_to_none=True)``.

    With ``optimizer=None`` (a model without parameters) it is a forward pass and loss only, without
    autograd. x: (B, *in_shape) targets, y: (B, *out_shape) measurements.
    """
    if optimizer is None:
        with torch.no_grad():
            recon = model(y, op)
            loss = mse_loss(recon.x, x)
        return StepResult(loss=float(loss), stats=list(recon.stats))
    recon = model(y, op)
    loss = mse_loss(recon.x, x)
    loss.backward()
    if grad_clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=float(loss.detach()), stats=list(recon.stats))


def check_finite(result: StepResult, where: str) -> None:
    """Raise Diverged when the loss or any forward residual of the step is NaN/inf."""
    if not math.isfinite(result.loss):
        raise Diverged(f"non-finite loss {result.loss} at {where}")
    for i, st in enumerate(result.stats):
        residual = getattr(getattr(st, "forward", None), "rel_residual", None)
        if residual is not None and not bool(torch.isfinite(residual).all()):
            raise Diverged(f"equilibrium solve {i} blew up (non-finite residual) at {where}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[Tensor]:
    """Index batches for ``steps`` steps: consecutive slices of random permutations of range(n)."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the training set ({n} images)")
    out: list[Tensor] = []
    perm = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        out.append(perm[pos : pos + batch_size])
        pos += batch_size
    return out


def train(
    model: nn.Module,
    task: Any,
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, StepResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` with Adam for ``cfg.steps`` steps (see the module docstring).

    Models without trainable parameters (classical) are not trained: ``trained=False``, no losses.
    Raises `Diverged` on a non-finite loss, solve or final parameters.
    """
    params = trainable_parameters(model)
    if not params or cfg.steps == 0:
        return TrainResult(losses=[], train_s=0.0, trained=False)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    batches = batch_indices(
        len(task.x_train), cfg.batch_size, cfg.steps, seeds.generator(cfg.seed, "batch_order")
    )
    noise_gen = seeds.generator(cfg.seed, "train_noise")
    device = task.x_train.device
    model.train()
    losses: list[float] = []
    result = StepResult(loss=float("nan"))
    _sync(device)
    t0 = time.perf_counter()
    for step, idx in enumerate(batches):
        x = task.x_train[idx.to(device)]  # (B, *in_shape)
        y = task.measure(x, noise_gen)  # (B, *out_shape)
        result = train_step(model, task.operator, x, y, optimizer, grad_clip=cfg.grad_clip)
        check_finite(result, f"training step {step}")
        losses.append(result.loss)
        if on_step is not None:
            on_step(step, result)
    _sync(device)
    train_s = time.perf_counter() - t0
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise Diverged(f"parameter {name!r} is non-finite after training")
    return TrainResult(losses=losses, train_s=train_s, trained=True, last_stats=result.stats)


def evaluate(model: nn.Module, task: Any, batch_size: int) -> dict[str, float]:
    """PSNR/SSIM on the task's fixed held-out set (``task.test_measurements()``), without gradients.

    Returns ``psnr_db`` and ``ssim`` (means over the test images) and the solver summary of the
    evaluation solves (``bench.meters.quality.solver_summary``: fwd_iters_mean, bwd_iters_mean,
    final_residual_max, converged_frac; NaN for feed-forward models). Raises `Diverged` when a
    reconstruction is non-finite.
    """
    from bench.meters.quality import psnr_ssim, solver_summary

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    y_test = task.test_measurements()  # (M, *out_shape)
    was_training = model.training
    model.eval()
    psnr_sum = ssim_sum = 0.0
    stats: list[Any] = []
    try:
        with torch.no_grad():
            for start in range(0, len(task.x_test), batch_size):
                x_true = task.x_test[start : start + batch_size]  # (b, *in_shape)
                recon = model(y_test[start : start + batch_size], task.operator)
                if not bool(torch.isfinite(recon.x).all()):
                    raise Diverged("non-finite reconstruction on the test set")
                psnr, ssim = psnr_ssim(
                    task.to_metric_image(recon.x), task.to_metric_image(x_true), task.data_range(x_true)
                )
                psnr_sum += float(psnr) * len(x_true)
                ssim_sum += float(ssim) * len(x_true)
                stats.extend(recon.stats)
    finally:
        model.train(was_training)
    n = len(task.x_test)
    out = {"psnr_db": psnr_sum / n, "ssim": ssim_sum / n}
    out.update(solver_summary(stats))
    return out
