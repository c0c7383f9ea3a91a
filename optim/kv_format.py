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
  attention there, so their error weighs on every query);
- `key_pre_rope`: keys quantized before RoPE (KVQuant), see `optim/rope.py`.

`key` and `value` are storage layouts of `optim.kv_quant` as lists: `[channel, bits, G]`,
`[token, bits, g]` or `[fp8]`. Bytes include every window, scale and zero-point (the layer's
tensors are what `cache_nbytes` walks). Examples in conf/optim: `kv_k4v4` (~0.33x a 16-bit cache at
2048 tokens, ~0.29x at 8192), `kv_k4v2` (~0.23x at 8192).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .fused_attention import KernelChoice
from .kv_quant import SpecKVLayer, build_checked, decode, encode, enc_cat
from .rope import RopeRotation


class PreRopeSpecKVLayer(SpecKVLayer):
    """`SpecKVLayer` whose compressed keys are stored before RoPE: un-rotated as they enter the store,
    rotated back by their positions when read. Tokens in the 16-bit window and sinks stay as given."""

    def __init__(self, key_spec, value_spec, *, rope: RopeRotation, **kwargs):
        super().__init__(key_spec, value_spec, **kwargs)
        self.rope = rope
        self.next_pos = self.sinks  # the store's tokens follow the sinks (filled before any flush)

    def _absorb(self, k, v) -> None:
        k = self.rope.rotate(k, self.next_pos, inverse=True)
        self.next_pos += k.shape[-2]
        self.k_store = enc_cat(self.k_store, encode(k, self.key_spec))
        self.v_store = enc_cat(self.v_store, encode(v, self.value_spec))

    def _decode_store(self, dtype):
        if self.k_store is None:
            return None
        keys = decode(self.k_store, self.key_spec, torch.float32)
        keys = self.rope.rotate(keys, self.next_pos - keys.shape[-2]).to(dtype)
        return keys, decode(self.v_store, self.value_spec, dtype)

    def _reset_store(self) -> None:
        super()._reset_store()
        self.next_pos = self.sinks


@dataclass
class FormatKV(KernelChoice, KVCacheMethod):
    key: list = field(default_factory=lambda: ["channel", 4, 64])
    value: list = field(default_factory=lambda: ["token", 4, 64])
    residual: int = 128
    sinks: int = 4
    name: str = "kv_format"
    allow_reversed: bool = False  # ablation rows only: keys less precise than values, to measure that choice
    key_pre_rope: bool = False  # quantize keys before RoPE (KVQuant); positions = cache index (no left padding)
    kernel: str = "torch"  # torch | triton (the static store + fused decode kernel of optim.kv_static)

    def __post_init__(self):
        KernelChoice.__post_init__(self)
        self.key, self.value = tuple(self.key), tuple(self.value)
        bits = {"fp8": 8}
        kb = bits.get(self.key[0], self.key[1] if len(self.key) > 1 else None)
        vb = bits.get(self.value[0], self.value[1] if len(self.value) > 1 else None)
        if kb is not None and vb is not None and int(kb) < int(vb) and not self.allow_reversed:
            raise ValueError(f"{self.name}: keys at {kb} bits are less precise than values at {vb} bits; "
                             "keys need at least the values' precision (allow_reversed=true for an ablation row)")
        if self.sinks < 0:
            raise ValueError(f"{self.name}: sinks must be >= 0, got {self.sinks}")
        if self.kernel == "triton":
            self.store_format()  # a layout the fused store cannot hold is refused here, not at the first cache

    def store_format(self):
        """The static store that holds this layout for `kernel="triton"`: per-channel keys with
        per-token value groups (KIVI's store) or fp8 values (kv_mixed's), sinks included, keys after RoPE."""
        from .kv_static import kivi_format, mixed_format

        if self.key_pre_rope:
            raise ValueError(f"{self.name}: the fused store (kernel=triton) quantizes keys after RoPE; "
                             "use key_pre_rope=false, or kernel=torch")
        key, value = self.key, self.value
        if key[0] != "channel" or value[0] not in ("token", "fp8") or (value[0] == "fp8" and key[1] != 4):
            raise ValueError(f"{self.name}: no fused store for keys {list(key)} with values {list(value)}; the fused "
                             "kernels read per-channel keys with per-token values or 4-bit keys with fp8 values")
        if value[0] == "fp8":
            return mixed_format(key[2], self.residual, self.sinks)
        return kivi_format(key[1], key[2], value[2], self.residual, value_bits=value[1], sinks=self.sinks)

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.kernel == "triton":
            return self.static_cache(config)
        ropes = {}
        if self.key_pre_rope:
            ropes = {kind: RopeRotation.from_config(config, kind) for kind in ("full_attention", "sliding_attention")}

        def layer(window):
            common = dict(residual=self.residual, sliding_window=window, name=self.name, sinks=self.sinks)
            if not self.key_pre_rope:
                return SpecKVLayer(self.key, self.value, **common)
            rope = ropes["full_attention" if window is None else "sliding_attention"]
            return PreRopeSpecKVLayer(self.key, self.value, rope=rope, **common)

        return build_checked(config, self.name, self.residual, [self.key, self.value], layer)
