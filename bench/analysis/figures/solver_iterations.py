"""Mean forward and backward fixed-point iterations per solve, per configuration and task (LUSER, DEQ).

Bars are the median over runs at each configuration's most common solver setting; whiskers span the
smallest to the largest run. A configuration without a backward solve (JFB) is labelled as such.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.analysis.figures.common import (
    FigureContext,
    FigureEntry,
    Style,
    finish,
    main_solver_setting,
    new_figure,
)
from bench.analysis.runtable import ordered_tasks
from bench.schema import SOLVER_MODELS

PASS_COLORS: dict[str, str] = {"forward": "#4C72B0", "backward": "#DD8452"}
PASS_OF_COLUMN: dict[str, str] = {"fwd_iters_mean": "forward", "bwd_iters_mean": "backward"}


def _panel(ax: Axes, here: pd.DataFrame, style: Style, task: str, ylabel: str) -> None:
    """One task: a forward and a backward bar per configuration."""
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
        palette=PASS_COLORS,
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
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=35, labelsize=8)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")


def solver_iterations(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Forward and backward iterations per solve, one panel per task (shared y axis)."""
    rows = runs[runs["model"].isin(SOLVER_MODELS) & (runs["status"] == "ok") & runs["fwd_iters_mean"].notna()]
    rows, settings = main_solver_setting(rows)
    if rows.empty:
        return "no LUSER/DEQ runs with solver iteration counts (fwd_iters_mean)"
    long = rows.melt(
        id_vars=["task", "config"],
        value_vars=list(PASS_OF_COLUMN),
        var_name="pass",
        value_name="iterations",
    )
    long["pass"] = long["pass"].map(PASS_OF_COLUMN)
    tasks = ordered_tasks(rows["task"])
    fig, axes = new_figure(1, len(tasks), width=4.8, height=4.0, sharey=True, legend_w=2.2)
    for j, task in enumerate(tasks):
        _panel(
            axes[0, j],
            long[long["task"] == task],
            ctx.style,
            task,
            "iterations per solve (mean)" if j == 0 else "",
        )
    handles = [
        Patch(color=PASS_COLORS["forward"], label="forward solve"),
        Patch(color=PASS_COLORS["backward"], label="backward solve"),
    ]
    notes = [
        "Solver setting per configuration: " + "; ".join(f"{c}: {s}" for c, s in sorted(settings.items()))
    ]
    finish(
        fig, "Fixed-point solver iterations per solve (LUSER and DEQ)", handles, notes, legend_title="pass"
    )
    return fig


FIGURE = FigureEntry(
    name="solver_iterations",
    title="Forward and backward solver iterations",
    caption="Mean number of fixed-point iterations per solve in the forward pass and in the backward "
    "(implicit gradient) pass, median over runs at each configuration's most common solver setting; "
    "whiskers span the smallest to the largest run. JFB has no backward solve.",
    builder=solver_iterations,
)
