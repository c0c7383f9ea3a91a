"""Interfaces shared by every optimization in `optim`.

A KV-cache method is a small dataclass whose one hook, `make_cache(config)`, returns a fresh
transformers `Cache` for a model config. The harness never needs to know more than that: it
passes the cache to the model's forward (chunked prefill, decode) and asks it for its bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator

import torch
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from .fused_attention import KernelChoice


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer's attention needs from its cache."""

    index: int
    sliding_window: int | None  # None: global (full) attention layer

    @property
    def is_sliding(self) -> bool:
        return self.sliding_window is not None


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_specs(config: PretrainedConfig) -> list[LayerSpec]:
    """Per-layer attention layout, so every method handles hybrid sliding/global models (Gemma-3)."""
    cfg = text_config(config)
    n = cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * n
    window = getattr(cfg, "sliding_window", None)
    specs = []
    for i, kind in enumerate(types):
        if kind in ("sliding_attention", "chunked_attention"):
            specs.append(LayerSpec(i, int(window)))
        elif kind == "full_attention":
            specs.append(LayerSpec(i, None))
        else:
            raise ValueError(f"layer {i} has attention type {kind!r}, which no KV method in optim supports")
    return specs


def kv_geometry(config: PretrainedConfig) -> tuple[int, int]:
    """(num_key_value_heads, head_dim) of the model's attention."""
    cfg = text_config(config)
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(heads), int(head_dim)


def plain_kv_bytes(config: PretrainedConfig, seq_len: int, batch: int = 1, bytes_per_element: int = 2) -> int:
    """Bytes the same tokens take in a plain (transformers `DynamicCache`) cache at the given width.

    Sliding layers keep `window - 1` tokens, as `DynamicSlidingWindowLayer` does, so ratios against
    this number compare like with like on hybrid models.
    """
    heads, head_dim = kv_geometry(config)
    total = 0
    for spec in layer_specs(config):
        tokens = seq_len if spec.sliding_window is None else min(seq_len, spec.sliding_window - 1)
        total += 2 * batch * heads * tokens * head_dim * bytes_per_element
    return total


def _tensors(obj, seen: set[int]) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        if id(obj) not in seen:
            seen.add(id(obj))
            yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item, seen)
    elif isinstance(obj, CacheLayerMixin):  # a layer that keeps its tokens in an inner layer
        yield from _tensors(vars(obj), seen)


def cache_nbytes(cache: Cache) -> int:
    """Exact bytes of every tensor a cache holds: data, scales, zero-points, indices, windows.

    Walks each layer's attributes instead of trusting a method's own report, so a method cannot
    under-count by forgetting its scales. Counts logical size (numel x element size): a view that
    keeps a larger buffer alive for a moment (transformers' sliding layers do) counts as its view.
    """
    seen: set[int] = set()
    total = 0
    for layer in cache.layers:
        for t in _tensors(vars(layer), seen):
            if t.numel() <= 1:  # bookkeeping scalars such as the sliding-window length
                continue
            total += t.numel() * t.element_size()
    return total


def named_tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(attribute path, tensor) for every tensor under a layer's attributes (dicts, lists nested)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from named_tensors(v, f"{prefix}[{i}]")
    elif isinstance(obj, CacheLayerMixin):  # a layer that keeps its tokens in an inner layer
        yield from named_tensors(vars(obj), prefix)


def storage_report(cache: Cache) -> dict:
    """What a cache holds, read off its tensors: per attribute path (over all layers) the dtype and
    bytes; the payload bits per key/value element where a layer declares its formats
    (`payload_bits()`); and bits per element by token age where a layer keeps age tiers
    (`bits_by_age()`, computed from the bytes of the tensors each tier holds)."""
    tensors: dict[str, dict] = {}
    payload: dict[str, set] = {"key": set(), "value": set()}
    by_age = []
    for i, layer in enumerate(cache.layers):
        for path, t in named_tensors(vars(layer)):
            if t.numel() <= 1:
                continue
            entry = tensors.setdefault(path, {"dtype": str(t.dtype).replace("torch.", ""), "bytes": 0})
            entry["bytes"] += t.numel() * t.element_size()
        bits = getattr(layer, "payload_bits", None)
        if callable(bits) and layer.is_initialized:
            for role, value in bits().items():
                payload[role].update(value if isinstance(value, (list, tuple)) else [value])
        elif getattr(layer, "keys", None) is not None and isinstance(layer.keys, torch.Tensor):
            payload["key"].add(8 * layer.keys.element_size())
            payload["value"].add(8 * layer.values.element_size())
        ages = getattr(layer, "bits_by_age", None)
        if callable(ages):
            by_age += [dict(layer=i, **row) for row in ages()]
    return {"tensors": tensors, "payload_bits": {k: sorted(v) for k, v in payload.items()},
            **({"bits_by_age": by_age} if by_age else {})}


def map_tensors(obj, fn):
    """Apply `fn` to every tensor in a nest of dicts/lists (for batch reorder/select/repeat)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    return obj


class BatchedStateMixin:
    """Beam reorder and batch select/repeat for cache layers whose stored state (the attributes
    named in `_batched`, tensors or nests of them) has batch as dim 0."""

    _batched: tuple[str, ...] = ()

    def _apply(self, fn) -> None:
        if self.is_initialized:
            for name in self._batched:
                setattr(self, name, map_tensors(getattr(self, name), fn))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices, ...])


class WindowedLengthMixin:
    """Length and mask bookkeeping for layers that count tokens in `cumulative_length` and keep
    `sliding_window - 1` of them on sliding layers (`sliding_window=None`: a global layer), the way
    transformers' `DynamicSlidingWindowLayer` reports them to the mask builder."""

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.sliding_window is None:
            return self.cumulative_length + query_length, 0
        kv_offset = max(self.cumulative_length - self.sliding_window + 1, 0)
        return min(self.cumulative_length, self.sliding_window - 1) + query_length, kv_offset

    def get_max_length(self) -> int:
        return -1 if self.sliding_window is None else self.sliding_window


class KVCacheMethod(ABC):
    """A KV-cache optimization: one hook that builds a fresh cache for a model config."""

    @abstractmethod
    def make_cache(self, config: PretrainedConfig) -> Cache: ...


@dataclass
class FullPrecisionKV(KernelChoice, KVCacheMethod):
    """The baseline: transformers' own `DynamicCache`, hybrid-aware through the config.
    `kernel="triton"`: a 16-bit static store read by the same split-K kernel as the compressed
    formats (optim.kv_static), so the baseline can be timed in the same graph-captured decode."""

    name = "baseline"
    kernel: str = "torch"

    def store_format(self):
        from .kv_static import PLAIN

        return PLAIN

    def make_cache(self, config: PretrainedConfig) -> Cache:
        if self.kernel == "triton":
            return self.static_cache(config)
        from transformers import DynamicCache

        return DynamicCache(config=config)


def build_layers(config: PretrainedConfig, full_layer, sliding_layer) -> Cache:
    """A `Cache` whose global layers come from `full_layer()` and sliding ones from `sliding_layer(window)`."""
    layers = [
        full_layer() if spec.sliding_window is None else sliding_layer(spec.sliding_window)
        for spec in layer_specs(config)
    ]
    return Cache(layers=layers)


__all__ = [
    "Cache",
    "DynamicLayer",
    "DynamicSlidingWindowLayer",
    "FullPrecisionKV",
    "KVCacheMethod",
    "LayerSpec",
    "build_layers",
    "cache_nbytes",
    "kv_geometry",
    "layer_specs",
    "named_tensors",
    "plain_kv_bytes",
    "storage_report",
    "text_config",
]
