"""Paired statistics over documents: the perplexity change of a method against a reference, its
interval, the gate verdict, and how many documents a verdict needs.

The unit is the document. For document i, d_i = (NLL_method,i - NLL_ref,i) / tokens_i is the mean
log-perplexity difference per scored token; the relative change is exp(mean d) - 1. Its interval
is a paired Student-t interval on the d_i, exp-transformed: honest at small n for roughly normal
differences (a percentile bootstrap is not: at n = 2 it can only return the two observed values).
The t-interval is used at every n so that one method names every interval in every table
(`CI_METHOD`). With fewer than 3 documents there is no interval at all.

Paired 0/1 outcomes (accuracy, exact match) get Tango's score interval for the difference of
paired proportions (`BINARY_CI_METHOD`) instead: a t- or bootstrap interval over 0/1 differences
is [0, 0] whenever no document changes, however few there are; Tango's, built from the discordant
counts and n, still says how large a change n documents cannot rule out (z^2 / (n + z^2) then).

Gate (non-inferiority against a margin, 2 % by default): pass when the interval's upper end is at
most the margin, fail when its lower end is above it, inconclusive otherwise. A compressed cache
whose interval lies wholly below zero improved perplexity beyond noise: `flag_improvement` marks it
(a bug until explained). The regression gate in CI is two-sided: a change beyond its tolerance in
either direction is a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CI_METHOD = "paired t-interval over documents"
BINARY_CI_METHOD = "Tango score interval for paired proportions"
ALPHA = 0.05
POWER = 0.80
MARGIN = 0.02
MAX_DOCS = 10**6  # beyond this, `docs_needed` says no number of documents resolves it


def _t(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


@dataclass(frozen=True)
class PairedChange:
    """Relative change exp(mean d) - 1 with its interval, over n paired documents."""

    n: int
    point: float
    low: float
    high: float
    sd: float  # standard deviation of the per-document log differences
    mde: float  # smallest true change the test detects at POWER against no change (relative)
    method: str = CI_METHOD

    def gate(self, margin: float = MARGIN) -> str:
        return gate_verdict(self.low, self.high, margin)

    def docs_to_resolve(self, margin: float = MARGIN) -> int | None:
        """Documents an inconclusive verdict would need at POWER, if the true change is the
        observed one (None when the point sits on the margin or there is no spread)."""
        return docs_needed(self.point, self.sd, margin)


def log_differences(nll_method, nll_ref, n_tokens) -> np.ndarray:
    a, b, n = (np.asarray(x, float) for x in (nll_method, nll_ref, n_tokens))
    if not (len(a) == len(b) == len(n)) or len(a) == 0:
        raise ValueError("a paired comparison needs the same documents on both sides")
    return (a - b) / n


def paired_change(nll_method, nll_ref, n_tokens, alpha: float = ALPHA) -> PairedChange:
    d = log_differences(nll_method, nll_ref, n_tokens)
    n, mean = len(d), float(d.mean())
    if n < 3:
        return PairedChange(n, math.expm1(mean), math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    half = _t(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    mde = (_t(1 - alpha / 2, n - 1) + _t(POWER, n - 1)) * sd / math.sqrt(n)
    return PairedChange(n, math.expm1(mean), math.expm1(mean - half), math.expm1(mean + half), sd, math.expm1(mde))


def paired_rows(method, ref, alpha: float = ALPHA) -> PairedChange | None:
    """`paired_change` of two quality rows (anything with doc_nll, doc_hashes, scored_tokens) over
    the documents both scored, matched by content hash: a cell re-run with more documents (the
    first n of a longer run are the same documents) still pairs with rows of fewer. None when
    either side lacks per-document scores or they share no document."""
    if not (method.doc_nll and ref.doc_nll and method.doc_hashes and ref.doc_hashes):
        return None
    if method.scored_tokens != ref.scored_tokens:
        return None
    ref_nll = dict(zip(ref.doc_hashes, ref.doc_nll))
    common = [(m, ref_nll[h]) for h, m in zip(method.doc_hashes, method.doc_nll) if h in ref_nll]
    if not common:
        return None
    mine, theirs = zip(*common)
    return paired_change(list(mine), list(theirs), [method.scored_tokens] * len(mine), alpha)


def paired_binary_interval(ref, method, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(point, low, high) of mean(ref) - mean(method) over paired 0/1 outcomes, Tango (1998):
    every difference whose score test (variance from the constrained ML estimate) keeps it."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    r, m = np.asarray(ref, float), np.asarray(method, float)
    if len(r) != len(m) or len(r) == 0 or not set(np.unique(np.r_[r, m])) <= {0.0, 1.0}:
        raise ValueError("a paired binary comparison needs the same documents on both sides, each 0 or 1")
    n, z = len(r), float(norm.ppf(1 - alpha / 2))
    lost, gained = int(((r == 1) & (m == 0)).sum()), int(((r == 0) & (m == 1)).sum())

    def score(d: float) -> float:
        b = -lost - gained + (2 * n - lost + gained) * d
        p21 = (math.sqrt(max(b * b + 8 * n * gained * d * (1 - d), 0.0)) - b) / (4 * n)
        num, var = lost - gained - n * d, n * (2 * p21 + d * (1 - d))
        return 0.0 if num == 0 else num / math.sqrt(var) if var > 0 else math.copysign(math.inf, num)

    point, edge = (lost - gained) / n, 1 - 1e-12  # the score falls as d grows; 0 at the point
    low = -1.0 if score(-edge) <= z else brentq(lambda d: score(d) - z, -edge, point, xtol=1e-10)
    high = 1.0 if score(edge) >= -z else brentq(lambda d: score(d) + z, point, edge, xtol=1e-10)
    return point, low, high


def gate_verdict(ci_low: float, ci_high: float, margin: float = MARGIN) -> str:
    """Non-inferiority: pass when the interval's upper end is within the margin, fail when its
    lower end is over it, otherwise (or without an interval) inconclusive."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive"
    if ci_high <= margin:
        return "pass"
    if ci_low > margin:
        return "fail"
    return "inconclusive"


def flag_improvement(ci_high: float) -> bool:
    """A lossy method that lowers perplexity beyond noise: suspicious (a leak?) until explained."""
    return math.isfinite(ci_high) and ci_high < 0


def docs_needed(point: float, sd: float, margin: float = MARGIN, alpha: float = ALPHA) -> int | None:
    """Documents for the interval to clear the margin at POWER if the true change is `point`
    (normal approximation, then one t-correction step)."""
    from scipy.stats import norm

    gap = abs(math.log1p(margin) - math.log1p(point))
    if not (math.isfinite(sd) and sd > 0 and gap > 0):
        return None
    z = norm.ppf(1 - alpha / 2) + norm.ppf(POWER)
    n = max(3, math.ceil((z * sd / gap) ** 2))
    if n > MAX_DOCS:  # a point on the margin (up to rounding) needs more documents than exist
        return None
    n = math.ceil(((_t(1 - alpha / 2, n - 1) + _t(POWER, n - 1)) * sd / gap) ** 2)
    return max(3, n)


def perplexity(nll, n_tokens) -> float:
    return float(math.exp(np.sum(nll) / np.sum(n_tokens)))


def ppl_interval(nll, n_tokens, alpha: float = ALPHA) -> tuple[float, float]:
    """t-interval of corpus perplexity from per-document mean NLL (NaN below 3 documents)."""
    per_doc = np.asarray(nll, float) / np.asarray(n_tokens, float)
    n = len(per_doc)
    if n < 3:
        return math.nan, math.nan
    half = _t(1 - alpha / 2, n - 1) * per_doc.std(ddof=1) / math.sqrt(n)
    return math.exp(per_doc.mean() - half), math.exp(per_doc.mean() + half)
