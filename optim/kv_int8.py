"""Per-token int8 KV cache: keys and values stored as int8 with one fp16 scale per token and head.

Storage is real: `keys_q`/`values_q` are int8 tensors and the scales are fp16, so the cache holds
~0.51x the bytes of a 16-bit cache (1 byte per element + 2 bytes per head_dim elements). Attention
still runs in the model's dtype on dequantized states; the new tokens of each update go through
the same quantize/dequantize round trip, so every attention score the model computes sees the
compression (no full-precision shortcut for the current chunk).

Quantization happens after RoPE (the cache receives rotated keys from the attention module), per
token, so a token's error does not depend on tokens that come later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer

from .base import BatchedStateMixin, KVCacheMethod, WindowedLengthMixin, build_layers
from .fused_attention import KernelChoice
from .kv_quant import checks_values, div_exact


def quantize_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 over the last dim. Returns (int8 codes, fp16 scales[..., 1])."""
    if checks_values(x) and not torch.isfinite(x).all():  # per prefill chunk, not per decode step
        raise ValueError("int8 KV quantization got NaN or Inf in the key/value states")
    xf = x.float()
    scale = div_exact(xf.abs().amax(dim=-1, keepdim=True).clamp_min(1e-6), 127.0)
    scale = scale.to(torch.float16).clamp_min(torch.finfo(torch.float16).tiny)
    q = torch.round(xf / scale.float()).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


class Int8KVLayer(WindowedLengthMixin, BatchedStateMixin, DynamicLayer):
    """A global-attention layer holding int8 codes + fp16 scales instead of 16/32-bit states."""

    is_croppable = False
    _batched = ("keys_q", "values_q", "keys_scale", "values_scale")

    def __init__(self, sliding_window: int | None = None, **kwargs):
        super().__init__()
        self.sliding_window = sliding_window
        self.is_sliding = sliding_window is not None
        self.cumulative_length = 0
        self.keys_q = self.values_q = self.keys_scale = self.values_scale = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        b, h, _, d = key_states.shape
        self.keys_q = torch.empty(b, h, 0, d, dtype=torch.int8, device=self.device)
        self.values_q = torch.empty_like(self.keys_q)
        self.keys_scale = torch.empty(b, h, 0, 1, dtype=torch.float16, device=self.device)
        self.values_scale = torch.empty_like(self.keys_scale)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        kq, ks = quantize_int8_per_token(key_states)
        vq, vs = quantize_int8_per_token(value_states)
        keys_q = torch.cat([self.keys_q, kq], dim=-2)
        values_q = torch.cat([self.values_q, vq], dim=-2)
        keys_s = torch.cat([self.keys_scale, ks], dim=-2)
        values_s = torch.cat([self.values_scale, vs], dim=-2)
        self.cumulative_length += key_states.shape[-2]
        keep = slice(None) if self.sliding_window is None else slice(-self.sliding_window + 1, None)
        self.keys_q, self.values_q = keys_q[:, :, keep], values_q[:, :, keep]
        self.keys_scale, self.values_scale = keys_s[:, :, keep], values_s[:, :, keep]
        if self.sliding_window is not None:
            # Sliced views would keep the whole concatenated storage alive (and counted).
            self.keys_q, self.values_q = self.keys_q.contiguous(), self.values_q.contiguous()
            self.keys_scale, self.values_scale = self.keys_scale.contiguous(), self.values_scale.contiguous()
        return (
            dequantize_int8(keys_q, keys_s, key_states.dtype),
            dequantize_int8(values_q, values_s, value_states.dtype),
        )

    def payload_bits(self) -> dict:
        return {"key": 8, "value": 8}

    def reset(self) -> None:
        self.keys_q = self.values_q = self.keys_scale = self.values_scale = None
        self.keys = self.values = None
        self.cumulative_length = 0
        self.is_initialized = False


@dataclass
class Int8KV(KernelChoice, KVCacheMethod):
    """Per-token symmetric int8 keys and values (fp16 scales), on global and sliding layers alike.
    `kernel="triton"`: a static store read in place by a fused decode kernel (optim.kv_static;
    sliding layers as 16-bit rings)."""

    name = "kv_int8"
    kernel: str = "torch"

    def store_format(self):
        from .kv_static import INT8

        return INT8

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.kernel == "triton":
            return self.static_cache(config)
        return build_layers(config, lambda: Int8KVLayer(), lambda w: Int8KVLayer(sliding_window=w))
