"""Peer: transformers' own quantized KV layers (`QuantizedCache`'s building blocks), per layer.

`QuantizedCache` refuses Gemma-3 ("only supported for models with only full attention layers"), so
this builds the same thing by hand: global layers get transformers' `QuantoQuantizedLayer` (optimum-
quanto backend, int4 or int2, its defaults: axis 0 = groups of `q_group_size` along head_dim for
both keys and values, a `residual_length` window kept in the model dtype, the whole store
re-quantized each time the window fills), sliding layers keep transformers' plain
`DynamicSlidingWindowLayer` — exactly what `QuantizedCache` would do on a hybrid model if it allowed
one. On a full-attention model (SmolLM2) every layer is a `QuantoQuantizedLayer`, exactly the cache
`QuantizedCache` builds there (tests/test_full_attention_layout.py checks equal logits), so one code
path serves both layouts. Quantization is after RoPE (transformers' cache hook sees rotated keys).

Backend: optimum-quanto 0.2.7 installs next to torch 2.13 (`pip install --no-deps
optimum-quanto==0.2.7 ninja==1.13.0`) and runs on CPU. `backend="fp8"` uses transformers'
`Fp8QuantizedLayer` (per-tensor fp8) and needs no extra package.

Byte accounting: quanto keeps its codes in tensor subclasses whose `numel x element_size` is that of
the unpacked float tensor, so `cache_nbytes` would over-count them. The layer below keeps those
objects out of its attributes and exposes the plain tensors inside them (packed uint8 codes, scale,
shift) as `quantized_parts`, which is what `cache_nbytes` then counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer, QuantoQuantizedLayer

try:  # transformers >= 5.2x; older ones (e.g. 5.17 on the GPU machine) have no fp8 layer
    from transformers.cache_utils import Fp8QuantizedLayer
except ImportError:  # pragma: no cover - depends on the installed transformers
    Fp8QuantizedLayer = None

from .base import KVCacheMethod, build_layers
from .kv_quant import check_states


class _Hidden:
    """Holds a quantized tensor object where `cache_nbytes` does not look (its parts are exposed instead)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _plain_parts(obj) -> list[torch.Tensor]:
    """The plain tensors stored inside a (possibly nested) quanto tensor subclass."""
    if type(obj) is torch.Tensor or isinstance(obj, torch.nn.Parameter):
        return [obj]
    if isinstance(obj, torch.Tensor) and hasattr(obj, "__tensor_flatten__"):
        names, _ = obj.__tensor_flatten__()
        return [p for n in names for p in _plain_parts(getattr(obj, n))]
    if isinstance(obj, (tuple, list)):
        return [p for item in obj for p in _plain_parts(item)]
    return []


class CountedQuantoLayer(QuantoQuantizedLayer):
    """transformers' `QuantoQuantizedLayer`, unchanged in behaviour, with exact byte accounting."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantized_parts: list[torch.Tensor] = []

    def update(self, key_states, value_states, *args, **kwargs):
        check_states(key_states, value_states, "kv_hf_quantized")
        for name in ("_quantized_keys", "_quantized_values"):
            if isinstance(getattr(self, name, None), _Hidden):
                setattr(self, name, getattr(self, name).value)
        out = super().update(key_states, value_states, *args, **kwargs)
        qk, qv = self._quantized_keys, self._quantized_values
        self.quantized_parts = _plain_parts(qk) + _plain_parts(qv)
        self._quantized_keys, self._quantized_values = _Hidden(qk), _Hidden(qv)
        return out

    def _dequantize(self, qtensor):
        return super()._dequantize(qtensor.value if isinstance(qtensor, _Hidden) else qtensor)

    def reset(self) -> None:
        super().reset()
        self.quantized_parts = []


if Fp8QuantizedLayer is not None:

    class CountedFp8Layer(Fp8QuantizedLayer):
        """transformers' per-tensor fp8 layer (its codes and scale are plain tensors: counted as-is)."""

        def update(self, key_states, value_states, *args, **kwargs):
            check_states(key_states, value_states, "kv_hf_quantized")
            return super().update(key_states, value_states, *args, **kwargs)


@dataclass
class HFQuantizedKV(KVCacheMethod):
    """transformers' quantized layers on global layers (quanto int4/int2, or fp8), plain sliding layers."""

    backend: str = "quanto"
    nbits: int = 4
    q_group_size: int = 64
    residual_length: int = 128

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.backend == "quanto":
            if self.nbits not in (2, 4):
                raise ValueError(f"kv_hf_quantized: quanto supports nbits 2 or 4, got {self.nbits}")
            full = lambda: CountedQuantoLayer(  # noqa: E731
                nbits=self.nbits, q_group_size=self.q_group_size, residual_length=self.residual_length
            )
        elif self.backend == "fp8":
            if Fp8QuantizedLayer is None:
                raise ValueError("kv_hf_quantized: this transformers has no Fp8QuantizedLayer (needs a newer release)")
            full = CountedFp8Layer
        else:
            raise ValueError(f"kv_hf_quantized: backend must be 'quanto' or 'fp8', got {self.backend!r}")
        return build_layers(config, full, lambda w: DynamicSlidingWindowLayer(sliding_window=w))
