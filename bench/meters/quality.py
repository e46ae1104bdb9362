"""Reconstruction quality (PSNR, and SSIM by the field's conventions) and a summary of DEQ solver statistics.

PSNR of one image is ``10 log10(R^2 / MSE)`` with R its data range (torchmetrics; equal to
scikit-image's). SSIM is scikit-image's ``structural_similarity``, the implementation papers quote,
averaged over the valid interior of the image (windows that fit inside it; no padding), with one of
the conventions in `SSIM_CONVENTIONS`:

- ``"gaussian"`` (Wang et al. 2004, MATLAB's ``ssim``; deblurring and CT): Gaussian weights with
  sigma 1.5 (an 11x11 window), population covariances (``use_sample_covariance=False``), K1 0.01,
  K2 0.03, R the task's data range;
- ``"fastmri"`` (fastMRI's ``evaluate.ssim``): scikit-image's defaults, a 7x7 uniform window with
  sample covariances, K1 0.01, K2 0.03, R the target's maximum. fastMRI reports it per volume (R the
  volume's maximum, SSIM averaged over its slices); here every slice is its own image, with its own
  maximum.

Both are computed image by image (every image has its own data range), channels averaged, then
averaged over the batch. Complex images are the caller's business: `Task.to_metric_image` gives
magnitudes, and MRI uses R = max of the target magnitude (`Task.data_range`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

#: SSIM convention name -> keyword arguments of ``skimage.metrics.structural_similarity`` (besides
#: ``data_range``), see the module docstring.
SSIM_CONVENTIONS: dict[str, dict[str, Any]] = {
    "gaussian": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03),
    "fastmri": dict(win_size=7, gaussian_weights=False, use_sample_covariance=True, K1=0.01, K2=0.03),
}


def ssim_window_px(convention: str) -> int:
    """Side of the SSIM window of `convention` in pixels (images must be at least this large)."""
    kw = SSIM_CONVENTIONS[convention]
    if kw.get("gaussian_weights"):
        return 2 * int(3.5 * kw["sigma"] + 0.5) + 1  # scikit-image's truncate=3.5
    return int(kw["win_size"])


def ssim(x_hat: np.ndarray, x_true: np.ndarray, data_range: float, convention: str) -> float:
    """SSIM of one image ``(C, H, W)`` (float64 arrays) by `convention`, averaged over channels."""
    kw = SSIM_CONVENTIONS[convention]
    if x_true.shape[0] == 1:
        return float(structural_similarity(x_true[0], x_hat[0], data_range=data_range, **kw))
    return float(structural_similarity(x_true, x_hat, data_range=data_range, channel_axis=0, **kw))


def _check_images(
    x_hat: torch.Tensor, x_true: torch.Tensor, data_range: torch.Tensor, convention: str
) -> None:
    if convention not in SSIM_CONVENTIONS:
        raise KeyError(f"unknown SSIM convention {convention!r}; known: {sorted(SSIM_CONVENTIONS)}")
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
    window = ssim_window_px(convention)
    if min(x_true.shape[-2:]) < window:
        raise ValueError(
            f"SSIM ({convention}) needs images of at least {window}x{window} pixels, "
            f"got {tuple(x_true.shape[-2:])}"
        )


@torch.no_grad()
def psnr_ssim(
    x_hat: torch.Tensor, x_true: torch.Tensor, data_range: torch.Tensor, ssim_convention: str = "gaussian"
) -> tuple[float, float]:
    """Mean PSNR (dB) and mean SSIM of real images (B, C, H, W), image i with data range data_range[i].

    `ssim_convention` is a key of `SSIM_CONVENTIONS` (the task's, `TaskSpec.ssim`). Identical images
    have PSNR = inf (MSE 0), so the mean is inf too; SSIM is then 1. Raises ValueError on complex
    input, a shape mismatch, a data_range that is not positive (B,) or images smaller than the SSIM
    window; KeyError on an unknown convention.
    """
    _check_images(x_hat, x_true, data_range, ssim_convention)
    x_hat, x_true = x_hat.detach(), x_true.detach()
    hat64 = x_hat.to("cpu", torch.float64).numpy()  # (B, C, H, W)
    true64 = x_true.to("cpu", torch.float64).numpy()
    # Imported here: torchmetrics' image functions load matplotlib, which a sweep's load-time checks
    # (reading this module's SSIM windows) must not.
    from torchmetrics.functional.image import peak_signal_noise_ratio

    psnr_db, ssims = [], []
    for i, r in enumerate(data_range.detach().cpu().tolist()):
        pred, target = x_hat[i : i + 1], x_true[i : i + 1]  # (1, C, H, W)
        psnr_db.append(float(peak_signal_noise_ratio(pred, target, data_range=r)))
        ssims.append(ssim(hat64[i], true64[i], float(r), ssim_convention))
    return sum(psnr_db) / len(psnr_db), sum(ssims) / len(ssims)


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
