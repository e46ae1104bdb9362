"""The three benchmark tasks: an operator, fixed train/val/test splits of images, and a noise level.

``TASKS`` holds one ``TaskSpec`` per task with its documented defaults; ``build_task`` turns a spec
(plus overrides) into a ``Task`` with the operator on the device and the images in the operator's
dtype. Defaults (all images ``image_size`` x ``image_size`` = 128 x 128, values in [0, 1]):

============ =========================== ============================= ========== ======= ===== ======
task         operator                    data                          noise std  n_train n_val n_test
============ =========================== ============================= ========== ======= ===== ======
``deblur``   Gaussian blur 9 x 9,        scikit-image natural images,  0.01       256     16    16
             sigma 1.5 px, circular      grey crops, split by source
``ct``       parallel beam, 60 angles    random-ellipse phantoms       0.008      256     16    16
             on [0, pi), CSR backend     (dival recipe)
``mri``      single-coil Cartesian, 4x   MNI ICBM152 T1 axial slices,  0.01       42      6     12
             random columns, 8 % centre  smooth random phase
============ =========================== ============================= ========== ======= ===== ======

Noise is white Gaussian added to the measurement, ``y = A x + n`` with ``std(n) = noise_sigma``
(complex MRI noise: ``E|n|^2 = noise_sigma^2``), an absolute level in each task's measurement units:

- deblur: the blurred image is in the image's units, so 0.01 is 1 % of the [0, 1] range (the level
  of the first author's later public code for CelebA deblurring; the paper itself does not say).
- ct: the sinogram is a line integral over the [-1, 1]^2 image domain (image units x length), so its
  scale does not depend on ``image_size``: over the ellipse phantoms the mean |sinogram| is 0.31
  (``CT_MEAN_ABS_SINOGRAM``, measured on 256 phantoms at 32, 64 and 128 pixels) and a phantom's
  largest value about 1.0. 0.008 is 2.5 % of the mean, the level of dival's standard "ellipses"
  dataset (relative std 0.025 of each sinogram's mean |value|), made one absolute level for all.
- mri: k-space uses the orthonormal FFT, so a k-space noise std sigma is an image-domain noise std
  sigma on every sampled frequency: 0.01 is 1 % of the [0, 1] magnitude range, at every size.
  Noise is added on the sampled k-space entries only (``noise_support="sampled"``): the others are
  not measured, and stay exactly 0 in ``y``, as in masked fastMRI k-space.

Splits and seeds. Every task has three disjoint splits, ``train``, ``val`` (model selection and
plateau stopping in `bench.harness.train`) and ``test`` (the reported scores):

- deblur: by scikit-image *picture* (``datasets.NATURAL_SPLITS``: 9 train, 4 val, 5 test pictures);
- ct: by *phantom seed* (the phantoms of each split come from a random stream of its own);
- mri: by *slice* (``datasets.mni_split_positions``: 42 train, 6 val, 12 test slices).

Every random stream comes from `bench.data.seeds` (one named stream each: ``train_images``,
``val_images``, ``test_images``, ``train_phase``, ``val_phase``, ``test_phase``, ``val_noise``,
``test_noise``). The test images are fixed: their streams do not depend on ``seed``, so runs with
different seeds are scored on the same images and ``test_measurements()`` is the same in every build
with the same size and noise level. ``seed`` picks the training and validation images (which crops,
which phantoms, which MNI training slices, and their phases) and the validation noise.
The operator is fixed by the spec (e.g. the MRI mask uses the operator's default seed), not by
``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bench.data import datasets, seeds
from operators import build_operator
from operators.base import LinearOperator
from operators.noise import gaussian_noise

CT_MEAN_ABS_SINOGRAM = 0.31  # documented reference for the CT noise level; checked by tests/test_tasks.py


def _generator(seed: int) -> torch.Generator:
    """A CPU generator from a seed `bench.data.seeds.stream_seed` derived."""
    return torch.Generator(device="cpu").manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Image sources: (split, n, size, channels, seed) -> real float32 (n, channels, size, size) in [0, 1]
# --------------------------------------------------------------------------------------------------


def _natural(split: str, n: int, size: int, channels: int, seed: int) -> Tensor:
    return datasets.natural_crops(split, n, size, seed, channels=channels)


def _ellipses(split: str, n: int, size: int, channels: int, seed: int) -> Tensor:
    if channels != 1:
        raise ValueError(f"ellipse phantoms have 1 channel, the operator wants {channels}")
    return datasets.ellipse_phantoms(n, size, _generator(seed))


def _mni(split: str, n: int, size: int, channels: int, seed: int) -> Tensor:
    """``n`` MNI slices of ``split``: a seeded subset for train, evenly spaced slices for val and test."""
    if channels != 1:
        raise ValueError(f"MNI slices have 1 channel, the operator wants {channels}")
    x = datasets.mni_slices(split, size)
    if n > len(x):
        raise ValueError(f"the MNI {split} split has {len(x)} slices, asked for n={n}")
    if split != "train":
        idx = torch.linspace(0, len(x) - 1, n).round().long()
    else:
        idx = torch.randperm(len(x), generator=_generator(seed))[:n].sort().values
    return x[idx]


IMAGE_SOURCES: dict[str, Callable[[str, int, int, int, int], Tensor]] = {
    "natural": _natural,
    "ellipses": _ellipses,
    "mni": _mni,
}


def _unit_range(x_true: Tensor) -> Tensor:
    return torch.ones(x_true.shape[0], dtype=torch.float32, device=x_true.device)


def _max_of_target(x_true: Tensor) -> Tensor:
    """fastMRI convention: the data range of each image is the max of its magnitude target."""
    return x_true.abs().flatten(1).amax(1).to(torch.float32)


DATA_RANGES: dict[str, Callable[[Tensor], Tensor]] = {"unit": _unit_range, "max_of_target": _max_of_target}


def _sampled_entries(op: LinearOperator, noise: Tensor) -> Tensor:
    """Keep the noise on the sampled k-space entries only (MRI: the operator's 0/1 ``mask``)."""
    mask = getattr(op, "mask", None)
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"noise_support 'sampled' needs an operator with a 0/1 tensor 'mask' (MRI), "
            f"got {type(op).__name__}"
        )
    return noise * mask


# Where the measurement noise lives: everywhere in y, or only where the operator samples.
NOISE_SUPPORTS: dict[str, Callable[[LinearOperator, Tensor], Tensor]] = {
    "full": lambda op, noise: noise,
    "sampled": _sampled_entries,
}


# --------------------------------------------------------------------------------------------------
# Specs and tasks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """One task's defaults (see the module docstring for the table and the reasoning).

    Attributes:
        name: the key in ``TASKS``.
        operator: the key in ``operators.OPERATORS``.
        images: the key in ``IMAGE_SOURCES``.
        image_size: side of the square images in pixels.
        n_train, n_val, n_test: number of training, validation and test images.
        noise_sigma: absolute std of the white Gaussian measurement noise.
        noise_support: the key in ``NOISE_SUPPORTS`` (all of y, or the sampled entries only).
        data_range: the key in ``DATA_RANGES`` (PSNR/SSIM data range per image).
        ssim: the key in ``bench.meters.quality.SSIM_CONVENTIONS`` (Gaussian sigma 1.5 as in Wang et
            al. for deblur and CT; fastMRI's 7x7 uniform window for MRI).
        operator_kwargs: extra constructor arguments of the operator, as (name, value) pairs.
    """

    name: str
    operator: str
    images: str
    image_size: int = 128
    n_train: int = 256
    n_test: int = 16
    n_val: int = 16
    noise_sigma: float = 0.01
    noise_support: str = "full"
    data_range: str = "unit"
    ssim: str = "gaussian"
    operator_kwargs: tuple[tuple[str, Any], ...] = ()


TASKS: dict[str, TaskSpec] = {
    "deblur": TaskSpec(
        name="deblur",
        operator="blur",
        images="natural",
        noise_sigma=0.01,
        operator_kwargs=(("channels", 1), ("kernel_size", 9), ("sigma", 1.5), ("boundary", "circular")),
    ),
    "ct": TaskSpec(
        name="ct",
        operator="ct",
        images="ellipses",
        noise_sigma=0.008,
        operator_kwargs=(("n_angles", 60), ("backend", "csr")),
    ),
    "mri": TaskSpec(
        name="mri",
        operator="mri",
        images="mni",
        n_train=42,
        n_test=12,
        n_val=6,
        noise_sigma=0.01,
        noise_support="sampled",
        data_range="max_of_target",
        ssim="fastmri",
        operator_kwargs=(
            ("mask_type", "random"),
            ("acceleration", 4),
            ("center_fraction", 0.08),
            ("seed", 0),
        ),
    ),
}


#: Held-out split -> the `bench.data.seeds` stream of its measurement noise.
HELD_OUT_NOISE_STREAMS: dict[str, str] = {"val": "val_noise", "test": "test_noise"}


@dataclass
class Task:
    """A built task: operator on its device, disjoint train/val/test images, and the noise model.

    ``x_train (N, *in_shape)``, ``x_val (V, *in_shape)`` and ``x_test (M, *in_shape)`` are in
    ``operator.dtype`` on the operator's device (MRI: complex64 images, magnitude from anatomy,
    smooth seeded phase). Every task, embedded or real-data, must provide all three splits.
    """

    name: str
    spec: TaskSpec
    operator: LinearOperator = field(repr=False)
    x_train: Tensor = field(repr=False)
    x_test: Tensor = field(repr=False)
    x_val: Tensor = field(repr=False)
    noise_sigma: float
    seed: int = 0  # the run's seed (the validation noise follows it; the test noise is fixed)
    _y_cache: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def measure(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``y = A x + n``, ``n`` white Gaussian of std ``noise_sigma`` drawn from ``generator``.

        (MRI: ``n`` is zero on the k-space entries the mask does not sample.)

        The noise is drawn on the generator's device and moved to ``x``'s, so a CPU generator gives
        the same noise on every device (``operators.noise.gaussian_noise``).
        """
        y = self.operator.A(x)
        if self.noise_sigma == 0:
            return y
        noise = gaussian_noise(y, self.noise_sigma, generator)  # drawn on the generator's device
        return y + NOISE_SUPPORTS[self.spec.noise_support](self.operator, noise)

    def images(self, split: str) -> Tensor:
        """The ground-truth images of a held-out ``split`` (a key of ``HELD_OUT_NOISE_STREAMS``)."""
        if split not in HELD_OUT_NOISE_STREAMS:
            raise KeyError(f"unknown held-out split {split!r}; known: {sorted(HELD_OUT_NOISE_STREAMS)}")
        return self.x_val if split == "val" else self.x_test

    def measurements(self, split: str) -> Tensor:
        """``A x + n`` of a held-out ``split`` with noise from that split's stream; cached."""
        if split not in self._y_cache:
            x = self.images(split)
            with torch.no_grad():
                self._y_cache[split] = self.measure(
                    x, seeds.generator(self.seed, HELD_OUT_NOISE_STREAMS[split])
                )
        return self._y_cache[split]

    def test_measurements(self) -> Tensor:
        """``A x_test + n`` with noise from a fixed seed; computed once and cached."""
        return self.measurements("test")

    def val_measurements(self) -> Tensor:
        """``A x_val + n`` with noise from the run's validation-noise stream; computed once and cached."""
        return self.measurements("val")

    def to_metric_image(self, x: Tensor) -> Tensor:
        """The real image the metrics compare, ``(B, C, H, W)``: the magnitude for complex images."""
        return x.abs() if x.is_complex() else x

    def data_range(self, x_true: Tensor) -> Tensor:
        """The PSNR/SSIM data range per image ``(B,)``: 1 for [0, 1] images, max |x| for MRI."""
        return DATA_RANGES[self.spec.data_range](x_true)


def build_task(
    name: str,
    *,
    image_size: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    noise_sigma: float | None = None,
    seed: int = 0,
    n_val: int | None = None,
    device: str | torch.device = "cpu",
    operator_kwargs: dict[str, Any] | None = None,
) -> Task:
    """Build task ``name`` from ``TASKS``, with any of the spec's defaults overridden.

    ``operator_kwargs`` update the spec's operator arguments (an unknown one raises the operator's
    own error); the image channels follow the operator (e.g. ``{"channels": 3}`` for RGB deblurring).
    ``seed`` (>= 0) picks the training and validation images; the test images and the noise of the
    held-out splits are fixed.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    spec = TASKS[name]
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    size = spec.image_size if image_size is None else image_size
    n_tr = spec.n_train if n_train is None else n_train
    n_te = spec.n_test if n_test is None else n_test
    n_va = spec.n_val if n_val is None else n_val
    sigma = spec.noise_sigma if noise_sigma is None else float(noise_sigma)
    if sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {sigma}")
    op_kw = dict(spec.operator_kwargs)
    op_kw.update(operator_kwargs or {})
    if "image_size" in op_kw:
        raise ValueError("pass image_size to build_task, not in operator_kwargs")

    op = build_operator(spec.operator, image_size=size, **op_kw).to(device)
    channels = op.in_shape[0]
    source = IMAGE_SOURCES[spec.images]
    x_train = source("train", n_tr, size, channels, seeds.stream_seed(seed, "train_images"))
    x_test = source("test", n_te, size, channels, seeds.stream_seed(seed, "test_images"))
    x_val = source("val", n_va, size, channels, seeds.stream_seed(seed, "val_images"))
    if op.is_complex:  # magnitude x smooth phase, each phase from a stream of its own
        x_train = _with_phase(x_train, seeds.generator(seed, "train_phase"))
        x_test = _with_phase(x_test, seeds.generator(seed, "test_phase"))
        x_val = _with_phase(x_val, seeds.generator(seed, "val_phase"))
    return Task(
        name=name,
        spec=spec,
        operator=op,
        x_train=x_train.to(device=op.device, dtype=op.dtype),
        x_test=x_test.to(device=op.device, dtype=op.dtype),
        x_val=x_val.to(device=op.device, dtype=op.dtype),
        noise_sigma=sigma,
        seed=seed,
    )


def _with_phase(magnitude: Tensor, generator: torch.Generator) -> Tensor:
    """``magnitude * exp(i phase)`` with a smooth phase drawn from `generator` (``datasets.smooth_phase``)."""
    n, _, size, _ = magnitude.shape
    phase = datasets.smooth_phase(n, size, generator)  # (n, 1, size, size)
    return torch.polar(magnitude, phase)
