"""suite=quality's paired deltas: identical docs give zero loss; a worse method fails the gate."""

import math

import pytest

from ollm_bench.errors import ConfigError
from ollm_bench.quality import gate_verdict
from ollm_bench.task_suite import _aggregate, _per_doc, paired_delta


def test_per_doc_and_aggregate_match_lm_eval_conventions():
    samples = [{"doc_id": 0, "metrics": ["acc", "word_perplexity"], "acc": 1, "word_perplexity": (-10.0, 5)},
               {"doc_id": 1, "metrics": ["acc", "word_perplexity"], "acc": 0, "word_perplexity": (-20.0, 5)}]
    per = _per_doc(samples)
    assert per["acc"] == {0: 1.0, 1: 0.0}
    assert _aggregate("acc", list(per["acc"].values())) == 0.5
    assert _aggregate("word_perplexity", list(per["word_perplexity"].values())) == pytest.approx(math.exp(3.0))


def test_paired_delta_zero_for_identical_and_fails_for_broken():
    base = {i: float(i % 2) for i in range(40)}
    assert paired_delta("acc", base, base) == (0.0, 0.0, 0.0)
    broken = {i: 0.0 for i in range(40)}
    point, lo, hi = paired_delta("acc", broken, base)
    assert point == pytest.approx(50.0) and gate_verdict(lo / 100, hi / 100) == "fail"
    ppl_base = {i: [-100.0, 50] for i in range(10)}
    ppl_worse = {i: [-110.0, 50] for i in range(10)}
    point, lo, hi = paired_delta("word_perplexity", ppl_worse, ppl_base)
    assert point == pytest.approx(math.exp(0.2) - 1) and lo > 0.02
    with pytest.raises(ConfigError, match="no common documents"):
        paired_delta("acc", {0: 1.0}, {1: 1.0})
