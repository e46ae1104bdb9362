"""What every figure shares: the registry entry, the look (colours, markers), selections and helpers.

A figure is a :class:`FigureEntry`: a name (the file stem), a title (the report's section heading), a
caption (written under the figure in the report) and a builder, a function of the run table
(:func:`bench.analysis.runtable.load_runs`) and a :class:`FigureContext` that returns the drawn
matplotlib ``Figure``, or a string saying why the figure is not drawn. Builders use the object API of
matplotlib on an Agg canvas (no pyplot state); :mod:`bench.analysis.figures` calls them inside
:data:`RC`, so that colours and fonts do not depend on the caller's matplotlib settings.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.analysis.compare import CLAIMED_RATIO
from bench.analysis.runtable import setting_label
from bench.schema import BACKWARD_ORDER, MODEL_ORDER, SOLVER_MODELS

# --------------------------------------------------------------------------------------------------
# Markers (the display orders of models and backward modes come from bench.schema)
MARKERS: dict[str, str] = {"lu": "o", "lu_ckpt": "s", "luser": "^", "deq": "D", "classical": "*"}

# seaborn's look, applied through rc_context only (no global state is changed on import)
RC: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "svg.hashsalt": "luser-bench",  # stable SVG ids
    "svg.fonttype": "none",
    "legend.frameon": False,
}


# --------------------------------------------------------------------------------------------------
# Colours per configuration
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


# --------------------------------------------------------------------------------------------------
# The registry entry
@dataclass(frozen=True)
class FigureContext:
    """What a builder gets besides the run table: the shared style and the PSNR matching tolerance."""

    style: Style
    psnr_tol_db: float


Builder = Callable[[pd.DataFrame, FigureContext], Figure | str]


@dataclass(frozen=True)
class FigureEntry:
    """One figure: file stem, report heading, caption and builder (see the module docstring).

    ``caption`` may name ``{psnr_tol_db}`` and ``{claimed_ratio}`` (``str.format`` fields), filled in by
    :meth:`caption_text`.
    """

    name: str
    title: str
    caption: str
    builder: Builder

    def caption_text(self, ctx: FigureContext) -> str:
        return self.caption.format(psnr_tol_db=ctx.psnr_tol_db, claimed_ratio=CLAIMED_RATIO)


# --------------------------------------------------------------------------------------------------
# Selections of the run table
def settings_of(df: pd.DataFrame) -> list[tuple[float, float, int]]:
    """The (batch size, image size, problem rank) triples of the rows, sorted (missing values as 0).

    The problem rank (``runtable``'s ``problem_rank``: 0 for a task's most-run problem setting) gives
    each problem of a task (operator settings, noise, data, precision) a panel row of its own, so runs
    of different problems never share a panel."""
    cols = df[["batch_size", "image_size"]].fillna(0).assign(rank=_problem_rank(df)).drop_duplicates()
    return sorted((float(b), float(n), int(r)) for b, n, r in cols.itertuples(index=False))


def _problem_rank(df: pd.DataFrame) -> pd.Series:
    return df["problem_rank"] if "problem_rank" in df.columns else pd.Series(0, index=df.index)


def in_setting(df: pd.DataFrame, setting: tuple[float, float, int]) -> pd.DataFrame:
    """The rows at one (batch size, image size, problem rank) of :func:`settings_of`."""
    b, n, rank = setting
    same_size = (df["batch_size"].fillna(0) == b) & (df["image_size"].fillna(0) == n)
    return df[same_size & (_problem_rank(df) == rank)]


def panel_title(df: pd.DataFrame, task: str, setting: tuple[float, float, int]) -> str:
    """``"ct  ·  B=2, 32×32, n_angles=30"``: the task, the sizes and the task's problem label there."""
    here = in_setting(df[df["task"] == task], setting)
    problem = str(here["problem"].iloc[0]) if "problem" in here.columns and len(here) else ""
    return f"{task}  ·  {setting_label(setting[0], setting[1], problem)}"


def num_text(value: object) -> str:
    """``0.001 -> "0.001"``, ``40.0 -> "40"``; missing -> ``""``."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):g}"  # type: ignore[arg-type]


def _solver_key(df: pd.DataFrame) -> pd.Series:
    return df["solver"] + "|" + df["tol"].map(num_text) + "|" + df["max_iter"].map(num_text)


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


# --------------------------------------------------------------------------------------------------
# Figure frame, legend, notes and axes
def new_figure(
    n_rows: int,
    n_cols: int,
    *,
    width: float = 4.4,
    height: float = 3.4,
    legend_w: float = 2.6,
    sharey: Any = False,
    sharex: Any = False,
) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure on an Agg canvas with an ``(n_rows, n_cols)`` array of axes."""
    fig = Figure(figsize=(width * n_cols + legend_w, height * n_rows + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=sharey, sharex=sharex)
    return fig, axes


def finish(
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


def plain_log(axis: Any, unit: str = "") -> None:
    """Log-scale ticks at 1, 2, 5 x 10^n written as plain numbers (``2,000``), not ``2 x 10^3``."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.{0 if v >= 1 else 2}f}{unit}"))
    axis.set_minor_formatter(NullFormatter())


def headroom(ax: Axes, fraction: float = 0.25) -> None:
    """Room above the data for failure marks at the top edge (works on log and linear axes)."""
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, hi * (hi / lo) ** fraction)
    else:
        ax.set_ylim(lo, hi + (hi - lo) * fraction)


def config_handles(style: Style, configs: Sequence[str]) -> list[Any]:
    """Legend entries (colour and marker) of the configurations present, in style order."""
    present = set(configs)
    return [
        Line2D([], [], color=style.color(c), marker=style.marker(c), label=c, lw=1.6, markersize=6)
        for c in style.order
        if c in present
    ]


def labelled_handles(axes: np.ndarray) -> list[Any]:
    """The first handle of every label drawn on the axes (labels starting with ``_`` left out)."""
    handles = []
    seen: set[str] = set()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in seen and not lab.startswith("_"):
                seen.add(lab)
                handles.append(h)
    return handles


def corner_note(ax: Axes, text: str, *, y: float, color: str) -> None:
    """A small note in the lower right corner of an axis."""
    ax.text(0.98, y, text, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color=color)


def empty_axis(ax: Axes, text: str) -> None:
    """An axis without data: the reason in its middle, no ticks."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=9, wrap=True
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# --------------------------------------------------------------------------------------------------
# Failed runs: never dropped, drawn as an x with their status
FAILED_MARKER = "x"
FAILED_HANDLE = Line2D(
    [],
    [],
    marker=FAILED_MARKER,
    color="0.2",
    ls="none",
    mew=2,
    markersize=8,
    label="failed run (status written beside)",
)


def mark_failed(
    ax: Axes, failed: pd.DataFrame, style: Style, x_col: str, *, at_top: bool = True
) -> list[str]:
    """An ``x`` per failed run at its x position (top or bottom edge of the axes), status written beside.

    Failures without an x value (e.g. a DEQ has no K) come back as note lines for the figure.
    """
    unplaced: list[str] = []
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    stack: dict[float, int] = {}
    for row in failed.sort_values(["config", "run_id"]).to_dict("records"):
        x = row[x_col]
        if pd.isna(x):
            unplaced.append(f"{row['config']}: {row['status']}")
            continue
        level = stack.get(float(x), 0)
        stack[float(x)] = level + 1
        y = 0.95 - 0.08 * level if at_top else 0.05 + 0.08 * level
        color = style.color(row["config"])
        ax.plot(
            [x], [y], transform=trans, marker=FAILED_MARKER, markersize=9, mew=2.2, color=color, ls="none",
            zorder=5, clip_on=False,
        )  # fmt: skip
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
    return unplaced
