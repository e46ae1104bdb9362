"""LUSER: loop-unrolled proximal gradient whose regulariser is a shallow equilibrium cell.

Each of the K outer steps takes a gradient step on the data term, then solves a small fixed point::

    v_k     = x_k - eta_k A^T (A x_k - y),               eta_k = exp(theta_k) / ||A||^2
    x_{k+1} = R_k(v_k)                                   (an equilibrium cell, ``cell``)

``cell = "image"``: :class:`~models.regularisers.EquilibriumCell` of 1-3 convolutions
(``reg_depth``) on an image-shaped state, ``x_{k+1} = z*`` with ``z* = f_k(z*; v_k)``, ``z_0 = v_k``.
``cell = "feature"``: :class:`~models.feature_cell.FeatureCell`, a state of ``reg_width`` channels
with the injection of ``v_k`` at every iteration, ``x_{k+1} = v_k + conv_out(z*)``.

The fixed point is solved by :func:`models.deq.deq_solve` to ``tol`` (relative residual) within
``max_iter`` iterations, and differentiated by the ``backward`` mode (``ift``, ``ift_hook``, ``jfb``,
``phantom``, ``unrolled``). A backward that saves only the state and the injection costs a fixed
number of image planes per LU step (image cell: ``z*`` and ``v``; feature cell: ``z*``, the injection
and ``v``, ``2 W + c``), independent of the iteration count and of the cell's depth.
Complex images are solved for as two real channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.base import X0_MODES, Recon, Reconstructor
from models.checks import check_choice, check_int
from models.deq import DEQConfig, DEQSettings, DEQStats, deq_solve
from models.feature_cell import FeatureCell
from models.regularisers import ACTIVATIONS, CELL_DEPTHS, EquilibriumCell

if TYPE_CHECKING:
    from operators.base import LinearOperator


@dataclass(frozen=True)
class LUSERConfig(DEQSettings):
    """Hyper-parameters of ``luser``.

    n_iters: LU steps K. reg_depth: convolutions in each cell (1-3). reg_width: hidden channels.
    cell: "image" (EquilibriumCell, image-shaped state) or "feature" (FeatureCell, reg_width-channel
    state). act: cell activation. spectral_norm: spectral-normalised cells (see the cell classes).
    tied: one cell shared by all steps. x0, step_init: as in LU.
    solver, tol, max_iter, backward, bwd_tol, bwd_max_iter (from DEQSettings, defaults and checks of
    DEQConfig): the forward fixed-point solve (tol on ||f(z) - z|| / ||f(z)|| per sample), the gradient
    mode and the backward (adjoint) solve.
    """

    n_iters: int = 5
    reg_depth: int = 2
    reg_width: int = 32
    cell: str = "image"
    act: str = "gelu"
    spectral_norm: bool = False
    tied: bool = False
    x0: str = "adjoint"
    step_init: float = -1.0

    def __post_init__(self) -> None:
        check_int("n_iters", self.n_iters)
        check_int("reg_depth", self.reg_depth, minimum=min(CELL_DEPTHS), maximum=max(CELL_DEPTHS))
        check_int("reg_width", self.reg_width)
        check_choice("act", self.act, sorted(ACTIVATIONS))
        check_choice("cell", self.cell, sorted(CELLS))
        check_choice("x0", self.x0, X0_MODES)
        super().__post_init__()


def _solve_image_cell(cell: nn.Module, v: Tensor, cfg: DEQConfig) -> tuple[Tensor, DEQStats]:
    return deq_solve(cell, v, (v,), list(cell.parameters()), cfg)  # z* = cell(z*, v), z0 = v


def _solve_feature_cell(cell: nn.Module, v: Tensor, cfg: DEQConfig) -> tuple[Tensor, DEQStats]:
    if not isinstance(cell, FeatureCell):
        raise TypeError(f"expected a FeatureCell, got {type(cell).__name__}")
    return cell.solve(v, cfg)  # v + conv_out(z*), z* = f(z*; conv_in(v)), z0 = 0


@dataclass(frozen=True)
class CellKind:
    """How to build one LU step's cell from (channels, config) and how to regularise v with it."""

    build: Callable[[int, LUSERConfig], nn.Module]
    solve: Callable[[nn.Module, Tensor, DEQConfig], tuple[Tensor, DEQStats]]


#: ``LUSERConfig.cell`` -> its cell kind.
CELLS: dict[str, CellKind] = {
    "image": CellKind(
        lambda c, cfg: EquilibriumCell(c, cfg.reg_depth, cfg.reg_width, cfg.act, cfg.spectral_norm),
        _solve_image_cell,
    ),
    "feature": CellKind(
        lambda c, cfg: FeatureCell(c, cfg.reg_depth, cfg.reg_width, cfg.act, cfg.spectral_norm),
        _solve_feature_cell,
    ),
}


class LUSER(Reconstructor):
    """K outer proximal-gradient steps, each regulariser an equilibrium cell solved by ``deq_solve``."""

    def __init__(self, cfg: LUSERConfig, op: LinearOperator):
        super().__init__(op, x0=cfg.x0)
        self.cfg = cfg
        self.deq_cfg = cfg.deq_config()
        self.kind = CELLS[cfg.cell]
        n_cells = 1 if cfg.tied else cfg.n_iters
        self.cells = nn.ModuleList(self.kind.build(self.net_channels, cfg) for _ in range(n_cells))
        self.step_logits = nn.Parameter(torch.full((cfg.n_iters,), float(cfg.step_init)))  # theta_k

    def forward(self, y: Tensor, op: LinearOperator) -> Recon:
        self.check_op(op)
        x = self.initial(y, op)  # (B, *in_shape)
        stats = []
        for k in range(self.cfg.n_iters):
            v = self.to_net(self.gradient_step(x, y, op, self.step_logits[k]))  # (B, c, H, W) real
            cell = self.cells[0 if self.cfg.tied else k]
            z, stat = self.kind.solve(cell, v, self.deq_cfg)  # (B, c, H, W)
            x = self.from_net(z)
            stats.append(stat)
        return Recon(x=x, stats=stats)
