"""kernel=triton end to end on tiny random models: the static store + fused decode kernel give the
torch path's logits, hybrid (Gemma-3 sliding rings) and all-global (Llama) alike; the graph
driver's step equals the ordinary forward, reads nothing back to the host, and reports bytes."""

from tests.triton_interp import relative_error  # noqa: I001  (sets up the interpreter first)

import pytest
import torch
from transformers import LlamaConfig
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from ollm_bench.models import build_random_model, tiny_gemma3_config
from optim import FullPrecisionKV, Int8KV, KiviKV, MixedPrecisionKV
from optim.base import cache_nbytes
from optim.kv_format import FormatKV
from optim.graph_decode import GraphDecoder, HostSyncError, forbid_host_sync
from optim.kv_mixed import MixedPrecisionKVLayer
from optim.static_kv_arena import cache_kwarg

METHODS = {  # small groups so a few dozen tokens fill several blocks
    "baseline": (FullPrecisionKV, {}),
    "kv_int8": (Int8KV, {}),
    "kv_mixed": (MixedPrecisionKV, {"group_size": 16}),
    "kv_kivi": (KiviKV, {"group_size": 16, "value_group": 16, "residual": 4}),
    # kv_k4v4's layout with its 4 sink tokens: the first prefill chunk fills the sinks.
    "kv_k4v4": (FormatKV, {"key": ["channel", 4, 16], "value": ["token", 4, 64], "residual": 4, "sinks": 4}),
}


@pytest.fixture(scope="module")
def llama():
    config = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=64, max_position_embeddings=256)
    return config, build_random_model(config)


@pytest.fixture(scope="module")
def gemma():
    config = tiny_gemma3_config(layers=3, sliding_window=16)
    config.head_dim = config.query_pre_attn_scalar = 64  # the fused kernels take head_dim 64/128/256
    return config, build_random_model(config)


def decode(model, method, cache, prompt, chunk, steps):
    """Chunked prefill, then greedy one-token steps; the steps' logits [B, steps, V]."""
    kw, outs = cache_kwarg(model), []
    method.attach(model)
    try:
        with torch.no_grad():
            for s in range(0, prompt.shape[1], chunk):
                logits = model(input_ids=prompt[:, s : s + chunk], use_cache=True, **{kw: cache}).logits
            for _ in range(steps):
                logits = model(input_ids=logits[:, -1:].argmax(-1), use_cache=True, **{kw: cache}).logits
                outs.append(logits)
    finally:
        method.detach(model)
    return torch.cat(outs, dim=1)


def prompt_for(config, batch=2, length=21, seed=0):
    return torch.randint(3, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(METHODS))
def test_triton_decode_matches_torch_path_llama(llama, name):
    config, model = llama
    cls, kwargs = METHODS[name]
    prompt = prompt_for(config)
    ref = decode(model, cls(**kwargs), cls(**kwargs).make_cache(config), prompt, 8, 6)
    method = cls(kernel="triton", **kwargs)
    got = decode(model, method, method.make_cache(config), prompt, 8, 6)
    # The baseline's static store is 16-bit where DynamicCache keeps the fp32 model's states.
    assert relative_error(got, ref) < (2e-3 if name == "baseline" else 1e-4)
    assert model.config._attn_implementation == "sdpa"  # detach restored it


class HalfSlidingLayer(DynamicSlidingWindowLayer):
    """transformers' sliding layer holding fp16-rounded states, as the static store's rings do."""

    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states.half().float(), value_states.half().float(), *args, **kwargs)


def test_triton_decode_matches_on_hybrid_gemma_past_the_window(gemma):
    """Global layer: kv_mixed; sliding layers: 16-bit rings, which wrap here (21 + 14 > 16)."""
    config, model = gemma
    prompt = prompt_for(config, length=21)
    ref_cache = Cache(layers=[MixedPrecisionKVLayer(16, 0) if t == "full_attention" else HalfSlidingLayer(16)
                              for t in config.layer_types])
    ref = decode(model, MixedPrecisionKV(), ref_cache, prompt, 7, 14)
    method = MixedPrecisionKV(group_size=16, kernel="triton")
    cache = method.make_cache(config)
    got = decode(model, method, cache, prompt, 7, 14)
    assert relative_error(got, ref) < 1e-4
    assert [layer.capacity for layer in cache.layers if layer.ring] == [16, 16]


def test_graph_driver_eager_step_equals_the_forward_and_never_syncs(llama):
    config, model = llama
    method = MixedPrecisionKV(group_size=16, kernel="triton")
    prompt = prompt_for(config, length=27)
    kw = cache_kwarg(model)
    method.attach(model)
    try:
        cache, ref_cache = method.make_cache(config), method.make_cache(config)
        driver = GraphDecoder(model, cache, check_sync=True)  # step under forbid_host_sync on CPU
        driver.reserve(40)
        logits = driver.prefill(prompt, chunk=8)
        with torch.no_grad():
            for s in range(0, 27, 8):
                model(input_ids=prompt[:, s : s + 8], use_cache=True, **{kw: ref_cache})
            nxt = logits[:, -1:].argmax(-1)
            for _ in range(6):  # crosses a block boundary at 32: the write kernel quantizes a block
                per_step = cache.bytes_per_step()
                got = driver.step(nxt).clone()
                ref = model(input_ids=nxt, use_cache=True, **{kw: ref_cache}).logits
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
                assert cache.filled_nbytes() == per_step  # the step read what it said it would
                nxt = got.argmax(-1)
        assert driver.positions.flatten().tolist() == [33, 33] == [cache.get_seq_length()] * 2
        with pytest.raises(ValueError, match="holds 1024 tokens"):
            cache.check_room(1024)
    finally:
        method.detach(model)


def test_host_sync_in_a_step_is_caught(llama):
    config, model = llama
    hook = model.model.layers[0].register_forward_hook(lambda mod, args, out: [out[0].sum().item()] and None)
    method = FullPrecisionKV(kernel="triton")
    method.attach(model)
    try:
        driver = GraphDecoder(model, method.make_cache(config), check_sync=True)
        driver.prefill(prompt_for(config, length=5))
        with pytest.raises(HostSyncError, match="item"):
            driver.step(torch.ones(2, 1, dtype=torch.long))
    finally:
        hook.remove()
        method.detach(model)
    with forbid_host_sync(), pytest.raises(HostSyncError):
        bool(torch.ones(1))
    assert bool(torch.ones(1))  # restored


def test_held_filled_and_reserved_bytes(llama):
    config, model = llama
    method = KiviKV(group_size=16, value_group=16, residual=4, kernel="triton")
    cache = method.make_cache(config)
    decode(model, method, cache, prompt_for(config, length=21), 21, 3)
    layer = cache.layers[0]
    held = sum(t.numel() * t.element_size() for la in cache.layers for t in la.store_tensors().values())
    held += sum(la.lengths.numel() * la.lengths.element_size() for la in cache.layers)
    assert cache_nbytes(cache) == held  # allocated capacity counts, filled or not
    # 24 tokens: blocks [0, 16) quantized, [16, 24) in the window, per layer, sequence and KV head.
    codes = 2 * 16 * (64 * 2 // 8)  # keys and values, 2 bits, head_dim 64
    scales = 2 * 64 * 2 + 2 * 16 * (64 // 16) * 2  # key scale/zero of one block; value scale/zero per token, group
    window = 2 * 8 * 64 * 2  # keys and values, 16 bits
    assert cache.filled_nbytes() == 2 * 2 * 2 * (codes + scales + window) == 2 * layer.filled_nbytes()
    assert cache.filled_nbytes() < cache_nbytes(cache) and layer.capacity == 1024
    before = [t.clone() for t in layer.store_tensors().values()]
    assert cache.reserve(3000) and layer.capacity == 3072 and not cache.reserve(100)
    for old, new in zip(before, layer.store_tensors().values()):
        assert torch.equal(new[:, :, : old.shape[2]], old)  # content kept across the reallocation
