"""Regression gate: compare a run of a suite against committed reference rows of the same machine.

Regressions (each printed with its numbers):
- a run that was `ok` in the reference is not `ok` now, or is missing;
- KV bytes changed by more than `kv_tol` in either direction (bytes are exact: the tolerance only
  absorbs nothing-but-rounding; default 0.1 %);
- perplexity moved beyond noise in EITHER direction: the paired t-interval over documents of
  ppl_new / ppl_ref - 1 lies wholly above +`ppl_tol` or wholly below -`ppl_tol` (default 0.5 %).
  Worse is a regression; better is one too, since a cache that leaks future tokens scores better
  than it should, and a compressed cache that improves perplexity is a bug until explained.
- any single document's perplexity moves by more than `doc_tol` (default 1 %) either way: on the
  same CPU model and code a rerun is deterministic, so a per-document change is a change of
  behaviour even when the changes of several documents cancel out in the mean;
- the documents differ from the reference's (their hashes): the comparison would not be paired.
CPU runs are deterministic for the same code, documents and CPU model, so identical reruns give
exactly 0. Across CPU models they are not: the baseline agrees to ~1e-5, but a lossy cache rounds
some values the other way and its perplexity moves by up to ~1 % per document (kv_adaptive's
data-dependent bit choice moves its bytes by ~4 %). So each row is compared with the reference row
of its own CPU model when the reference holds one (all rules), otherwise with another CPU model's
row under the rules that survive the change of machine: the interval rule, and bytes within
`cross_kv_tol` (default 10 %); the per-document rule is skipped, and the gate says so.
The reference must come from the same machine class (the GPU model, or any CPU; torch and
transformers versions); another machine's reference is one clear error naming both. Speed is not
gated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import StoreError
from ..evaluate.stats import CI_METHOD, paired_change
from ..run.store import ResultStore
from .quality import KEY, latest_ok, machine_class, with_machine

MATCH = KEY + ["optim"]
MACHINE = ("device", "torch_version", "transformers_version")
CROSS_KV_TOL = 0.1  # bytes tolerance against another CPU model's row (kv_adaptive moved 3.7 %)


@dataclass
class GateResult:
    checked: int
    regressions: list[str]
    cross_device: list[str] = field(default_factory=list)  # runs compared with another CPU model's row

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


def _machines(df: pd.DataFrame) -> set[tuple]:
    rows = df[list(MACHINE)].dropna().drop_duplicates().itertuples(index=False)
    return {(machine_class(d), str(t), str(tf)) for d, t, tf in rows}


def check_same_machine(current: pd.DataFrame, reference: pd.DataFrame) -> None:
    cur, ref = _machines(current), _machines(reference)
    if cur and not cur <= ref:
        show = lambda ms: "; ".join(f"{d} (torch {t}, transformers {tf})" for d, t, tf in sorted(ms))  # noqa: E731
        raise StoreError(f"the reference was measured on another machine: reference {show(ref)}; this run {show(cur)}. "
                         "Make a reference on this machine (python -m ollm_bench sweep suite=ci results_dir=DIR) and "
                         "pass its folder as reference=")


def compare(current: pd.DataFrame, reference: pd.DataFrame, kv_tol: float = 0.001, ppl_tol: float = 0.005,
            doc_tol: float = 0.01, cross_kv_tol: float = CROSS_KV_TOL) -> GateResult:
    for col in ("suite", "model"):
        ref_vals, cur_vals = set(reference[col].dropna()), set(current[col].dropna())
        if not cur_vals <= ref_vals:
            raise StoreError(
                f"reference is from another {col} ({sorted(ref_vals)}) than this run ({sorted(cur_vals)})"
            )
    check_same_machine(current, reference)
    ref_ok = latest_ok(reference, by=MATCH + ["device"])
    cur_latest = with_machine(current).sort_values("started_at").drop_duplicates(subset=MATCH, keep="last") \
        .set_index(MATCH)
    regressions, checked, cross = [], 0, []
    for key, refs in ref_ok.groupby(MATCH, sort=False):
        label = f"{key[0]}/{key[6]}/{key[2]}/{key[3]}"  # model/optim/content/seq_len
        if key not in cur_latest.index:
            regressions.append(f"{label}: missing from this run (ok in the reference)")
            continue
        cur = cur_latest.loc[key]
        same = refs[refs.device == cur.device]
        ref = (same if len(same) else refs).iloc[-1]
        strict = bool(len(same))  # per-document determinism holds on one CPU model only
        if not strict:
            cross.append(f"{label}: {cur.device} vs {ref.device}")
        checked += 1
        if cur.status != "ok":
            regressions.append(f"{label}: status {cur.status} ({cur.error}), was ok")
            continue
        if abs(cur.kv_bytes / ref.kv_bytes - 1) > (kv_tol if strict else max(kv_tol, cross_kv_tol)):
            regressions.append(f"{label}: KV bytes {int(cur.kv_bytes)} vs reference {int(ref.kv_bytes)} "
                               f"({100 * (cur.kv_bytes / ref.kv_bytes - 1):+.2f}%)")
        if ref.doc_nll and cur.doc_nll:
            if cur.doc_hashes != ref.doc_hashes or ref.scored_tokens != cur.scored_tokens:
                regressions.append(f"{label}: scored other documents than the reference (document hashes differ)")
                continue
            ch = paired_change(cur.doc_nll, ref.doc_nll, [cur.scored_tokens] * len(cur.doc_nll))
            if ch.low > ppl_tol or ch.high < -ppl_tol:
                way = "worse" if ch.low > ppl_tol else "better (a leak? an improvement from a lossy cache is a bug until explained)"
                regressions.append(f"{label}: perplexity {cur.ppl:.4f} vs reference {ref.ppl:.4f}, {way}: "
                                   f"{100 * ch.point:+.2f}%, 95% CI [{100 * ch.low:+.2f}%, {100 * ch.high:+.2f}%] "
                                   f"beyond ±{100 * ppl_tol}% ({CI_METHOD}, n={ch.n})")
            elif strict and (moved := _moved_documents(cur, ref, doc_tol)):
                regressions.append(f"{label}: {len(moved)} document(s) moved beyond ±{100 * doc_tol:g}% "
                                   f"(per-document perplexity change: {', '.join(moved)}), mean {100 * ch.point:+.2f}%")
            elif ch.n < 3 and abs(ch.point) > ppl_tol:
                regressions.append(f"{label}: perplexity {100 * ch.point:+.2f}% vs reference with n={ch.n} documents "
                                   "(too few for an interval; any change beyond tolerance counts)")
    return GateResult(checked, regressions, cross)


def _moved_documents(cur, ref, doc_tol: float) -> list[str]:
    import math

    out = []
    for i, (a, b) in enumerate(zip(cur.doc_nll, ref.doc_nll)):
        change = math.expm1((a - b) / cur.scored_tokens)
        if abs(change) > doc_tol:
            out.append(f"doc {i} {100 * change:+.2f}%")
    return out


def run_gate(current_dir: Path, reference_dir: Path, kv_tol: float, ppl_tol: float) -> GateResult:
    reference = _load(reference_dir / "runs.csv", "reference", require_baseline=True)
    current = _load(current_dir / "runs.csv", "current", require_baseline=False)
    return compare(current, reference, kv_tol, ppl_tol)
