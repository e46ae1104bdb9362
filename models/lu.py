"""Loop-unrolled proximal gradient (LU) and its checkpointed twin.

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

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.base import X0_MODES, Recon, Reconstructor
from models.checks import check_choice, check_int
from models.regularisers import ACTIVATIONS, DnCNN

if TYPE_CHECKING:
    from operators.base import LinearOperator


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
