"""`decode_mode=kernel` of the decode scenario: one layer's decode attention alone, at the model's
real attention shapes, over a store holding `seq_len` tokens per sequence.

A method with `kernel=triton` is timed through its fused split-K kernel reading its static store
in place (optim/kernels; the kernel and its split reduce); the baseline with `kernel=torch` is SDPA
(flash backend where it takes the shapes) over bf16 K/V, the bf16 flash-decoding reference. The
bytes are what the attention must read: codes, scales, zero-points and windows of the filled part
(`filled_nbytes`), or the bf16 K/V for SDPA. Store contents are random (speed does not depend on
values). Timing: `triton.testing.do_bench` median with p10/p90 (it clears the L2 cache before each
call, so a store that fits in L2 is not timed from it), on CUDA; perf_counter on CPU (logic only).
"""

from __future__ import annotations

import time

import torch

from .base import quantiles


def time_kernel(fn, device: torch.device) -> dict:
    if device.type == "cuda":
        import triton.testing

        p50, p10, p90 = triton.testing.do_bench(fn, quantiles=[0.5, 0.1, 0.9])
        return {"step_ms": p50, "step_ms_p10": p10, "step_ms_p90": p90, "n_repeats": None}
    samples = []
    fn()
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = quantiles(samples)
    return {"step_ms": q["median"], "step_ms_p10": q["p10"], "step_ms_p90": q["p90"], "n_repeats": q["n"]}


def fill_random(layer, n: int) -> None:
    """Random codes, scales and windows for a store holding n tokens per sequence (timing only)."""
    for t in layer.store_tensors().values():
        if t.dtype in (torch.uint8, torch.int8):
            low = -100 if t.dtype == torch.int8 else 0
            t.copy_(torch.randint(low, 100, t.shape, dtype=t.dtype, device=t.device))
        elif t.dtype == torch.float8_e4m3fn:
            for i in range(t.shape[0]):  # one sequence at a time: a float32 temporary of the whole store is big
                t[i].copy_(torch.randn(t[i].shape, device=t.device).to(t.dtype))
        else:
            t.uniform_(0.01, 0.02)
    layer.lengths.fill_(n)
    layer.host_lengths = [n] * layer.batch


def sdpa_backend(q, k, v) -> str:
    """The SDPA backend that takes these shapes, flash first (what the timing then uses)."""
    if q.device.type != "cuda":
        return "math"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            return backend.name.lower()
        except RuntimeError:
            continue
    return "default"


def measure_kernel(method, text_config, batch: int, context: int, device: torch.device) -> dict:
    """One row's metrics for a method's decode attention at (batch, context): its fused kernel
    (kernel=triton), else SDPA over bf16 K/V (the caller passes only the baseline that way)."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    query = torch.randn(batch, heads, 1, head_dim, device=device, dtype=dtype)
    scale = head_dim**-0.5
    if getattr(method, "kernel", "torch") == "triton":
        from optim.kv_static import StaticStoreLayer

        layer = StaticStoreLayer(method.store_format())
        layer.allocate(batch, kv_heads, head_dim, dtype, device, context)
        fill_random(layer, context)
        plan = layer.kernels.plan(layer, query)
        out = torch.empty(batch, 1, heads, head_dim, device=device, dtype=dtype)
        timing = time_kernel(lambda: layer.kernels.attend(layer, query, scale, plan, out), device)
        return timing | {"kernel": "triton", "bytes_per_step": layer.filled_nbytes(),
                         "extra": {"splits": plan.nsplit, "split_tokens": plan.split, "what": "fused attend + split reduce"}}
    k = torch.randn(batch, kv_heads, context, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    backend = sdpa_backend(query, k, v)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if device.type == "cuda" and backend in ("flash_attention", "efficient_attention"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = getattr(SDPBackend, backend.upper())

        def call():
            with sdpa_kernel([chosen]):
                sdpa(query, k, v, enable_gqa=True)
    else:
        def call():
            sdpa(query, k, v, enable_gqa=True)
    timing = time_kernel(call, device)
    return timing | {"kernel": f"sdpa_{backend}", "bytes_per_step": 2 * k.numel() * k.element_size(),
                     "extra": {"what": "SDPA over bf16 K/V, one query token"}}
