"""Fixed-point solver tolerance and iteration budget: PSNR, step time and forward iterations (LUSER, DEQ).

A line joins runs equal in everything but the swept setting (``tol`` or ``max_iter``); only
configurations run at two or more values of it are drawn. Open red circles mark runs where not every
fixed-point solve converged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis.figures.common import (
    FAILED_HANDLE,
    FigureContext,
    FigureEntry,
    Style,
    finish,
    headroom,
    labelled_handles,
    mark_failed,
    new_figure,
    num_text,
    plain_log,
)
from bench.analysis.runtable import int_text, ordered_tasks
from bench.schema import SOLVER_MODELS


@dataclass(frozen=True)
class SweptSetting:
    """The solver setting a figure sweeps (``param``), the one held fixed along a line, and the x axis."""

    param: str
    other: str
    xlabel: str
    title: str
    log_x: bool
    invert_x: bool


TOL = SweptSetting(
    param="tol",
    other="max_iter",
    xlabel="forward tolerance (relative residual; tighter →)",
    title="Fixed-point solver tolerance: quality, cost and iterations (LUSER and DEQ)",
    log_x=True,
    invert_x=True,
)
MAX_ITER = SweptSetting(
    param="max_iter",
    other="tol",
    xlabel="max_iter (forward iteration budget)",
    title="Fixed-point iteration budget: quality, cost and iterations (LUSER and DEQ)",
    log_x=True,
    invert_x=False,
)
ROWS: tuple[tuple[str, str], ...] = (
    ("psnr_db", "test PSNR (dB)"),
    ("step_ms_median", "step time (ms, log scale)"),
    ("fwd_iters_mean", "forward iterations\n(mean per solve)"),
)
LINE_STYLES: tuple[str, ...] = ("-", "--", "-.", ":")


def sweep_groups(rows: pd.DataFrame, swept: SweptSetting) -> list[tuple[str, pd.DataFrame]]:
    """Lines of a sweep: runs equal in everything but ``swept.param``, with >= 2 distinct values of it."""
    keys = ["task", "config", "n_iters", "batch_size", "image_size", "solver", swept.other]
    keyed = rows.assign(
        **{f"_{k}": rows[k].map(lambda v: v if isinstance(v, str) else num_text(v)) for k in keys}
    )
    groups = []
    for _, g in keyed.groupby([f"_{k}" for k in keys], sort=True, dropna=False):
        if g[swept.param].nunique() < 2:
            continue
        first = g.iloc[0]
        label = first["config"] + (f", K={int_text(first['n_iters'])}" if pd.notna(first["n_iters"]) else "")
        label += f", {swept.other}={num_text(first[swept.other])}"
        if first["solver"]:
            label += f", {first['solver']}"
        groups.append((label, g.sort_values(swept.param)))
    return groups


def _draw_lines(column: np.ndarray, groups: list[tuple[str, pd.DataFrame]], style: Style, param: str) -> bool:
    """Each group's line in every row of one task's axes column; True when a solve did not converge."""
    any_unconverged = False
    for n, (label, g) in enumerate(groups):
        config = g["config"].iloc[0]
        for ax, (col, _) in zip(column, ROWS, strict=True):
            pts = g[g[col].notna()]
            if pts.empty:
                continue
            ax.plot(
                pts[param],
                pts[col],
                color=style.color(config),
                marker=style.marker(config),
                ls=LINE_STYLES[n % len(LINE_STYLES)],
                lw=1.5,
                markersize=5,
                label=label,
            )
            bad = pts[pts["converged_frac"].fillna(1.0) < 1.0]
            if not bad.empty:
                any_unconverged = True
                ax.scatter(bad[param], bad[col], s=110, facecolor="none", edgecolor="red", lw=1.3, zorder=4)
    return any_unconverged


def _budget_diagonal(ax: Axes, budget: list[float]) -> None:
    """On the iterations row of a budget sweep: the line iterations = max_iter."""
    ax.plot(budget, budget, color="0.6", ls=":", lw=1, label="_nolegend_")
    ax.annotate(
        "iterations = max_iter",
        (budget[-1], budget[-1]),
        xytext=(-4, -2),
        textcoords="offset points",
        fontsize=7,
        color="0.45",
        ha="right",
        va="top",
    )


def _format_column(column: np.ndarray, swept: SweptSetting, first: bool) -> None:
    """x scale and direction of every row; log y for step time; y labels in the first column."""
    for i, (ax, (_, ylabel)) in enumerate(zip(column, ROWS, strict=True)):
        if swept.log_x:
            ax.set_xscale("log", base=10 if swept.param == "tol" else 2)
        if swept.invert_x and not ax.xaxis_inverted():
            ax.invert_xaxis()
        if i == 1:
            ax.set_yscale("log")
            plain_log(ax.yaxis)
        if first:
            ax.set_ylabel(ylabel)


def _unconverged_handle() -> Line2D:
    return Line2D(
        [],
        [],
        marker="o",
        markerfacecolor="none",
        markeredgecolor="red",
        ls="none",
        markersize=9,
        label="not all solves converged",
    )


def plot_solver_sweep(runs: pd.DataFrame, ctx: FigureContext, swept: SweptSetting) -> Figure | str:
    """Rows PSNR, step time and forward iterations against ``swept.param``; one column per task."""
    param, style = swept.param, ctx.style
    solver_rows = runs[runs["model"].isin(SOLVER_MODELS)]
    ok = solver_rows[(solver_rows["status"] == "ok") & solver_rows[param].notna()]
    groups = sweep_groups(ok, swept)
    if not groups:
        return f"no LUSER/DEQ configuration was run at two or more values of {param}"
    tasks = ordered_tasks([g["task"].iloc[0] for _, g in groups])
    fig, axes = new_figure(len(ROWS), len(tasks), height=2.6, sharex="col", legend_w=3.4)
    any_unconverged = any_failed = False
    for j, task in enumerate(tasks):
        axes[0, j].set_title(task, fontsize=10)
        task_groups = [(label, g) for label, g in groups if g["task"].iloc[0] == task]
        any_unconverged = _draw_lines(axes[:, j], task_groups, style, param) or any_unconverged
        values = sorted(ok[ok["task"] == task][param].unique())
        if param == "max_iter":
            _budget_diagonal(axes[2, j], values)
        task_failed = solver_rows[(solver_rows["task"] == task) & (solver_rows["status"] != "ok")]
        _format_column(axes[:, j], swept, first=j == 0)
        if not task_failed.empty:
            headroom(axes[0, j], 0.3)
        mark_failed(axes[0, j], task_failed, style, param)
        any_failed = any_failed or not task_failed.empty
        axes[-1, j].set_xlabel(swept.xlabel)
        if param == "max_iter":
            axes[-1, j].set_xticks(values, [f"{t:g}" for t in values])
    handles = labelled_handles(axes)
    if any_unconverged:
        handles.append(_unconverged_handle())
    if any_failed:
        handles.append(FAILED_HANDLE)
    finish(fig, swept.title, handles, legend_title="configuration, K, other setting, solver")
    return fig


def deq_tolerance(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """The tolerance sweep: lines over ``tol`` at fixed ``max_iter``."""
    return plot_solver_sweep(runs, ctx, TOL)


def deq_max_iter(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """The budget sweep: lines over ``max_iter`` at fixed ``tol``."""
    return plot_solver_sweep(runs, ctx, MAX_ITER)


_CAPTION = (
    "LUSER and DEQ runs that differ only in {param}: test PSNR, step time and mean forward solver "
    "iterations per solve. The tolerance is relative: a solve stops when ||f(z) - z|| / ||f(z)|| <= "
    "tol or after max_iter iterations. Open red circles: not every fixed-point solve converged."
)
TOL_FIGURE = FigureEntry(
    name="deq_tolerance",
    title="Solver tolerance",
    caption=_CAPTION.replace("{param}", "tol"),
    builder=deq_tolerance,
)
MAX_ITER_FIGURE = FigureEntry(
    name="deq_max_iter",
    title="Solver iteration budget",
    caption=_CAPTION.replace("{param}", "max_iter"),
    builder=deq_max_iter,
)
