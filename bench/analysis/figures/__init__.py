"""The figures of a sweep, drawn from its run table only (pandas, seaborn, matplotlib; never torch).

:data:`FIGURES` is the registry: name -> :class:`~bench.analysis.figures.common.FigureEntry` (name,
report title, caption, builder). ``python -m bench plot`` draws every entry
(:func:`make_figures`) and ``python -m bench report`` writes one section per entry, in this order.
Each figure lives in its own module beside its entry; :mod:`~bench.analysis.figures.common` holds the
shared look and helpers. To add a figure: write ``builder(runs, ctx) -> Figure | str`` in a new module
with its ``FigureEntry`` and list that entry in :data:`FIGURES`.

Output is reproducible byte for byte: the look is fixed by :data:`~bench.analysis.figures.common.RC`
(including a fixed SVG hash salt), PNGs carry no software tag and SVGs no date. Failed runs
(``status != ok``) are never dropped: the figures mark them with an ``x`` and their status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from bench.analysis.compare import PSNR_TOL_DB
from bench.analysis.figures import curves, headline, psnr_memory, solver_iterations, solver_sweep, vs_k
from bench.analysis.figures.common import RC, FigureContext, FigureEntry, make_style

log = logging.getLogger(__name__)

FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")
PNG_DPI = 130


def _registry(*entries: FigureEntry) -> dict[str, FigureEntry]:
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"figure names must be unique; got {names}")
    return {e.name: e for e in entries}


#: Every figure, in the order of ``plot``'s output and of the report's sections.
FIGURES: dict[str, FigureEntry] = _registry(
    headline.FIGURE,
    vs_k.MEMORY_FIGURE,
    vs_k.STEP_TIME_FIGURE,
    psnr_memory.FIGURE,
    solver_sweep.TOL_FIGURE,
    solver_sweep.MAX_ITER_FIGURE,
    solver_iterations.FIGURE,
    curves.FIGURE,
)
FIGURE_NAMES: tuple[str, ...] = tuple(FIGURES)


@dataclass
class FigureResult:
    """One registry entry applied to a run table: the figure (``None`` when not drawn) or why not."""

    entry: FigureEntry
    caption: str
    figure: Figure | None = None
    skipped: str = ""
    paths: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def title(self) -> str:
        return self.entry.title


def context(df: pd.DataFrame, psnr_tol_db: float = PSNR_TOL_DB) -> FigureContext:
    """The context every builder of one run table shares (one colour per configuration across figures)."""
    return FigureContext(style=make_style(df), psnr_tol_db=psnr_tol_db)


def draw(name: str, df: pd.DataFrame, psnr_tol_db: float = PSNR_TOL_DB) -> Figure | str:
    """Build one registered figure of ``df`` (not saved): the figure, or the reason it is not drawn."""
    if name not in FIGURES:
        raise KeyError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")
    with rc_context(RC):  # type: ignore[arg-type]
        return FIGURES[name].builder(df, context(df, psnr_tol_db))


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
    """Draw and save every figure of :data:`FIGURES`; figures not drawn are logged, never raised.

    A figure not drawn has its files from an earlier table removed, so that they cannot contradict the
    report.
    """
    if df.empty:
        raise ValueError("no runs to plot: the run table is empty")
    ctx = context(df, psnr_tol_db)
    results = []
    with rc_context(RC):  # type: ignore[arg-type]
        for entry in FIGURES.values():
            drawn = entry.builder(df, ctx)
            result = FigureResult(entry, entry.caption_text(ctx))
            if isinstance(drawn, str):
                result.skipped = drawn
                log.info("figure %s skipped: %s", entry.name, drawn)
                for fmt in FIGURE_FORMATS:
                    (Path(out_dir) / f"{entry.name}.{fmt}").unlink(missing_ok=True)
            else:
                result.figure = drawn
                result.paths = save_figure(drawn, Path(out_dir), entry.name)
            results.append(result)
    return results
