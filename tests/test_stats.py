"""The paired statistics behind every quality verdict: interval, gate, power, and honesty at small n."""

import math

import numpy as np
import pytest

from ollm_bench.evaluate.stats import (docs_needed, flag_improvement, gate_verdict, paired_change, perplexity,
                                       ppl_interval)


def test_interval_is_the_paired_t_interval_exp_transformed():
    from scipy import stats

    rng = np.random.default_rng(0)
    base = rng.uniform(600, 900, 10)
    method = base + rng.normal(5, 3, 10)
    tokens = np.full(10, 256.0)
    ch = paired_change(method, base, tokens)
    d = (method - base) / tokens
    lo, hi = stats.t.interval(0.95, 9, loc=d.mean(), scale=stats.sem(d))
    assert ch.point == pytest.approx(math.expm1(d.mean()))
    assert (ch.low, ch.high) == pytest.approx((math.expm1(lo), math.expm1(hi)))
    assert ch.low < ch.point < ch.high and ch.n == 10


def test_identical_documents_give_exactly_zero_and_pass():
    nll = np.array([700.0, 810.0, 650.0, 720.0])
    ch = paired_change(nll, nll, np.full(4, 256.0))
    assert (ch.point, ch.low, ch.high) == (0.0, 0.0, 0.0) and ch.gate() == "pass"


def test_two_documents_give_no_interval_and_no_verdict():
    ch = paired_change([100.0, 120.0], [99.0, 118.0], [50, 50])
    assert math.isnan(ch.low) and math.isnan(ch.high) and ch.gate() == "inconclusive"


def test_coverage_is_honest_at_small_n():
    """Over many simulated cells with a known true change, the 95 % interval covers it ~95 % of
    the time at n = 5 (a percentile bootstrap covers far less there)."""
    rng = np.random.default_rng(1)
    true, n, hits, trials = 0.01, 5, 0, 2000
    for _ in range(trials):
        base = rng.uniform(500, 800, n)
        d = rng.normal(math.log1p(true), 0.01, n)
        ch = paired_change(base + 256 * d, base, np.full(n, 256.0))
        hits += ch.low <= true <= ch.high
    assert 0.93 <= hits / trials <= 0.97


def test_gate_goes_every_way():
    assert gate_verdict(-0.01, 0.015) == "pass"
    assert gate_verdict(0.03, 0.05) == "fail"
    assert gate_verdict(0.01, 0.03) == "inconclusive"
    assert gate_verdict(float("nan"), float("nan")) == "inconclusive"


def test_improvement_beyond_noise_is_flagged():
    assert flag_improvement(-0.001) and not flag_improvement(0.001) and not flag_improvement(float("nan"))


def test_mde_and_docs_needed_shrink_with_n():
    rng = np.random.default_rng(2)
    d = rng.normal(0.015, 0.01, 64)
    small = paired_change(256 * d[:8], np.zeros(8), np.full(8, 256.0))
    large = paired_change(256 * d, np.zeros(64), np.full(64, 256.0))
    assert large.mde < small.mde
    need = docs_needed(0.015, 0.01)
    assert need is not None and 10 < need < 200
    assert docs_needed(0.02, 0.01) is None  # a point on the margin can never be resolved
    assert docs_needed(0.015, 0.005) < need  # less spread, fewer documents


def test_perplexity_interval_brackets_the_corpus_value():
    nll = np.array([100.0, 120.0, 90.0, 110.0])
    n = np.full(4, 50.0)
    lo, hi = ppl_interval(nll, n)
    assert lo < perplexity(nll, n) < hi
