"""Optimizations under test. Never imports `ollm_bench`.

Adding a method: one module here (exported below), one YAML in `conf/optim/` naming its class
(`method._target_`; the YAML is the only place that gives it a name), one test, and a row in the
README's optimization table.
"""

from .attention_router import AttentionRouter
from .attn_full import FullAttention
from .attn_hybrid import HybridAttention, make_mechanism
from .attn_multiscale import MultiScaleAttention
from .attn_native_sliding import NativeSlidingWindowAttention
from .attn_sliding import SlidingSinkAttention
from .attn_sparse import BlockSparseAttention
from .base import FullPrecisionKV, KVCacheMethod, cache_nbytes, layer_specs, plain_kv_bytes, storage_report
from .content_classifier import classify
from .graph_decode import GraphDecoder
from .kv_adaptive import AdaptiveKV
from .kv_format import FormatKV
from .kv_hf_quantized import HFQuantizedKV
from .kv_int8 import Int8KV, Int8KVLayer
from .kv_kivi import KiviKV
from .kv_layerwise import LayerwiseKV
from .kv_mixed import MixedPrecisionKV
from .kv_pattern import PatternAwareKV
from .kv_press import KVPressPeer
from .kv_press_format import PressedFormatKV
from .kv_static import StaticStoreCache
from .kv_temporal import TemporalKV
from .predictive_memory import PredictiveMemoryManager
from .static_kv_arena import GraphedDecoder, StaticArenaKV, StaticKVArena
from .tensor_pool import TensorPool
from .torch_caching import TorchCachingAllocator

__all__ = [
    "AdaptiveKV",
    "HFQuantizedKV",
    "KiviKV",
    "LayerwiseKV",
    "KVPressPeer",
    "NativeSlidingWindowAttention",
    "MixedPrecisionKV",
    "PatternAwareKV",
    "PressedFormatKV",
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
    "TorchCachingAllocator",
    "classify",
    "make_mechanism",
    "FormatKV",
    "FullPrecisionKV",
    "Int8KV",
    "Int8KVLayer",
    "KVCacheMethod",
    "cache_nbytes",
    "layer_specs",
    "plain_kv_bytes",
    "storage_report",
]
