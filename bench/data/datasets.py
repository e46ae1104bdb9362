"""Embedded, offline datasets: everything here loads without a network connection.

Every loader returns a float32 tensor ``(n, C, size, size)`` with values in [0, 1], and every random
choice comes from an explicit seed or ``torch.Generator`` (the global RNGs are never touched).

- ``natural_crops``: seeded crops of the natural images that scikit-image's wheel ships, split by
  *source image* into train, val and test (no validation or test crop comes from a training image).
- ``ellipse_phantoms``: random-ellipse phantoms, the Learned Primal-Dual / dival recipe (CT).
- ``shepp_logan``: the modified Shepp-Logan phantom (tests, figures).
- ``mni_slices``: axial slices of the MNI ICBM152 2009 T1 template (real brain anatomy, MRI), stored in
  ``bench/data/mni_t1_slices.npz`` by ``bench/data/make_mni_slices.py``.
- ``smooth_phase``: seeded smooth phase maps that turn the magnitude images into complex MRI images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SPLITS = ("train", "val", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def resize(x: Tensor, size: int) -> Tensor:
    """Resize ``(n, C, H, W)`` to ``(n, C, size, size)`` (bilinear, antialiased), clamped to [0, 1]."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Natural images (deblurring)
# --------------------------------------------------------------------------------------------------


def _skimage_image(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        img = getattr(data, name)()
        return img[0] if name == "stereo_motorcycle" else img  # (left, right, disparity) -> left view

    return load


# The scikit-image sample images used, each with whether it is colour. All ship inside the wheel
# (tests/test_datasets.py loads every one). Left out: `horse` (binary silhouette), `logo` and
# `colorwheel` (graphics), and the images that need a download (`brain`, `cells3d`, `eagle`, ...).
NATURAL_SOURCES: dict[str, bool] = {
    "astronaut": True,
    "coffee": True,
    "rocket": True,
    "hubble_deep_field": True,
    "retina": True,
    "stereo_motorcycle": True,
    "chelsea": True,
    "immunohistochemistry": True,
    "camera": False,
    "brick": False,
    "grass": False,
    "moon": False,
    "page": False,
    "coins": False,
    "cell": False,
    "gravel": False,
    "clock": False,
    "text": False,
}

# The split is by source image: the three lists are disjoint. Colour (channels=3) uses only the colour
# sources of each list; grey (channels=1) uses all of them, colour ones converted to grey.
NATURAL_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut", "rocket", "hubble_deep_field", "retina", "camera", "grass", "moon", "page", "cell",
    ),
    "val": ("coffee", "stereo_motorcycle", "brick", "coins"),
    "test": ("chelsea", "immunohistochemistry", "gravel", "clock", "text"),
}  # fmt: skip


def natural_sources(split: str, channels: int = 1) -> tuple[str, ...]:
    """The source images of ``split`` usable with ``channels`` (1: all, 3: colour only)."""
    _check_split(split)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    names = NATURAL_SPLITS[split]
    return names if channels == 1 else tuple(n for n in names if NATURAL_SOURCES[n])


@lru_cache(maxsize=64)
def _prepared_source(name: str, size: int, channels: int) -> Tensor:
    """One source image as float32 ``(C, H, W)`` in [0, 1], rescaled for ``size`` x ``size`` crops.

    Large images are down-scaled so that their shorter side is ``2 * size``: a crop then covers about
    a quarter of the scene whatever ``size`` is, so crops hold structure rather than a patch of flat
    background (down-scaling also averages away sensor noise and JPEG artefacts). Images are never
    up-scaled (that would blur the ground truth), except when the shorter side is below ``size``.
    """
    from skimage.color import rgb2gray
    from skimage.util import img_as_float32

    img = img_as_float32(_skimage_image(name)())  # (H, W) or (H, W, 3) in [0, 1]
    if channels == 1:
        img = rgb2gray(img) if img.ndim == 3 else img
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]  # (1, H, W)
    else:
        if img.ndim != 3:
            raise ValueError(f"source image {name!r} is grey; channels=3 needs a colour source")
        x = torch.from_numpy(np.ascontiguousarray(img[..., :3], dtype=np.float32)).permute(2, 0, 1)
    h, w = x.shape[-2:]
    scale = max(min(1.0, 2 * size / min(h, w)), size / min(h, w))
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    return x[0].clamp_(0.0, 1.0)  # (C, H', W')


def natural_crops(split: str, n: int, size: int, seed: int, channels: int = 1) -> Tensor:
    """``n`` seeded square crops of the natural images of ``split``: ``(n, channels, size, size)``.

    Crops cycle through the split's sources in a seeded random order (each source used once per
    cycle), at uniformly random positions. The first ``k`` crops of a call do not depend on ``n``.
    Grey images use scikit-image's ``rgb2gray`` (ITU-R 709 luma).
    """
    _check_positive(n=n, size=size)
    sources = natural_sources(split, channels)
    gen = torch.Generator().manual_seed(seed)
    crops = []
    order: list[int] = []
    for _ in range(n):
        if not order:
            order = torch.randperm(len(sources), generator=gen).tolist()
        img = _prepared_source(sources[order.pop(0)], size, channels)  # (C, H, W)
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (), generator=gen))
        left = int(torch.randint(0, w - size + 1, (), generator=gen))
        crops.append(img[:, top : top + size, left : left + size])
    return torch.stack(crops).contiguous()  # (n, C, size, size)


# --------------------------------------------------------------------------------------------------
# Random ellipses and Shepp-Logan (CT)
# --------------------------------------------------------------------------------------------------

MAX_ELLIPSES = 70
MEAN_ELLIPSES = 40.0


def random_ellipses(generator: torch.Generator) -> Tensor:
    """Parameters of one phantom's ellipses ``(k, 6)``: value, semi-axes a1, a2, centre x, y, rotation.

    The dival ``EllipsesDataset`` recipe, drawn in the same order: 70 candidates with value
    ~ U(-0.4, 1), semi-axes ~ 0.2 Exp(1), centre ~ U(-0.9, 0.9)^2 and rotation ~ U(0, 2 pi); the first
    ``k = min(Poisson(40), 70)`` are kept.
    """
    m = MAX_ELLIPSES
    value = torch.rand(m, generator=generator) * 1.4 - 0.4
    a1 = 0.2 * torch.empty(m).exponential_(1.0, generator=generator)
    a2 = 0.2 * torch.empty(m).exponential_(1.0, generator=generator)
    cx = torch.rand(m, generator=generator) * 1.8 - 0.9
    cy = torch.rand(m, generator=generator) * 1.8 - 0.9
    rot = torch.rand(m, generator=generator) * (2 * math.pi)
    k = min(int(torch.poisson(torch.tensor(MEAN_ELLIPSES), generator=generator)), m)
    return torch.stack([value, a1, a2, cx, cy, rot], dim=1)[:k]  # (k, 6)


def render_ellipses(params: Tensor, size: int) -> Tensor:
    """Sum of ``value * indicator(ellipse)`` on the pixel centres of [-1, 1]^2: ``(size, size)``.

    Rows run along y, columns along x; a point p is inside when ``|R(-rot) (p - c) / (a1, a2)| <= 1``.
    """
    value, a1, a2, cx, cy, rot = (params[:, i, None, None] for i in range(6))  # each (k, 1, 1)
    t = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0  # pixel centres
    dx, dy = t[None, None, :] - cx, t[None, :, None] - cy  # (k, 1, size) along x, (k, size, 1) along y
    c, s = torch.cos(rot), torch.sin(rot)
    u = (c / a1) * dx + (s / a1) * dy  # (k, size, size): coordinates in the ellipse's own frame
    v = (-s / a2) * dx + (c / a2) * dy
    return ((u * u + v * v <= 1.0).float() * value).sum(0)  # (size, size)


def _one_ellipse_phantom(size: int, generator: torch.Generator) -> Tensor:
    """One phantom ``(size, size)``: random ellipses, rendered, then normalised as dival does.

    The non-zero pixels are shifted so that their minimum is 0, then the image is divided by its
    maximum (the background stays 0).
    """
    img = render_ellipses(random_ellipses(generator), size)
    fg = img != 0
    if fg.any():
        img[fg] -= img.min()
    peak = img.max()
    return img / peak if peak > 0 else img


def ellipse_phantoms(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``n`` random-ellipse phantoms ``(n, 1, size, size)`` in [0, 1] (see ``_one_ellipse_phantom``)."""
    _check_positive(n=n, size=size)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return torch.stack([_one_ellipse_phantom(size, generator) for _ in range(n)])[:, None]


def shepp_logan(size: int) -> Tensor:
    """The modified Shepp-Logan phantom (scikit-image's 400 x 400 one, resized): ``(1, 1, size, size)``."""
    from skimage.data import shepp_logan_phantom

    _check_positive(size=size)
    x = torch.from_numpy(shepp_logan_phantom().astype(np.float32))[None, None]  # (1, 1, 400, 400)
    return resize(x, size)


# --------------------------------------------------------------------------------------------------
# MNI ICBM152 T1 slices (MRI)
# --------------------------------------------------------------------------------------------------

MNI_FILE = "mni_t1_slices.npz"
MNI_TEST_EVERY = 5  # every 5th stored slice (positions 2, 7, 12, ...) is a test slice
MNI_TEST_OFFSET = 2
MNI_VAL_EVERY = 10  # every 10th stored slice (positions 4, 14, 24, ...) is a validation slice
MNI_VAL_OFFSET = 4


@lru_cache(maxsize=1)
def _mni_file() -> tuple[np.ndarray, np.ndarray]:
    """The stored slices ``(S, 128, 128)`` uint8 and their axial indices ``(S,)`` in the template."""
    with resources.files("bench.data").joinpath(MNI_FILE).open("rb") as fh, np.load(fh) as f:
        return f["slices"], f["z_index"]


def mni_split_positions(split: str) -> np.ndarray:
    """Positions (into the stored slices) of ``split``: test is every 5th slice (from the third),
    validation every 10th (from the fifth, never a test slice), train the rest."""
    _check_split(split)
    positions = np.arange(len(_mni_file()[1]))
    is_test = positions % MNI_TEST_EVERY == MNI_TEST_OFFSET
    is_val = positions % MNI_VAL_EVERY == MNI_VAL_OFFSET
    chosen = {"test": is_test, "val": is_val, "train": ~(is_test | is_val)}[split]
    return np.flatnonzero(chosen)


def mni_slices(split: str, size: int = 128) -> Tensor:
    """Axial slices of the MNI ICBM152 2009 T1 template: ``(n, 1, size, size)`` float32 in [0, 1].

    60 slices, 2 mm apart, through the skull-stripped brain (see ``bench/data/make_mni_slices.py``);
    the split is by slice index: every 5th slice is a test slice (12), every 10th (offset 4) a
    validation slice (6), the other 42 train. The split is disjoint but not independent: the
    template is one (average) brain, and each test or validation slice lies 2 mm from a training
    slice, so neighbouring slices are strongly correlated. Read test numbers as "unseen slices of a
    seen anatomy", not "unseen subjects". Resized to ``size`` when not 128.
    Values are the template's uint8 intensities / 255 (no per-slice normalisation).
    """
    _check_positive(size=size)
    slices, _ = _mni_file()
    x = torch.from_numpy(slices[mni_split_positions(split)].astype(np.float32) / 255.0)[:, None]
    return resize(x, size)  # (n, 1, size, size)


def mni_z_index(split: str) -> np.ndarray:
    """The template's axial voxel indices of the slices ``mni_slices(split)`` returns, in order."""
    return _mni_file()[1][mni_split_positions(split)]


# --------------------------------------------------------------------------------------------------
# Smooth phase (complex MRI images)
# --------------------------------------------------------------------------------------------------


def smooth_phase(n: int, size: int, generator: torch.Generator, n_knots: int = 4) -> Tensor:
    """Seeded smooth phase maps ``(n, 1, size, size)`` in radians.

    Uniform values in [-pi, pi) on an ``n_knots`` x ``n_knots`` grid, bicubically interpolated to
    ``size`` x ``size``: a slowly varying phase like the one field inhomogeneity and coil sensitivity
    leave on real MR images, so that the complex image is not real (a real image would give
    k-space a conjugate symmetry that a network could exploit).
    """
    _check_positive(n=n, size=size)
    knots = (torch.rand(n, 1, n_knots, n_knots, generator=generator) * 2 - 1) * math.pi
    return F.interpolate(knots, size=(size, size), mode="bicubic", align_corners=True)
