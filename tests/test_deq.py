"""DEQ wrapper: every backward mode against an independent reference, gradcheck, saved-tensor memory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from models.deq import BACKWARD_MODES, DEQConfig, DEQStats, deq_solve
from models.solvers import SOLVERS, relative_residual

DT = torch.float64
TIGHT = {"tol": 1e-14, "max_iter": 300, "bwd_tol": 1e-14, "bwd_max_iter": 300}


class TanhCell:
    """``f(z, v) = tanh(z W^T + v U^T + b)`` with ``||W||_2 = rho < 1`` (a contraction in ``z``)."""

    def __init__(self, batch: int = 3, n: int = 6, p: int = 4, rho: float = 0.6, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n, n, generator=g, dtype=DT)
        self.W = (rho * W / torch.linalg.matrix_norm(W, ord=2)).requires_grad_()  # (n, n)
        self.U = torch.randn(n, p, generator=g, dtype=DT).requires_grad_()  # (n, p)
        self.b = torch.randn(n, generator=g, dtype=DT).requires_grad_()  # (n,)
        self.v = torch.randn(batch, p, generator=g, dtype=DT).requires_grad_()  # (B, p) injected input
        self.c = torch.randn(batch, n, generator=g, dtype=DT)  # (B, n) loss weights
        self.z0 = torch.zeros(batch, n, dtype=DT)

    def __call__(self, z: Tensor, v: Tensor) -> Tensor:
        return torch.tanh(z @ self.W.T + v @ self.U.T + self.b)

    @property
    def params(self) -> list[Tensor]:
        return [self.W, self.U, self.b]


class ConvCell(nn.Module):
    """A tiny convolutional cell ``tanh(conv_z(z) + conv_v(v))``; sum |conv_z weights| = 0.5 < 1."""

    def __init__(self, channels: int = 2, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv_z = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(DT)
        self.conv_v = nn.Conv2d(channels, channels, 3, padding=1).to(DT)
        with torch.no_grad():
            w = torch.randn(self.conv_z.weight.shape, generator=g, dtype=DT)
            self.conv_z.weight.copy_(0.5 * w / w.abs().sum())  # ||conv_z||_2 <= sum |w| = 0.5
            for p in self.conv_v.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT))

    def forward(self, z: Tensor, v: Tensor) -> Tensor:
        return torch.tanh(self.conv_z(z) + self.conv_v(v))  # (B, C, H, W)


def grads_of(
    f: Callable[..., Tensor], z0: Tensor, v: Tensor, params: list[Tensor], c: Tensor, cfg: DEQConfig
) -> tuple[Tensor, DEQStats, list[Tensor]]:
    """``(z, stats, [dL/dv, dL/dparams...])`` for the loss ``L = <c, z>``."""
    z, stats = deq_solve(f, z0, (v,), params, cfg)
    grads = torch.autograd.grad((z * c).sum(), [v, *params])
    return z, stats, list(grads)


def max_rel_err(got: list[Tensor], want: list[Tensor]) -> float:
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, want, strict=True))


def unrolled_reference(f, z0, v, params, c) -> list[Tensor]:
    """Backprop through plain fixed-point iteration run to a relative residual of ~1e-15."""
    cfg = DEQConfig(solver="fixed_point", tol=1e-15, max_iter=1000, backward="unrolled")
    z, stats, grads = grads_of(f, z0, v, params, c, cfg)
    assert bool(stats.forward.converged.all())
    return grads


@pytest.mark.parametrize("mode", ["ift", "ift_hook"])
@pytest.mark.parametrize("bwd_solver", sorted(SOLVERS))
def test_implicit_gradient_matches_unrolled(mode: str, bwd_solver: str) -> None:
    cell = TanhCell()
    ref = unrolled_reference(cell, cell.z0, cell.v, cell.params, cell.c)
    cfg = DEQConfig(backward=mode, bwd_solver=bwd_solver, **TIGHT)
    _, stats, grads = grads_of(cell, cell.z0, cell.v, cell.params, cell.c, cfg)
    assert stats.backward is not None and bool(stats.backward.converged.all())
    assert max_rel_err(grads, ref) <= 1e-8


@pytest.mark.parametrize("mode", ["ift", "ift_hook"])
def test_implicit_gradient_matches_unrolled_for_a_conv_module(mode: str) -> None:
    cell = ConvCell()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 2, 5, 5, generator=g, dtype=DT).requires_grad_()  # (B, C, H, W)
    c = torch.randn(2, 2, 5, 5, generator=g, dtype=DT)
    z0 = torch.zeros_like(v)
    params = list(cell.parameters())
    ref = unrolled_reference(cell, z0, v, params, c)
    _, _, grads = grads_of(cell, z0, v, params, c, DEQConfig(backward=mode, **TIGHT))
    assert max_rel_err(grads, ref) <= 1e-8


def test_ift_gradient_reaches_params_when_inputs_need_none() -> None:
    cell = TanhCell()
    ref = unrolled_reference(cell, cell.z0, cell.v, cell.params, cell.c)[1:]
    z, _ = deq_solve(cell, cell.z0, (cell.v.detach(),), cell.params, DEQConfig(backward="ift", **TIGHT))
    grads = torch.autograd.grad((z * cell.c).sum(), cell.params)
    assert max_rel_err(list(grads), ref) <= 1e-8


def test_jfb_equals_the_one_step_gradient() -> None:
    cell = TanhCell()
    z, stats, grads = grads_of(cell, cell.z0, cell.v, cell.params, cell.c, DEQConfig(backward="jfb"))
    one_step = cell(z.detach(), cell.v)
    want = torch.autograd.grad((one_step * cell.c).sum(), [cell.v, *cell.params])
    assert max_rel_err(grads, list(want)) <= 1e-12
    assert stats.backward is None  # no backward solve
    # ... and it is only an approximation of the true gradient here (the cell depends on z).
    assert max_rel_err(grads, unrolled_reference(cell, cell.z0, cell.v, cell.params, cell.c)) > 1e-2


def test_phantom_equals_explicit_damped_steps() -> None:
    cell = TanhCell()
    cfg = DEQConfig(backward="phantom", phantom_steps=4, phantom_damping=0.7, tol=1e-6)
    z, stats, grads = grads_of(cell, cell.z0, cell.v, cell.params, cell.c, cfg)
    z_star, _ = deq_solve(cell, cell.z0, (cell.v,), cell.params, DEQConfig(backward="jfb", tol=1e-6))
    x, d = z_star.detach(), 0.7
    for _ in range(4):
        x = (1 - d) * x + d * cell(x, cell.v)
    want = torch.autograd.grad((x * cell.c).sum(), [cell.v, *cell.params])
    torch.testing.assert_close(z, x, rtol=0, atol=0)
    assert max_rel_err(grads, list(want)) <= 1e-12


def test_forward_values_of_the_modes() -> None:
    """ift and jfb return the solver output itself; ift_hook returns one more application of f."""
    cell = TanhCell()
    cfg = DEQConfig(tol=1e-6)
    outs = {
        m: deq_solve(cell, cell.z0, (cell.v,), cell.params, DEQConfig(backward=m, tol=1e-6))
        for m in BACKWARD_MODES
    }
    z_ift, stats = outs["ift"]
    assert torch.equal(z_ift, outs["jfb"][0]) and torch.equal(z_ift, outs["unrolled"][0].detach())
    torch.testing.assert_close(outs["ift_hook"][0], cell(z_ift, cell.v), rtol=0, atol=0)
    # The forward stats describe the returned z*.
    torch.testing.assert_close(stats.forward.rel_residual, relative_residual(cell(z_ift, cell.v), z_ift))
    assert bool((stats.forward.rel_residual <= cfg.tol).all())
    with torch.no_grad():  # evaluation: no graph, same values
        z_eval, _ = deq_solve(cell, cell.z0, (cell.v,), cell.params, cfg)
    assert not z_eval.requires_grad and torch.equal(z_eval, z_ift)


@pytest.mark.parametrize("mode", ["ift", "ift_hook"])
def test_backward_stats_are_filled_when_backward_runs(mode: str) -> None:
    cell = TanhCell()
    z, stats = deq_solve(cell, cell.z0, (cell.v,), cell.params, DEQConfig(backward=mode, bwd_tol=1e-8))
    assert stats.backward is None and stats.forward.iters >= 2
    (z * cell.c).sum().backward()
    assert stats.backward is not None
    assert bool(stats.backward.converged.all()) and bool((stats.backward.rel_residual <= 1e-8).all())


def test_gradcheck_ift_function() -> None:
    """Finite differences of the whole solve agree with the implicit gradient (float64)."""
    cell = TanhCell(batch=2, n=4, p=3)
    cfg = DEQConfig(backward="ift", **TIGHT)

    def fn(v: Tensor, W: Tensor, U: Tensor, b: Tensor) -> Tensor:  # gradcheck perturbs W, U, b in place
        return deq_solve(cell, cell.z0, (v,), [W, U, b], cfg)[0]

    assert torch.autograd.gradcheck(fn, (cell.v, *cell.params), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_jfb_function() -> None:
    """JFB is exact when f does not depend on z (J = 0), and only an approximation when it does."""
    cell = TanhCell(batch=2, n=4, p=3)
    cfg = DEQConfig(backward="jfb", **TIGHT)

    def fn(v: Tensor, W: Tensor, U: Tensor, b: Tensor) -> Tensor:
        return deq_solve(cell, cell.z0, (v,), [W, U, b], cfg)[0]

    ins = (cell.v, *cell.params)
    assert not torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-7, rtol=1e-6, raise_exception=False)
    with torch.no_grad():
        cell.W.zero_()
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-7, rtol=1e-6)


def saved_bytes(run: Callable[[], tuple[Tensor, DEQStats]], exclude: list[Tensor]) -> tuple[int, DEQStats]:
    """Bytes of the distinct storages saved for backward while ``run`` builds its graph.

    Counts every tensor packed through ``saved_tensors_hooks`` (autograd's saved tensors and the
    tensors of ``ctx.save_for_backward``), except the storages of ``exclude`` (the parameters, alive
    anyway).
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, stats = run()
    del z
    return sum(storages.values()), stats


def test_saved_bytes_per_mode() -> None:
    cell = TanhCell(batch=4, n=64, p=8)
    z_bytes, v_bytes = cell.z0.nbytes, cell.v.nbytes
    saved: dict[tuple[str, int], int] = {}
    for mode in ("ift", "jfb", "ift_hook", "unrolled"):
        for iters in (5, 40):
            cfg = DEQConfig(backward=mode, tol=1e-300, max_iter=iters)  # run exactly `iters` iterations

            def run(cfg: DEQConfig = cfg) -> tuple[Tensor, DEQStats]:
                return deq_solve(cell, cell.z0, (cell.v,), cell.params, cfg)

            saved[mode, iters], stats = saved_bytes(run, exclude=cell.params)
            assert stats.forward.iters == iters
    for mode in ("ift", "jfb"):  # z* and the input only, whatever the number of iterations
        assert saved[mode, 5] == saved[mode, 40] <= z_bytes + v_bytes
        assert saved[mode, 5] >= z_bytes
    assert saved["ift_hook", 5] == saved["ift_hook", 40] >= saved["ift", 5] + 2 * z_bytes  # two graphs
    assert saved["unrolled", 40] > 4 * saved["unrolled", 5] > 4 * saved["ift_hook", 5]


def test_config_validation_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="ift_hook") as err:
        DEQConfig(backward="implicit")
    assert all(m in str(err.value) for m in BACKWARD_MODES)
    with pytest.raises(ValueError, match="anderson"):
        DEQConfig(solver="newton")
    with pytest.raises(ValueError, match="fixed_point"):
        DEQConfig(bwd_solver="newton")
    with pytest.raises(ValueError, match="tol"):
        DEQConfig(tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        DEQConfig(max_iter=0)
    with pytest.raises(ValueError, match="phantom_damping"):
        DEQConfig(phantom_damping=1.5)
    cell = TanhCell()
    with pytest.raises(TypeError, match="DEQConfig"):
        deq_solve(cell, cell.z0, (cell.v,), cell.params, {"backward": "ift"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inputs"):
        deq_solve(cell, cell.z0, (cell.v, 3.0), cell.params, DEQConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["ift", "ift_hook", "jfb", "unrolled"])
def test_cell_that_ignores_z_gets_the_exact_gradient(mode: str) -> None:
    """If f(z, v) = h(v), then z* = h(v) and every exact mode must give dh/dU (J = 0 in the adjoint)."""
    g = torch.Generator().manual_seed(3)
    U = torch.randn(3, 2, generator=g, dtype=DT).requires_grad_()
    v = torch.randn(4, 2, generator=g, dtype=DT)

    def f(z: Tensor, v: Tensor) -> Tensor:
        return torch.tanh(v @ U.T)

    z, _ = deq_solve(f, torch.zeros(4, 3, dtype=DT), (v,), [U], DEQConfig(backward=mode))
    (grad,) = torch.autograd.grad(z.sum(), U)
    (want,) = torch.autograd.grad(torch.tanh(v @ U.T).sum(), U)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=0.0)
