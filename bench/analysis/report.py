"""``python -m bench report DIR``: a Markdown report of a sweep, written to ``DIR/report.md``.

The report is built from ``DIR/runs.csv`` only (pandas, no torch). It first regenerates the figures
(:func:`bench.analysis.figures.make_figures`) and links them relatively (``figures/*.png``), one
section per entry of :data:`bench.analysis.figures.FIGURES`, then gives the 8x check per task
(:mod:`bench.analysis.compare`: LU against LUSER at matched PSNR, the same against checkpointed LU and a
full DEQ), the verdict with its rule, the failed runs, the environment and the caveats.

The output is deterministic: the same CSV gives a byte-identical ``report.md`` (tables are sorted, no clock
is read; the only times are the CSV's own timestamps).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench.analysis.compare import (
    BASIS_EQUAL_K,
    CLAIMED_RATIO,
    PSNR_TOL_DB,
    VERDICT_RULE,
    Comparison,
    add_psnr_tol_argument,
    compare_memory,
)
from bench.analysis.figures import FigureResult, make_figures
from bench.analysis.runtable import load_runs, ordered_tasks, output_dir

log = logging.getLogger(__name__)

MISSING = "–"


# --------------------------------------------------------------------------------------------------
# Formatting
def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def fmt(value: object, spec: str = "") -> str:
    """``format(value, spec)``, or an en dash for a missing value."""
    return MISSING if _is_missing(value) else format(value, spec)


def _cell(text: object) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|") or MISSING


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _run_name(row: pd.Series | None) -> str:
    if row is None:
        return MISSING
    k = "" if _is_missing(row["n_iters"]) else f", K={int(row['n_iters'])}"
    return f"{row['config']}{k}"


def _ratio(value: float | None) -> str:
    return MISSING if value is None or not math.isfinite(value) else f"{value:.2f}x"


def _value(row: pd.Series | None, col: str, spec: str) -> str:
    return MISSING if row is None else fmt(row[col], spec)


def _cuda_ratio(a: pd.Series | None, b: pd.Series | None) -> str:
    if a is None or b is None or _is_missing(a["cuda_peak_bytes"]) or _is_missing(b["cuda_peak_bytes"]):
        return MISSING
    return _ratio(float(a["cuda_peak_bytes"]) / float(b["cuda_peak_bytes"]))


# --------------------------------------------------------------------------------------------------
# Sections
def _summary(df: pd.DataFrame) -> str:
    rows_read = int(df.attrs.get("rows_read", len(df)))
    failed = df[df["status"] != "ok"]
    counts = ", ".join(f"{s} {n}" for s, n in sorted(failed["status"].value_counts().items()))
    parts = ", ".join(f"{p or MISSING} {n}" for p, n in sorted(df["part"].value_counts().items()))
    return (
        f"Source: `runs.csv`, {rows_read} rows, {len(df)} runs after keeping the last row per `run_id` "
        f"({rows_read - len(df)} superseded re-run(s)); {len(df) - len(failed)} ok, {len(failed)} failed"
        + (f" ({counts})" if counts else "")
        + f". Runs per part: {parts}. Tasks: {', '.join(ordered_tasks(df['task']))}."
    )


def _verdict_section(comparisons: list[Comparison], tol_db: float) -> str:
    rule = VERDICT_RULE.format(tol=tol_db, claim=CLAIMED_RATIO)
    if not comparisons:
        return f"## Verdict\n\nRule: {rule}\n\nNo task has LU or LUSER runs: the claim is not tested."
    rows = []
    for c in comparisons:
        where = MISSING if c.lu is None else f"K={fmt(c.lu['n_iters'], '.0f')}, {c.lu['setting']}"
        rows.append(
            [
                c.name, f"**{c.verdict}**", c.basis, _ratio(c.ratio), c.memory_meter, _ratio(c.tracked_ratio),
                _run_name(c.lu), _run_name(c.luser), where,
            ]
        )  # fmt: skip
    headers = ["task", "verdict", "basis", "LU / LUSER memory", "meter", "tracked ratio", "LU", "LUSER"]
    table = md_table([*headers, "compared at"], rows)
    notes = [f"- {c.name}: {c.note}." for c in comparisons if c.note]
    fallback = any(c.basis == BASIS_EQUAL_K for c in comparisons)
    text = [
        f"## Verdict: does LUSER need {CLAIMED_RATIO:g}x less training memory than LU at matched quality?",
        "",
        f"Rule: {rule}",
        "",
        table,
    ]
    if notes:
        text += ["", *notes]
    if fallback:
        text += [
            "",
            "Where the basis is *equal K, no PSNR*, no quality was measured: the ratio compares memory "
            "only, at equal K, and cannot confirm the claim.",
        ]
    return "\n".join(text)


PAIR_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("allocator peak (MiB)", "alloc_peak_mib", ",.1f"),
    ("tracked peak (MiB)", "tracked_peak_mib", ",.1f"),
    ("leaked (bytes)", "leaked_bytes", ",.0f"),
    ("PSNR (dB)", "psnr_db", ".2f"),
    ("SSIM", "ssim", ".3f"),
    ("step (ms)", "step_ms_median", ".1f"),
)


def _pair_table(
    rows: list[tuple[str, pd.Series | None, pd.Series | None, str, str, str]], a: str, b: str
) -> str:
    """One row per task: names of the two runs, their ratio (and CUDA ratio), then each measure for both.

    ``rows``: (task, run a, run b, ratio text, basis, verdict); empty basis/verdict columns are left out.
    """
    with_basis = any(r[4] for r in rows)
    headers = ["task"] + (["basis"] if with_basis else []) + [a, b, f"ratio {a}/{b}", "CUDA ratio"]
    headers += [f"{name} {title}" for title, _, _ in PAIR_COLUMNS for name in (a, b)]
    headers += ["verdict"] if with_basis else []
    body = []
    for task, ra, rb, ratio, basis, verdict_text in rows:
        cells = (
            [task]
            + ([basis] if with_basis else [])
            + [_run_name(ra), _run_name(rb), ratio, _cuda_ratio(ra, rb)]
        )
        cells += [_value(row, col, spec) for _, col, spec in PAIR_COLUMNS for row in (ra, rb)]
        body.append(cells + ([verdict_text] if with_basis else []))
    return md_table(headers, body)


def _check_tables(comparisons: list[Comparison]) -> str:
    if not comparisons:
        return (
            f"## The {CLAIMED_RATIO:g}x check per task\n\nNo task has LU or LUSER runs: nothing to compare."
        )
    lu_rows = [(c.name, c.lu, c.luser, _ratio(c.ratio), c.basis, c.verdict) for c in comparisons]
    ckpt_rows = [(c.name, c.lu_ckpt, c.luser, _ratio(c.ratio_ckpt), "", "") for c in comparisons]
    deq_rows = [(c.name, c.lu, c.deq, _ratio(c.ratio_deq), "", "") for c in comparisons]
    used = [
        [c.name, role, f"`{row['run_id']}`", row["setting"], row["part"]]
        for c in comparisons
        for role, row in (("LU", c.lu), ("LUSER", c.luser), ("LU-ckpt", c.lu_ckpt), ("DEQ", c.deq))
        if row is not None
    ]
    iterations = [
        [
            c.name,
            _run_name(c.deq),
            _value(c.deq, "fwd_iters_mean", ".1f"),
            _value(c.deq, "bwd_iters_mean", ".1f"),
        ]
        for c in comparisons
    ]
    return "\n".join(
        [
            f"## The {CLAIMED_RATIO:g}x check per task",
            "",
            "Ratios use the allocator-level peak of one warm training step (what the allocator handed "
            "out above what was live before it, kernel scratch included: CUDA `max_memory_allocated`, on "
            "CPU the profiler's allocator records) where the table has it, else the tracked peak (live "
            "tensors during forward, loss, backward and optimiser step; device-independent), shown beside "
            "it; the CUDA ratio uses `max_memory_allocated` where measured. Leaked bytes are what "
            "consecutive warm steps leave alive after the last one (0 for a step that cleans up). "
            "PSNR and SSIM are on the held-out test set; step time is the median of the "
            "timed steps.",
            "",
            "### Plain LU against LUSER",
            "",
            _pair_table(lu_rows, "LU", "LUSER"),
            "",
            "### Checkpointed LU against the same LUSER",
            "",
            _pair_table(ckpt_rows, "LU-ckpt", "LUSER"),
            "",
            "### Full DEQ against the same plain LU",
            "",
            _pair_table(deq_rows, "LU", "DEQ"),
            "",
            md_table(
                ["task", "DEQ", "forward iterations per solve", "backward iterations per solve"], iterations
            ),
            "",
            "Runs compared:",
            "",
            md_table(["task", "role", "run_id", "setting", "part"], used),
        ]
    )


def _figures_section(figures: Sequence[FigureResult]) -> str:
    text = ["## Figures"]
    for fig in figures:
        text += ["", f"### {fig.title}", ""]
        if fig.figure is None:
            text.append(f"_Not drawn: {fig.skipped}._")
            continue
        text += [
            f"![{fig.title}](figures/{fig.name}.png)",
            "",
            f"{fig.caption} ([SVG](figures/{fig.name}.svg))",
        ]
    return "\n".join(text)


def _training_section(df: pd.DataFrame) -> str:
    """One row per trained run: budget and stop, validation and test PSNR, training time, solver."""
    trained = df[(df["status"] == "ok") & df["steps_run"].notna() & (df["steps_run"] > 0)]
    if trained.empty:
        return "## Training\n\nNo trained runs in this table."
    trained = trained.assign(_t=trained["task"].map({t: i for i, t in enumerate(ordered_tasks(df["task"]))}))
    rows = [
        [r["task"], r["config"], fmt(r["n_iters"], ".0f"), r["setting"],
         f"{fmt(r['steps_run'], '.0f')} / {fmt(r['steps'], '.0f')}", r["stopped_by"] or MISSING,
         fmt(r["best_step"], ".0f"), fmt(r["val_psnr_db"], ".2f"), fmt(r["psnr_db"], ".2f"),
         fmt(r["train_s"], ".1f"), fmt(r["fwd_iters_mean"], ".1f"), fmt(r["final_residual_max"], ".1e"),
         fmt(r["converged_frac"], ".2f")]
        for r in trained.sort_values(["_t", "config", "n_iters"]).to_dict("records")
    ]  # fmt: skip
    headers = ["task", "configuration", "K", "setting", "steps run / budget", "stopped by", "best step",
               "val PSNR (dB)", "test PSNR (dB)", "train (s)", "fwd iters", "max residual",
               "converged"]  # fmt: skip
    return "\n".join([
        "## Training",
        "",
        "Validation PSNR is measured on the validation split (disjoint from the test set) of the weights "
        "that were scored on the test set (the best validation in plateau mode, else the final weights). "
        "Training time includes the validations. Solver iterations, the largest final relative residual "
        "and the fraction of converged solves are those of the test evaluation (after training): a "
        "fraction below 1 means the trained cell did not reach its tolerance within max_iter there.",
        "",
        md_table(headers, rows),
    ])  # fmt: skip


def failed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Failed runs (``status != ok``), sorted by task, status and run_id."""
    failed = df[df["status"] != "ok"].copy()
    failed["_task"] = failed["task"].map({t: i for i, t in enumerate(ordered_tasks(df["task"]))})
    return failed.sort_values(["_task", "status", "run_id"]).drop(columns="_task")


def _failed_section(df: pd.DataFrame) -> str:
    failed = failed_runs(df)
    if failed.empty:
        return "## Failed runs\n\nNone: every run has status `ok`."
    rows = [
        [f"`{r['run_id']}`", r["task"], r["config"], fmt(r["n_iters"], ".0f"), r["setting"], r["part"],
         f"**{r['status']}**", r["error"]]
        for r in failed.to_dict("records")
    ]  # fmt: skip
    return "\n".join([
        "## Failed runs",
        "",
        f"{len(failed)} run(s) did not finish with status `ok`. They are kept in the figures (marked with "
        "an x and their status) and left out of every comparison.",
        "",
        md_table(["run_id", "task", "configuration", "K", "setting", "part", "status", "error"], rows),
    ])  # fmt: skip


def _environment_section(df: pd.DataFrame) -> str:
    env = df.fillna({"device": ""}).groupby(["device", "torch_version", "cuda_version"], dropna=False)
    env_rows = [
        [d or MISSING, t or MISSING, c or MISSING, len(g)] for (d, t, c), g in sorted(env, key=lambda x: x[0])
    ]
    sha_rows = []
    for sha, g in sorted(df.groupby("git_sha", dropna=False), key=lambda x: str(x[0])):
        stamps = sorted(s for s in g["timestamp"] if s)
        span = f"{stamps[0]} to {stamps[-1]}" if stamps else MISSING
        sha_rows.append([f"`{sha}`" if sha else MISSING, len(g), span])
    return "\n".join(
        [
            "## Environment",
            "",
            md_table(["device", "torch", "CUDA", "runs"], env_rows),
            "",
            md_table(["git sha", "runs", "timestamps (first to last)"], sha_rows),
        ]
    )


def _values(series: pd.Series, spec: str = ".0f") -> str:
    vals = sorted({float(v) for v in series.dropna()})
    return ", ".join(format(v, spec) for v in vals) if vals else MISSING


def _data_text(df: pd.DataFrame) -> str:
    """Which images the runs used, from the ``data`` column (``"name/split"``, or the embedded ones)."""
    used = df["data"].map(lambda d: _data_name(d) if d else "the embedded datasets").value_counts()
    return "Images: " + ", ".join(f"{n} run(s) on {name}" for name, n in sorted(used.items())) + "."


def _data_name(text: str) -> str:
    d = json.loads(text)
    return f"{d['name']}/{d['split']}"


def _problems_text(df: pd.DataFrame) -> str:
    labels = sorted({f"{t}: {p}" for t, p in zip(df["task"], df["problem"], strict=True) if p})
    return "; ".join(labels) if labels else "here every task was run at one setting"


def _caveats_section(df: pd.DataFrame, tol_db: float) -> str:
    ok = df[df["status"] == "ok"]
    quality = ok[ok["psnr_db"].notna() & (ok["model"] != "classical")]
    budgets = "; ".join(
        f"{task}: {_values(quality[quality['task'] == task]['steps'])}"
        for task in ordered_tasks(quality["task"])
    )
    devices = ", ".join(sorted({d for d in df["device"] if d})) or MISSING
    items = [
        f"**Data.** {_data_text(df)} The embedded offline datasets of `bench/data/datasets.py` "
        "(natural-image crops from scikit-image samples, random-ellipse phantoms, slices of the MNI "
        "brain template) are far smaller than the paper's. Image sizes here: "
        f"{_values(df['image_size'])}; batch sizes: {_values(df['batch_size'])}.",
        "**Problem settings.** Runs of one task at different operator settings, noise levels, data or "
        "precision solve different problems: they are compared and plotted separately, labelled by "
        f"what differs ({_problems_text(df)}).",
        f"**Training budget.** Trained (quality) runs used these numbers of steps: {budgets or 'none'}. "
        "PSNR after a short budget is not converged quality, and LU and LUSER may converge at different "
        "speeds; the Training section says which runs stopped on a validation plateau and which used "
        "their whole budget. Runs with `steps` = 0 (profile) measure memory and time only.",
        f"**Seeds.** Seeds used: {_values(df['seed'])}. With one seed per configuration there are no "
        f"error bars on PSNR; differences smaller than the {tol_db:g} dB matching tolerance should not be "
        "over-read.",
        f"**Hardware.** Devices: {devices}. Ratios use the allocator-level peak, which includes kernel "
        "scratch and so depends on the device, the kernels and the thread count; the tracked peak beside "
        "it does not depend on the device (the two differ by a per-model constant, not by a slope). Step "
        "times depend on the device and, on shared CPUs, on the load: compare them only within one "
        "device.",
        "**Memory scope.** The tracked peak counts tensors created during the step; parameters, "
        "gradients and optimiser state that exist before it are reported separately in the CSV "
        "(`param_bytes`, `grad_bytes`, `optimizer_bytes`).",
        "**Solver settings.** LUSER and DEQ stop at a relative residual ||f(z) - z|| / ||f(z)|| <= tol "
        "or after max_iter iterations; other libraries define tolerance differently (torchdeq's default "
        "is absolute).",
        "**Failed runs** are left out of the comparisons; a configuration that ran out of memory has no "
        "memory value to compare.",
    ]
    return "## Caveats\n\n" + "\n".join(f"- {item}" for item in items)


def render_report(df: pd.DataFrame, figures: Sequence[FigureResult], psnr_tol_db: float = PSNR_TOL_DB) -> str:
    """The Markdown text of the report (pure: no files are read or written)."""
    comparisons = compare_memory(df, psnr_tol_db)
    sections = [
        "# luser-bench report",
        _summary(df),
        _verdict_section(comparisons, psnr_tol_db),
        _check_tables(comparisons),
        _training_section(df),
        _figures_section(figures),
        _failed_section(df),
        _environment_section(df),
        _caveats_section(df, psnr_tol_db),
    ]
    return "\n\n".join(sections) + "\n"


def write_report(dir_or_csv: str | Path, psnr_tol_db: float = PSNR_TOL_DB) -> Path:
    """Regenerate the figures and write ``report.md`` into the sweep directory; returns its path."""
    df = load_runs(dir_or_csv)
    out = output_dir(dir_or_csv)
    figures = make_figures(df, out / "figures", psnr_tol_db)
    path = out / "report.md"
    path.write_text(render_report(df, figures, psnr_tol_db), encoding="utf-8")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m bench report``."""
    parser.add_argument(
        "dir", type=Path, help="sweep directory holding runs.csv; writes DIR/report.md and figures"
    )
    add_psnr_tol_argument(parser)


def main(args: argparse.Namespace) -> int:
    """``python -m bench report DIR``: exit 0, or 2 with a message on a bad run table."""
    try:
        path = write_report(args.dir, args.psnr_tol_db)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
