"""What the figures draw, checked against the run table read independently of the figure code.

Every figure of :data:`bench.analysis.figures.FIGURES` is built from the hand-made fixture
``tests/fixtures/runs_fixture.csv``; the values of its matplotlib artists (line and marker data, error
bars, scatter offsets, bar heights) are compared with values computed here from the CSV with the ``csv``
module and :mod:`statistics`, so a figure that plots the wrong column, the wrong runs or the wrong
aggregate fails. Configurations are told apart by colour (one per configuration, from the figures'
shared style).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from bench.analysis import compare, figures, runtable
from bench.schema import SOLVER_MODELS

FIXTURE = Path(__file__).parent / "fixtures" / "runs_fixture.csv"
MIB = 2**20
# The solver setting most LUSER/DEQ configurations of the fixture were run at; the K figures and the
# iteration bars show each configuration at its most common setting, which for the fixture is this one.
MAIN_SOLVER = ("anderson", 0.001, 40.0)


# -- the fixture, read without the figure code ----------------------------------------------------------
def _rows() -> list[dict[str, Any]]:
    """The fixture's runs (last row per run_id), with ``config`` and ``setting`` labels added."""
    with FIXTURE.open(newline="") as fh:
        last = {row["run_id"]: row for row in csv.DictReader(fh)}
    rows = list(last.values())
    for row in rows:
        row["config"] = runtable.config_label(row)
        row["setting"] = runtable.setting_label(row["batch_size"], row["image_size"])
    return rows


def _num(row: dict[str, Any], col: str) -> float | None:
    return float(row[col]) if row[col].strip() else None


def _at_main_solver(row: dict[str, Any]) -> bool:
    if row["model"] not in SOLVER_MODELS:
        return True
    return (row["solver"], _num(row, "tol"), _num(row, "max_iter")) == MAIN_SOLVER


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok"]


@pytest.fixture(scope="module")
def runs():
    return runtable.load_runs(FIXTURE)


@pytest.fixture(scope="module")
def style(runs):
    return figures.context(runs).style


def _draw(name: str, runs) -> Figure:
    fig = figures.draw(name, runs)
    assert isinstance(fig, Figure), fig  # the fixture has the data of every figure
    return fig


def _config_of(style, color: Any) -> str:
    rgb = tuple(round(v, 6) for v in to_rgb(color))
    matches = [c for c in style.order if tuple(round(v, 6) for v in style.color(c)) == rgb]
    assert len(matches) == 1, (color, matches)
    return matches[0]


def _panel(ax) -> tuple[str, str]:
    task, setting = ax.get_title().split("  ·  ")
    return task, setting


def _approx_dict(d: dict) -> dict:
    return {k: pytest.approx(v, rel=1e-12) for k, v in d.items()}


def _assert_same_points(drawn: dict[Any, list], expected: dict[Any, list]) -> None:
    """Same keys, and per key the same (x, y) points in any order (to 1e-12 relative)."""
    assert sorted(drawn, key=str) == sorted(expected, key=str)
    for key, points in expected.items():
        flat_drawn = [float(c) for p in sorted(drawn[key]) for c in p]
        assert flat_drawn == pytest.approx([c for p in sorted(points) for c in p], rel=1e-12), key


# -- memory and step time against K ---------------------------------------------------------------------
def _expected_vs_k(col: str, scale: float) -> tuple[dict, dict]:
    """{(task, setting, config): {K: median}} of ok trained runs, and the medians of runs without K."""
    curves: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    flats: dict[tuple, list[float]] = defaultdict(list)
    for r in _ok(_rows()):
        value = _num(r, col)
        if r["model"] == "classical" or value is None or not _at_main_solver(r):
            continue
        key = (r["task"], r["setting"], r["config"])
        k = _num(r, "n_iters")
        (flats[key] if k is None else curves[key][k]).append(value / scale)
    medians = {key: {k: statistics.median(v) for k, v in by_k.items()} for key, by_k in curves.items()}
    return medians, {key: statistics.median(v) for key, v in flats.items()}


def _drawn_vs_k(fig: Figure, style, linestyle: str) -> tuple[dict, dict]:
    """The data lines of one line style per panel and configuration, and the dotted flat lines."""
    curves, flats = {}, {}
    for ax in fig.axes:
        if "·" not in ax.get_title() or not ax.get_lines():
            continue
        for line in ax.get_lines():
            key = (*_panel(ax), _config_of(style, line.get_color()))
            if line.get_linestyle() == ":":
                flats[key] = float(line.get_ydata()[0])
            elif line.get_linestyle() == linestyle and line.get_marker() not in ("x", "_"):
                curves[key] = dict(
                    zip(map(float, line.get_xdata()), map(float, line.get_ydata()), strict=True)
                )
    return curves, flats


def test_memory_vs_k_draws_the_median_tracked_and_cuda_peaks_per_k(runs, style) -> None:
    fig = _draw("memory_vs_k", runs)
    assert "anderson, tol=0.001, max_iter=40" in " ".join(t.get_text() for t in fig.texts)
    curves, flats = _drawn_vs_k(fig, style, "-")
    expected, expected_flat = _expected_vs_k("tracked_peak_bytes", MIB)
    assert curves == {k: _approx_dict(v) for k, v in expected.items()}
    assert flats == pytest.approx(expected_flat, rel=1e-12)  # the full DEQ, which has no K
    cuda, _ = _drawn_vs_k(fig, style, "--")
    expected_cuda, _ = _expected_vs_k("cuda_peak_bytes", MIB)
    assert cuda == {k: _approx_dict(v) for k, v in expected_cuda.items()}


def test_step_time_vs_k_draws_median_times_with_half_iqr_error_bars(runs, style) -> None:
    fig = _draw("step_time_vs_k", runs)
    curves, flats = _drawn_vs_k(fig, style, "-")
    expected, expected_flat = _expected_vs_k("step_ms_median", 1.0)
    assert curves == {k: _approx_dict(v) for k, v in expected.items()}
    assert flats == pytest.approx(expected_flat, rel=1e-12)
    half_iqr, _ = _expected_vs_k("step_ms_iqr", 2.0)
    bars = {}
    for ax in fig.axes:
        if "·" not in ax.get_title():
            continue
        for coll in ax.collections:
            if isinstance(coll, LineCollection):
                key = (*_panel(ax), _config_of(style, coll.get_color()[0]))
                bars[key] = {float(s[0][0]): float(s[1][1] - s[0][1]) / 2 for s in coll.get_segments()}
    assert bars == {k: {x: pytest.approx(v, abs=1e-9) for x, v in d.items()} for k, d in half_iqr.items()}


# -- quality against memory ------------------------------------------------------------------------------
def test_psnr_vs_memory_draws_every_trained_run_and_its_pareto_front(runs, style) -> None:
    fig = _draw("psnr_vs_memory", runs)
    expected: dict[tuple, list] = defaultdict(list)
    for r in _ok(_rows()):
        mem, psnr = _num(r, "tracked_peak_bytes"), _num(r, "psnr_db")
        if r["model"] != "classical" and mem is not None and psnr is not None:
            expected[(r["task"], r["setting"], r["config"])].append((mem / MIB, psnr))
    drawn: dict[tuple, list] = defaultdict(list)
    for ax in fig.axes:
        if "·" not in ax.get_title():
            continue
        panel_points = []
        for coll in ax.collections:
            if isinstance(coll, PathCollection):
                key = (*_panel(ax), _config_of(style, coll.get_facecolor()[0]))
                points = [tuple(map(float, p)) for p in coll.get_offsets()]
                drawn[key] += points
                panel_points += points
        if not panel_points:
            continue
        front_line = next(line for line in ax.get_lines() if line.get_color() == "black")
        front = set(zip(front_line.get_xdata()[:-1], front_line.get_ydata()[:-1], strict=True))
        not_dominated = {
            p for p in panel_points if not any(q[0] <= p[0] and q[1] > p[1] for q in panel_points)
        }
        assert front == not_dominated, ax.get_title()
    _assert_same_points(drawn, expected)
    # deblur's Tikhonov (26.13 dB) lies below the trained runs' PSNR range: listed, not drawn as a line
    assert any("classical tikhonov: 26.1 dB" in t.get_text() for ax in fig.axes for t in ax.texts)


# -- solver tolerance and budget sweeps --------------------------------------------------------------------
SWEEP_ROWS = ("psnr_db", "step_ms_median", "fwd_iters_mean")


def _expected_sweep(param: str, other: str) -> tuple[dict, dict]:
    """Per (task, row, line label): the sorted (param, value) points, and the unconverged ones."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in _ok(_rows()):
        if r["model"] in SOLVER_MODELS and _num(r, param) is not None:
            key = (
                r["task"],
                r["config"],
                r["n_iters"],
                r["batch_size"],
                r["image_size"],
                r["solver"],
                r[other],
            )
            groups[key].append(r)
    lines: dict[tuple, list] = {}
    unconverged: dict[tuple, list] = defaultdict(list)
    for (task, config, k, _, _, solver, other_value), rows in groups.items():
        if len({_num(r, param) for r in rows}) < 2:
            continue
        label = f"{config}, K={k}" if k else config
        label += f", {other}={float(other_value):g}, {solver}"
        for i, col in enumerate(SWEEP_ROWS):
            pts = [(_num(r, param), _num(r, col), _num(r, "converged_frac")) for r in rows]
            pts = [p for p in pts if p[1] is not None]
            lines[(task, i, label)] = sorted((x, y) for x, y, _ in pts)
            unconverged[(task, i)] += [(x, y) for x, y, c in pts if c is not None and c < 1.0]
    return lines, unconverged


@pytest.mark.parametrize(
    ("name", "param", "other"), [("deq_tolerance", "tol", "max_iter"), ("deq_max_iter", "max_iter", "tol")]
)
def test_solver_sweeps_draw_psnr_time_and_iterations_against_the_swept_setting(
    runs, name, param, other
) -> None:
    fig = _draw(name, runs)
    tasks = [ax.get_title() for ax in fig.axes if ax.get_title()]
    lines: dict[tuple, list] = {}
    unconverged: dict[tuple, list] = defaultdict(list)
    for n, ax in enumerate(fig.axes):
        task, row = tasks[n % len(tasks)], n // len(tasks)
        for line in ax.get_lines():
            if not line.get_label().startswith("_") and line.get_marker() != "x":
                lines[(task, row, line.get_label())] = sorted(
                    zip(line.get_xdata(), line.get_ydata(), strict=True)
                )
        for coll in ax.collections:  # open red circles: not every solve converged
            unconverged[(task, row)] += [tuple(map(float, p)) for p in coll.get_offsets()]
    expected_lines, expected_bad = _expected_sweep(param, other)
    _assert_same_points(lines, expected_lines)
    _assert_same_points(
        {k: v for k, v in unconverged.items() if v}, {k: v for k, v in expected_bad.items() if v}
    )
    assert expected_bad  # the fixture has unconverged runs in both sweeps


# -- solver iterations -------------------------------------------------------------------------------------
def test_solver_iterations_bars_are_median_forward_and_backward_iterations(runs) -> None:
    fig = _draw("solver_iterations", runs)
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in _ok(_rows()):
        if r["model"] in SOLVER_MODELS and _num(r, "fwd_iters_mean") is not None and _at_main_solver(r):
            for col, pass_ in (("fwd_iters_mean", "forward"), ("bwd_iters_mean", "backward")):
                if _num(r, col) is not None:
                    values[(r["task"], r["config"])][pass_].append(_num(r, col))
    expected = {
        (*key, p): statistics.median(v) for key, by_pass in values.items() for p, v in by_pass.items()
    }
    drawn = {}
    for ax in fig.axes:
        configs = [t.get_text() for t in ax.get_xticklabels()]
        for bar in ax.patches:
            centre = bar.get_x() + bar.get_width() / 2
            index = round(centre)
            drawn[(ax.get_title(), configs[index], "forward" if centre < index else "backward")] = (
                bar.get_height()
            )
        no_backward = {
            configs[round(t.get_position()[0] - 0.2)] for t in ax.texts if "no backward" in t.get_text()
        }
        assert no_backward == {c for c in configs if (ax.get_title(), c, "backward") not in expected}
    assert drawn == pytest.approx(expected, rel=1e-12)
    assert ("deblur", "DEQ D=5 ift", "forward") in drawn  # the DEQ's profile and quality runs: median of two


# -- the headline ----------------------------------------------------------------------------------------
def test_headline_bars_are_lu_memory_over_each_runs_memory(runs) -> None:
    fig = _draw("headline_ratio", runs)
    peak = {r["run_id"]: float(r["tracked_peak_bytes"]) for r in _rows() if r["tracked_peak_bytes"]}
    comparisons = {c.task: c for c in compare.compare_memory(runs, psnr_tol_db=0.5)}
    roles = {"plain LU": "lu", "checkpointed LU": "lu_ckpt", "LUSER": "luser", "full DEQ": "deq"}
    panels = 0
    for ax in fig.axes:
        task, verdict = ax.get_title().split("\n")[0].split(": ")
        comp = comparisons[task]
        assert verdict == comp.verdict.upper()
        labels = [t.get_text().split("\n") for t in ax.get_xticklabels()]
        runs_drawn = [getattr(comp, roles[role]) for role, _ in labels]
        assert [config for _, config in labels] == [row["config"] for row in runs_drawn]
        expected = [peak[comp.lu["run_id"]] / peak[row["run_id"]] for row in runs_drawn]
        assert [bar.get_height() for bar in ax.patches] == pytest.approx(expected, rel=1e-12)
        above = [t.get_text() for t in ax.texts if t.get_text().endswith(("MiB", "dB", ")"))]
        assert [t.split("\n")[0] for t in above] == [f"{e:.1f}x" for e in expected]
        panels += 1
    assert panels == len(comparisons)
    # deblur by hand: the best LU (LU-17, 31.22 dB) over the least-memory LUSER within 0.5 dB (jfb)
    deblur = next(ax for ax in fig.axes if ax.get_title().startswith("deblur"))
    luser_bar = deblur.patches[
        [t.get_text() for t in deblur.get_xticklabels()].index("LUSER\nLUSER 2-layer jfb")
    ]
    assert luser_bar.get_height() == pytest.approx(
        peak["deblur.quality.lu-d17-k10"] / peak["deblur.quality.luser-d2-jfb-k10-anderson-tol0.001-it40"]
    )


# -- the registry ----------------------------------------------------------------------------------------
def test_unknown_figure_names_the_known_ones(runs) -> None:
    with pytest.raises(KeyError, match="unknown figure 'nope'; known: headline_ratio, memory_vs_k"):
        figures.draw("nope", runs)
