"""What the router learns from stored calibration results (ollm_bench/evaluate/router_calibration.py),
on hand-built entries: no model runs."""

import math

import pytest

from ollm_bench.evaluate.router_calibration import history_records, request_loss, teach
from optim.attention_router import AttentionRouter
from optim.content_samples import essay_files

PROSE = open(essay_files()[5], encoding="utf-8").read()[:4000]


def test_request_loss_units():
    assert request_loss("exact_match", 1.0, 0.0) == 100.0 and request_loss("acc", 0.0, 1.0) == -100.0
    assert request_loss("word_perplexity", [-100.0, 50], [-101.0, 50]) == pytest.approx(math.exp(0.02) - 1)
    assert request_loss("perplexity", -2.0, -2.5) == pytest.approx(math.exp(0.5) - 1)


def entry(mech, task, per_doc, ctx):
    return {"optim": mech, "task": task, "per_doc": per_doc, "contexts": {str(d): ctx for d in range(6)}}


def test_router_learns_only_the_calibration_measurements_it_is_given(tmp_path):
    router = AttentionRouter(exploration=0.0, proven_only=True, history_path=str(tmp_path / "h.json"))
    ctx = router.context(PROSE, 1000)
    task = "ollm_rolling_prose_calibration"
    full = {"word_perplexity": {d: [-1000.0, 200] for d in range(6)}}
    entries = [
        entry("attn_full", task, full, ctx),
        entry("attn_sliding", task, {"word_perplexity": {d: [-1010.0, 200] for d in range(6)}}, ctx),  # +5.1 %
        entry("attn_multiscale", task, {"word_perplexity": {d: [-1000.6 - 0.1 * d, 200] for d in range(6)}}, ctx),
        entry("attn_sparse", task, {"word_perplexity": {0: [-1000.1, 200]}}, ctx),  # one request: unproven
    ]
    records = history_records(entries, router.candidates, n=5)
    assert {r["source"] for r in records} == {f"{task}:{d}" for d in range(5)} | {f"{task}:0"}  # doc 5 is beyond n
    digest = teach(router, entries, n=5)
    assert len(router.history) == len(records) == 11 and digest == teach(router, entries, n=5)
    assert AttentionRouter(history_path=str(tmp_path / "h.json")).history == router.history  # saved
    assert router.choose(PROSE, 1000) == "attn_multiscale"  # proven within 2 %; sliding excluded; sparse unproven
    text = router.explain()
    assert "excluded: quality loss 5.13% > budget 2.00% (word_perplexity, n=5)" in text
    assert "word_perplexity n=1" in text and "unproven" in text
    # A retrieval request of the same text and length learned nothing from perplexity: full attention.
    assert router.choose(PROSE, 1000, kind="retrieval") == "attn_full"
