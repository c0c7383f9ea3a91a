"""Scenario `attention`: one attention method's speed at one length, in one of three parts.

The model is a conf/model entry built with random weights (speed does not depend on their values):
Llama-3.1-8B's shapes (`llama31_8b_noweights`: 32 query heads, 8 KV heads, head_dim 128, bf16) in
suite `attention_gpu`. One run = one (optim, part, seq_len), one row:

- `part=kernel` -> `kernel_prefill_ms`: one attention layer's q/k/v at the model's dims, causal
  prefill of `seq_len` tokens. `attn_full` is the reference: SDPA on the flash backend with the K/V
  heads expanded before timing (the bare kernel), plus flex attention with a plain causal mask in
  `extra.flex_causal_ms` (what flex costs before any sparsity). A mechanism runs through
  `optim.attn_base.pattern_attention` with the flex backend, as the model runs it on a GPU, its
  block mask built once and cached; `extra.mask_build_ms` is that build alone.
- `part=decode_kernel` -> `kernel_decode_ms`: 1 query against `seq_len` cached keys (SDPA with
  grouped heads for the reference, the gathered path a mechanism takes for one query).
- `part=model` -> `model_prefill_ms`: a forward of the model's first `model_layers` decoder layers
  (logits of the last token only), the method attached as the harness attaches it, so the attention
  gain is seen diluted by projections and MLP. A peer that swaps the model's own mask
  (`attn_native_sliding`) has no bare kernel: its kernel parts are `skipped` rows.

Timing: `gpu_timing.time_calls` (CUDA events), `warmup` calls first (compilation included, also
reported once as `extra.first_call_ms`), median/p10/p90 over `repeats` >= 7 calls. A length that
does not fit is an `oom` row (the runner's).
"""

from __future__ import annotations

import statistics
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import BenchConfig
from ..errors import ConfigError
from ..models import DTYPE_BY_NAME, build_random_model, random_weights_config
from ..run.environment import device_name, resolve_device
from . import gpu_timing as gt
from .base import Scenario, metric_row, positive

METRICS = {"kernel": "kernel_prefill_ms", "decode_kernel": "kernel_decode_ms", "model": "model_prefill_ms"}
MIN_REPEATS = 7


@dataclass
class AttentionScenario(Scenario):
    name: ClassVar[str] = "attention"
    needs_cuda: ClassVar[bool] = True
    measures: ClassVar[str] = "attention speed"
    optim_kind: ClassVar[str] = "attention"
    model_from_conf: ClassVar[bool] = True
    part: str = "kernel"  # kernel | decode_kernel | model
    repeats: int = MIN_REPEATS
    warmup: int = 2
    model_layers: int = 2  # part=model: decoder layers of the conf/model entry that are built and run
    allow_cpu: bool = False  # functional checks of this scenario's logic on CPU (tests); never evidence

    def __post_init__(self):
        if self.part not in METRICS:
            raise ConfigError(f"scenario.part={self.part!r} is not one of {tuple(METRICS)}")
        if self.repeats < MIN_REPEATS:
            raise ConfigError(f"scenario.repeats must be >= {MIN_REPEATS} (median, p10, p90), got {self.repeats}")
        positive(self, "warmup", "model_layers")

    def run(self, bench: BenchConfig) -> dict:
        from hydra.utils import instantiate

        device = resolve_device(bench.device)
        dtype = DTYPE_BY_NAME[bench.model.dtype]
        method = instantiate(bench.optim.method)
        torch.manual_seed(bench.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.no_grad():
            if self.part == "model":
                row = self._model_prefill(method, bench, device, dtype)
            elif not callable(getattr(method, "cached_pattern", None)):
                return {"status": "skipped", "metric": METRICS[self.part],
                        "error": f"{bench.optim.name} changes the model's own mask and has no bare kernel: "
                                 "it is measured with scenario.part=model only"}
            else:
                dims = _head_dims(random_weights_config(bench.model))
                kernel = self._kernel_prefill if self.part == "kernel" else self._kernel_decode
                row = kernel(method, dims, bench, device, dtype)
        row["device"] = device_name(device)
        if device.type == "cuda":
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device))
        return row

    def _time(self, fn, device) -> tuple[list[float], float]:
        """(timed calls in ms, the first call in ms: compilation and mask building included)."""
        first = gt.time_once(fn, device)
        return gt.time_calls(fn, device, self.repeats, self.warmup), first

    def _kernel_prefill(self, method, dims, bench, device, dtype) -> dict:
        from optim.attn_base import block_mask_for, pattern_attention

        hq, hkv, _ = dims
        q, k, v = _qkv(bench, dims, bench.seq_len, bench.seq_len, device, dtype)
        pattern = method.cached_pattern(None, hq)
        cache: dict = {}
        if pattern is None:  # full attention: the SDPA reference
            groups = hq // hkv
            k_rep, v_rep = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            with _flash_only(device):
                samples, first = self._time(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True),
                                            device)
            causal = lambda b, h, q_pos, k_pos: k_pos >= 0  # noqa: E731 - pattern_attention adds causality
            flex, _ = self._time(
                lambda: pattern_attention(q, k, v, None, causal, backend="flex", block_mask_cache=cache), device)
            backend = "sdpa_flash" if device.type == "cuda" else "sdpa"
            return metric_row(METRICS["kernel"], "ms", samples, backend=backend, density=1.0, first_call_ms=first,
                              flex_causal_ms=statistics.median(flex), head_dims=list(dims))
        call = lambda: pattern_attention(q, k, v, None, pattern, backend="flex", block_mask_cache=cache)  # noqa: E731
        samples, first = self._time(call, device)
        build = gt.time_calls(lambda: block_mask_for(pattern, bench.seq_len, bench.seq_len, hq, device), device,
                              self.repeats, warmup=1)
        return metric_row(METRICS["kernel"], "ms", samples, backend="flex", density=method.density(bench.seq_len, hq),
                          mask_build_ms=statistics.median(build), first_call_ms=first, head_dims=list(dims))

    def _kernel_decode(self, method, dims, bench, device, dtype) -> dict:
        from optim.attn_base import pattern_attention

        hq = dims[0]
        q, k, v = _qkv(bench, dims, 1, bench.seq_len, device, dtype)
        pattern = method.cached_pattern(None, hq)
        if pattern is None:
            fn, backend = (lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)), "sdpa"
        else:  # one query: the gathered path, as the model's decode step takes it
            fn, backend = (lambda: pattern_attention(q, k, v, None, pattern, backend=method.backend)), "gather"
        samples, first = self._time(fn, device)
        density = 1.0 if pattern is None else method.density(bench.seq_len, hq)
        return metric_row(METRICS["decode_kernel"], "ms", samples, backend=backend, density=density,
                          first_call_ms=first, head_dims=list(dims))

    def _model_prefill(self, method, bench, device, dtype) -> dict:
        config = random_weights_config(bench.model, layers=self.model_layers)
        model = build_random_model(config, seed=bench.seed, dtype=dtype, device=str(device))
        text = config.get_text_config(decoder=True)
        ids = torch.randint(0, text.vocab_size, (bench.batch_size, bench.seq_len),
                            generator=torch.Generator().manual_seed(bench.seed)).to(device)
        method.attach(model, seq_len=bench.seq_len)
        try:
            samples, first = self._time(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), device)
        finally:
            method.detach(model)
        full = random_weights_config(bench.model).get_text_config(decoder=True).num_hidden_layers
        heads = text.num_attention_heads
        return metric_row(
            METRICS["model"], "ms", samples, backend=_model_backend(method, heads, device),
            density=method.density(bench.seq_len, heads) if hasattr(method, "density") else None,
            first_call_ms=first, model_layers=self.model_layers,
            layers_note=f"first {self.model_layers} of {full} decoder layers of {bench.model.name}, random weights")


def _head_dims(config) -> tuple[int, int, int]:
    text = config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_attention_heads, text.num_key_value_heads, head_dim


def _qkv(bench: BenchConfig, dims, q_len: int, kv_len: int, device, dtype):
    """Seeded random queries (q_len) and keys/values (kv_len) at the model's head dims."""
    hq, hkv, d = dims
    gen = torch.Generator(device=device).manual_seed(bench.seed)

    def make(heads: int, n: int) -> torch.Tensor:
        return torch.randn(bench.batch_size, heads, n, d, generator=gen, device=device, dtype=dtype)

    return make(hq, q_len), make(hkv, kv_len), make(hkv, kv_len)


def _flash_only(device):
    """The reference is the flash kernel itself on a GPU (an error, not a silent fallback, if it cannot run)."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _model_backend(method, heads: int, device) -> str:
    if not callable(getattr(method, "cached_pattern", None)):
        return "model_sdpa_own_mask"  # the peer swaps the model's mask; its SDPA runs it
    if method.cached_pattern(None, heads) is None:
        return "model_sdpa"
    return "model_" + ("flex" if device.type == "cuda" and method.backend in ("auto", "flex") else "dense")
