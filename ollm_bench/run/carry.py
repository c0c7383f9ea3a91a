"""Carrying a method to a longer length only where it held at a shorter one.

Quality at 8192 tokens costs 3-6x a 2048-token cell on a CPU. A method that clearly fails the 2 %
gate on a content at 2048 is not carried there: with `runner.only_if_passed_at=2048`, its longer
cell is stored as a `skipped` row whose `error` names the failing cell and its interval, so the table
says why the cell is empty and a later sweep does not retry it (`runner.rerun_failed=true` does).
A pass or an inconclusive verdict at the shorter length, or no comparable rows there, runs the cell:
only measured failure stops it. The baseline always runs.
"""

from __future__ import annotations

import json

from ..config import BenchConfig
from ..evaluate.stats import MARGIN, paired_rows
from .store import ResultStore

BASELINE = "baseline"


def _method(config_json) -> str:
    return json.dumps((config_json or {}).get("optim", {}).get("method", {}), sort_keys=True, default=str)


def failed_at_shorter(store: ResultStore, bench: BenchConfig, method_config: dict) -> str | None:
    """Why this quality cell is not carried (its method fails the gate at the shorter length), or None."""
    shorter = bench.runner.only_if_passed_at
    if shorter is None or bench.scenario_name != "quality" or bench.optim.name == BASELINE or bench.seq_len <= shorter:
        return None
    df = store.read()
    if df.empty:
        return None
    cell = df[(df.status == "ok") & (df.scenario == "quality") & (df.model == bench.model.name)
              & (df.content == bench.content.name) & (df.seq_len == shorter) & (df.seed == bench.seed)
              & (df.batch_size == bench.batch_size)].sort_values("started_at")
    mine = cell[(cell.optim == bench.optim.name)
                & (cell.config_json.map(_method) == json.dumps(method_config, sort_keys=True, default=str))]
    base = cell[cell.optim == BASELINE]
    if mine.empty or base.empty:
        return None
    m, b = mine.iloc[-1], base.iloc[-1]
    ch = paired_rows(m, b)
    if ch is None or ch.gate() != "fail":
        return None
    return (f"not carried to {bench.seq_len}: fails the {MARGIN:.0%} gate at {shorter} on {bench.content.name} "
            f"(Δppl {ch.point:+.2%} [{ch.low:+.2%}, {ch.high:+.2%}], n={ch.n}, run {m.run_id})")
