"""FormatKV: any of our layouts behind 16-bit recent and sink windows; sinks are held exactly."""

import pytest
import torch

from ollm_bench.models import build_random_model, tiny_llama_config
from optim import FormatKV, cache_nbytes, plain_kv_bytes
from optim.kv_quant import SpecKVLayer


def test_sinks_and_recent_window_are_returned_exactly_and_counted():
    layer = SpecKVLayer(("channel", 4, 16), ("token", 2, 16), residual=8, sinks=4, name="t")
    k, v = torch.randn(1, 2, 100, 32), torch.randn(1, 2, 100, 32)
    keys, values = layer.update(k, v)
    assert keys.shape[-2] == 100
    assert torch.equal(keys[:, :, :4], k[:, :, :4].half().float())  # sinks: 16 bits, never quantized
    assert torch.equal(values[:, :, -8:], v[:, :, -8:].half().float())  # the recent window too
    assert not torch.equal(keys[:, :, 4:-8], k[:, :, 4:-8].half().float())  # the rest is compressed
    assert layer.sink_k.shape[-2] == 4 and layer.stored_tokens() == 100


def test_sinks_split_across_chunks_equal_one_update():
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 90, 32), torch.randn(1, 2, 90, 32)
    one = SpecKVLayer(("channel", 4, 16), ("token", 4, 16), residual=16, sinks=4)
    many = SpecKVLayer(("channel", 4, 16), ("token", 4, 16), residual=16, sinks=4)
    whole = one.update(k, v)
    for s in range(0, 90, 3):  # the first chunk holds only part of the sinks
        last = many.update(k[:, :, s : s + 3], v[:, :, s : s + 3])
    assert torch.allclose(whole[0], last[0]) and torch.allclose(whole[1], last[1])


def test_bytes_follow_the_layout_with_every_window_and_scale():
    model = build_random_model(tiny_llama_config(layers=2))
    cache = FormatKV(key=["channel", 4, 64], value=["token", 2, 32], residual=128, sinks=4).make_cache(model.config)
    with torch.inference_mode():
        model(input_ids=torch.randint(3, 250, (1, 1092)), past_key_values=cache, use_cache=True)
    heads, dim, layers = 2, 64, 2
    store = 1092 - 128 - 4  # 960 tokens: 15 whole key blocks
    per_layer = (store * dim // 2 + 2 * 2 * (store // 64) * dim  # int4 keys + fp16 scale/zero per block x channel
                 + store * dim // 4 + 2 * 2 * store * (dim // 32)  # 2-bit values + fp16 scale/zero per group
                 + 2 * 2 * 132 * dim)  # 16-bit K and V of the recent and sink windows
    assert cache_nbytes(cache) == layers * heads * per_layer
    assert cache_nbytes(cache) / plain_kv_bytes(model.config, 1092) < 0.35


def test_keys_less_precise_than_values_are_refused():
    with pytest.raises(ValueError, match="keys need at least"):
        FormatKV(key=["channel", 2, 32], value=["token", 4, 64])
