"""Quality rows -> one summary row per (model, machine, content, length, method), paired with the
baseline of the same machine and the same documents.

Every perplexity change is paired per document (same document hashes on both sides) with the
t-interval of `evaluate/stats.py`; each row carries its gate verdict, its minimum detectable
effect at 80 % power, the documents an inconclusive verdict would need, and a flag when a lossy
method lowers perplexity beyond noise (a bug until explained).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from ..errors import StoreError
from ..evaluate.stats import CI_METHOD, flag_improvement, paired_rows

# A cell is paired across CPU models: the machine class ("cpu" for any CPU, the GPU model otherwise)
# stands in for the device string. Baseline perplexity agrees across the CPU models seen here to
# within 2e-5 per document (results/reference/ci holds both), while a lossy cache's rounding falls
# differently on each, so its rows are one draw per CPU model (latest kept) and the gate compares a
# run with the reference of its own CPU model first.
KEY = ["model", "machine", "content", "seq_len", "seed", "batch_size"]
BASELINE = "baseline"


def machine_class(device) -> str:
    """What must match for rows to be paired: the GPU model, or just "cpu" (the CPU model is still
    stored in every row's `device`)."""
    return "cpu" if str(device).startswith("cpu") else str(device)


def with_machine(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(machine=df.device.map(machine_class))


def method_params(row) -> dict:
    return ((row.get("config_json") if isinstance(row, dict) else row.config_json) or {}).get("optim", {}).get("method", {})


def _variant(config_json) -> str:
    """One configuration of a method (ablations and calibration candidates share an optim name)."""
    return json.dumps((config_json or {}).get("optim", {}).get("method", {}), sort_keys=True, default=str)


def latest_ok(df: pd.DataFrame, scenario: str | None = "quality", by: list[str] | None = None) -> pd.DataFrame:
    """The latest ok row per `by` (default: per cell, method and variant), with `machine` and `variant` columns."""
    ok = df[df.status == "ok"]
    if scenario is not None:
        ok = ok[ok.scenario == scenario]
    ok = with_machine(ok).assign(variant=ok.config_json.map(_variant))
    return ok.sort_values("started_at").drop_duplicates(subset=by or KEY + ["optim", "variant"], keep="last")


def _same(a, b) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)  # lists and tuples alike


def changed_params(params: dict, configured: dict | None) -> list[str]:
    """Parameters a row ran with that differ from the YAML now (the kernel has its own column)."""
    if configured is None:
        return []
    return sorted(k for k, v in params.items() if k not in ("kernel", "_target_") and not _same(v, configured.get(k)))


def config_label(optim: str, params: dict, configured: dict | None) -> str:
    """`optim`, plus the parameters a row ran with that differ from its YAML now (`configured`): a
    row measured with an override (kv_k4v4 without sinks on the fused store), or before a
    calibration changed the YAML, is never read as the configured method."""
    diff = [f"{k}={json.dumps(params[k], default=str)}" for k in changed_params(params, configured)]
    return f"{optim}({', '.join(diff)})" if diff else optim


def variant_labels(ok: pd.DataFrame) -> dict[str, str]:
    """variant -> label: the optim name, plus the parameters that differ from the method's YAML now
    (`config_label`: the configured variant keeps its plain name); for a method with no YAML any
    more, the parameters that differ between its variants."""
    from ..methods import configured_params

    labels = {}
    for optim, g in ok.groupby("optim"):
        params = {v: json.loads(v) for v in g.variant.unique()}
        configured = configured_params(optim)
        if configured is not None:
            labels.update({(optim, v): config_label(optim, p, configured) for v, p in params.items()})
            continue
        differing = {k for p in params.values() for k in p if len({json.dumps(q.get(k)) for q in params.values()}) > 1}
        for v, p in params.items():
            extra = ", ".join(f"{k}={json.dumps(p.get(k))}" for k in sorted(differing) if k != "_target_")
            labels[(optim, v)] = f"{optim}({extra})" if extra else optim
    return labels


def _is_peer(value) -> bool:
    return str(value).lower() in ("true", "1")


def ratio_16bit(row) -> float:
    """KV bytes / 16-bit cache with every fp32 tensor the row stored counted at 16 bits: bytes as a
    16-bit deployment would hold them, so a peer (or the baseline) kept in this CPU's fp32 does not
    look twice its size. Our layouts store 16 bits or less, so for them it equals `kv_ratio`."""
    tensors = (row.kv_storage or {}).get("tensors", {}) if isinstance(row.kv_storage, dict) else {}
    fp32 = sum(t.get("bytes", 0) for t in tensors.values() if t.get("dtype") == "float32")
    return (row.kv_bytes - fp32 / 2) / row.kv_bytes_16bit


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, machine, content, seq_len, seed, batch, optim) with changes vs the baseline."""
    ok = latest_ok(df)
    if ok.empty:
        raise StoreError("no ok quality rows to report")
    labels = variant_labels(ok)
    base = ok[ok.optim == BASELINE].drop_duplicates(subset=KEY, keep="last").set_index(KEY)
    out = []
    for _, r in ok.iterrows():
        key = tuple(r[k] for k in KEY)
        b = base.loc[key] if key in base.index else None
        row = {k: r[k] for k in KEY} | {
            "device": r.device, "optim": r.optim, "label": labels[(r.optim, r.variant)], "params": method_params(r), "peer": _is_peer(r.peer), "n_docs": r.n_docs, "scored_tokens": r.scored_tokens,
            "ppl": r.ppl, "ppl_ci_low": r.ppl_ci_low, "ppl_ci_high": r.ppl_ci_high, "kv_ratio": r.kv_ratio,
            "kv_ratio_16bit": ratio_16bit(r), "kv_mib": r.kv_bytes / 2**20, "prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s,
            "decode_tok_s_spread": r.decode_tok_s_spread, "n_repeats": r.n_repeats, "calibration": r.calibration,
        }
        if b is not None:
            if b.device == r.device:  # speed only compares within one CPU model
                row["prefill_ratio"] = r.prefill_tok_s / b.prefill_tok_s
                row["decode_ratio"] = r.decode_tok_s / b.decode_tok_s
            row["kv_vs_baseline"] = r.kv_bytes / b.kv_bytes
            if r.optim == BASELINE:
                row["gate"] = "reference"
            elif (ch := paired_rows(r, b)) is not None:
                row.update(n_docs=ch.n, ppl_delta=ch.point, ppl_delta_low=ch.low, ppl_delta_high=ch.high, ppl_sd=ch.sd,
                           mde=ch.mde, gate=ch.gate(), docs_to_resolve=ch.docs_to_resolve(),
                           improves=r.optim != BASELINE and flag_improvement(ch.high))
            elif r.doc_nll and b.doc_nll:
                row["gate"] = "documents differ"
        out.append(row)
    cols = ["model", "content", "seq_len", "optim", "label"]
    return pd.DataFrame(out).sort_values(cols).reset_index(drop=True)


def pct(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.2f}%"


def delta_text(r) -> str:
    if pd.isna(r.get("ppl_delta")):
        return ""
    if pd.isna(r.get("ppl_delta_low")):
        return f"{pct(r.ppl_delta)} (n < 3: no interval)"
    return f"{pct(r.ppl_delta)} [{pct(r.ppl_delta_low)}, {pct(r.ppl_delta_high)}]"


def verdict_text(r) -> str:
    """Gate verdict, with what would resolve an inconclusive one and a flag on suspicious gains."""
    gate = r.get("gate")
    if not isinstance(gate, str):
        return ""
    if gate == "inconclusive" and not pd.isna(r.get("docs_to_resolve")):
        gate += f" (needs ~{int(r.docs_to_resolve)} docs)"
    if r.get("improves") is True:
        gate += " ⚠ improves beyond noise"
    return gate


def name_text(r) -> str:
    return f"{r.label} (peer)" if r.get("peer") else str(r.label)


def markdown_table(summary: pd.DataFrame) -> str:
    head = ("| model | content | len | optim | n | ppl | Δppl vs base [95% CI] | MDE | gate | KV / 16-bit | "
            "decode tok/s (range) |")
    lines = [head, "|" + "---|" * 11]
    for _, r in summary.iterrows():
        ppl = "" if pd.isna(r.ppl) else f"{r.ppl:.3f}"
        mde = "" if pd.isna(r.get("mde")) else f"{100 * r.mde:.2f}%"
        speed = "" if pd.isna(r.decode_tok_s) else f"{r.decode_tok_s:.1f} (±{r.decode_tok_s_spread / 2:.1f})"
        lines.append(f"| {r.model} | {r.content} | {r.seq_len} | {name_text(r)} | {int(r.n_docs)} | {ppl} | "
                     f"{delta_text(r)} | {mde} | {verdict_text(r)} | {r.kv_ratio_16bit:.3f} | {speed} |")
    return "\n".join(lines)


def method_note(summary: pd.DataFrame) -> str:
    n = sorted({int(x) for x in summary.n_docs.dropna()})
    tokens = sorted({int(x) for x in summary.scored_tokens.dropna()})
    return (f"n = {', '.join(map(str, n))} documents per cell (disjoint spans of the source), last "
            f"{', '.join(map(str, tokens))} tokens of each scored from the cache; Δppl = ppl_method / ppl_baseline - 1 "
            f"on the same documents, 95 % {CI_METHOD} (exp of the mean per-token log-ratio); MDE: smallest change "
            "detectable at 80 % power; gate: pass if the interval's upper end ≤ 2 %, fail if its lower end > 2 %, else "
            "inconclusive (with the documents that would resolve it at 80 % power if the change is what was observed)."
            + _cross_cpu_note(summary))


def _cross_cpu_note(summary: pd.DataFrame) -> str:
    cpus = sorted({str(d) for d in summary.get("device", pd.Series(dtype=str)).dropna() if str(d).startswith("cpu")})
    if len(cpus) < 2:
        return ""
    return (f" Rows come from {len(cpus)} CPU models ({'; '.join(cpus)}): a method is paired with the latest baseline "
            "of any CPU model (the baseline's per-document perplexity agrees across them to ~2e-5), and speed is "
            "compared only within one CPU model.")
