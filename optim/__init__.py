"""Optimizations under test. Never imports `ollm_bench`.

Adding a method: one module here, an entry in `REGISTRY`, one YAML in `conf/optim/`, one test,
and a row in the README's optimization table.
"""

from .base import FullPrecisionKV, KVCacheMethod, cache_nbytes, layer_specs, plain_kv_bytes
from .kv_int8 import Int8KV, Int8KVLayer

# Ready-made instances with default settings, by the `optim` name used in configs and results.
REGISTRY: dict[str, KVCacheMethod] = {
    "baseline": FullPrecisionKV(),
    "kv_int8": Int8KV(),
}

__all__ = [
    "REGISTRY",
    "FullPrecisionKV",
    "Int8KV",
    "Int8KVLayer",
    "KVCacheMethod",
    "cache_nbytes",
    "layer_specs",
    "plain_kv_bytes",
]
