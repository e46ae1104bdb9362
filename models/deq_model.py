"""DEQ (Gilton et al. 2021): the whole proximal-gradient iteration as one fixed-point map.

    x* = f(x*; y),   f(x; y) = R( x - eta (A^T (A x - y) + mu x) ),   eta = exp(theta) / ||A||^2,

with a single :class:`~models.regularisers.DnCNN` ``R``, one learned ``theta`` and a fixed ridge weight
``mu = ridge * ||A||^2`` (the data step is a gradient step on ``0.5 ||A x - y||^2 + 0.5 mu ||x||^2``).
``ridge = 0`` is Gilton et al.'s map exactly. Why the default ``ridge = 0.1``: ``R`` starts close to the
identity, so without it the Jacobian ``J = J_R (I - eta A^T A)`` has eigenvalues ~1 on the null space
of ``A`` (MRI, sparse-view CT, and blur's tiny singular values): the forward solve drifts there and
the IFT adjoint system ``(I - J^T) g = dL/dx*`` is singular. In our tests (8x8 under-determined
operator, Adam lr 1e-3, 30 steps) IFT training then *diverged* (loss x3.7); with ``ridge = 0.1`` the
map contracts by ``1 - eta mu`` on the null space and the loss fell 3x. The operator is
inside the solve: every solver iteration applies ``A`` and ``A^T``. The fixed point is found by
:func:`models.deq.deq_solve` from ``x_0`` (``A^T y`` or ``op.classical(y)``) and differentiated by the
chosen backward mode; gradients reach ``R``'s parameters and ``theta``. Complex images are solved for
as two real channels (the solver's state is ``to_channels(x)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.base import X0_MODES, Recon, Reconstructor
from models.checks import check_choice, check_int
from models.deq import DEQSettings, deq_solve
from models.regularisers import ACTIVATIONS, DnCNN

if TYPE_CHECKING:
    from operators.base import LinearOperator


@dataclass(frozen=True)
class DEQModelConfig(DEQSettings):
    """Hyper-parameters of ``deq``: the DnCNN (reg_depth, reg_width, act, norm), x0, step_init, the ridge
    weight (``mu = ridge * ||A||^2``, >= 0), and the forward/backward solve (solver, tol, max_iter,
    backward, bwd_tol, bwd_max_iter, from DEQSettings) as in LUSER."""

    reg_depth: int = 5
    reg_width: int = 32
    act: str = "relu"
    norm: bool = False
    x0: str = "adjoint"
    step_init: float = -1.0
    ridge: float = 0.1

    def __post_init__(self) -> None:
        check_int("reg_depth", self.reg_depth, minimum=2)
        check_int("reg_width", self.reg_width)
        check_choice("act", self.act, sorted(ACTIVATIONS))
        check_choice("x0", self.x0, X0_MODES)
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, int | float) or not self.ridge >= 0:
            raise ValueError(f"ridge must be a float >= 0, got {self.ridge!r}")
        super().__post_init__()


class DEQModel(Reconstructor):
    """One DnCNN regulariser inside a proximal-gradient fixed point (see the module docstring)."""

    def __init__(self, cfg: DEQModelConfig, op: LinearOperator):
        super().__init__(op, x0=cfg.x0)
        self.cfg = cfg
        self.deq_cfg = cfg.deq_config()
        self.regulariser = DnCNN(self.net_channels, cfg.reg_depth, cfg.reg_width, cfg.act, cfg.norm)
        self.step_logit = torch.nn.Parameter(torch.tensor(float(cfg.step_init)))  # theta

    def forward(self, y: Tensor, op: LinearOperator) -> Recon:
        self.check_op(op)

        mu = float(self.cfg.ridge) * self.op_norm_sq

        def f(z: Tensor, y_: Tensor) -> Tensor:  # z: (B, c, H, W) real channels of x
            x = self.from_net(z)  # (B, *in_shape)
            eta = torch.exp(self.step_logit) / self.op_norm_sq
            v = x - eta * (op.A_adjoint(op.A(x) - y_) + mu * x)  # (B, *in_shape)
            return self.regulariser(self.to_net(v))

        z0 = self.to_net(self.initial(y, op))  # (B, c, H, W)
        params = [*self.regulariser.parameters(), self.step_logit]
        z, stat = deq_solve(f, z0, (y,), params, self.deq_cfg)
        return Recon(x=self.from_net(z), stats=[stat])
