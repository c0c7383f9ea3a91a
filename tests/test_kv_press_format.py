"""A press and a format composed: the press evicts at the prefill, the kept tokens are stored in
the format, positions stay true, and every held byte is counted."""

import pytest
import torch

pytest.importorskip("kvpress")

from ollm_bench.methods import build_method  # noqa: E402
from ollm_bench.models import build_random_model, tiny_llama_config  # noqa: E402
from optim import cache_nbytes, plain_kv_bytes  # noqa: E402
from optim.kv_press_format import PressedSpecLayer  # noqa: E402


@pytest.fixture(scope="module")
def llama():
    config = tiny_llama_config()
    return config, build_random_model(config)


def run(model, method, ids, context):
    method.attach(model)
    try:
        cache = method.make_cache(model.config)
        with torch.inference_mode():
            model(input_ids=ids[:, :context], past_key_values=cache, use_cache=True)  # one-shot prefill
            logits = model(input_ids=ids[:, context:], past_key_values=cache, use_cache=True).logits
        return cache, logits
    finally:
        method.detach(model)


def test_kept_tokens_are_compressed_and_positions_stay_true(llama):
    config, model = llama
    ids = torch.randint(3, config.vocab_size, (1, 400), generator=torch.Generator().manual_seed(0))
    cache, logits = run(model, build_method("kv_snapkv_k4v4"), ids, 320)
    layers = [l for l in cache.layers if isinstance(l, PressedSpecLayer)]
    assert layers and all(l.inner is not None and l.keys is None for l in layers)
    assert all(l.evicted == 160 and l.get_seq_length() == 400 for l in layers)  # half of 320 evicted
    # Bytes: fewer than the press alone (16-bit kept tokens) and than the format alone (all tokens).
    press, _ = run(model, build_method("kvpress_snapkv"), ids, 320)
    fmt = build_method("kv_k4v4").make_cache(config)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=fmt, use_cache=True)
    assert cache_nbytes(cache) < min(cache_nbytes(press), cache_nbytes(fmt))
    assert cache_nbytes(cache) / plain_kv_bytes(config, 400) < 0.5


def test_scores_follow_the_press_within_quantization_noise(llama):
    config, model = llama
    ids = torch.randint(3, config.vocab_size, (1, 400), generator=torch.Generator().manual_seed(1))
    _, composed = run(model, build_method("kv_snapkv_k4v4"), ids, 320)
    _, press = run(model, build_method("kvpress_snapkv"), ids, 320)
    rel = ((composed - press).abs().max() / press.abs().max()).item()
    assert 0 < rel < 0.05  # the same kept tokens, quantized: close to the press, not equal


def test_sliding_layers_of_a_hybrid_model_are_stored_in_the_format():
    """On a hybrid model the sliding windows are most of the cache (Gemma-3: 15 of 18 layers): the
    composed method stores them in its layout too, so it holds fewer bytes than the format alone."""
    from ollm_bench.models import tiny_gemma3_config

    config = tiny_gemma3_config(layers=4, sliding_window=256)
    model = build_random_model(config)
    ids = torch.randint(3, config.vocab_size, (1, 400), generator=torch.Generator().manual_seed(2))
    value = ["token", 4, 32]  # head_dim 32: one value group per token
    cache, logits = run(model, build_method("kv_snapkv_k4v4", value=value), ids, 320)
    assert torch.isfinite(logits).all()
    fmt = build_method("kv_k4v4", value=value).make_cache(config)
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=fmt, use_cache=True)
    assert cache_nbytes(cache) < cache_nbytes(fmt) < plain_kv_bytes(config, 400)
