"""Loop-unrolled proximal gradient (LU), its checkpointed twin, and what every reconstructor shares.

LU runs K learned proximal-gradient steps from ``x_0`` (``A^T y``, or ``op.classical(y)``)::

    x_{k+1} = R_k( x_k - eta_k A^T (A x_k - y) ),   eta_k = exp(theta_k) / L,   L = ||A||_2^2,

with ``R_k`` a :class:`~models.regularisers.DnCNN` (one per step, or one shared when ``tied``) and a
learned ``theta_k`` (initialised at ``step_init``; ``theta = 0`` is the classical step ``1 / L``).
``L`` is computed once at construction by power iteration (``op.op_norm()``) and kept as a python
float, so the model knows the operator's scale but never holds the operator: the same operator is
passed to every call, ``model(y, op) -> Recon``.

``lu_ckpt`` is the same network with each step (gradient step + regulariser) wrapped in non-reentrant
``torch.utils.checkpoint``: activations inside a step are recomputed in backward instead of saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.complex import from_channels, to_channels
from models.regularisers import ACTIVATIONS, DnCNN

if TYPE_CHECKING:
    from models.deq import DEQStats
    from operators.base import LinearOperator

X0_MODES = ("adjoint", "classical")


@dataclass
class Recon:
    """A reconstruction: ``x`` of shape ``(B, *op.in_shape)`` in ``op.dtype``, and the DEQ solver stats
    of each equilibrium solve (one per LU step for LUSER, one for DEQ, none for feed-forward models)."""

    x: Tensor
    stats: list[DEQStats] = field(default_factory=list)


# --- config validation helpers (shared by every model config) -----------------------------------------
def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_choice(name: str, value: object, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class LUConfig:
    """Hyper-parameters of ``lu`` and ``lu_ckpt``.

    n_iters: LU steps K. reg_depth / reg_width / act / norm: the DnCNN of each step.
    tied: one regulariser shared by all steps (step sizes stay per step).
    x0: "adjoint" (A^T y) or "classical" (op.classical(y)). step_init: theta_k at init.
    """

    n_iters: int = 5
    reg_depth: int = 5
    reg_width: int = 32
    act: str = "relu"
    norm: bool = False
    tied: bool = False
    x0: str = "adjoint"
    step_init: float = -1.0

    def __post_init__(self) -> None:
        check_int("n_iters", self.n_iters)
        check_int("reg_depth", self.reg_depth, minimum=2)
        check_int("reg_width", self.reg_width)
        check_choice("act", self.act, sorted(ACTIVATIONS))
        check_choice("x0", self.x0, X0_MODES)


class Reconstructor(nn.Module):
    """Shared plumbing: the operator's shapes (read once, op not stored), complex <-> channels, ``x_0``
    and the learned gradient step.

    Args:
        op: the operator, read for ``in_shape``, ``is_complex`` and (when ``with_op_norm``) ``||A||^2``.
        x0: "adjoint" or "classical".
        with_op_norm: compute ``L = ||A||_2^2`` by power iteration (needed for gradient steps).
    """

    def __init__(self, op: LinearOperator, *, x0: str = "adjoint", with_op_norm: bool = True):
        super().__init__()
        self.in_shape: tuple[int, ...] = tuple(int(s) for s in op.in_shape)
        if len(self.in_shape) != 3:
            raise ValueError(f"reconstructors need images of shape (C, H, W), got in_shape {self.in_shape}")
        self.is_complex: bool = bool(op.is_complex)
        self.net_channels: int = self.in_shape[0] * (2 if self.is_complex else 1)
        self.x0_mode = x0
        self.op_norm_sq: float = float(op.op_norm()) ** 2 if with_op_norm else float("nan")  # L = ||A||^2

    def check_op(self, op: LinearOperator) -> None:
        """The operator at call time must match the one the model was built for (shape, complexity, dtype)."""
        if tuple(op.in_shape) != self.in_shape or bool(op.is_complex) != self.is_complex:
            raise ValueError(
                f"{type(self).__name__} was built for in_shape {self.in_shape} (complex={self.is_complex}), "
                f"got an operator with in_shape {tuple(op.in_shape)} (complex={op.is_complex})"
            )
        param = next(self.parameters(), None)
        if param is not None and param.dtype != op.real_dtype:
            raise ValueError(
                f"{type(self).__name__} has {param.dtype} parameters but the operator computes in "
                f"{op.real_dtype}: convert one of them (model.to({op.real_dtype}))"
            )

    def initial(self, y: Tensor, op: LinearOperator) -> Tensor:
        """``x_0``: ``A^T y`` or ``op.classical(y)``, ``(B, *in_shape)``."""
        return op.A_adjoint(y) if self.x0_mode == "adjoint" else op.classical(y)

    def gradient_step(self, x: Tensor, y: Tensor, op: LinearOperator, theta: Tensor) -> Tensor:
        """``x - exp(theta) / L * A^T (A x - y)``, ``(B, *in_shape)`` in ``op.dtype``."""
        eta = torch.exp(theta) / self.op_norm_sq
        return x - eta * op.A_adjoint(op.A(x) - y)

    def to_net(self, x: Tensor) -> Tensor:
        """Image in ``op.dtype`` -> real network input ``(B, net_channels, H, W)``."""
        return to_channels(x) if self.is_complex else x

    def from_net(self, h: Tensor) -> Tensor:
        """Real network output ``(B, net_channels, H, W)`` -> image in ``op.dtype``."""
        return from_channels(h) if self.is_complex else h


class LU(Reconstructor):
    """K learned proximal-gradient steps with a DnCNN regulariser per step (see the module docstring)."""

    checkpointed: bool = False

    def __init__(self, cfg: LUConfig, op: LinearOperator):
        super().__init__(op, x0=cfg.x0)
        self.cfg = cfg
        n_regs = 1 if cfg.tied else cfg.n_iters
        self.regularisers = nn.ModuleList(
            DnCNN(self.net_channels, cfg.reg_depth, cfg.reg_width, cfg.act, cfg.norm) for _ in range(n_regs)
        )
        self.step_logits = nn.Parameter(torch.full((cfg.n_iters,), float(cfg.step_init)))  # theta_k

    def step(self, x: Tensor, y: Tensor, op: LinearOperator, k: int) -> Tensor:
        """One LU step: ``R_k(x - eta_k A^T(A x - y))``."""
        v = self.gradient_step(x, y, op, self.step_logits[k])  # (B, *in_shape)
        reg = self.regularisers[0 if self.cfg.tied else k]
        return self.from_net(reg(self.to_net(v)))

    def forward(self, y: Tensor, op: LinearOperator) -> Recon:
        self.check_op(op)
        x = self.initial(y, op)  # (B, *in_shape)
        for k in range(self.cfg.n_iters):
            if self.checkpointed:
                # The step draws no random numbers: saving the RNG state would cost a CPU generator
                # state per step (outside the dispatcher) for nothing.
                x = checkpoint(self.step, x, y, op, k, use_reentrant=False, preserve_rng_state=False)
            else:
                x = self.step(x, y, op, k)
        return Recon(x=x, stats=[])


class LUCheckpointed(LU):
    """``lu_ckpt``: :class:`LU` with non-reentrant gradient checkpointing around every step."""

    checkpointed = True
