"""What measured quality losses say about a mechanism: fails, proven within budget, or unproven.

Two kinds of metric, each with its budget (the quality gate: 2 % for perplexity, 2 points for
accuracy):
- task accuracy (`ACCURACY_METRICS`: acc, exact_match): one observation per request, the loss in
  points against full attention on the same request: +100 (full right, mechanism wrong), 0, or
  -100 (the reverse). The proof bound is the Wilson 95 % upper end of the *regression* rate (losses
  > 0) out of n: improvements are not credited, since a mechanism that fixes one answer and breaks
  another is not safe for the one it breaks. With no regression at all, the bound is 3.84 / (n + 3.84),
  so proving 2 points takes n >= 189 requests: ten clean needle answers prove nothing, as they should not;
- relative losses (anything else: perplexity ratio - 1): the upper end of the two-sided 95 %
  Student-t interval of the mean loss over requests.
Verdicts: `fails` when the mean loss exceeds the budget (one measurement is enough to exclude);
`proven` when at least `min_n` observations and the upper bound is within the budget; else `unproven`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ACCURACY_METRICS = ("acc", "exact_match")
Z95 = 1.959963984540054  # two-sided 95 %


def is_accuracy(metric: str) -> bool:
    return metric in ACCURACY_METRICS


def wilson_upper(k: int, n: int, z: float = Z95) -> float:
    """Upper end of the Wilson score interval of a binomial proportion k / n (1.0 for n = 0)."""
    if n <= 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def t_upper(values: list[float]) -> float:
    """Upper end of the two-sided 95 % t interval of the mean (inf below 2 values)."""
    n = len(values)
    if n < 2:
        return math.inf
    from scipy.stats import t  # scikit-learn's dependency; imported only when a proof is asked for

    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean + float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Evidence:
    metric: str
    n: int
    mean: float
    upper: float  # same unit as the budget: points for accuracy metrics, relative otherwise
    budget: float
    verdict: str  # "fails" | "proven" | "unproven"

    def describe(self) -> str:
        if is_accuracy(self.metric):
            return f"{self.metric} n={self.n} loss {self.mean:+.1f} pts (95% upper {self.upper:.1f} pts, budget {self.budget:g})"
        return f"{self.metric} n={self.n} loss {self.mean:+.2%} (95% upper {self.upper:+.2%}, budget {self.budget:.0%})"


def evidence(metric: str, losses: list[float], budget: float, min_n: int) -> Evidence:
    n = len(losses)
    mean = sum(losses) / n if n else 0.0
    if is_accuracy(metric):
        upper = 100.0 * wilson_upper(sum(v > 0 for v in losses), n)
    else:
        upper = t_upper(losses)
    if n and mean > budget:
        verdict = "fails"
    elif n >= min_n and upper <= budget:
        verdict = "proven"
    else:
        verdict = "unproven"
    return Evidence(metric, n, mean, upper, budget, verdict)


__all__ = ["ACCURACY_METRICS", "Evidence", "evidence", "is_accuracy", "t_upper", "wilson_upper"]
