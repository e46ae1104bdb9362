"""The headline: how many times less training memory than plain LU each alternative needs, per task.

The runs compared are chosen by :func:`bench.analysis.compare.compare_memory` (its module docstring has
the selection rule); one bar per role (plain LU, checkpointed LU, LUSER, full DEQ), its height the
memory of plain LU divided by the memory of that run, on a log axis with the claimed ratio dashed.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from bench.analysis.compare import (
    ALLOC_METER,
    BASIS_EQUAL_K,
    CLAIMED_RATIO,
    Comparison,
    compare_memory,
    peak_bytes,
    tracked_bytes,
)
from bench.analysis.figures.common import FigureContext, FigureEntry, Style, finish, new_figure
from bench.analysis.runtable import int_text

#: (bar label, attribute of :class:`~bench.analysis.compare.Comparison`), left to right.
ROLES: tuple[tuple[str, str], ...] = (
    ("plain LU", "lu"),
    ("checkpointed LU", "lu_ckpt"),
    ("LUSER", "luser"),
    ("full DEQ", "deq"),
)
RATIO_TICKS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)


def _mib_text(n_bytes: float) -> str:
    mib = n_bytes / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.3g}"


def _bar_text(role: str, row: pd.Series, lu_psnr: float, ratio: float) -> str:
    """Above a bar: the saving, the peak it is based on (and the tracked peak beside an allocator
    peak), the PSNR and its difference to plain LU."""
    peak, tracked = peak_bytes(row), tracked_bytes(row)
    text = f"{ratio:.1f}x\n{_mib_text(peak or 0.0)} MiB"
    if tracked is not None and peak != tracked:
        text += f"\n({_mib_text(tracked)} MiB tracked)"
    if pd.notna(row["psnr_db"]):
        text += f"\n{row['psnr_db']:.2f} dB"
        if role != "plain LU" and pd.notna(lu_psnr):
            text += f" ({row['psnr_db'] - lu_psnr:+.2f})"
    return text


def _claim_lines(ax: Axes) -> None:
    """The claimed ratio (dashed, labelled) and the ratio 1."""
    ax.axhline(CLAIMED_RATIO, color="firebrick", ls="--", lw=1.2)
    ax.axhline(1.0, color="0.2", lw=0.8)


def _panel(ax: Axes, comp: Comparison, lu: pd.Series, style: Style, tol_db: float) -> tuple[float, bool]:
    """One task's bars; returns (the largest ratio, whether a bar's PSNR falls short of the tolerance)."""
    bars = [(role, getattr(comp, attr)) for role, attr in ROLES if getattr(comp, attr) is not None]
    lu_mem, lu_psnr = peak_bytes(lu), lu["psnr_db"]
    top, any_short = 1.0, False
    for x, (role, row) in enumerate(bars):
        ratio = lu_mem / peak_bytes(row)  # type: ignore[operator]
        top = max(top, ratio)
        short = pd.notna(lu_psnr) and pd.notna(row["psnr_db"]) and row["psnr_db"] < lu_psnr - tol_db
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
        ax.annotate(
            _bar_text(role, row, lu_psnr, ratio),
            (x, ratio),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7.5,
        )
    ax.set_xticks(range(len(bars)), [f"{role}\n{row['config']}" for role, row in bars], fontsize=7.5)
    _claim_lines(ax)
    ax.set_title(
        f"{comp.task}: {comp.verdict.upper()}\n{comp.basis}; K={int_text(lu['n_iters'])}, {lu['setting']}",
        fontsize=9.5,
    )
    return top, any_short


def _label_claim(ax: Axes) -> None:
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


def _notes(comparisons: list[Comparison]) -> list[str]:
    notes = [f"{c.task}: {c.note}" for c in comparisons if c.note]
    alloc = all(c.memory_meter == ALLOC_METER for c in comparisons)
    meter = (
        "allocator-level peak memory of one training step (kernel scratch included; tracked peak in "
        "brackets)"
        if alloc
        else "tracked peak memory of one training step (no allocator peak in this table)"
    )
    notes.append(
        f"Above each bar: saving over plain LU, {meter}, test PSNR "
        "(difference to plain LU). Plain LU: the LU run with the highest PSNR. Checkpointed LU: same K, "
        "depth, batch and image size. Full DEQ (no K): same batch and image size, least memory within the "
        "PSNR tolerance, else its best PSNR."
    )
    return notes


def headline_ratio(runs: pd.DataFrame, ctx: FigureContext) -> Figure | str:
    """Memory of plain LU over memory of each alternative, one panel per task (shared log y axis)."""
    tol_db = ctx.psnr_tol_db
    comparisons = [c for c in compare_memory(runs, tol_db) if c.lu is not None]
    if not comparisons:
        return "no task has both LU and LUSER runs with a tracked peak"
    fig, axes = new_figure(1, len(comparisons), width=4.3, height=4.4, sharey=True, legend_w=1.6)
    top, any_short = 1.0, False
    for j, comp in enumerate(comparisons):
        ax = axes[0, j]
        if comp.lu is None:  # filtered out above
            continue
        panel_top, short = _panel(ax, comp, comp.lu, ctx.style, tol_db)
        top, any_short = max(top, panel_top), any_short or short
        if j == 0:
            ax.set_ylabel("memory of plain LU / memory of the method\n(log scale; higher = less memory)")
        ax.set_yscale("log")
        _label_claim(ax)
    y_top = max(top * 4, CLAIMED_RATIO * 2)  # the claimed-ratio line is always in view
    axes[0, 0].set_ylim(0.5, y_top)
    ticks = [t for t in RATIO_TICKS if t <= y_top]
    axes[0, 0].set_yticks(ticks, [f"{t:g}x" for t in ticks])
    axes[0, 0].yaxis.set_minor_formatter(NullFormatter())
    if all(c.basis == BASIS_EQUAL_K for c in comparisons):
        title = "Training-memory saving over plain LU at equal K (no PSNR measured: quality NOT matched)"
    else:
        title = (
            "Training-memory saving over plain LU at matched PSNR "
            f"(LUSER within {tol_db:g} dB of the best LU)"
        )
    handles = []
    if any_short:
        label = f"PSNR more than\n{tol_db:g} dB below plain LU"
        handles.append(Patch(facecolor="white", edgecolor="0.2", hatch="///", label=label))
    finish(fig, title, handles, _notes(comparisons))
    return fig


FIGURE = FigureEntry(
    name="headline_ratio",
    title="Memory saving over plain LU at matched PSNR",
    caption="Memory of the best plain LU divided by the memory of each alternative (log scale; higher means "
    "less memory). LUSER is the least-memory LUSER within {psnr_tol_db:g} dB PSNR of that LU at the "
    "same K, batch and image size; the dashed line is the claimed {claimed_ratio:g}x.",
    builder=headline_ratio,
)
