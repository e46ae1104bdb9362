"""Learning curves: validation PSNR against training step and against training wall time, per task.

Read from ``DIR/curves.csv`` beside the run table (`bench.harness.curves`); one line per run, coloured
by configuration (with ``K=`` in the label when a task has runs at several K). A run that stopped on
a validation plateau ends in a filled circle at its best step, one that used its whole step budget in
an open one. Runs without validation points (fixed-step training without ``val_every``) are left out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.analysis.figures.common import FigureContext, FigureEntry, finish, new_figure
from bench.analysis.runtable import int_text, load_curves, ordered_tasks

#: The x axes of the two panels of a task: curve column -> axis label.
X_AXES: dict[str, str] = {"step": "training step", "elapsed_s": "training wall time (s)"}


def _label(row: pd.Series, several_k: bool) -> str:
    return f"{row['config']} K={int_text(row['n_iters'])}" if several_k else str(row["config"])


def _curves_of(runs: pd.DataFrame) -> pd.DataFrame | str:
    source = runs.attrs.get("source")
    if not source:
        return "the run table has no source folder to find curves.csv in"
    curves = load_curves(Path(source))
    curves = curves[curves["val_psnr_db"].notna()]
    ok = runs[runs["status"] == "ok"]
    curves = curves[curves["run_id"].isin(set(ok["run_id"]))]  # a killed run's partial curve is left out
    if curves.empty:
        return "no learning curves with validation PSNR (runs need val_every > 0) in curves.csv"
    return curves


def learning_curves(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Per task (rows): validation PSNR vs step (left) and vs training wall time (right)."""
    curves = _curves_of(runs)
    if isinstance(curves, str):
        return curves
    meta = runs.set_index("run_id")
    tasks = ordered_tasks(meta.loc[curves["run_id"].unique(), "task"])
    fig, axes = new_figure(len(tasks), len(X_AXES), width=4.6, height=3.2, legend_w=3.0)
    handles: dict[str, Line2D] = {}
    for i, task in enumerate(tasks):
        here = meta[(meta["task"] == task) & meta.index.isin(set(curves["run_id"]))]
        several_k = here["n_iters"].nunique() > 1
        for run_id, run in here.iterrows():
            points = curves[curves["run_id"] == run_id].sort_values("step")
            color = ctx.style.color(str(run["config"]))
            label = _label(run, several_k)
            for ax, x in zip(axes[i], X_AXES, strict=True):
                ax.plot(points[x], points["val_psnr_db"], color=color, lw=1.4)
                best = points[points["step"] == run["best_step"]]
                filled = run["stopped_by"] == "plateau"
                ax.plot(
                    best[x], best["val_psnr_db"], "o", color=color, markersize=5,
                    markerfacecolor=color if filled else "white",
                )  # fmt: skip
            handles.setdefault(label, Line2D([], [], color=color, lw=1.6, label=label))
        for j, xlabel in enumerate(X_AXES.values()):
            axes[i, j].set_xlabel(xlabel)
            axes[i, j].set_ylabel(f"{task}: validation PSNR (dB)" if j == 0 else "")
    legend = list(handles.values()) + [
        Line2D([], [], color="0.3", marker="o", lw=0, label="best step, stopped by plateau"),
        Line2D([], [], color="0.3", marker="o", markerfacecolor="white", lw=0, label="best step, max_steps"),
    ]
    finish(fig, "Learning curves: validation PSNR", legend, legend_title="configuration")
    return fig


FIGURE = FigureEntry(
    name="learning_curves",
    title="Learning curves",
    caption="Validation PSNR (the validation split, disjoint from the test set) against the training step "
    "and against the training wall time (validations included), one line per run. The circle marks the "
    "step whose weights were scored on the test set: filled when training stopped on a validation "
    "plateau, open when it used its whole step budget.",
    builder=learning_curves,
)
