"""Training memory and step time against the number of unrolled iterations K (one curve per configuration).

One panel per task and (batch, image size) setting. Solver models are shown at their most common solver
setting (:func:`~bench.analysis.figures.common.main_solver_setting`); models without K (a full DEQ) are a
dotted horizontal line; repeated configurations are shown by their median.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis.figures.common import (
    FAILED_HANDLE,
    FigureContext,
    FigureEntry,
    Style,
    config_handles,
    corner_note,
    empty_axis,
    finish,
    headroom,
    in_setting,
    main_solver_setting,
    mark_failed,
    new_figure,
    plain_log,
    settings_of,
)
from bench.analysis.runtable import ordered_tasks, setting_label


@dataclass(frozen=True)
class KCurve:
    """What a K figure draws: the value column (and optional dashed allocator column, IQR error bars)."""

    value_col: str
    ylabel: str
    title: str
    cuda_col: str = ""  # drawn dashed where present
    iqr_col: str = ""  # error bars of +- iqr / 2
    cuda_label: str = "CUDA peak"


#: The dashed memory curve: the allocator-level peak (CPU or CUDA) where a table has it; an older table
#: without it shows the CUDA peak, the same meter on CUDA.
ALLOC_CURVES: tuple[tuple[str, str], ...] = (
    ("alloc_peak_mib", "allocator peak"),
    ("cuda_peak_mib", "CUDA peak"),
)

MEMORY = KCurve(
    value_col="tracked_peak_mib",
    cuda_col="cuda_peak_mib",
    ylabel="peak training memory (MiB, log scale)",
    title="Training memory of one step against the number of unrolled iterations K",
)
STEP_TIME = KCurve(
    value_col="step_ms_median",
    iqr_col="step_ms_iqr",
    ylabel="time per training step (ms, median, log scale)",
    title="Time of one training step against the number of unrolled iterations K",
)


def _draw_config(ax: Axes, rows: pd.DataFrame, color: Any, marker: str, curve: KCurve) -> tuple[bool, bool]:
    """One configuration's median curve over K (and its CUDA curve, or its flat line without K).

    Returns (a CUDA curve was drawn, a flat line was drawn).
    """
    has_cuda = has_flat = False
    with_k = rows[rows["n_iters"].notna()].groupby("n_iters")
    medians = with_k[[curve.value_col] + ([curve.cuda_col] if curve.cuda_col else [])].median()
    if not medians.empty:
        yerr = with_k[curve.iqr_col].median().fillna(0).to_numpy() / 2 if curve.iqr_col else None
        ax.errorbar(
            medians.index,
            medians[curve.value_col],
            yerr=yerr,
            color=color,
            marker=marker,
            lw=1.6,
            markersize=5,
            capsize=2,
        )
        if curve.cuda_col and medians[curve.cuda_col].notna().any():
            has_cuda = True
            ax.plot(medians.index, medians[curve.cuda_col], color=color, ls="--", lw=1.1, alpha=0.9)
    flat = rows[rows["n_iters"].isna()][curve.value_col]
    if not flat.empty:
        has_flat = True
        ax.axhline(float(flat.median()), color=color, ls=":", lw=1.8)
    return has_cuda, has_flat


def _panel(
    ax: Axes,
    here: pd.DataFrame,
    fails: pd.DataFrame,
    style: Style,
    curve: KCurve,
    all_k: list[int],
    ylabel: str,
) -> tuple[bool, bool]:
    """One task and setting; returns (a CUDA curve was drawn, a flat line was drawn)."""
    if here.empty and fails.empty:
        empty_axis(ax, "no runs in this setting")
        return False, False
    has_cuda = has_flat = False
    for config in [c for c in style.order if c in set(here["config"])]:
        rows = here[here["config"] == config]
        cuda, flat = _draw_config(ax, rows, style.color(config), style.marker(config), curve)
        has_cuda, has_flat = has_cuda or cuda, has_flat or flat
    if not here.empty:
        ax.set_yscale("log")
        plain_log(ax.yaxis)
    if not fails.empty:
        headroom(ax)
    unplaced = mark_failed(ax, fails, style, "n_iters")
    if unplaced:
        corner_note(ax, "failed, no K:\n" + "\n".join(unplaced), y=0.03, color="firebrick")
    ax.set_xticks(all_k)
    ax.set_xlabel("K (unrolled iterations)")
    if ylabel:
        ax.set_ylabel(ylabel)
    return has_cuda, has_flat


def _notes(solver_settings: dict[str, str]) -> list[str]:
    notes = []
    if solver_settings:
        uniq = sorted(set(solver_settings.values()))
        if len(uniq) == 1:
            notes.append(f"LUSER and DEQ runs shown at their most common solver setting: {uniq[0]}.")
        else:
            notes.append(
                "Solver settings shown: " + "; ".join(f"{c}: {s}" for c, s in sorted(solver_settings.items()))
            )
    notes.append("Repeated configurations (e.g. profile and quality runs) are shown by their median.")
    return notes


def plot_vs_k(runs: pd.DataFrame, ctx: FigureContext, curve: KCurve) -> Figure | str:
    """``curve.value_col`` (log) against K, one panel per task and setting; failed runs marked at their K."""
    if curve.cuda_col:  # memory: the allocator peak when the table has one
        present = [(c, lab) for c, lab in ALLOC_CURVES if c in runs and runs[c].notna().any()]
        if present:
            curve = replace(curve, cuda_col=present[0][0], cuda_label=present[0][1])
    trained = runs[runs["model"] != "classical"]
    ok, solver_settings = main_solver_setting(
        trained[(trained["status"] == "ok") & trained[curve.value_col].notna()]
    )
    failed = trained[trained["status"] != "ok"]
    if ok.empty and failed.empty:
        return f"no trained runs with {curve.value_col}"
    both = pd.concat([ok, failed])
    tasks, settings = ordered_tasks(both["task"]), settings_of(both)
    all_k = sorted({int(k) for k in both["n_iters"].dropna()})
    fig, axes = new_figure(len(settings), len(tasks))
    has_cuda = has_flat = False
    for i, setting in enumerate(settings):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            ax.set_title(f"{task}  ·  {setting_label(*setting)}", fontsize=10)
            here = in_setting(ok[ok["task"] == task], setting)
            fails = in_setting(failed[failed["task"] == task], setting)
            cuda, flat = _panel(ax, here, fails, ctx.style, curve, all_k, curve.ylabel if j == 0 else "")
            has_cuda, has_flat = has_cuda or cuda, has_flat or flat
    handles = config_handles(ctx.style, both["config"])
    if has_cuda:
        handles += [
            Line2D([], [], color="0.3", lw=1.6, label="tracked peak"),
            Line2D([], [], color="0.3", lw=1.1, ls="--", label=curve.cuda_label),
        ]
    if has_flat:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1.8, label="model without K (flat line)"))
    if not failed.empty:
        handles.append(FAILED_HANDLE)
    finish(fig, curve.title, handles, _notes(solver_settings), legend_title="configuration")
    return fig


def memory_vs_k(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Peak training memory (MiB, log) against K: tracked solid, CUDA dashed where measured."""
    return plot_vs_k(runs, ctx, MEMORY)


def step_time_vs_k(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Median step time (ms, log) against K with inter-quartile error bars."""
    return plot_vs_k(runs, ctx, STEP_TIME)


MEMORY_FIGURE = FigureEntry(
    name="memory_vs_k",
    title="Training memory against K",
    caption="Peak memory of one warm training step (forward, loss, backward, optimiser step) against K. "
    "Solid: tracked live tensors (device-independent); dashed: CUDA max_memory_allocated. Dotted "
    "horizontal lines: models without K (full DEQ).",
    builder=memory_vs_k,
)
STEP_TIME_FIGURE = FigureEntry(
    name="step_time_vs_k",
    title="Step time against K",
    caption="Median wall-clock time of a warm training step against K; bars span the inter-quartile "
    "range. Dotted horizontal lines: models without K (full DEQ).",
    builder=step_time_vs_k,
)
