"""lm-eval with the cache in the loop: equals HFLM for the baseline, moves for a broken cache,
runs our offline tasks through `simple_evaluate`, and rejects bad task names and rows clearly."""

import json
import math
import os
import re

import pytest
import torch
from lm_eval.api.instance import Instance

from ollm_bench.errors import ConfigError
from ollm_bench.evaluate.lm_eval_model import CacheInLoopLM
from ollm_bench.methods import build_method
from tests.broken_caches import ZeroValuesKV
from tests.conftest import REPO
from tests.tiny_hf import byte_tokenizer

CONTEXT = "The quick brown fox jumps over the lazy"


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def hflm(tiny_model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=tiny_model, tokenizer=tokenizer, batch_size=1, max_length=64, device="cpu")


def ours(model, tokenizer, method="baseline", **kw):
    make = (ZeroValuesKV() if method == "zero_values" else build_method(method)).make_cache
    return CacheInLoopLM(model, tokenizer, make, **{"max_length": 64, "prefill_chunk": 7, "score_chunk": 5, **kw})


def ll_requests(greedy_tail: str = " eeee"):
    pairs = [(CONTEXT, " dog"), ("", "hello world"), ("a" * 90, " tail past max_length"), (CONTEXT, greedy_tail)]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def rolling_requests():
    doc = "A rolling document, long enough for several windows of sixty-four byte tokens. " * 3
    return [Instance("loglikelihood_rolling", {}, (doc,), 0), Instance("loglikelihood_rolling", {}, ("short",), 1)]


@pytest.mark.parametrize("prefill_chunk,score_chunk", [(7, 5), (1, 1), (512, 64)])
def test_loglikelihood_equals_hflm(tiny_model, tokenizer, hflm, prefill_chunk, score_chunk):
    lm = ours(tiny_model, tokenizer, prefill_chunk=prefill_chunk, score_chunk=score_chunk)
    greedy = lm.generate_until([Instance("generate_until", {}, (CONTEXT, {"until": ["\n"], "max_gen_toks": 4}), 0)])
    reqs = ll_requests(greedy[0])  # the last request is the model's own greedy continuation
    want, got = hflm.loglikelihood(reqs), lm.loglikelihood(reqs)
    for (w, wg), (g, gg) in zip(want, got):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-4)
        assert gg == wg
    assert got[-1][1] is True and got[0][1] is False  # both branches of is_greedy were exercised


def test_rolling_equals_hflm(tiny_model, tokenizer, hflm):
    lm = ours(tiny_model, tokenizer)
    want, got = hflm.loglikelihood_rolling(rolling_requests()), lm.loglikelihood_rolling(rolling_requests())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-3)


def test_generate_until_equals_hflm(tiny_model, tokenizer, hflm):
    lm = ours(tiny_model, tokenizer)
    reqs = [Instance("generate_until", {}, (CONTEXT, {"until": ["\n"], "max_gen_toks": 10}), 0),
            Instance("generate_until", {}, ("x" * 100, {"until": ["ee"], "max_gen_toks": 6}), 1)]
    assert lm.generate_until(reqs) == hflm.generate_until(reqs)


def test_broken_cache_moves_scores(tiny_model, tokenizer):
    base, broken = ours(tiny_model, tokenizer), ours(tiny_model, tokenizer, "zero_values")
    reqs = ll_requests()
    for (b, _), (z, _) in zip(base.loglikelihood(reqs)[:1], broken.loglikelihood(reqs)[:1]):
        assert abs(z - b) / abs(b) > 0.01
    b_roll, z_roll = base.loglikelihood_rolling(rolling_requests()), broken.loglikelihood_rolling(rolling_requests())
    assert abs(z_roll[0] - b_roll[0]) / abs(b_roll[0]) > 0.01


def test_int8_cache_is_in_the_loop(tiny_model, tokenizer):
    reqs = ll_requests()[:1]
    assert ours(tiny_model, tokenizer, "kv_int8").loglikelihood(reqs) != ours(tiny_model, tokenizer).loglikelihood(reqs)


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("ollm_cache") is CacheInLoopLM
    with pytest.raises(ConfigError, match="unknown optim"):
        CacheInLoopLM.create_from_arg_string("model=gemma3_270m,optim=no_such_method")


def test_simple_evaluate_runs_local_task_offline(tiny_model, tokenizer, monkeypatch):
    from ollm_bench.tasks import evaluate

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = ours(tiny_model, tokenizer, max_length=256, prefill_chunk=64, score_chunk=32)
    res = evaluate(lm, ["ollm_cloze_prose"], limit=2)["results"]["ollm_cloze_prose"]
    assert res["sample_len"] == 2
    # The task's numbers are our LM's own scores of its first two documents, aggregated by lm-eval.
    from ollm_bench.tasks import load_task_data

    docs = load_task_data("ollm_cloze_prose.jsonl")["test"].select(range(2))
    got = lm.loglikelihood([Instance("loglikelihood", {}, (d["context"], d["target"]), i) for i, d in enumerate(docs)])
    assert res["acc,none"] == pytest.approx(sum(g for _, g in got) / 2)
    assert res["perplexity,none"] == pytest.approx(math.exp(-sum(ll for ll, _ in got) / 2), rel=1e-6)


def test_unknown_task_is_one_clear_error(tiny_model, tokenizer):
    from ollm_bench.tasks import evaluate

    with pytest.raises(ConfigError, match=r"unknown task\(s\) \['ollm_nope'\]; offline tasks: .*ollm_niah_1k"):
        evaluate(ours(tiny_model, tokenizer), ["ollm_nope"], limit=1)


@pytest.mark.parametrize("bad,why", [('{"context": "ctx", "target": "no leading space"}', "field 'target'"),
                                     ("{not json", "not valid JSON"), ('["a list"]', "expected a JSON object")])
def test_task_file_with_bad_rows_is_one_clear_error(tiny_model, tokenizer, tmp_path, monkeypatch, bad, why):
    from ollm_bench.tasks import evaluate

    monkeypatch.setenv("OLLM_BENCH_TASK_DATA", str(tmp_path))
    good = json.dumps({"context": "Some context", "target": " word"})
    (tmp_path / "ollm_cloze_prose.jsonl").write_text(f"{good}\n{bad}\n")
    with pytest.raises(ConfigError, match=rf"ollm_cloze_prose.jsonl line 2: {why}"):
        evaluate(ours(tiny_model, tokenizer), ["ollm_cloze_prose"], limit=1)


WIKITEXT = os.environ.get("OLLM_BENCH_WIKITEXT") or str(REPO.parent / "shared" / "data" / "wikitext-2")


@pytest.mark.skipif(not os.path.exists(os.path.join(WIKITEXT, "test.txt")),
                    reason=f"no local WikiText-2 at {WIKITEXT} (set OLLM_BENCH_WIKITEXT to a folder with test.txt, valid.txt)")
def test_wikitext_task_scores_local_articles_as_lm_eval_does(tiny_model, tokenizer, monkeypatch):
    """The folder comes through task metadata (`--metadata wikitext_path=`); documents are articles;
    target, words and bytes follow lm-eval's own `wikitext` functions."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    from ollm_bench.tasks import TASK_DIR

    monkeypatch.delenv("OLLM_BENCH_WIKITEXT", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"wikitext_path": WIKITEXT})
    lm = ours(tiny_model, tokenizer, max_length=512, prefill_chunk=256, score_chunk=128)
    out = lm_eval.simple_evaluate(model=lm, tasks=["ollm_wikitext2"], task_manager=manager, limit=2, log_samples=True)
    first = out["samples"]["ollm_wikitext2"][0]
    page = first["doc"]["page"]
    assert re.match(r" = [^=].* = \n", page) and page.count("\n = ") > 0  # one article: title, then its sections
    assert first["target"] == wikitext_detokenizer(first["doc"])
    assert first["word_perplexity"][1] == len(re.split(r"\s+", page)) and first["bits_per_byte"][1] == len(page.encode())
    again = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (first["target"],), 0)])[0]
    assert first["word_perplexity"][0] == pytest.approx(again)
    res = out["results"]["ollm_wikitext2"]
    assert res["sample_len"] == 2 and res["bits_per_byte,none"] == pytest.approx(math.log2(res["byte_perplexity,none"]))


def test_wikitext_task_without_a_local_copy_is_one_clear_error(tiny_model, tokenizer, monkeypatch, tmp_path):
    from ollm_bench.tasks import evaluate

    monkeypatch.delenv("OLLM_BENCH_WIKITEXT", raising=False)
    with pytest.raises(ConfigError, match=r"reads a local WikiText-2: set \$OLLM_BENCH_WIKITEXT"):
        evaluate(ours(tiny_model, tokenizer), ["ollm_wikitext2"], limit=1)
    monkeypatch.setenv("OLLM_BENCH_WIKITEXT", str(tmp_path))
    with pytest.raises(ConfigError, match=r"ollm_wikitext2: .*no .*test.txt"):
        evaluate(ours(tiny_model, tokenizer), ["ollm_wikitext2"], limit=1)


def test_task_construction_is_deterministic_and_predictable():
    import re

    from ollm_bench.tasks.build import ROLLING_DOCS, build_cloze, build_rolling

    cloze = build_cloze()
    assert cloze == build_cloze() and len(cloze) >= 50
    for row in cloze:  # the selection rule: the target word occurs earlier in the passage
        assert re.search(rf"\b{re.escape(row['target'].strip())}\b", row["context"], re.IGNORECASE)
    rolling = build_rolling("structured")
    assert len(rolling) == ROLLING_DOCS and len({r["text"] for r in rolling}) == ROLLING_DOCS


@pytest.mark.integration
def test_real_gemma_matches_hflm_and_finds_a_needle(monkeypatch):
    """Gemma-3-270M: baseline through the cache equals HFLM; a 1k NIAH prompt runs end to end."""
    from ollm_bench.models import load_pretrained

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(2)
    # This CPU runs elementwise ops ~100x slower unless denormals flush to zero; with it the
    # test fits its 60 s budget. Restored below: it is a process-wide setting.
    torch.set_flush_denormal(True)
    try:
        _gemma_checks(load_pretrained("gemma3_270m"))
    finally:
        torch.set_flush_denormal(False)


def _gemma_checks(lm):
    from lm_eval.models.huggingface import HFLM

    from ollm_bench.tasks import evaluate

    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=1, device="cpu")
    mine = CacheInLoopLM(lm.model, lm.tokenizer, build_method("baseline").make_cache, prefill_chunk=512, score_chunk=4)
    reqs = [Instance("loglikelihood", {}, ("The capital of France is", " Paris"), 0),
            Instance("loglikelihood", {}, ("Paul Graham wrote essays about startups and", " programming languages"), 1)]
    want, got = hf.loglikelihood(reqs), mine.loglikelihood(reqs)
    assert [g for g, _ in got] == pytest.approx([w for w, _ in want], rel=1e-4, abs=1e-3)
    assert [g for _, g in got] == [w for _, w in want]
    res = evaluate(mine, ["ollm_niah_1k"], limit=1)["results"]["ollm_niah_1k"]
    assert res["sample_len"] == 1 and res["exact_match,none"] == 1.0, res  # it finds the needle


def test_route_is_called_per_request_with_its_context(tiny_model, tokenizer):
    """A content-aware router sees each request's own text and length before its cache is built."""
    seen = []
    lm = ours(tiny_model, tokenizer, route=lambda model, context_text, seq_len: seen.append((context_text, seq_len)))
    lm.loglikelihood([Instance("loglikelihood", {}, (CONTEXT, " dog"), 0),
                      Instance("loglikelihood", {}, ("short text", " x"), 1)])
    lm.generate_until([Instance("generate_until", {}, ("gen ctx", {"until": ["\n"], "max_gen_toks": 2}), 0)])
    texts = [t for t, _ in seen]
    assert len(seen) == 3 and any(CONTEXT in t and "dog" in t for t in texts) and any("short text" in t for t in texts)
    assert "gen ctx" in texts[-1] and all(n > 0 for _, n in seen)
    # The whole request counts: context + continuation, and for generation up to max_gen_toks more.
    assert seen[-1][1] == len(lm.tok_encode("gen ctx")) + 2
    seen.clear()
    lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("x" * 40,), 0)])
    assert seen and seen[0][1] > 30  # a rolling window: 1-token context, ~40 scored tokens
