"""Optimizations under test. Never imports `ollm_bench`.

Adding a method: one module here, an entry in `REGISTRY`, one YAML in `conf/optim/`, one test,
and a row in the README's optimization table.
"""

from .attention_router import AttentionRouter
from .attn_full import FullAttention
from .attn_hybrid import HybridAttention, make_mechanism
from .attn_multiscale import MultiScaleAttention
from .attn_native_sliding import NativeSlidingWindowAttention
from .attn_sliding import SlidingSinkAttention
from .attn_sparse import BlockSparseAttention
from .base import FullPrecisionKV, KVCacheMethod, cache_nbytes, layer_specs, plain_kv_bytes
from .content_classifier import classify
from .graph_decode import GraphDecoder
from .kv_adaptive import AdaptiveKV
from .kv_hf_quantized import HFQuantizedKV
from .kv_int8 import Int8KV, Int8KVLayer
from .kv_kivi import KiviKV
from .kv_mixed import MixedPrecisionKV
from .kv_pattern import PatternAwareKV
from .kv_press import KVPressPeer
from .kv_static import StaticStoreCache
from .kv_temporal import TemporalKV
from .predictive_memory import PredictiveMemoryManager
from .static_kv_arena import GraphedDecoder, StaticArenaKV, StaticKVArena
from .tensor_pool import TensorPool

# Ready-made instances with default settings, by the `optim` name used in configs and results.
REGISTRY: dict[str, KVCacheMethod] = {
    "baseline": FullPrecisionKV(),
    "kv_int8": Int8KV(),
    "kv_mixed": MixedPrecisionKV(),
    "kv_temporal": TemporalKV(),
    "kv_pattern": PatternAwareKV(),
    "kv_adaptive": AdaptiveKV(),
    "kv_kivi": KiviKV(),
    "kv_hf_int4": HFQuantizedKV(nbits=4),
    "kv_hf_int2": HFQuantizedKV(nbits=2),
    "static_arena": StaticArenaKV(),
    # kvpress peers evict tokens after the prefill: they also hook the model (`attach`/`detach`).
    "kvpress_streaming": KVPressPeer(press="streaming_llm", compression_ratio=0.5),
    "kvpress_snapkv": KVPressPeer(press="snapkv", compression_ratio=0.5),
}

# Attention mechanisms (not caches): `attach(model, context_text=, seq_len=)` swaps the model's
# attention on its global layers; `detach(model)` restores it.
ATTENTION = {
    "attn_full": FullAttention(),
    "attn_sliding": SlidingSinkAttention(),
    "attn_sparse": BlockSparseAttention(),
    "attn_multiscale": MultiScaleAttention(),
    "attn_hybrid": HybridAttention(),
    "attn_native_sliding": NativeSlidingWindowAttention(),  # peer: transformers' own window mask
}

__all__ = [
    "ATTENTION",
    "REGISTRY",
    "AdaptiveKV",
    "HFQuantizedKV",
    "KiviKV",
    "KVPressPeer",
    "NativeSlidingWindowAttention",
    "MixedPrecisionKV",
    "PatternAwareKV",
    "TemporalKV",
    "AttentionRouter",
    "BlockSparseAttention",
    "FullAttention",
    "GraphDecoder",
    "GraphedDecoder",
    "HybridAttention",
    "MultiScaleAttention",
    "PredictiveMemoryManager",
    "SlidingSinkAttention",
    "StaticArenaKV",
    "StaticKVArena",
    "StaticStoreCache",
    "TensorPool",
    "classify",
    "make_mechanism",
    "FullPrecisionKV",
    "Int8KV",
    "Int8KVLayer",
    "KVCacheMethod",
    "cache_nbytes",
    "layer_specs",
    "plain_kv_bytes",
]
