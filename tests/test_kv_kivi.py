"""kv_kivi peer: 2-bit per-channel keys, 2-bit per-token values, 16-bit residual window."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import Cache

from ollm_bench.models import tiny_gemma3_config
from optim.base import cache_nbytes
from optim.kv_kivi import KiviKV, KiviKVLayer

from .kv_helpers import assert_batch_ops, assert_chunked_close, assert_generate_works, assert_layer_stream, both_layer_kinds


def test_two_bit_codes_are_a_quarter_byte():
    layer = KiviKVLayer(bits=2, group_size=8, value_group=8, residual=0)
    layer.update(torch.randn(2, 1, 16, 32), torch.randn(2, 1, 16, 32))
    assert layer.k_store["codes"].shape == (2, 1, 16, 8) and layer.v_store["codes"].shape == (2, 1, 16, 8)
    codes = 2 * (2 * 16 * 32) // 4
    scales = 2 * 2 * (2 * 2 * 32) + 2 * 2 * (2 * 16 * 4)  # keys: per block+channel; values: per token+group
    assert cache_nbytes(Cache(layers=[layer])) == codes + scales


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(0, 11), min_size=1, max_size=5), batch=st.integers(1, 3), sliding=st.booleans())
def test_stream_lengths_and_error(chunks, batch, sliding):
    window = 16 if sliding else None
    layer = KiviKVLayer(bits=2, group_size=4, value_group=8, residual=3, sliding_window=window)
    assert_layer_stream(layer, chunks, batch, 32, window, atol=2.5)  # 2-bit: half a step of a randn range


def test_chunked_forward_and_generate():
    assert_chunked_close(KiviKV(group_size=8, value_group=8, residual=4), tol=0.6)  # 2 bits: coarse by design
    assert_generate_works(KiviKV(group_size=8, value_group=8, residual=4), tol=0.3)


def test_batch_ops():
    assert_batch_ops(both_layer_kinds(lambda w: KiviKVLayer(2, 4, 8, 2, sliding_window=w)))


def test_bad_config_raises():
    config = tiny_gemma3_config(sliding_window=16)
    with pytest.raises(ValueError, match="not divisible by the value group size 24"):
        KiviKV(value_group=24).make_cache(config)
    with pytest.raises(ValueError, match="sliding window"):
        KiviKV(residual=128).make_cache(config)
    with pytest.raises(ValueError, match="3-bit"):
        KiviKV(bits=3, group_size=8, value_group=8, residual=0).make_cache(config)
