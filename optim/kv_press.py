"""Peers from NVIDIA's `kvpress`: StreamingLLM and SnapKV token eviction (`kvpress_streaming`,
`kvpress_snapkv`).

kvpress compresses once, after a one-shot prefill of the context: a forward hook on each attention
module scores the prefilled keys and keeps the top `1 - compression_ratio` of them (StreamingLLM:
the first `n_sink` tokens and the most recent ones; SnapKV: the keys the last `window_size` queries
attend to most). We run kvpress's own presses and hook (`press.forward_hook`); what is ours is the
glue that kvpress 0.5.5 (written for transformers < 5.3) needs under transformers 5.2x:

* the attention kwargs are renamed back (`cache` -> `past_key_values`, `cache_position` from
  `position_ids`), so kvpress's prefill test `cache_position[-1] + 1 == q_len` holds for a one-shot
  prefill from position 0 and for nothing after it;
* `EvictingLayer` remembers how many tokens were evicted, so `get_seq_length()` stays the number of
  tokens *seen* (the next token's position) and `get_mask_sizes` offsets the kept keys the way
  transformers' own sliding-window layer does. Without this, positions after eviction restart
  too early and a multi-token chunk after the prefill would see its own future (kvpress's pipeline
  avoids both by passing `position_ids` and decoding one token at a time);
* as kvpress does for Gemma-3, only global layers are compressed; sliding-window layers keep their
  own 512-token window. On a full-attention model (SmolLM2) that is every layer.

The cache advertises `one_shot_prefill = True`: a harness that normally prefills in chunks must
prefill this cache in one forward, or the press would never fire (or fire on the first chunk only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import DynamicLayer, DynamicSlidingWindowLayer, KVCacheMethod, build_layers, layer_specs

PRESSES = ("streaming_llm", "snapkv")


class EvictingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values a press may shrink; tracks the evicted count."""

    def __init__(self):
        super().__init__()
        self.evicted = 0

    def get_seq_length(self) -> int:
        return super().get_seq_length() + self.evicted

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # transformers < 5.2x passes cache_position
            query_length = query_length.shape[0]
        stored = super().get_seq_length()  # tokens held; ours adds the evicted ones
        # The kept keys stand in for positions [evicted, seen): all before any new query, so a
        # causal mask over absolute positions is exact for them and for the new tokens.
        return stored + query_length, self.evicted

    def reset(self) -> None:
        super().reset()
        self.evicted = 0


def _press(name: str, compression_ratio: float, **kwargs):
    try:
        from kvpress import SnapKVPress, StreamingLLMPress
    except ImportError as exc:  # kvpress pins transformers<5.3; install.sh installs it --no-deps
        raise ImportError(
            "kvpress peers need the kvpress package: pip install --no-deps kvpress==0.5.5 'cachetools<6'"
        ) from exc
    if name == "streaming_llm":
        return StreamingLLMPress(compression_ratio=compression_ratio, n_sink=kwargs.get("n_sink", 4))
    return SnapKVPress(compression_ratio=compression_ratio, window_size=kwargs.get("window_size", 64),
                       kernel_size=kwargs.get("kernel_size", 5))


@dataclass
class KVPressPeer(KVCacheMethod):
    """kvpress `press` (streaming_llm | snapkv) evicting `compression_ratio` of each global layer's
    prefilled keys. `attach(model)` hooks the model; `make_cache(config)` builds the evicting cache."""

    press: str = "streaming_llm"
    compression_ratio: float = 0.5
    n_sink: int = 4  # streaming_llm
    window_size: int = 64  # snapkv: queries whose attention scores the keys
    kernel_size: int = 5  # snapkv: pooling of those scores
    _hooks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.press not in PRESSES:
            raise ValueError(f"unknown kvpress press {self.press!r}; known: {PRESSES}")
        if not 0.0 <= float(self.compression_ratio) < 1.0:
            raise ValueError(f"compression_ratio must be in [0, 1), got {self.compression_ratio!r}")
        self._press = None  # built on first attach: importing kvpress patches transformers' attention table

    def _kvpress(self):
        if self._press is None:
            self._press = _press(self.press, float(self.compression_ratio), n_sink=self.n_sink,
                                 window_size=self.window_size, kernel_size=self.kernel_size)
        return self._press

    def make_cache(self, config):
        cache = build_layers(config, EvictingLayer, lambda w: DynamicSlidingWindowLayer(sliding_window=w))
        cache.one_shot_prefill = True
        return cache

    def _hook(self, module, args, kwargs, output):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or not isinstance(cache.layers[module.layer_idx], EvictingLayer):
            return output
        layer = cache.layers[module.layer_idx]
        kw = dict(kwargs, past_key_values=cache)
        if "cache_position" not in kw:
            kw["cache_position"] = kw["position_ids"][0]
        before = layer.keys.shape[-2]
        # kvpress asserts on contexts it cannot score (<= n_sink tokens; <= SnapKV's window): such a
        # short prefill is kept whole. So a request whose context is ~1 token (lm-eval rolling
        # perplexity) is scored exactly as the baseline: prefill-only presses compress context only.
        shortest = self.n_sink if self.press == "streaming_llm" else self.window_size
        if kwargs["hidden_states"].shape[1] <= shortest:
            return output
        output = self._kvpress().forward_hook(module, args, kw, output)
        layer.evicted += before - layer.keys.shape[-2]
        return output

    def attach(self, model, context_text: str | None = None, seq_len: int | None = None) -> None:
        if self._hooks.get(id(model)):
            return
        self._kvpress()
        base = getattr(model, "model", model)
        base = getattr(base, "language_model", base)
        layers = getattr(base, "layers", None)
        if layers is None:
            raise ValueError(f"kvpress_{self.press}: cannot find decoder layers on {type(model).__name__}")
        specs = layer_specs(model.config)
        self._hooks[id(model)] = [
            layer.self_attn.register_forward_hook(self._hook, with_kwargs=True)
            for layer, spec in zip(layers, specs)
            if spec.sliding_window is None
        ]

    def detach(self, model) -> None:
        for handle in self._hooks.pop(id(model), []):
            handle.remove()

    def stats(self, cache) -> dict:
        layers = [layer for layer in cache.layers if isinstance(layer, EvictingLayer) and layer.is_initialized]
        return {"kept_tokens": [layer.keys.shape[-2] for layer in layers],
                "seen_tokens": [layer.get_seq_length() for layer in layers]}


__all__ = ["EvictingLayer", "KVPressPeer", "PRESSES"]
