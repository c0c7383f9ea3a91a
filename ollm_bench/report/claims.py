"""Verdicts for the report's claims, computed from stored rows (never typed by hand).

Each metric returns `Evidence`: a point value, a low/high range (bootstrap CI, or the spread of
the cells/repeats it summarizes: the text says which), n, the device and a one-line detail. The
verdict rule is the same for all: reproduced if low >= threshold, not reproduced if high <
threshold, inconclusive otherwise; a claim without data says "no data".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from ..errors import ConfigError, StoreError
from .quality import summarize
from ..run.store import ResultStore


@dataclass
class Evidence:
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    device: str = ""
    detail: str = ""

    def verdict(self, threshold: float) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "no data"
        low = self.value if self.low is None else self.low
        high = self.value if self.high is None else self.high
        if low >= threshold:
            return "reproduced"
        if high < threshold:
            return "not reproduced"
        return "inconclusive"


NO_DATA = Evidence(None, detail="no stored rows for this claim yet")


class Results:
    """Lazy access to every results file the claims read."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, pd.DataFrame | None] = {}

    def csv(self, rel: str) -> pd.DataFrame | None:
        if rel not in self._cache:
            path = self.root / rel
            self._cache[rel] = pd.read_csv(path) if path.exists() else None
        return self._cache[rel]

    def suite(self, name: str) -> pd.DataFrame | None:
        key = f"suite:{name}"
        if key not in self._cache:
            path = self.root / name / "runs.csv"
            try:
                self._cache[key] = summarize(ResultStore(path).read()) if path.exists() else None
            except StoreError:
                self._cache[key] = None
        return self._cache[key]


def _ok(df: pd.DataFrame | None, **eq) -> pd.DataFrame:
    if df is None:
        return pd.DataFrame()
    mask = df.status == "ok" if "status" in df else pd.Series(True, index=df.index)
    for key, value in eq.items():
        mask &= df[key] == value
    return df[mask]


def _spread(values: pd.Series, n: int, device: str, detail: str) -> Evidence:
    values = values.dropna()
    if values.empty:
        return NO_DATA
    return Evidence(float(values.median()), float(values.min()), float(values.max()), n, device, detail)


def fragmentation_reduction(r: Results, method: str, against: str) -> Evidence:
    df = _ok(r.csv("memory/memory_gpu.csv"), part="frag", metric="frag_live_over_run")
    if df.empty:
        return NO_DATA
    m, a = df[df.method == method].iloc[0], df[df.method == against].iloc[0]
    value = 1 - m["median"] / a["median"]
    return Evidence(value, 1 - m.p90 / a["median"], 1 - m.p10 / a["median"], int(m.n), m.device,
                    f"1 - live/reserved over the run: {method} {m['median']:.3f} vs {against} {a['median']:.3f} "
                    f"(range: {method}'s p10-p90 over {int(m.n)} samples)")


def alloc_speedup(r: Results, method: str) -> Evidence:
    df = _ok(r.csv("memory/memory_gpu.csv"), part="alloc")
    if df.empty:
        return NO_DATA
    mine = df[df.method == method].set_index("case")
    torch_ = df[df.method == "torch"].set_index("case")
    speed = torch_["median"] / mine["median"] - 1
    return _spread(speed, int(mine.n.sum()), mine.device.iloc[0],
                   f"torch.empty/{method} get+put latency - 1 over shape mixes "
                   + ", ".join(f"{c}: {v:+.0%}" for c, v in speed.items()) + " (range over mixes)")


def alloc_overhead_reduction(r: Results, method: str) -> Evidence:
    df = _ok(r.csv("memory/memory_gpu.csv"), part="c3", metric="alloc_time")
    if df.empty:
        return NO_DATA
    m, t = df[df.method == method].iloc[0], df[df.method == "torch"].iloc[0]
    return Evidence(1 - m["median"] / t["median"], 1 - m.p90 / t["median"], 1 - m.p10 / t["median"], int(m.n),
                    m.device, f"allocator time per decode step: {method} {m['median']:.0f} us vs torch "
                    f"{t['median']:.0f} us (range: {method}'s p10-p90)")


def _kv_rows(r: Results, optim: str) -> pd.DataFrame:
    s = r.suite("kv")
    return pd.DataFrame() if s is None else s[s.optim == optim]


def kv_reduction_within_gate(r: Results, optim: str) -> Evidence:
    rows = _kv_rows(r, optim)
    if rows.empty:
        return NO_DATA
    reduction = 1 / rows.kv_ratio
    passing = rows.gate == "pass"
    # Cells whose quality gate does not pass cannot count as reduction "with <2% loss".
    within = reduction.where(passing, 0.0)
    fails = rows[rows.gate == "fail"]
    detail = (f"16-bit bytes / {optim} bytes per content x length: {reduction.min():.2f}-{reduction.max():.2f}x; "
              f"gate pass in {passing.sum()}/{len(rows)} cells"
              + (f"; gate fail: {', '.join(f'{a}/{b}' for a, b in zip(fails.content, fails.seq_len))}" if len(fails) else ""))
    return Evidence(float(within.min()), float(within.min()), float(reduction.max()) if passing.any() else 0.0,
                    len(rows), rows.device.iloc[0], detail)


def kv_storage_bits(r: Results, optim: str) -> Evidence:
    """Bits per stored element of the mixed cache's key and value payloads, read off real storage."""
    import torch

    from optim.kv_mixed import MixedPrecisionKV

    from ..models import build_random_model, tiny_gemma3_config

    model = build_random_model(tiny_gemma3_config(layers=2, sliding_window=4096))
    cache = MixedPrecisionKV().make_cache(model.config)
    with torch.inference_mode():
        model(input_ids=torch.randint(3, 250, (1, 512)), past_key_values=cache, use_cache=True)
    named = dict(_named_tensors(vars(cache.layers[0])))
    dtypes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in named.items() if v.numel() > 1)
    rows = _kv_rows(r, optim)
    eff = "" if rows.empty else f"; effective bits incl. scales on Gemma-3: {16 * rows.kv_ratio.median():.2f}/element"
    elems = 512 * 32  # tokens x head_dim x 1 kv head on the probe
    key_bits = sum(8 * v.numel() * v.element_size() for k, v in named.items() if k.startswith("k") and "codes" in k) / elems
    val_bits = sum(8 * v.numel() * v.element_size() for k, v in named.items() if k.startswith("v") and "codes" in k) / elems
    val_fp8 = any("float8" in str(v.dtype) for k, v in named.items() if k.startswith("v") and "codes" in k)
    ok = abs(key_bits - 4) < 1e-6 and abs(val_bits - 8) < 1e-6 and val_fp8
    return Evidence(1.0 if ok else 0.0, n=1, device="storage inspection",
                    detail=f"key payload {key_bits:g} bits/element, value payload {val_bits:g} bits/element "
                    f"(fp8: {val_fp8}); tensors of one global layer after 512 tokens: {dtypes}{eff}")


def _named_tensors(obj, prefix: str = ""):
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        for i, v in enumerate(obj):
            yield from _named_tensors(v, f"{prefix}[{i}]")
    elif hasattr(obj, "__dict__") or hasattr(obj, "_fields"):
        fields = obj._asdict() if hasattr(obj, "_asdict") else vars(obj)
        yield from _named_tensors(fields, prefix)


def kv_bytes_saving(r: Results, optim: str, against: str) -> Evidence:
    mine, other = _kv_rows(r, optim), _kv_rows(r, against)
    if mine.empty or other.empty:
        return NO_DATA
    key = ["content", "seq_len"]
    both = mine.merge(other, on=key, suffixes=("", "_o"))
    saving = 1 - both.kv_mib / both.kv_mib_o
    return _spread(saving, len(both), both.device.iloc[0],
                   f"1 - bytes({optim}) / bytes({against}) per content x length (range over cells)")


def _kv_gpu(r: Results) -> pd.DataFrame:
    """GPU KV rows with decode ratio vs the baseline of the same context x batch, and bytes scaled
    to the full model (the benchmark builds `layers_used` of `layers_real` identical layers)."""
    gpu = _ok(r.csv("kv_gpu/kv_gpu.csv"))
    if gpu.empty:
        return gpu
    base = gpu[gpu.method == "baseline"].set_index(["context", "batch"])
    gpu = gpu.copy()
    gpu["decode_ratio"] = [row.decode_tok_s / base.loc[(row.context, row.batch)].decode_tok_s for _, row in gpu.iterrows()]
    gpu["kv_bytes_full_model"] = gpu.kv_bytes * gpu.layers_real / gpu.layers_used
    return gpu


def decode_speedup(r: Results, optim: str) -> Evidence:
    gpu = _kv_gpu(r)
    if not gpu.empty:
        rows = gpu[gpu.method == optim]
        return _spread(rows.decode_ratio - 1, len(rows), rows.device.iloc[0],
                       "decode tokens/s vs baseline - 1 on the GPU (Llama-3.1-8B shapes, bf16) per context x batch: "
                       + ", ".join(f"{c}/b{b}: {v - 1:+.0%}" for c, b, v in zip(rows.context, rows.batch, rows.decode_ratio))
                       + f"; cache update+dequantization is {rows.update_share.median():.0%} of a decode step")
    rows = _kv_rows(r, optim)
    if rows.empty:
        return NO_DATA
    return _spread(rows.decode_ratio - 1, len(rows), rows.device.iloc[0],
                   "decode tokens/s vs baseline - 1 on CPU per content x length (range over cells)")


def repetitive_advantage(r: Results, optim: str) -> Evidence:
    rows = _kv_rows(r, optim)
    if rows.empty:
        return NO_DATA
    rep = rows[rows.content == "repetitive"].set_index("seq_len").kv_ratio
    other = rows[rows.content != "repetitive"].groupby("seq_len").kv_ratio.median()
    adv = (other / rep - 1).dropna()
    return _spread(adv, len(rows), rows.device.iloc[0],
                   f"KV bytes on other content / on repetitive - 1, per length: "
                   + ", ".join(f"{k}: {v:+.1%}" for k, v in adv.items()))


def bits_fall_with_age(r: Results, optim: str) -> Evidence:
    """From the method's own `bits_by_age` report at the longest stored length: within every layer,
    bits per stored element must not rise with age, and the oldest tier must hold fewer than the newest."""
    import json

    rows = _ok(r.csv("kv/runs.csv"), optim=optim)
    if rows.empty:
        return NO_DATA
    row = rows.sort_values("seq_len").iloc[-1]
    tiers = json.loads(row.method_stats).get("bits_by_age") if isinstance(row.method_stats, str) else None
    if not tiers:
        return NO_DATA
    by_layer: dict[int, list] = {}
    for t in tiers:
        by_layer.setdefault(t["layer"], []).append(t)
    falls = True
    for layer_tiers in by_layer.values():
        bits = [t["bits_per_element"] for t in sorted(layer_tiers, key=lambda t: t["age_from"])]
        falls &= all(a >= b for a, b in zip(bits, bits[1:])) and (len(bits) == 1 or bits[0] > bits[-1])
    deepest = max(by_layer.values(), key=len)
    schedule = ", ".join(f"age {t['age_from']}-{t['age_to']}: {t['bits_per_element']:.2f} b" for t in
                         sorted(deepest, key=lambda t: t["age_from"]))
    return Evidence(1.0 if falls else 0.0, n=len(by_layer), device=row.device,
                    detail=f"{len(by_layer)} layers at {int(row.seq_len)} tokens; deepest layer: {schedule}")


def _attention_quality(r: Results) -> pd.DataFrame:
    """suite=attention rows of our mechanisms: peers (transformers' native window, kvpress) are
    comparisons, not something the report's router would pick."""
    s = r.suite("attention")
    if s is None:
        return pd.DataFrame()
    return s[~s.peer.astype(str).str.lower().isin(("true", "1"))] if "peer" in s else s


def routed_attention_speedup(r: Results, seq_len: int) -> Evidence:
    """Speed of what a quality-guarded router may pick: the fastest mechanism whose CPU quality gate
    passes on every content, timed on the GPU kernel at `seq_len` against flash SDPA."""
    gpu = _ok(r.csv("attention_gpu/attention_gpu.csv"), part="kernel", phase="prefill", seq_len=seq_len)
    quality = _attention_quality(r)
    if gpu.empty or quality.empty or "gate" not in quality:
        return NO_DATA
    # attn_full is the reference itself, not an optimization a router could gain from.
    allowed = [m for m, g in quality.groupby("optim")
               if m.startswith("attn_") and m != "attn_full" and (g.gate == "pass").all()]
    sdpa = gpu[gpu.mechanism == "sdpa"].iloc[0]
    cand = gpu[gpu.mechanism.isin(allowed)]
    if cand.empty:
        return Evidence(0.0, n=len(quality), device=sdpa.device,
                        detail=f"no mechanism passes the 2% gate on every content (CPU); the router must keep full attention")
    best = cand.loc[cand.median_ms.idxmin()]
    return Evidence(sdpa.median_ms / best.median_ms - 1, sdpa.p25_ms / best.p75_ms - 1, sdpa.p75_ms / best.p25_ms - 1,
                    int(best.repeats), best.device,
                    f"{best.mechanism} {best.median_ms:.2f} ms vs flash SDPA {sdpa.median_ms:.2f} ms at {seq_len} "
                    f"(range from quartiles); quality-allowed: {allowed or 'none'}")


def per_content_speedup(r: Results) -> Evidence:
    quality = _attention_quality(r)
    if quality.empty or "gate" not in quality:
        return NO_DATA
    best = {}
    optimized = quality[quality.optim.str.startswith("attn_") & (quality.optim != "attn_full")]
    for content, g in optimized.groupby("content"):
        ok = g[g.gate == "pass"]
        best[content] = float(ok.prefill_ratio.max() - 1) if len(ok) else 0.0
    return _spread(pd.Series(best), len(quality), quality.device.iloc[0],
                   "best CPU prefill speedup at equal quality (gate pass) per content: "
                   + ", ".join(f"{k}: {v:+.0%}" for k, v in best.items()))


def gate_pass_share(r: Results, optim: str) -> Evidence:
    rows = _kv_rows(r, optim)
    if rows.empty or "gate" not in rows:
        return NO_DATA
    counts = rows.gate.value_counts().to_dict()
    share = float((rows.gate == "pass").mean())
    worst = rows.loc[rows.ppl_delta_high.idxmax()]
    return Evidence(share, share if counts.get("fail") else 0.0, 1.0 if not counts.get("fail") else share,
                    len(rows), rows.device.iloc[0],
                    f"gate verdicts over content x length: {counts}; worst CI upper end {worst.ppl_delta_high:+.2%} "
                    f"({worst.content}/{worst.seq_len})")


def kv_gb_saved(r: Results, optim: str) -> Evidence:
    gpu = _kv_gpu(r)
    if gpu.empty:
        return NO_DATA
    longest = gpu[(gpu.context == gpu.context.max()) & gpu.method.isin(["baseline", optim])]
    base = longest[longest.method == "baseline"].set_index("batch").kv_bytes_full_model
    saved = [(row.method, row.batch, (base[row.batch] - row.kv_bytes_full_model) / 1e9)
             for _, row in longest[longest.method != "baseline"].iterrows() if row.batch in base.index]
    if not saved:
        return NO_DATA
    best = max(saved, key=lambda x: x[2])
    at_b1 = max((s for s in saved if s[1] == 1), key=lambda x: x[2], default=None)
    return Evidence(best[2], at_b1[2] if at_b1 else None, best[2], len(saved), longest.device.iloc[0],
                    f"KV bytes saved vs a bf16 cache at context {int(gpu.context.max())}, Llama-3.1-8B shapes (32 layers, "
                    f"scaled from {int(gpu.layers_used.iloc[0])} built): {best[0]} batch {best[1]} {best[2]:.2f} GB"
                    + (f"; batch 1: {at_b1[0]} {at_b1[2]:.2f} GB (range low end)" if at_b1 else ""))


def router_learning(r: Results) -> Evidence:
    import json

    path = r.root / "attention" / "router_regret.json"
    if not path.exists():
        return NO_DATA
    data = json.loads(path.read_text())
    runs = data["runs"]
    first, last = runs[0]["cost"], runs[-1]["cost"]
    gain = 1 - last / first
    regrets = ", ".join(f"{r['regret']:+.2f}" for r in runs)
    return Evidence(gain, n=len(runs), device=data.get("device", ""),
                    detail=f"router cost on a fixed {len(data.get('workload', []))}-request workload: run 1 {first:.2f} s "
                    f"-> run {len(runs)} {last:.2f} s (regret per run vs best fixed {data.get('best_fixed')}: {regrets} s; "
                    f"quality violations per run: {[r['violations'] for r in runs]})")


METRICS = {f.__name__: f for f in (
    fragmentation_reduction, alloc_speedup, alloc_overhead_reduction, kv_reduction_within_gate, kv_storage_bits,
    kv_bytes_saving, decode_speedup, repetitive_advantage, bits_fall_with_age, routed_attention_speedup,
    per_content_speedup, gate_pass_share, kv_gb_saved, router_learning)}


def load_claims(path: Path) -> list[dict]:
    try:
        claims = yaml.safe_load(Path(path).read_text())["claims"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read claims file {path}: {exc}") from None
    for c in claims:
        if c.get("metric") not in METRICS:
            raise ConfigError(f"claim {c.get('id')}: unknown metric {c.get('metric')!r}; known: {sorted(METRICS)}")
    return claims


def evaluate(claims: list[dict], results_root: Path) -> pd.DataFrame:
    r = Results(results_root)
    rows = []
    for c in claims:
        try:
            ev = METRICS[c["metric"]](r, **c.get("args", {}))
        except (KeyError, IndexError, ValueError) as exc:  # partial data: say so, never guess
            ev = Evidence(None, detail=f"incomplete data: {type(exc).__name__}: {exc}")
        rows.append({"id": c["id"], "claim": c["quote"], "threshold": c["threshold"], "value": ev.value,
                     "low": ev.low, "high": ev.high, "n": ev.n, "device": ev.device,
                     "verdict": ev.verdict(c["threshold"]), "evidence": ev.detail})
    return pd.DataFrame(rows)


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def claims_markdown(table: pd.DataFrame) -> str:
    lines = ["| id | claim | threshold | measured [range] | n | verdict | evidence (device) |", "|---|---|---|---|---|---|---|"]
    for _, t in table.iterrows():
        rng = f" [{_fmt(t.low)}, {_fmt(t.high)}]" if t.low is not None and not pd.isna(t.low) else ""
        lines.append(f"| {t.id} | {t.claim} | {t.threshold} | {_fmt(t.value)}{rng} | {t.n} | **{t.verdict}** | "
                     f"{t.evidence} ({t.device}) |")
    return "\n".join(lines)
