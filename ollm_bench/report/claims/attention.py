"""C12, C13: attention mechanisms a quality-guarded router could pick. Quality from suite `attention`
quality cells (the 2 % gate per model x content x length); speed from suite `attention_gpu`,
scenario `attention`: `metric` (kernel_prefill_ms: one attention layer at Llama-3.1-8B dims;
model_prefill_ms: a 2-layer model) per `seq_len`, `attn_full` (flash SDPA) as the reference."""

from __future__ import annotations

import pandas as pd

from .evidence import INCONCLUSIVE, NOT_REPRODUCED, Evidence, all_cells, devices, interval_verdict, no_data, rule
from .kv import gate_lists
from .rows import latest

REFERENCE = "attn_full"
RANGE = "p10-p90 of both sides' timings (worst pairing)"


def _speedups(rows, metric: str, seq_len: int) -> pd.DataFrame:
    """Per (device, mechanism): reference time / mechanism time - 1 with its p10-p90 range."""
    df = rows.rows("attention_gpu", "attention")
    df = latest(df[(df.metric == metric) & (df.seq_len == seq_len)], ["device", "optim"]).copy()
    for q in ("metric_p10", "metric_p90"):
        df[q] = df[q].fillna(df.metric_value)
    ref = df[df.optim == REFERENCE].set_index("device")
    mech = df[(df.optim != REFERENCE) & df.device.isin(ref.index)]
    r = ref.loc[mech.device]
    return pd.DataFrame({"device": mech.device.values, "optim": mech.optim.values,
                         "speedup": r.metric_value.values / mech.metric_value.values - 1,
                         "low": r.metric_p10.values / mech.metric_p90.values - 1,
                         "high": r.metric_p90.values / mech.metric_p10.values - 1})


def _quality(rows) -> pd.DataFrame:
    s = rows.quality("attention")
    if s.empty:
        return s
    return s[s.optim.str.startswith("attn_") & (s.optim != REFERENCE) & ~s.peer.astype(bool)]


def _status(cells: pd.DataFrame) -> str:
    gates = gate_lists(cells)
    return "fail" if gates["fail"] else "undecided" if gates["undecided"] else "pass"


def routed_best(cells: pd.DataFrame, speed: pd.DataFrame, threshold: float) -> tuple[str, float | None, float | None, float | None, str]:
    """The fastest mechanism whose gate passes in every given cell: reproduced if its range clears
    the threshold; not reproduced if no passing or undecided mechanism could reach it (a mechanism
    that fails quality is never a router's pick, however fast); inconclusive otherwise."""
    need = set(zip(cells.content, cells.seq_len))
    status = {}
    for m, g in cells.groupby("optim"):  # a pass on some cells only is not a pass on every cell
        got = _status(g)
        status[m] = "undecided" if got == "pass" and set(zip(g.content, g.seq_len)) != need else got
    # A timed mechanism with no quality rows yet might still be allowed: undecided, never left out.
    timed = speed[speed.optim.str.startswith("attn_")].assign(status=lambda d: d.optim.map(status).fillna("undecided"))
    allowed, maybe = timed[timed.status == "pass"], timed[timed.status != "fail"]
    text = ", ".join(f"{r.optim} {r.status} {r.speedup:+.0%} [{r.low:+.0%}, {r.high:+.0%}]" for r in timed.itertuples())
    untimed = sorted(set(status) - set(timed.optim))
    text += f"; no timing for {', '.join(untimed)}" if untimed else ""
    unmeasured = sorted(set(timed.optim) - set(status))
    text += f"; no quality rows for {', '.join(unmeasured)}" if unmeasured else ""
    if allowed.empty:
        verdict = INCONCLUSIVE if (maybe.high >= threshold).any() else NOT_REPRODUCED
        return verdict, None, None, None, "no mechanism passes the gate on every cell (full attention kept); " + text
    best = allowed.loc[allowed.speedup.idxmax()]
    verdict = interval_verdict(best.low, best.high, threshold)
    if verdict == NOT_REPRODUCED and (maybe.high >= threshold).any():
        verdict = INCONCLUSIVE  # an undecided mechanism might still be allowed and fast enough
    return verdict, best.speedup, best.low, best.high, f"fastest allowed {best.optim}; " + text


def _per_model(rows, metric: str, seq_len: int, judge) -> list[Evidence]:
    """`judge(model, quality cells, speedups)` for each model with attention quality cells."""
    quality, speed = _quality(rows), _speedups(rows, metric, seq_len)
    if quality.empty or speed.empty:
        return [no_data(f"needs attention quality cells ({rows.where('attention', 'quality')}) and {metric} at "
                        f"{seq_len} for {REFERENCE} and mechanisms ({rows.where('attention_gpu', 'attention')})")]
    return [judge(model, cells, speed) for model, cells in quality.groupby("model")]


@rule
def routed_attention_speedup(rows, threshold: float, seq_len: int, metric: str = "kernel_prefill_ms") -> list[Evidence]:
    """Per model: the fastest mechanism whose gate passes on every content x length, timed at
    `seq_len` against attn_full: reproduced if its p10-p90 range clears the threshold; not
    reproduced if no passing or undecided mechanism could reach it (then, with none passing, no
    number: full attention is kept); inconclusive otherwise."""
    def judge(model, cells, speed):
        verdict, value, low, high, text = routed_best(cells, speed, threshold)
        return Evidence(verdict, value, low, high, RANGE, model, len(cells), devices(speed), f"{metric} at {seq_len}: {text}")

    return _per_model(rows, metric, seq_len, judge)


@rule
def per_content_speedup(rows, threshold: float, seq_len: int, metric: str = "kernel_prefill_ms") -> list[Evidence]:
    """Per model and content: the best speedup among mechanisms passing the gate on every length of
    that content (`routed_best`); reproduced if every content reproduces, not reproduced if one
    does not, else inconclusive. Value: the weakest content's best speedup (none if some content
    has no allowed mechanism)."""
    def judge(model, cells, speed):
        per = {c: routed_best(g, speed, threshold) for c, g in cells.groupby("content")}
        values = [p[1] for p in per.values()]
        return Evidence(all_cells(p[0] for p in per.values()), None if None in values else min(values),
                        interval=f"per content: {RANGE}", scope=model, n=len(cells), device=devices(speed),
                        detail=f"{metric} at {seq_len}; " + " | ".join(f"{c}: {p[0]}, {p[4]}" for c, p in per.items()))

    return _per_model(rows, metric, seq_len, judge)
