"""The one training loop: `train_step`, `train` and `evaluate`, shared by sweeps, benchmarks and tests.

Loss: the mean squared error of the final iterate, ``mean |x_hat - x|^2`` (for complex images the
squared modulus, i.e. the sum of the real and imaginary squared errors).

Randomness is explicit: batches are drawn from ``task.x_train`` by the run's ``batch_order`` stream
(epochs of random permutations), the measurement noise of each batch by its ``train_noise`` stream
(`bench.data.seeds`, CPU generators: ``Task.measure`` draws on the generator's device, so the same
noise reaches every device). Parameter initialisation is the caller's business (bench/harness/run.py
builds the model under ``torch.random.fork_rng`` with the run's seed).

Validation and plateau stopping. With ``val_every > 0`` the model is scored on the task's validation
split (``Task.measurements("val")``, disjoint from train and test) every ``val_every`` steps and after
the last step. With ``patience > 0`` training stops when the validation PSNR has not improved on the
reference by more than ``min_delta_db`` for ``patience`` validations in a row (``stopped_by =
"plateau"``), else it runs all ``steps`` (the step budget, ``max_steps``; ``stopped_by =
"max_steps"``). In plateau mode the weights of the best validation PSNR (the highest seen, at
``best_step``) are restored before the test set is scored; in fixed-step mode (``patience = 0``, what
the smoke preset and the tests use) the final weights are kept. ``patience > 0`` needs
``val_every > 0``. The learning rate follows ``lr_schedule`` (a key of `LR_SCHEDULES`: constant, or
cosine decay from ``lr`` to 0 over the step budget), one schedule for every model of a preset.

Learning curve: one `CurvePoint` per validation (or, without validation, every ``ceil(steps / 10)``
steps and at the last step): the step, the mean training loss since the previous point, the
validation PSNR, the elapsed training wall time (validations included) and the learning rate.
``train_s`` is the wall time of the whole loop, validations included.

Divergence: a non-finite loss, a non-finite forward residual of any equilibrium solve (a DEQ solver
blow-up) or non-finite parameters after training raise `Diverged`, which bench/harness/run.py records as
status ``diverged``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import seeds
from bench.meters.timing import synchronize

#: Progress of a training run, one line per curve point (a sweep's run writes it to its log).
log = logging.getLogger(__name__)

#: Loss of a reconstruction against its target, ``mean |x_hat - x|^2``.
LossFn = Callable[[Tensor, Tensor], Tensor]


class Diverged(RuntimeError):
    """Training (or a solve) produced NaN/inf; the message says where."""


#: Learning-rate schedule name -> factor of ``lr`` at step t of a budget of T steps.
LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda t, total: 1.0,
    "cosine": lambda t, total: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(total, 1))),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (see the module docstring).

    steps: the step budget (max_steps). grad_clip: max global gradient norm (None: no clipping).
    val_every: steps between validations (0: no validation). patience: validations without an
    improvement of more than min_delta_db (dB) before stopping (0: never stop early, keep the final
    weights). lr_schedule: a key of LR_SCHEDULES.
    """

    steps: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    grad_clip: float | None = None
    val_every: int = 0
    patience: int = 0
    min_delta_db: float = 0.0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        for name in ("steps", "seed", "val_every", "patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        if not self.min_delta_db >= 0:
            raise ValueError(f"min_delta_db must be >= 0 (dB), got {self.min_delta_db!r}")
        if self.patience > 0 and self.val_every == 0:
            raise ValueError(f"patience {self.patience} needs validation: set val_every > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass(frozen=True)
class CurvePoint:
    """One point of a learning curve; val_psnr_db is NaN where the point has no validation."""

    step: int
    train_loss: float
    val_psnr_db: float
    elapsed_s: float
    lr: float


@dataclass(frozen=True)
class StepResult:
    """One step: the loss value and the DEQ stats of each equilibrium solve (empty for feed-forward)."""

    loss: float
    stats: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    """losses: one per step run. train_s: wall time of the loop, validations included (device
    synchronised). trained: False for models without trainable parameters (nothing to train) or
    steps == 0. best_step: the step whose weights the model holds at the end (the best validation in
    plateau mode, else the last step); val_psnr_db: their validation PSNR (NaN without validation)."""

    losses: list[float]
    train_s: float
    trained: bool
    last_stats: list[Any] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)
    best_step: int = 0
    stopped_by: str = "max_steps"
    val_psnr_db: float = math.nan

    @property
    def steps_run(self) -> int:
        return len(self.losses)


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


def batch_order_bytes(n: int, batch_size: int, steps: int) -> int:
    """Bytes of the index permutations `batch_indices` draws for ``steps`` steps (int64), which `train`
    holds for the whole loop: one permutation of ``n`` per ``n // batch_size`` steps."""
    if steps <= 0 or batch_size > n:
        return 0
    perms = math.ceil(steps / (n // batch_size))
    return perms * n * torch.empty((), dtype=torch.int64).element_size()


class _Plateau:
    """Tracks validations: the best PSNR (and a CPU copy of its weights) and the patience counter."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.best_db = -math.inf
        self.ref_db = -math.inf  # the last value that improved by more than min_delta_db
        self.best_step = 0
        self.best_state: dict[str, Tensor] | None = None
        self.bad = 0

    def update(self, step: int, val_db: float, model: nn.Module) -> bool:
        """Record a validation after ``step`` steps; True when training should stop (plateau)."""
        if val_db > self.best_db or self.best_state is None:
            self.best_db, self.best_step = val_db, step
            if self.cfg.patience > 0:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                self.best_state = {}
        if val_db > self.ref_db + self.cfg.min_delta_db:
            self.ref_db, self.bad = val_db, 0
        else:
            self.bad += 1
        return self.cfg.patience > 0 and self.bad >= self.cfg.patience


def _is_point(step: int, cfg: TrainConfig) -> bool:
    """Whether the curve gets a point (and a validation, when validating) after ``step`` steps."""
    every = cfg.val_every or max(1, math.ceil(cfg.steps / 10))
    return step % every == 0 or step == cfg.steps


def train(
    model: nn.Module,
    task: Any,
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, StepResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` with Adam for at most ``cfg.steps`` steps (see the module docstring).

    Models without trainable parameters (classical) are not trained: ``trained=False``, no losses.
    Raises `Diverged` on a non-finite loss, solve, validation reconstruction or final parameters.
    """
    params = trainable_parameters(model)
    if not params or cfg.steps == 0:
        return TrainResult(losses=[], train_s=0.0, trained=False)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = LR_SCHEDULES[cfg.lr_schedule]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: schedule(t, cfg.steps))
    batches = batch_indices(
        len(task.x_train), cfg.batch_size, cfg.steps, seeds.generator(cfg.seed, "batch_order")
    )
    noise_gen = seeds.generator(cfg.seed, "train_noise")
    device = task.x_train.device
    model.train()
    losses: list[float] = []
    curve: list[CurvePoint] = []
    plateau = _Plateau(cfg)
    stopped_by = "max_steps"
    result = StepResult(loss=float("nan"))
    since = 0  # index in losses of the first loss since the last curve point
    synchronize(device)
    t0 = time.perf_counter()
    for step, idx in enumerate(batches, start=1):
        lr = optimizer.param_groups[0]["lr"]
        x = task.x_train[idx.to(device)]  # (B, *in_shape)
        y = task.measure(x, noise_gen)  # (B, *out_shape)
        result = train_step(model, task.operator, x, y, optimizer, grad_clip=cfg.grad_clip)
        scheduler.step()
        check_finite(result, f"training step {step - 1}")
        losses.append(result.loss)
        if on_step is not None:
            on_step(step - 1, result)
        if not _is_point(step, cfg):
            continue
        val_db = math.nan
        stop = False
        if cfg.val_every > 0:
            val_db = evaluate(model, task, cfg.batch_size, split="val")["psnr_db"]
            stop = plateau.update(step, val_db, model)
        synchronize(device)
        mean_loss = sum(losses[since:]) / len(losses[since:])
        curve.append(CurvePoint(step, mean_loss, val_db, time.perf_counter() - t0, lr))
        log.info(
            "step %d of %d: mean training loss %.4g, validation PSNR %.2f dB, %.0f s",
            step, cfg.steps, mean_loss, val_db, curve[-1].elapsed_s,
        )  # fmt: skip
        since = len(losses)
        if stop:
            stopped_by = "plateau"
            break
    synchronize(device)
    train_s = time.perf_counter() - t0
    best_step, val_psnr_db = len(losses), curve[-1].val_psnr_db
    if cfg.patience > 0 and plateau.best_state:
        model.load_state_dict(plateau.best_state)
        best_step, val_psnr_db = plateau.best_step, plateau.best_db
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise Diverged(f"parameter {name!r} is non-finite after training")
    return TrainResult(
        losses=losses,
        train_s=train_s,
        trained=True,
        last_stats=result.stats,
        curve=curve,
        best_step=best_step,
        stopped_by=stopped_by,
        val_psnr_db=val_psnr_db,
    )


def evaluate(
    model: nn.Module, task: Any, batch_size: int, *, split: str = "test", max_batches: int | None = None
) -> dict[str, float]:
    """PSNR/SSIM on a held-out split of the task (``task.measurements(split)``: "test", the scores,
    or "val", model selection), without gradients.

    ``max_batches`` scores only the first that many batches (None: the whole split); the memory
    estimate (bench/harness/run.py) measures one batch of the evaluation this way.

    Returns ``psnr_db`` and ``ssim`` (means over the split's images; SSIM by the task's convention,
    ``TaskSpec.ssim``) and the solver summary of the
    evaluation solves (``bench.meters.quality.solver_summary``: fwd_iters_mean, bwd_iters_mean,
    final_residual_max, converged_frac; NaN for feed-forward models). Raises `Diverged` when a
    reconstruction is non-finite.
    """
    from bench.meters.quality import psnr_ssim, solver_summary

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be None or >= 1, got {max_batches}")
    x_all = task.images(split)  # (M, *in_shape)
    y_all = task.measurements(split)  # (M, *out_shape)
    if max_batches is not None:
        x_all, y_all = x_all[: max_batches * batch_size], y_all[: max_batches * batch_size]
    was_training = model.training
    model.eval()
    psnr_sum = ssim_sum = 0.0
    stats: list[Any] = []
    try:
        with torch.no_grad():
            for start in range(0, len(x_all), batch_size):
                x_true = x_all[start : start + batch_size]  # (b, *in_shape)
                recon = model(y_all[start : start + batch_size], task.operator)
                if not bool(torch.isfinite(recon.x).all()):
                    raise Diverged(f"non-finite reconstruction on the {split} set")
                psnr, ssim = psnr_ssim(
                    task.to_metric_image(recon.x),
                    task.to_metric_image(x_true),
                    task.data_range(x_true),
                    task.spec.ssim,
                )
                psnr_sum += float(psnr) * len(x_true)
                ssim_sum += float(ssim) * len(x_true)
                stats.extend(recon.stats)
    finally:
        model.train(was_training)
    n = len(x_all)
    out = {"psnr_db": psnr_sum / n, "ssim": ssim_sum / n}
    out.update(solver_summary(stats))
    return out
