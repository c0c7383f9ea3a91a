"""KIVI-style 2-bit KV cache (peer; Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization").

What is stored, per layer:
- keys: 2-bit codes, four per uint8 byte, asymmetric min/max per channel over blocks of `group_size`
  tokens, fp16 scale and zero per (block, channel) — KIVI's per-channel key quantization;
- values: 2-bit codes per token in groups of `value_group` channels, fp16 scale and zero per group —
  KIVI's per-token value quantization;
- the `residual` most recent tokens (plus the unfinished key block) in 16 bits, as KIVI's residual.

Quantization is after RoPE, as in KIVI's released code and in transformers' cache hook (keys arrive
rotated); dequantized keys go straight into attention. This is our own implementation of the
algorithm (same layout as `kv_mixed`, other bit widths), not the authors' CUDA kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig
from transformers.cache_utils import Cache

from .base import KVCacheMethod
from .fused_attention import KernelChoice
from .kv_quant import SpecKVLayer, build_checked


class KiviKVLayer(SpecKVLayer):
    def __init__(self, bits=2, group_size=32, value_group=32, residual=128, sliding_window=None):
        super().__init__(
            ("channel", bits, group_size),
            ("token", bits, value_group),
            residual=residual,
            sliding_window=sliding_window,
            name="kv_kivi",
        )


@dataclass
class KiviKV(KernelChoice, KVCacheMethod):
    """KIVI: `bits`-bit per-channel keys, per-token values, `residual` recent tokens in 16 bits.
    `kernel="triton"`: a static store read in place by a fused decode kernel (optim.kv_static)."""

    name = "kv_kivi"
    bits: int = 2
    group_size: int = 32
    value_group: int = 32
    residual: int = 128
    kernel: str = "torch"

    def store_format(self):
        from .kv_static import kivi_format

        return kivi_format(self.bits, self.group_size, self.value_group, self.residual)

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.kernel == "triton":
            return self.static_cache(config)
        specs = [("channel", self.bits, self.group_size), ("token", self.bits, self.value_group)]
        args = (self.bits, self.group_size, self.value_group, self.residual)
        return build_checked(config, "kv_kivi", self.residual, specs, lambda w: KiviKVLayer(*args, sliding_window=w))
