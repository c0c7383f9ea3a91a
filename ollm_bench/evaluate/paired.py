"""A method's loss against the baseline over the same documents, from lm-eval's per-sample
outputs: the one rule of `python -m ollm_bench tasks` and `python -m ollm_bench lm-eval compare`.

A logged sample gives, per metric, one value per document:
- 0/1 (acc, acc_norm, exact_match, ...): loss = accuracy drop in points, with the Tango score
  interval for paired proportions (`stats.paired_binary_interval`); the gate's margin is 2 points;
- a log-likelihood (`perplexity`) or (log-likelihood, units) (word/byte perplexity, bits per
  byte): loss = relative perplexity change exp(mean_i d_i) - 1, d_i document i's log-likelihood
  drop per unit, with the paired t-interval of `stats.paired_change`; the margin is 2 %.
Other metrics (F1, BLEU, ...) have no rule here and raise `ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .stats import BINARY_CI_METHOD, CI_METHOD, MARGIN, gate_verdict, paired_binary_interval, paired_change


@dataclass(frozen=True)
class PairedLoss:
    n: int
    point: float
    low: float
    high: float
    unit: str  # "points" (accuracy drop) or "relative" (perplexity change)
    interval: str  # how low/high were computed

    def gate(self, margin: float = MARGIN) -> str:
        scale = 100.0 if self.unit == "points" else 1.0
        return gate_verdict(self.low / scale, self.high / scale, margin)


def format_loss(point: float, low: float, high: float, unit: str) -> str:
    """`+1.2 pts [+0.0, +3.4]` or `+0.56% [+0.10, +1.02]` (no interval: the point alone)."""
    if unit == "points":
        text, ci = f"{point:+.1f} pts", f" [{low:+.1f}, {high:+.1f}]"
    else:
        text, ci = f"{100 * point:+.2f}%", f" [{100 * low:+.2f}, {100 * high:+.2f}]"
    return text + (ci if math.isfinite(low) and math.isfinite(high) else " [no interval below 3 documents]")


def per_doc(samples: list[dict]) -> dict[str, dict[int, object]]:
    """metric -> doc_id -> value (a float, or [loglikelihood, units]); a metric under a filter other
    than lm-eval's default `none` is named `metric,filter`, as in lm-eval's results."""
    out: dict[str, dict[int, object]] = {}
    for s in samples:
        filt = s.get("filter", "none")
        for metric in s["metrics"]:
            value = s[metric]
            name = metric if filt == "none" else f"{metric},{filt}"
            out.setdefault(name, {})[int(s["doc_id"])] = list(value) if isinstance(value, (tuple, list)) else float(value)
    return out


def _kind(metric: str, values: list) -> str:
    if values and isinstance(values[0], list):
        return "units"
    if metric.split(",")[0] == "perplexity":
        return "loglikelihood"
    if all(v in (0.0, 1.0) for v in values):
        return "binary"
    return "other"


def aggregate(metric: str, values: list) -> float:
    """The corpus value lm-eval reports: a mean, or a perplexity / bits per byte over all units."""
    kind = _kind(metric, values)
    if kind == "units":
        ll, units = map(np.sum, zip(*values))
        return float(-ll / units / math.log(2)) if metric.startswith("bits_per_byte") else float(math.exp(-ll / units))
    if kind == "loglikelihood":
        return float(math.exp(-np.mean(values)))
    return float(np.mean(values))


def paired_loss(metric: str, method: dict[int, object], base: dict[int, object]) -> PairedLoss:
    """The loss of `method` against `base` over their common documents."""
    docs = sorted(set(method) & set(base))
    if not docs:
        raise ConfigError(f"no common documents to compare for metric {metric}")
    m, b = [method[d] for d in docs], [base[d] for d in docs]
    kind = _kind(metric, m + b)
    if kind == "binary":
        point, low, high = paired_binary_interval(b, m)
        return PairedLoss(len(docs), 100 * point, 100 * low, 100 * high, "points", BINARY_CI_METHOD)
    if kind == "other":
        raise ConfigError(f"metric {metric}: no paired rule (values are neither 0/1 nor log-likelihoods)")
    if kind == "units":
        (ll_m, units), (ll_b, _) = np.array(m, float).T, np.array(b, float).T
    else:
        ll_m, ll_b, units = np.array(m, float), np.array(b, float), np.ones(len(docs))
    change = paired_change(-ll_m, -ll_b, units)
    return PairedLoss(change.n, change.point, change.low, change.high, "relative", CI_METHOD)
