"""Tasks (bench/data/tasks.py): the noise model, fixed splits and test measurements, metric conventions."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from bench.data import datasets
from bench.data.tasks import CT_MEAN_ABS_SINOGRAM, TASKS, Task, TaskSpec, build_task

SMALL = {"image_size": 32, "n_train": 8, "n_test": 4}


@cache
def small_task(name: str, seed: int = 0) -> Task:
    return build_task(name, seed=seed, **SMALL)


def test_registry_holds_the_three_documented_specs():
    assert set(TASKS) == {"deblur", "ct", "mri"}
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name and spec.image_size == 128
        with pytest.raises(AttributeError):
            spec.noise_sigma = 0.5  # frozen
    assert dict(TASKS["deblur"].operator_kwargs) == {
        "channels": 1, "kernel_size": 9, "sigma": 1.5, "boundary": "circular",
    }  # fmt: skip
    assert dict(TASKS["ct"].operator_kwargs) == {"n_angles": 60, "backend": "csr"}
    mri = dict(TASKS["mri"].operator_kwargs)
    assert (mri["acceleration"], mri["center_fraction"], mri["mask_type"]) == (4, 0.08, "random")


def test_unknown_task_lists_known_names_and_bad_operator_kwarg_raises():
    with pytest.raises(KeyError, match=r"unknown task 'denoise'.*\['ct', 'deblur', 'mri'\]"):
        build_task("denoise")
    with pytest.raises(TypeError, match="n_angels"):
        build_task("ct", image_size=16, n_train=1, n_test=1, operator_kwargs={"n_angels": 10})
    with pytest.raises(ValueError, match="image_size"):
        build_task("deblur", n_train=1, n_test=1, operator_kwargs={"image_size": 16})
    with pytest.raises(ValueError, match="seed"):
        build_task("deblur", image_size=16, n_train=1, n_test=1, seed=-1)
    with pytest.raises(ValueError, match="MNI train split has 42 slices"):
        build_task("mri", image_size=16, n_train=43, n_test=1)


@pytest.mark.parametrize("name", ["deblur", "ct", "mri"])
def test_task_images_shapes_dtypes_and_ranges(name):
    task = small_task(name)
    op = task.operator
    assert task.x_train.shape == (8, *op.in_shape) and task.x_test.shape == (4, *op.in_shape)
    assert task.x_train.dtype == task.x_test.dtype == op.dtype
    assert (name == "mri") == task.x_train.is_complex()
    for x in (task.x_train, task.x_test):
        mag = task.to_metric_image(x)
        assert not mag.is_complex() and mag.shape == x.shape
        assert mag.min() >= 0 and mag.max() <= 1 + 1e-6
        assert (mag.flatten(1).std(1) > 0.01).all()  # real content in every image


@pytest.mark.parametrize("name", ["deblur", "ct", "mri"])
def test_measure_is_A_x_plus_noise_of_the_documented_sigma(name):
    # More images than the smoke preset so that the std estimate is tight (>= 15k noise entries).
    sigma = 0.05
    task = build_task(name, image_size=32, n_train=2, n_test=12, noise_sigma=sigma)
    assert task.noise_sigma == sigma
    x = task.x_test
    y = task.measure(x, torch.Generator().manual_seed(3))
    n = y - task.operator.A(x)
    if name == "mri":
        sampled = task.operator.mask.expand_as(n).bool()
        assert n[~sampled].abs().max() == 0  # unsampled k-space is not measured: exactly 0
        n = n[sampled]
        assert abs(n.real.std().item() - sigma / 2**0.5) / (sigma / 2**0.5) < 0.05
        measured = n.abs().pow(2).mean().sqrt().item()  # E|n|^2 = sigma^2
    else:
        measured = n.std().item()
    assert abs(measured - sigma) / sigma < 0.05, (name, measured)
    assert abs(n.mean().item() if not n.is_complex() else n.mean().abs().item()) < 0.1 * sigma
    # Deterministic per generator, different across generators.
    assert torch.equal(y, task.measure(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(y, task.measure(x, torch.Generator().manual_seed(4)))


def test_measure_without_noise_is_exactly_A_x():
    task = build_task("ct", image_size=16, n_train=1, n_test=2, noise_sigma=0.0)
    assert torch.equal(task.measure(task.x_test, torch.Generator()), task.operator.A(task.x_test))


@pytest.mark.parametrize("name", ["deblur", "ct", "mri"])
def test_test_set_and_measurements_fixed_across_calls_builds_and_seeds(name):
    a, b = small_task(name, seed=0), small_task(name, seed=1)
    again = build_task(name, seed=0, **SMALL)
    y = a.test_measurements()
    assert a.test_measurements() is y  # cached
    assert torch.equal(y, again.test_measurements())  # same in a fresh build
    assert torch.equal(a.x_test, b.x_test) and torch.equal(y, b.test_measurements())  # seed-free
    assert torch.equal(a.x_train, again.x_train)  # training images deterministic per seed ...
    assert not torch.equal(a.x_train, b.x_train)  # ... and different across seeds
    noise = y - a.operator.A(a.x_test)
    assert noise.abs().max() > 0  # the test measurements are noisy
    # The first k test images do not depend on n_test (the smoke preset scores a prefix).
    if name != "mri":  # MRI takes evenly spaced test slices instead
        bigger = build_task(name, image_size=32, n_train=1, n_test=6)
        assert torch.equal(bigger.x_test[:4], a.x_test)


def test_train_and_test_images_never_coincide():
    for name in ("deblur", "ct", "mri"):
        task = small_task(name)
        flat_train, flat_test = task.x_train.flatten(1), task.x_test.flatten(1)
        dist = torch.cdist(flat_test.abs(), flat_train.abs())  # (M, N)
        assert dist.min() > 1e-3, name


def test_mri_images_anatomy_with_smooth_phase_and_split_slices():
    task = small_task("mri")
    mag = task.to_metric_image(task.x_test)
    expected = datasets.mni_slices("test", 32)[torch.linspace(0, 11, 4).round().long()]
    assert torch.allclose(mag, expected, atol=1e-6)  # the magnitude is the anatomy
    phase = torch.angle(task.x_test)[mag > 0.1]
    assert phase.std() > 0.3  # not a real image
    z_train = set(datasets.mni_z_index("train").tolist())
    assert not z_train & set(datasets.mni_z_index("test").tolist())


def test_data_range_conventions():
    for name in ("deblur", "ct"):
        task = small_task(name)
        assert torch.equal(task.data_range(task.x_test), torch.ones(4))
    mri = small_task("mri")
    dr = mri.data_range(mri.x_test)
    assert dr.shape == (4,) and dr.dtype == torch.float32
    assert torch.allclose(dr, mri.to_metric_image(mri.x_test).flatten(1).amax(1))  # fastMRI: max of target
    assert (dr < 1).all() and (dr > 0.5).all()  # uint8 / 255 anatomy, not renormalised per slice


def test_ct_mean_abs_sinogram_matches_the_documented_reference_at_every_size():
    for size in (32, 64):
        task = build_task("ct", image_size=size, n_train=64, n_test=1, seed=7)
        mean_abs = task.operator.A(task.x_train).abs().mean().item()
        assert abs(mean_abs - CT_MEAN_ABS_SINOGRAM) / CT_MEAN_ABS_SINOGRAM < 0.1, (size, mean_abs)
    assert abs(TASKS["ct"].noise_sigma / CT_MEAN_ABS_SINOGRAM - 0.025) < 0.002  # 2.5 %, as documented


def test_rgb_deblurring_follows_the_operator_channels():
    task = build_task("deblur", image_size=32, n_train=3, n_test=2, operator_kwargs={"channels": 3})
    assert task.x_train.shape == (3, 3, 32, 32)
    assert (task.x_test[:, 0] - task.x_test[:, 1]).abs().max() > 0.01  # real colour, not grey copies


def test_build_task_leaves_the_global_rngs_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for name in ("deblur", "ct", "mri"):
        build_task(name, image_size=16, n_train=2, n_test=2, seed=3).test_measurements()
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state[1], np.random.get_state()[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_test_measurements_identical_on_cuda():
    cpu = build_task("mri", **SMALL)
    gpu = build_task("mri", device="cuda", **SMALL)
    assert gpu.x_test.device.type == "cuda" and gpu.operator.device.type == "cuda"
    assert torch.allclose(gpu.test_measurements().cpu(), cpu.test_measurements(), atol=1e-5)
