"""A deep-equilibrium (DEQ) layer with an explicit choice of backward pass.

``deq_solve(f, z0, inputs, params, cfg)`` finds ``z* = f(z*, *inputs)`` and returns it with gradients
flowing to ``inputs`` (those that require grad) and ``params`` (the tensors ``f`` closes over, e.g.
``list(cell.parameters())``). The wrapper does not own ``f``; ``f(z, *inputs)`` must return a tensor of
the shape of ``z`` and treat the samples of the batch independently.

Backward modes (``cfg.backward``), for a loss ``L(z*)`` with ``J = df/dz`` at ``z*``:

- ``ift``: implicit function theorem. ``dL/dtheta = g^T df/dtheta`` where ``g = J^T g + dL/dz*`` (the
  adjoint fixed point, solved with ``cfg.bwd_solver``). A custom ``autograd.Function`` whose forward
  solves without a graph and saves only ``z*`` and the inputs; its backward rebuilds the graph of
  ``f`` once at ``z*``, solves for ``g`` with vector-Jacobian products and ends with one VJP to inputs
  and parameters. Memory: ``z*`` + inputs, independent of the number of iterations.
- ``ift_hook``: the same maths as commonly written in DEQ reference code: one tracked application
  ``z = f(z*, *inputs)`` plus a second graph ``f0 = f(z0', *inputs)`` at ``z0' = z.detach()`` and a
  gradient hook on ``z`` that solves the adjoint fixed point through ``f0``. Both graphs stay alive
  until backward (the memory cost the suite measures against ``ift``).
- ``jfb``: Jacobian-free backprop (Fung et al.): the gradient of one application ``f(z*, *inputs)``
  with ``z*`` treated as a constant, i.e. ``g = dL/dz*`` without the adjoint solve. Also a custom
  Function that saves only ``z*`` and the inputs and rebuilds ``f`` in backward.
- ``phantom``: phantom gradient (Geng et al.): ``k = phantom_steps`` tracked damped steps
  ``z <- (1 - d) z + d f(z, *inputs)`` from ``z*`` (detached), ``d = phantom_damping``.
- ``unrolled``: backprop through every iteration of the configured solver (run with grad enabled
  from ``z0``): the exact gradient of what was computed, with memory growing with the iterations.

Returned value: ``ift`` and ``jfb`` return the solver output ``z*`` itself (no extra application of
``f``), so they return the same tensor values for the same solve; ``ift_hook`` returns ``f(z*)``
(its tracked application), ``phantom`` the result of its ``k`` steps, ``unrolled`` the solver output.
``DEQStats.forward`` always holds the stats of the solve for ``z*``; ``DEQStats.backward`` is filled in
when backward runs, by the modes that solve in backward (``ift``, ``ift_hook``), and stays ``None``
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.checks import check_choice, check_int, check_positive
from models.solvers import SOLVERS, SolverStats, solve

BACKWARD_MODES = ("ift", "ift_hook", "jfb", "phantom", "unrolled")

CellMap = Callable[..., Tensor]  # f(z, *inputs) -> z


@dataclass(frozen=True)
class DEQConfig:
    """Forward solver, backward mode and their budgets; tolerances are relative residuals
    ``||f(z) - z|| / ||f(z)||`` per sample (see ``models.solvers``).

    The single definition of every DEQ setting, its default and its validation: the reconstructors'
    configs take the settings they expose from :class:`DEQSettings`, which derives from this class."""

    solver: str = "anderson"
    tol: float = 1e-3
    max_iter: int = 40
    backward: str = "ift"
    bwd_solver: str = "anderson"
    bwd_tol: float = 1e-3
    bwd_max_iter: int = 40
    phantom_steps: int = 3
    phantom_damping: float = 0.5
    anderson_m: int = 5
    anderson_beta: float = 1.0
    anderson_lam: float = 1e-4
    fp_damping: float = 1.0

    def __post_init__(self) -> None:
        check_choice("backward", self.backward, BACKWARD_MODES)
        for name in ("solver", "bwd_solver"):
            check_choice(name, getattr(self, name), sorted(SOLVERS))
        for name in ("tol", "bwd_tol", "anderson_lam"):
            check_positive(name, getattr(self, name))
        for name in ("max_iter", "bwd_max_iter", "phantom_steps", "anderson_m"):
            check_int(name, getattr(self, name))
        for name in ("phantom_damping", "anderson_beta", "fp_damping"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class DEQSettings:
    """The :class:`DEQConfig` settings a reconstructor's config exposes (also run-row columns or spec
    keys), with DEQConfig's defaults; a config dataclass inherits them and is validated by building
    its DEQConfig. The settings not exposed here keep DEQConfig's defaults."""

    solver: str = DEQConfig.solver
    tol: float = DEQConfig.tol
    max_iter: int = DEQConfig.max_iter
    backward: str = DEQConfig.backward
    bwd_tol: float = DEQConfig.bwd_tol
    bwd_max_iter: int = DEQConfig.bwd_max_iter

    def __post_init__(self) -> None:
        self.deq_config()

    def deq_config(self) -> DEQConfig:
        """The :class:`DEQConfig` of these settings (``ValueError``/``TypeError`` naming a bad one)."""
        exposed = {f.name: getattr(self, f.name) for f in fields(DEQSettings)}
        return DEQConfig(**exposed)


@dataclass
class DEQStats:
    """Solver statistics of one DEQ call; ``backward`` is set when (and if) the backward solve runs."""

    forward: SolverStats
    backward: SolverStats | None = None


# Keyword arguments each solver takes from the config.
_SOLVER_OPTIONS: dict[str, Callable[[DEQConfig], dict[str, Any]]] = {
    "fixed_point": lambda cfg: {"damping": cfg.fp_damping},
    "anderson": lambda cfg: {"m": cfg.anderson_m, "beta": cfg.anderson_beta, "lam": cfg.anderson_lam},
    "broyden": lambda cfg: {},
}


def _forward_solve(
    f: CellMap, z0: Tensor, inputs: Sequence[Tensor], cfg: DEQConfig
) -> tuple[Tensor, SolverStats]:
    """The forward fixed point, in the caller's grad mode."""
    options = _SOLVER_OPTIONS.get(cfg.solver, lambda c: {})(cfg)
    return solve(cfg.solver, lambda z: f(z, *inputs), z0, tol=cfg.tol, max_iter=cfg.max_iter, **options)


def _adjoint_solve(
    vjp: Callable[[Tensor], Tensor], grad: Tensor, cfg: DEQConfig
) -> tuple[Tensor, SolverStats]:
    """Solve ``g = J^T g + grad`` (``vjp(g) = J^T g``) with the backward solver, without a graph."""
    options = _SOLVER_OPTIONS.get(cfg.bwd_solver, lambda c: {})(cfg)
    with torch.no_grad():
        return solve(
            cfg.bwd_solver,
            lambda g: vjp(g) + grad,
            grad,
            tol=cfg.bwd_tol,
            max_iter=cfg.bwd_max_iter,
            **options,
        )


class _Record:
    """Mutable slot shared by ``deq_solve`` and a custom Function: forward stats out, DEQStats in."""

    def __init__(self) -> None:
        self.forward: SolverStats | None = None
        self.stats: DEQStats | None = None


def _rebuild(
    f: CellMap, z_star: Tensor, inputs: Sequence[Tensor], needs_grad: Sequence[bool]
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One tracked application of ``f`` at a detached ``z*``: returns ``(z, f(z, *inputs), inputs)``."""
    with torch.enable_grad():
        z = z_star.detach().requires_grad_()
        ins = [x.detach().requires_grad_(need) for x, need in zip(inputs, needs_grad, strict=True)]
        return z, f(z, *ins), ins


def _vjp_map(fz: Tensor, z: Tensor) -> Callable[[Tensor], Tensor]:
    """``g -> J^T g`` with ``J = d fz / d z`` through the graph of ``fz`` (kept for repeated use)."""

    def vjp(g: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(fz, z, g, retain_graph=True, allow_unused=True)
        return torch.zeros_like(g) if out is None else out  # f independent of z: J = 0

    return vjp


def _param_grads(
    fz: Tensor, ins: list[Tensor], params: Sequence[Tensor], g: Tensor, needs_grad: Sequence[bool]
) -> tuple[Tensor | None, ...]:
    """``g^T d f / d(inputs, params)`` for the inputs/params that need it, ``None`` elsewhere."""
    targets = [t for t, need in zip([*ins, *params], needs_grad, strict=True) if need]
    grads = iter(torch.autograd.grad(fz, targets, g, allow_unused=True) if targets else ())
    return tuple(next(grads) if need else None for need in needs_grad)


class _SolveSaveFixedPoint(torch.autograd.Function):
    """Forward shared by ``IFTFunction`` and ``JFBFunction``: solve without a graph, save ``z*`` and the
    inputs only. ``apply(f, z0, cfg, record, n_inputs, *inputs, *params)``; the parameters are kept as
    references (they are alive anyway) and must not be modified in place between forward and backward.
    """

    @staticmethod
    def forward(
        ctx: Any, f: CellMap, z0: Tensor, cfg: DEQConfig, record: _Record, n_inputs: int, *tensors: Tensor
    ) -> Tensor:
        inputs = tensors[:n_inputs]
        z_star, stats = _forward_solve(f, z0.detach(), inputs, cfg)  # custom forward runs under no_grad
        record.forward = stats
        ctx.f, ctx.cfg, ctx.record, ctx.n_inputs = f, cfg, record, n_inputs
        ctx.params = tensors[n_inputs:]
        ctx.save_for_backward(z_star, *inputs)
        return z_star

    N_OPTIONS = 5  # forward's arguments before the tensors: f, z0, cfg, record, n_inputs

    @staticmethod
    def rebuild(ctx: Any) -> tuple[Tensor, Tensor, list[Tensor], tuple[bool, ...]]:
        """``(z, f(z, *inputs), inputs, needs_grad)``: the graph of ``f`` at the saved ``z*``;
        ``needs_grad`` covers the inputs and parameters."""
        z_star, *inputs = ctx.saved_tensors
        needs_grad = ctx.needs_input_grad[_SolveSaveFixedPoint.N_OPTIONS :]
        z, fz, ins = _rebuild(ctx.f, z_star, inputs, needs_grad[: ctx.n_inputs])
        return z, fz, ins, needs_grad

    @staticmethod
    def grads(
        fz: Tensor, ins: list[Tensor], params: Sequence[Tensor], g: Tensor, needs_grad: Sequence[bool]
    ) -> tuple[Tensor | None, ...]:
        """Backward's return value: ``None`` for the options, ``g^T df/d(inputs, params)`` after them."""
        return (None,) * _SolveSaveFixedPoint.N_OPTIONS + _param_grads(fz, ins, params, g, needs_grad)


class IFTFunction(_SolveSaveFixedPoint):
    """``z* = fixed point of f(., *inputs)`` with the implicit-function-theorem gradient."""

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        z, fz, ins, needs_grad = _SolveSaveFixedPoint.rebuild(ctx)
        g, bwd_stats = _adjoint_solve(_vjp_map(fz, z), grad_z, ctx.cfg)
        if ctx.record.stats is not None:
            ctx.record.stats.backward = bwd_stats
        return _SolveSaveFixedPoint.grads(fz, ins, ctx.params, g, needs_grad)


class JFBFunction(_SolveSaveFixedPoint):
    """``z*`` with the Jacobian-free gradient: that of ``f(z*, *inputs)`` with ``z*`` held constant.

    Same calling convention and the same saved tensors as ``IFTFunction``.
    """

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        _, fz, ins, needs_grad = _SolveSaveFixedPoint.rebuild(ctx)
        return _SolveSaveFixedPoint.grads(fz, ins, ctx.params, grad_z, needs_grad)


# --- one function per backward mode: (f, z0, inputs, params, cfg) -> (z, DEQStats) -----------------


def _via_function(fn: type[torch.autograd.Function]) -> Callable[..., tuple[Tensor, DEQStats]]:
    def run(
        f: CellMap, z0: Tensor, inputs: tuple[Tensor, ...], params: list[Tensor], cfg: DEQConfig
    ) -> tuple[Tensor, DEQStats]:
        record = _Record()
        z = fn.apply(f, z0, cfg, record, len(inputs), *inputs, *params)
        if record.forward is None:  # the Function's forward always sets it
            raise RuntimeError(f"{fn.__name__}.forward did not record its solver stats")
        record.stats = DEQStats(record.forward)
        return z, record.stats

    return run


def _ift_hook(
    f: CellMap, z0: Tensor, inputs: tuple[Tensor, ...], params: list[Tensor], cfg: DEQConfig
) -> tuple[Tensor, DEQStats]:
    with torch.no_grad():
        z_star, fwd_stats = _forward_solve(f, z0.detach(), inputs, cfg)
    stats = DEQStats(fwd_stats)
    z = f(z_star, *inputs)  # graph 1: to inputs and params
    if z.requires_grad:
        z_copy = z.detach().requires_grad_()
        f0 = f(z_copy, *inputs)  # graph 2: kept alive for the vector-Jacobian products of the hook

        def hook(grad: Tensor) -> Tensor:
            g, stats.backward = _adjoint_solve(_vjp_map(f0, z_copy), grad, cfg)
            return g

        z.register_hook(hook)
    return z, stats


def _phantom(
    f: CellMap, z0: Tensor, inputs: tuple[Tensor, ...], params: list[Tensor], cfg: DEQConfig
) -> tuple[Tensor, DEQStats]:
    with torch.no_grad():
        z_star, fwd_stats = _forward_solve(f, z0.detach(), inputs, cfg)
    z, d = z_star, cfg.phantom_damping
    for _ in range(cfg.phantom_steps):
        z = (1 - d) * z + d * f(z, *inputs)
    return z, DEQStats(fwd_stats)


def _unrolled(
    f: CellMap, z0: Tensor, inputs: tuple[Tensor, ...], params: list[Tensor], cfg: DEQConfig
) -> tuple[Tensor, DEQStats]:
    z, fwd_stats = _forward_solve(f, z0, inputs, cfg)
    return z, DEQStats(fwd_stats)


_BACKWARDS: dict[str, Callable[..., tuple[Tensor, DEQStats]]] = {
    "ift": _via_function(IFTFunction),
    "ift_hook": _ift_hook,
    "jfb": _via_function(JFBFunction),
    "phantom": _phantom,
    "unrolled": _unrolled,
}


def deq_solve(
    f: CellMap, z0: Tensor, inputs: tuple[Tensor, ...], params: Sequence[Tensor], cfg: DEQConfig
) -> tuple[Tensor, DEQStats]:
    """Solve ``z* = f(z*, *inputs)`` from ``z0`` and attach the gradient chosen by ``cfg.backward``.

    Args:
        f: ``f(z, *inputs) -> z`` (same shape ``(B, ...)``), per-sample independent.
        z0: initial iterate ``(B, ...)``; it receives a gradient only in ``unrolled`` mode.
        inputs: tensors passed to ``f`` after ``z`` (e.g. the injected input); gradients flow to those
            that require grad.
        params: the tensors ``f`` uses implicitly (closure / module parameters) that should receive
            gradients, e.g. ``list(cell.parameters())``; needed by the memory-efficient modes.
        cfg: solver, tolerances and backward mode.

    Returns:
        ``(z, stats)``: see the module docstring for the value returned by each mode.
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(z, *inputs) -> z, got {type(f).__name__}")
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a torch.Tensor of shape (B, ...), got {type(z0).__name__}")
    if not isinstance(inputs, tuple | list) or not all(isinstance(x, Tensor) for x in inputs):
        raise TypeError("inputs must be a tuple of torch.Tensor (possibly empty)")
    params = list(params)
    if not all(isinstance(p, Tensor) for p in params):
        raise TypeError("params must be a sequence of torch.Tensor (e.g. list(cell.parameters()))")
    if not isinstance(cfg, DEQConfig):
        raise TypeError(f"cfg must be a DEQConfig, got {type(cfg).__name__}")
    return _BACKWARDS[cfg.backward](f, z0, tuple(inputs), params, cfg)
