"""The linear-operator contract every forward model follows.

An operator maps a batch of images ``x`` of shape ``(B, *in_shape)`` to measurements ``y`` of shape
``(B, *out_shape)``. Its state (kernels, masks, sparse matrices) lives in buffers, so ``.to(device)``
and ``.to(torch.float64)`` move and convert it; the operator then computes in that dtype and rejects
inputs of any other dtype with a ``ValueError`` naming what it expected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


class LinearOperator(nn.Module):
    """Base class: subclasses implement ``_A`` and ``_A_adjoint`` and set the shapes.

    Attributes:
        in_shape: image shape without batch, e.g. ``(C, H, W)``.
        out_shape: measurement shape without batch.
        is_complex: whether images and measurements are complex (MRI).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    is_complex: bool = False
    _dtype_probe: Tensor  # (0,) real, empty: carries the operator's real dtype and device

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, is_complex: bool = False):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.is_complex = is_complex
        # A zero-size buffer that records the operator's real dtype and device, whatever else it holds.
        self.register_buffer("_dtype_probe", torch.zeros(0), persistent=False)

    @classmethod
    def image_size_error(cls, image_size: int, **kwargs: object) -> str | None:
        """Why this operator cannot take ``image_size`` with constructor ``kwargs`` (None: it can),
        answered without building it, so that a sweep can be checked before any run starts."""
        return None if image_size >= 1 else f"image_size must be >= 1, got {image_size}"

    # --- dtype and device -------------------------------------------------------------------------
    @property
    def real_dtype(self) -> torch.dtype:
        return self._dtype_probe.dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype images and measurements must have (complex for complex operators)."""
        return _COMPLEX_OF[self.real_dtype] if self.is_complex else self.real_dtype

    @property
    def device(self) -> torch.device:
        return self._dtype_probe.device

    # --- validation -------------------------------------------------------------------------------
    def _check(self, t: Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{type(self).__name__}: {what} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise ValueError(
                f"{type(self).__name__}: expected {what} of shape (B, {', '.join(map(str, shape))}), "
                f"got {tuple(t.shape)}"
            )
        if t.dtype != self.dtype:
            raise ValueError(f"{type(self).__name__}: expected {what} of dtype {self.dtype}, got {t.dtype}")

    # --- the public maps --------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:
        """Forward model: ``(B, *in_shape) -> (B, *out_shape)``."""
        self._check(x, self.in_shape, "image x")
        return self._A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Exact adjoint: ``(B, *out_shape) -> (B, *in_shape)``."""
        self._check(y, self.out_shape, "measurement y")
        return self._A_adjoint(y)

    def normal(self, x: Tensor) -> Tensor:
        """The normal operator ``A^T A x``."""
        return self.A_adjoint(self.A(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def classical(self, y: Tensor) -> Tensor:
        """The operator's classical reconstruction (FBP for CT, zero-filled for MRI, Tikhonov for blur).

        The base class returns ``A^T y``; subclasses override it with their standard method.
        """
        return self.A_adjoint(y)

    @torch.no_grad()
    def op_norm(
        self, n_iter: int = 100, *, generator: torch.Generator | None = None, rtol: float = 1e-7
    ) -> float:
        """Spectral norm ``||A||_2`` by power iteration on ``A^T A`` from a seeded random start."""
        gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn((1, *self.in_shape), generator=gen, dtype=self.real_dtype)
        if self.is_complex:
            x = torch.complex(x, torch.randn((1, *self.in_shape), generator=gen, dtype=self.real_dtype))
        x = (x / torch.linalg.vector_norm(x)).to(self.device)
        sq = 0.0
        for _ in range(n_iter):
            z = self.normal(x)
            new_sq = float(torch.linalg.vector_norm(z))
            x = z / new_sq
            if abs(new_sq - sq) <= rtol * new_sq:
                sq = new_sq
                break
            sq = new_sq
        return math.sqrt(sq)

    # --- to implement -----------------------------------------------------------------------------
    def _A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}, dtype={self.dtype}"


def inner(a: Tensor, b: Tensor) -> Tensor:
    """Real inner product per batch element, ``Re sum(conj(a) * b)``: the one that adjoints satisfy."""
    prod = (a.conj() * b) if a.is_complex() else a * b
    return prod.real.flatten(1).sum(1) if prod.is_complex() else prod.flatten(1).sum(1)
