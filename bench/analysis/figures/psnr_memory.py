"""Test PSNR against peak training memory with the Pareto front (:func:`bench.analysis.compare.pareto_front`).

One panel per task and (batch, image size) setting; every trained run is a point labelled with its K.
Classical reconstructions (not trained, no training memory) are horizontal lines, or listed in a corner
when their PSNR lies below the axis.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis.compare import pareto_front
from bench.analysis.figures.common import (
    FAILED_HANDLE,
    FigureContext,
    FigureEntry,
    Style,
    config_handles,
    corner_note,
    empty_axis,
    finish,
    in_setting,
    mark_failed,
    new_figure,
    plain_log,
    settings_of,
)
from bench.analysis.runtable import int_text, ordered_tasks, setting_label


def _draw_points(ax: Axes, here: pd.DataFrame, style: Style) -> None:
    """One scatter per configuration, each point annotated with its K."""
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


def _draw_front(ax: Axes, here: pd.DataFrame) -> tuple[float, float, float]:
    """The Pareto staircase; returns (lowest PSNR, highest PSNR, vertical padding)."""
    mem, psnr = here["tracked_peak_mib"].to_list(), here["psnr_db"].to_list()
    front = pareto_front(mem, psnr)
    fx, fy = [mem[k] for k in front], [psnr[k] for k in front]
    ax.step(fx + [max(mem) * 1.5], fy + [fy[-1]], where="post", color="black", lw=1.1, zorder=2)
    lo, hi = min(psnr), max(psnr)
    return lo, hi, max(0.25, 0.08 * (hi - lo))


def _draw_classical(ax: Axes, classical: pd.DataFrame, style: Style, floor: float) -> None:
    """A dash-dotted line per classical reconstruction at or above ``floor``; the others in a corner."""
    below = []
    for r in classical.sort_values("config").itertuples():
        if r.psnr_db >= floor:
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
        corner_note(ax, "below the axis (no training):\n" + "\n".join(below), y=0.02, color="0.3")


def _panel(
    ax: Axes, here: pd.DataFrame, fails: pd.DataFrame, classical: pd.DataFrame, style: Style, ylabel: bool
) -> list[str]:
    """One task and setting with trained runs; returns the failed runs that have no memory value."""
    _draw_points(ax, here, style)
    lo, hi, pad = _draw_front(ax, here)
    ax.set_ylim(lo - pad * (3 if not fails.empty else 1), hi + pad)
    _draw_classical(ax, classical, style, lo - pad)
    unplaced = mark_failed(ax, fails, style, "tracked_peak_mib", at_top=False)
    ax.set_xscale("log")
    plain_log(ax.xaxis)
    ax.set_xlabel("peak training memory, tracked (MiB, log scale)")
    if ylabel:
        ax.set_ylabel("test PSNR (dB)")
    return unplaced


def psnr_vs_memory(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Test PSNR against tracked peak memory per task and setting; failed quality runs at the bottom."""
    style = ctx.style
    quality = runs[(runs["status"] == "ok") & runs["psnr_db"].notna()]
    trained = quality[(quality["model"] != "classical") & quality["tracked_peak_mib"].notna()]
    if trained.empty:
        return "no quality runs (no psnr_db with a tracked peak): nothing to plot"
    failed = runs[(runs["status"] != "ok") & (runs["model"] != "classical") & (runs["steps"].fillna(0) > 0)]
    tasks, settings = ordered_tasks(trained["task"]), settings_of(trained)
    fig, axes = new_figure(len(settings), len(tasks), height=3.8)
    notes: list[str] = []
    any_failed = False
    for i, setting in enumerate(settings):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            ax.set_title(f"{task}  ·  {setting_label(*setting)}", fontsize=10)
            here = in_setting(trained[trained["task"] == task], setting)
            if here.empty:
                empty_axis(ax, "no quality runs in this setting")
                continue
            fails = in_setting(failed[failed["task"] == task], setting)
            classical = in_setting(
                quality[(quality["task"] == task) & (quality["model"] == "classical")], setting
            )
            unplaced = _panel(ax, here, fails, classical, style, ylabel=j == 0)
            notes += [f"Failed quality run without a memory value: {task} {u}." for u in unplaced]
            any_failed = any_failed or not fails.empty
    handles = config_handles(style, trained["config"])
    handles.append(Line2D([], [], color="black", lw=1.1, label="Pareto front"))
    if any(line.get_linestyle() == "-." for ax in axes.flat for line in ax.get_lines()):
        handles.append(Line2D([], [], color="0.45", ls="-.", lw=1.2, label="classical (no training)"))
    if any_failed:
        handles.append(FAILED_HANDLE)
    finish(
        fig, "Reconstruction quality against training memory", handles, notes, legend_title="configuration"
    )
    return fig


FIGURE = FigureEntry(
    name="psnr_vs_memory",
    title="Quality against memory (Pareto front)",
    caption="Test PSNR against peak training memory (tracked) of every trained run; the black staircase is "
    "the Pareto front (no run has both less memory and a higher PSNR). Numbers beside points: K. "
    "Classical reconstructions (not trained) are grey lines, or listed when their PSNR lies below "
    "the axis.",
    builder=psnr_vs_memory,
)
