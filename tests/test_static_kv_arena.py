"""StaticKVArena: same logits as DynamicCache (hybrid sliding layers included), static-mode decode,
one allocation, clear errors."""

import pytest
import torch
from transformers import DynamicCache

from ollm_bench.models import build_random_model, tiny_gemma3_config, tiny_llama_config
from optim.base import cache_nbytes
from optim.static_kv_arena import ArenaFullError, GraphedDecoder, StaticArenaKV, StaticKVArena, cache_kwarg

WINDOW = 8


def greedy(model, cache, prompt, chunks, steps, graphed=False):
    """Chunked prefill of `prompt`, then greedy decode; all logits concatenated along time."""
    kw, outs, start = cache_kwarg(model), [], 0
    with torch.no_grad():
        for size in chunks:
            logits = model(input_ids=prompt[:, start : start + size], use_cache=True, **{kw: cache}).logits
            outs.append(logits)
            start += size
        decoder = GraphedDecoder(model, cache) if graphed else None
        for _ in range(steps):
            nxt = outs[-1][:, -1:].argmax(-1)
            if decoder is not None:
                outs.append(decoder.step(nxt).clone())  # the step's output buffer is reused
            else:
                outs.append(model(input_ids=nxt, use_cache=True, **{kw: cache}).logits)
    return torch.cat(outs, dim=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~6x faster on one thread than on a shared, oversubscribed pair of cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gemma():
    config = tiny_gemma3_config(layers=4, sliding_window=WINDOW)
    return config, build_random_model(config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("graphed", [False, True], ids=["as-cache", "static-step"])
@pytest.mark.parametrize("chunks", [(6,), (5, 7, 13)], ids=["one-prefill", "chunks-past-window"])
def test_arena_matches_dynamic_cache_past_the_sliding_window(gemma, attn, graphed, chunks):
    config, model = gemma
    config._attn_implementation = attn
    prompt = torch.randint(3, config.vocab_size, (2, sum(chunks)), generator=torch.Generator().manual_seed(0))
    steps = 20  # decode ends well past the window of 8: the rings wrap several times
    ref = greedy(model, DynamicCache(config=config), prompt, chunks, steps)
    arena = StaticKVArena(config, max_cache_len=sum(chunks) + steps)
    got = greedy(model, arena, prompt, chunks, steps, graphed=graphed)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref[:, -steps:].argmax(-1).equal(got[:, -steps:].argmax(-1))
    assert arena.get_seq_length() == sum(chunks) + steps
    config._attn_implementation = "sdpa"


def test_all_global_model_uses_one_mask_and_matches():
    config = tiny_llama_config(layers=2)
    model = build_random_model(config)
    prompt = torch.randint(3, 200, (1, 9), generator=torch.Generator().manual_seed(1))
    ref = greedy(model, DynamicCache(config=config), prompt, (9,), 12)
    got = greedy(model, StaticKVArena(config, 21), prompt, (9,), 12, graphed=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_one_buffer_sized_for_max_length_and_sliding_rings(gemma):
    config, _ = gemma
    arena = StaticKVArena(config, max_cache_len=64, batch_size=2, dtype=torch.float16, device="cpu")
    heads, head_dim = config.num_key_value_heads, config.head_dim
    # 3 sliding layers hold a ring of WINDOW slots, the global layer all 64.
    expected = 2 * 2 * heads * head_dim * (3 * WINDOW + 64) * 2
    assert arena.nbytes == expected == cache_nbytes(arena)
    for layer in arena.layers:
        assert layer.keys.untyped_storage().data_ptr() == arena.buffer.untyped_storage().data_ptr()
        assert layer.keys.dtype == torch.float16 and layer.keys.shape[2] == (64 if not layer.is_sliding else WINDOW)


def test_decode_steps_allocate_no_kv_memory(gemma):
    config, model = gemma
    prompt = torch.randint(3, config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    arena = StaticKVArena(config, 40)
    decoder = GraphedDecoder(model, arena)
    logits = decoder.prefill(prompt)
    buffer_ptr = arena.buffer.data_ptr()
    key_ptrs = [layer.keys.data_ptr() for layer in arena.layers]
    nxt = logits[:, -1:].argmax(-1)
    for _ in range(15):
        nxt = decoder.step(nxt).argmax(-1)
    assert arena.buffer.data_ptr() == buffer_ptr
    assert [layer.keys.data_ptr() for layer in arena.layers] == key_ptrs


def test_asking_for_more_tokens_than_it_holds_is_a_clear_error(gemma):
    config, model = gemma
    kw = cache_kwarg(model)
    arena = StaticKVArena(config, max_cache_len=10)
    with torch.no_grad():
        model(input_ids=torch.ones(1, 8, dtype=torch.long), **{kw: arena})
        with pytest.raises(ArenaFullError, match="holds 10 tokens; 8 are stored and 5 more"):
            model(input_ids=torch.ones(1, 5, dtype=torch.long), **{kw: arena})
        assert arena.get_seq_length() == 8  # the refused chunk left nothing behind
        decoder = GraphedDecoder(model, arena)
        nxt = torch.ones(1, 1, dtype=torch.long)
        decoder.step(nxt), decoder.step(nxt)
        with pytest.raises(ArenaFullError):
            decoder.step(nxt)
    assert arena.get_seq_length() == 10


def test_bad_inputs_are_clear_errors(gemma):
    config, model = gemma
    with pytest.raises(ValueError, match="max_cache_len must be positive"):
        StaticKVArena(config, 0)
    arena = StaticKVArena(config, 16, batch_size=1, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="do not fit the arena"):
        model(input_ids=torch.ones(2, 3, dtype=torch.long), **{cache_kwarg(model): arena})
    decoder = GraphedDecoder(model, StaticKVArena(config, 16))
    with pytest.raises(RuntimeError, match="prefill"):
        decoder.step(torch.ones(1, 1, dtype=torch.long))


def test_kv_method_entry_and_reset(gemma):
    config, model = gemma
    cache = StaticArenaKV(max_cache_len=32).make_cache(config)
    assert isinstance(cache, StaticKVArena) and cache.max_cache_len == 32
    # Never sized past the model's context (4096 here; SmolLM2's 8192 against the registered 32768).
    assert StaticArenaKV(max_cache_len=32768).make_cache(tiny_llama_config()).max_cache_len == 4096
    prompt = torch.randint(3, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    kw = cache_kwarg(model)
    with torch.no_grad():
        first = model(input_ids=prompt, **{kw: cache}).logits
        cache.reset()
        assert cache.get_seq_length() == 0
        again = model(input_ids=prompt, **{kw: cache}).logits
    torch.testing.assert_close(first, again)
