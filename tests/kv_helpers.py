"""Shared checks for the KV-compression tests (tiny random Gemma-3-shaped models only)."""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ollm_bench.models import build_random_model, tiny_gemma3_config
from optim.base import build_layers


@functools.lru_cache(maxsize=None)
def tiny(layers: int = 4, window: int = 16):
    """(config, model) with 3 sliding layers (window 16) and 1 global layer, head_dim 32, 1 KV head."""
    config = tiny_gemma3_config(layers=layers, sliding_window=window)
    return config, build_random_model(config)


def chunked_logits(model, ids, cache, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(ids[:, s : s + chunk], cache=cache, use_cache=True).logits for s in range(0, ids.shape[1], chunk)], 1
        )


def assert_chunked_close(method, tol: float, length: int = 45, chunk: int = 7, batch: int = 2, seed: int = 0):
    """Chunked prefill through the method's cache stays close to a one-shot full-precision forward."""
    config, model = tiny()
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(ids).logits
    cache = method.make_cache(config)
    out = chunked_logits(model, ids, cache, chunk)
    err = (out - ref).abs().max().item()
    assert err <= tol * ref.abs().max().item(), f"max |logit diff| {err:.4f} vs scale {ref.abs().max():.3f}"
    assert cache.get_seq_length() == length
    return cache


def assert_generate_works(method, new_tokens: int = 12, tol: float = 0.1) -> float:
    """Greedy generate() runs with the cache (batch 2), and every token it picks is near-greedy for the
    full-precision model on the same prefix: max(logits) - logit(chosen) <= tol x the logit range.
    (Exact token agreement is a poor measure on a random model, whose top logits nearly tie.)"""
    config, model = tiny()
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(ids, cache=method.make_cache(config), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
        assert out.shape == (2, 9 + new_tokens)
        logits = model(out).logits[:, 8:-1]
    chosen = logits.gather(-1, out[:, 9:, None]).squeeze(-1)
    gap = (logits.amax(-1) - chosen).max().item()
    spread = (logits.amax(-1) - logits.amin(-1)).min().item()
    assert gap <= tol * spread, f"generate picked a token {gap:.3f} below the best (logit range {spread:.3f})"
    return gap


def reference_layer(window):
    return DynamicLayer() if window is None else DynamicSlidingWindowLayer(sliding_window=window)


def assert_layer_stream(layer, chunks, batch, head_dim, window, atol, seed=0):
    """Feed random chunks; each returned length matches `get_mask_sizes`, and values track a plain layer."""
    ref = reference_layer(window)
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for q in chunks:
        k = torch.randn(batch, 1, q, head_dim, generator=gen)
        v = torch.randn(batch, 1, q, head_dim, generator=gen)
        kv_len, _ = layer.get_mask_sizes(q)
        keys, values = layer.update(k, v)
        rk, rv = ref.update(k, v)
        total += q
        assert keys.shape == (batch, 1, kv_len, head_dim) == rk.shape
        assert values.shape == rv.shape
        assert torch.allclose(keys, rk, rtol=0, atol=atol) and torch.allclose(values, rv, rtol=0, atol=atol)
        assert layer.get_seq_length() == total
    return layer


def assert_batch_ops(cache, head_dim: int = 32):
    """reorder/repeat/select act on the batch axis of everything the layers store."""
    k, v = torch.randn(2, 1, 30, head_dim), torch.randn(2, 1, 30, head_dim)
    before = [layer.update(k, v) for layer in cache.layers]
    cache.reorder_cache(torch.tensor([1, 0]))
    after = [layer.update(k[:, :, :1], v[:, :, :1]) for layer in cache.layers]
    for (bk, bv), (ak, av) in zip(before, after):
        n = ak.shape[2] - 1
        assert torch.allclose(ak[0, :, :n], bk[1, :, -n:], atol=1e-5) and torch.allclose(av[1, :, :n], bv[0, :, -n:], atol=1e-5)
    cache.batch_repeat_interleave(2)
    assert all(layer.update(k[:1].repeat(4, 1, 1, 1)[:, :, :1], v[:1].repeat(4, 1, 1, 1)[:, :, :1])[0].shape[0] == 4 for layer in cache.layers)
    cache.batch_select_indices(torch.tensor([0, 3]))
    assert all(layer.update(k[:, :, :1], v[:, :, :1])[0].shape[0] == 2 for layer in cache.layers)


def both_layer_kinds(factory):
    """A one-global + one-sliding cache from a layer factory, through `build_layers`."""
    config = tiny_gemma3_config(layers=2, sliding_window=16)
    return build_layers(config, lambda: factory(None), lambda w: factory(w))
