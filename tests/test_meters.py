"""Tests of bench/meters/timing.py, bench/meters/quality.py and bench/meters/environment.py
(known answers, no wall-clock asserts)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from bench.meters.environment import environment_stamp, git_sha
from bench.meters.quality import psnr_ssim, solver_summary
from bench.meters.timing import StepTimes, Stopwatch, step_time_stats, time_steps

# ---------------------------------------------------------------- timing


def test_step_time_stats_known_answer() -> None:
    times = [5.0, 1.0, 8.0, 3.0, 2.0, 7.0, 4.0, 6.0]
    stats = step_time_stats(times)
    assert stats.median_ms == 4.5
    assert stats.iqr_ms == pytest.approx(6.25 - 2.75)
    q1, q3 = np.percentile(times, [25, 75])  # numpy's default (linear) quartiles agree
    assert stats.iqr_ms == pytest.approx(q3 - q1)
    assert stats.step_ms == tuple(times)
    assert step_time_stats([7.0]) == StepTimes(step_ms=(7.0,), median_ms=7.0, iqr_ms=0.0)
    with pytest.raises(ValueError, match="at least one"):
        step_time_stats([])


def test_time_steps_with_a_fake_clock() -> None:
    readings = iter([10.0, 10.5, 20.0, 20.25, 30.0, 31.0])  # seconds: steps of 500, 250, 1000 ms
    calls = []
    stats = time_steps(
        lambda: calls.append(1), n_warmup=2, n_steps=3, device="cpu", clock=lambda: next(readings)
    )
    assert len(calls) == 5  # warm-up steps are run but not timed
    assert stats.step_ms == pytest.approx((500.0, 250.0, 1000.0))
    assert stats.median_ms == pytest.approx(500.0)
    assert stats.iqr_ms == pytest.approx(750.0 - 375.0)
    with pytest.raises(ValueError, match="n_steps"):
        time_steps(lambda: None, n_warmup=0, n_steps=0, device="cpu")


def test_stopwatch_with_a_fake_clock() -> None:
    readings = iter([100.0, 102.5])
    with Stopwatch("cpu", clock=lambda: next(readings)) as watch:
        pass
    assert watch.elapsed_s == 2.5


# ---------------------------------------------------------------- quality


def _images(seed: int, shape: tuple[int, ...] = (3, 1, 24, 24)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


def test_identical_images_give_ssim_one_and_infinite_psnr() -> None:
    x = _images(0)
    psnr_db, ssim = psnr_ssim(x, x.clone(), torch.ones(3))
    assert psnr_db == math.inf
    assert ssim == pytest.approx(1.0, abs=1e-6)


def test_known_mse_gives_known_psnr_per_image_range() -> None:
    x_true = torch.full((2, 1, 16, 16), 0.5)  # (B, C, H, W)
    sign = torch.ones(16, 16)
    sign[::2] = -1.0  # alternate rows: mean-zero error of magnitude eps everywhere
    eps = 0.05
    x_hat = x_true + eps * sign
    ranges = torch.tensor([1.0, 2.0])
    psnr_db, _ = psnr_ssim(x_hat, x_true, ranges)
    expected = [10 * math.log10(r**2 / eps**2) for r in (1.0, 2.0)]  # 26.02 dB and 32.04 dB
    assert psnr_db == pytest.approx(sum(expected) / 2, abs=1e-4)


def test_per_image_data_ranges_match_torchmetrics_psnr_and_scikit_image_ssim_per_image() -> None:
    x_true = _images(1) * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)
    x_hat = x_true + 0.05 * _images(2)
    ranges = x_true.amax(dim=(1, 2, 3))  # (B,) like the fastMRI convention
    psnr_db, ssim = psnr_ssim(x_hat, x_true, ranges)
    ref_psnr = [
        float(peak_signal_noise_ratio(x_hat[i : i + 1], x_true[i : i + 1], data_range=float(r)))
        for i, r in enumerate(ranges)
    ]
    ref_ssim = [
        structural_similarity(
            x_true[i, 0].double().numpy(), x_hat[i, 0].double().numpy(), data_range=float(r),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for i, r in enumerate(ranges)
    ]  # fmt: skip
    assert psnr_db == pytest.approx(np.mean(ref_psnr), rel=1e-6)
    assert ssim == pytest.approx(np.mean(ref_ssim), abs=1e-6)
    # ... and the ranges matter: one common range gives a different answer.
    psnr_common, _ = psnr_ssim(x_hat, x_true, torch.ones(3))
    assert abs(psnr_common - psnr_db) > 0.5


_SKIMAGE_KW = {
    "gaussian": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
    "fastmri": dict(win_size=7),  # fastMRI's evaluate.ssim: scikit-image's defaults
}


@pytest.mark.parametrize("convention", ["gaussian", "fastmri"])
def test_ssim_equals_direct_scikit_image_calls_on_fixed_images(convention: str) -> None:
    """A natural picture (scikit-image's camera, 64x64) and a noisy, blurred reconstruction of it."""
    from skimage import data
    from skimage.transform import resize

    x = torch.from_numpy(resize(data.camera() / 255.0, (64, 64), anti_aliasing=True))  # (H, W) float64
    noisy = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    rgb = torch.stack([x, x.flip(0), x.T])  # (3, H, W): a colour image, channels averaged
    rgb_hat = rgb + 0.03 * torch.randn(rgb.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    r = float(x.max()) if convention == "fastmri" else 1.0
    _, got = psnr_ssim(noisy[None, None], x[None, None], torch.tensor([r]), convention)
    want = structural_similarity(x.numpy(), noisy.numpy(), data_range=r, **_SKIMAGE_KW[convention])
    assert got == pytest.approx(want, abs=1e-6)
    _, got_rgb = psnr_ssim(rgb_hat[None], rgb[None], torch.tensor([r]), convention)
    want_rgb = structural_similarity(
        rgb.numpy(), rgb_hat.numpy(), data_range=r, channel_axis=0, **_SKIMAGE_KW[convention]
    )
    assert got_rgb == pytest.approx(want_rgb, abs=1e-6)
    # Not torchmetrics' SSIM (whole-image average with reflect padding): they differ at this size.
    pred, target = noisy[None, None].float(), x[None, None].float()
    tm = float(structural_similarity_index_measure(pred, target, data_range=r))
    assert abs(tm - got) > 1e-3


@pytest.mark.parametrize(("convention", "crop_px"), [("gaussian", 5), ("fastmri", 3)])
def test_ssim_closed_form_on_a_constant_offset_pair(convention: str, crop_px: int) -> None:
    """x a ramp, x_hat = x + c: equal local variances and covariance = variance, so the contrast-structure
    term is exactly 1; a symmetric window's local mean on a ramp is the centre pixel's value. SSIM is
    then the mean over the valid interior (the image less crop_px = half a window per side) of the
    luminance term (2 x (x + c) + C1) / (x^2 + (x + c)^2 + C1), C1 = (0.01 R)^2."""
    n, c, r = 32, 0.1, 1.0
    ramp = torch.linspace(0.1, 0.8, n, dtype=torch.float64)
    x = ramp[None, :] * 0.6 + ramp[:, None] * 0.3  # (H, W), linear in both directions
    c1 = (0.01 * r) ** 2
    interior = x[crop_px:-crop_px, crop_px:-crop_px]
    want = float(((2 * interior * (interior + c) + c1) / (interior**2 + (interior + c) ** 2 + c1)).mean())
    _, got = psnr_ssim((x + c)[None, None], x[None, None], torch.tensor([r]), convention)
    assert got == pytest.approx(want, abs=1e-6)
    # Constant images: the same formula with no variance at all.
    a = 0.4
    flat = torch.full((1, 1, 16, 16), a, dtype=torch.float64)
    _, got_flat = psnr_ssim(flat + c, flat, torch.tensor([r]), convention)
    assert got_flat == pytest.approx((2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1), abs=1e-9)


def test_each_task_names_a_known_ssim_convention() -> None:
    from bench.data.tasks import TASKS
    from bench.meters.quality import SSIM_CONVENTIONS

    assert {name: spec.ssim for name, spec in TASKS.items()} == {
        "deblur": "gaussian", "ct": "gaussian", "mri": "fastmri",
    }  # fmt: skip
    assert {spec.ssim for spec in TASKS.values()} <= set(SSIM_CONVENTIONS)


def test_psnr_ssim_rejects_bad_input() -> None:
    x = _images(3)
    with pytest.raises(ValueError, match="complex"):
        psnr_ssim(x.to(torch.complex64), x.to(torch.complex64), torch.ones(3))
    with pytest.raises(ValueError, match="differs"):
        psnr_ssim(x[:, :, :16], x, torch.ones(3))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        psnr_ssim(x, x, torch.ones(2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr_ssim(x[0], x[0], torch.ones(1))
    with pytest.raises(ValueError, match="positive"):
        psnr_ssim(x, x, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="at least 11x11"):
        psnr_ssim(x[..., :10, :10], x[..., :10, :10], torch.ones(3))
    with pytest.raises(KeyError, match="unknown SSIM convention 'matlab'"):
        psnr_ssim(x, x, torch.ones(3), "matlab")


def _stats(iters: int, residual: list[float], converged: list[bool]) -> SimpleNamespace:
    return SimpleNamespace(
        iters=iters, rel_residual=torch.tensor(residual), converged=torch.tensor(converged)
    )


def test_solver_summary_known_answer() -> None:
    stats = [
        SimpleNamespace(forward=_stats(10, [1e-3, 2e-2], [True, False]), backward=_stats(4, [1e-4], [True])),
        SimpleNamespace(forward=_stats(20, [5e-4, 1e-4], [True, True]), backward=None),
    ]
    summary = solver_summary(stats)
    assert summary["fwd_iters_mean"] == 15.0
    assert summary["bwd_iters_mean"] == 4.0
    assert summary["final_residual_max"] == pytest.approx(2e-2)
    assert summary["converged_frac"] == 0.75


def test_solver_summary_with_the_real_solver_stats() -> None:
    from models.solvers import SolverStats

    forward = SolverStats(
        iters=7, rel_residual=torch.tensor([0.1, float("nan")]), converged=torch.tensor([1, 0]).bool()
    )
    summary = solver_summary([SimpleNamespace(forward=forward, backward=None)])
    assert summary["fwd_iters_mean"] == 7.0
    assert math.isnan(summary["bwd_iters_mean"])
    assert math.isnan(summary["final_residual_max"])  # a NaN residual (diverged sample) is not hidden
    assert summary["converged_frac"] == 0.5


def test_solver_summary_without_stats_is_nan() -> None:
    summary = solver_summary([])
    assert set(summary) == {"fwd_iters_mean", "bwd_iters_mean", "final_residual_max", "converged_frac"}
    assert all(math.isnan(v) for v in summary.values())


# ---------------------------------------------------------------- environment


def test_environment_stamp() -> None:
    stamp = environment_stamp("cpu")
    assert set(stamp) == {
        "git_sha",
        "torch_version",
        "cuda_version",
        "device",
        "python_version",
        "hostname",
        "timestamp",
    }
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", stamp["git_sha"])
    assert stamp["git_sha"] == git_sha()
    assert stamp["torch_version"] == torch.__version__
    assert stamp["cuda_version"] == (torch.version.cuda or "none")
    assert stamp["device"]
    when = datetime.fromisoformat(stamp["timestamp"])
    assert when.utcoffset() == timedelta(0)


def test_git_sha_unknown_outside_a_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import bench.meters.environment as envinfo

    monkeypatch.setattr(envinfo, "_PACKAGE_DIR", tmp_path)  # not a git checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_sha() == "unknown"
