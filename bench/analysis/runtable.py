"""The run table of a sweep: reading ``runs.csv`` and naming its runs (pandas only, no torch).

:func:`load_runs` reads ``DIR/runs.csv`` (the run row of ARCHITECTURE.md), keeps the last row per
``run_id`` and adds the reader-facing columns the figures and the report use: ``config``
(:func:`config_label`, e.g. ``"LUSER 2-layer ift"``), ``setting`` (:func:`setting_label`) and ``*_mib``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.harness.curves import CURVES_FILE
from bench.harness.results import read_rows, read_table
from bench.schema import COLUMNS as RUN_COLUMNS
from bench.schema import CURVE_COLUMNS, STRING_COLUMNS, TASK_ORDER
from bench.schema import LATER_COLUMNS as LATER_COLUMNS  # re-exported for readers of the table
from bench.schema import MODEL_ORDER as MODEL_ORDER  # re-exported for the figures

# --------------------------------------------------------------------------------------------------
# The run row (ARCHITECTURE.md, "The run row", names in bench.schema): RUN_COLUMNS in this order;
# extra columns may follow.
NUMERIC_COLUMNS: tuple[str, ...] = tuple(c for c in RUN_COLUMNS if c not in STRING_COLUMNS)
BYTE_COLUMNS: tuple[str, ...] = tuple(c for c in RUN_COLUMNS if c.endswith("_bytes"))


MIB = 2**20


# --------------------------------------------------------------------------------------------------
# Reading
def int_text(value: object) -> str:
    """``17.0 -> "17"``; missing -> ``"?"``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    return "?" if math.isnan(number) else f"{number:g}"


def model_extra(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model_extra`` JSON column as a dict (empty when blank)."""
    extra = str(row.get("model_extra", "") or "").strip()
    return dict(json.loads(extra)) if extra.startswith("{") else {}


def _luser_label(row: Mapping[str, Any]) -> str:
    """``"LUSER 2-layer ift"`` (image cell) or ``"LUSER feature 2-layer ift"``."""
    cell = model_extra(row).get("cell", "image")
    kind = "" if cell == "image" else f"{cell} "
    return f"LUSER {kind}{int_text(row['reg_depth'])}-layer {row['backward'] or '?'}"


def _classical_method(row: Mapping[str, Any]) -> str:
    """The classical method's name: ``method`` in the ``model_extra`` JSON column, else ``solver``."""
    method = model_extra(row).get("method", "")
    method = str(method or row.get("solver", "") or "").strip()
    return method.replace("_", "-")


CONFIG_LABELS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "lu": lambda r: f"LU D={int_text(r['reg_depth'])}",
    "lu_ckpt": lambda r: f"LU-ckpt D={int_text(r['reg_depth'])}",
    "luser": _luser_label,
    "deq": lambda r: f"DEQ D={int_text(r['reg_depth'])}" + (f" {r['backward']}" if r["backward"] else ""),
    "classical": lambda r: f"classical {_classical_method(r)}".strip(),
}


#: Model config switches (keys of ``model_extra``) that change the network, and their names in labels:
#: a run with one of them on is another configuration (``"LU D=17 + GroupNorm"``).
FLAG_LABELS: dict[str, str] = {"norm": "GroupNorm", "spectral_norm": "spectral norm", "tied": "tied"}


def config_label(row: Mapping[str, Any]) -> str:
    """A reader-facing name of a run's model configuration, e.g. ``"LUSER 2-layer ift"``, ``"LU D=17"``,
    ``"LU D=17 + GroupNorm"``.

    The name leaves out K, batch, image size and solver settings, which the figures show separately.
    """
    label = CONFIG_LABELS.get(str(row["model"]))
    name = label(row) if label else f"{row['model']} D={int_text(row['reg_depth'])}"
    extra = model_extra(row)
    return name + "".join(f" + {text}" for key, text in FLAG_LABELS.items() if extra.get(key) is True)


def load_runs(dir_or_csv: str | Path) -> pd.DataFrame:
    """Read a sweep's run table: ``DIR/runs.csv`` (or a CSV path), the last row per ``run_id``.

    Re-runs append a new row with the same ``run_id``; the last one wins. Failed runs are kept.
    Adds ``config`` (see :func:`config_label`), ``setting`` (``"B=8, 128×128"``) and, for every
    ``*_bytes`` column, a ``*_mib`` column (bytes / 2**20). ``attrs["rows_read"]`` is the raw row count.

    The rows are read by `bench.harness.results.read_rows`, the reader the sweep resumes from: a torn
    last line is dropped with a warning and extra trailing columns are kept.
    Raises ``FileNotFoundError`` without a CSV, ``ValueError`` for an empty table, missing columns or
    bytes that are not UTF-8 (naming the file and line).
    """
    path = Path(dir_or_csv)
    csv_path = path / "runs.csv" if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"no run table at {csv_path}: expected DIR/runs.csv or the path of a CSV file"
        )
    if csv_path.stat().st_size == 0:
        raise ValueError(
            f"{csv_path} is empty: expected a header with the run-row columns (ARCHITECTURE.md) and rows"
        )
    raw = pd.DataFrame(read_rows(csv_path))  # the harness's reader: torn last line dropped, extras kept
    if raw.empty:
        raise ValueError(f"{csv_path} has a header but no runs")
    df = raw.drop_duplicates("run_id", keep="last").reset_index(drop=True)
    for col in df.columns:
        if col not in NUMERIC_COLUMNS:
            df[col] = df[col].astype(str).str.strip()
    df["status"] = df["status"].str.lower()
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col].str.strip(), errors="coerce")
    for col in BYTE_COLUMNS:
        df[col.removesuffix("_bytes") + "_mib"] = df[col] / MIB
    records = df.to_dict("records")
    df["config"] = [config_label(r) for r in records]
    df["problem"] = problem_labels(df)
    # Within a task, the rank of its problem label (0 = the one with most runs): figures give each a row.
    df["problem_rank"] = df.groupby("task")["problem"].transform(
        lambda s: s.map({p: i for i, p in enumerate(sorted(set(s), key=lambda p: (-(s == p).sum(), p)))})
    )
    df["setting"] = [
        setting_label(r["batch_size"], r["image_size"], p)
        for r, p in zip(records, df["problem"], strict=True)
    ]
    df.attrs["rows_read"] = len(raw)
    df.attrs["source"] = str(csv_path)
    return df


def load_curves(dir_or_csv: str | Path) -> pd.DataFrame:
    """The learning curves beside a run table (``DIR/curves.csv``), numeric columns as numbers; an
    empty table (with the columns) when the file is absent. Raises ``ValueError`` for a wrong header."""
    path = Path(dir_or_csv)
    folder = path if path.is_dir() else path.parent
    curve_path = folder / CURVES_FILE
    if not curve_path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=float) for c in CURVE_COLUMNS})
    df = pd.DataFrame(read_table(curve_path, CURVE_COLUMNS), columns=list(CURVE_COLUMNS))  # the one reader
    for col in CURVE_COLUMNS[1:]:
        df[col] = pd.to_numeric(df[col].str.strip(), errors="coerce")
    return df


def setting_label(batch_size: object, image_size: object, problem: str = "") -> str:
    """``"B=8, 128×128"``, followed by the problem label when there is one (``"B=8, 32×32, n_angles=30"``)."""
    n = int_text(image_size)
    return f"B={int_text(batch_size)}, {n}×{n}" + (f", {problem}" if problem else "")


def _json_dict(text: object) -> dict[str, Any]:
    text = str(text or "").strip()
    return json.loads(text) if text.startswith("{") else {}


def _value_text(value: object) -> str:
    if isinstance(value, list):
        return f"[{len(value)} values: {float(min(value)):g}..{float(max(value)):g}]" if value else "[]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def problem_labels(df: pd.DataFrame) -> list[str]:
    """Per run, the problem settings that vary among the runs of its task, e.g. ``"n_angles=30"``,
    ``"σ=0.02, bf16"``, ``"data=celeba/test"``; empty where nothing varies.

    Problem settings are the operator's settings (the ``operator_settings`` JSON), the noise level,
    the networks' precision and the data. Runs whose labels differ solve different problems (or
    compute differently) and are never compared as one setting.
    """
    parts: dict[int, list[str]] = {i: [] for i in df.index}
    for _, rows in df.groupby("task", sort=False):
        ops = {i: _json_dict(rows.at[i, "operator_settings"]) for i in rows.index}
        keys = sorted({k for d in ops.values() for k in d})
        for key in keys:
            if len({json.dumps(d.get(key)) for d in ops.values()}) > 1:
                for i, d in ops.items():
                    parts[i].append(f"{key}={_value_text(d[key])}" if key in d else f"{key}=default")
        if rows["noise_sigma"].nunique(dropna=False) > 1:
            for i in rows.index:
                parts[i].append(f"σ={int_text(rows.at[i, 'noise_sigma'])}")
        if rows["data"].nunique() > 1:
            for i in rows.index:
                d = _json_dict(rows.at[i, "data"])
                parts[i].append(f"data={d['name']}/{d['split']}" if d else "data=embedded")
        precision = rows["precision"].replace("", "fp32")
        if precision.nunique() > 1:
            for i in rows.index:
                parts[i].append(str(precision[i]))
    return [", ".join(parts[i]) for i in df.index]


def ordered_tasks(tasks: Sequence[str]) -> list[str]:
    """Known tasks first (deblur, ct, mri), then the rest alphabetically."""
    unique = set(tasks)
    return [t for t in TASK_ORDER if t in unique] + sorted(unique - set(TASK_ORDER))


def output_dir(dir_or_csv: str | Path) -> Path:
    """The sweep directory: ``DIR`` itself, or the folder of a CSV path."""
    path = Path(dir_or_csv)
    return path if path.is_dir() else path.parent
