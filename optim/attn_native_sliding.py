"""Peer `attn_native_sliding`: transformers' own sliding-window attention on the global layers.

Mistral-style models get a sliding window from `config.sliding_window`: transformers builds the
mask with `masking_utils.create_sliding_window_causal_mask` (a query sees the `window` most recent
keys, itself included, and nothing else: no attention sinks) and SDPA/flash run it. This peer
applies that same native mask to the layers a model runs with full attention, by routing the
model's `create_causal_mask` call (the one its forward makes for "full_attention" layers) to
`create_sliding_window_causal_mask` with our window, sized against a full-attention cache layer.

Why not simply set `config.layer_types` to all "sliding_attention"? On Gemma-3 the layer type also
picks the RoPE base (10k local vs 1M global), so that would change the model, not only its mask.
Layers that already run their own window (Gemma-3's 512-token local layers) are untouched, as with
every mechanism in `optim.attn_base`. The cache is unchanged (full keys are kept): like the other
mechanisms this changes which keys each query sees, not what is stored.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from .attn_base import check_window


@dataclass
class NativeSlidingWindowAttention:
    """transformers' sliding-window mask of `window_size` tokens on every full-attention layer."""

    name: ClassVar[str] = "attn_native_sliding"
    window_size: int = 512
    _patched: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        check_window(self.name, self.window_size)

    @property
    def window(self) -> int:
        return self.window_size

    def _modeling_module(self, model):
        base = getattr(model, "model", model)
        base = getattr(base, "language_model", base)
        module = sys.modules.get(type(base).__module__)
        if module is None or not callable(getattr(module, "create_causal_mask", None)):
            raise ValueError(
                f"{self.name}: cannot swap the mask of {type(model).__name__}: its modeling module has no "
                "`create_causal_mask` (not a transformers model with masking_utils masks)"
            )
        return module

    def attach(self, model, context_text: str | None = None, seq_len: int | None = None) -> None:
        from transformers.masking_utils import create_sliding_window_causal_mask

        if seq_len is not None and self.window_size > seq_len:
            raise ValueError(f"{self.name}: window {self.window_size} is larger than the sequence ({seq_len} tokens)")
        module = self._modeling_module(model)
        if module.__name__ in self._patched:
            return
        original = module.create_causal_mask
        window = self.window_size

        def full_layers_sliding_mask(*args, **kwargs):
            config = copy.copy(kwargs.pop("config") if "config" in kwargs else args[0])
            config.sliding_window = window
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            is_sliding = list(getattr(cache, "is_sliding", []) or [])
            # Size the mask against a full-attention cache layer (the default would pick a sliding one).
            layer_idx = is_sliding.index(False) if False in is_sliding else 0
            return create_sliding_window_causal_mask(config, *args[1:], layer_idx=layer_idx, **kwargs)

        module.create_causal_mask = full_layers_sliding_mask
        self._patched[module.__name__] = (module, original)

    def detach(self, model) -> None:
        for module, original in self._patched.values():
            module.create_causal_mask = original
        self._patched.clear()


__all__ = ["NativeSlidingWindowAttention"]
