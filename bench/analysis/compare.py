"""The 8x check of a sweep: LU against LUSER training memory at matched PSNR (pandas only, no matplotlib).

The comparison behind the headline figure (:func:`bench.analysis.figures.headline.headline_ratio`)
and :mod:`bench.analysis.report`,
for one task:

* the **best LU** is the plain-LU run with the highest PSNR;
* the **matched LUSER** is the LUSER run with the *least* training memory among those at the same K,
  batch size and image size whose PSNR is at least ``best LU PSNR - psnr_tol_db`` (0.5 dB by default);
* the **ratio** is ``alloc_peak_bytes(LU) / alloc_peak_bytes(LUSER)``: the allocator-level peak, what a
  machine must really hold (kernel scratch included); the same ratio of tracked peaks, the
  device-independent figure, is given beside it (``tracked_ratio``). A table without allocator
  peaks (written before they were measured) falls back to the tracked peak throughout, and says so
  (``memory_meter``). Checkpointed LU and a full DEQ are set against the same LU run.

"Least memory" in the selections below is by the same measure (``memory_bytes``).

Without PSNR (profile-only sweeps) the ratio falls back to equal K: the deepest LU against the
least-memory LUSER at the largest K, batch and image size both were run at; quality is then not matched.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench.analysis.runtable import int_text, ordered_tasks
from bench.schema import MODEL_ORDER

PSNR_TOL_DB = 0.5
CLAIMED_RATIO = 8.0

BASIS_MATCHED = "matched PSNR"
BASIS_UNMATCHED = "PSNR not matched"
BASIS_EQUAL_K = "equal K, no PSNR"
BASIS_NONE = "no comparison"

VERDICT_RULE = (
    "ratio = allocator-level peak training memory (kernel scratch included; the tracked peak for tables "
    "without it) of the best plain LU (highest PSNR) / that of the least-memory "
    "LUSER at the same K, batch size and image size whose PSNR is within {tol:g} dB of that LU (or higher). "
    "**holds**: ratio >= {claim:g} at matched PSNR. **holds partly**: 1 < ratio < {claim:g} at matched PSNR, "
    "or ratio > 1 without PSNR data (equal K, quality not matched). **does not hold**: ratio <= 1, or every "
    "LUSER at that setting is more than {tol:g} dB worse in PSNR than the best LU. **not tested**: no LU and "
    "LUSER runs to compare."
)


def add_psnr_tol_argument(parser: argparse.ArgumentParser) -> None:
    """``--psnr-tol-db``, shared by ``python -m bench plot`` and ``python -m bench report``."""
    parser.add_argument(
        "--psnr-tol-db",
        type=float,
        default=PSNR_TOL_DB,
        help="PSNR tolerance (dB) of the matched-quality comparison (default: %(default)s)",
    )


def verdict(ratio: float | None, psnr_matched: bool | None, claimed: float = CLAIMED_RATIO) -> str:
    """The verdict on the claim "LUSER needs ``claimed`` times less training memory than LU".

    ``psnr_matched``: True (a LUSER within the PSNR tolerance exists), False (LUSER is worse by more
    than the tolerance), None (no PSNR measured: equal-K comparison). See :data:`VERDICT_RULE`.
    """
    if ratio is None or not math.isfinite(ratio):
        return "not tested"
    if psnr_matched is False or ratio <= 1.0:
        return "does not hold"
    if psnr_matched is True and ratio >= claimed:
        return "holds"
    return "holds partly"


ALLOC_METER = "allocator peak"
TRACKED_METER = "tracked peak"


def _bytes(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row.index or pd.isna(row[column]):
        return None
    return float(row[column])


def peak_bytes(row: pd.Series | None) -> float | None:
    """The memory the verdicts use: the run's ``alloc_peak_bytes``, else its ``tracked_peak_bytes``;
    ``None`` without a run or without either."""
    alloc = _bytes(row, "alloc_peak_bytes")
    return alloc if alloc is not None else _bytes(row, "tracked_peak_bytes")


def tracked_bytes(row: pd.Series | None) -> float | None:
    """The run's ``tracked_peak_bytes`` (device-independent); ``None`` without a run or a value."""
    return _bytes(row, "tracked_peak_bytes")


def memory_meter(rows: Sequence[pd.Series | None]) -> str:
    """Which meter `peak_bytes` read for these runs: the allocator peak when every one has it."""
    present = [r for r in rows if r is not None]
    if present and all(_bytes(r, "alloc_peak_bytes") is not None for r in present):
        return ALLOC_METER
    return TRACKED_METER


@dataclass(frozen=True)
class Comparison:
    """The LU / LUSER memory comparison of one task (see the module docstring for the selection rule)."""

    task: str
    basis: str
    psnr_tol_db: float = PSNR_TOL_DB
    lu: pd.Series | None = None
    luser: pd.Series | None = None
    lu_ckpt: pd.Series | None = None
    deq: pd.Series | None = None
    note: str = ""

    def _ratio(self, num: pd.Series | None, den: pd.Series | None, tracked: bool = False) -> float | None:
        read = tracked_bytes if tracked or memory_meter([num, den]) != ALLOC_METER else peak_bytes
        a, b = read(num), read(den)
        return None if a is None or b is None or b <= 0 else a / b

    @property
    def memory_meter(self) -> str:
        """The meter of `ratio`: the allocator peak when LU and LUSER both have it, else the tracked one."""
        return memory_meter([self.lu, self.luser])

    @property
    def ratio(self) -> float | None:
        """Memory of LU / memory of LUSER (allocator peaks; tracked where a run has none)."""
        return self._ratio(self.lu, self.luser)

    @property
    def tracked_ratio(self) -> float | None:
        """The same ratio of tracked peaks (device-independent)."""
        return self._ratio(self.lu, self.luser, tracked=True)

    @property
    def ratio_ckpt(self) -> float | None:
        """Memory of checkpointed LU / memory of LUSER."""
        return self._ratio(self.lu_ckpt, self.luser)

    @property
    def ratio_deq(self) -> float | None:
        """Memory of LU / memory of the full DEQ."""
        return self._ratio(self.lu, self.deq)

    @property
    def psnr_matched(self) -> bool | None:
        return {BASIS_MATCHED: True, BASIS_UNMATCHED: False}.get(self.basis)

    @property
    def verdict(self) -> str:
        return verdict(self.ratio, self.psnr_matched) if self.basis != BASIS_NONE else "not tested"


def _first(rows: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.Series | None:
    if rows.empty:
        return None
    return rows.sort_values(by + ["run_id"], ascending=ascending + [True], na_position="last").iloc[0]


def _same(rows: pd.DataFrame, ref: pd.Series, cols: Sequence[str]) -> pd.DataFrame:
    mask = pd.Series(True, index=rows.index)
    for col in cols:
        mask &= rows[col].isna() if pd.isna(ref[col]) else rows[col] == ref[col]
    return rows[mask]


def _pick_matched(rows: pd.DataFrame, target_db: float, tol_db: float) -> pd.Series | None:
    """The run with the least memory within ``tol_db`` of ``target_db`` (ties: higher PSNR); else the highest
    PSNR; else the least memory."""
    scored = rows[rows["psnr_db"].notna()]
    within = scored[scored["psnr_db"] >= target_db - tol_db]
    if not within.empty:
        return _first(within, ["memory_bytes", "psnr_db"], [True, False])
    if not scored.empty:
        return _first(scored, ["psnr_db", "memory_bytes"], [False, True])
    return _first(rows, ["memory_bytes"], [True])


def _pick_ckpt(rows: pd.DataFrame, lu: pd.Series) -> pd.Series | None:
    same_depth = rows[rows["reg_depth"] == lu["reg_depth"]]
    return _first(
        same_depth if not same_depth.empty else rows, ["psnr_db", "memory_bytes"], [False, True]
    )


def compare_task(df: pd.DataFrame, task: str, psnr_tol_db: float = PSNR_TOL_DB) -> Comparison:
    """The LU / LUSER (and LU-ckpt, DEQ) memory comparison of ``task``; see the module docstring."""
    runs = df[(df["task"] == task) & (df["status"] == "ok") & df["tracked_peak_bytes"].notna()]
    alloc = runs["alloc_peak_bytes"] if "alloc_peak_bytes" in runs else pd.Series(float("nan"), runs.index)
    runs = runs.assign(memory_bytes=alloc.fillna(runs["tracked_peak_bytes"]))
    by_model = {m: runs[runs["model"] == m] for m in MODEL_ORDER}
    setting = ["n_iters", "batch_size", "image_size"]
    lu_q = by_model["lu"][by_model["lu"]["psnr_db"].notna()]
    luser_q = by_model["luser"][by_model["luser"]["psnr_db"].notna()]
    if not lu_q.empty and not luser_q.empty:
        lu = lu_q.sort_values(
            ["psnr_db", "memory_bytes", "run_id"], ascending=[False, True, True]
        ).iloc[0]
        candidates = _same(luser_q, lu, setting)
        if candidates.empty:
            return Comparison(
                task,
                BASIS_NONE,
                psnr_tol_db,
                lu=lu,
                note=f"no LUSER quality run at K={int_text(lu['n_iters'])}, {lu['setting']}",
            )
        luser = _pick_matched(candidates, float(lu["psnr_db"]), psnr_tol_db)
        matched = luser is not None and luser["psnr_db"] >= lu["psnr_db"] - psnr_tol_db
        deq = _pick_matched(_same(by_model["deq"], lu, setting[1:]), float(lu["psnr_db"]), psnr_tol_db)
        return Comparison(
            task,
            BASIS_MATCHED if matched else BASIS_UNMATCHED,
            psnr_tol_db,
            lu=lu,
            luser=luser,
            lu_ckpt=_pick_ckpt(_same(by_model["lu_ckpt"], lu, setting), lu),
            deq=deq,
        )
    # no PSNR for one side: equal K, the largest K / batch / image size both were run at
    combos = set(map(tuple, by_model["lu"][setting].dropna().to_numpy().tolist()))
    combos &= set(map(tuple, by_model["luser"][setting].dropna().to_numpy().tolist()))
    if not combos:
        return Comparison(
            task, BASIS_NONE, psnr_tol_db, note="no LU and LUSER runs at a common K and setting"
        )
    k, b, n = max(combos)
    ref = pd.Series({"n_iters": k, "batch_size": b, "image_size": n})
    lu = _first(_same(by_model["lu"], ref, setting), ["reg_depth", "memory_bytes"], [False, True])
    luser = _first(_same(by_model["luser"], ref, setting), ["memory_bytes"], [True])
    if lu is None or luser is None:  # cannot happen: the combination was taken from both
        return Comparison(
            task, BASIS_NONE, psnr_tol_db, note="no LU and LUSER runs at a common K and setting"
        )
    deq = _first(_same(by_model["deq"], ref, setting[1:]), ["memory_bytes"], [True])
    return Comparison(
        task,
        BASIS_EQUAL_K,
        psnr_tol_db,
        lu=lu,
        luser=luser,
        lu_ckpt=_pick_ckpt(_same(by_model["lu_ckpt"], lu, setting), lu),
        deq=deq,
        note="no PSNR for LU and LUSER: memory at equal K, quality not matched",
    )


def compare_memory(df: pd.DataFrame, psnr_tol_db: float = PSNR_TOL_DB) -> list[Comparison]:
    """:func:`compare_task` for every task that has LU or LUSER runs, in task order."""
    tasks = ordered_tasks(df[df["model"].isin(["lu", "luser"])]["task"])
    return [compare_task(df, task, psnr_tol_db) for task in tasks]


def pareto_front(memory: Sequence[float], psnr: Sequence[float]) -> list[int]:
    """Indices of the points not dominated (no other point has <= memory and > PSNR), by memory."""
    order = sorted(range(len(memory)), key=lambda i: (memory[i], -psnr[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if psnr[i] > best:
            front.append(i)
            best = psnr[i]
    return front
