"""Chunked scoring through the cache equals one-shot scoring; a broken cache moves it."""

import pytest
import torch

from ollm_bench.evaluate.scoring import prefill, run_pass, score_tail
from ollm_bench.methods import build_method
from tests.broken_caches import ZeroValuesKV


def one_shot_nll(model, ids, score_tokens):
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return -logp[:, -score_tokens:].double().sum(1)


@pytest.mark.parametrize("prefill_chunk,score_chunk", [(7, 5), (16, 16), (64, 1), (200, 200)])
def test_chunked_baseline_equals_one_shot(tiny_model, prefill_chunk, score_chunk):
    torch.manual_seed(1)
    ids = torch.randint(3, 250, (2, 90))  # longer than the tiny sliding window (16)
    cache = build_method("baseline").make_cache(tiny_model.config)
    last = prefill(tiny_model, ids[:, :60], cache, prefill_chunk)
    nll, _ = score_tail(tiny_model, ids[:, 60:], cache, last, score_chunk)
    torch.testing.assert_close(nll, one_shot_nll(tiny_model, ids, 30), rtol=1e-5, atol=1e-4)


def test_broken_cache_moves_nll(tiny_model):
    ids = torch.randint(3, 250, (1, 80))
    base = run_pass(tiny_model, lambda: build_method("baseline").make_cache(tiny_model.config), ids, 40, 16, 8, 0)
    broken = run_pass(tiny_model, lambda: ZeroValuesKV().make_cache(tiny_model.config), ids, 40, 16, 8, 0)
    assert abs(broken.nll[0] - base.nll[0]) / base.nll[0] > 0.01


def test_int8_cache_is_in_the_loop(tiny_model):
    ids = torch.randint(3, 250, (1, 80))
    base = run_pass(tiny_model, lambda: build_method("baseline").make_cache(tiny_model.config), ids, 40, 16, 8, 0)
    int8 = run_pass(tiny_model, lambda: build_method("kv_int8").make_cache(tiny_model.config), ids, 40, 16, 8, 0)
    assert int8.nll[0] != base.nll[0]
    assert abs(int8.nll[0] - base.nll[0]) / base.nll[0] < 0.05


def test_run_pass_decodes_and_times(tiny_model):
    ids = torch.randint(3, 250, (1, 40))
    res = run_pass(tiny_model, lambda: build_method("kv_int8").make_cache(tiny_model.config), ids, 10, 16, 8, 4)
    assert len(res.decode_step_s) == 4 and all(t > 0 for t in res.decode_step_s)
    assert res.prefill_tokens == 30 and res.n_scored == 10
