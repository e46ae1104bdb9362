"""Bad sweep values are caught at load (exit 2, the key and what is accepted, nothing written), and a
run that still fails says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cli
from bench.harness.checks import min_image_size
from bench.harness.expand import loads_sweep
from bench.harness.run import run_spec
from bench.harness.specs import RunSpec, SweepError
from operators import OPERATORS

BASE = 'task = "deblur"\nmodel = "classical"\nmethod = "adjoint"\nimage_size = 16\nn_train = 4\nn_test = 1\n'

CASES = [
    ('device = "tpu"', r"key 'device' has unknown value 'tpu'; accepted: '' .*'cpu', 'cuda' or 'cuda:N'"),
    ("noise_sigma = -0.1", r"key 'noise_sigma' must be >= 0, got -0.1"),
    ("batch_size = 8", r"key 'batch_size' must be <= n_train \(4: .*got 8"),
    ('method = "fbp"', r"key 'method' 'fbp' does not apply to task 'deblur'; accepted there: \[.*'tikhonov'"),
    ("lr = nan", r"key 'lr' must be a finite number, got nan"),
    ('model = "deq"\ntol = inf', r"key 'tol' must be a finite number, got inf"),
    ('task = "ct"\nimage_size = 3', rf"'image_size' must be >= {min_image_size()} \(the largest SSIM"),
    ('task = "mri"\nimage_size = 1', rf"'image_size' must be >= {min_image_size()} .*got 1 for task 'mri'"),
    ('task = "mri"\nimage_size = 2', rf"'image_size' must be >= {min_image_size()} .*got 2 for task 'mri'"),
    ('task = "mri"\nimage_size = 3', rf"'image_size' must be >= {min_image_size()} .*got 3 for task 'mri'"),
    ("image_size = 8", r"key 'image_size' must be >= \d+ .*got 8 for task 'deblur'"),
]


def _doc(override: str) -> str:
    keys = {line.split(" = ")[0] for line in override.splitlines()}
    base = "".join(line + "\n" for line in BASE.splitlines() if line.split(" = ")[0] not in keys)
    if 'model = "deq"' in override:
        base = base.replace('method = "adjoint"\n', "")
    return f"[defaults]\n{base}{override}\n[[grid]]\n"


@pytest.mark.parametrize(("override", "message"), CASES, ids=[c[0].split("\n")[-1] for c in CASES])
def test_bad_values_fail_at_load_naming_key_and_accepted(override: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        loads_sweep(_doc(override))


def test_the_base_document_is_valid() -> None:
    (spec,) = loads_sweep(_doc("")).specs
    assert spec.image_size == 16 and dict(spec.model_extra) == {"method": "adjoint"}


def test_cli_exit_2_with_one_line_and_nothing_written(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "bad.toml"
    sweep.write_text(_doc('device = "tpu"'))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'device'" in err
    assert not out.exists()


def test_operators_answer_image_sizes_without_being_built() -> None:
    assert OPERATORS["blur"].image_size_error(9) is None
    assert "kernel size 5" in str(OPERATORS["blur"].image_size_error(4, kernel_size=5))
    assert OPERATORS["ct"].image_size_error(8) is None and OPERATORS["mri"].image_size_error(8) is None
    assert OPERATORS["mri"].image_size_error(0) is not None


def test_run_spec_never_raises_on_a_bad_device() -> None:
    row = run_spec(RunSpec(task="deblur", model="classical", image_size=16, n_train=2, n_test=1,
                           batch_size=1, device="tpu"))  # fmt: skip
    assert row["status"] == "error" and row["device"] == "tpu"
    assert "\n" not in row["error"] and "tpu" in row["error"]
