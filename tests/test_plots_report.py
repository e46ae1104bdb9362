"""Figures and report of a sweep, built from the hand-made fixture ``tests/fixtures/runs_fixture.csv``.

The fixture has three tasks built to give the three verdicts at K=10, B=8, 128x128:
deblur holds (LU-17 / LUSER-jfb = 12.9x within 0.5 dB), ct holds partly (LUSER-jfb is 0.93 dB worse, the
matched LUSER-ift gives 7.5x), mri does not hold (every LUSER is > 0.5 dB worse). It also has one oom, one
diverged and one error run, and a re-run that supersedes a failed first attempt.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.text import Text

from bench.analysis import compare, figures, plots, report, runtable

FIXTURE = Path(__file__).parent / "fixtures" / "runs_fixture.csv"
EXPECTED_FAILED = {
    ("deblur", "LU D=17", 10, "oom"),
    ("mri", "LUSER 2-layer jfb", 10, "diverged"),
    ("ct", "DEQ D=5 ift", None, "error"),
}


def _raw_rows() -> dict[str, dict[str, str]]:
    """The fixture read with the csv module (last row per run_id), independently of load_runs."""
    with FIXTURE.open(newline="") as fh:
        return {row["run_id"]: row for row in csv.DictReader(fh)}


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def runs():
    return runtable.load_runs(FIXTURE)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, bytes]:
    """``python -m bench report DIR`` on a copy of the fixture (this also draws every figure)."""
    sweep = tmp_path_factory.mktemp("sweep")
    shutil.copy(FIXTURE, sweep / "runs.csv")
    assert report.main(argparse.Namespace(dir=sweep, psnr_tol_db=0.5)) == 0
    return sweep, (sweep / "report.md").read_bytes()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end > 0 else None]


# -- reading ----------------------------------------------------------------------------------------
def test_load_runs_keeps_last_rerun_and_derives_columns(runs) -> None:
    raw_lines = FIXTURE.read_text().strip().splitlines()
    assert runs.attrs["rows_read"] == len(raw_lines) - 1
    assert len(runs) == len(raw_lines) - 2  # one run_id appears twice (failed, then re-run ok)
    assert runs["run_id"].is_unique
    rerun = runs[runs["run_id"] == "mri.profile.rerun"].iloc[0]
    assert rerun["status"] == "ok" and rerun["error"] == ""
    assert {
        "LU D=5",
        "LU D=17",
        "LU-ckpt D=17",
        "LUSER 2-layer ift",
        "LUSER 2-layer ift_hook",
        "LUSER 2-layer jfb",
        "DEQ D=5 ift",
        "classical fbp",
        "classical tikhonov",
        "classical zero-filled",
    } == set(runs["config"])
    raw = _raw_rows()["deblur.quality.lu-d17-k10"]
    row = runs[runs["run_id"] == "deblur.quality.lu-d17-k10"].iloc[0]
    assert row["tracked_peak_mib"] == int(raw["tracked_peak_bytes"]) / 2**20
    assert row["cuda_peak_mib"] == int(raw["cuda_peak_bytes"]) / 2**20
    assert row["setting"] == "B=8, 128×128"


def test_missing_columns_raise_naming_them(tmp_path: Path) -> None:
    rows = list(_raw_rows().values())[:5]
    columns = [c for c in runtable.RUN_COLUMNS if c not in ("psnr_db", "ssim")]
    _write_csv(tmp_path / "runs.csv", rows, columns)
    with pytest.raises(ValueError, match=r"lacks required column\(s\): psnr_db, ssim"):
        runtable.load_runs(tmp_path)


def test_empty_tables_raise_clear_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        runtable.load_runs(tmp_path)
    assert plots.main(argparse.Namespace(dir=tmp_path, psnr_tol_db=0.5)) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "runs.csv").write_text(",".join(runtable.RUN_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="header but no runs"):
        runtable.load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run table"):
        runtable.load_runs(tmp_path / "nowhere")


def _imported_after(modules: str, probe: str) -> bool:
    """Whether ``probe`` is in ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = f"import sys, {modules}; print({probe!r} in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return out.stdout.strip() == "True"


def test_importing_runtable_compare_plots_and_report_does_not_import_torch() -> None:
    assert not _imported_after(
        "bench.analysis.runtable, bench.analysis.compare, bench.analysis.figures, bench.analysis.plots, "
        "bench.analysis.report",
        "torch",
    )
    # the run table and the 8x check are pure analysis: no matplotlib either
    assert not _imported_after("bench.analysis.runtable, bench.analysis.compare", "matplotlib")
    assert _imported_after("bench.analysis.plots", "matplotlib")  # the probe does see an imported module


# -- the comparison and the verdict ------------------------------------------------------------------
def test_ratio_equals_hand_computed_value(runs, built) -> None:
    raw = _raw_rows()
    # deblur, K=10: best LU is LU-17 (31.22 dB); LUSER within 0.5 dB with the least memory is jfb (30.85 dB)
    lu, luser = (
        raw["deblur.quality.lu-d17-k10"],
        raw["deblur.quality.luser-d2-jfb-k10-anderson-tol0.001-it40"],
    )
    ckpt = raw["deblur.quality.lu_ckpt-d17-k10"]
    by_hand = int(lu["tracked_peak_bytes"]) / int(luser["tracked_peak_bytes"])
    by_hand_ckpt = int(ckpt["tracked_peak_bytes"]) / int(luser["tracked_peak_bytes"])
    comp = {c.task: c for c in compare.compare_memory(runs)}["deblur"]
    assert comp.lu["run_id"] == lu["run_id"] and comp.luser["run_id"] == luser["run_id"]
    assert comp.ratio == pytest.approx(by_hand, rel=1e-12)
    assert comp.ratio_ckpt == pytest.approx(by_hand_ckpt, rel=1e-12)
    assert 12.8 < by_hand < 12.9
    table = _section(built[1].decode(), "### Plain LU against LUSER")
    deblur_line = next(line for line in table.splitlines() if line.startswith("| deblur |"))
    assert f"| {by_hand:.2f}x |" in deblur_line
    assert (
        f"| {int(lu['tracked_peak_bytes']) / 2**20:,.1f} | {int(luser['tracked_peak_bytes']) / 2**20:,.1f} |"
        in (deblur_line)
    )


def test_fixture_tasks_get_the_expected_verdicts(runs) -> None:
    comps = {c.task: c for c in compare.compare_memory(runs, psnr_tol_db=0.5)}
    assert {t: c.verdict for t, c in comps.items()} == {
        "deblur": "holds", "ct": "holds partly", "mri": "does not hold",
    }  # fmt: skip
    assert comps["ct"].luser["config"] == "LUSER 2-layer ift"  # jfb is 0.93 dB worse: not matched
    assert 1 < comps["ct"].ratio < 8
    assert comps["mri"].basis == compare.BASIS_UNMATCHED
    # a looser tolerance admits mri's LUSER (0.83 dB worse) and ct's jfb, changing the verdicts
    loose = {c.task: c.verdict for c in compare.compare_memory(runs, psnr_tol_db=1.0)}
    assert loose == {"deblur": "holds", "ct": "holds", "mri": "holds partly"}


@pytest.mark.parametrize(
    ("ratio", "matched", "expected"),
    [
        (12.0, True, "holds"),
        (8.0, True, "holds"),
        (7.99, True, "holds partly"),
        (1.01, True, "holds partly"),
        (12.0, None, "holds partly"),  # no PSNR: at best partly
        (1.0, True, "does not hold"),
        (0.7, None, "does not hold"),
        (12.0, False, "does not hold"),  # LUSER worse than the tolerance
        (None, True, "not tested"),
        (math.nan, None, "not tested"),
    ],
)
def test_verdict_rule(ratio: float | None, matched: bool | None, expected: str) -> None:
    assert compare.verdict(ratio, matched) == expected


def test_pareto_front_known_answer() -> None:
    memory = [300.0, 100.0, 200.0, 400.0, 150.0]
    psnr = [31.0, 29.0, 30.5, 31.0, 28.0]
    assert compare.pareto_front(memory, psnr) == [1, 2, 0]


def test_profile_only_data_falls_back_to_equal_k(tmp_path: Path) -> None:
    rows = [r for r in _raw_rows().values() if r["task"] == "deblur" and r["part"] == "profile"]
    for r in rows:
        r["psnr_db"] = r["ssim"] = ""
    _write_csv(tmp_path / "runs.csv", rows, list(runtable.RUN_COLUMNS))
    assert plots.main(argparse.Namespace(dir=tmp_path, psnr_tol_db=0.5)) == 0
    out = tmp_path / "figures"
    assert (out / "headline_ratio.png").is_file() and (out / "memory_vs_k.svg").is_file()
    assert not (out / "psnr_vs_memory.png").exists()  # skipped: no quality runs
    assert not (out / "deq_tolerance.png").exists()
    comp = compare.compare_memory(runtable.load_runs(tmp_path))[0]
    assert comp.basis == compare.BASIS_EQUAL_K and comp.verdict == "holds partly"
    raw = _raw_rows()
    lu, luser = (
        raw["deblur.profile.lu-d17-k10"],
        raw["deblur.profile.luser-d2-jfb-k10-anderson-tol0.001-it40"],
    )
    assert comp.ratio == pytest.approx(
        int(lu["tracked_peak_bytes"]) / int(luser["tracked_peak_bytes"]), rel=1e-12
    )


# -- figures ----------------------------------------------------------------------------------------
def test_every_figure_is_written_as_png_and_svg(built) -> None:
    out = built[0] / "figures"
    for name in figures.FIGURES:
        png, svg = out / f"{name}.png", out / f"{name}.svg"
        assert png.stat().st_size > 30_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.stat().st_size > 10_000 and b"<svg" in svg.read_bytes()[:2000], name


def test_failed_runs_are_marked_on_the_memory_figure(runs) -> None:
    fig = figures.draw("memory_vs_k", runs)
    style = figures.context(runs).style
    marks = set()
    for ax in fig.axes:
        xs = [line for line in ax.get_lines() if line.get_marker() == "x"]
        statuses = [t for t in ax.texts if t.get_text() in {"oom", "diverged", "error", "timeout"}]
        assert len(xs) == len(statuses), ax.get_title()  # every x has its status written beside it
        for line, text in zip(xs, statuses, strict=True):
            config = next(c for c in style.order if style.color(c) == line.get_color())
            marks.add((ax.get_title().split()[0], config, int(line.get_xdata()[0]), text.get_text()))
    with_k = {m for m in EXPECTED_FAILED if m[2] is not None}
    assert marks == with_k  # drawn at their K, in their task's panel, in their configuration's colour
    texts = {t.get_text() for t in fig.findobj(Text)}
    assert any("DEQ D=5 ift: error" in t for t in texts)  # the DEQ has no K: listed in its panel


def test_cuda_peak_dashed_only_when_measured(runs) -> None:
    def dashed(df) -> int:
        fig = figures.draw("memory_vs_k", df)
        return sum(line.get_linestyle() == "--" for ax in fig.axes for line in ax.get_lines())

    assert dashed(runs) > 0
    cpu = runs.copy()
    cpu["cuda_peak_bytes"] = cpu["cuda_peak_mib"] = float("nan")
    assert dashed(cpu) == 0


# -- report -----------------------------------------------------------------------------------------
def test_report_lists_failed_runs_with_status_and_error(built) -> None:
    failed = _section(built[1].decode(), "## Failed runs")
    raw = _raw_rows()
    for run_id in (
        "deblur.scale.lu-d17-k10-b32-n256",
        "mri.quality.luser-d2-jfb-k10-anderson-tol0.001-it40",
        "ct.solver.deq-d5-ift-broyden-tol0.001-it40",
    ):
        line = next(line for line in failed.splitlines() if f"`{run_id}`" in line)
        assert f"**{raw[run_id]['status']}**" in line
        assert raw[run_id]["error"][:40] in line
    assert "mri.profile.rerun" not in failed  # superseded by its ok re-run


def test_report_contents_and_links(built) -> None:
    sweep, text_bytes = built
    text = text_bytes.decode()
    for link in (part.split(")")[0] for part in text.split("](")[1:]):
        assert (sweep / link).is_file(), link
    verdicts = _section(text, "## Verdict")
    assert "| deblur | **holds** |" in verdicts and "| mri | **does not hold** |" in verdicts
    assert "within 0.5 dB" in verdicts  # the rule is written out
    env = _section(text, "## Environment")
    assert "NVIDIA H100 80GB HBM3" in env and "`8b41d07e5c2a9f13d6e8b0a4c7f25e9d1a3b6c48`" in env
    assert "deblur: 2000; ct: 2000; mri: 3000" in _section(text, "## Caveats")


def test_report_regeneration_is_byte_identical(built) -> None:
    sweep, first = built
    path = report.write_report(sweep, psnr_tol_db=0.5)
    assert path.read_bytes() == first
