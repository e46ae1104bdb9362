"""Reconstruction quality (PSNR, SSIM through torchmetrics) and a summary of DEQ solver statistics.

PSNR of one image is ``10 log10(R^2 / MSE)`` with R its data range; SSIM is torchmetrics' Gaussian
11x11 SSIM with constants ``(0.01 R)^2`` and ``(0.03 R)^2``. Both are computed image by image so that
every image has its own data range (torchmetrics takes one scalar per call), then averaged over the
batch. Complex images are the caller's business: `Task.to_metric_image` gives magnitudes, and MRI
uses the fastMRI convention R = max of the target magnitude (`Task.data_range`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

#: SSIM's Gaussian window (torchmetrics' default) and the smallest image it can score: the window is
#: padded by half its size on each side, which torch allows only for images larger than the padding.
SSIM_WINDOW = 11
MIN_IMAGE_SIZE = SSIM_WINDOW // 2 + 1


def _check_images(x_hat: torch.Tensor, x_true: torch.Tensor, data_range: torch.Tensor) -> None:
    if x_hat.is_complex() or x_true.is_complex():
        raise ValueError("psnr_ssim expects real images; convert complex ones with Task.to_metric_image")
    if x_true.ndim != 4:
        raise ValueError(f"psnr_ssim expects images of shape (B, C, H, W), got {tuple(x_true.shape)}")
    if x_hat.shape != x_true.shape:
        raise ValueError(f"x_hat shape {tuple(x_hat.shape)} differs from x_true shape {tuple(x_true.shape)}")
    if data_range.shape != (x_true.shape[0],):
        raise ValueError(
            f"data_range must have shape (B,) = ({x_true.shape[0]},), got {tuple(data_range.shape)}"
        )
    if not bool((data_range > 0).all()):
        raise ValueError(f"data_range must be positive, got {data_range.tolist()}")


@torch.no_grad()
def psnr_ssim(x_hat: torch.Tensor, x_true: torch.Tensor, data_range: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and mean SSIM of real images (B, C, H, W), image i with data range data_range[i].

    Identical images have PSNR = inf (MSE 0), so the mean is inf too; SSIM is then 1.
    Raises ValueError on complex input, a shape mismatch, or a data_range that is not positive (B,).
    """
    _check_images(x_hat, x_true, data_range)
    x_hat, x_true = x_hat.detach(), x_true.detach()
    # Imported here: torchmetrics' image functions load matplotlib, which a sweep's load-time checks
    # (reading this module's constants) must not.
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr_db, ssim = [], []
    for i, r in enumerate(data_range.detach().cpu().tolist()):
        pred, target = x_hat[i : i + 1], x_true[i : i + 1]  # (1, C, H, W)
        psnr_db.append(float(peak_signal_noise_ratio(pred, target, data_range=r)))
        ssim_i = structural_similarity_index_measure(pred, target, data_range=r, kernel_size=SSIM_WINDOW)
        ssim.append(float(ssim_i if isinstance(ssim_i, torch.Tensor) else ssim_i[0]))
    return sum(psnr_db) / len(psnr_db), sum(ssim) / len(ssim)


def _mean(value: Any) -> float:
    """Mean of an int, float or tensor of any shape, as a float."""
    return float(torch.as_tensor(value, dtype=torch.float64).mean())


def solver_summary(stats: Sequence[Any]) -> dict[str, float]:
    """Summarise DEQ solver statistics (duck-typed `models.deq.DEQStats` objects).

    Each item has ``forward`` and ``backward`` (None until backward ran) `SolverStats` with ``iters``,
    ``rel_residual (B,)`` and ``converged (B,) bool``. Returns ``fwd_iters_mean`` and
    ``bwd_iters_mean`` (means over the items that have them), ``final_residual_max`` (the worst
    forward relative residual ||f(z) - z|| / ||f(z)||, NaN if any sample's residual is NaN) and
    ``converged_frac`` (fraction of forward samples converged). Fields are NaN when there is nothing
    to summarise (feed-forward models return no stats; ``bwd_iters_mean`` without backward).
    """
    nan = math.nan
    forward = [s.forward for s in stats]
    backward = [s.backward for s in stats if s.backward is not None]
    if not forward:
        return {
            "fwd_iters_mean": nan,
            "bwd_iters_mean": nan,
            "final_residual_max": nan,
            "converged_frac": nan,
        }
    residuals = torch.cat([torch.as_tensor(f.rel_residual, dtype=torch.float64).reshape(-1) for f in forward])
    converged = torch.cat([torch.as_tensor(f.converged, dtype=torch.float64).reshape(-1) for f in forward])
    return {
        "fwd_iters_mean": sum(_mean(f.iters) for f in forward) / len(forward),
        "bwd_iters_mean": sum(_mean(b.iters) for b in backward) / len(backward) if backward else nan,
        "final_residual_max": float(residuals.max()) if residuals.numel() else nan,
        "converged_frac": float(converged.mean()) if converged.numel() else nan,
    }
