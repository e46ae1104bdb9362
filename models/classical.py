"""Classical (learning-free) reconstructions, as references for the learned models.

Methods (registry :data:`CLASSICAL_METHODS`; each says which operators it applies to):

- ``adjoint``: ``A^T y`` (any operator).
- ``landweber``: ``n_iters`` steps of least-squares gradient descent ``x <- x - (1/L) A^T (A x - y)``
  from ``x = 0``, ``L = ||A||_2^2``; converges to the minimum-norm least-squares solution (any operator).
- ``fbp``: filtered back-projection, ``op.fbp(y)`` (operators with an ``fbp`` method: CT).
- ``zero_filled``: ``A^T y`` of a complex Fourier operator (MRI), the inverse FFT of zero-filled k-space.
- ``tikhonov``: ``argmin ||A x - y||^2 + reg ||x||^2`` by ``op.tikhonov(y, tikhonov_reg)`` (blur).

The model has no parameters (``count_params == 0``): a training loop must skip the optimiser for it.
Its forward runs under ``torch.no_grad()`` and still returns a :class:`~models.base.Recon`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import Tensor

from models.base import Recon, Reconstructor
from models.checks import check_int

if TYPE_CHECKING:
    from operators.base import LinearOperator


@dataclass(frozen=True)
class ClassicalConfig:
    """method: a key of CLASSICAL_METHODS. n_iters: Landweber iterations. tikhonov_reg: Tikhonov weight."""

    method: str = "landweber"
    n_iters: int = 50
    tikhonov_reg: float = 1e-2

    def __post_init__(self) -> None:
        if self.method not in CLASSICAL_METHODS:
            raise ValueError(f"method must be one of {sorted(CLASSICAL_METHODS)}, got {self.method!r}")
        check_int("n_iters", self.n_iters)
        if isinstance(self.tikhonov_reg, bool) or not isinstance(self.tikhonov_reg, int | float):
            raise TypeError(f"tikhonov_reg must be a float, got {type(self.tikhonov_reg).__name__}")
        if not self.tikhonov_reg > 0:
            raise ValueError(f"tikhonov_reg must be > 0, got {self.tikhonov_reg}")


class _FBPOperator(Protocol):
    """An operator with filtered back-projection (CT), as ``fbp``'s ``applies`` checks."""

    def fbp(self, y: Tensor) -> Tensor: ...


class _TikhonovOperator(Protocol):
    """An operator with a Tikhonov solver (blur), as ``tikhonov``'s ``applies`` checks."""

    def tikhonov(self, y: Tensor, reg: float) -> Tensor: ...


@dataclass(frozen=True)
class ClassicalMethod:
    """applies(op) says whether the method exists for an operator; run(op, y, cfg, L) reconstructs."""

    applies: Callable[[LinearOperator], bool]
    run: Callable[[LinearOperator, Tensor, ClassicalConfig, float], Tensor]
    needs_op_norm: bool = False


def landweber(op: LinearOperator, y: Tensor, n_iters: int, op_norm_sq: float) -> Tensor:
    """``n_iters`` steps of ``x <- x - (1/L) A^T (A x - y)`` from 0, ``(B, *in_shape)``."""
    x = torch.zeros((y.shape[0], *op.in_shape), dtype=op.dtype, device=y.device)
    for _ in range(n_iters):
        x = x - op.A_adjoint(op.A(x) - y) / op_norm_sq
    return x


CLASSICAL_METHODS: dict[str, ClassicalMethod] = {
    "adjoint": ClassicalMethod(applies=lambda op: True, run=lambda op, y, cfg, L: op.A_adjoint(y)),
    "landweber": ClassicalMethod(
        applies=lambda op: True,
        run=lambda op, y, cfg, L: landweber(op, y, cfg.n_iters, L),
        needs_op_norm=True,
    ),
    "fbp": ClassicalMethod(
        applies=lambda op: callable(getattr(op, "fbp", None)),
        run=lambda op, y, cfg, L: cast(_FBPOperator, op).fbp(y),
    ),
    "zero_filled": ClassicalMethod(
        applies=lambda op: bool(op.is_complex),
        run=lambda op, y, cfg, L: op.A_adjoint(y),
    ),
    "tikhonov": ClassicalMethod(
        applies=lambda op: callable(getattr(op, "tikhonov", None)),
        run=lambda op, y, cfg, L: cast(_TikhonovOperator, op).tikhonov(y, cfg.tikhonov_reg),
    ),
}


def applicable_methods(op: LinearOperator) -> list[str]:
    """The classical methods that exist for ``op``."""
    return [name for name, method in CLASSICAL_METHODS.items() if method.applies(op)]


class Classical(Reconstructor):
    """A learning-free reconstruction (no parameters); raises ``ValueError`` at construction when the
    method does not apply to the operator, naming the operator and the applicable methods."""

    def __init__(self, cfg: ClassicalConfig, op: LinearOperator):
        method = CLASSICAL_METHODS[cfg.method]
        if not method.applies(op):
            raise ValueError(
                f"classical method {cfg.method!r} does not apply to {type(op).__name__}; "
                f"applicable: {applicable_methods(op)}"
            )
        super().__init__(op, with_op_norm=method.needs_op_norm)
        self.cfg = cfg
        self.method = method

    @torch.no_grad()
    def forward(self, y: Tensor, op: LinearOperator) -> Recon:
        self.check_op(op)
        return Recon(x=self.method.run(op, y, self.cfg, self.op_norm_sq), stats=[])
