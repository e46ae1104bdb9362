"""Batched fixed-point solvers with one contract and honest per-sample statistics.

Every solver looks for ``z = f(z)`` for a batch of independent problems and has the signature
``solver(f, z0, *, tol, max_iter, **options) -> (z, SolverStats)``, where ``z0`` has shape ``(B, ...)``
and ``f`` maps that shape to itself, sample by sample (sample ``b`` of ``f(z)`` depends only on sample
``b`` of ``z``).

The loop, shared by all solvers (one *iteration* = one evaluation of ``f``)::

    z = z0
    for k in 1..max_iter:
        fz = f(z)                                  # evaluation k, at the current iterate z
        r = ||fz - z|| / (||fz|| + eps)            # relative residual, per sample
        samples with r <= tol are converged, samples with a non-finite r have failed: both are
        frozen (their iterate never changes again and their residual is kept)
        if every sample is frozen or k == max_iter: stop
        z = next iterate of the still-active samples (the solver's rule)

So the returned ``z`` (a new tensor, never a view of ``z0``) is the last iterate at which ``f`` was
evaluated and ``stats.rel_residual`` is exactly ``relative_residual(f(z), z)`` for that ``z`` (the
"stats are truthful" property: recompute it and you get the same numbers). ``stats.iters`` is the
number of evaluations of ``f`` (at most ``max_iter``); the returned iterate was produced by
``iters - 1`` updates. Non-convergence and NaN/inf are reported in the stats, never raised.

The solvers run in whatever grad mode the caller is in: under ``torch.no_grad()`` they build no graph;
with grad enabled they are differentiable end to end (unrolled backprop), so history buffers are
updated out of place in that case. All buffers are local variables, freed when the solver returns.
The residuals are always computed without a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

RESIDUAL_EPS = 1e-12
"""Added to ``||f(z)||`` in the relative residual so that ``f(z) = 0`` does not divide by zero."""

FixedPointMap = Callable[[Tensor], Tensor]


@dataclass
class SolverStats:
    """What a solve did, per sample where it matters.

    Attributes:
        iters: number of evaluations of ``f`` (= iterations); the returned iterate is the one at which
            the last evaluation happened, i.e. it was reached after ``iters - 1`` updates.
        rel_residual: ``(B,)`` relative residual ``||f(z) - z|| / (||f(z)|| + eps)`` of each returned
            sample (for a sample frozen early, the value at the evaluation that froze it - the same
            number, since its iterate never changed afterwards).
        converged: ``(B,)`` bool, ``rel_residual <= tol``.
        trace: the maximum over the batch of the relative residual after each iteration
            (``len(trace) == iters``; NaN once a sample has a non-finite residual).
    """

    iters: int
    rel_residual: Tensor  # (B,)
    converged: Tensor  # (B,) bool
    trace: list[float] = field(default_factory=list)

    @property
    def nan(self) -> bool:
        """Whether any sample ended with a non-finite residual (NaN or inf in ``f(z)`` or ``z``)."""
        return not bool(torch.isfinite(self.rel_residual).all())


def relative_residual(fz: Tensor, z: Tensor, diff: Tensor | None = None) -> Tensor:
    """Per-sample relative residual ``||fz - z|| / (||fz|| + RESIDUAL_EPS)``; ``(B, ...) -> (B,)``.

    ``diff``, if given, must be ``fz - z`` (solvers that need it anyway pass it to save a subtraction).
    """
    with torch.no_grad():
        fz_flat = fz.reshape(fz.shape[0], -1)  # (B, n)
        diff_flat = (fz_flat - z.reshape(z.shape[0], -1)) if diff is None else diff.reshape(fz_flat.shape)
        num = torch.linalg.vector_norm(diff_flat, dim=1)
        return num / (torch.linalg.vector_norm(fz_flat, dim=1) + RESIDUAL_EPS)


# --- the shared loop ---------------------------------------------------------------------------------


class _Tracker:
    """Per-sample bookkeeping of the shared loop: residuals, converged / frozen flags, the trace.

    The flags live on the host: each ``update`` reads the batch's residuals back once (the one
    device-to-host transfer of an iteration, needed anyway to decide whether to stop) and decides
    convergence there, so the loop launches no extra kernels for its bookkeeping. ``frozen`` is the
    device mask of frozen samples, ``None`` while no sample is frozen (the common case: no masking work).
    """

    def __init__(self, batch: int, tol: float, device: torch.device, dtype: torch.dtype):
        self.tol, self.device, self.dtype = tol, device, dtype
        self.res = [float("inf")] * batch
        self.converged = [False] * batch
        self.done = [False] * batch  # converged or failed (non-finite residual)
        self.trace: list[float] = []
        self.frozen: Tensor | None = None  # (B,) bool on device, once a sample is frozen

    def update(self, fz: Tensor, z: Tensor, diff: Tensor | None = None) -> bool:
        """Record the residual of the active samples at ``z`` (``diff = fz - z`` if the caller has it);
        return whether every sample is frozen."""
        res_now = relative_residual(fz, z, diff).tolist()
        newly_frozen = False
        for b, r in enumerate(res_now):
            if self.done[b]:
                continue
            self.res[b] = r
            self.converged[b] = r <= self.tol
            self.done[b] = self.converged[b] or not math.isfinite(r)
            newly_frozen |= self.done[b]
        if newly_frozen:
            self.frozen = torch.tensor(self.done, device=self.device)
        self.trace.append(math.nan if any(math.isnan(r) for r in self.res) else max(self.res))
        return all(self.done)

    def stats(self) -> SolverStats:
        res = torch.tensor(self.res, dtype=self.dtype, device=self.device)
        converged = torch.tensor(self.converged, dtype=torch.bool, device=self.device)
        return SolverStats(len(self.trace), res, converged, self.trace)

    def keep_frozen(self, x: Tensor, x_new: Tensor) -> Tensor:
        """``x_new`` for active samples, ``x`` for frozen ones (rows of ``(B, ...)`` tensors)."""
        if self.frozen is None:
            return x_new
        return torch.where(self.frozen.view(-1, *[1] * (x.ndim - 1)), x, x_new)


def _check_args(f: Any, z0: Any, tol: float, max_iter: int) -> None:
    if not callable(f):
        raise TypeError(f"f must be callable (z -> z), got {type(f).__name__}")
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a torch.Tensor of shape (B, ...), got {type(z0).__name__}")
    if z0.ndim < 1 or z0.shape[0] == 0:
        raise ValueError(f"z0 must have shape (B, ...) with B >= 1, got {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a real floating tensor (float16/32/64, bfloat16), got {z0.dtype}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")


def _flat_map(f: FixedPointMap, shape: torch.Size) -> FixedPointMap:
    """``f`` on flattened iterates ``(B, n)``, checking that it preserves the shape."""

    def fn(x: Tensor) -> Tensor:
        fz = f(x.reshape(shape))
        if not isinstance(fz, Tensor) or fz.shape != shape:
            got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
            raise ValueError(f"f must return a tensor of the shape of z0, {tuple(shape)}; got {got}")
        return fz.reshape(shape[0], -1)  # (B, n)

    return fn


def _write(buf: Tensor, slot: int, value: Tensor) -> Tensor:
    """``buf[:, slot] = value``, in place without grad, out of place when autograd may need ``buf``."""
    if torch.is_grad_enabled() and (buf.requires_grad or value.requires_grad):
        buf = buf.clone()
    buf[:, slot] = value
    return buf


def _result(x: Tensor, z0: Tensor) -> Tensor:
    """The final iterate in the shape of ``z0``, never sharing memory with ``z0``."""
    z = x.reshape(z0.shape)
    return z.clone() if z.untyped_storage().data_ptr() == z0.untyped_storage().data_ptr() else z


# --- solvers -----------------------------------------------------------------------------------------


def fixed_point(
    f: FixedPointMap, z0: Tensor, *, tol: float, max_iter: int, damping: float = 1.0
) -> tuple[Tensor, SolverStats]:
    """Damped fixed-point (Krasnoselskii-Mann) iteration ``z <- (1 - d) z + d f(z)``.

    Converges linearly for a contraction (rate ``1 - d + d L`` for Lipschitz constant ``L < 1``).
    """
    _check_args(f, z0, tol, max_iter)
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    fn = _flat_map(f, z0.shape)
    x = z0.reshape(z0.shape[0], -1)  # (B, n)
    track = _Tracker(z0.shape[0], tol, z0.device, z0.dtype)
    for k in range(1, max_iter + 1):
        fx = fn(x)  # (B, n)
        if track.update(fx, x) or k == max_iter:
            break
        x_new = fx if damping == 1.0 else (1 - damping) * x + damping * fx
        x = track.keep_frozen(x, x_new)
    return _result(x, z0), track.stats()


def anderson(
    f: FixedPointMap,
    z0: Tensor,
    *,
    tol: float,
    max_iter: int,
    m: int = 5,
    beta: float = 1.0,
    lam: float = 1e-4,
) -> tuple[Tensor, SolverStats]:
    """Type-II Anderson acceleration (as in the DEQ tutorial of Kolter, Duvenaud and Johnson).

    With the last ``n = min(k, m)`` iterates ``x_i`` and values ``f_i = f(x_i)`` (residuals
    ``g_i = f_i - x_i``), each sample solves the small least-squares problem

        alpha = argmin ||sum_i alpha_i g_i||^2 + lam s ||alpha||^2   subject to   sum_i alpha_i = 1

    through its bordered ``(n + 1) x (n + 1)`` system ``[[0, 1^T], [1, G G^T + lam s I]] [mu; alpha] =
    [1; 0]`` (``torch.linalg.solve_ex``, batched), then steps to
    ``x = beta sum_i alpha_i f_i + (1 - beta) sum_i alpha_i x_i = sum_i alpha_i f_i - (1 - beta)
    sum_i alpha_i g_i``. With one history entry this is a damped fixed-point step, so no separate
    warm-up is needed. The bordered system is nonsingular whenever the residuals are finite
    (``G G^T + lam s I`` is positive definite: ``s > 0`` unless every residual is zero, and then the
    sample has converged and is frozen), so it is solved without a fallback; residuals so large that
    ``G G^T`` overflows give non-finite weights, a non-finite iterate, and the sample is reported as
    failed at the next evaluation (the others are untouched). History: two ``(B, m, n)`` buffers, the
    values ``f_i`` and the residuals ``g_i`` (each residual is computed once, for the stopping test, and
    stored); the bordered systems live in one ``(B, m + 1, m + 1)`` buffer allocated once. Besides
    ``f``, an iteration launches about a dozen small kernels and reads the residuals back to the host
    once.

    The ridge is scale-invariant: ``s = mean_i ||g_i||^2`` (the mean diagonal of ``G G^T``). With the
    tutorial's absolute ``lam I`` the ridge dominates once the residuals are small, alpha tends to
    uniform weights and Anderson needs more iterations than plain iteration at tight tolerances; the
    relative ridge keeps its advantage there (tests/test_solvers.py checks it at a tight tolerance).
    """
    _check_args(f, z0, tol, max_iter)
    if not (isinstance(m, int) and m >= 1):
        raise ValueError(f"m (history size) must be an int >= 1, got {m!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta (mixing) must be in (0, 1], got {beta}")
    if not lam > 0:
        raise ValueError(f"lam (ridge regularisation) must be > 0, got {lam}")
    batch = z0.shape[0]
    fn = _flat_map(f, z0.shape)
    x = z0.reshape(batch, -1)  # (B, n)
    F = x.new_zeros(batch, m, x.shape[1])  # (B, m, n) f of past iterates
    G = x.new_zeros(batch, m, x.shape[1])  # (B, m, n) their residuals g_i = f_i - x_i
    # The bordered systems, allocated once; the border (row and column 0) never changes.
    H = x.new_zeros(batch, m + 1, m + 1)  # (B, m+1, m+1)
    H[:, 0, 1:] = 1
    H[:, 1:, 0] = 1
    rhs = x.new_zeros(batch, m + 1, 1)  # (B, m+1, 1)
    rhs[:, 0] = 1
    tiny = torch.finfo(x.dtype).tiny
    track = _Tracker(batch, tol, z0.device, z0.dtype)
    for k in range(1, max_iter + 1):
        fx = fn(x)  # (B, n)
        gx = fx - x  # (B, n)
        if track.update(fx, x, gx) or k == max_iter:
            break
        slot, n_hist = (k - 1) % m, min(k, m)
        F, G = _write(F, slot, fx), _write(G, slot, gx)
        GGt = G[:, :n_hist] @ G[:, :n_hist].transpose(1, 2)  # (B, n_hist, n_hist)
        scale = GGt.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(tiny)  # (B,)
        system = H[:, : n_hist + 1, : n_hist + 1]
        if torch.is_grad_enabled() and GGt.requires_grad:  # unrolled: keep H out of the graph
            system = system.clone()
        system[:, 1:, 1:] = GGt
        system[:, 1:, 1:].diagonal(dim1=1, dim2=2).add_(scale[:, None], alpha=lam)
        if track.frozen is not None:  # frozen samples (possibly NaN) get a harmless system
            benign = torch.eye(n_hist + 1, dtype=x.dtype, device=x.device)
            system = torch.where(track.frozen[:, None, None], benign, system)
        sol, _ = torch.linalg.solve_ex(system, rhs[:, : n_hist + 1])  # nonsingular (see above)
        alpha = sol[:, None, 1:, 0]  # (B, 1, n_hist)
        x_new = (alpha @ F[:, :n_hist])[:, 0]  # (B, n)
        if beta != 1.0:
            x_new = x_new - (1 - beta) * (alpha @ G[:, :n_hist])[:, 0]
        x = track.keep_frozen(x, x_new)
    return _result(x, z0), track.stats()


def broyden(
    f: FixedPointMap, z0: Tensor, *, tol: float, max_iter: int, m: int = 20
) -> tuple[Tensor, SolverStats]:
    """Limited-memory "good" Broyden method on ``g(z) = f(z) - z = 0``.

    Keeps an approximation of the inverse Jacobian of ``g`` as ``Binv = -I + sum_i u_i v_i^T`` (at most
    ``m`` rank-one terms, oldest overwritten first) and steps ``z <- z - Binv g(z)``. After a step
    ``dz`` with residual change ``dg`` the Sherman-Morrison form of the good Broyden update adds
    ``u = (dz - Binv dg) / (v^T dg)`` with ``v^T = dz^T Binv``. The first step (``Binv = -I``) is a
    plain fixed-point step. Degenerate updates (``v^T dg`` zero or non-finite) are skipped. When ``m``
    updates are stored the approximation restarts from ``-I`` with the newest pair (overwriting the
    oldest pair instead diverged on a symmetric contraction). Memory: two ``(B, m, n)`` buffers.
    """
    _check_args(f, z0, tol, max_iter)
    if not (isinstance(m, int) and m >= 1):
        raise ValueError(f"m (memory, number of rank-one updates kept) must be an int >= 1, got {m!r}")
    batch = z0.shape[0]
    fn = _flat_map(f, z0.shape)
    x = z0.reshape(batch, -1)  # (B, n)
    U = x.new_zeros(batch, m, x.shape[1])  # (B, m, n)
    V = x.new_zeros(batch, m, x.shape[1])  # (B, m, n)

    def inv_jac(y: Tensor) -> Tensor:  # Binv y = -y + U^T (V y)
        return -y + torch.einsum("brn,br->bn", U, torch.einsum("brn,bn->br", V, y))

    def inv_jac_t(y: Tensor) -> Tensor:  # Binv^T y = -y + V^T (U y)
        return -y + torch.einsum("brn,br->bn", V, torch.einsum("brn,bn->br", U, y))

    track = _Tracker(batch, tol, z0.device, z0.dtype)
    x_prev = g_prev = None
    for k in range(1, max_iter + 1):
        fx = fn(x)  # (B, n)
        g = fx - x  # (B, n)
        if track.update(fx, x, g) or k == max_iter:
            break
        if x_prev is not None and g_prev is not None:
            slot = (k - 2) % m
            if slot == 0 and k > 2:  # memory full: restart from Binv = -I with the newest secant pair
                U, V = torch.zeros_like(U), torch.zeros_like(V)
            dx, dg = x - x_prev, g - g_prev  # (B, n)
            v = inv_jac_t(dx)  # (B, n)
            denom = (v * dg).sum(dim=1)  # (B,)
            ok = torch.isfinite(denom) & (denom.abs() > torch.finfo(x.dtype).tiny)
            if track.frozen is not None:
                ok = ok & ~track.frozen
            u = (dx - inv_jac(dg)) / torch.where(ok, denom, torch.ones_like(denom))[:, None]
            ok = ok & torch.isfinite(u).all(dim=1) & torch.isfinite(v).all(dim=1)
            U = _write(U, slot, torch.where(ok[:, None], u, torch.zeros_like(u)))
            V = _write(V, slot, torch.where(ok[:, None], v, torch.zeros_like(v)))
        x_prev, g_prev = x, g
        x_new = x - inv_jac(g)
        x = track.keep_frozen(x, x_new)
    return _result(x, z0), track.stats()


SOLVERS: dict[str, Callable[..., tuple[Tensor, SolverStats]]] = {
    "fixed_point": fixed_point,
    "anderson": anderson,
    "broyden": broyden,
}


def solve(name: str, f: FixedPointMap, z0: Tensor, **kwargs: Any) -> tuple[Tensor, SolverStats]:
    """Run the solver registered as ``name`` in ``SOLVERS``; ``kwargs`` are its keyword arguments."""
    if name not in SOLVERS:
        raise KeyError(f"unknown solver {name!r}; known solvers: {sorted(SOLVERS)}")
    return SOLVERS[name](f, z0, **kwargs)
