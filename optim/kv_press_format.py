"""A KV format combined with an eviction press: kvpress decides which prefilled tokens to keep, our
format stores the kept ones compressed (`kvpress_snapkv` keeps half of the tokens in 16 bits;
this keeps half of them in, say, int4 keys and int4 values: about a quarter of kv_k4v4's bytes
for the evicted half, on top of its compression). No peer combines the two.

How it runs, per global layer (the press scores global layers only, as in `optim/kv_press.py`; a
sliding layer keeps its own window, stored in the same layout, since on a hybrid model the windows
are most of the cache: 15 of Gemma-3-270M's 18 layers):
1. the one-shot prefill stores the context in 16 bits (an `EvictingLayer`), so kvpress's own
   forward hook scores and prunes it exactly as in the `kvpress_*` peers;
2. at the layer's next update (the first token after the prefill) the kept keys and values move
   into a `SpecKVLayer` of the chosen layout (quantized on the way, recent and sink windows in 16
   bits), and every later token goes there;
3. positions stay true: the layer reports the tokens *seen* (kept + evicted), and the kept keys
   stand in for positions [evicted, seen), as `EvictingLayer` does.
Bytes are every tensor the inner layer holds (`cache_nbytes` walks nested layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import build_layers
from .kv_press import EvictingLayer, KVPressPeer
from .kv_quant import SpecKVLayer, check_spec


class PressedSpecLayer(EvictingLayer):
    """16 bits through the prefill (for the press), then the kept tokens in a compressed layout."""

    def __init__(self, key_spec: tuple, value_spec: tuple, residual: int, sinks: int):
        super().__init__()
        self.spec_args = (tuple(key_spec), tuple(value_spec), residual, sinks)
        self.inner: SpecKVLayer | None = None

    def _compress_kept(self) -> None:
        key_spec, value_spec, residual, sinks = self.spec_args
        self.inner = SpecKVLayer(key_spec, value_spec, residual=residual, sinks=sinks, name="kv_press_format")
        self.inner.update(self.keys, self.values)
        self.keys = self.values = None  # the 16-bit copy is gone: the inner layer holds the tokens

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.inner is None and self.keys is not None:
            self._compress_kept()
        if self.inner is None:  # the prefill: plain 16-bit storage the press can prune
            return super().update(key_states, value_states, *args, **kwargs)
        return self.inner.update(key_states, value_states)

    def _held(self) -> int:
        if self.inner is not None:
            return self.inner.get_seq_length()
        return 0 if self.keys is None else self.keys.shape[-2]

    def get_seq_length(self) -> int:
        return self._held() + self.evicted

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):
            query_length = query_length.shape[0]
        return self._held() + query_length, self.evicted

    def reset(self) -> None:
        super().reset()
        self.inner = None


@dataclass
class PressedFormatKV(KVPressPeer):
    """kvpress `press` (streaming_llm | snapkv) evicting `compression_ratio` of each global layer's
    prefill, the kept tokens stored as `key`/`value` layouts behind `residual`/`sinks` 16-bit windows."""

    key: list = field(default_factory=lambda: ["channel", 4, 64])
    value: list = field(default_factory=lambda: ["token", 4, 64])
    residual: int = 128
    sinks: int = 4

    def __post_init__(self):
        super().__post_init__()
        self.key, self.value = tuple(self.key), tuple(self.value)

    def make_cache(self, config):
        from .base import kv_geometry

        _, head_dim = kv_geometry(config)
        for spec in (self.key, self.value):
            check_spec(spec, head_dim, "kv_press_format")
        args = (self.key, self.value, self.residual, self.sinks)
        cache = build_layers(config, lambda: PressedSpecLayer(*args),
                             lambda w: SpecKVLayer(self.key, self.value, residual=self.residual, sliding_window=w,
                                                   name="kv_press_format", sinks=self.sinks))
        cache.one_shot_prefill = True
        return cache

    def _hook(self, module, args, kwargs, output):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layer = None if cache is None else cache.layers[module.layer_idx]
        if isinstance(layer, PressedSpecLayer) and layer.inner is not None:
            return output  # past the prefill: the press has done its one eviction
        return super()._hook(module, args, kwargs, output)

    def stats(self, cache) -> dict:
        layers = [layer for layer in cache.layers if isinstance(layer, PressedSpecLayer) and layer.is_initialized]
        return {"kept_tokens": [layer._held() for layer in layers],
                "seen_tokens": [layer.get_seq_length() for layer in layers]}
