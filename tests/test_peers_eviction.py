"""Peers for issues 3 and 4: kvpress StreamingLLM / SnapKV eviction (`optim.kv_press`) and
transformers' native sliding-window mask on the global layers (`optim.attn_native_sliding`)."""

import pytest
import torch
from torch import nn

from ollm_bench.evaluate.scoring import prefill, score_tail
from optim.attn_native_sliding import NativeSlidingWindowAttention
from optim.attn_sliding import SlidingSinkAttention
from optim.base import FullPrecisionKV, cache_nbytes

from .kv_helpers import tiny

pytest.importorskip("kvpress")
from optim.kv_press import EvictingLayer, KVPressPeer  # noqa: E402


def _ids(length=60, batch=1, seed=3):
    config, _ = tiny()
    return torch.randint(3, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def _score(method, ids, n_ctx, score_chunk):
    config, model = tiny()
    attach = getattr(method, "attach", None)
    if attach:
        attach(model)
    try:
        cache = method.make_cache(config)
        last = prefill(model, ids[:, :n_ctx], cache, chunk=8)
        nll, _ = score_tail(model, ids[:, n_ctx:], cache, last, score_chunk)
    finally:
        if attach:
            method.detach(model)
    return nll, cache


def test_kvpress_ratio_zero_equals_baseline():
    ids = _ids()
    base, _ = _score(FullPrecisionKV(), ids, 40, 8)
    same, cache = _score(KVPressPeer(compression_ratio=0.0), ids, 40, 8)
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == ids.shape[1]


@pytest.mark.parametrize("press", ["streaming_llm", "snapkv"])
def test_kvpress_evicts_global_layers_only_and_keeps_positions(press):
    config, _ = tiny()
    ids = _ids()
    method = KVPressPeer(press=press, compression_ratio=0.5, window_size=8)
    _, cache = _score(method, ids, 40, 8)
    for layer in cache.layers:
        if isinstance(layer, EvictingLayer):
            # kvpress keeps int(40 * 0.5) = 20 of the prefilled keys, then the 20 scored tokens append.
            assert layer.keys.shape[-2] == 20 + 20 and layer.evicted == 20
        else:
            assert layer.get_seq_length() == ids.shape[1]  # sliding layers: transformers' own window
    assert cache.get_seq_length() == ids.shape[1]  # next position = tokens seen, not tokens kept
    assert cache_nbytes(cache) < cache_nbytes(_score(FullPrecisionKV(), ids, 40, 8)[1])


@pytest.mark.parametrize("press", ["streaming_llm", "snapkv"])
def test_kvpress_chunked_scoring_equals_token_by_token(press):
    """After eviction a multi-token chunk must not see its own future: the mask offset is right."""
    ids = _ids(batch=2)
    method = KVPressPeer(press=press, compression_ratio=0.5, window_size=8)
    one, _ = _score(method, ids, 40, 1)
    chunked, _ = _score(method, ids, 40, 7)
    torch.testing.assert_close(chunked, one, rtol=1e-4, atol=1e-4)


def test_kvpress_heavy_eviction_moves_scores():
    ids = _ids()
    base, _ = _score(FullPrecisionKV(), ids, 40, 8)
    evicted, _ = _score(KVPressPeer(compression_ratio=0.9), ids, 40, 8)
    assert (evicted - base).abs().max() > 1e-3


def test_kvpress_bad_input():
    with pytest.raises(ValueError, match="unknown kvpress press"):
        KVPressPeer(press="h2o")
    with pytest.raises(ValueError, match="compression_ratio"):
        KVPressPeer(compression_ratio=1.0)


def test_native_sliding_equals_sinkless_window_and_detaches():
    """transformers' native window mask == our window+sinks mechanism with 0 sinks, exactly."""
    config, model = tiny()
    ids = _ids(length=41, batch=2)
    with torch.no_grad():
        ref = model(ids).logits
    native, ours = NativeSlidingWindowAttention(window_size=6), SlidingSinkAttention(window_size=6, sinks=0)
    outs = []
    for mech in (native, ours):
        mech.attach(model, seq_len=ids.shape[1])
        try:
            cache = FullPrecisionKV().make_cache(config)
            with torch.no_grad():
                outs.append(torch.cat([model(ids[:, s : s + 9], cache=cache, use_cache=True).logits
                                       for s in range(0, ids.shape[1], 9)], 1))
        finally:
            mech.detach(model)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    assert (outs[0] - ref).abs().max() > 1e-3  # the window changed something
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)  # detach restored the mask


def test_native_sliding_bad_input():
    _, model = tiny()
    with pytest.raises(ValueError, match="window"):
        NativeSlidingWindowAttention(window_size=0)
    with pytest.raises(ValueError, match="larger than the sequence"):
        NativeSlidingWindowAttention(window_size=64).attach(model, seq_len=32)
    with pytest.raises(ValueError, match="cannot swap the mask"):
        NativeSlidingWindowAttention(window_size=4).attach(nn.Linear(2, 2))


def test_peers_run_through_the_sweep(cli, tmp_path):
    """Both peers run from their YAML through the harness (hooks attached, one-shot prefill)."""
    from .conftest import TINY

    common = [*TINY, "content=prose", f"results_dir={tmp_path}", "suite_name=t", "runner.isolation=inline"]
    # 160 tokens: a 128-token context leaves SnapKV more than its 64-query observation window.
    cli("sweep", *common, "optim=kvpress_streaming,kvpress_snapkv", "seq_len=160", check=0)
    cli("sweep", *common, "optim=attn_native_sliding", "optim.method.window_size=16", check=0)
    import pandas as pd

    df = pd.read_csv(tmp_path / "t" / "runs.csv")
    assert set(df.optim) == {"kvpress_streaming", "kvpress_snapkv", "attn_native_sliding"}
    assert set(df.status) == {"ok"} and df.ppl.notna().all()
    evict = df[df.optim.str.startswith("kvpress")]
    # Half of each global layer's prefilled keys gone: fewer bytes than the fp32 baseline's 2.0x.
    assert (evict.kv_ratio < 2.0).all()


@pytest.mark.parametrize("press", ["streaming_llm", "snapkv"])
def test_kvpress_keeps_a_too_short_context_whole(press):
    """A 1-token context (lm-eval rolling windows) cannot be scored by kvpress: kept, not a crash."""
    ids = _ids()
    base, _ = _score(FullPrecisionKV(), ids, 1, 8)
    same, cache = _score(KVPressPeer(press=press, compression_ratio=0.5, window_size=8), ids, 1, 8)
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)
    assert all(getattr(layer, "evicted", 0) == 0 for layer in cache.layers)
