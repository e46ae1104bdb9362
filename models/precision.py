"""Mixed precision for the networks only: ``set_precision(model, "bf16")``.

``"bf16"`` runs every regulariser network (``DnCNN``, ``EquilibriumCell``) under
``torch.autocast(dtype=torch.bfloat16)`` on the input's device type, and hands its output back in
float32. Everything outside the networks stays in the operator's dtype (float32): the operator
``A``/``A^T`` (so complex MRI operators and FFTs are never in bf16), the data term and gradient
step ``x - eta A^T(A x - y)``, the fixed-point solvers' residuals and Anderson's least squares (they
see the float32 output of the cell), the DEQ backward solves, the loss, the parameters, their
gradients and Adam's state. What bf16 changes is what autocast changes: the convolutions compute in
bf16 and save bf16 activations for backward (the memory meters see those bf16 storages as they
are), plus autocast's bf16 copies of the weights.

A model without a network (``classical``) has nothing to autocast: asking it for bf16 raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from models.regularisers import DnCNN, EquilibriumCell

#: Precision name -> the autocast dtype of the networks (None: no autocast, all float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: The network modules that autocast wraps.
NETWORKS: tuple[type[nn.Module], ...] = (DnCNN, EquilibriumCell)


class Autocast(nn.Module):
    """Runs ``inner`` under ``torch.autocast(dtype)`` and returns its output as float32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: Tensor, **kwargs: Any) -> Tensor:
        with torch.autocast(args[0].device.type, dtype=self.dtype):
            out = self.inner(*args, **kwargs)
        return out.float()


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """Wrap every network of ``model`` (in place) for ``precision``; returns ``model``.

    Raises ``ValueError`` for an unknown precision, and for a precision other than fp32 on a model
    with no network (nothing would change).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known precisions: {list(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return model
    wrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NETWORKS) and not isinstance(parent, Autocast):
                setattr(parent, name, Autocast(child, dtype))
                wrapped += 1
    if not wrapped:
        raise ValueError(
            f"precision {precision!r} applies to the networks of a model, and {type(model).__name__} has "
            f"none ({', '.join(n.__name__ for n in NETWORKS)}); use 'fp32'"
        )
    return model
