"""Deliberately broken KV methods: a quality metric with the cache in the loop must notice them."""

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from optim.base import KVCacheMethod, build_layers


def _replacing_values(fill: float):
    """A cache whose layers store `fill` instead of every value state (global and sliding layers)."""

    class Replace:
        def update(self, key_states, value_states, *args, **kwargs):
            return super().update(key_states, torch.full_like(value_states, fill), *args, **kwargs)

    full = type("ReplacedValuesLayer", (Replace, DynamicLayer), {})
    sliding = type("ReplacedValuesSlidingLayer", (Replace, DynamicSlidingWindowLayer), {})
    return lambda config: build_layers(config, full, lambda w: sliding(sliding_window=w))


@dataclass
class ZeroValuesKV(KVCacheMethod):
    """Stores every value as zeros: attention outputs vanish. (`kernel` is accepted so it can stand
    in for a method whose YAML sets one.)"""

    kernel: str = "torch"

    def make_cache(self, config):
        return _replacing_values(0.0)(config)


@dataclass
class NaNValuesKV(KVCacheMethod):
    """Stores NaN values: perplexity becomes NaN, which must never reach the store as a number."""

    def make_cache(self, config):
        return _replacing_values(float("nan"))(config)


@dataclass
class CrashingKV(KVCacheMethod):
    """Raises on use: the runner must record a failed row and go on."""

    def make_cache(self, config):
        raise RuntimeError("deliberate crash in make_cache")


@dataclass
class KilledKV(KVCacheMethod):
    """Kills its own process with SIGKILL (as a user or a scheduler might): the runner must survive
    it and record a failure, not an out-of-memory."""

    def make_cache(self, config):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class OomKilledKV(KVCacheMethod):
    """Plays the kernel's OOM killer: bumps the cgroup's oom_kill counter (a file named by
    $OLLM_BENCH_OOM_EVENTS in the test), then SIGKILLs its process: the row must say `oom`."""

    def make_cache(self, config):
        import os
        import signal

        path = os.environ["OLLM_BENCH_OOM_EVENTS"]
        count = int(open(path).read().split()[-1])
        with open(path, "w") as fh:
            fh.write(f"oom 0\noom_kill {count + 1}\n")
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class LeakyAttention:
    """Drops the causal mask on every layer: a token attends to the later tokens of its own chunk,
    a leak of future tokens. Whether it lowers or raises perplexity depends on the model; the
    regression gate must flag the change either way."""

    kernel: str = "torch"  # accepted, so it can stand in for a method whose YAML sets one

    def attach(self, model, **_):
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        def leaky(module, query, key, value, attention_mask, **kwargs):
            kwargs["is_causal"] = False
            return sdpa_attention_forward(module, query, key, value, None, **kwargs)

        AttentionInterface.register("leaky_sdpa", leaky)
        self.previous = model.config._attn_implementation
        model.set_attn_implementation("leaky_sdpa")

    def detach(self, model):
        model.set_attn_implementation(self.previous)
