"""What every reconstructor shares: the result type, the start modes and the operator plumbing.

Every reconstructor is an ``nn.Module`` built as ``Model(cfg, op)`` from a frozen config dataclass
(validated in its ``__post_init__`` with the checks of :mod:`models.checks`) and called as
``model(y, op) -> Recon``. :class:`Reconstructor` reads the operator once for its shapes (and
``||A||_2^2`` when the model takes gradient steps) and never stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.complex import from_channels, to_channels

if TYPE_CHECKING:
    from models.deq import DEQStats
    from operators.base import LinearOperator

#: How a reconstructor starts: ``A^T y`` or ``op.classical(y)``.
X0_MODES = ("adjoint", "classical")


@dataclass
class Recon:
    """A reconstruction: ``x`` of shape ``(B, *op.in_shape)`` in ``op.dtype``, and the DEQ solver stats
    of each equilibrium solve (one per LU step for LUSER, one for DEQ, none for feed-forward models)."""

    x: Tensor
    stats: list[DEQStats] = field(default_factory=list)


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
