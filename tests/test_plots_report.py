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
from matplotlib.image import imread
from matplotlib.text import Text

from bench.analysis import compare, figures, plots, report, runtable
from bench.schema import STATUSES

FIXTURE = Path(__file__).parent / "fixtures" / "runs_fixture.csv"
CURVES_FIXTURE = Path(__file__).parent / "fixtures" / "curves.csv"  # beside FIXTURE: K=5 LU-5/17, LUSER
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
    shutil.copy(CURVES_FIXTURE, sweep / "curves.csv")
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
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "psnr_vs_memory.png").write_bytes(b"stale, from an earlier table")
    assert plots.main(argparse.Namespace(dir=tmp_path, psnr_tol_db=0.5)) == 0
    out = tmp_path / "figures"
    assert (out / "headline_ratio.png").is_file() and (out / "memory_vs_k.svg").is_file()
    assert not (out / "psnr_vs_memory.png").exists()  # not drawn (no quality runs): the stale file is gone
    assert not (out / "deq_tolerance.png").exists()
    assert report.main(argparse.Namespace(dir=tmp_path, psnr_tol_db=0.5)) == 0
    text = _section((tmp_path / "report.md").read_text(), "## Figures")
    reason = figures.draw("psnr_vs_memory", runtable.load_runs(tmp_path))
    assert isinstance(reason, str) and f"_Not drawn: {reason}._" in text
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
def test_every_registered_figure_is_saved_as_png_and_svg_of_the_drawn_figure(runs, built) -> None:
    out = built[0] / "figures"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{e}" for n in figures.FIGURES for e in ("png", "svg")
    )
    for name in figures.FIGURES:
        fig = figures.draw(name, runs)
        assert not isinstance(fig, str), fig  # the fixture has the data of every figure
        width, height = fig.get_size_inches() * figures.PNG_DPI
        assert imread(out / f"{name}.png").shape[:2] == (round(height), round(width)), name
        title = fig.get_suptitle()
        assert title and title.replace("&", "&amp;") in (out / f"{name}.svg").read_text(encoding="utf-8"), (
            name
        )


def test_failed_runs_are_marked_on_the_memory_figure(runs) -> None:
    fig = figures.draw("memory_vs_k", runs)
    style = figures.context(runs).style
    marks = set()
    for ax in fig.axes:
        xs = [line for line in ax.get_lines() if line.get_marker() == "x"]
        statuses = [t for t in ax.texts if t.get_text() in set(STATUSES) - {"ok"}]
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


def test_report_has_one_figure_section_per_registered_figure_in_order(runs, built) -> None:
    text = _section(built[1].decode(), "## Figures")
    headings = [line.removeprefix("### ") for line in text.splitlines() if line.startswith("### ")]
    assert headings == [entry.title for entry in figures.FIGURES.values()]
    ctx = figures.context(runs, psnr_tol_db=0.5)
    for entry in figures.FIGURES.values():
        assert f"![{entry.title}](figures/{entry.name}.png)" in text
        assert f"{entry.caption_text(ctx)} ([SVG](figures/{entry.name}.svg))" in text
    assert "within 0.5 dB PSNR" in figures.FIGURES["headline_ratio"].caption_text(ctx)


def test_report_regeneration_is_byte_identical(built) -> None:
    sweep, first = built
    path = report.write_report(sweep, psnr_tol_db=0.5)
    assert path.read_bytes() == first


def test_learning_curves_draw_one_line_per_run_on_step_and_time_axes(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "runs.csv")
    runs = runtable.load_runs(tmp_path)
    assert figures.draw("learning_curves", runs).startswith("no learning curves")  # no curves.csv yet
    shutil.copy(CURVES_FIXTURE, tmp_path / "curves.csv")
    fig = figures.draw("learning_curves", runtable.load_runs(tmp_path))
    curves = runtable.load_curves(tmp_path)
    drawn = curves[curves["run_id"] != "ffffffffffff"]  # the curve without a run row is left out
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [ax.get_xlabel() for ax in axes] == ["training step", "training wall time (s)"] * 2
    for ax, x in zip(axes, ["step", "elapsed_s"] * 2, strict=True):
        task = "deblur" if "deblur" in ax.get_ylabel() or ax in axes[:2] else "ct"
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
        want = drawn[drawn["run_id"].str.startswith(task)]
        assert len(lines) == want["run_id"].nunique() == 3
        assert sorted(float(v) for line in lines for v in line.get_xdata()) == sorted(want[x].tolist())


def test_report_training_section_lists_trained_runs_with_budget_and_stop(runs) -> None:
    df = runs.copy()
    assert "No trained runs" in report._training_section(df)  # the fixture has no steps_run
    picked = df["run_id"].isin(["deblur.quality.lu-d5-k5", "ct.quality.lu-d17-k5"])
    df.loc[picked, ["steps_run", "best_step", "val_psnr_db"]] = [1200.0, 800.0, 27.5]
    df.loc[picked, "stopped_by"] = "plateau"
    text = report._training_section(df)
    table = [line for line in text.splitlines() if line.startswith("| ") and "configuration" not in line]
    assert len(table) == 2 and table[0].startswith("| deblur | LU D=5 | 5 |")  # task order, then config
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4:8] == ["1200 / 2000", "plateau", "800", "27.50"]


def test_a_table_written_before_the_later_columns_reads_them_as_not_measured() -> None:
    header = FIXTURE.read_text().splitlines()[0].split(",")
    assert not set(runtable.LATER_COLUMNS) & set(header)  # the fixture predates them
    df = runtable.load_runs(FIXTURE)
    text_columns = set(runtable.STRING_COLUMNS)
    assert all(
        (df[c] == "").all() if c in text_columns else df[c].isna().all() for c in runtable.LATER_COLUMNS
    )
    assert df["tracked_peak_bytes"].notna().any()


def test_ratio_and_selection_use_the_allocator_peak_with_the_tracked_ratio_beside(runs) -> None:
    """Give every run an allocator peak = tracked peak + a per-model scratch constant: the ratio is then
    the ratio of allocator peaks, the tracked ratio stays what it was, and the meter says which."""
    scratch = {"lu": 4e6, "lu_ckpt": 4e6, "luser": 5e6, "deq": 1e6, "classical": 1e4}
    with_alloc = runs.assign(alloc_peak_bytes=runs["tracked_peak_bytes"] + runs["model"].map(scratch))
    before = {c.task: c for c in compare.compare_memory(runs)}["deblur"]
    comp = {c.task: c for c in compare.compare_memory(with_alloc)}["deblur"]
    assert before.memory_meter == compare.TRACKED_METER and comp.memory_meter == compare.ALLOC_METER
    lu, luser = comp.lu, comp.luser
    assert comp.ratio == pytest.approx(
        (lu["tracked_peak_bytes"] + 4e6) / (luser["tracked_peak_bytes"] + 5e6), rel=1e-12
    )
    tracked = lu["tracked_peak_bytes"] / luser["tracked_peak_bytes"]
    assert comp.tracked_ratio == pytest.approx(tracked, rel=1e-12)
    assert comp.ratio < comp.tracked_ratio  # LUSER's larger scratch shrinks the saving
    # The matched LUSER is the least-memory one by the allocator peak: none within the tolerance is lower.
    same = with_alloc[
        (with_alloc["task"] == "deblur") & (with_alloc["model"] == "luser")
        & (with_alloc["n_iters"] == lu["n_iters"]) & (with_alloc["psnr_db"] >= lu["psnr_db"] - 0.5)
        & (with_alloc["batch_size"] == lu["batch_size"]) & (with_alloc["image_size"] == lu["image_size"])
        & (with_alloc["status"] == "ok")
    ]  # fmt: skip
    assert luser["alloc_peak_bytes"] == same["alloc_peak_bytes"].min()
    verdict = _section(report.render_report(with_alloc, []), "## Verdict")
    deblur_line = next(line for line in verdict.splitlines() if line.startswith("| deblur |"))
    assert f"| {comp.ratio:.2f}x | {compare.ALLOC_METER} | {comp.tracked_ratio:.2f}x |" in deblur_line


def test_config_labels_tell_apart_the_switches_that_change_the_network() -> None:
    from bench.analysis.runtable import config_label

    def row(model: str, extra: str, **kw: object) -> dict[str, object]:
        return {"model": model, "reg_depth": 17, "backward": "ift", "model_extra": extra, **kw}

    plain = config_label(row("lu", '{"x0": "classical"}'))
    normed = config_label(row("lu", '{"norm": true, "x0": "classical"}'))
    assert (plain, normed) == ("LU D=17", "LU D=17 + GroupNorm")
    feature = row("luser", '{"cell": "feature", "spectral_norm": true}', reg_depth=2)
    assert config_label(feature) == "LUSER feature 2-layer ift + spectral norm"
    assert config_label(row("luser", '{"spectral_norm": false}', reg_depth=2)) == "LUSER 2-layer ift"
