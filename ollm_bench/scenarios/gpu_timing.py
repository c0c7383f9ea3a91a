"""The one timer of the speed scenarios, and the yardsticks they report against.

- `time_calls`: milliseconds per call of a step, bracketed by CUDA events recorded on the stream
  (no host synchronisation between calls, so launch gaps count as a server sees them); on CPU,
  perf_counter around each call.
- `copy_bandwidth_gbps`: a large device-to-device copy, bytes read plus written over its time, in
  the same process as the measurement it is compared with.
- `device_busy`: the profiler's sum of device kernel time per call and kernels per call, so a
  launch-bound step (busy << wall) is visible as one.
- `weight_bytes`: what a decode step must read of the weights: every parameter once, except the
  input embedding table, of which only the looked-up rows are read (its tied output head is read
  whole, as the lm_head).
"""

from __future__ import annotations

import re
import statistics
import time

import torch

from .base import quantiles


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(step, device: torch.device, calls: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    if device.type != "cuda":
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            step()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def time_once(fn, device: torch.device) -> float:
    """Milliseconds of one call (prefill), synchronised before and after."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 2 << 30, calls: int = 10) -> float | None:
    """Device-to-device copy bandwidth (read + write) in GB/s; None on CPU (not a reference there)."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = statistics.median(time_calls(lambda: dst.copy_(src), device, calls, warmup=2))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms / 1e3) / 1e9


def device_busy(step, device: torch.device, calls: int, name_pattern: str | None = None) -> dict:
    """Per call: device kernel time (ms), kernel count, and the share of that time spent in kernels
    whose name matches `name_pattern` (e.g. quantize-on-write). Empty on CPU."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    step()
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    # A device event's time range is the kernel's interval on the GPU.
    total_us = sum(e.time_range.elapsed_us() for e in kernels)
    out = {"gpu_busy_ms": total_us / calls / 1e3, "kernels_per_call": len(kernels) / calls}
    if name_pattern:
        matched = sum(e.time_range.elapsed_us() for e in kernels if re.search(name_pattern, e.name))
        out["matched_share"] = matched / total_us if total_us else None
    return out


def weight_bytes(model: torch.nn.Module) -> int:
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    # Parameters are listed once even when tied; an untied table is read only by its looked-up rows.
    return total if tied else total - emb.numel() * emb.element_size()


def step_stats(samples_ms: list[float]) -> dict:
    q = quantiles(samples_ms)
    return {"step_ms": q["median"], "step_ms_p10": q["p10"], "step_ms_p90": q["p90"], "n_repeats": q["n"]}
