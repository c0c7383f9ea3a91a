"""C16: does the attention router get better over time? Read from the router experiment's JSON
(`ollm_bench/evaluate/router_eval.py` documents its protocol and format).

Effective cost of serving the workload once: seconds, plus, for every request whose quality loss
exceeds the budget, the cost of serving it again with full attention (its mean attn_full cost in
the fixed arm), so speed bought with broken quality is not a gain.
"""

from __future__ import annotations

import math
import statistics

from .evidence import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Evidence, no_data, rule

CI = "95 % t-interval over seeds of 1 - late/early"


def _t(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n)) if n > 0 else math.nan


def mean_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean with its 95 % t-interval (NaN ends below 2 values)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    half = _t(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its 95 % Welch t-interval (independent samples)."""
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _t(df) * math.sqrt(va + vb)
    return d, d - half, d + half


def learning_summary(data: dict, k: int) -> dict:
    """Early/late effective cost per seed, the hindsight-best fixed mechanism from the fixed arm,
    the gain 1 - late/early (t-interval over seeds) and the late regret vs that mechanism relative
    to its cost (Welch interval: separate runs)."""
    budget, fixed = data["quality_budget"], data["fixed"]
    full = [r["cost_s"] for r in fixed if r["mechanism"] == "attn_full"]
    redo = [statistics.fmean(c) for c in zip(*full)]  # per request: mean attn_full seconds

    def effective(r: dict) -> float:
        return sum(c + (redo[i] if q > budget else 0.0) for i, (c, q) in enumerate(zip(r["cost_s"], r["loss"])))

    per_mech: dict[str, list[float]] = {}
    for r in fixed:
        per_mech.setdefault(r["mechanism"], []).append(effective(r))
    best = min(per_mech, key=lambda m: statistics.fmean(per_mech[m]))
    seeds: dict[int, list[dict]] = {}
    for r in sorted(data["router"], key=lambda r: r["run"]):
        seeds.setdefault(r["seed"], []).append(r)
    early = [statistics.fmean(effective(r) for r in runs[:k]) for runs in seeds.values()]
    late = [statistics.fmean(effective(r) for r in runs[-k:]) for runs in seeds.values()]
    ref = statistics.fmean(per_mech[best])
    regret = [x / ref for x in welch_interval(late, per_mech[best])]
    violations = [sum(q > budget for r in runs[-k:] for q in r["loss"]) for runs in seeds.values()]
    return {"best": best, "best_cost": ref, "fixed": {m: statistics.fmean(v) for m, v in per_mech.items()},
            "early": early, "late": late, "gain": mean_interval([1 - b / a for a, b in zip(early, late)]),
            "regret": regret, "late_violations": violations, "seeds": len(seeds), "runs": min(map(len, seeds.values())),
            "last_picks": {s: runs[-1]["picks"] for s, runs in seeds.items()}}


def learning_verdict(gain: tuple, regret: tuple, threshold: float) -> str:
    """Reproduced: late runs beat early ones beyond the interval and are not worse than the best
    fixed choice beyond its interval. Not reproduced: no gain even at the interval's high end, or
    worse than the best fixed choice beyond the interval. Inconclusive otherwise (also with fewer
    than two seeds or fixed repeats: no interval)."""
    _, g_low, g_high = gain
    _, r_low, _ = regret
    if g_high <= threshold or r_low > 0:
        return NOT_REPRODUCED
    return REPRODUCED if g_low > threshold and not math.isnan(r_low) else INCONCLUSIVE


@rule
def router_learning(rows, threshold: float, last_runs: int = 2) -> list[Evidence]:
    """Gain 1 - late/early of the router's effective cost (seconds, a quality violation charged a
    full-attention rerun) in its first vs last `last_runs` runs, t-interval over seeds; late regret
    vs the best fixed mechanism timed on separate runs, Welch interval. Reproduced: gain beyond
    the interval and late runs not worse than the best fixed choice beyond its interval; not
    reproduced: no gain even at the interval's high end, or worse than the best fixed choice beyond
    the interval; inconclusive otherwise."""
    data = rows.router_experiment()
    if not data or not data.get("router") or not any(r["mechanism"] == "attn_full" for r in data.get("fixed", [])):
        return [no_data("no router experiment with router and fixed (incl. attn_full) runs at "
                        "results/attention/router_learning.json (python -m ollm_bench.evaluate.router_eval)")]
    s = learning_summary(data, last_runs)
    if s["runs"] < 2 * last_runs:
        return [no_data(f"{s['runs']} runs per seed: fewer than 2 x {last_runs} (early and late would overlap)")]
    gain, regret = s["gain"], s["regret"]
    fixed = ", ".join(f"{m} {c:.2f}" for m, c in sorted(s["fixed"].items(), key=lambda x: x[1]))
    detail = (f"{s['seeds']} seeds x {s['runs']} runs of {len(data.get('contents', []))} requests at {data.get('seq_len')} "
              f"tokens; effective cost ({data.get('clock', 'wall')} seconds) first {last_runs} runs {statistics.fmean(s['early']):.2f}, last {last_runs} "
              f"{statistics.fmean(s['late']):.2f}; best fixed (separate runs; picked on those same runs, which favours it) {s['best']} {s['best_cost']:.2f} "
              f"(all: {fixed}); late regret {regret[0]:+.1%} [{regret[1]:+.1%}, {regret[2]:+.1%}] (Welch t-interval); "
              f"quality violations in the last runs per seed: {s['late_violations']}; last picks, seed "
              f"{next(iter(s['last_picks']))}: {next(iter(s['last_picks'].values()))}; command: {data.get('command', '?')}")
    return [Evidence(learning_verdict(gain, regret, threshold), *gain, interval=CI, scope=str(data.get("model", "")),
                     n=s["seeds"], device=str(data.get("device", "")), detail=detail)]
