"""kv_mixed: int4 per-channel keys packed two per byte, fp8 per-token values, 16-bit recent window."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ollm_bench.models import tiny_gemma3_config
from optim.base import FullPrecisionKV, cache_nbytes
from optim.kv_mixed import MixedPrecisionKV, MixedPrecisionKVLayer

from .kv_helpers import assert_batch_ops, assert_chunked_close, assert_generate_works, assert_layer_stream, both_layer_kinds


def test_stored_dtypes_and_exact_bytes():
    layer = MixedPrecisionKVLayer(group_size=8, residual=4)
    layer.update(torch.randn(3, 2, 21, 32), torch.randn(3, 2, 21, 32))
    # 21 tokens, residual 4, group 8: 16 quantized (two key blocks), 5 in the 16-bit window
    assert layer.k_store["codes"].dtype == torch.uint8 and layer.k_store["codes"].shape == (3, 2, 16, 16)
    assert layer.v_store["codes"].dtype == torch.float8_e4m3fn and layer.v_store["codes"].shape == (3, 2, 16, 32)
    assert layer.res_k.dtype == torch.float16 and layer.res_k.shape == (3, 2, 5, 32)
    from transformers.cache_utils import Cache

    elems = 3 * 2 * 16 * 32
    expected = elems // 2 + 2 * 2 * (3 * 2 * 2 * 32)  # int4 keys + fp16 scale/zero per block+channel
    expected += elems + 2 * (3 * 2 * 16)  # fp8 values + fp16 scale per token
    expected += 2 * 2 * (3 * 2 * 5 * 32)  # 16-bit window, keys and values
    assert cache_nbytes(Cache(layers=[layer])) == expected


@settings(max_examples=20, deadline=None)
@given(
    chunks=st.lists(st.integers(0, 13), min_size=1, max_size=6),
    batch=st.integers(1, 3),
    residual=st.sampled_from([0, 1, 5]),
    sliding=st.booleans(),
)
def test_stream_lengths_and_error(chunks, batch, residual, sliding):
    window = 16 if sliding else None
    layer = MixedPrecisionKVLayer(group_size=4, residual=residual, sliding_window=window)
    # randn: int4 over 4 tokens and fp8 keep every element within ~1.0 of the input
    assert_layer_stream(layer, chunks, batch, 32, window, atol=1.0)
    if sliding:
        assert layer.stored_tokens() <= 15 + 3  # window - 1, plus at most one partly stale key block


def test_chunked_forward_close_and_bytes_shrink():
    cache = assert_chunked_close(MixedPrecisionKV(group_size=8, residual=0), tol=0.15)
    baseline = assert_chunked_close(FullPrecisionKV(), tol=1e-4)
    assert cache_nbytes(cache) < 0.6 * cache_nbytes(baseline)


def test_generate_works():
    assert_generate_works(MixedPrecisionKV(group_size=8))


def test_batch_ops_follow_the_batch():
    assert_batch_ops(both_layer_kinds(lambda w: MixedPrecisionKVLayer(4, 1, sliding_window=w)))


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda l: l.update(torch.randn(1, 1, 4, 32).double(), torch.randn(1, 1, 4, 32).double()), "dtype"),
        (lambda l: l.update(torch.randint(0, 3, (1, 1, 4, 32)), torch.randint(0, 3, (1, 1, 4, 32))), "dtype"),
        (lambda l: l.update(torch.full((1, 1, 4, 32), float("nan")), torch.randn(1, 1, 4, 32)), "NaN"),
        (lambda l: l.update(torch.randn(1, 1, 4, 32), torch.full((1, 1, 4, 32), float("inf"))), "NaN or Inf"),
        (lambda l: l.update(torch.randn(1, 1, 4, 33), torch.randn(1, 1, 4, 33)), "head_dim 33"),
    ],
)
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        bad(MixedPrecisionKVLayer(group_size=4))


def test_bad_config_raises():
    config = tiny_gemma3_config(sliding_window=16)
    with pytest.raises(ValueError, match="sliding window"):
        MixedPrecisionKV(residual=15).make_cache(config)
    with pytest.raises(ValueError, match="positive"):
        MixedPrecisionKV(group_size=0).make_cache(config)
    odd = tiny_gemma3_config()
    odd.head_dim = 31
    with pytest.raises(ValueError, match="head_dim 31"):
        MixedPrecisionKV().make_cache(odd)
