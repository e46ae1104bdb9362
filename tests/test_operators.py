"""Properties of the forward operators: exact adjoints, linearity, gradients, norms and known answers.

Every registry entry of ``OPERATORS`` has cases in ``CASES`` (both CT backends, both blur boundaries, grey
and RGB blur); the property tests run over cases x {float32, float64} x batch {1, 3} x devices.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch

from operators import (
    MASKS,
    OPERATORS,
    Blur,
    LinearOperator,
    ParallelBeamCT,
    SingleCoilMRI,
    build_operator,
    fft2c,
    gaussian_kernel,
    gaussian_noise,
    ifft2c,
    inner,
    limited_angles,
    uniform_angles,
)

# Small problems keep the whole file to seconds; every entry of OPERATORS must appear here.
CASES: dict[str, Callable[[], LinearOperator]] = {
    "blur-grey-circular": lambda: Blur(image_size=16, channels=1, kernel_size=5, sigma=1.0),
    "blur-rgb-circular": lambda: Blur(image_size=16, channels=3, kernel_size=5, sigma=1.0),
    "blur-grey-zero": lambda: Blur(image_size=16, channels=1, kernel_size=4, sigma=1.0, boundary="zero"),
    "blur-rgb-zero": lambda: Blur(image_size=16, channels=3, kernel_size=5, sigma=1.0, boundary="zero"),
    "ct-csr": lambda: ParallelBeamCT(image_size=16, n_angles=9, backend="csr"),
    "ct-grid_sample": lambda: ParallelBeamCT(image_size=16, n_angles=9, backend="grid_sample"),
    "ct-limited-csr": lambda: ParallelBeamCT(image_size=15, angles=limited_angles(5, math.pi / 3)),
    "mri-random": lambda: SingleCoilMRI(image_size=16, acceleration=4, center_fraction=0.125),
    "mri-2d-mask": lambda: SingleCoilMRI(
        image_size=16, mask=torch.rand(16, 16, generator=torch.Generator().manual_seed(3)) < 0.4
    ),
}
DTYPES = [torch.float32, torch.float64]
ADJOINT_TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def make(case: str, dtype: torch.dtype, device: torch.device) -> LinearOperator:
    return CASES[case]().to(device=device, dtype=dtype)


@functools.cache
def op_norm_of(case: str, dtype: torch.dtype) -> float:
    """||A|| by the base class's power iteration, once per case and dtype (it does not depend on device)."""
    return make(case, dtype, torch.device("cpu")).op_norm()


def rand_like_space(op: LinearOperator, shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    """Standard normal (complex for complex operators) batch on the operator's device and dtype."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=gen, dtype=op.real_dtype)
    if op.is_complex:
        x = torch.complex(x, torch.randn((batch, *shape), generator=gen, dtype=op.real_dtype))
    return x.to(op.device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_every_registry_entry_has_cases() -> None:
    covered = {name.split("-")[0] for name in CASES}
    assert covered == set(OPERATORS)


# --- the adjoint contract, over cases x dtypes x batch sizes x devices -------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_adjoint(case: str, dtype: torch.dtype, batch: int, device: torch.device) -> None:
    """ODL's relative adjoint error |<Ax, y> - <x, A^T y>| / (||A|| ||x|| ||y||), tolerance by dtype."""
    op = make(case, dtype, device)
    x = rand_like_space(op, op.in_shape, batch, 1)
    y = rand_like_space(op, op.out_shape, batch, 2)
    assert op.A(x).dtype == op.dtype and op.A_adjoint(y).dtype == op.dtype
    norm_x, norm_y = x.flatten(1).norm(dim=1), y.flatten(1).norm(dim=1)
    err = (inner(op.A(x), y) - inner(x, op.A_adjoint(y))).abs() / (op_norm_of(case, dtype) * norm_x * norm_y)
    assert float(err.max()) <= ADJOINT_TOL[dtype], f"{case}: adjoint error {float(err.max()):.2e}"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_linearity(case: str, dtype: torch.dtype, batch: int, device: torch.device) -> None:
    op = make(case, dtype, device)
    x1, x2 = rand_like_space(op, op.in_shape, batch, 3), rand_like_space(op, op.in_shape, batch, 4)
    a, b = 0.7, -2.3
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel(op.A(a * x1 + b * x2), a * op.A(x1) + b * op.A(x2)) <= tol
    y1, y2 = rand_like_space(op, op.out_shape, batch, 5), rand_like_space(op, op.out_shape, batch, 6)
    assert rel(op.A_adjoint(a * y1 + b * y2), a * op.A_adjoint(y1) + b * op.A_adjoint(y2)) <= tol
    # Batch elements are independent: the first image gives the same answer alone.
    assert rel(op.A(x1)[:1], op.A(x1[:1])) <= tol


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_vjp_is_adjoint(case: str, dtype: torch.dtype, batch: int, device: torch.device) -> None:
    """Autograd's vector-Jacobian product of A (for complex A: A^H v) equals A_adjoint, and vice versa."""
    op = make(case, dtype, device)
    x = rand_like_space(op, op.in_shape, batch, 7).requires_grad_(True)
    y = rand_like_space(op, op.out_shape, batch, 8)
    (vjp,) = torch.autograd.grad(op.A(x), x, grad_outputs=y)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel(vjp, op.A_adjoint(y)) <= tol
    y.requires_grad_(True)
    x0 = x.detach()
    (vjp_adj,) = torch.autograd.grad(op.A_adjoint(y), y, grad_outputs=x0)
    assert rel(vjp_adj, op.A(x0)) <= tol


TINY: dict[str, Callable[[], LinearOperator]] = {
    "blur-circular": lambda: Blur(image_size=8, channels=1, kernel_size=3, sigma=0.8),
    "blur-zero": lambda: Blur(image_size=8, channels=3, kernel_size=3, sigma=0.8, boundary="zero"),
    "ct-csr": lambda: ParallelBeamCT(image_size=8, n_angles=5),
    "ct-grid_sample": lambda: ParallelBeamCT(image_size=8, n_angles=5, backend="grid_sample"),
    "mri": lambda: SingleCoilMRI(image_size=8, mask=torch.tensor([0, 1, 1, 0, 1, 1, 0, 0])),
}


@pytest.mark.parametrize("case", list(TINY))
def test_op_norm_matches_dense_svd(case: str) -> None:
    """Power iteration against the largest singular value of the dense matrix (A applied to a basis)."""
    op = TINY[case]().to(torch.float64)
    n_in = math.prod(op.in_shape)
    basis = torch.eye(n_in, dtype=op.dtype).reshape(n_in, *op.in_shape)  # (n_in, *in_shape)
    dense = op.A(basis).reshape(n_in, -1).T  # (n_out, n_in): column j = A e_j
    sigma_max = float(torch.linalg.matrix_norm(dense, ord=2))
    assert op.op_norm(n_iter=500, rtol=1e-12) == pytest.approx(sigma_max, rel=1e-6)
    # The dense transpose is the adjoint too (an independent check of A_adjoint on every basis vector).
    n_out = math.prod(op.out_shape)
    basis_out = torch.eye(n_out, dtype=op.dtype).reshape(n_out, *op.out_shape)
    dense_adj = op.A_adjoint(basis_out).reshape(n_out, -1).T  # (n_in, n_out)
    assert torch.allclose(dense_adj, dense.conj().T, atol=1e-12)


# --- known answers --------------------------------------------------------------------------------
def supersampled_disk(
    n: int, radius: float, factor: int = 8, profile: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Centred disk on [-1, 1]^2 (value 1, or ``profile(|p|^2)``), averaged over factor^2 sub-pixels.

    Returns float64 ``(1, 1, n, n)``.
    """
    c = (torch.arange(n * factor, dtype=torch.float64) + 0.5) / (n * factor) * 2 - 1
    v, u = torch.meshgrid(c, c, indexing="ij")
    rr = u**2 + v**2
    values = (rr <= radius**2).to(torch.float64) if profile is None else profile(rr)
    return values.reshape(n, factor, n, factor).mean(dim=(1, 3))[None, None]


@pytest.mark.parametrize("backend", ["csr", "grid_sample"])
def test_ct_disk_projection(backend: str) -> None:
    """Radon of a disk of radius r and value 1 is 2 sqrt(r^2 - s^2) at every angle; of the bump
    (1 - |p|^2 / r^2)_+ it is (4 / 3) (r^2 - s^2)^(3/2) / r^2.

    Observed (64 x 64, r = 0.6, 12 angles, pixels = sub-pixel averages): relative L2 error 0.0135 for
    the disk, largest at the rim where the square root has infinite slope: it is the pixelisation of
    the edge (between 0.006 and 0.029 over sizes 32-128 and radii 0.5-0.6, not monotone; halving the
    step along the rays changes nothing). The smooth bump shows the method's order: 0.0080, 0.0017,
    0.0005 at N = 32, 64, 128 (about h^2). Bounds 0.016 and 0.0025.
    """
    n, r = 64, 0.6
    op = ParallelBeamCT(image_size=n, n_angles=12, backend=backend).to(torch.float64)
    s = (torch.arange(op.n_detectors, dtype=torch.float64) - (op.n_detectors - 1) / 2) * (2 / n)
    chord = torch.sqrt((r**2 - s**2).clamp(min=0))  # (D,) half chord length
    disk = op.A(supersampled_disk(n, r))[0, 0]  # (A, D)
    assert rel(disk, (2 * chord).expand_as(disk)) < 0.016
    bump = op.A(supersampled_disk(n, r, profile=lambda rr: (1 - rr / r**2).clamp(min=0)))[0, 0]
    assert rel(bump, (4 / 3 * chord**3 / r**2).expand_as(bump)) < 0.0025


def shepp_logan(n: int) -> torch.Tensor:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return torch.tensor(resize(shepp_logan_phantom(), (n, n), anti_aliasing=True), dtype=torch.float32)[
        None, None
    ]


def test_ct_fbp_reconstructs_shepp_logan() -> None:
    """FBP(A(phantom)) at 180 angles, 128 x 128: relative error 0.1367 measured.

    The error is the Ram-Lak FBP's own (ringing and blur at the phantom's sharp edges): deepinv's FBP
    and scikit-image's iradon give 0.1367 and 0.1368 on the same phantom. A wrong scale or a
    transposed geometry gives errors near or above 1. Bound 0.15. On a smooth disk it is 0.04.
    """
    op = ParallelBeamCT(image_size=128, n_angles=180, backend="grid_sample")
    phantom = shepp_logan(128)
    assert rel(op.fbp(op.A(phantom)), phantom) < 0.15
    assert rel(op.classical(op.A(phantom)), phantom) < 0.15
    disk = supersampled_disk(128, 0.6).float()
    assert rel(op.fbp(op.A(disk)), disk) < 0.06


def test_ct_backends_agree(device: torch.device) -> None:
    """Same discretisation: the CSR weights are grid_sample's bilinear weights (f32 rounding apart)."""
    kwargs = {"image_size": 24, "angles": torch.rand(11, generator=torch.Generator().manual_seed(0)) * 3.0}
    csr = ParallelBeamCT(**kwargs, backend="csr").to(device)
    grid = ParallelBeamCT(**kwargs, backend="grid_sample").to(device)
    x = rand_like_space(csr, csr.in_shape, 3, 9)
    y = rand_like_space(csr, csr.out_shape, 3, 10)
    assert rel(csr.A(x), grid.A(x)) < 1e-5
    assert rel(csr.A_adjoint(y), grid.A_adjoint(y)) < 1e-5


def test_ct_angles_and_defaults() -> None:
    assert torch.allclose(
        uniform_angles(4), torch.tensor([0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]).double()
    )
    assert float(limited_angles(6, math.pi / 2).max()) < math.pi / 2
    op = ParallelBeamCT(image_size=20, angles=[0.0, 0.5, 1.0])
    assert op.out_shape == (1, 3, 30)  # ceil(sqrt(2) 20) = 29, bumped to the parity of 20
    # Explicit angles equal to the uniform set give the same operator as n_angles.
    x = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ParallelBeamCT(20, 6).A(x), ParallelBeamCT(20, angles=uniform_angles(6)).A(x))


@pytest.mark.parametrize("backend", ["csr", "grid_sample"])
def test_ct_copies_and_converts(backend: str) -> None:
    """deepcopy and pickling work (the CSR parts are dense buffers) and .to(float64) converts a copy."""
    import copy
    import pickle

    op = ParallelBeamCT(image_size=12, n_angles=4, backend=backend)
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    twin = copy.deepcopy(op).to(torch.float64)
    assert op.dtype == torch.float32 and twin.dtype == torch.float64
    assert rel(twin.A(x.double()).float(), op.A(x)) < 1e-6
    assert torch.equal(pickle.loads(pickle.dumps(op)).A_adjoint(op.A(x)), op.A_adjoint(op.A(x)))


def test_ct_projection_at_zero_angle_sums_columns() -> None:
    """At angle 0 the rays run down the pixel columns: the projection is the column sum times h."""
    n = 10
    op = ParallelBeamCT(image_size=n, angles=[0.0], n_detectors=n).to(torch.float64)
    x = torch.rand(2, 1, n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(op.A(x)[:, 0, 0], x[:, 0].sum(dim=1) * (2 / n), atol=1e-12)


def test_ct_differentiable_to_second_order() -> None:
    op = ParallelBeamCT(image_size=6, n_angles=2).to(torch.float64)
    y = torch.randn(1, *op.out_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: op.A_adjoint(v) ** 2, (y,))


@pytest.mark.parametrize("boundary", ["circular", "zero"])
@pytest.mark.parametrize("channels", [1, 3])
def test_blur_delta_gives_the_kernel(boundary: str, channels: int) -> None:
    """A true convolution: a delta at p blurs to the kernel with its centre (kh//2, kw//2) at p, unflipped.

    The kernel is asymmetric (and of even width), so a correlation would give it flipped.
    """
    kernel = torch.arange(1.0, 13.0).reshape(3, 4)
    op = Blur(image_size=12, channels=channels, kernel=kernel, boundary=boundary)
    x = torch.zeros(1, channels, 12, 12)
    x[:, :, 6, 5] = 1.0
    expected = torch.zeros(1, channels, 12, 12)
    expected[:, :, 6 - 1 : 6 + 2, 5 - 2 : 5 + 2] = kernel
    assert (
        torch.equal(op.A(x), expected) if boundary == "zero" else torch.allclose(op.A(x), expected, atol=1e-5)
    )


def test_blur_circular_wraps_and_zero_truncates() -> None:
    kernel = torch.arange(1.0, 10.0).reshape(3, 3)
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    circ = Blur(image_size=8, kernel=kernel).A(x)[0, 0]
    zero = Blur(image_size=8, kernel=kernel, boundary="zero").A(x)[0, 0]
    assert circ[-1, -1] == pytest.approx(1.0, abs=1e-5) and circ[1, 1] == pytest.approx(9.0, abs=1e-5)
    assert zero[-1, -1] == 0.0 and zero[1, 1] == 9.0 and float(zero.sum()) == 5 + 6 + 8 + 9


def test_gaussian_kernel() -> None:
    k = gaussian_kernel(7, 1.5)
    assert k.shape == (7, 7) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0)) and int(k.argmax()) == 3 * 7 + 3
    assert float(k[3, 4] / k[3, 3]) == pytest.approx(math.exp(-1 / (2 * 1.5**2)), rel=1e-6)


@pytest.mark.parametrize("boundary", ["circular", "zero"])
def test_blur_tikhonov_solves_regularised_normal_equations(boundary: str, device: torch.device) -> None:
    op = Blur(image_size=16, channels=3, kernel_size=5, sigma=1.2, boundary=boundary).to(
        device, torch.float64
    )
    y = rand_like_space(op, op.out_shape, 2, 11)
    reg = 0.05
    x = op.tikhonov(y, reg)
    # Closed form (circular) to rounding; conjugate gradients (zero) to their stopping rule, rtol 1e-6.
    assert rel(op.normal(x) + reg * x, op.A_adjoint(y)) < (1e-12 if boundary == "circular" else 2e-6)
    assert rel(op.classical(y), op.tikhonov(y, 1e-2)) < 1e-12


def test_blur_classical_deblurs() -> None:
    """Tikhonov with the default reg beats the blurred image on a noisy blurred phantom."""
    op = Blur(image_size=64, kernel_size=9, sigma=1.5)
    x = shepp_logan(64)
    y = op.A(x) + gaussian_noise(x, 0.01, torch.Generator().manual_seed(0))
    assert rel(op.classical(y), x) < 0.8 * rel(y, x)


def test_mri_full_mask_is_unitary(device: torch.device) -> None:
    op = SingleCoilMRI(image_size=12, mask=torch.ones(12)).to(device, torch.float64)
    x = rand_like_space(op, op.in_shape, 3, 12)
    assert torch.allclose(op.A(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-12)
    assert rel(op.normal(x), x) < 1e-13
    assert op.op_norm() == pytest.approx(1.0, rel=1e-9)


def test_fft2c_is_the_centred_orthonormal_fft() -> None:
    """fastMRI's fft2c: numpy's ``fftshift(fft2(ifftshift(x), norm="ortho"))``; ifft2c inverts it."""
    import numpy as np

    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 1, 9, 10, dtype=torch.complex128, generator=gen)  # odd and even sizes
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    assert torch.allclose(fft2c(x), torch.from_numpy(ref), atol=1e-12)
    assert torch.allclose(ifft2c(fft2c(x)), x, atol=1e-12)
    const = torch.ones(1, 1, 8, 8, dtype=torch.complex128)
    assert abs(complex(fft2c(const)[0, 0, 4, 4]) - 8.0) < 1e-12  # DC at (H // 2, W // 2), value sqrt(HW)


def test_mri_masks_columns_and_dtypes() -> None:
    op = SingleCoilMRI(image_size=128, mask_type="equispaced", acceleration=4, center_fraction=0.08, seed=1)
    assert op.mask.shape == (1, 1, 128) and op.dtype == torch.complex64
    assert op.acceleration == pytest.approx(4.0, rel=0.1)
    x = rand_like_space(op, op.in_shape, 1, 14)
    y = op.A(x)
    unsampled = op.mask[0, 0] == 0
    assert float(y[..., unsampled].abs().max()) == 0.0
    assert op.to(torch.float64).dtype == torch.complex128
    assert set(MASKS) == {"random", "equispaced", "gaussian"}


# --- noise ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_gaussian_noise_statistics(dtype: torch.dtype) -> None:
    y = torch.zeros(4, 1, 64, 64, dtype=dtype)
    state = torch.get_rng_state()
    n = gaussian_noise(y, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert n.shape == y.shape and n.dtype == dtype
    assert float(n.abs().pow(2).mean()) == pytest.approx(0.09, rel=0.05)  # E|n|^2 = sigma^2
    if dtype.is_complex:
        assert float(n.real.std()) == pytest.approx(0.3 / math.sqrt(2), rel=0.05)
        assert float(n.imag.std()) == pytest.approx(0.3 / math.sqrt(2), rel=0.05)
        assert abs(float((n.real * n.imag).mean())) < 0.01 * 0.09
    assert torch.equal(n, gaussian_noise(y, 0.3, torch.Generator().manual_seed(0)))
    assert not torch.equal(n, gaussian_noise(y, 0.3, torch.Generator().manual_seed(1)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gaussian_noise_cpu_generator_cuda_tensor() -> None:
    y = torch.zeros(2, 1, 8, 8, device="cuda", dtype=torch.complex64)
    n = gaussian_noise(y, 0.1, torch.Generator().manual_seed(0))
    assert n.device.type == "cuda"
    assert torch.equal(n.cpu(), gaussian_noise(y.cpu(), 0.1, torch.Generator().manual_seed(0)))


# --- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["blur-grey-circular", "ct-csr", "mri-random"])
def test_bad_shapes_and_dtypes_raise(case: str) -> None:
    op = CASES[case]()
    good_x = rand_like_space(op, op.in_shape, 2, 0)
    good_y = rand_like_space(op, op.out_shape, 2, 0)
    shape_str = ", ".join(map(str, op.in_shape))
    with pytest.raises(ValueError, match=rf"shape \(B, {shape_str}\)"):
        op.A(good_x[:, :, :-1])
    with pytest.raises(ValueError, match="shape"):
        op.A(good_x[0])  # missing batch dimension
    with pytest.raises(ValueError, match="shape"):
        op.A_adjoint(good_y[..., :-1])
    wrong = good_x.real if op.is_complex else good_x.double()
    with pytest.raises(ValueError, match=str(op.dtype)):
        op.A(wrong)
    with pytest.raises(ValueError, match=str(op.dtype)):
        op.A_adjoint(good_y.to(torch.complex128 if op.is_complex else torch.float64))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: Blur(kernel=torch.ones(3, 3, 3)), "2-D"),
        (lambda: Blur(image_size=8, kernel=torch.ones(9, 9)), "exceed"),
        (lambda: Blur(boundary="reflect"), "circular"),
        (lambda: Blur(channels=2), "channels"),
        (lambda: Blur(sigma=0.0), "sigma"),
        (lambda: ParallelBeamCT(image_size=8, backend="astra"), "grid_sample"),
        (lambda: ParallelBeamCT(image_size=8, angles=torch.zeros(2, 2)), "1-D"),
        (lambda: ParallelBeamCT(image_size=8, n_angles=0), "n_angles"),
        (lambda: ParallelBeamCT(image_size=8, n_detectors=0), "n_detectors"),
        (lambda: SingleCoilMRI(image_size=8, mask_type="radial"), "equispaced"),
        (lambda: SingleCoilMRI(image_size=16, acceleration=0.5), "acceleration"),
        (lambda: SingleCoilMRI(image_size=8, mask=torch.ones(7)), r"\(8,\)"),
        (lambda: SingleCoilMRI(image_size=8, mask=torch.full((8,), 0.5)), "0 or 1"),
    ],
)
def test_constructor_validation(factory: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_registry_defaults_and_unknown_name() -> None:
    for name in OPERATORS:
        op = build_operator(name)  # every entry builds from its documented defaults
        assert op.in_shape[-1] == 128
    with pytest.raises(KeyError, match="known operators.*blur.*ct.*mri"):
        build_operator("deblur")


# --- cross-checks against deepinv 0.5 (a peer dependency, installed in CI) -----------------------------
@pytest.mark.parametrize("boundary", ["circular", "zero"])
@pytest.mark.parametrize("channels", [1, 3])
def test_blur_matches_deepinv(boundary: str, channels: int) -> None:
    """deepinv's Blur is also a true convolution with centre (kh//2, kw//2): padding "circular" or
    "constant" equal our two boundaries, for odd and even kernel sizes."""
    import deepinv

    gen = torch.Generator().manual_seed(0)
    for shape in [(5, 7), (4, 6)]:
        kernel = torch.rand(*shape, generator=gen)
        op = Blur(image_size=20, channels=channels, kernel=kernel, boundary=boundary)
        peer = deepinv.physics.Blur(
            filter=kernel[None, None], padding={"circular": "circular", "zero": "constant"}[boundary]
        )
        x = torch.randn(2, channels, 20, 20, generator=gen)
        assert rel(op.A(x), peer.A(x)) < 1e-6
        assert rel(op.A_adjoint(x), peer.A_adjoint(x)) < 1e-6


def test_mri_matches_deepinv() -> None:
    """deepinv's MRI (images as 2 real channels) with our mask: same A and A^T."""
    import deepinv

    op = SingleCoilMRI(image_size=24, mask_type="gaussian", seed=5)
    peer = deepinv.physics.MRI(mask=op.mask.expand(1, 24, 24), img_size=(1, 24, 24))
    x = rand_like_space(op, op.in_shape, 2, 15)

    def to_peer(z: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) complex -> (B, 2, H, W) real
        return torch.view_as_real(z[:, 0]).permute(0, 3, 1, 2)

    assert rel(to_peer(op.A(x)), peer.A(to_peer(x))) < 1e-6
    assert rel(to_peer(op.A_adjoint(x)), peer.A_adjoint(to_peer(x))) < 1e-6


def test_ct_matches_deepinv_tomography() -> None:
    """deepinv's Tomography (parallel beam, exact autograd adjoint) is the same discretisation when
    ceil(sqrt(2) N) is even: it pads the image to that width, rotates it about the centre with bilinear
    grid_sample and sums one sample per pixel. Its angles turn the other way and it measures lengths in
    pixels, so ours at theta equals deepinv's at -theta (degrees) times 2 / N. (For odd ceil(sqrt(2) N),
    e.g. N = 64, its rotation centre is half a pixel off the image centre and the two differ.)"""
    import deepinv

    n = 32
    angles = torch.rand(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.pi
    op = ParallelBeamCT(image_size=n, angles=angles)
    peer = deepinv.physics.Tomography(
        angles=-angles * 180 / math.pi, img_width=n, normalize=False, adjoint_via_backprop=True
    )
    x = rand_like_space(op, op.in_shape, 2, 16)
    y = rand_like_space(op, op.out_shape, 2, 17)
    assert peer.A(x).shape[-2:] == (op.n_detectors, 7)
    assert rel(op.A(x), peer.A(x).transpose(-1, -2) * (2 / n)) < 1e-5
    assert rel(op.A_adjoint(y), peer.A_adjoint(y.transpose(-1, -2)) * (2 / n)) < 1e-5
    # Both reconstruct the same phantom equally well by FBP (a geometry-independent check).
    phantom = shepp_logan(n)
    ours, theirs = (
        ParallelBeamCT(image_size=n, n_angles=90),
        deepinv.physics.Tomography(90, n, normalize=False),
    )
    assert rel(ours.fbp(ours.A(phantom)), phantom) < 1.05 * rel(theirs.fbp(theirs.A(phantom)), phantom)
