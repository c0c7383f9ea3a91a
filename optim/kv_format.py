"""A KV cache in any of our storage layouts, with a 16-bit window of recent tokens and of the first
(sink) tokens: the building block for quality per byte by design.

What is known to work, and what this method lets a config combine (each piece measured by an
ablation row, see README "KV family"):
- keys per channel, values per token (KIVI: key outliers sit in a few channels, value errors mix
  per token); keys at least as precise as values (4-bit keys with 2-bit values far outscore the
  reverse in the KV-quantization literature);
- a 16-bit window of the `residual` most recent tokens (KIVI keeps 128): the tokens a query attends
  to most are exact;
- `sinks` first tokens in 16 bits on global layers (StreamingLLM's attention sinks: most heads park
  attention there, so their error weighs on every query).

`key` and `value` are storage layouts of `optim.kv_quant` as lists: `[channel, bits, G]`,
`[token, bits, g]` or `[fp8]`. Bytes include every window, scale and zero-point (the layer's
tensors are what `cache_nbytes` walks). Examples in conf/optim: `kv_k4v4` (~0.33x a 16-bit cache at
2048 tokens, ~0.29x at 8192), `kv_k4v2` (~0.23x at 8192).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .kv_quant import SpecKVLayer, build_checked


@dataclass
class FormatKV(KVCacheMethod):
    key: list = field(default_factory=lambda: ["channel", 4, 64])
    value: list = field(default_factory=lambda: ["token", 4, 64])
    residual: int = 128
    sinks: int = 4
    name: str = "kv_format"
    allow_reversed: bool = False  # ablation rows only: keys less precise than values, to measure that choice

    def __post_init__(self):
        self.key, self.value = tuple(self.key), tuple(self.value)
        bits = {"fp8": 8}
        kb = bits.get(self.key[0], self.key[1] if len(self.key) > 1 else None)
        vb = bits.get(self.value[0], self.value[1] if len(self.value) > 1 else None)
        if kb is not None and vb is not None and int(kb) < int(vb) and not self.allow_reversed:
            raise ValueError(f"{self.name}: keys at {kb} bits are less precise than values at {vb} bits; "
                             "keys need at least the values' precision (allow_reversed=true for an ablation row)")
        if self.sinks < 0:
            raise ValueError(f"{self.name}: sinks must be >= 0, got {self.sinks}")

    def make_cache(self, config: PretrainedConfig) -> Cache:
        def layer(window):
            return SpecKVLayer(self.key, self.value, residual=self.residual, sliding_window=window, name=self.name,
                               sinks=self.sinks)

        return build_checked(config, self.name, self.residual, [self.key, self.value], layer)
