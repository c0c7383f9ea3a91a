"""Regression gate: compare a run of a suite against committed reference rows.

Regressions (each printed with its numbers):
- a run that was `ok` in the reference is not `ok` now, or is missing;
- KV bytes grew by more than `kv_tol` (bytes are exact, so the tolerance only absorbs nothing-but-
  rounding; default 0.1 %);
- perplexity got worse: the paired bootstrap CI over documents of ppl_new / ppl_ref - 1 lies
  entirely above `ppl_tol` (default 0.5 %). CPU runs are deterministic for the same code and
  documents, so identical reruns give exactly 0; the CI keeps real but tiny numeric drift (other
  BLAS, other thread count) from failing the gate while a broken method fails it clearly.
Speed is not gated: CI machines are shared and timing there is noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import StoreError
from .quality import bootstrap_ratio_ci
from .report import KEY, latest_ok
from .store import ResultStore

MATCH = KEY + ["optim"]


@dataclass
class GateResult:
    checked: int
    regressions: list[str]

    @property
    def passed(self) -> bool:
        return not self.regressions


def _load(path: Path, what: str, require_baseline: bool) -> pd.DataFrame:
    if not path.exists():
        raise StoreError(f"{what} results not found at {path}")
    df = ResultStore(path).read()
    if df.empty:
        raise StoreError(f"{what} results at {path} hold no rows")
    if require_baseline and not (df.optim == "baseline").any():
        raise StoreError(f"{what} results at {path} have no baseline rows")
    return df


def compare(current: pd.DataFrame, reference: pd.DataFrame, kv_tol: float = 0.001, ppl_tol: float = 0.005) -> GateResult:
    for field in ("suite", "model"):
        ref_vals, cur_vals = set(reference[field].dropna()), set(current[field].dropna())
        if not cur_vals <= ref_vals:
            raise StoreError(
                f"reference is from another {field} ({sorted(ref_vals)}) than this run ({sorted(cur_vals)})"
            )
    ref_ok = latest_ok(reference).set_index(MATCH)
    cur_latest = current.sort_values("started_at").drop_duplicates(subset=MATCH, keep="last").set_index(MATCH)
    regressions, checked = [], 0
    for key, ref in ref_ok.iterrows():
        label = "/".join(str(k) for k in key)
        if key not in cur_latest.index:
            regressions.append(f"{label}: missing from this run (ok in the reference)")
            continue
        cur = cur_latest.loc[key]
        checked += 1
        if cur.status != "ok":
            regressions.append(f"{label}: status {cur.status} ({cur.error}), was ok")
            continue
        if cur.kv_bytes > ref.kv_bytes * (1 + kv_tol):
            regressions.append(f"{label}: KV bytes {int(cur.kv_bytes)} > reference {int(ref.kv_bytes)} "
                               f"(+{100 * (cur.kv_bytes / ref.kv_bytes - 1):.2f}%)")
        if ref.doc_nll and cur.doc_nll:
            if len(ref.doc_nll) != len(cur.doc_nll) or ref.scored_tokens != cur.scored_tokens:
                regressions.append(f"{label}: scored a different document set than the reference")
                continue
            point, lo, hi = bootstrap_ratio_ci(cur.doc_nll, ref.doc_nll, [cur.scored_tokens] * len(cur.doc_nll))
            if lo > ppl_tol:
                regressions.append(f"{label}: perplexity {cur.ppl:.4f} vs reference {ref.ppl:.4f} "
                                   f"({100 * point:+.2f}%, 95% CI [{100 * lo:+.2f}%, {100 * hi:+.2f}%] > {100 * ppl_tol}%)")
    return GateResult(checked, regressions)


def run_gate(current_dir: Path, reference_dir: Path, kv_tol: float, ppl_tol: float) -> GateResult:
    reference = _load(reference_dir / "runs.csv", "reference", require_baseline=True)
    current = _load(current_dir / "runs.csv", "current", require_baseline=False)
    return compare(current, reference, kv_tol, ppl_tol)
