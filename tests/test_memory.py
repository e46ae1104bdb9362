"""Tests of bench/meters/memory.py: exact byte counts of the live-storage tracker and the other
meters (CPU)."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bench.meters.allocator import cuda_step_peak
from bench.meters.memory import (
    LiveStorageTracker,
    MemoryReport,
    grad_bytes,
    measure_step_memory,
    module_bytes,
    optimizer_state_bytes,
    saved_tensor_bytes,
    tensor_bytes,
)
from bench.meters.nvml import nvml_info

F32 = 4  # bytes per float32


# ---------------------------------------------------------------- explicit allocations: exact answers


def test_peak_and_live_bytes_of_explicit_allocations() -> None:
    with LiveStorageTracker() as tracker:
        a = torch.empty(1000)
        b = torch.empty(2000)
        del a
        c = torch.empty(500)
    assert tracker.peak_bytes == (1000 + 2000) * F32
    assert tracker.live_bytes == (2000 + 500) * F32
    del b, c
    assert tracker.live_bytes == 0  # frees are heard after exit, at once (no gc needed)


def test_reset_peak_restarts_from_live_bytes() -> None:
    with LiveStorageTracker() as tracker:
        big = torch.empty(5000)
        del big
        tracker.reset_peak()
        small = torch.empty(100)
    assert tracker.peak_bytes == 100 * F32
    del small


def test_views_count_once_and_older_storages_never() -> None:
    outside = torch.zeros(300)
    with LiveStorageTracker() as tracker:
        a = torch.zeros(1000)
        views = [
            a[::2],
            a.view(10, 100).t(),
            a.detach(),
            a.unsqueeze(0),
            torch.view_as_complex(a.view(500, 2)),
        ]
        older = [outside[1:], outside.detach(), outside.view(3, 100)]
        outside.add_(1.0)  # in place on an older storage: nothing created
        torch.mul(outside, 2.0, out=outside)
    assert tracker.peak_bytes == 1000 * F32
    assert tracker.live_bytes == 1000 * F32
    del views, older


def test_torch_tensor_literal_is_counted() -> None:
    with LiveStorageTracker() as tracker:
        t = torch.tensor([1.0, 2.0, 3.0])  # data built outside the dispatcher, then `lift_fresh`
    assert tracker.live_bytes == 3 * F32
    del t


def test_in_place_resize_is_followed() -> None:
    with LiveStorageTracker() as tracker:
        a = torch.empty(10)
        a.resize_(1000)
    assert tracker.live_bytes == 1000 * F32
    del a


@pytest.mark.filterwarnings("ignore::UserWarning")  # sparse CSR is "beta"
def test_complex_sparse_and_meta_tensors() -> None:
    n = 1000
    with LiveStorageTracker() as tracker:
        z = torch.zeros(n, dtype=torch.complex64)  # 8 bytes per element
        zr = torch.view_as_real(z)  # a view: nothing new
        crow = torch.tensor([0, 1, 2, 3])
        col = torch.tensor([2, 0, 1])
        values = torch.ones(3)
        csr = torch.sparse_csr_tensor(crow, col, values, size=(3, 3))  # aliases its three parts
        before_matmul = tracker.live_bytes
        product = csr @ torch.ones(3, 5)  # sparse x dense: a (3, 5) float32 output is new
        meta = torch.empty(10**9, device="meta")  # no memory
        meta2 = meta * 2
    assert before_matmul == 8 * n + tensor_bytes(csr)
    assert tensor_bytes(csr) == 4 * 8 + 3 * 8 + 3 * F32
    assert tracker.live_bytes == before_matmul + 15 * F32
    assert tracker.skipped_tensors == 0
    del z, zr, csr, crow, col, values, product, meta, meta2


def test_no_strong_references_and_per_instance_state() -> None:
    with LiveStorageTracker() as first:
        kept = torch.empty(1000)
    storage_ref = weakref.ref(kept.untyped_storage())
    with LiveStorageTracker() as second:
        other = torch.empty(10)
        del kept  # the first tracker's callback fires while the second is active
        assert storage_ref() is None  # the tracker kept nothing alive
    assert first.live_bytes == 0
    assert first.peak_bytes == 1000 * F32
    assert second.live_bytes == 10 * F32  # untouched by the first tracker's callback
    assert second.peak_bytes == 10 * F32
    del other


def test_nested_trackers_both_count() -> None:
    with LiveStorageTracker() as outer:
        a = torch.empty(100)
        with LiveStorageTracker() as inner:
            b = torch.empty(200)
    assert inner.peak_bytes == 200 * F32
    assert outer.peak_bytes == 300 * F32
    del a, b


# ---------------------------------------------------------------- autograd: temporaries, hooks, Functions


def test_temporary_buffer_counted_but_missed_by_saved_tensor_bytes() -> None:
    w = torch.ones(16, requires_grad=True)
    n_tmp = 2 * 1024 * 1024  # an 8 MB temporary, freed inside the step

    def step() -> None:
        tmp = torch.ones(n_tmp)
        scale = tmp.sum()
        del tmp
        (w * scale).sum().backward()

    with LiveStorageTracker() as tracker:
        _, saved = saved_tensor_bytes(step)
    assert tracker.peak_bytes >= n_tmp * F32
    assert saved < 1024  # only the scalar `scale` (and maybe `w`) are saved
    w.grad = None


def test_saved_tensor_bytes_known_answer() -> None:
    x = torch.randn(1000, requires_grad=True)
    y, saved = saved_tensor_bytes(lambda: x.sin() + x.cos())  # both save x: counted once
    assert saved == 1000 * F32
    z, saved_exp = saved_tensor_bytes(lambda: x.exp())  # saves its output
    assert saved_exp == 1000 * F32
    del y, z


def test_saved_tensor_bytes_is_a_peak_of_live_saved_storages() -> None:
    """Graphs built and freed one after another (as the implicit backward rebuilds one cell graph per
    LU step) count as one graph, not as their sum; graphs kept alive together add up."""
    x = torch.randn(1000, requires_grad=True)

    def one_at_a_time() -> None:
        for _ in range(3):
            (x * 2).exp().sum().backward()  # saves exp's 1000-float output, freed by backward

    def all_kept() -> list[torch.Tensor]:
        return [(x * 2).exp() for _ in range(3)]  # three saved outputs alive together

    _, sequential = saved_tensor_bytes(one_at_a_time)
    kept, together = saved_tensor_bytes(all_kept)
    assert sequential == 1000 * F32
    assert together == 3 * 1000 * F32
    del kept
    x.grad = None


def test_tensor_hook_allocation_counted_exactly() -> None:
    n = 1000
    x = torch.randn(n, requires_grad=True)

    def tracked_peak(with_hook: bool) -> int:
        with LiveStorageTracker() as tracker:
            y = x * 3.0
            if with_hook:
                y.register_hook(lambda g: g.clone())
            y.sum().backward()
        x.grad = None
        return tracker.peak_bytes

    assert tracked_peak(True) - tracked_peak(False) == n * F32


class _ImplicitTanh(torch.autograd.Function):
    """z = tanh(w * z + x) solved by iteration; backward solves the adjoint equation with autograd.grad."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = torch.zeros_like(x)
        for _ in range(30):
            z = torch.tanh(w * z + x)
        ctx.save_for_backward(z, x, w)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        z, x, w = ctx.saved_tensors
        with torch.enable_grad():
            z0, x0, w0 = z.detach().requires_grad_(), x.detach().requires_grad_(), w.detach().requires_grad_()
            fz = torch.tanh(w0 * z0 + x0)
            v = grad
            for _ in range(10):  # v = grad + J^T v
                v = torch.autograd.grad(fz, z0, v, retain_graph=True)[0] + grad
            grad_x, grad_w = torch.autograd.grad(fz, (x0, w0), v)
        return grad_x, grad_w


def test_custom_function_with_autograd_grad_in_backward() -> None:
    n = 16 * 1024
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen, requires_grad=True)
    w = torch.full((n,), 0.3, requires_grad=True)

    def step() -> None:
        _ImplicitTanh.apply(x, w).square().sum().backward()

    with LiveStorageTracker() as tracker:
        step()
    # The adjoint solve holds at least z (saved), fz, its graph's tanh output and v at once.
    assert tracker.peak_bytes >= 4 * n * F32
    # Everything created in the nested backward was freed; only the two gradients remain.
    assert tracker.live_bytes == tensor_bytes(x.grad) + tensor_bytes(w.grad) == 2 * n * F32
    # The same check against autograd's own gradient of the unrolled solve.
    z = torch.zeros_like(x)
    for _ in range(60):
        z = torch.tanh(w * z + x)
    reference = torch.autograd.grad(z.square().sum(), x)[0]
    torch.testing.assert_close(x.grad, reference, rtol=1e-3, atol=1e-5)


def test_adam_foreach_step_allocations_counted() -> None:
    lin = nn.Linear(100, 50)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, foreach=True)
    for _ in range(2):
        lin(torch.ones(4, 100)).square().mean().backward()
        with LiveStorageTracker() as tracker:
            opt.step()
        opt.zero_grad(set_to_none=True)
    # A warm foreach step allocates at least one temporary of the size of all parameters.
    assert tracker.peak_bytes >= module_bytes(lin)


# ---------------------------------------------------------------- a toy loop-unrolled network


_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16.0).view(1, 1, 3, 3)


def _blur(x: torch.Tensor) -> torch.Tensor:  # symmetric kernel, circular boundary: A^T = A
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), _KERNEL)


class _ToyLU(nn.Module):
    """K steps x <- z + R_k(z), z = x - 0.5 A^T(Ax - y), R_k a 3-layer CNN (optionally checkpointed)."""

    def __init__(self, n_iters: int, width: int = 8, checkpointed: bool = False) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.regs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 1, 3, padding=1),
            )
            for _ in range(n_iters)
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W)
        x = _blur(y)
        for reg in self.regs:
            z = x - 0.5 * _blur(_blur(x) - y)
            x = z + (checkpoint(reg, z, use_reentrant=False) if self.checkpointed else reg(z))
        return x


def _warm_toy_step(n_iters: int, checkpointed: bool) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    x_true = torch.rand(2, 1, 16, 16, generator=gen)  # (B, C, H, W)
    y = _blur(x_true)
    net = _ToyLU(n_iters, checkpointed=checkpointed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True)

    def step() -> None:
        F.mse_loss(net(y), x_true).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: creates the optimiser state
    return step


def test_toy_lu_peak_exactly_linear_in_k_and_flatter_when_checkpointed() -> None:
    # K starts at 2: in the first iteration nothing upstream needs a gradient, so the data-consistency
    # step saves nothing and K=1 sits 2 KB (one image) below the line through K >= 2.
    ks = (2, 3, 4)
    slopes = {}
    for checkpointed in (False, True):
        steps = [_warm_toy_step(k, checkpointed) for k in ks]
        peaks = [measure_step_memory(step, device="cpu", measure_saved=False) for step in steps]
        bytes_ = [p.tracked_peak_bytes for p in peaks]
        slope = (bytes_[1] - bytes_[0]) // (ks[1] - ks[0])
        assert bytes_[2] - bytes_[1] == slope * (ks[2] - ks[1])  # exactly linear
        assert all(p.cuda_peak_bytes is None and p.cuda_reserved_bytes is None for p in peaks)
        slopes[checkpointed] = slope
    assert slopes[False] > 0
    assert 0 < slopes[True] < 0.25 * slopes[False]


def test_tracked_peak_deterministic_and_unchanged_by_saved_hooks() -> None:
    step = _warm_toy_step(3, checkpointed=True)
    first = measure_step_memory(step, device="cpu")
    second = measure_step_memory(step, device="cpu")
    without_saved = measure_step_memory(step, device="cpu", measure_saved=False)
    assert first == second
    assert without_saved.saved_bytes is None
    assert without_saved.tracked_peak_bytes == first.tracked_peak_bytes
    assert first.saved_bytes is not None and 0 < first.saved_bytes < first.tracked_peak_bytes


def test_measure_step_memory_equals_a_bare_tracker() -> None:
    step = _warm_toy_step(2, checkpointed=False)
    with LiveStorageTracker() as tracker:
        step()
    report = measure_step_memory(step, device=torch.device("cpu"))
    assert isinstance(report, MemoryReport)
    assert (report.tracked_peak_bytes, report.cuda_peak_bytes, report.cuda_reserved_bytes) == (
        tracker.peak_bytes, None, None,
    )  # fmt: skip
    assert report.steady_peak_bytes == tracker.peak_bytes and report.leaked_bytes == 0


# ---------------------------------------------------------------- static byte counts


def test_module_grad_optimizer_and_tensor_bytes() -> None:
    lin = nn.Linear(10, 5)
    lin.register_buffer("scale", torch.ones(3, dtype=torch.float64))
    assert module_bytes(lin) == (10 * 5 + 5) * F32 + 3 * 8
    assert grad_bytes(lin.parameters()) == 0
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(torch.ones(2, 10)).sum().backward()
    assert grad_bytes(lin.parameters()) == 55 * F32
    opt.step()
    step_bytes = sum(tensor_bytes(s["step"]) for s in opt.state.values())
    assert optimizer_state_bytes(opt) == 2 * 55 * F32 + step_bytes  # exp_avg, exp_avg_sq, step
    assert tensor_bytes(torch.zeros(4, 4, dtype=torch.complex128)) == 16 * 16
    assert tensor_bytes(torch.empty(7, 3, device="meta")) == 21 * F32
    coo = torch.eye(4).to_sparse()
    assert tensor_bytes(coo) == 2 * 4 * 8 + 4 * F32  # (2, nnz) int64 indices + values


# ---------------------------------------------------------------- CUDA and NVML without a GPU


def test_cuda_step_peak_is_none_off_cuda() -> None:
    calls = []
    assert cuda_step_peak(lambda: calls.append(1), "cpu") is None
    if not torch.cuda.is_available():
        assert cuda_step_peak(lambda: calls.append(1), "cuda") is None
    assert calls == []  # fn is not run when nothing can be measured


def test_nvml_info_never_raises() -> None:
    info = nvml_info()
    assert info["status"] in {"ok", "unavailable"}
    if info["status"] == "ok":
        assert info["total_bytes"] > 0 and isinstance(info["name"], str)
    else:
        assert isinstance(info["reason"], str) and info["reason"]


def test_nvml_info_unavailable_when_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml  # nvidia-ml-py is a runtime dependency: a missing install must fail, not skip

    def fail() -> None:
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    info = nvml_info(0)
    assert info["status"] == "unavailable"
    assert "nvmlInit" in info["reason"]


def test_nvml_info_unavailable_without_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    info = nvml_info()
    assert info == {"status": "unavailable", "reason": info["reason"]}
    assert "nvidia-ml-py" in info["reason"]
