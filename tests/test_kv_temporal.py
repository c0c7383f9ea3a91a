"""kv_temporal: age tiers 16 -> 8 -> 4 -> 2 bits; tokens move down as they age; bits by age reported."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ollm_bench.models import tiny_gemma3_config
from optim.base import cache_nbytes, plain_kv_bytes
from optim.kv_temporal import TemporalKV, TemporalKVLayer

from .kv_helpers import assert_batch_ops, assert_chunked_close, assert_generate_works, assert_layer_stream, both_layer_kinds

SCHED = ((8, 8), (4, 16), (2, None))


def test_tiers_age_and_bits_fall_with_age():
    layer = TemporalKVLayer(SCHED, block=4, value_group=8, residual=4)
    for _ in range(10):
        layer.update(torch.randn(1, 1, 5, 32), torch.randn(1, 1, 5, 32))
    rows = layer.bits_by_age()
    assert [r["tier"] for r in rows] == ["fp16", "tier0", "tier1", "tier2"]
    assert sum(r["tokens"] for r in rows) == 50 and rows[-1]["age_to"] == 50
    bits = [r["bits_per_element"] for r in rows]
    assert bits == sorted(bits, reverse=True) and bits[0] == 16.0
    # a block leaves tier i only once its youngest token reached the tier's age limit
    assert rows[1]["age_from"] >= 4 and rows[2]["age_from"] >= 8 and rows[3]["age_from"] >= 16
    assert layer.tiers[2]["k"]["codes"].shape[-1] == 8  # 2-bit: four codes per byte


def test_error_grows_with_age():
    layer = TemporalKVLayer(SCHED, block=4, value_group=8, residual=4)
    k, v = torch.randn(1, 1, 48, 32), torch.randn(1, 1, 48, 32)
    keys, _ = layer.update(k, v)
    err = (keys - k).abs().mean(dim=(0, 1, 3))
    assert err[-4:].max() < 1e-2  # 16-bit window
    assert err[:16].mean() > err[28:40].mean() > 0  # 2-bit oldest vs 8-bit younger


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(0, 13), min_size=1, max_size=6), batch=st.integers(1, 2), sliding=st.booleans())
def test_stream_lengths_and_error(chunks, batch, sliding):
    window = 16 if sliding else None
    layer = TemporalKVLayer(SCHED, block=4, value_group=8, residual=2, sliding_window=window)
    assert_layer_stream(layer, chunks, batch, 32, window, atol=2.5)


def test_chunked_forward_generate_and_batch_ops():
    method = TemporalKV(schedule=SCHED, block=4, value_group=8, residual=4)
    cache = assert_chunked_close(method, tol=0.3)
    assert TemporalKV.bits_by_age(cache)
    assert_generate_works(method, tol=0.3)
    assert_batch_ops(both_layer_kinds(lambda w: TemporalKVLayer(SCHED, 4, 8, 2, sliding_window=w)))


def test_bytes_target_on_gemma3_270m_geometry():
    """Default schedule on the real model's layer layout (18 layers, 15 sliding 512, head_dim 256), 8192 tokens.
    Random K/V: the byte count depends on shapes only."""
    config = tiny_gemma3_config(layers=18, sliding_window=512)
    config.layer_types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(18)]
    config.head_dim = 256
    cache = TemporalKV().make_cache(config)
    k = torch.randn(1, 1, 2048, 256)
    for _ in range(4):
        for layer in cache.layers:
            layer.update(k, k)
    assert cache_nbytes(cache) <= 0.25 * plain_kv_bytes(config, 8192)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule=((8, 8), (4, None), (2, 4))), "unlimited"),
        (dict(schedule=((8, 16), (4, 8), (2, None))), "increasing"),
        (dict(schedule=((3, None),), block=4, value_group=8, residual=0), "3-bit"),
        (dict(value_group=24, residual=4), "not divisible"),
        (dict(residual=20, value_group=8), "sliding window"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemporalKV(**kwargs).make_cache(tiny_gemma3_config(sliding_window=16))


def test_nan_raises():
    with pytest.raises(ValueError, match="NaN"):
        TemporalKVLayer(SCHED, 4, 8, 2).update(torch.randn(1, 1, 3, 32), torch.full((1, 1, 3, 32), float("nan")))
