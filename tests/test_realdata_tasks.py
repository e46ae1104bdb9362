"""Real datasets as task images, end to end on tiny synthetic files in each dataset's exact layout."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from realdata_files import phantoms, write_celeba, write_fastmri, write_lodopab

from bench import cli
from bench.data.datasets import resize
from bench.data.realdata import DatasetFormatError
from bench.data.realsources import REAL_DATA, split_indices
from bench.data.tasks import build_task
from bench.harness.expand import loads_sweep
from bench.harness.specs import SweepError

SWEEP = """
[defaults]
image_size = 16
batch_size = 2
n_train = 3
n_test = 2
n_val = 2
steps = 3
timed_steps = 1
device = "cpu"
cpu_threads = 1
model = "lu"
x0 = "classical"
n_iters = 2
reg_depth = 3
reg_width = 8
[[grid]]
task = "deblur"
data = "celeba"
data_root = "{celeba}"
[[grid]]
task = "ct"
data = "lodopab"
data_root = "{lodopab}"
[[grid]]
task = "mri"
data = "fastmri"
data_root = "{fastmri}"
"""


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("realdata")
    return {
        "celeba": write_celeba(base / "celeba_root"),
        "lodopab": write_lodopab(base / "lodopab_root"),
        "fastmri": write_fastmri(base / "fastmri_root"),
    }


def test_a_sweep_on_each_dataset_gives_ok_rows_with_quality(roots: dict[str, Path], tmp_path: Path):
    path = tmp_path / "real.toml"
    path.write_text(SWEEP.format(**{k: str(v) for k, v in roots.items()}))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert sorted(json.loads(r["data"])["name"] for r in rows) == ["celeba", "fastmri", "lodopab"]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert math.isfinite(float(r["psnr_db"])) and 0 < float(r["ssim"]) <= 1, r
    splits = {json.loads(r["data"])["name"]: json.loads(r["data"])["split"] for r in rows}
    assert splits == {"celeba": "test", "lodopab": "test", "fastmri": "validation"}


def test_task_images_are_the_datasets_images(roots: dict[str, Path]):
    task = build_task(
        "ct", image_size=16, n_train=4, n_test=2, n_val=2, data="lodopab", data_root=str(roots["lodopab"])
    )
    gt_test = torch.from_numpy(phantoms(2, 362, seed=22))[:, None]  # the test file's phantoms
    assert torch.allclose(task.x_test, resize(gt_test, 16), atol=1e-5)
    gt_train = torch.from_numpy(phantoms(4, 362, seed=20))[:, None]
    assert torch.allclose(task.x_train, resize(gt_train, 16), atol=1e-5)  # all 4, in index order
    gt_val = torch.from_numpy(phantoms(2, 362, seed=21))[:, None]  # the validation file's
    assert torch.allclose(task.x_val, resize(gt_val, 16), atol=1e-5)

    mri = build_task(
        "mri", image_size=16, n_train=2, n_test=2, n_val=2, data="fastmri", data_root=str(roots["fastmri"])
    )
    assert mri.x_test.dtype == torch.complex64
    assert mri.x_test.abs().amax() <= 1.0 + 1e-6 and mri.x_test.abs().amax() > 0.5  # target / volume max
    # fastMRI's validation and test images share singlecoil_val: slices 0 and 3 test, 1 and 2 validation
    assert mri.x_val.shape == (2, 1, 16, 16)
    assert all(not torch.allclose(v.abs(), t.abs()) for v in mri.x_val for t in mri.x_test)
    root = str(roots["celeba"])
    tasks = [
        build_task(
            "deblur", image_size=16, n_train=2, n_test=1, n_val=1, seed=s, data="celeba", data_root=root
        )
        for s in range(4)
    ]
    assert all(torch.equal(t.x_test, tasks[0].x_test) for t in tasks)  # fixed test images
    assert any(not torch.equal(t.x_train, tasks[0].x_train) for t in tasks)  # the seed picks training images


def test_split_indices_are_fixed_and_disjoint_when_test_and_validation_share_a_split():
    sizes = {"train": 10, "validation": 9, "test": 0}
    test, val = split_indices(sizes, "validation", 3, 4)
    assert test == [0, 4, 8] and not set(test) & set(val) and len(val) == 4
    with pytest.raises(ValueError, match="has 6 images, asked for 7"):
        split_indices(sizes, "validation", 3, 7)


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_missing_or_malformed_root_exits_2_naming_the_layout(
    name: str, roots: dict[str, Path], tmp_path: Path
):
    empty = tmp_path / "empty"
    empty.mkdir()
    roots = {**{k: str(v) for k, v in roots.items()}, name: str(empty)}
    path = tmp_path / "bad.toml"
    path.write_text(SWEEP.format(**roots))
    with pytest.raises(SweepError, match=r"expected layout: DATA_ROOT/"):
        loads_sweep(path.read_text())
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--quiet"]) == 2
    assert not out.exists()


def test_too_few_images_and_bad_split_are_sweep_errors(roots: dict[str, Path]):
    text = SWEEP.format(**{k: str(v) for k, v in roots.items()})
    with pytest.raises(SweepError, match="the train split has 4 images, n_train = 9"):
        loads_sweep(text.replace("n_train = 3", "n_train = 9"))
    with pytest.raises(SweepError, match=r"data 'fastmri': data_split must be one of \['validation'\]"):
        loads_sweep(text.replace('data = "fastmri"', 'data = "fastmri"\ndata_split = "test"'))
    malformed = Path(roots["celeba"]) / "celeba" / "list_eval_partition.txt"
    saved = malformed.read_text()
    malformed.write_text(saved + "not-a-line\n")
    try:
        with pytest.raises(SweepError, match="list_eval_partition.txt: line 9"):
            loads_sweep(text)
    finally:
        malformed.write_text(saved)
    with pytest.raises(DatasetFormatError, match="expected layout"):
        build_task("ct", data="lodopab", data_root=str(roots["celeba"]))


@pytest.mark.parametrize(("name", "n_specs"), [("celeba", 2), ("lodopab", 4), ("fastmri", 4)])
def test_example_sweep_files_are_valid_sweeps(name: str, n_specs: int, roots: dict[str, Path]):
    import re

    text = (Path(__file__).parents[1] / "examples" / "sweeps" / f"{name}.toml").read_text()
    text = re.sub(r'data_root = "[^"]*"', f'data_root = "{roots[name]}"', text)
    text = re.sub(r"(n_train|n_val|n_test|batch_size) = \d+", r"\1 = 2", text)
    sweep = loads_sweep(text)
    assert len(sweep.specs) == n_specs and {s.data for s in sweep.specs} == {name}
