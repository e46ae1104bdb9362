"""The feature-state equilibrium cell: implicit gradients against references (float64) and the bytes
its implicit backward saves per LU step (a fixed number of image planes, whatever max_iter and depth)."""

from __future__ import annotations

import pytest
import torch

from bench.meters.memory import saved_tensor_bytes
from models.deq import DEQConfig
from models.feature_cell import FeatureCell

DT = torch.float64
TIGHT = {"tol": 1e-14, "max_iter": 300, "bwd_tol": 1e-14, "bwd_max_iter": 300}


def _cell(depth: int = 2, width: int = 4, channels: int = 1, seed: int = 0) -> FeatureCell:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cell = FeatureCell(channels, depth=depth, width=width, act="gelu").to(DT)
    with torch.no_grad():  # a cell that depends on z clearly (not the 0.1-scaled start), still contractive
        cell.block.convs[-1].weight.mul_(4.0)
        cell.decode.weight.mul_(10.0)
    return cell


def _inputs(
    channels: int = 1, size: int = 6, batch: int = 2, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(batch, channels, size, size, generator=g, dtype=DT).requires_grad_()  # (B, c, H, W)
    weights = torch.randn(batch, channels, size, size, generator=g, dtype=DT)  # loss L = <weights, x>
    return v, weights


def _grads(cell: FeatureCell, v: torch.Tensor, w: torch.Tensor, cfg: DEQConfig) -> list[torch.Tensor]:
    x, stats = cell.solve(v, cfg)
    assert bool(stats.forward.converged.all()), stats.forward.rel_residual
    return list(torch.autograd.grad((x * w).sum(), [v, *cell.parameters()]))


def _rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(float((a - b).norm() / b.norm()) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("depth", [1, 3])
def test_ift_gradient_matches_backprop_through_the_converged_iteration(depth: int) -> None:
    cell = _cell(depth=depth)
    v, w = _inputs()
    unrolled = DEQConfig(solver="fixed_point", tol=1e-15, max_iter=1000, backward="unrolled")
    ref = _grads(cell, v, w, unrolled)
    got = _grads(cell, v, w, DEQConfig(backward="ift", **TIGHT))
    assert _rel_err(got, ref) <= 1e-8
    # the cell really depends on z: the one-step (jfb) gradient is off by far more than that
    assert _rel_err(_grads(cell, v, w, DEQConfig(backward="jfb", **TIGHT)), ref) > 1e-3


def test_jfb_equals_the_one_step_gradient() -> None:
    cell = _cell()
    v, w = _inputs()
    cfg = DEQConfig(backward="jfb", **TIGHT)
    got = _grads(cell, v, w, cfg)
    u = cell.injection(v)
    with torch.no_grad():
        z = torch.zeros_like(u)
        for _ in range(1000):  # the same fixed point, by plain iteration
            z = cell.block(z, u)
    one_step = v + cell.decode(cell.block(z.detach(), u))  # z* a constant, one tracked application
    want = torch.autograd.grad((one_step * w).sum(), [v, *cell.parameters()])
    assert _rel_err(got, list(want)) <= 1e-10


@pytest.mark.parametrize("backward", ["ift", "jfb"])
def test_saved_bytes_per_lu_step_are_2w_plus_c_planes_per_sample_whatever_max_iter_and_depth(
    backward: str,
) -> None:
    """Saved-for-backward bytes of one LU step's regulariser (injection, solve, decoder), per sample:
    exactly z* (W planes), the injection (W) and v (c), float32, for every max_iter and depth."""
    width, channels, size = 6, 2, 8
    plane_bytes = size * size * 4
    planes = set()
    for depth in (1, 2, 3):
        for max_iter in (2, 10, 40):
            cfg = DEQConfig(backward=backward, tol=1e-12, max_iter=max_iter)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                cell = FeatureCell(channels, depth=depth, width=width)
            saved = {}
            for batch in (1, 3):
                v = torch.rand(batch, channels, size, size, requires_grad=True)
                (x, stats), saved[batch] = saved_tensor_bytes(lambda v=v, c=cell, k=cfg: c.solve(v, k))
                assert stats.forward.iters <= max_iter
            per_sample = (saved[3] - saved[1]) / 2
            planes.add(per_sample / plane_bytes)
    assert planes == {2 * width + channels}


def test_feature_cell_rejects_bad_shapes_and_depths() -> None:
    with pytest.raises(ValueError, match="depth must be one of \\(1, 2, 3\\)"):
        FeatureCell(1, depth=4)
    with pytest.raises(ValueError, match="expects v of shape \\(B, 2, H, W\\)"):
        FeatureCell(2, width=4).injection(torch.zeros(1, 1, 4, 4))


def test_luser_builds_the_cell_it_is_asked_for_and_rejects_unknown_cells() -> None:
    from models import build_model
    from models.regularisers import EquilibriumCell
    from operators import build_operator

    op = build_operator("blur", image_size=12)
    feature = build_model("luser", op, cell="feature", n_iters=2, reg_width=4)
    image = build_model("luser", op, n_iters=2, reg_width=4)
    assert all(isinstance(c, FeatureCell) for c in feature.cells)
    assert all(isinstance(c, EquilibriumCell) for c in image.cells)
    y = torch.rand(2, 1, 12, 12)
    recon = feature(y, op)
    assert recon.x.shape == (2, 1, 12, 12) and len(recon.stats) == 2
    with pytest.raises(ValueError, match="cell must be one of \\['feature', 'image'\\]"):
        build_model("luser", op, cell="pixel")
