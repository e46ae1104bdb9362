"""Embedded datasets (bench/data/datasets.py) and real-data loaders (bench/data/realdata.py) on tiny
synthetic files."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data import datasets, realdata
from bench.data.realdata import DatasetFormatError

DATA_DIR = Path(datasets.__file__).resolve().parent


def _load_script():
    spec = importlib.util.spec_from_file_location("make_mni_slices", DATA_DIR / "make_mni_slices.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# natural images
# --------------------------------------------------------------------------------------------------


def test_every_natural_source_loads_offline_with_its_declared_colour():
    for name, is_colour in datasets.NATURAL_SOURCES.items():
        img = datasets._skimage_image(name)()
        assert img.dtype == np.uint8, name
        assert (img.ndim == 3 and img.shape[2] == 3) == is_colour, (name, img.shape)
        assert min(img.shape[:2]) >= 128, (name, img.shape)
        assert img.std() > 10, name  # real content, not a blank stand-in


def test_natural_splits_are_disjoint_and_cover_the_sources():
    train, test = set(datasets.NATURAL_SPLITS["train"]), set(datasets.NATURAL_SPLITS["test"])
    val = set(datasets.NATURAL_SPLITS["val"])
    assert not train & test and not val & (train | test)
    assert train | val | test == set(datasets.NATURAL_SOURCES)
    for split in ("train", "val", "test"):
        assert len(datasets.natural_sources(split, channels=3)) >= 2


@pytest.mark.parametrize("channels", [1, 3])
def test_natural_crops_deterministic_per_seed_and_in_range(channels):
    a = datasets.natural_crops("train", 6, 32, seed=3, channels=channels)
    b = datasets.natural_crops("train", 6, 32, seed=3, channels=channels)
    c = datasets.natural_crops("train", 6, 32, seed=4, channels=channels)
    assert a.shape == (6, channels, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert (a.flatten(1).std(1) > 0.01).all()  # every crop has structure
    # The first k crops do not depend on n.
    assert torch.equal(datasets.natural_crops("train", 3, 32, seed=3, channels=channels), a[:3])


def _find_source(crop: torch.Tensor, names: tuple[str, ...], size: int, channels: int) -> list[str]:
    """Names of the prepared sources that contain ``crop`` exactly at some position."""
    found = []
    for name in names:
        src = datasets._prepared_source(name, size, channels)  # (C, H, W)
        for top, left in (src[0] == crop[0, 0, 0]).nonzero().tolist():
            if top + size <= src.shape[1] and left + size <= src.shape[2]:
                if torch.equal(src[:, top : top + size, left : left + size], crop):
                    found.append(name)
                    break
    return found


@pytest.mark.parametrize("channels", [1, 3])
def test_no_test_crop_comes_from_a_training_image(channels):
    size = 32
    all_names = tuple(datasets.NATURAL_SOURCES)
    if channels == 3:
        all_names = tuple(n for n in all_names if datasets.NATURAL_SOURCES[n])
    for split in ("train", "test"):
        allowed = set(datasets.natural_sources(split, channels))
        for crop in datasets.natural_crops(split, 8, size, seed=0, channels=channels):
            found = _find_source(crop, all_names, size, channels)
            assert found, f"{split} crop found in no source"
            assert set(found) <= allowed, (split, found)


def test_natural_crops_reject_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        datasets.natural_crops("valid", 2, 32, 0)
    with pytest.raises(ValueError, match="channels"):
        datasets.natural_crops("train", 2, 32, 0, channels=2)
    with pytest.raises(ValueError, match="n must be"):
        datasets.natural_crops("train", 0, 32, 0)


# --------------------------------------------------------------------------------------------------
# ellipses, Shepp-Logan, phase
# --------------------------------------------------------------------------------------------------


def test_ellipse_phantoms_deterministic_per_generator_and_normalised():
    a = datasets.ellipse_phantoms(4, 32, torch.Generator().manual_seed(0))
    b = datasets.ellipse_phantoms(4, 32, torch.Generator().manual_seed(0))
    c = datasets.ellipse_phantoms(4, 32, torch.Generator().manual_seed(1))
    assert a.shape == (4, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    for x in a:
        assert x.min() == 0 and x.max() == 1
        assert x[0, 0, 0] == 0 or x[0, -1, -1] == 0  # background (outside most ellipses) stays 0
    assert len({tuple(x.flatten()[:64].tolist()) for x in a}) == 4  # four different phantoms


def test_ellipse_parameter_statistics_follow_the_recipe():
    gen = torch.Generator().manual_seed(0)
    draws = [datasets.random_ellipses(gen) for _ in range(400)]
    counts = torch.tensor([len(d) for d in draws], dtype=torch.float64)
    # E k = 40 (truncation at 70 is negligible), std of the mean sqrt(40/400) = 0.32.
    assert abs(counts.mean().item() - 40) < 1.5
    assert counts.max() <= datasets.MAX_ELLIPSES
    p = torch.cat(draws).double()  # (~16000, 6)
    value, a1, a2, cx, cy, rot = p.unbind(1)
    assert value.min() >= -0.4 and value.max() <= 1 and abs(value.mean().item() - 0.3) < 0.02
    for a in (a1, a2):  # 0.2 Exp(1): mean 0.2, std 0.2
        assert a.min() > 0 and abs(a.mean().item() - 0.2) < 0.01 and abs(a.std().item() - 0.2) < 0.015
    for centre in (cx, cy):
        assert centre.abs().max() <= 0.9 and abs(centre.mean().item()) < 0.02
    assert rot.min() >= 0 and rot.max() < 2 * math.pi and abs(rot.mean().item() - math.pi) < 0.06


def test_render_ellipses_known_area_and_rotation():
    size = 256
    one = torch.tensor([[1.0, 0.5, 0.25, 0.0, 0.0, 0.0]])  # value 1, semi-axes 0.5 (x) and 0.25 (y)
    img = datasets.render_ellipses(one, size)
    area = img.sum().item() * (2.0 / size) ** 2
    assert abs(area - math.pi * 0.5 * 0.25) / (math.pi * 0.125) < 0.01
    assert img[size // 2, :].sum() > 2 * img[:, size // 2].sum() * 0.9  # wider along x (columns)
    turned = datasets.render_ellipses(torch.tensor([[1.0, 0.5, 0.25, 0.0, 0.0, math.pi / 2]]), size)
    assert (turned != img.T).float().mean() < 1e-3  # a quarter turn swaps the axes (up to edge pixels)
    # Overlapping ellipses add their values.
    two = torch.tensor([[1.0, 0.3, 0.3, 0.0, 0.0, 0.0], [-0.4, 0.1, 0.1, 0.0, 0.0, 0.0]])
    assert datasets.render_ellipses(two, size)[size // 2, size // 2].item() == pytest.approx(0.6)


def test_shepp_logan_matches_scikit_image():
    from skimage.data import shepp_logan_phantom

    ref = shepp_logan_phantom()
    x400 = datasets.shepp_logan(400)
    assert x400.shape == (1, 1, 400, 400)
    assert np.array_equal(x400[0, 0].numpy(), ref.astype(np.float32))
    x64 = datasets.shepp_logan(64)
    assert x64.min() >= 0 and x64.max() <= 1
    assert abs(x64.mean().item() - ref.mean()) < 0.01 * ref.mean() + 1e-3  # antialiased resize keeps the mean


def test_smooth_phase_is_seeded_and_smooth():
    a = datasets.smooth_phase(3, 64, torch.Generator().manual_seed(0))
    b = datasets.smooth_phase(3, 64, torch.Generator().manual_seed(0))
    c = datasets.smooth_phase(3, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1.2 * math.pi  # knots in [-pi, pi], bicubic overshoot is small
    assert a.std() > 0.5  # it is not a constant
    # Smooth: neighbouring pixels differ by at most a few times (2 pi / knot spacing) / pixel.
    step = max(a.diff(dim=-1).abs().max().item(), a.diff(dim=-2).abs().max().item())
    assert step < 4 * 2 * math.pi / (64 / 3)


def test_loaders_leave_the_global_rngs_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    datasets.natural_crops("test", 3, 32, seed=1)
    datasets.ellipse_phantoms(2, 32, torch.Generator().manual_seed(5))
    datasets.smooth_phase(2, 32, torch.Generator().manual_seed(5))
    datasets.mni_slices("train", 32)
    assert torch.equal(torch_state, torch.get_rng_state())
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]


# --------------------------------------------------------------------------------------------------
# MNI slices
# --------------------------------------------------------------------------------------------------


def test_mni_file_matches_the_regeneration_script():
    script = _load_script()
    with np.load(DATA_DIR / datasets.MNI_FILE) as f:
        assert set(f.files) == {"slices", "z_index"}
        slices, z = f["slices"], f["z_index"]
    assert slices.shape == (len(script.Z_INDEX), script.SIZE, script.SIZE) == (60, 128, 128)
    assert slices.dtype == np.uint8
    assert tuple(z.tolist()) == script.Z_INDEX
    assert (DATA_DIR / datasets.MNI_FILE).stat().st_size < 1_500_000
    assert "Louis Collins" in (DATA_DIR / "MNI_LICENSE.txt").read_text()
    # Every stored slice holds brain (at least 3 % of the pixels above background).
    assert ((slices > 10).mean(axis=(1, 2)) > 0.03).all()


def test_mni_file_is_what_the_script_makes_from_the_template():
    """Regenerate from the template nilearn ships and compare byte for byte.

    nibabel and nilearn are in the ``test`` extra: a missing install fails here rather than skipping.
    """
    import nibabel as nib
    import nilearn
    script = _load_script()
    path = Path(nilearn.__file__).resolve().parent / "datasets" / "data" / script.TEMPLATE
    volume = np.asarray(nib.load(path).dataobj)
    z = script.Z_INDEX[::10]  # six slices keep it quick
    with np.load(DATA_DIR / datasets.MNI_FILE) as f:
        stored = f["slices"][::10]
    assert np.array_equal(script.make_slices(volume, z), stored)


def test_mni_split_is_disjoint_by_slice_and_documented():
    z_train, z_test = datasets.mni_z_index("train"), datasets.mni_z_index("test")
    z_val = datasets.mni_z_index("val")
    assert len(z_train) == 42 and len(z_val) == 6 and len(z_test) == 12
    assert not set(z_train.tolist()) & set(z_test.tolist())
    script = _load_script()
    assert sorted(z_train.tolist() + z_val.tolist() + z_test.tolist()) == list(script.Z_INDEX)
    assert z_test.tolist() == list(script.Z_INDEX[2::5])  # every 5th slice, from the third
    assert z_val.tolist() == list(script.Z_INDEX[4::10])  # every 10th slice, from the fifth


def test_mni_slices_values_and_resizing():
    x = datasets.mni_slices("test")
    assert x.shape == (12, 1, 128, 128) and x.dtype == torch.float32
    with np.load(DATA_DIR / datasets.MNI_FILE) as f:
        raw = f["slices"][datasets.mni_split_positions("test")]
    assert torch.equal(x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))
    small = datasets.mni_slices("test", 32)
    assert small.shape == (12, 1, 32, 32)
    assert small.min() >= 0 and small.max() <= 1
    assert torch.allclose(small.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=2e-3)  # antialiased: same mean


# --------------------------------------------------------------------------------------------------
# CelebA on a tiny synthetic copy
# --------------------------------------------------------------------------------------------------


def _smooth_rgb(seed: int, h: int = 218, w: int = 178) -> np.ndarray:
    """A smooth colour image (survives JPEG at quality 100 almost unchanged)."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    phase = seed * 0.7
    chans = [0.5 + 0.4 * np.sin(2 * np.pi * (xx + k * 0.3) + phase) * np.cos(np.pi * yy) for k in range(3)]
    return (np.stack(chans, -1) * 255).round().astype(np.uint8)


@pytest.fixture()
def celeba_root(tmp_path):
    from PIL import Image

    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    parts = [0, 0, 1, 2]
    for i, _ in enumerate(parts, start=1):
        Image.fromarray(_smooth_rgb(i)).save(folder / f"{i:06d}.jpg", quality=100, subsampling=0)
    lines = [f"{i:06d}.jpg {p}" for i, p in enumerate(parts, start=1)]
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_celeba_reads_splits_and_round_trips_values(celeba_root):
    from skimage.color import rgb2gray

    assert [len(realdata.CelebA(celeba_root, s)) for s in ("train", "valid", "test")] == [2, 1, 1]
    ds = realdata.CelebA(celeba_root, "train", size=178, channels=3)
    x = ds[1]  # 000002.jpg
    assert x.shape == (3, 178, 178) and x.dtype == torch.float32
    expected = _smooth_rgb(2)[20:198].astype(np.float32) / 255  # central 178 x 178 of 218 x 178
    assert np.abs(x.permute(1, 2, 0).numpy() - expected).max() < 0.03  # JPEG error only
    grey = realdata.CelebA(celeba_root, "train", size=178, channels=1)[1]
    assert np.abs(grey[0].numpy() - rgb2gray(expected)).max() < 0.03
    small = realdata.CelebA(celeba_root, "test", size=32, channels=1)[0]
    assert small.shape == (1, 32, 32) and small.min() >= 0 and small.max() <= 1


def test_celeba_failures_name_the_file(celeba_root):
    from PIL import Image

    folder = celeba_root / "celeba"
    partition = folder / "list_eval_partition.txt"
    text = partition.read_text()

    partition.write_text(text + "000005.jpg\n")  # a malformed line
    with pytest.raises(DatasetFormatError, match="list_eval_partition.txt.*line 5"):
        realdata.CelebA(celeba_root, "train")

    partition.write_text(text + "000005.jpg 0\n")  # listed but missing
    with pytest.raises(DatasetFormatError, match="000005.jpg.*not found"):
        realdata.CelebA(celeba_root, "train")[2]

    (folder / "img_align_celeba" / "000005.jpg").write_bytes(b"not a jpeg at all")  # corrupt
    with pytest.raises(DatasetFormatError, match="000005.jpg.*not a readable JPEG"):
        realdata.CelebA(celeba_root, "train")[2]

    Image.fromarray(_smooth_rgb(5, 100, 100)).save(folder / "img_align_celeba" / "000005.jpg")  # wrong size
    with pytest.raises(DatasetFormatError, match="000005.jpg.*178 x 218"):
        realdata.CelebA(celeba_root, "train")[2]

    partition.unlink()
    with pytest.raises(DatasetFormatError, match="list_eval_partition.txt"):
        realdata.CelebA(celeba_root, "train")
    assert issubclass(DatasetFormatError, ValueError)


# --------------------------------------------------------------------------------------------------
# LoDoPaB-CT on tiny synthetic files (full shapes; unwritten HDF5 chunks cost no disk)
# --------------------------------------------------------------------------------------------------


def _write_lodopab(path: Path, n: int, shape: tuple[int, int], rows: dict[int, float], dtype="float32"):
    with h5py.File(path, "w") as f:
        d = f.create_dataset("data", shape=(n, *shape), dtype=dtype, chunks=(1, *shape), fillvalue=0)
        for row, value in rows.items():
            d[row] = value + np.arange(shape[1], dtype=np.float32)[None, :] * 1e-3


GT, OBS = realdata.LODOPAB_GT_SHAPE, realdata.LODOPAB_OBS_SHAPE


@pytest.fixture()
def lodopab_root(tmp_path):
    """Two training files: 128 samples and 3 samples, rows 0 and 127 / 0 and 2 written."""
    _write_lodopab(tmp_path / "ground_truth_train_000.hdf5", 128, GT, {0: 0.1, 127: 0.2})
    _write_lodopab(tmp_path / "observation_train_000.hdf5", 128, OBS, {0: 1.1, 127: 1.2})
    _write_lodopab(tmp_path / "ground_truth_train_001.hdf5", 3, GT, {0: 0.3, 2: 0.4})
    _write_lodopab(tmp_path / "observation_train_001.hdf5", 3, OBS, {0: 1.3, 2: 1.4})
    return tmp_path


def test_lodopab_global_index_round_trips_values(lodopab_root):
    ds = realdata.LoDoPaB(lodopab_root, "train")
    assert len(ds) == 131
    ramp = np.arange(GT[1], dtype=np.float32) * 1e-3
    for index, gt_value, obs_value in [(0, 0.1, 1.1), (127, 0.2, 1.2), (128, 0.3, 1.3), (130, 0.4, 1.4)]:
        gt, obs = ds[index]
        assert gt.shape == (1, *GT) and obs.shape == (1, *OBS)
        assert gt.dtype == obs.dtype == torch.float32
        assert np.array_equal(gt[0, 5].numpy(), np.float32(gt_value) + ramp)
        assert obs[0, 7, 3].item() == pytest.approx(obs_value + 3e-3)
    assert ds[1][0].abs().max() == 0  # an unwritten row reads as the fill value
    assert torch.equal(ds[-1][0], ds[130][0])
    with pytest.raises(IndexError):
        ds[131]
    gt_only = realdata.LoDoPaB(lodopab_root, "train", with_observation=False)
    assert torch.equal(gt_only[128], ds[128][0])
    import pickle

    assert torch.equal(pickle.loads(pickle.dumps(ds))[127][1], ds[127][1])  # works across workers


def test_lodopab_failures_name_the_file(lodopab_root):
    def expect(match: str, split: str = "train", index: int | None = None):
        with pytest.raises(DatasetFormatError, match=match):
            ds = realdata.LoDoPaB(lodopab_root, split)
            if index is not None:
                ds[index]

    expect("ground_truth_validation_000.hdf5: file not found", split="validation")

    last_gt = lodopab_root / "ground_truth_train_001.hdf5"
    with h5py.File(last_gt, "w") as f:
        f.create_dataset("images", data=np.zeros((3, 2, 2), np.float32))  # missing key
    expect("ground_truth_train_001.hdf5: missing dataset 'data'")

    _write_lodopab(last_gt, 3, (361, 362), {})  # wrong shape
    expect(r"ground_truth_train_001.hdf5: dataset 'data' should have shape \(n, 362, 362\)")

    _write_lodopab(last_gt, 3, GT, {}, dtype="float64")  # wrong dtype
    expect("ground_truth_train_001.hdf5: dataset 'data' should have dtype float32, got float64")

    _write_lodopab(last_gt, 4, GT, {})  # observation count does not match
    expect(r"observation_train_001.hdf5: dataset 'data' should have shape \(4, 1000, 513\)")

    _write_lodopab(last_gt, 3, GT, {0: 0.5})
    full = last_gt.read_bytes()
    last_gt.write_bytes(full[: len(full) // 2])  # truncated
    expect("ground_truth_train_001.hdf5: not a readable HDF5 file")

    last_gt.write_bytes(b"\x00garbage" * 100)  # corrupt
    expect("ground_truth_train_001.hdf5: not a readable HDF5 file")

    _write_lodopab(last_gt, 3, GT, {})
    (lodopab_root / "observation_train_001.hdf5").unlink()  # missing observation file
    expect("observation_train_001.hdf5: file not found")

    _write_lodopab(lodopab_root / "observation_train_001.hdf5", 3, OBS, {})
    _write_lodopab(lodopab_root / "ground_truth_train_000.hdf5", 100, GT, {})  # non-last file not full
    expect("ground_truth_train_000.hdf5: expected 128 samples", index=0)

    (lodopab_root / "ground_truth_train_000.hdf5").unlink()  # a gap in the numbering
    expect("ground_truth_train_000.hdf5: file not found")


# --------------------------------------------------------------------------------------------------
# fastMRI single-coil on tiny synthetic files
# --------------------------------------------------------------------------------------------------


def _fft2c(x: torch.Tensor) -> torch.Tensor:
    """fastMRI's centred orthonormal FFT, written out here as an independent reference."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=dims), norm="ortho"), dim=dims)


def _knee_volume(n_slices: int, seed: int, h: int = 640, w: int = 368):
    """Complex images (n, h, w) with content only in the central 320 x 320, and their k-space."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n_slices, 320, 320)
    crop = torch.randn(shape, generator=gen) + 1j * torch.randn(shape, generator=gen)
    crop = F.avg_pool2d(torch.view_as_real(crop).permute(0, 3, 1, 2), 5, 1, 2)  # smooth it
    crop = torch.view_as_complex(crop.permute(0, 2, 3, 1).contiguous())
    img = torch.zeros(n_slices, h, w, dtype=torch.complex64)
    top, left = (h - 320) // 2, (w - 320) // 2
    img[:, top : top + 320, left : left + 320] = crop
    return crop, _fft2c(img).to(torch.complex64)


def _write_knee(path: Path, n_slices: int = 2, seed: int = 0, drop: str = "", kspace_dtype="complex64"):
    crop, kspace = _knee_volume(n_slices, seed)
    target = crop.abs().numpy().astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.numpy().astype(kspace_dtype))
        if drop != "reconstruction_esc":
            f.create_dataset("reconstruction_esc", data=target)
        f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader></ismrmrdHeader>"))
        f.attrs.update({"acquisition": "CORPD_FBK", "norm": float(np.linalg.norm(target)), "patient_id": "x"})
        if drop != "max":
            f.attrs["max"] = float(target.max())
    return crop, target


def test_fastmri_round_trips_and_task_image(tmp_path):
    crop_a, target_a = _write_knee(tmp_path / "file_a.h5", 2, seed=0)
    crop_b, target_b = _write_knee(tmp_path / "file_b.h5", 3, seed=1)
    ds = realdata.FastMRISingleCoil(tmp_path)
    assert len(ds) == 5
    s = ds[3]  # file_b, slice 1
    assert (s.fname, s.slice_index) == ("file_b.h5", 1)
    assert s.target.shape == (1, 320, 320) and s.target.dtype == torch.float32
    assert np.array_equal(s.target[0].numpy(), target_b[1])
    assert s.kspace.shape == (1, 640, 368) and s.kspace.dtype == torch.complex64
    assert s.max_value == pytest.approx(float(target_b.max()))
    img = realdata.fastmri_complex_image(s.kspace)
    assert img.shape == (1, 320, 320)
    assert torch.allclose(img[0], crop_b[1].to(torch.complex64), atol=1e-4)
    task = realdata.fastmri_task_image(s)
    assert task.dtype == torch.complex64 and task.shape == (1, 320, 320)
    assert torch.allclose(task.abs() * s.max_value, s.target, atol=1e-4)
    assert task.abs().max().item() <= 1 + 1e-5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"drop": "reconstruction_esc"}, "missing dataset 'reconstruction_esc'"),
        ({"drop": "max"}, "missing attribute 'max'"),
        ({"kspace_dtype": "complex128"}, "dataset 'kspace' should have dtype complex64, got complex128"),
    ],
)
def test_fastmri_failures_name_the_file(tmp_path, kwargs, match):
    _write_knee(tmp_path / "good.h5", 1)
    _write_knee(tmp_path / "bad.h5", 1, **kwargs)
    with pytest.raises(DatasetFormatError, match=f"bad.h5: {match}"):
        realdata.FastMRISingleCoil(tmp_path)


def test_fastmri_wrong_shape_corrupt_and_missing(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.zeros((2, 640, 368), np.complex64))
        f.create_dataset("reconstruction_esc", data=np.zeros((2, 320, 300), np.float32))
    match = r"bad.h5: dataset 'reconstruction_esc' should have shape \(2, 320, 320\)"
    with pytest.raises(DatasetFormatError, match=match):
        realdata.FastMRISingleCoil([path])
    path.write_bytes(b"\x89HDF-but-not-really" * 50)
    with pytest.raises(DatasetFormatError, match="bad.h5: not a readable HDF5 file"):
        realdata.FastMRISingleCoil([path])
    with pytest.raises(DatasetFormatError, match="missing.h5: file not found"):
        realdata.FastMRISingleCoil([tmp_path / "missing.h5"])
    with pytest.raises(DatasetFormatError, match="no fastMRI .h5 files"):
        realdata.FastMRISingleCoil(tmp_path / "empty_dir")
