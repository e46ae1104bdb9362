"""Figures of a luser-bench sweep, drawn from its ``runs.csv`` only.

``python -m bench plot DIR`` reads ``DIR/runs.csv`` (:func:`bench.analysis.runtable.load_runs`) and writes
PNG and SVG figures into ``DIR/figures/``. Only pandas, seaborn and matplotlib (Agg canvas, no pyplot
state) are used: no torch, no model is rerun. The headline figure draws the 8x comparison of
:mod:`bench.analysis.compare`
(the selection rule is described there).

Failed runs (``status != ok``) are never dropped: the figures mark them with an ``x`` and their status.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.analysis.compare import (
    BASIS_EQUAL_K,
    CLAIMED_RATIO,
    PSNR_TOL_DB,
    add_psnr_tol_argument,
    compare_memory,
    pareto_front,
    peak_bytes,
)
from bench.analysis.runtable import MODEL_ORDER, int_text, load_runs, ordered_tasks, output_dir, setting_label

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Ordering, markers and output formats of the figures
BACKWARD_ORDER: tuple[str, ...] = ("ift", "ift_hook", "jfb", "phantom", "unrolled")
MARKERS: dict[str, str] = {"lu": "o", "lu_ckpt": "s", "luser": "^", "deq": "D", "classical": "*"}
SOLVER_MODELS: tuple[str, ...] = ("luser", "deq")
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")
PNG_DPI = 130

# seaborn's look, applied through rc_context only (no global state is changed on import)
_RC: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "svg.hashsalt": "luser-bench",  # stable SVG ids
    "svg.fonttype": "none",
    "legend.frameon": False,
}


# --------------------------------------------------------------------------------------------------
# Colours, ordering, small helpers
@dataclass(frozen=True)
class Style:
    """One colour and marker per configuration, shared by all figures of a run table."""

    order: tuple[str, ...]
    colors: dict[str, tuple[float, float, float]]
    markers: dict[str, str]

    def color(self, config: str) -> tuple[float, float, float]:
        return self.colors.get(config, (0.3, 0.3, 0.3))

    def marker(self, config: str) -> str:
        return self.markers.get(config, "P")


def _rank(values: Sequence[str], value: str) -> int:
    return values.index(value) if value in values else len(values)


def config_sort_key(row: Mapping[str, Any]) -> tuple[int, float, int, str]:
    """Order: LU, LU-ckpt, LUSER, DEQ, classical; then depth; then backward mode."""
    depth = float(row["reg_depth"]) if pd.notna(row["reg_depth"]) else math.inf
    return (_rank(MODEL_ORDER, row["model"]), depth, _rank(BACKWARD_ORDER, row["backward"]), row["config"])


# One colour family per model (hex colours from ColorBrewer's Set1/Dark2 and seaborn's colour-blind set),
# so that e.g. all LU variants are blue and all LUSER variants are warm.
FAMILY_COLORS: dict[str, tuple[str, ...]] = {
    "lu": ("#6baed6", "#08519c", "#3182bd", "#9ecae1"),
    "lu_ckpt": ("#6a3d9a", "#b294c7", "#8c6bb1"),
    "luser": ("#d95f02", "#e7298a", "#1b9e77", "#a6761d", "#66a61e", "#e6ab02"),
    "deq": ("#d62728", "#8c2d04", "#fb6a4a"),
    "classical": ("#555555", "#888888", "#aaaaaa"),
}


def make_style(df: pd.DataFrame) -> Style:
    """A colour per configuration (one colour family per model, in config order); a marker per model."""
    firsts = sorted(
        df.drop_duplicates("config")[["config", "model", "reg_depth", "backward"]].to_dict("records"),
        key=config_sort_key,
    )
    order = tuple(r["config"] for r in firsts)
    colors: dict[str, tuple[float, float, float]] = {}
    used: dict[str, int] = {}
    extra = iter(sns.color_palette("husl", len(firsts) + 1))
    for r in firsts:
        family = FAMILY_COLORS.get(r["model"], ())
        n = used.get(r["model"], 0)
        used[r["model"]] = n + 1
        colors[r["config"]] = to_rgb(family[n]) if n < len(family) else tuple(next(extra))  # type: ignore[assignment]
    markers = {r["config"]: MARKERS.get(r["model"], "P") for r in firsts}
    return Style(order=order, colors=colors, markers=markers)


def _settings(df: pd.DataFrame) -> list[tuple[float, float, int]]:
    """(batch, image size, problem rank) of the runs: a panel row each, so runs of different
    problems of a task (operator settings, noise, data, precision) never share a panel."""
    cols = df[["batch_size", "image_size"]].fillna(0).assign(rank=_problem_rank(df)).drop_duplicates()
    return sorted((float(b), float(n), int(r)) for b, n, r in cols.itertuples(index=False))


def _problem_rank(df: pd.DataFrame) -> pd.Series:
    return df["problem_rank"] if "problem_rank" in df.columns else pd.Series(0, index=df.index)


def _in_setting(df: pd.DataFrame, setting: tuple[float, float, int]) -> pd.DataFrame:
    b, n, rank = setting
    same_size = (df["batch_size"].fillna(0) == b) & (df["image_size"].fillna(0) == n)
    return df[same_size & (_problem_rank(df) == rank)]


def _panel_title(df: pd.DataFrame, task: str, setting: tuple[float, float, int]) -> str:
    """``"ct  ·  B=2, 32×32, n_angles=30"``: the task's problem label at that rank, if any."""
    here = _in_setting(df[df["task"] == task], setting)
    problem = str(here["problem"].iloc[0]) if "problem" in here.columns and len(here) else ""
    return f"{task}  ·  {setting_label(setting[0], setting[1], problem)}"


def _solver_key(df: pd.DataFrame) -> pd.Series:
    return df["solver"] + "|" + df["tol"].map(_num_text) + "|" + df["max_iter"].map(_num_text)


def _num_text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):g}"  # type: ignore[arg-type]


def main_solver_setting(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Keep, per configuration, only rows at its most frequent (solver, tol, max_iter).

    Tolerance and budget sweeps would otherwise blur the K curves; they have their own figures.
    Returns the filtered rows and ``{config: "anderson, tol=0.001, max_iter=40"}`` for solver models.
    """
    if df.empty:
        return df, {}
    key = _solver_key(df)
    keep = pd.Series(False, index=df.index)
    described: dict[str, str] = {}
    for config, rows in df.groupby("config", sort=True):
        counts = key[rows.index].value_counts()
        best = sorted(counts.index, key=lambda k: (-counts[k], k))[0]
        keep[rows.index[key[rows.index] == best]] = True
        if rows["model"].iloc[0] in SOLVER_MODELS:
            solver, tol, max_iter = best.split("|")
            described[str(config)] = f"{solver or '?'}, tol={tol or '?'}, max_iter={max_iter or '?'}"
    return df[keep], described


def _new_figure(
    n_rows: int,
    n_cols: int,
    *,
    width: float = 4.4,
    height: float = 3.4,
    legend_w: float = 2.6,
    sharey: Any = False,
    sharex: Any = False,
) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * n_cols + legend_w, height * n_rows + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=sharey, sharex=sharex)
    return fig, axes


def _finish(
    fig: Figure, title: str, handles: list[Any], notes: Sequence[str] = (), legend_title: str = ""
) -> None:
    """Figure title, one legend at the right, and wrapped notes under the axes."""
    fig.suptitle(title, fontsize=12, fontweight="bold")
    if handles:
        fig.legend(
            handles=handles,
            loc="outside right center",
            fontsize=8,
            title=legend_title or None,
            title_fontsize=9,
            alignment="left",
        )
    notes = [n for n in notes if n]
    if notes:
        width_chars = int(fig.get_figwidth() * 14)
        text = "\n".join(textwrap.fill(n, width_chars) for n in notes)
        lines = text.count("\n") + 1
        bottom = min(0.35, (0.16 * lines + 0.1) / fig.get_figheight())
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))  # type: ignore[union-attr, call-arg]
        fig.text(0.01, bottom - 0.01, text, ha="left", va="top", fontsize=8, color="0.25")


def _plain_log(axis: Any, unit: str = "") -> None:
    """Log-scale ticks at 1, 2, 5 x 10^n written as plain numbers (``2,000``), not ``2 x 10^3``."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{0 if v >= 1 else 2}f}{unit}"))
    axis.set_minor_formatter(NullFormatter())


def _headroom(ax: Axes, fraction: float = 0.25) -> None:
    """Room above the data for failure marks at the top edge (works on log and linear axes)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * fraction)


def _config_handles(style: Style, configs: Sequence[str]) -> list[Any]:
    present = set(configs)
    return [
        Line2D([], [], color=style.color(c), marker=style.marker(c), label=c, lw=1.6, markersize=6)
        for c in style.order
        if c in present
    ]


def _corner_note(ax: Axes, text: str, *, y: float, color: str) -> None:
    """A small note in the lower right corner of an axis."""
    ax.text(0.98, y, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color=color)


def _empty_axis(ax: Axes, text: str) -> None:
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9, wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# --------------------------------------------------------------------------------------------------
# Failed runs
@dataclass(frozen=True)
class FailedMark:
    """A failed run drawn on a figure (an ``x`` with its status, or a note when it has no x position)."""

    run_id: str
    task: str
    config: str
    n_iters: int | None
    status: str
    setting: str


@dataclass
class FigureResult:
    """What one plot function produced: the figure (``None`` when skipped) and the failures it marks."""

    name: str
    caption: str
    figure: Figure | None = None
    failed: list[FailedMark] = field(default_factory=list)
    skipped: str = ""
    paths: list[Path] = field(default_factory=list)


def _k_of(value: object) -> int | None:
    return None if pd.isna(value) else int(float(value))  # type: ignore[arg-type]


def _mark_failed(
    ax: Axes, failed: pd.DataFrame, style: Style, x_col: str, *, at_top: bool = True
) -> tuple[list[FailedMark], list[str]]:
    """An ``x`` per failed run at its x position (top or bottom edge of the axes), status written beside.

    Failures without an x value (e.g. a DEQ has no K) come back as note lines for the figure.
    """
    marks: list[FailedMark] = []
    unplaced: list[str] = []
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    stack: dict[float, int] = {}
    for row in failed.sort_values(["config", "run_id"]).to_dict("records"):
        marks.append(
            FailedMark(
                row["run_id"],
                row["task"],
                row["config"],
                _k_of(row["n_iters"]),
                row["status"],
                row["setting"],
            )
        )
        x = row[x_col]
        if pd.isna(x):
            unplaced.append(f"{row['config']}: {row['status']}")
            continue
        level = stack.get(float(x), 0)
        stack[float(x)] = level + 1
        y = 0.95 - 0.08 * level if at_top else 0.05 + 0.08 * level
        color = style.color(row["config"])
        ax.plot(
            [x],
            [y],
            transform=trans,
            marker="x",
            markersize=9,
            mew=2.2,
            color=color,
            ls="none",
            zorder=5,
            clip_on=False,
        )
        to_axes = ax.transData + ax.transAxes.inverted()
        at_right = bool(to_axes.transform((float(x), ax.get_ylim()[0]))[0] > 0.8)
        ax.annotate(
            row["status"],
            (x, y),
            xycoords=trans,
            xytext=(-7 if at_right else 7, 0),
            textcoords="offset points",
            fontsize=8,
            fontweight="bold",
            color=color,
            va="center",
            ha="right" if at_right else "left",
        )
    return marks, unplaced


_FAILED_HANDLE = Line2D(
    [],
    [],
    marker="x",
    color="0.2",
    ls="none",
    mew=2,
    markersize=8,
    label="failed run (status written beside)",
)


# --------------------------------------------------------------------------------------------------
# Figures 1 and 2: memory and step time against K
@dataclass(frozen=True)
class KFigureSpec:
    name: str
    value_col: str
    ylabel: str
    title: str
    caption: str
    cuda_col: str = ""  # drawn dashed where present
    iqr_col: str = ""  # error bars of +- iqr / 2


K_FIGURES: dict[str, KFigureSpec] = {
    "memory_vs_k": KFigureSpec(
        name="memory_vs_k",
        value_col="tracked_peak_mib",
        cuda_col="cuda_peak_mib",
        ylabel="peak training memory (MiB, log scale)",
        title="Training memory of one step against the number of unrolled iterations K",
        caption="Peak memory of one warm training step (forward, loss, backward, optimiser step) against K. "
        "Solid: tracked live tensors (device-independent); dashed: CUDA max_memory_allocated. Dotted "
        "horizontal lines: models without K (full DEQ).",
    ),
    "step_time_vs_k": KFigureSpec(
        name="step_time_vs_k",
        value_col="step_ms_median",
        iqr_col="step_ms_iqr",
        ylabel="time per training step (ms, median, log scale)",
        title="Time of one training step against the number of unrolled iterations K",
        caption="Median wall-clock time of a warm training step against K; bars span the inter-quartile "
        "range. Dotted horizontal lines: models without K (full DEQ).",
    ),
}


def _plot_vs_k(df: pd.DataFrame, style: Style, spec: KFigureSpec) -> FigureResult:
    result = FigureResult(spec.name, spec.caption)
    trained = df[df["model"] != "classical"]
    ok, solver_settings = main_solver_setting(
        trained[(trained["status"] == "ok") & trained[spec.value_col].notna()]
    )
    failed = trained[trained["status"] != "ok"]
    if ok.empty and failed.empty:
        result.skipped = f"no trained runs with {spec.value_col}"
        return result
    both = pd.concat([ok, failed])
    tasks, settings = ordered_tasks(both["task"]), _settings(both)
    all_k = sorted({int(k) for k in both["n_iters"].dropna()})
    fig, axes = _new_figure(len(settings), len(tasks))
    notes: list[str] = []
    has_cuda = has_flat = False
    for i, setting in enumerate(settings):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            here = _in_setting(ok[ok["task"] == task], setting)
            fails = _in_setting(failed[failed["task"] == task], setting)
            title = _panel_title(df, task, setting)
            ax.set_title(title, fontsize=10)
            if here.empty and fails.empty:
                _empty_axis(ax, "no runs in this setting")
                continue
            for config in [c for c in style.order if c in set(here["config"])]:
                rows = here[here["config"] == config]
                color, marker = style.color(config), style.marker(config)
                with_k = rows[rows["n_iters"].notna()].groupby("n_iters")
                curve = with_k[[spec.value_col] + ([spec.cuda_col] if spec.cuda_col else [])].median()
                if not curve.empty:
                    yerr = None
                    if spec.iqr_col:
                        yerr = with_k[spec.iqr_col].median().fillna(0).to_numpy() / 2
                    ax.errorbar(
                        curve.index,
                        curve[spec.value_col],
                        yerr=yerr,
                        color=color,
                        marker=marker,
                        lw=1.6,
                        markersize=5,
                        capsize=2,
                    )
                    if spec.cuda_col and curve[spec.cuda_col].notna().any():
                        has_cuda = True
                        ax.plot(curve.index, curve[spec.cuda_col], color=color, ls="--", lw=1.1, alpha=0.9)
                flat = rows[rows["n_iters"].isna()][spec.value_col]
                if not flat.empty:
                    has_flat = True
                    ax.axhline(float(flat.median()), color=color, ls=":", lw=1.8)
            if not here.empty:
                ax.set_yscale("log")
                _plain_log(ax.yaxis)
            if not fails.empty:
                _headroom(ax)
            marks, unplaced = _mark_failed(ax, fails, style, "n_iters")
            result.failed += marks
            if unplaced:
                _corner_note(ax, "failed, no K:\n" + "\n".join(unplaced), y=0.03, color="firebrick")
            ax.set_xticks(all_k)
            ax.set_xlabel("K (unrolled iterations)")
            if j == 0:
                ax.set_ylabel(spec.ylabel)
    handles = _config_handles(style, both["config"])
    if has_cuda:
        handles += [
            Line2D([], [], color="0.3", lw=1.6, label="tracked peak"),
            Line2D([], [], color="0.3", lw=1.1, ls="--", label="CUDA peak"),
        ]
    if has_flat:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1.8, label="model without K (flat line)"))
    if not failed.empty:
        handles.append(_FAILED_HANDLE)
    if solver_settings:
        uniq = sorted(set(solver_settings.values()))
        if len(uniq) == 1:
            notes.append(f"LUSER and DEQ runs shown at their most common solver setting: {uniq[0]}.")
        else:
            notes.append(
                "Solver settings shown: " + "; ".join(f"{c}: {s}" for c, s in sorted(solver_settings.items()))
            )
    notes.append("Repeated configurations (e.g. profile and quality runs) are shown by their median.")
    _finish(fig, spec.title, handles, notes, legend_title="configuration")
    result.figure = fig
    return result


def plot_memory_vs_k(df: pd.DataFrame, style: Style | None = None) -> FigureResult:
    """Figure 1: peak training memory (MiB, log) against K, per task and setting."""
    return _plot_vs_k(df, style or make_style(df), K_FIGURES["memory_vs_k"])


def plot_step_time_vs_k(df: pd.DataFrame, style: Style | None = None) -> FigureResult:
    """Figure 2: median step time (ms, log) against K, per task and setting."""
    return _plot_vs_k(df, style or make_style(df), K_FIGURES["step_time_vs_k"])


# --------------------------------------------------------------------------------------------------
# Figure 3: PSNR against memory with the Pareto front (bench.analysis.compare.pareto_front)
def plot_psnr_vs_memory(df: pd.DataFrame, style: Style | None = None) -> FigureResult:
    """Figure 3: test PSNR against peak training memory per task; the Pareto front in black."""
    style = style or make_style(df)
    result = FigureResult(
        "psnr_vs_memory",
        "Test PSNR against peak training memory (tracked) of every trained run; the black staircase is "
        "the Pareto front (no run has both less memory and a higher PSNR). Numbers beside points: K. "
        "Classical reconstructions (not trained) are grey lines, or listed when their PSNR lies below "
        "the axis.",
    )
    quality = df[(df["status"] == "ok") & df["psnr_db"].notna()]
    trained = quality[(quality["model"] != "classical") & quality["tracked_peak_mib"].notna()]
    if trained.empty:
        result.skipped = "no quality runs (no psnr_db with a tracked peak): nothing to plot"
        return result
    failed = df[(df["status"] != "ok") & (df["model"] != "classical") & (df["steps"].fillna(0) > 0)]
    tasks = ordered_tasks(trained["task"])
    settings = _settings(trained)
    fig, axes = _new_figure(len(settings), len(tasks), height=3.8)
    notes: list[str] = []
    for i, setting in enumerate(settings):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            ax.set_title(_panel_title(df, task, setting), fontsize=10)
            here = _in_setting(trained[trained["task"] == task], setting)
            if here.empty:
                _empty_axis(ax, "no quality runs in this setting")
                continue
            for config in [c for c in style.order if c in set(here["config"])]:
                rows = here[here["config"] == config]
                ax.scatter(
                    rows["tracked_peak_mib"],
                    rows["psnr_db"],
                    color=style.color(config),
                    marker=style.marker(config),
                    s=42,
                    edgecolor="white",
                    linewidth=0.5,
                    zorder=3,
                )
                for r in rows.itertuples():
                    if pd.notna(r.n_iters):
                        ax.annotate(
                            int_text(r.n_iters),
                            (r.tracked_peak_mib, r.psnr_db),
                            xytext=(4, 3),
                            textcoords="offset points",
                            fontsize=6.5,
                            color="0.35",
                        )
            mem, psnr = here["tracked_peak_mib"].to_list(), here["psnr_db"].to_list()
            front = pareto_front(mem, psnr)
            fx, fy = [mem[k] for k in front], [psnr[k] for k in front]
            ax.step(fx + [max(mem) * 1.5], fy + [fy[-1]], where="post", color="black", lw=1.1, zorder=2)
            lo, hi = min(psnr), max(psnr)
            pad = max(0.25, 0.08 * (hi - lo))
            fails = _in_setting(failed[failed["task"] == task], setting)
            ax.set_ylim(lo - pad * (3 if not fails.empty else 1), hi + pad)
            classical = _in_setting(
                quality[(quality["task"] == task) & (quality["model"] == "classical")], setting
            )
            below = []
            for r in classical.sort_values("config").itertuples():
                if r.psnr_db >= lo - pad:
                    ax.axhline(r.psnr_db, color=style.color(r.config), ls="-.", lw=1.2)
                    ax.annotate(
                        f"{r.config}: {r.psnr_db:.1f} dB",
                        (0.02, r.psnr_db),
                        xytext=(0, 3),
                        xycoords=("axes fraction", "data"),
                        textcoords="offset points",
                        fontsize=7.5,
                    )
                else:
                    below.append(f"{r.config}: {r.psnr_db:.1f} dB")
            if below:
                _corner_note(ax, "below the axis (no training):\n" + "\n".join(below), y=0.02, color="0.3")
            marks, unplaced = _mark_failed(ax, fails, style, "tracked_peak_mib", at_top=False)
            result.failed += marks
            notes += [f"Failed quality run without a memory value: {task} {u}." for u in unplaced]
            ax.set_xscale("log")
            _plain_log(ax.xaxis)
            ax.set_xlabel("peak training memory, tracked (MiB, log scale)")
            if j == 0:
                ax.set_ylabel("test PSNR (dB)")
    handles = _config_handles(style, trained["config"])
    handles.append(Line2D([], [], color="black", lw=1.1, label="Pareto front"))
    if any(line.get_linestyle() == "-." for ax in axes.flat for line in ax.get_lines()):
        handles.append(Line2D([], [], color="0.45", ls="-.", lw=1.2, label="classical (no training)"))
    if result.failed:
        handles.append(_FAILED_HANDLE)
    _finish(
        fig, "Reconstruction quality against training memory", handles, notes, legend_title="configuration"
    )
    result.figure = fig
    return result


# --------------------------------------------------------------------------------------------------
# Figure 4: solver tolerance and iteration budget (LUSER and DEQ)
@dataclass(frozen=True)
class SweepSpec:
    name: str
    param: str
    other: str
    xlabel: str
    title: str
    log_x: bool
    invert_x: bool


SWEEPS: dict[str, SweepSpec] = {
    "tol": SweepSpec(
        name="deq_tolerance",
        param="tol",
        other="max_iter",
        xlabel="forward tolerance (relative residual; tighter →)",
        title="Fixed-point solver tolerance: quality, cost and iterations (LUSER and DEQ)",
        log_x=True,
        invert_x=True,
    ),
    "max_iter": SweepSpec(
        name="deq_max_iter",
        param="max_iter",
        other="tol",
        xlabel="max_iter (forward iteration budget)",
        title="Fixed-point iteration budget: quality, cost and iterations (LUSER and DEQ)",
        log_x=True,
        invert_x=False,
    ),
}
_SWEEP_ROWS: tuple[tuple[str, str], ...] = (
    ("psnr_db", "test PSNR (dB)"),
    ("step_ms_median", "step time (ms, log scale)"),
    ("fwd_iters_mean", "forward iterations\n(mean per solve)"),
)


def _sweep_groups(rows: pd.DataFrame, spec: SweepSpec) -> list[tuple[str, pd.DataFrame]]:
    """Lines of a sweep: runs equal in everything but ``spec.param``, with >= 2 distinct values of it."""
    keys = ["task", "config", "n_iters", "batch_size", "image_size", "solver", spec.other]
    keyed = rows.assign(
        **{f"_{k}": rows[k].map(lambda v: v if isinstance(v, str) else _num_text(v)) for k in keys}
    )
    groups = []
    for _, g in keyed.groupby([f"_{k}" for k in keys], sort=True, dropna=False):
        if g[spec.param].nunique() < 2:
            continue
        first = g.iloc[0]
        label = first["config"] + (f", K={int_text(first['n_iters'])}" if pd.notna(first["n_iters"]) else "")
        label += f", {spec.other}={_num_text(first[spec.other])}"
        if first["solver"]:
            label += f", {first['solver']}"
        groups.append((label, g.sort_values(spec.param)))
    return groups


def plot_solver_sweep(df: pd.DataFrame, param: str = "tol", style: Style | None = None) -> FigureResult:
    """Figure 4: PSNR, step time and forward iterations against ``tol`` or ``max_iter`` (LUSER, DEQ).

    Only configurations run at two or more values of ``param`` are drawn; open red circles mark runs where
    not every solve converged.
    """
    if param not in SWEEPS:
        raise KeyError(f"unknown sweep parameter {param!r}; known: {sorted(SWEEPS)}")
    spec, style = SWEEPS[param], style or make_style(df)
    result = FigureResult(
        spec.name,
        f"LUSER and DEQ runs that differ only in {param}: test PSNR, step time and mean forward solver "
        "iterations per solve. The tolerance is relative: a solve stops when ||f(z) - z|| / ||f(z)|| <= "
        "tol or after max_iter iterations. Open red circles: not every fixed-point solve converged.",
    )
    solver_rows = df[df["model"].isin(SOLVER_MODELS)]
    ok = solver_rows[(solver_rows["status"] == "ok") & solver_rows[param].notna()]
    groups = _sweep_groups(ok, spec)
    if not groups:
        result.skipped = f"no LUSER/DEQ configuration was run at two or more values of {param}"
        return result
    tasks = ordered_tasks([g["task"].iloc[0] for _, g in groups])
    fig, axes = _new_figure(len(_SWEEP_ROWS), len(tasks), height=2.6, sharex="col", legend_w=3.4)
    configs: list[str] = []
    any_unconverged = False
    for j, task in enumerate(tasks):
        axes[0, j].set_title(task, fontsize=10)
        task_groups = [(label, g) for label, g in groups if g["task"].iloc[0] == task]
        styles = ["-", "--", "-.", ":"]
        for n, (label, g) in enumerate(task_groups):
            config = g["config"].iloc[0]
            configs.append(config)
            for i, (col, _) in enumerate(_SWEEP_ROWS):
                pts = g[g[col].notna()]
                if pts.empty:
                    continue
                axes[i, j].plot(
                    pts[param],
                    pts[col],
                    color=style.color(config),
                    marker=style.marker(config),
                    ls=styles[n % len(styles)],
                    lw=1.5,
                    markersize=5,
                    label=label,
                )
                bad = pts[pts["converged_frac"].fillna(1.0) < 1.0]
                if not bad.empty:
                    any_unconverged = True
                    axes[i, j].scatter(
                        bad[param], bad[col], s=110, facecolor="none", edgecolor="red", lw=1.3, zorder=4
                    )
        if param == "max_iter":
            budget = sorted(ok[ok["task"] == task][param].unique())
            axes[2, j].plot(budget, budget, color="0.6", ls=":", lw=1, label="_nolegend_")
            axes[2, j].annotate(
                "iterations = max_iter",
                (budget[-1], budget[-1]),
                xytext=(-4, -2),
                textcoords="offset points",
                fontsize=7,
                color="0.45",
                ha="right",
                va="top",
            )
        task_failed = solver_rows[(solver_rows["task"] == task) & (solver_rows["status"] != "ok")]
        for i, (_, ylabel) in enumerate(_SWEEP_ROWS):
            ax = axes[i, j]
            if spec.log_x:
                ax.set_xscale("log", base=10 if param == "tol" else 2)
            if spec.invert_x and not ax.xaxis_inverted():
                ax.invert_xaxis()
            if i == 1:
                ax.set_yscale("log")
                _plain_log(ax.yaxis)
            if j == 0:
                ax.set_ylabel(ylabel)
        if not task_failed.empty:
            _headroom(axes[0, j], 0.3)
        marks, _ = _mark_failed(axes[0, j], task_failed, style, param)
        result.failed += marks
        axes[-1, j].set_xlabel(spec.xlabel)
        if param == "max_iter":
            ticks = sorted(ok[ok["task"] == task][param].unique())
            axes[-1, j].set_xticks(ticks, [f"{t:g}" for t in ticks])
    handles = []
    seen: set[str] = set()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in seen and not lab.startswith("_"):
                seen.add(lab)
                handles.append(h)
    if any_unconverged:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                markerfacecolor="none",
                markeredgecolor="red",
                ls="none",
                markersize=9,
                label="not all solves converged",
            )
        )
    if result.failed:
        handles.append(_FAILED_HANDLE)
    _finish(fig, spec.title, handles, legend_title="configuration, K, other setting, solver")
    result.figure = fig
    return result


# --------------------------------------------------------------------------------------------------
# Figure 5: forward and backward solver iterations
def plot_solver_iterations(df: pd.DataFrame, style: Style | None = None) -> FigureResult:
    """Figure 5: mean forward and backward fixed-point iterations per solve, per configuration and task."""
    style = style or make_style(df)
    result = FigureResult(
        "solver_iterations",
        "Mean number of fixed-point iterations per solve in the forward pass and in the backward "
        "(implicit gradient) pass, median over runs at each configuration's most common solver setting; "
        "whiskers span the smallest to the largest run. JFB has no backward solve.",
    )
    rows = df[df["model"].isin(SOLVER_MODELS) & (df["status"] == "ok") & df["fwd_iters_mean"].notna()]
    rows, settings = main_solver_setting(rows)
    if rows.empty:
        result.skipped = "no LUSER/DEQ runs with solver iteration counts (fwd_iters_mean)"
        return result
    long = rows.melt(
        id_vars=["task", "config"],
        value_vars=["fwd_iters_mean", "bwd_iters_mean"],
        var_name="pass",
        value_name="iterations",
    )
    long["pass"] = long["pass"].map({"fwd_iters_mean": "forward", "bwd_iters_mean": "backward"})
    tasks = ordered_tasks(rows["task"])
    fig, axes = _new_figure(1, len(tasks), width=4.8, height=4.0, sharey=True, legend_w=2.2)
    palette = {"forward": "#4C72B0", "backward": "#DD8452"}
    for j, task in enumerate(tasks):
        ax = axes[0, j]
        here = long[long["task"] == task]
        order = [c for c in style.order if c in set(here["config"])]
        sns.barplot(
            data=here,
            x="config",
            y="iterations",
            hue="pass",
            order=order,
            hue_order=["forward", "backward"],
            estimator="median",
            errorbar=("pi", 100),
            palette=palette,
            ax=ax,
            legend=False,
            capsize=0.15,
            err_kws={"linewidth": 1},
        )
        for k, config in enumerate(order):
            if here[(here["config"] == config) & (here["pass"] == "backward")]["iterations"].isna().all():
                ax.text(
                    k + 0.2,
                    0.5,
                    "no backward\nsolve",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color="0.35",
                )
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel("iterations per solve (mean)" if j == 0 else "")
        ax.tick_params(axis="x", rotation=35, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    handles = [
        Patch(color=palette["forward"], label="forward solve"),
        Patch(color=palette["backward"], label="backward solve"),
    ]
    notes = [
        "Solver setting per configuration: " + "; ".join(f"{c}: {s}" for c, s in sorted(settings.items()))
    ]
    _finish(
        fig, "Fixed-point solver iterations per solve (LUSER and DEQ)", handles, notes, legend_title="pass"
    )
    result.figure = fig
    return result


# --------------------------------------------------------------------------------------------------
# Figure 6: the 8x comparison (bench.analysis.compare)
def plot_headline(
    df: pd.DataFrame, style: Style | None = None, psnr_tol_db: float = PSNR_TOL_DB
) -> FigureResult:
    """Figure 6: how many times less training memory than plain LU, at matched PSNR, per task."""
    style = style or make_style(df)
    comparisons = [c for c in compare_memory(df, psnr_tol_db) if c.lu is not None]
    result = FigureResult(
        "headline_ratio",
        "Memory of the best plain LU divided by the memory of each alternative (log scale; higher means "
        f"less memory). LUSER is the least-memory LUSER within {psnr_tol_db:g} dB PSNR of that LU at the "
        f"same K, batch and image size; the dashed line is the claimed {CLAIMED_RATIO:g}x.",
    )
    if not comparisons:
        result.skipped = "no task has both LU and LUSER runs with a tracked peak"
        return result
    equal_k = all(c.basis == BASIS_EQUAL_K for c in comparisons)
    fig, axes = _new_figure(1, len(comparisons), width=4.3, height=4.4, sharey=True, legend_w=1.6)
    roles = (("plain LU", "lu"), ("checkpointed LU", "lu_ckpt"), ("LUSER", "luser"), ("full DEQ", "deq"))
    top, any_short = 1.0, False
    for j, comp in enumerate(comparisons):
        ax = axes[0, j]
        bars = [(role, getattr(comp, attr)) for role, attr in roles if getattr(comp, attr) is not None]
        lu = comp.lu
        if lu is None:  # filtered out above
            continue
        lu_mem, lu_psnr = peak_bytes(lu), lu["psnr_db"]
        for x, (role, row) in enumerate(bars):
            ratio = lu_mem / peak_bytes(row)  # type: ignore[operator]
            top = max(top, ratio)
            short = pd.notna(lu_psnr) and pd.notna(row["psnr_db"]) and row["psnr_db"] < lu_psnr - psnr_tol_db
            any_short |= bool(short)
            ax.bar(
                x,
                ratio,
                color=style.color(row["config"]),
                width=0.65,
                edgecolor="0.2",
                lw=0.6,
                hatch="///" if short else None,
            )
            mib = row["tracked_peak_mib"]
            text = f"{ratio:.1f}x\n{mib:,.0f} MiB" if mib >= 100 else f"{ratio:.1f}x\n{mib:.3g} MiB"
            if pd.notna(row["psnr_db"]):
                text += f"\n{row['psnr_db']:.2f} dB"
                if role != "plain LU" and pd.notna(lu_psnr):
                    text += f" ({row['psnr_db'] - lu_psnr:+.2f})"
            ax.annotate(
                text,
                (x, ratio),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7.5,
            )
        ax.set_xticks(range(len(bars)), [f"{role}\n{row['config']}" for role, row in bars], fontsize=7.5)
        ax.axhline(CLAIMED_RATIO, color="firebrick", ls="--", lw=1.2)
        ax.axhline(1.0, color="0.2", lw=0.8)
        k_text = f"K={int_text(lu['n_iters'])}, {lu['setting']}"
        ax.set_title(f"{comp.name}: {comp.verdict.upper()}\n{comp.basis}; {k_text}", fontsize=9.5)
        if j == 0:
            ax.set_ylabel("memory of plain LU / memory of the method\n(log scale; higher = less memory)")
        ax.set_yscale("log")
        ax.annotate(
            f"claimed {CLAIMED_RATIO:g}x",
            (0.02, CLAIMED_RATIO),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            ha="left",
            fontsize=7.5,
            color="firebrick",
        )
    y_top = max(top * 4, CLAIMED_RATIO * 2)  # the claimed-ratio line is always in view
    axes[0, 0].set_ylim(0.5, y_top)
    ticks = [t for t in (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= y_top]
    axes[0, 0].set_yticks(ticks, [f"{t:g}x" for t in ticks])
    axes[0, 0].yaxis.set_minor_formatter(NullFormatter())
    if equal_k:
        title = "Training-memory saving over plain LU at equal K (no PSNR measured: quality NOT matched)"
    else:
        title = (
            "Training-memory saving over plain LU at matched PSNR "
            f"(LUSER within {psnr_tol_db:g} dB of the best LU)"
        )
    notes = [f"{c.name}: {c.note}" for c in comparisons if c.note]
    notes.append(
        "Above each bar: saving over plain LU, tracked peak memory of one training step, test PSNR "
        "(difference "
        "to plain LU). Plain LU: the LU run with the highest PSNR. Checkpointed LU: same K, depth, batch and "
        "image size. Full DEQ (no K): same batch and image size, least memory within the PSNR tolerance, "
        "else "
        "its best PSNR."
    )
    handles = []
    if any_short:
        handles.append(
            Patch(
                facecolor="white",
                edgecolor="0.2",
                hatch="///",
                label=f"PSNR more than\n{psnr_tol_db:g} dB below plain LU",
            )
        )
    _finish(fig, title, handles, notes)
    result.figure = fig
    return result


# --------------------------------------------------------------------------------------------------
# All figures, saving, CLI
FIGURE_NAMES: tuple[str, ...] = (
    "headline_ratio", "memory_vs_k", "step_time_vs_k", "psnr_vs_memory", "deq_tolerance", "deq_max_iter",
    "solver_iterations",
)  # fmt: skip


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``out_dir/name.png`` and ``.svg`` (no date in the SVG) and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out_dir / f"{name}.{fmt}"
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(path, format=fmt, dpi=PNG_DPI, metadata=metadata)
        fig.set_layout_engine("none")  # keep the layout computed by the first save: later saves are faster
        paths.append(path)
    return paths


def make_figures(
    df: pd.DataFrame, out_dir: str | Path, psnr_tol_db: float = PSNR_TOL_DB
) -> list[FigureResult]:
    """Draw and save every figure of :data:`FIGURE_NAMES`; skipped figures are logged, never raised."""
    if df.empty:
        raise ValueError("no runs to plot: the run table is empty")
    style = make_style(df)
    builders: dict[str, Callable[[], FigureResult]] = {
        "headline_ratio": lambda: plot_headline(df, style, psnr_tol_db),
        "memory_vs_k": lambda: plot_memory_vs_k(df, style),
        "step_time_vs_k": lambda: plot_step_time_vs_k(df, style),
        "psnr_vs_memory": lambda: plot_psnr_vs_memory(df, style),
        "deq_tolerance": lambda: plot_solver_sweep(df, "tol", style),
        "deq_max_iter": lambda: plot_solver_sweep(df, "max_iter", style),
        "solver_iterations": lambda: plot_solver_iterations(df, style),
    }
    results = []
    with rc_context(_RC):  # type: ignore[arg-type]
        for name in FIGURE_NAMES:
            result = builders[name]()
            if result.figure is None:
                log.info("figure %s skipped: %s", name, result.skipped)
                for fmt in FIGURE_FORMATS:  # a stale file from an earlier table would contradict the report
                    (Path(out_dir) / f"{name}.{fmt}").unlink(missing_ok=True)
            else:
                result.paths = save_figure(result.figure, Path(out_dir), name)
            results.append(result)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m bench plot``."""
    parser.add_argument("dir", type=Path, help="sweep directory holding runs.csv; figures go to DIR/figures/")
    add_psnr_tol_argument(parser)


def main(args: argparse.Namespace) -> int:
    """``python -m bench plot DIR``: write the figures; exit 2 with a message on a bad run table."""
    try:
        df = load_runs(args.dir)
        results = make_figures(df, output_dir(args.dir) / "figures", args.psnr_tol_db)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(
            f"{r.name}: "
            + (", ".join(str(p) for p in r.paths) if r.figure is not None else f"skipped ({r.skipped})")
        )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _parser = argparse.ArgumentParser(
        prog="python -m bench.analysis.plots", description="Figures of a luser-bench sweep."
    )
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
