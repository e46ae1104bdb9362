"""``python -m bench plot DIR``: draw every registered figure of a sweep into ``DIR/figures/``.

Reads ``DIR/runs.csv`` (:func:`bench.analysis.runtable.load_runs`) and writes a PNG and an SVG per figure
of :data:`bench.analysis.figures.FIGURES`; no torch, no model is rerun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.analysis.compare import add_psnr_tol_argument
from bench.analysis.figures import make_figures
from bench.analysis.runtable import load_runs, output_dir


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
