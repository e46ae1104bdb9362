"""Single-coil Cartesian MRI: ``y = M F x`` with ``F`` the centred orthonormal 2-D FFT and ``M`` a mask.

``fft2c`` is fastMRI's ``fft2c`` on complex tensors: ``fftshift(fft2(ifftshift(x), norm="ortho"))``
over the last two dimensions, so ``F`` is unitary and k-space is centred (DC at ``(H // 2, W // 2)``).
The operator is complex: images and measurements are ``(B, 1, H, W)`` complex64 (complex128 after
``.to(torch.float64)``). Unsampled k-space entries of ``y`` are zero and ``A^T y = F^H (M y)``, so the
zero-filled reconstruction is ``A^T y``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from operators.base import LinearOperator
from operators.masks import MASKS
from operators.settings import Setting


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions (complex in, complex out)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: Tensor) -> Tensor:
    """Inverse of ``fft2c`` (and its adjoint, since both are unitary)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


class SingleCoilMRI(LinearOperator):
    """Single-coil Cartesian MRI with a column (phase-encode) mask.

    Args:
        image_size: H = W. Default 128.
        mask: explicit mask, 0/1 or bool, of shape ``(W,)`` (columns), ``(H, W)`` or ``(1, H, W)``.
            Overrides ``mask_type``, ``acceleration``, ``center_fraction`` and ``seed``. Default None.
        mask_type: a key of ``operators.masks.MASKS`` (``"random"``, ``"equispaced"``, ``"gaussian"``).
            Default ``"random"``.
        acceleration: nominal acceleration, >= 1. Default 4.
        center_fraction: fraction of central columns always kept. Default 0.08.
        seed: seed of the mask's own generator. Default 0.

    The mask is the buffer ``mask`` of shape ``(1, 1, W)`` (columns) or ``(1, H, W)``, real, 0/1.
    """

    SETTINGS = {
        "mask_type": Setting("str", choices=tuple(sorted(MASKS))),
        "acceleration": Setting("float", minimum=1),
        "center_fraction": Setting("float", minimum=0, maximum=1),
        "seed": Setting("int", minimum=0),
    }

    mask: Tensor  # (1, 1 or H, W) real, 0/1

    def __init__(
        self,
        image_size: int = 128,
        mask: Tensor | None = None,
        mask_type: str = "random",
        acceleration: float = 4,
        center_fraction: float = 0.08,
        seed: int = 0,
    ):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        n = image_size
        if mask is None:
            if mask_type not in MASKS:
                raise ValueError(f"unknown mask_type {mask_type!r}; known mask types: {sorted(MASKS)}")
            gen = torch.Generator(device="cpu").manual_seed(seed)
            mask = MASKS[mask_type](n, acceleration, center_fraction, gen)[None, None, :]  # (1, 1, W)
        else:
            mask = self._validated_mask(mask, n)
        super().__init__((1, n, n), (1, n, n), is_complex=True)
        self.image_size = n
        self.register_buffer("mask", mask.detach().to(torch.float32).clone())  # (1, 1 or H, W)

    @staticmethod
    def _validated_mask(mask: Tensor, n: int) -> Tensor:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.is_complex():
            raise ValueError(f"mask must be real (0/1 or bool), got dtype {mask.dtype}")
        shapes = {(n,): (1, 1, n), (n, n): (1, n, n), (1, n, n): (1, n, n)}
        if tuple(mask.shape) not in shapes:
            raise ValueError(
                f"mask must have shape ({n},), ({n}, {n}) or (1, {n}, {n}), got {tuple(mask.shape)}"
            )
        mask = mask.to(torch.float32)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask entries must be 0 or 1")
        return mask.reshape(shapes[tuple(mask.shape)])

    @property
    def acceleration(self) -> float:
        """Realised acceleration: number of k-space entries over the number sampled."""
        full = self.mask.expand(1, self.image_size, self.image_size)
        return float(full.numel() / full.sum().clamp_min(1))

    def _A(self, x: Tensor) -> Tensor:  # (B, 1, H, W) complex -> same
        return self.mask * fft2c(x)

    def _A_adjoint(self, y: Tensor) -> Tensor:  # (B, 1, H, W) complex -> same
        return ifft2c(self.mask * y)

    def classical(self, y: Tensor) -> Tensor:
        """Zero-filled reconstruction ``F^H M y`` (= ``A^T y``)."""
        return self.A_adjoint(y)
