"""Tiny synthetic copies of CelebA, LoDoPaB-CT and fastMRI single-coil in their exact layouts.

Images are smooth random-ellipse phantoms (so a reconstruction's PSNR means something); HDF5 data a
loader never reads (LoDoPaB observations, fastMRI k-space) are chunked and left unwritten, which
costs no disk.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from bench.data import datasets, realdata


def phantoms(n: int, size: int, seed: int) -> np.ndarray:
    """``(n, size, size)`` float32 images in [0, 1]: ellipse phantoms rendered at 64 px, resized."""
    x = datasets.ellipse_phantoms(n, 64, torch.Generator().manual_seed(seed))  # (n, 1, 64, 64)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


def write_celeba(root: Path, parts: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 2, 2)) -> Path:
    """``root/celeba/img_align_celeba/*.jpg`` (178 x 218) and ``list_eval_partition.txt``."""
    from PIL import Image

    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    images = phantoms(len(parts), 218, seed=11)
    for i, img in enumerate(images, start=1):
        rgb = np.stack([img[:, 20:198]] * 3, -1)  # (218, 178, 3)
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=95)
    lines = [f"{i:06d}.jpg {p}" for i, p in enumerate(parts, start=1)]
    (root / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def write_lodopab(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """``root/ground_truth_{split}_000.hdf5`` (``data`` (n, 362, 362) float32) and the observation
    files (unwritten chunks), one file per split."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {"train": 4, "validation": 2, "test": 2}
    for k, (split, n) in enumerate(sizes.items()):
        with h5py.File(root / f"ground_truth_{split}_000.hdf5", "w") as f:
            f.create_dataset("data", data=phantoms(n, realdata.LODOPAB_GT_SHAPE[0], seed=20 + k))
        with h5py.File(root / f"observation_{split}_000.hdf5", "w") as f:
            shape = (n, *realdata.LODOPAB_OBS_SHAPE)
            f.create_dataset("data", shape=shape, dtype="float32", chunks=(1, *shape[1:]), fillvalue=0)
    return root


def write_fastmri(root: Path, files: dict[str, int] | None = None, scale: float = 3e-4) -> Path:
    """``root/singlecoil_{train,val}/*.h5``: ``reconstruction_esc`` (slices, 320, 320) float32 (phantoms
    times ``scale``, a knee-like magnitude), ``kspace`` complex64 (slices, 640, 368) unwritten,
    ``ismrmrd_header`` and the attributes fastMRI files have."""
    files = files or {"singlecoil_train/file1000001.h5": 4, "singlecoil_val/file1000002.h5": 4}
    for k, (name, n) in enumerate(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        target = (phantoms(n, 320, seed=30 + k) * scale).astype(np.float32)
        with h5py.File(path, "w") as f:
            f.create_dataset("kspace", shape=(n, 640, 368), dtype="complex64", chunks=(1, 640, 368))
            f.create_dataset("reconstruction_esc", data=target)
            f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader></ismrmrdHeader>"))
            f.attrs.update(
                {"acquisition": "CORPD_FBK", "max": float(target.max()), "norm": 1.0, "patient_id": "x"}
            )
    return root
