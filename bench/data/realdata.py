"""Loaders for the real datasets the paper-scale runs use: CelebA, LoDoPaB-CT and fastMRI single-coil knee.

Nothing here downloads: each loader reads files the user already has, in the layout the dataset's
own distribution uses, and checks them as it goes. A file that is missing, truncated, corrupt or
not in the expected format (missing key, wrong shape, wrong dtype) raises ``DatasetFormatError``
(a ``ValueError``) whose message names the file and what was expected.

HDF5 files are opened lazily, on first use, and the handles are dropped when a dataset is pickled,
so the datasets work with ``DataLoader(num_workers > 0)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bench.data.datasets import resize


class DatasetFormatError(ValueError):
    """A dataset file is missing, truncated, corrupt or not in the expected format."""


def _open_h5(path: Path) -> Any:
    import h5py

    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetFormatError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {e}") from e


def _h5_array(path: Path, f: Any, key: str, shape: tuple[int | None, ...], dtype: np.dtype) -> Any:
    """The HDF5 dataset ``f[key]``, checked to have ``shape`` (None: any length) and ``dtype``."""
    if key not in f:
        raise DatasetFormatError(f"{path}: missing dataset {key!r} (has {sorted(f.keys())})")
    d = f[key]
    ok = d.ndim == len(shape) and all(s is None or s == t for s, t in zip(shape, d.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise DatasetFormatError(f"{path}: dataset {key!r} should have shape {want}, got {d.shape}")
    if d.dtype != dtype:
        raise DatasetFormatError(f"{path}: dataset {key!r} should have dtype {dtype}, got {d.dtype}")
    return d


def _read(path: Path, dset: Any, index: Any) -> np.ndarray:
    try:
        return dset[index]
    except OSError as e:  # a truncated file can open fine and fail on the read
        raise DatasetFormatError(f"{path}: could not read {dset.name}[{index}] (truncated?): {e}") from e


class _LazyH5:
    """Open HDF5 handles on demand; forget them when pickled (each worker opens its own)."""

    def __init__(self) -> None:
        self._handles: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = _open_h5(path)
        return self._handles[path]

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {"_handles": {}}


# --------------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------------

CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}
CELEBA_IMAGE_WH = (178, 218)  # aligned-and-cropped images: width 178, height 218


class CelebA(Dataset):
    """CelebA aligned faces, centre-cropped to a square and resized: ``(C, size, size)`` float32 in [0, 1].

    Layout (the one ``torchvision.datasets.CelebA`` uses)::

        root/celeba/img_align_celeba/000001.jpg ...   (178 x 218 JPEGs)
        root/celeba/list_eval_partition.txt           ("000001.jpg 0"; 0/1/2 = train/valid/test)

    Why not ``torchvision.datasets.CelebA(download=False)``: it needs all five annotation files
    (attributes, identities, boxes, landmarks, partition) and checks their MD5 sums before it
    reads anything, although reconstruction needs only the images and the partition. That refuses
    a copy with only those two files, and it cannot be tested on a small synthetic copy. This class
    reads the same layout, so a torchvision download works here unchanged.

    Each image is cropped to its central 178 x 178 square, resized (bilinear, antialiased) to
    ``size`` and, for ``channels=1``, converted to grey with scikit-image's ``rgb2gray`` (as
    ``bench.data.datasets.natural_crops``).
    """

    def __init__(self, root: str | Path, split: str = "train", size: int = 128, channels: int = 1):
        if split not in CELEBA_SPLITS:
            raise ValueError(f"split must be one of {tuple(CELEBA_SPLITS)}, got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.folder = Path(root) / "celeba"
        self.image_dir = self.folder / "img_align_celeba"
        self.size, self.channels = size, channels
        self.files = self._read_partition(self.folder / "list_eval_partition.txt", CELEBA_SPLITS[split])
        if not self.image_dir.is_dir():
            raise DatasetFormatError(f"{self.image_dir}: image folder not found")

    @staticmethod
    def _read_partition(path: Path, wanted: int) -> list[str]:
        if not path.is_file():
            raise DatasetFormatError(f"{path}: partition file not found")
        files = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2") or not parts[0].endswith(".jpg"):
                raise DatasetFormatError(
                    f"{path}: line {lineno} should read '<name>.jpg <0|1|2>', got {line.strip()!r}"
                )
            if int(parts[1]) == wanted:
                files.append(parts[0])
        return files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image, UnidentifiedImageError
        from skimage.color import rgb2gray

        path = self.image_dir / self.files[index]
        if not path.is_file():
            raise DatasetFormatError(f"{path}: image listed in list_eval_partition.txt not found")
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetFormatError(f"{path}: not a readable JPEG image: {e}") from e
        h, w = rgb.shape[:2]
        if (w, h) != CELEBA_IMAGE_WH:
            raise DatasetFormatError(f"{path}: expected a 178 x 218 (W x H) aligned image, got {w} x {h}")
        top = (h - w) // 2
        rgb = rgb[top : top + w]  # central square (178, 178, 3)
        arr = rgb2gray(rgb)[None] if self.channels == 1 else rgb.transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]  # (1, C, 178, 178)
        return resize(x, self.size)[0]  # (C, size, size)


# --------------------------------------------------------------------------------------------------
# LoDoPaB-CT
# --------------------------------------------------------------------------------------------------

LODOPAB_SPLITS = ("train", "validation", "test")
LODOPAB_GT_SHAPE = (362, 362)
LODOPAB_OBS_SHAPE = (1000, 513)  # 1000 angles, 513 detector bins
LODOPAB_PER_FILE = 128
LODOPAB_MU_MAX = 81.35858  # observations are post-log line integrals divided by mu_max


class LoDoPaB(Dataset):
    """LoDoPaB-CT pairs ``(ground_truth (1, 362, 362), observation (1, 1000, 513))`` float32, by index.

    Files (as distributed on Zenodo, unzipped into ``root``)::

        ground_truth_{split}_000.hdf5, ..., observation_{split}_000.hdf5, ...

    each with one dataset ``data``: ground truth ``(n, 362, 362)`` (attenuation, in [0, 1] after
    division by mu_max) and observations ``(n, 1000, 513)`` (post-log, divided by
    ``LODOPAB_MU_MAX``), 128 samples a file, the last file of a split possibly fewer. Sample ``i``
    lives in file ``i // 128`` at row ``i % 128``. Files are opened and checked on first use;
    ``with_observation=False`` reads ground truth only (for simulating other geometries).
    """

    def __init__(self, root: str | Path, split: str = "train", with_observation: bool = True):
        if split not in LODOPAB_SPLITS:
            raise ValueError(f"split must be one of {LODOPAB_SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.with_observation = with_observation
        numbers = sorted(
            int(m.group(1))
            for p in self.root.glob(f"ground_truth_{split}_*.hdf5")
            if (m := re.fullmatch(rf"ground_truth_{split}_(\d+)\.hdf5", p.name))
        )
        if not numbers:
            raise DatasetFormatError(f"{self.root / f'ground_truth_{split}_000.hdf5'}: file not found")
        expected = list(range(len(numbers)))
        if numbers != expected:
            missing = sorted(set(range(max(numbers) + 1)) - set(numbers))[0]
            path = self._path("ground_truth", missing)
            raise DatasetFormatError(f"{path}: file not found (file numbers must run 0..N-1)")
        self.n_files = len(numbers)
        self._h5 = _LazyH5()
        self._checked: set[int] = set()
        n_last = self._check_file(self.n_files - 1)
        self._len = (self.n_files - 1) * LODOPAB_PER_FILE + n_last

    def _path(self, kind: str, number: int) -> Path:
        return self.root / f"{kind}_{self.split}_{number:03d}.hdf5"

    def _check_file(self, number: int) -> int:
        """Check file ``number`` (and its observation file); return its sample count."""
        last = number == self.n_files - 1
        gt_path = self._path("ground_truth", number)
        gt = _h5_array(gt_path, self._h5.get(gt_path), "data", (None, *LODOPAB_GT_SHAPE), np.dtype("float32"))
        n = gt.shape[0]
        if (last and not 1 <= n <= LODOPAB_PER_FILE) or (not last and n != LODOPAB_PER_FILE):
            want = f"1..{LODOPAB_PER_FILE}" if last else str(LODOPAB_PER_FILE)
            raise DatasetFormatError(f"{gt_path}: expected {want} samples in 'data', got {n}")
        if self.with_observation:
            obs_path = self._path("observation", number)
            obs_shape = (n, *LODOPAB_OBS_SHAPE)
            _h5_array(obs_path, self._h5.get(obs_path), "data", obs_shape, np.dtype("float32"))
        self._checked.add(number)
        return n

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | Tensor:
        if not -self._len <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} samples")
        index %= self._len
        number, row = divmod(index, LODOPAB_PER_FILE)
        if number not in self._checked:
            self._check_file(number)
        gt_path = self._path("ground_truth", number)
        gt = torch.from_numpy(_read(gt_path, self._h5.get(gt_path)["data"], row))[None]  # (1, 362, 362)
        if not self.with_observation:
            return gt
        obs_path = self._path("observation", number)
        obs = torch.from_numpy(_read(obs_path, self._h5.get(obs_path)["data"], row))[None]  # (1, 1000, 513)
        return gt, obs


# --------------------------------------------------------------------------------------------------
# fastMRI single-coil knee
# --------------------------------------------------------------------------------------------------

FASTMRI_TARGET_SHAPE = (320, 320)


class FastMRISlice(NamedTuple):
    """One fastMRI slice. ``target`` is ``reconstruction_esc``; ``max_value`` the volume's ``max`` attr."""

    target: Tensor  # (1, 320, 320) float32
    kspace: Tensor  # (1, H, W) complex64, H = 640, W ~ 368
    max_value: float
    fname: str
    slice_index: int


class FastMRISingleCoil(Dataset):
    """fastMRI single-coil knee slices over ``(file, slice)`` pairs, from ``root/*.h5`` (or a list of files).

    Each file holds ``kspace`` complex64 ``(slices, 640, W)``, ``reconstruction_esc`` float32
    ``(slices, 320, 320)`` (the magnitude target, our ground truth), ``ismrmrd_header`` (XML) and
    attributes ``acquisition``, ``max`` (max of the target over the volume: the data range of the
    fastMRI metrics), ``norm`` and ``patient_id``. All files are checked (metadata only) when the
    dataset is built; slices are read lazily.
    """

    def __init__(self, root: str | Path | list[str | Path]):
        files = (
            [Path(p) for p in root]
            if isinstance(root, list)
            else sorted(Path(root).glob("*.h5"))
        )
        if not files:
            raise DatasetFormatError(f"{root}: no fastMRI .h5 files found")
        self._h5 = _LazyH5()
        self.examples: list[tuple[Path, int]] = []
        for path in files:
            n = self._check_file(path)
            self.examples.extend((path, s) for s in range(n))

    def _check_file(self, path: Path) -> int:
        f = self._h5.get(path)
        kspace = _h5_array(path, f, "kspace", (None, None, None), np.dtype("complex64"))
        n, h, w = kspace.shape
        if h < FASTMRI_TARGET_SHAPE[0] or w < FASTMRI_TARGET_SHAPE[1]:
            raise DatasetFormatError(f"{path}: k-space of {h} x {w} is smaller than the 320 x 320 target")
        _h5_array(path, f, "reconstruction_esc", (n, *FASTMRI_TARGET_SHAPE), np.dtype("float32"))
        if "ismrmrd_header" not in f:
            raise DatasetFormatError(f"{path}: missing dataset 'ismrmrd_header'")
        if "max" not in f.attrs:
            raise DatasetFormatError(f"{path}: missing attribute 'max' (has {sorted(f.attrs.keys())})")
        return n

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> FastMRISlice:
        path, s = self.examples[index]
        f = self._h5.get(path)
        kspace = torch.from_numpy(_read(path, f["kspace"], s))[None]  # (1, H, W)
        target = torch.from_numpy(_read(path, f["reconstruction_esc"], s))[None]  # (1, 320, 320)
        return FastMRISlice(target, kspace, float(f.attrs["max"]), path.name, s)


def fastmri_complex_image(kspace: Tensor, crop: tuple[int, int] = FASTMRI_TARGET_SHAPE) -> Tensor:
    """The complex image of a single-coil k-space, centre-cropped: ``(..., H, W) -> (..., *crop)``.

    ``ifft2c`` (centred, orthonormal, as fastMRI's), then the central ``crop``; its magnitude is the
    fastMRI ``reconstruction_esc`` target up to the scanner's emulation details.
    """
    from operators.mri import ifft2c

    h, w = kspace.shape[-2:]
    ch, cw = crop
    if h < ch or w < cw:
        raise ValueError(f"k-space of {h} x {w} is smaller than the crop {ch} x {cw}")
    img = ifft2c(kspace)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top : top + ch, left : left + cw]


def fastmri_task_image(sample: FastMRISlice) -> Tensor:
    """Our MRI task image from a fastMRI slice: complex64 ``(1, 320, 320)`` scaled by the volume max.

    Dividing by ``max_value`` puts the magnitude target near [0, 1], the range of the embedded MNI
    images, so that the MRI task's absolute noise level means the same on both.
    """
    if sample.max_value <= 0:
        raise ValueError(f"{sample.fname}: attribute 'max' must be positive, got {sample.max_value}")
    return (fastmri_complex_image(sample.kspace) / sample.max_value).to(torch.complex64)
