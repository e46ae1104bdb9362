"""The real datasets as image sources of the tasks: ``data = "celeba" | "lodopab" | "fastmri"``.

A run with ``data`` set keeps its task's operator, noise model, metric image and data range (the
``Task`` contract) and takes its images from the dataset at ``data_root`` instead of the embedded
ones. Every source gives real float32 images ``(n, C, size, size)`` in [0, 1]; complex tasks (MRI)
give them the same smooth seeded phase as the embedded MRI images. Choices:

- ``celeba``: the aligned faces (``bench.data.realdata.CelebA``: central square, resized, grey for
  one channel, RGB for ``operator.channels = 3``).
- ``lodopab``: the ground-truth slices (362 x 362, resized), measured by *our* operator (the task's
  CT geometry, with its exact adjoint and our noise model). LoDoPaB's own sinograms (1000 angles x
  513 detector bins, Poisson noise, a different pixel scale) are not used: the models unroll the
  task's operator, and a measurement from another geometry would make ``A`` and the data disagree.
- ``fastmri``: the ``reconstruction_esc`` targets divided by the volume's ``max`` (so the magnitude is
  in [0, 1], like the embedded MRI images), resized and measured by *our* MRI operator and mask.
  The raw k-space (640 x ~368, read-out oversampled, another mask) is not used, for the same reason.

Splits (fixed; no image is in two of them): training images are a seeded subset of the dataset's
training split (``seed`` picks them, as for the embedded tasks); test images are evenly spaced over
the split named by ``data_split`` (``"test"``, or ``"validation"``; fastMRI's public test split has
no targets, so its only test split is ``"validation"``); validation images are evenly spaced over
the dataset's validation split, and, when that split is also the test split, over the indices the
test images leave out. fastMRI slices are indexed over ``(file, slice)`` pairs in file-name order.

A missing or malformed ``data_root`` raises ``DatasetFormatError`` naming the file and the expected
layout (``REAL_DATA[name].layout``); ``check_root`` does it without reading images, before any run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.data import realdata
from bench.data.datasets import resize
from bench.data.realdata import DatasetFormatError

#: Split names a sweep uses -> each dataset's own name for them.
SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class RealData:
    """One dataset: its layout (for error messages and the README), the split names it has, the
    default test split, and how to open a split (``open(root, split) -> indexable of images``)."""

    name: str
    layout: str
    split_names: dict[str, str]
    default_test_split: str
    channels: tuple[int, ...]
    open: Callable[[Path, str, int, int], Any]  # (root, dataset split, size, channels) -> dataset

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.split_names if s != "train")


class _Resized:
    """A dataset of ``(1, H, W)`` real images in [0, 1] resized to ``(1, size, size)``."""

    def __init__(self, items: Any, size: int, get: Callable[[Any], Tensor]) -> None:
        self.items, self.size, self.get = items, size, get

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        return resize(self.get(self.items[index])[None].clamp(0.0, 1.0), self.size)[0]


def _celeba(root: Path, split: str, size: int, channels: int) -> Any:
    return realdata.CelebA(root, split, size=size, channels=channels)


def _lodopab(root: Path, split: str, size: int, channels: int) -> Any:
    ds = realdata.LoDoPaB(root, split, with_observation=False)
    return _Resized(ds, size, lambda gt: gt)


def _fastmri_target(sample: realdata.FastMRISlice) -> Tensor:
    if sample.max_value <= 0:
        raise DatasetFormatError(f"{sample.fname}: attribute 'max' must be positive, got {sample.max_value}")
    return sample.target / sample.max_value  # (1, 320, 320) in [0, 1]


def _fastmri(root: Path, split: str, size: int, channels: int) -> Any:
    return _Resized(realdata.FastMRISingleCoil(root / split), size, _fastmri_target)


REAL_DATA: dict[str, RealData] = {
    "celeba": RealData(
        name="celeba",
        layout="DATA_ROOT/celeba/img_align_celeba/000001.jpg ... (178 x 218 JPEGs) and "
        "DATA_ROOT/celeba/list_eval_partition.txt ('000001.jpg 0' per line; 0/1/2 = train/valid/test)",
        split_names={"train": "train", "validation": "valid", "test": "test"},
        default_test_split="test",
        channels=(1, 3),
        open=_celeba,
    ),
    "lodopab": RealData(
        name="lodopab",
        layout="DATA_ROOT/ground_truth_{train,validation,test}_000.hdf5, _001.hdf5, ... (the Zenodo zips "
        "unpacked; dataset 'data' of shape (n <= 128, 362, 362) float32; observation files are not read)",
        split_names={"train": "train", "validation": "validation", "test": "test"},
        default_test_split="test",
        channels=(1,),
        open=_lodopab,
    ),
    "fastmri": RealData(
        name="fastmri",
        layout="DATA_ROOT/singlecoil_train/*.h5 and DATA_ROOT/singlecoil_val/*.h5 (fastMRI single-coil "
        "knee files: 'kspace' complex64 (slices, 640, W), 'reconstruction_esc' float32 (slices, 320, "
        "320), 'ismrmrd_header', attribute 'max')",
        split_names={"train": "singlecoil_train", "validation": "singlecoil_val"},
        default_test_split="validation",
        channels=(1,),
        open=_fastmri,
    ),
}


def _known(name: str) -> RealData:
    if name not in REAL_DATA:
        raise KeyError(f"unknown data {name!r}; known datasets: {sorted(REAL_DATA)}")
    return REAL_DATA[name]


def check_split(name: str, split: str) -> None:
    """``split`` must be one of the dataset's test splits (ValueError naming them)."""
    data = _known(name)
    if split not in data.test_splits:
        raise ValueError(f"data {name!r}: data_split must be one of {list(data.test_splits)}, got {split!r}")


def _open(name: str, root: str, split: str, size: int, channels: int) -> Any:
    data = _known(name)
    try:
        return data.open(Path(root), data.split_names[split], size, channels)
    except DatasetFormatError as err:
        raise DatasetFormatError(
            f"data {name!r} at data_root {root!r}: {err}; expected layout: {data.layout}"
        ) from None


def check_root(name: str, root: str, test_split: str) -> dict[str, int]:
    """Open the dataset's splits at ``root`` (metadata only) and return their sizes; a missing or
    malformed root raises ``DatasetFormatError`` naming the file and the expected layout."""
    data = _known(name)
    check_split(name, test_split)
    if not root:
        raise DatasetFormatError(f"data {name!r} needs data_root (a folder); expected layout: {data.layout}")
    if not Path(root).is_dir():
        raise DatasetFormatError(
            f"data {name!r}: data_root {root!r} is not a folder; expected layout: {data.layout}"
        )
    sizes = {}
    for split in data.split_names:
        ds = _open(name, root, split, 8, 1)
        sizes[split] = len(ds)
        _close(ds)  # no HDF5 handle outlives the check (runs start in forked processes)
    return sizes


def _close(ds: Any) -> None:
    inner = getattr(ds, "items", ds)
    h5 = getattr(inner, "_h5", None)
    if h5 is not None:
        h5.close()


def _evenly(indices: list[int], n: int, what: str) -> list[int]:
    if n > len(indices):
        raise ValueError(f"{what} has {len(indices)} images, asked for {n}")
    return [indices[round(i * (len(indices) - 1) / max(n - 1, 1))] for i in range(n)] if n else []


def split_indices(
    sizes: dict[str, int], test_split: str, n_test: int, n_val: int
) -> tuple[list[int], list[int]]:
    """Fixed ``(test, validation)`` indices: test evenly spaced over ``test_split``; validation evenly
    spaced over the validation split, skipping the test indices when the two splits are one."""
    test = _evenly(list(range(sizes[test_split])), n_test, f"the {test_split} split")
    pool = [i for i in range(sizes["validation"]) if test_split != "validation" or i not in set(test)]
    return test, _evenly(pool, n_val, "the validation split (beside the test images)")


def real_images(name: str, root: str, split: str, indices: list[int], size: int, channels: int) -> Tensor:
    """Images ``indices`` of ``split`` (a key of ``SPLITS``), real float32 ``(n, C, size, size)``, [0, 1]."""
    data = _known(name)
    if channels not in data.channels:
        raise ValueError(f"data {name!r} has {list(data.channels)} channel(s), the operator wants {channels}")
    if not indices:
        return torch.zeros(0, channels, size, size)
    ds = _open(name, root, split, size, channels)
    try:
        return torch.stack([ds[i] for i in indices]).to(torch.float32)
    finally:
        _close(ds)


def train_indices(n_available: int, n: int, generator: torch.Generator) -> list[int]:
    """A seeded subset of ``n`` of ``n_available`` training images, in index order."""
    if n > n_available:
        raise ValueError(f"the training split has {n_available} images, asked for n_train={n}")
    return sorted(torch.randperm(n_available, generator=generator)[:n].tolist())


def task_images(
    name: str,
    root: str,
    test_split: str,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int,
    channels: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_train, x_val, x_test)`` of a task on dataset ``name``: ``n_train`` seeded training images
    (from ``generator``), ``n_val`` fixed validation images of the dataset's validation split (beside
    the test images when that is also the test split) and ``n_test`` fixed test images of
    ``test_split`` ("" = the dataset's default), real ``(n, C, size, size)``."""
    test_split = test_split or _known(name).default_test_split
    sizes = check_root(name, root, test_split)
    test, val = split_indices(sizes, test_split, n_test, n_val)
    train = train_indices(sizes["train"], n_train, generator)
    x_train = real_images(name, root, "train", train, size, channels)
    x_val = real_images(name, root, "validation", val, size, channels)
    x_test = real_images(name, root, test_split, test, size, channels)
    return x_train, x_val, x_test
