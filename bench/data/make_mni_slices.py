"""Regenerate ``mni_t1_slices.npz``: axial slices of the MNI ICBM152 2009 T1 template, 128 x 128.

Run with the test extra installed (``pip install -e .[test]``: nibabel, nilearn)::

    python bench/data/make_mni_slices.py

Source: ``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, which nilearn's
wheel ships (ICBM 2009a nonlinear symmetric T1 template, skull-stripped, uint8, 197 x 233 x 189 voxels
of 1 mm, RAS). Licence and citations: ``MNI_LICENSE.txt`` beside this file.

Recipe, for each axial index ``z`` in ``Z_INDEX`` (60 slices, 2 mm apart, from the cerebellum to the
vertex; every one holds brain):
  1. take ``volume[:, :, z]`` (x = left-right, y = posterior-anterior) and rotate it by 90 degrees so
     that anterior is up and the image is displayed as radiologists' axial views are;
  2. zero-pad the 197-voxel axis symmetrically to 233 (square, 1 mm pixels);
  3. resize to 128 x 128 with scikit-image (bilinear, anti-aliased), round to uint8.
Saved arrays: ``slices`` uint8 (60, 128, 128) and ``z_index`` int16 (60,). nilearn and nibabel are
needed only here, never at run time: ``bench.data.datasets.mni_slices`` reads the npz with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

Z_INDEX: tuple[int, ...] = tuple(range(30, 150, 2))  # 60 axial slices, 2 mm apart
SIZE = 128
TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
OUT = Path(__file__).resolve().parent / "mni_t1_slices.npz"


def square_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of ``volume`` (X, Y, Z), anterior up, zero-padded to a square."""
    img = np.rot90(volume[:, :, z])  # (Y, X): rows run anterior -> posterior
    h, w = img.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), dtype=img.dtype)
    out[top : top + h, left : left + w] = img
    return out


def make_slices(volume: np.ndarray, z_index: tuple[int, ...] = Z_INDEX, size: int = SIZE) -> np.ndarray:
    """The stored slices ``(len(z_index), size, size)`` uint8 from a uint8 volume."""
    from skimage.transform import resize

    out = []
    for z in z_index:
        sq = square_slice(volume, z).astype(np.float64)
        small = resize(sq, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        out.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    return np.stack(out)


def main() -> None:
    import nibabel as nib
    import nilearn

    path = Path(nilearn.__file__).resolve().parent / "datasets" / "data" / TEMPLATE
    image = nib.load(path)
    if not isinstance(image, nib.Nifti1Image):
        raise TypeError(f"{path}: expected a NIfTI-1 image, got {type(image).__name__}")
    volume = np.asarray(image.dataobj)
    if volume.shape != (197, 233, 189) or volume.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 (197, 233, 189), got {volume.dtype} {volume.shape}")
    slices = make_slices(volume)
    np.savez_compressed(OUT, slices=slices, z_index=np.asarray(Z_INDEX, dtype=np.int16))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): slices {slices.shape} {slices.dtype}")


if __name__ == "__main__":
    main()
