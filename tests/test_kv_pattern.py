"""kv_pattern: repeated value rows stored once (fp8 pool + int32 index), keys as kv_mixed."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import Cache

from ollm_bench.models import tiny_gemma3_config
from optim.base import cache_nbytes
from optim.kv_mixed import MixedPrecisionKVLayer
from optim.kv_pattern import PatternAwareKV, PatternAwareKVLayer

from .kv_helpers import assert_batch_ops, assert_chunked_close, assert_generate_works, assert_layer_stream, both_layer_kinds


def _repetitive(batch=2, unique=4, repeats=8, d=32):
    rows = torch.randn(batch, 1, unique, d)
    return rows.repeat(1, 1, repeats, 1)


def test_exact_repeats_stored_once_and_lossless_vs_fp8():
    v = _repetitive()
    k = torch.randn_like(v)
    layer, plain = PatternAwareKVLayer(group_size=8), MixedPrecisionKVLayer(group_size=8)
    _, vals = layer.update(k, v)
    _, plain_vals = plain.update(k, v)
    assert torch.equal(vals, plain_vals)  # dedup adds no error on top of the fp8 storage
    assert layer.v_pool["codes"].shape == (8, 32) and layer.v_index.dtype == torch.int32
    assert layer.rows_seen == 64 and layer.rows_added == 8
    stats = PatternAwareKV.dedup_stats(Cache(layers=[layer]))
    assert stats["dedup_ratio"] == pytest.approx(1 - 8 / 64)
    assert cache_nbytes(Cache(layers=[layer])) < 0.7 * cache_nbytes(Cache(layers=[plain]))


def test_random_rows_find_nothing_and_cost_little():
    k, v = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    layer, plain = PatternAwareKVLayer(group_size=8), MixedPrecisionKVLayer(group_size=8)
    layer.update(k, v)
    plain.update(k, v)
    assert layer.rows_added == layer.rows_seen == 64
    # per row: int32 index + int64 signature on top of the fp8 row and its scale
    assert cache_nbytes(Cache(layers=[layer])) - cache_nbytes(Cache(layers=[plain])) == 64 * (4 + 8)


def test_near_duplicates_need_tolerance():
    base = torch.randn(1, 1, 1, 32)
    v = base + 1e-3 * torch.randn(1, 1, 16, 32)
    exact, near = PatternAwareKVLayer(group_size=8), PatternAwareKVLayer(group_size=8, tolerance=0.05)
    exact.update(torch.randn_like(v), v)
    _, vals = near.update(torch.randn_like(v), v)
    assert near.rows_added < exact.rows_added
    assert ((vals - v).abs() <= 0.05 * v.abs().amax(-1, keepdim=True) + v.abs() / 16).all()


def test_sliding_layer_compacts_its_pool():
    layer = PatternAwareKVLayer(group_size=4, sliding_window=16)
    for _ in range(60):
        layer.update(torch.randn(1, 1, 4, 32), torch.randn(1, 1, 4, 32))
    assert layer.v_pool["codes"].shape[0] <= 2 * layer.v_index.numel() + 64


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(0, 13), min_size=1, max_size=6), batch=st.integers(1, 3), sliding=st.booleans())
def test_stream_lengths_and_error(chunks, batch, sliding):
    window = 16 if sliding else None
    assert_layer_stream(PatternAwareKVLayer(4, 1, sliding_window=window), chunks, batch, 32, window, atol=1.0)


def test_chunked_forward_generate_batch_ops_and_repetitive_text():
    method = PatternAwareKV(group_size=8)
    assert_chunked_close(method, tol=0.15)
    assert_generate_works(method)
    assert_batch_ops(both_layer_kinds(lambda w: PatternAwareKVLayer(4, 1, sliding_window=w)))
    # repeated tokens give identical first-layer values (a value depends on the token alone there)
    from .kv_helpers import chunked_logits, tiny

    config, model = tiny()
    cache = method.make_cache(config)
    chunked_logits(model, torch.tensor([[5, 6, 7, 8] * 16]), cache, 16)
    assert PatternAwareKV.dedup_stats(cache)["layers"][0]["dedup_ratio"] >= 0.9


def test_bad_input_raises():
    with pytest.raises(ValueError, match="tolerance"):
        PatternAwareKV(tolerance=0.7).make_cache(tiny_gemma3_config())
    with pytest.raises(ValueError, match="NaN"):
        PatternAwareKVLayer(4).update(torch.randn(1, 1, 4, 32), torch.full((1, 1, 4, 32), float("inf")))
