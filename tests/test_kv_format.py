"""FormatKV: any of our layouts behind 16-bit recent and sink windows; sinks are held exactly."""

import pytest
import torch

from ollm_bench.models import build_random_model, tiny_gemma3_config, tiny_llama_config
from optim import FormatKV, cache_nbytes, plain_kv_bytes
from optim.kv_format import PreRopeSpecKVLayer
from optim.kv_quant import SpecKVLayer, decode
from optim.rope import RopeRotation


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


# --- keys quantized before RoPE (optim/rope.py) ---------------------------------------------------

@pytest.mark.parametrize("config", [tiny_llama_config(), tiny_gemma3_config(sliding_window=16)],
                         ids=["llama", "gemma3"])
def test_rope_rotation_is_the_models_own(config):
    """cos/sin rebuilt from the config equal the model's rotary embedding, per layer type."""
    model = build_random_model(config)
    emb = model.model.rotary_emb
    x = torch.zeros(1, 40, config.hidden_size)
    pos = torch.arange(5, 45)[None]
    kinds = sorted(set(getattr(config, "layer_types", None) or ["full_attention"]))
    for kind in kinds:
        cos, sin = emb(x, pos, kind) if len(kinds) > 1 else emb(x, pos)
        mine = RopeRotation.from_config(config, kind).cos_sin(5, 40, "cpu")
        assert torch.allclose(mine[0], cos[0], atol=1e-5) and torch.allclose(mine[1], sin[0], atol=1e-5), kind
    if len(kinds) > 1:  # Gemma-3's two layer types use different bases: a mix-up would show
        full, sliding = (RopeRotation.from_config(config, k).inv_freq for k in ("full_attention", "sliding_attention"))
        assert not torch.allclose(full, sliding)


def test_rope_inverse_undoes_rotation():
    rope = RopeRotation.from_config(tiny_llama_config())
    x = torch.randn(2, 3, 50, 64)
    assert torch.allclose(rope.rotate(rope.rotate(x, 17), 17, inverse=True), x, atol=1e-5)
    assert not torch.allclose(rope.rotate(x, 17), x, atol=1e-2)


def _rotated_constant_keys(rope, tokens: int):
    """Keys that are one vector before RoPE (channel outliers included), rotated to positions 0..T-1."""
    base = torch.randn(1, 2, 1, 64) * torch.linspace(0.2, 6.0, 64)  # per-channel magnitudes differ
    return rope.rotate(base.expand(1, 2, tokens, 64).contiguous(), 0), base


def test_pre_rope_keys_are_quantized_where_channels_are_narrow():
    """Keys constant before RoPE vary wildly per channel after it: quantized before RoPE they come back
    almost exactly (per-channel range ~0) through chunked prefill and decode, across several blocks;
    quantized after RoPE they do not. A wrong position on either side would break the first assert."""
    torch.manual_seed(0)
    rope = RopeRotation.from_config(tiny_llama_config())
    k, base = _rotated_constant_keys(rope, 300)
    v = torch.randn(1, 2, 300, 64)
    layers = {pre: (PreRopeSpecKVLayer(("channel", 2, 32), ("token", 4, 32), rope=rope, residual=16, sinks=4)
                    if pre else SpecKVLayer(("channel", 2, 32), ("token", 4, 32), residual=16, sinks=4))
              for pre in (True, False)}
    errors = {}
    for pre, layer in layers.items():
        for s, e in ((0, 101), (101, 250), *((t, t + 1) for t in range(250, 300))):  # prefill chunks, then decode
            keys, _ = layer.update(k[:, :, s:e], v[:, :, s:e])
        errors[pre] = (keys - k).abs().max().item()
        assert layer._store_len() >= 256
    stored = decode(layers[True].k_store, ("channel", 2, 32), torch.float32)  # what the store holds: pre-RoPE keys
    assert torch.allclose(stored, base.expand_as(stored), atol=0.02 * base.abs().max().item())
    assert errors[True] < 0.02 * k.abs().max().item()
    assert errors[False] > 10 * errors[True]


def test_pre_rope_sliding_layer_keeps_positions_after_dropping_blocks():
    rope = RopeRotation.from_config(tiny_llama_config())
    k, _ = _rotated_constant_keys(rope, 200)
    layer = PreRopeSpecKVLayer(("channel", 2, 16), ("token", 4, 32), rope=rope, residual=8, sliding_window=48)
    for t in range(0, 200, 5):
        keys, _ = layer.update(k[:, :, t : t + 5], torch.randn(1, 2, 5, 64))
    assert keys.shape[-2] == 47 + 5  # the window keeps 47 tokens; this update returns them and its own 5
    assert torch.allclose(keys, k[:, :, -keys.shape[-2]:], atol=0.02 * k.abs().max().item())


def test_pre_rope_format_runs_in_the_model_and_counts_the_same_bytes():
    model = build_random_model(tiny_llama_config(layers=2))
    ids = torch.randint(3, 250, (1, 400))
    caches = {pre: FormatKV(key=["channel", 4, 64], value=["token", 4, 64], key_pre_rope=pre).make_cache(model.config)
              for pre in (False, True)}
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        out = {pre: model(input_ids=ids, past_key_values=c, use_cache=True).logits for pre, c in caches.items()}
        step = {pre: model(input_ids=ids[:, :1], past_key_values=c, use_cache=True).logits for pre, c in caches.items()}
    assert cache_nbytes(caches[True]) == cache_nbytes(caches[False])
    assert isinstance(caches[True].layers[0], PreRopeSpecKVLayer)
    scale = ref.abs().max().item()
    assert (out[True] - ref).abs().max().item() < 0.05 * scale
    assert (step[True] - step[False]).abs().max().item() < 0.05 * scale


def test_dynamic_rope_is_refused():
    config = tiny_llama_config()
    config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(ValueError, match="changes with the sequence length"):
        FormatKV(key_pre_rope=True).make_cache(config)
