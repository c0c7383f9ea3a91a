"""Mixed-precision KV cache: int4 keys (per-channel groups, two codes per byte), fp8 e4m3 values.

What is stored, per layer:
- `k_store`: keys as 4-bit codes packed two per uint8 byte along head_dim, asymmetric min/max per
  channel over blocks of `group_size` tokens (KIVI: key outliers live in a few channels, so a scale
  per channel keeps them from flattening the others), fp16 scale and zero per (block, channel).
- `v_store`: values as `torch.float8_e4m3fn` with one fp16 absmax scale per token and head (value
  errors mix linearly into the output, per token, so a per-token scale suits them).
- `res_k`/`res_v`: the most recent tokens in 16 bits: at least `residual` of them, plus the tail that
  does not yet fill a whole key block (tokens enter the quantized store only as full blocks, since a
  per-channel scale needs all tokens of its block).

Quantization sits after RoPE: the cache receives rotated keys from the attention module, and
dequantized keys go straight into attention, so nothing has to be re-rotated at decode time. The
price is that RoPE mixes channel pairs by position; within a block of 32-64 neighbouring tokens the
rotation of the low-frequency (outlier-carrying) channels is small, so per-channel scales still fit.

Bytes at head_dim 256, group 64: keys 0.5 + 4/64 = 0.5625 bytes/element, values 1 + 2/256, i.e.
~0.39x a 16-bit cache once the window is amortized (head_dim 64, SmolLM2: values 1 + 2/64, ~0.40x).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .fused_attention import KernelChoice
from .kv_quant import SpecKVLayer, build_checked


class MixedPrecisionKVLayer(SpecKVLayer):
    """int4 per-channel keys + fp8 per-token values behind a 16-bit window; global or sliding."""

    def __init__(self, group_size: int = 64, residual: int = 0, sliding_window: int | None = None, sinks: int = 0):
        super().__init__(
            ("channel", 4, group_size), ("fp8",), residual=residual, sliding_window=sliding_window, name="kv_mixed",
            sinks=sinks
        )


@dataclass
class MixedPrecisionKV(KernelChoice, KVCacheMethod):
    """Keys int4 per-channel (groups of `group_size` tokens), values fp8 e4m3 per-token, `residual` recent
    tokens kept in 16 bits (plus the unfinished key block). `kernel="triton"`: the same format in a
    static store read in place by a fused decode kernel (optim.kv_static; sliding layers as 16-bit rings)."""

    name = "kv_mixed"
    group_size: int = 64
    residual: int = 0
    sinks: int = 0  # first tokens kept in 16 bits on global layers (ablations: python -m ollm_bench sweep ... optim.method.sinks=4)
    kernel: str = "torch"

    def store_format(self):
        from .kv_static import mixed_format

        return mixed_format(self.group_size, self.residual, self.sinks)

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.kernel == "triton":
            return self.static_cache(config)
        return build_checked(config, "kv_mixed", self.residual, [("channel", 4, self.group_size)],
                             lambda w: MixedPrecisionKVLayer(self.group_size, self.residual, sliding_window=w, sinks=self.sinks))
