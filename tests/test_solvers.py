"""Fixed-point solvers: known answers, iteration counts, truthful statistics, freezing, NaN handling."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from models.solvers import SOLVERS, SolverStats, anderson, fixed_point, relative_residual, solve

DT = torch.float64
ALL = sorted(SOLVERS)


def affine_problem(batch: int = 4, n: int = 32, rho: float = 0.9, seed: int = 0):
    """``f(z) = W z + b`` per sample with symmetric ``W`` of spectral norm ``rho`` (attained).

    Returns ``(f, W, b, z_star)`` with ``z_star = (I - W)^{-1} b`` from ``torch.linalg.solve``.
    """
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=DT))[0]  # (B, n, n)
    eig = (torch.rand(batch, n, generator=g, dtype=DT) * 2 - 1) * rho  # (B, n)
    eig[:, 0] = rho
    W = Q @ torch.diag_embed(eig) @ Q.transpose(1, 2)  # (B, n, n)
    b = torch.randn(batch, n, generator=g, dtype=DT)  # (B, n)
    z_star = torch.linalg.solve(torch.eye(n, dtype=DT) - W, b)  # (B, n)

    def f(z: Tensor) -> Tensor:
        return (W @ z[..., None])[..., 0] + b

    return f, W, b, z_star


def rel_err(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a - b, dim=-1) / torch.linalg.vector_norm(b, dim=-1)


def assert_truthful(f, z: Tensor, stats: SolverStats, tol: float) -> None:
    """The reported residuals are those of the returned iterate, and the flags follow the tolerance."""
    recomputed = relative_residual(f(z), z)
    torch.testing.assert_close(stats.rel_residual, recomputed, rtol=1e-12, atol=0.0, equal_nan=True)
    finite = torch.isfinite(stats.rel_residual)
    assert torch.equal(stats.converged, finite & (stats.rel_residual <= tol))
    assert len(stats.trace) == stats.iters
    assert stats.trace[-1] == pytest.approx(float(stats.rel_residual.max()), rel=1e-15, nan_ok=True)


@pytest.mark.parametrize("name", ALL)
def test_solver_reaches_known_fixed_point(name: str) -> None:
    f, _, _, z_star = affine_problem()
    tol = 1e-10
    z, stats = solve(name, f, torch.zeros_like(z_star), tol=tol, max_iter=1000)
    assert bool(stats.converged.all()) and not stats.nan
    # ||z - z*|| <= ||f(z) - z|| / (1 - rho) for a rho-contraction, and ||f(z)|| ~ ||z*||.
    assert float(rel_err(z, z_star).max()) <= 1.1 * tol / (1 - 0.9)
    assert_truthful(f, z, stats, tol)


def test_anderson_with_one_entry_is_the_damped_step() -> None:
    """History m=1 forces alpha = [1]: Anderson with mixing beta is fixed-point iteration damped by beta."""
    f, _, _, z_star = affine_problem()
    z0 = torch.zeros_like(z_star)
    z_a, s_a = anderson(f, z0, tol=1e-30, max_iter=25, m=1, beta=0.4)
    z_fp, s_fp = fixed_point(f, z0, tol=1e-30, max_iter=25, damping=0.4)
    torch.testing.assert_close(z_a, z_fp, rtol=1e-13, atol=1e-13)
    assert s_a.trace == pytest.approx(s_fp.trace, rel=1e-10)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_anderson_mixing_reaches_the_fixed_point(beta: float) -> None:
    f, _, _, z_star = affine_problem()
    z, stats = anderson(f, torch.zeros_like(z_star), tol=1e-10, max_iter=1000, beta=beta)
    assert bool(stats.converged.all())
    assert float(rel_err(z, z_star).max()) <= 1.1 * 1e-10 / (1 - 0.9)


def test_acceleration_needs_fewer_iterations() -> None:
    f, _, _, z_star = affine_problem()
    iters = {}
    for name in ALL:
        _, stats = solve(name, f, torch.zeros_like(z_star), tol=1e-8, max_iter=1000)
        assert bool(stats.converged.all())
        iters[name] = stats.iters
    # Plain iteration contracts by 0.9 per step: about log(1e-8) / log(0.9) = 175 iterations.
    assert iters["fixed_point"] > 140
    assert iters["anderson"] < 0.6 * iters["fixed_point"], iters
    assert iters["broyden"] < 0.6 * iters["fixed_point"], iters


def test_damping_tames_an_oscillating_map() -> None:
    """For f(z) = -0.9 z + b plain iteration contracts by 0.9, damping 0.5 by |0.5 - 0.45| = 0.05."""
    b = torch.randn(2, 8, generator=torch.Generator().manual_seed(1), dtype=DT)

    def f(z: Tensor) -> Tensor:
        return -0.9 * z + b

    _, plain = fixed_point(f, torch.zeros_like(b), tol=1e-10, max_iter=1000)
    z, damped = fixed_point(f, torch.zeros_like(b), tol=1e-10, max_iter=1000, damping=0.5)
    assert bool(plain.converged.all()) and bool(damped.converged.all())
    assert damped.iters <= 12 < 150 < plain.iters
    torch.testing.assert_close(z, b / 1.9, rtol=1e-9, atol=0.0)


def tanh_problem(batch: int = 5, n: int = 16, seed: int = 2):
    """A nonlinear per-sample contraction f(z) = tanh(W_b z + c_b) with sample-dependent difficulty."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(batch, n, n, generator=g, dtype=DT)
    rho = torch.linspace(0.2, 0.95, batch, dtype=DT)
    W = W * (rho / torch.linalg.matrix_norm(W, ord=2))[:, None, None]  # (B, n, n)
    c = torch.randn(batch, n, generator=g, dtype=DT)  # (B, n)

    def f(z: Tensor) -> Tensor:
        return torch.tanh((W @ z[..., None])[..., 0] + c)

    return f, c


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("tol", [1e-3, 1e-9])
def test_stats_are_truthful(name: str, tol: float) -> None:
    f, c = tanh_problem()
    z, stats = solve(name, f, torch.zeros_like(c), tol=tol, max_iter=300)
    assert bool(stats.converged.all())
    assert_truthful(f, z, stats, tol)


@pytest.mark.parametrize("name", ALL)
def test_non_convergence_is_reported_not_raised(name: str) -> None:
    f, _, _, z_star = affine_problem()
    z, stats = solve(name, f, torch.zeros_like(z_star), tol=1e-10, max_iter=3)
    assert stats.iters == 3 and len(stats.trace) == 3
    assert not bool(stats.converged.any()) and not stats.nan
    assert bool((stats.rel_residual > 1e-10).all())
    assert_truthful(f, z, stats, 1e-10)


@pytest.mark.parametrize("name", ALL)
def test_nan_is_reported_and_the_sample_frozen(name: str) -> None:
    """Sample 1 of f turns NaN from the 4th evaluation on; sample 0 must still converge."""
    f_affine, _, _, z_star = affine_problem(batch=2, n=8, rho=0.5)
    calls = []

    def f(z: Tensor) -> Tensor:
        calls.append(z.clone())
        out = f_affine(z)
        if len(calls) >= 4:
            out = out.clone()
            out[1] = float("nan")
        return out

    z, stats = solve(name, f, torch.zeros_like(z_star), tol=1e-10, max_iter=200)
    assert stats.nan and math_isnan(stats.trace[-1])
    assert stats.converged.tolist() == [True, False]
    assert torch.isnan(stats.rel_residual[1]) and float(stats.rel_residual[0]) <= 1e-10
    # The failed sample is frozen at the (finite) iterate where f first returned NaN.
    assert torch.equal(z[1], calls[3][1]) and bool(torch.isfinite(z).all())
    assert all(torch.equal(c[1], z[1]) for c in calls[3:])
    assert float(rel_err(z[0], z_star[0])) <= 1e-9


def math_isnan(x: float) -> bool:
    return x != x


@pytest.mark.parametrize("name", ALL)
def test_diverging_map_is_reported_not_raised(name: str) -> None:
    def f(z: Tensor) -> Tensor:  # fixed point -1e-30, strongly repelling: iterates overflow to inf
        return 1e30 * z + 1.0

    z, stats = solve(name, f, torch.full((3, 4), 0.1, dtype=DT), tol=1e-6, max_iter=50)
    assert stats.nan and not bool(stats.converged.any())
    assert stats.iters < 50  # every sample failed, so the loop stopped early


@pytest.mark.parametrize("name", ALL)
def test_a_diverging_sample_fails_alone(name: str) -> None:
    """Sample 1 overflows (its residuals reach inf, Anderson's Gram matrix before them); sample 0, a
    contraction, converges to its fixed point as if alone."""
    f_affine, _, _, z_star = affine_problem(batch=1, n=8, rho=0.5)

    def f(z: Tensor) -> Tensor:
        return torch.cat([f_affine(z[:1]), 1e30 * z[1:] + 1.0])

    z, stats = solve(name, f, torch.full((2, 8), 0.1, dtype=DT), tol=1e-10, max_iter=200)
    assert stats.converged.tolist() == [True, False]
    assert not math.isfinite(float(stats.rel_residual[1])) and stats.nan
    z_alone, _ = solve(name, f_affine, torch.full((1, 8), 0.1, dtype=DT), tol=1e-10, max_iter=200)
    torch.testing.assert_close(z[:1], z_alone, rtol=1e-12, atol=1e-12)
    assert float(rel_err(z[0], z_star[0])) <= 1e-9


@pytest.mark.parametrize("name", ALL)
def test_converged_samples_are_frozen(name: str) -> None:
    """An easy sample (rho = 0.1) converges long before a hard one (rho = 0.95) and then stays put."""
    f_easy, _, _, star_easy = affine_problem(batch=1, n=12, rho=0.1, seed=3)
    f_hard, _, _, star_hard = affine_problem(batch=1, n=12, rho=0.95, seed=4)
    seen: list[Tensor] = []

    def f(z: Tensor) -> Tensor:
        seen.append(z.clone())
        return torch.cat([f_easy(z[:1]), f_hard(z[1:])])

    tol = 1e-9
    z, stats = solve(name, f, torch.zeros(2, 12, dtype=DT), tol=tol, max_iter=1000)
    assert bool(stats.converged.all())
    res_easy = [float(relative_residual(f_easy(s[:1]), s[:1])) for s in seen]
    k_easy = next(k for k, r in enumerate(res_easy) if r <= tol)  # evaluation at which it froze
    assert k_easy + 5 < stats.iters
    assert all(torch.equal(s[0], z[0]) for s in seen[k_easy:])
    assert float(stats.rel_residual[0]) == res_easy[k_easy]
    assert float(rel_err(z[0], star_easy[0])) <= 2 * tol and float(rel_err(z[1], star_hard[0])) <= 40 * tol


@pytest.mark.parametrize("name", ALL)
def test_unrolled_gradient_through_solver(name: str) -> None:
    """With grad enabled the solve is differentiable: d<c, z*>/db = (I - W)^{-T} c at convergence."""
    f_ref, W, b, _ = affine_problem(batch=2, n=10, rho=0.7, seed=5)
    b = b.clone().requires_grad_()

    def f(z: Tensor) -> Tensor:
        return (W @ z[..., None])[..., 0] + b

    c = torch.randn(2, 10, generator=torch.Generator().manual_seed(6), dtype=DT)
    z, stats = solve(name, f, torch.zeros(2, 10, dtype=DT), tol=1e-14, max_iter=500)
    (grad_b,) = torch.autograd.grad((z * c).sum(), b)
    expected = torch.linalg.solve(torch.eye(10, dtype=DT) - W.transpose(1, 2), c)
    assert float(rel_err(grad_b, expected).max()) <= 1e-8


def test_history_buffers_are_freed() -> None:
    """Anderson's (B, m, n) history lives only while the solver runs."""
    f, _, _, z_star = affine_problem(batch=3, n=33)
    m = 7
    histories: list[weakref.ref] = []

    class RecordHistories(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, Tensor) and tuple(t.shape) == (3, m, 33):
                    histories.append(weakref.ref(t))
            return out

    with RecordHistories():
        z, stats = anderson(f, torch.zeros_like(z_star), tol=1e-8, max_iter=20, m=m)
    gc.collect()
    assert stats.iters > m and len(histories) >= 2  # X, F and the difference G were created ...
    assert all(ref() is None for ref in histories)  # ... and none is alive after the solver returned


def test_bad_arguments_raise_with_a_useful_message() -> None:
    f, _, _, z_star = affine_problem(batch=1, n=4)
    with pytest.raises(KeyError, match="anderson"):
        solve("newton", f, z_star, tol=1e-3, max_iter=5)
    with pytest.raises(ValueError, match="shape"):
        fixed_point(lambda z: z[:, :2], z_star, tol=1e-3, max_iter=5)
    with pytest.raises(ValueError, match="max_iter"):
        fixed_point(f, z_star, tol=1e-3, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        fixed_point(f, z_star, tol=-1.0, max_iter=3)
    with pytest.raises(ValueError, match="lam"):
        anderson(f, z_star, tol=1e-3, max_iter=3, lam=0.0)
    with pytest.raises(TypeError, match="floating"):
        fixed_point(f, torch.zeros(1, 4, dtype=torch.int64), tol=1e-3, max_iter=3)


def test_returned_iterate_never_aliases_z0() -> None:
    z0 = torch.ones(2, 3, dtype=DT)
    z, stats = fixed_point(lambda z: z.clone(), z0, tol=1e-6, max_iter=5)  # converged at evaluation 1
    assert stats.iters == 1 and bool(stats.converged.all())
    z0.add_(1.0)
    assert torch.equal(z, torch.ones(2, 3, dtype=DT))
