"""Reconstructors and regularisers: training works, checkpointing is exact, memory scales as designed,
complex images round-trip, classical methods give known answers, configs reject bad input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import Tensor

from bench.data.tasks import build_task
from models import MODELS, Recon, build_config, build_model, count_params
from models.complex import from_channels, to_channels
from models.deq import DEQConfig, DEQSettings
from models.regularisers import DnCNN, EquilibriumCell
from operators import Blur, SingleCoilMRI
from operators.base import LinearOperator

TASK_NAMES = ("deblur", "ct", "mri")
LEARNED = ("lu", "lu_ckpt", "luser", "deq")
TINY = {"reg_depth": 3, "reg_width": 8}
DEQ_TINY = {"max_iter": 10, "bwd_max_iter": 10}
TINY_CFG: dict[str, dict] = {
    "lu": {"n_iters": 2, **TINY},
    "lu_ckpt": {"n_iters": 2, **TINY},
    "luser": {"n_iters": 2, **TINY, **DEQ_TINY},
    "deq": {**TINY, **DEQ_TINY},
}
# Adam learning rates: the whole-iteration DEQ is the touchy one (its map sits near non-expansiveness).
LR = {"lu": 1e-2, "lu_ckpt": 1e-2, "luser": 1e-2, "deq": 1e-3}


@cache
def problem(task_name: str, image_size: int = 16, n: int = 4) -> tuple[LinearOperator, Tensor, Tensor]:
    """(operator, x, y) of a tiny CPU instance of a task; y carries the task's noise (fixed seed)."""
    task = build_task(task_name, image_size=image_size, n_train=n, n_test=1, seed=0)
    y = task.measure(task.x_train, torch.Generator().manual_seed(1))
    return task.operator, task.x_train, y


def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    return (x_hat - x).abs().square().mean()  # complex-safe


def strided_storages(tensors: list[Tensor]) -> set[int]:
    return {t.untyped_storage()._cdata for t in tensors if t.layout == torch.strided}


def saved_bytes(fn: Callable[[], object], exclude: list[Tensor]) -> int:
    """Bytes of the unique storages autograd saves during ``fn()``, leaving out ``exclude``'s storages
    (parameters, operator buffers, the measurement: alive anyway, whatever the model)."""
    skip = strided_storages(exclude)
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.layout == torch.strided and t.untyped_storage()._cdata not in skip:
            seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def always_on(model: torch.nn.Module, op: LinearOperator, y: Tensor) -> list[Tensor]:
    return [*model.parameters(), *op.buffers(), y]


# --- complex images as channels ----------------------------------------------------------------------
def test_complex_round_trip_is_exact_and_interleaves_real_imag():
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g))
    h = to_channels(x)
    assert h.shape == (2, 6, 5, 4) and h.dtype == torch.float32
    assert torch.equal(h[:, 2], x[:, 1].real) and torch.equal(h[:, 3], x[:, 1].imag)
    assert torch.equal(from_channels(h), x)
    with pytest.raises(TypeError, match="complex"):
        to_channels(x.real)
    with pytest.raises(ValueError, match="2C"):
        from_channels(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("name", list(MODELS))
def test_mri_models_return_complex_images_of_the_operator_dtype(name: str):
    op, _, y = problem("mri")
    cfg = {"method": "zero_filled"} if name == "classical" else TINY_CFG[name]
    recon = build_model(name, op, **cfg)(y, op)
    assert isinstance(recon, Recon)
    assert recon.x.dtype == op.dtype == torch.complex64 and recon.x.shape == y.shape
    op64 = SingleCoilMRI(image_size=8).to(torch.float64)
    y64 = op64.A(torch.randn(2, 1, 8, 8, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)))
    assert build_model(name, op64, **cfg)(y64, op64).x.dtype == torch.complex128


# --- regularisers ------------------------------------------------------------------------------------
def test_dncnn_adds_its_correction_and_has_depth_convolutions():
    net = DnCNN(2, depth=4, width=8, norm=True)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and len([m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]) == 2
    with torch.no_grad():  # make N(x) the constant bias b: then R(x) = x + b (sign convention)
        convs[-1].weight.zero_()
        convs[-1].bias.copy_(torch.tensor([0.5, -2.0]))
    x = torch.randn(3, 2, 6, 6)
    expected = x + torch.tensor([0.5, -2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_equilibrium_cell_is_a_contraction_in_z_at_init(depth: int, spectral_norm: bool):
    """Power iteration on the Jacobian-vector product d f / d z gives a Lipschitz estimate < 1, and plain
    fixed-point iteration converges (residual < 1e-6 in 30 steps)."""
    torch.manual_seed(depth)
    cell = EquilibriumCell(2, depth=depth, width=16, spectral_norm=spectral_norm).eval()
    v = torch.rand(2, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    u = torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
    lip = 0.0
    for _ in range(30):
        _, ju = torch.func.jvp(lambda z: cell(z, v), (v,), (u / u.norm(),))
        lip, u = float(ju.detach().norm()), ju.detach()
    assert lip < 0.9, f"estimated Lipschitz constant in z at init: {lip:.3f}"
    z = v
    with torch.no_grad():
        for _ in range(30):
            z = cell(z, v)
        assert float((cell(z, v) - z).norm() / z.norm()) < 1e-6


# --- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_name", TASK_NAMES)
@pytest.mark.parametrize("name", LEARNED)
def test_training_loss_falls(name: str, task_name: str):
    """30 Adam steps on a tiny problem (K=2, depth 3, width 8) bring the MSE below 0.9x its start."""
    op, x, y = problem(task_name)
    torch.manual_seed(0)
    model = build_model(name, op, **TINY_CFG[name])
    opt = torch.optim.Adam(model.parameters(), lr=LR[name])
    losses = []
    for _ in range(30):
        loss = mse(model(y, op).x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], f"{name} on {task_name}: {losses[0]:.4g} -> {losses[-1]:.4g}"


# --- checkpointing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_lu_ckpt_matches_lu_in_output_and_gradients(dtype: torch.dtype, tol: float):
    _, x, y = problem("ct")
    op = build_task("ct", image_size=16, n_train=1, n_test=1).operator.to(dtype)  # a fresh copy
    x, y = x.to(dtype), y.to(dtype)
    torch.manual_seed(0)
    lu = build_model("lu", op, n_iters=3, reg_depth=3, reg_width=8, norm=True)
    ckpt = build_model("lu_ckpt", op, n_iters=3, reg_depth=3, reg_width=8, norm=True)
    ckpt.load_state_dict(lu.state_dict())
    out = {}
    for key, model in (("lu", lu), ("ckpt", ckpt)):
        x_hat = model(y, op).x
        mse(x_hat, x).backward()
        out[key] = (x_hat.detach(), [p.grad for p in model.parameters()])
    scale = float(out["lu"][0].abs().max())
    assert float((out["ckpt"][0] - out["lu"][0]).abs().max()) <= tol * scale
    for g_ckpt, g_lu in zip(out["ckpt"][1], out["lu"][1], strict=True):
        assert float((g_ckpt - g_lu).abs().max()) <= tol * max(float(g_lu.abs().max()), 1e-30)


# --- memory ------------------------------------------------------------------------------------------
def test_lu_saved_bytes_grow_exactly_linearly_in_K():
    """Saved-for-backward bytes (parameters, operator buffers and y left out) for K = 1, 2, 4: equal
    increments per step (deblur 16x16, B=4, depth 3, width 8: 84232 bytes = 20.6 images per step)."""
    op, _, y = problem("deblur")
    saved = {}
    for k in (1, 2, 4):
        model = build_model("lu", op, n_iters=k, **TINY)
        saved[k] = saved_bytes(lambda m=model: m(y, op).x, always_on(model, op, y))
    per_step = saved[2] - saved[1]
    assert per_step > 0
    assert saved[4] - saved[2] == 2 * per_step, saved


def _luser_saved(op: LinearOperator, y: Tensor, n_iters: int, max_iter: int, backward: str) -> int:
    torch.manual_seed(0)
    model = build_model("luser", op, n_iters=n_iters, **TINY, tol=1e-30, max_iter=max_iter, backward=backward)
    stats: list = []
    nbytes = saved_bytes(lambda: stats.extend(model(y, op).stats), always_on(model, op, y))
    assert [s.forward.iters for s in stats] == [max_iter] * n_iters  # tol 1e-30: every iteration used
    return nbytes


@pytest.mark.parametrize("backward", ["ift", "jfb"])
def test_luser_saved_bytes_do_not_grow_with_solver_iterations(backward: str):
    op, _, y = problem("deblur")
    assert _luser_saved(op, y, 2, 5, backward) == _luser_saved(op, y, 2, 40, backward)


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_luser_ift_saves_a_few_images_per_lu_step(task_name: str):
    """Bound: per LU step, LUSER(ift) saves at most 3 network images (z*, v and the data-term residual
    that the learned step size multiplies) plus what one ``A^T A x`` saves inside the operator, plus
    scalars; independent of the cell width (8 here; ift_hook saves ~10x more). Measured at 16x16, B=4:
    CT and MRI exactly 3 images + 8 bytes, deblur 3 images + the blur's own 1.6 images."""
    op, x, y = problem(task_name)
    image_bytes = x.numel() * x.element_size()  # (B, C, H, W) in op.dtype = the network image (2C real)
    x_req = x.clone().requires_grad_()
    op_bytes = saved_bytes(lambda: op.A_adjoint(op.A(x_req)), [*op.buffers(), x_req])
    per_step = _luser_saved(op, y, 2, 5, "ift") - _luser_saved(op, y, 1, 5, "ift")
    assert per_step <= 3 * image_bytes + op_bytes + 64, (per_step, image_bytes, op_bytes)
    hook_per_step = _luser_saved(op, y, 2, 5, "ift_hook") - _luser_saved(op, y, 1, 5, "ift_hook")
    assert hook_per_step > 4 * per_step


# --- gradients reach every parameter -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["luser", "deq"])
def test_implicit_gradients_match_unrolled_backprop(name: str):
    """Converged solves in float64: IFT gradients equal backprop through every solver iteration, for every
    parameter (so the parameters are passed to deq_solve correctly), to 1e-5 relative (measured: LUSER
    <1e-9; DEQ 2e-6, where differentiating Anderson's iterates converges more slowly than the iterates)."""
    op = Blur(image_size=8, kernel_size=3, sigma=0.7).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = op.A(x)
    grads = {}
    for backward in ("ift", "unrolled"):
        torch.manual_seed(0)
        cfg = {"tol": 1e-13, "max_iter": 200, "bwd_tol": 1e-13, "bwd_max_iter": 200, "backward": backward}
        model = build_model(name, op, **{**TINY_CFG[name], **cfg})
        recon = model(y, op)
        assert all(bool(s.forward.converged.all()) for s in recon.stats)
        mse(recon.x, x).backward()
        grads[backward] = [p.grad.clone() for p in model.parameters()]
    for g_ift, g_unrolled in zip(grads["ift"], grads["unrolled"], strict=True):
        assert float((g_ift - g_unrolled).norm()) <= 1e-5 * float(g_unrolled.norm())


# --- classical ---------------------------------------------------------------------------------------
def test_landweber_converges_to_the_least_squares_solution():
    """A full-rank 8x8 blur (sigma 0.5, 3x3): the least-squares solution of y = A x is x itself."""
    op = Blur(image_size=8, kernel_size=3, sigma=0.5).to(torch.float64)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = build_model("classical", op, method="landweber", n_iters=400)
    assert count_params(model) == 0
    x_hat = model(op.A(x), op).x
    assert not x_hat.requires_grad
    assert float((x_hat - x).norm() / x.norm()) < 1e-8


def test_fbp_error_is_bounded_and_beats_the_adjoint():
    op, x, _ = problem("ct", image_size=32, n=4)
    y = op.A(x)  # noiseless
    err = float((build_model("classical", op, method="fbp")(y, op).x - x).norm() / x.norm())
    adj = op.A_adjoint(y)
    best_scaled_adjoint = float(((adj * x).sum() / (adj * adj).sum() * adj - x).norm() / x.norm())
    assert err < 0.3 and err < 0.5 * best_scaled_adjoint, (err, best_scaled_adjoint)  # measured 0.19, 0.57


def test_zero_filled_with_a_full_mask_recovers_x():
    op = SingleCoilMRI(image_size=16, mask=torch.ones(16))
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g))
    x_hat = build_model("classical", op, method="zero_filled")(op.A(x), op).x
    torch.testing.assert_close(x_hat, x, rtol=0, atol=1e-6)


def test_tikhonov_solves_the_regularised_normal_equations():
    op, _, y = problem("deblur")
    x_hat = build_model("classical", op, method="tikhonov", tikhonov_reg=0.05)(y, op).x
    lhs, rhs = op.normal(x_hat) + 0.05 * x_hat, op.A_adjoint(y)
    assert float((lhs - rhs).norm() / rhs.norm()) < 1e-5


@pytest.mark.parametrize(
    ("task_name", "method"), [("deblur", "fbp"), ("ct", "zero_filled"), ("mri", "tikhonov")]
)
def test_classical_rejects_methods_that_do_not_apply(task_name: str, method: str):
    op, _, _ = problem(task_name)
    with pytest.raises(ValueError, match=rf"{type(op).__name__}.*applicable.*landweber"):
        build_model("classical", op, method=method)


# --- configs -----------------------------------------------------------------------------------------
def test_config_errors_name_what_was_expected():
    op, _, _ = problem("deblur")
    with pytest.raises(ValueError, match=r"unknown config key.*'widht'.*known keys.*reg_width"):
        build_model("lu", op, widht=8)
    with pytest.raises(KeyError, match=r"unknown model 'lux'.*luser"):
        build_model("lux", op)
    for depth in (0, 4):
        with pytest.raises(ValueError, match=r"reg_depth must be in \[1, 3\]"):
            build_model("luser", op, reg_depth=depth)
    with pytest.raises(ValueError, match=r"reg_depth must be >= 2"):
        build_config("lu", reg_depth=1)
    with pytest.raises(TypeError, match=r"n_iters.*expects int.*str"):
        build_config("lu", n_iters="3")
    with pytest.raises(TypeError, match=r"tied.*expects bool"):
        build_config("lu", tied=1)
    with pytest.raises(ValueError, match=r"backward must be one of"):
        build_config("luser", backward="adjoint")
    with pytest.raises(ValueError, match=r"x0 must be one of"):
        build_config("deq", x0="zeros")
    assert build_config("luser", tol=1).tol == 1.0 and isinstance(build_config("luser", tol=1).tol, float)
    assert dataclasses.is_dataclass(build_config("lu")) and build_config("lu").n_iters == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        build_config("lu").n_iters = 3


def test_deq_model_configs_take_deqconfig_defaults_and_checks():
    """LUSER's and DEQ's solver settings are DEQConfig's: same defaults, same errors, same config built."""
    op, _, _ = problem("deblur")
    exposed = [f.name for f in dataclasses.fields(DEQSettings)]
    for model in ("luser", "deq"):
        cfg = build_config(model)
        assert {k: getattr(cfg, k) for k in exposed} == {k: getattr(DEQConfig(), k) for k in exposed}
        assert build_model(model, op, **TINY).deq_cfg == DEQConfig()
        tuned = dict(solver="broyden", tol=1e-5, max_iter=7, backward="jfb", bwd_tol=1e-4, bwd_max_iter=9)
        assert build_model(model, op, **TINY, **tuned).deq_cfg == DEQConfig(**tuned)
        for key, bad in (("max_iter", 0), ("bwd_tol", -1.0), ("solver", "newton"), ("backward", "adj")):
            with pytest.raises(ValueError) as from_model:
                build_config(model, **{key: bad})
            with pytest.raises(ValueError) as from_deq:
                DEQConfig(**{key: bad})
            assert str(from_model.value) == str(from_deq.value) and key in str(from_deq.value)


def test_models_reject_an_operator_of_another_shape():
    op, _, _ = problem("deblur")
    model = build_model("lu", op, n_iters=1, **TINY)
    other, _, y_other = problem("deblur", image_size=24)
    with pytest.raises(ValueError, match=r"built for in_shape \(1, 16, 16\)"):
        model(y_other, other)


@pytest.mark.parametrize("name", ["lu", "luser"])
def test_tied_regularisers_are_one_set_of_weights(name: str):
    """Tied: K-1 fewer regulariser copies; with equal weights, the tied output equals the untied one and
    the tied gradient is the sum of the K untied regularisers' gradients."""
    op, x, y = problem("deblur")
    k = 3
    untied = build_model(name, op, n_iters=k, **TINY)
    tied = build_model(name, op, n_iters=k, tied=True, **TINY)
    attr = "regularisers" if name == "lu" else "cells"
    tied_regs, untied_regs = getattr(tied, attr), getattr(untied, attr)
    assert len(tied_regs) == 1 and len(untied_regs) == k
    assert count_params(untied) - count_params(tied) == (k - 1) * count_params(tied_regs[0])
    for reg in untied_regs:
        reg.load_state_dict(tied_regs[0].state_dict())
    x_tied, x_untied = tied(y, op).x, untied(y, op).x
    torch.testing.assert_close(x_tied, x_untied, rtol=1e-5, atol=1e-6)
    mse(x_tied, x).backward()
    mse(x_untied, x).backward()
    for i, p in enumerate(tied_regs[0].parameters()):
        summed = sum(list(reg.parameters())[i].grad for reg in untied_regs)
        torch.testing.assert_close(p.grad, summed, rtol=1e-4, atol=1e-7)
