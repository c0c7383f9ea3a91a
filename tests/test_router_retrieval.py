"""The router's task-level quality guard and its protection of retrieval requests, on synthetic
histories: no model runs (density and classification only)."""

import pytest

from ollm_bench.tasks.build import _niah_prompt, niah_needle
from optim.attention_router import AttentionRouter
from optim.content_samples import essay_files
from optim.quality_evidence import evidence, t_upper, wilson_upper

ESSAY = open(essay_files()[7], encoding="utf-8").read()[:12000]
NEEDLE, QUESTION = niah_needle("number", "Aurora", "482913")
NIAH = _niah_prompt(ESSAY, NEEDLE, 0.25, QUESTION)  # the needle task's own prompt format
SEQ = 3000  # tokens: every candidate's window fits, so only quality decides
KEY_DROPPERS = ("attn_sliding", "attn_sparse", "attn_multiscale", "attn_hybrid")


def teach(router, text, kind, mechanism, metric, losses, seq_len=SEQ):
    ctx = router.context(text, seq_len, kind=kind)
    for i, loss in enumerate(losses):
        router.observe(None, loss, mechanism=mechanism, context=ctx, metric=metric, source=f"synthetic:{i}")
    return ctx


def test_retrieval_request_is_detected_and_never_sent_to_a_key_dropper_without_proof():
    router = AttentionRouter(exploration=0.0)
    assert router.choose(NIAH, SEQ) == "attn_full"  # empty history: nothing is proven for retrieval
    assert router.last["context"]["kind"] == "retrieval" and router.last["context"]["kind_rule"] == "qa_scaffold"
    assert "unproven for retrieval requests: drops distant keys, no task-level quality measured" in router.explain()
    for mech in KEY_DROPPERS:  # tiny perplexity losses prove nothing about answering the question...
        teach(router, NIAH, None, mech, "perplexity", [0.001] * 50)
        teach(router, NIAH, None, mech, "exact_match", [0.0] * 10)  # ...nor do ten right answers
    assert router.choose(NIAH, SEQ) == "attn_full"
    assert "95% upper 27.8 pts" in router.explain()  # Wilson: 0 lost of 10 still allows 27.8 points
    # The same length of plain prose is no retrieval request: cheaper mechanisms stay in play there.
    assert router.choose(ESSAY, SEQ) == "attn_sliding"
    assert router.last["context"]["kind"] == "continuation"


def test_history_proving_a_mechanism_safe_for_retrieval_lets_the_router_use_it():
    router = AttentionRouter(exploration=0.0)
    teach(router, NIAH, None, "attn_sparse", "exact_match", [0.0] * 200)  # Wilson upper 1.9 pts <= 2
    teach(router, NIAH, None, "attn_sliding", "exact_match", [0.0] * 150)  # 2.5 pts: not yet proven
    assert router.choose(NIAH, SEQ) == "attn_sparse"
    assert "exact_match n=200 loss +0.0 pts (95% upper 1.9 pts, budget 2): proven" in router.explain()
    # What is proven for needles at this length says nothing for longer needles (another bucket).
    assert router.choose(NIAH, 9000) == "attn_full"


def test_task_level_loss_beyond_budget_excludes_even_with_small_perplexity_loss():
    router = AttentionRouter(exploration=0.0)
    teach(router, ESSAY, None, "attn_sliding", "perplexity", [0.001, 0.002, 0.0] * 4)  # well within 2 %
    assert router.choose(ESSAY, SEQ) == "attn_sliding"
    teach(router, ESSAY, None, "attn_sliding", "acc", [0.0] * 19 + [100.0])  # one cloze answer lost of 20
    assert router.choose(ESSAY, SEQ) != "attn_sliding"
    assert "excluded: acc loss 5.0 pts > budget 2 pts (n=20)" in router.explain()


def test_the_harness_can_declare_the_request_kind():
    router = AttentionRouter(exploration=0.0)
    assert router.choose(ESSAY, SEQ, kind="retrieval") == "attn_full"  # a task that knows it asks about the text
    assert router.choose(NIAH, SEQ, kind="continuation") == "attn_sliding"  # e.g. scoring the prompt's perplexity
    with pytest.raises(ValueError, match="request kind must be one of"):
        router.choose(NIAH, SEQ, kind="question")


def test_proven_only_requires_proof_for_every_kind_and_old_records_still_count():
    router = AttentionRouter(exploration=0.0, proven_only=True)
    assert router.choose(ESSAY, SEQ) == "attn_full"
    ctx = router.context(ESSAY, SEQ)
    # A record written before kinds and metrics were kept: continuation, perplexity.
    router.history.append({k: ctx[k] for k in ("content", "bucket", "device", "seq_len", "model")}
                          | {"mechanism": "attn_multiscale", "cost": None, "quality_loss": 0.003})
    assert router.choose(ESSAY, SEQ) == "attn_full"  # one observation proves nothing
    teach(router, ESSAY, None, "attn_multiscale", "perplexity", [0.004, 0.002, 0.005, 0.001])  # n = 5 with it
    assert router.choose(ESSAY, SEQ) == "attn_multiscale"
    assert "perplexity n=5 loss +0.30% (95% upper +0.50%, budget 2%): proven" in router.explain()
    assert router.choose(NIAH, SEQ) == "attn_full"  # continuation evidence does not clear retrieval


def test_evidence_intervals():
    assert wilson_upper(0, 189) <= 0.02 < wilson_upper(0, 188)  # 2 points need 189 clean requests
    assert wilson_upper(1, 10) == pytest.approx(0.4042, abs=1e-4) and wilson_upper(0, 0) == 1.0
    assert t_upper([0.01] * 5) == pytest.approx(0.01) and t_upper([0.01]) == float("inf")
    assert t_upper([0.0, 0.02]) == pytest.approx(0.01 + 12.706 * 0.01414 / 1.4142, rel=1e-3)
    e = evidence("exact_match", [0.0, -100.0, 0.0], 2.0, 5)  # a gained answer does not hide a lost one
    assert e.verdict == "unproven" and e.mean < 0
    assert evidence("perplexity", [0.03], 0.02, 5).verdict == "fails"
    assert evidence("perplexity", [0.01] * 5, 0.02, 5).verdict == "proven"
