"""C1-C5: allocator claims from suite `memory_gpu`, scenario `memory`: one row per (optim, metric)
with the median in `metric_value` and p10/p90 over `metric_n` samples. Peers: `torch_caching`
(PyTorch's caching allocator) and `torch_expandable` (expandable_segments)."""

from __future__ import annotations

from .evidence import Evidence, interval_verdict, no_data, rule
from .rows import latest

SUITE, SCENARIO = "memory_gpu", "memory"
RANGE = "p10-p90 of both sides' samples (worst pairing)"


def _metric_rows(rows, prefix: str):
    df = rows.rows(SUITE, SCENARIO)
    df = latest(df[df.metric.astype(str).str.startswith(prefix)], ["device", "optim", "metric"]).copy()
    for q in ("metric_p10", "metric_p90"):  # a single sample has no spread: its range is the point
        df[q] = df[q].fillna(df.metric_value)
    df["metric_n"] = df.metric_n.fillna(0).astype(int)
    return df


def _pairs(rows, method: str, against: str, prefix: str):
    """(device, metric, method row, reference row) for every metric both were measured on."""
    df = _metric_rows(rows, prefix)
    mine, ref = df[df.optim == method], df[df.optim == against].set_index(["device", "metric"])
    return [(r.device, r.metric, r, ref.loc[(r.device, r.metric)]) for r in mine.itertuples()
            if (r.device, r.metric) in ref.index]


def _missing(rows, method: str, against: str, metric: str):
    return [no_data(f"no `{metric}` rows measured for both {method} and {against} in "
                    f"{rows.where(SUITE, SCENARIO)}")]


def _reduction(rows, threshold: float, method: str, against: str, metric: str, what: str) -> list[Evidence]:
    """1 - method/reference of a lower-is-better metric, per device; range from both p10/p90."""
    out = []
    for device, _, m, a in _pairs(rows, method, against, metric):
        if m.metric != metric:
            continue
        value, low, high = 1 - m.metric_value / a.metric_value, 1 - m.metric_p90 / a.metric_p10, 1 - m.metric_p10 / a.metric_p90
        out.append(Evidence(interval_verdict(low, high, threshold), value, low, high, RANGE, device, m.metric_n,
                            device, f"{what}: {method} {m.metric_value:.4g} vs {against} {a.metric_value:.4g} "
                            f"(medians over {m.metric_n} / {a.metric_n} samples)"))
    return out or _missing(rows, method, against, metric)


@rule
def fragmentation_reduction(rows, threshold: float, method: str, against: str) -> list[Evidence]:
    """1 - fragmentation(method) / fragmentation(against), fragmentation = 1 - live/reserved sampled
    over a varied-length workload; interval rule on the p10-p90 range."""
    return _reduction(rows, threshold, method, against, "fragmentation", "1 - live/reserved")


@rule
def alloc_overhead_reduction(rows, threshold: float, method: str, against: str) -> list[Evidence]:
    """1 - allocator time per decode step (method / against); interval rule on the p10-p90 range."""
    return _reduction(rows, threshold, method, against, "alloc_time_per_step_us", "allocator time per decode step (us)")


@rule
def alloc_speedup(rows, threshold: float, method: str, against: str) -> list[Evidence]:
    """latency(against) / latency(method) - 1 of get+put per request on every shape mix; the claim
    is general, so the worst mix decides (its p10-p90 range: reproduced if it clears the threshold,
    not reproduced if some mix stays below)."""
    by_device: dict[str, list] = {}
    for device, metric, m, a in _pairs(rows, method, against, "alloc_us/"):
        by_device.setdefault(device, []).append((metric.split("/", 1)[1], a.metric_value / m.metric_value - 1,
                                                 a.metric_p10 / m.metric_p90 - 1, a.metric_p90 / m.metric_p10 - 1,
                                                 m.metric_n))
    out = []
    for device, mixes in by_device.items():
        low, high = min(x[2] for x in mixes), min(x[3] for x in mixes)
        out.append(Evidence(interval_verdict(low, high, threshold), min(x[1] for x in mixes), low, high,
                            f"worst mix; {RANGE}", device, sum(x[4] for x in mixes), device,
                            f"{against}/{method} get+put latency - 1 per mix: "
                            + ", ".join(f"{mix} {v:+.0%} [{lo:+.0%}, {hi:+.0%}]" for mix, v, lo, hi, _ in mixes)))
    return out or _missing(rows, method, against, "alloc_us/<mix>")
