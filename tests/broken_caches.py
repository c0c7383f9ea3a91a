"""Deliberately broken KV methods: the metric must notice them (DESIGN.md, quality in the loop)."""

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from optim.base import KVCacheMethod, build_layers


class _ZeroValues:
    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states, torch.zeros_like(value_states), *args, **kwargs)


class ZeroValuesLayer(_ZeroValues, DynamicLayer):
    pass


class ZeroValuesSlidingLayer(_ZeroValues, DynamicSlidingWindowLayer):
    pass


@dataclass
class ZeroValuesKV(KVCacheMethod):
    """Stores every value as zeros: attention outputs vanish."""

    def make_cache(self, config):
        return build_layers(config, ZeroValuesLayer, lambda w: ZeroValuesSlidingLayer(sliding_window=w))


@dataclass
class CrashingKV(KVCacheMethod):
    """Raises on use: the runner must record a failed row and go on."""

    def make_cache(self, config):
        raise RuntimeError("deliberate crash in make_cache")


class _NaNValues:
    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(key_states, torch.full_like(value_states, float("nan")), *args, **kwargs)


class NaNValuesLayer(_NaNValues, DynamicLayer):
    pass


class NaNValuesSlidingLayer(_NaNValues, DynamicSlidingWindowLayer):
    pass


@dataclass
class NaNValuesKV(KVCacheMethod):
    """Stores NaN values: perplexity becomes NaN, which must never reach the store as a number."""

    def make_cache(self, config):
        return build_layers(config, NaNValuesLayer, lambda w: NaNValuesSlidingLayer(sliding_window=w))


@dataclass
class KilledKV(KVCacheMethod):
    """Kills its own process (as the kernel's OOM killer would): the runner must survive it."""

    def make_cache(self, config):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
