"""Allocation workloads for the memory claims (C1-C5): shape mixes, a varied-length serving
workload, and a synthetic decode loop. Every allocator under test sits behind one interface
(`get`, `put`, optional `step()`), so each workload runs unchanged on PyTorch's caching allocator
(optim.torch_caching), on `TensorPool` and on `PredictiveMemoryManager`.

Shapes come from a conf/model entry (`Dims.of`): Llama-3.1-8B's in the GPU suite.
"""

from __future__ import annotations

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from . import gpu_timing as gt

BF16, F32 = torch.bfloat16, torch.float32
HOST = torch.device("cpu")  # allocator calls are host work (they launch no kernels): timed on the host clock


@dataclass(frozen=True)
class Dims:
    """Model dimensions the workloads take their shapes from, and how many layers a step spans."""

    layers: int
    hidden: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config, layers: int) -> "Dims":
        text = config.get_text_config(decoder=True)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(layers, text.hidden_size, text.intermediate_size, text.num_attention_heads,
                   text.num_key_value_heads, head_dim, text.vocab_size)


def shape_mixes(d: Dims, ctx: int) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
    """Requests of one step, in order: what a decode/prefill step of one layer (plus logits) asks for;
    `mixed` is all three in turn."""
    kv = (d.kv_heads, d.head_dim)
    mixes = {
        # paged-KV style: one 16-token K and V block per layer per 16 decoded tokens
        "kv_blocks": [((1, *kv[:1], 16, kv[1]), BF16)] * 2 * d.layers,
        "decode_step": [
            ((1, 1, d.hidden), BF16), ((1, 1, (d.heads + 2 * d.kv_heads) * d.head_dim), BF16),
            ((1, d.heads, 1, ctx), F32), ((1, 1, d.hidden), BF16), ((1, 1, d.inter), BF16),
            ((1, 1, d.inter), BF16), ((1, 1, d.hidden), BF16), ((1, 1, d.vocab), F32),
        ],
        "prefill_step": [
            ((1, 512, d.hidden), BF16), ((1, 512, (d.heads + 2 * d.kv_heads) * d.head_dim), BF16),
            ((1, 512, d.hidden), BF16), ((1, 512, d.inter), BF16), ((1, 512, d.inter), BF16),
        ],
    }
    mixes["mixed"] = [r for mix in mixes.values() for r in mix]
    return mixes


MIXES = ("kv_blocks", "decode_step", "prefill_step", "mixed")


class Allocator:
    """One allocator method (from conf/optim) behind the workloads' interface, with its statistics."""

    def __init__(self, method):
        self.method = method
        self.get, self.put = method.get, method.put  # bound once: no wrapper cost on the timed path
        self.mgr = method if hasattr(method, "pool") else None  # PredictiveMemoryManager
        self.pool = method.pool if self.mgr is not None else (method if hasattr(method, "largest_free_block") else None)

    def step(self):
        return self.mgr.step() if self.mgr is not None else nullcontext()

    def extra(self) -> dict:
        out = {}
        if self.pool is not None:
            s = self.pool.stats()
            out.update(pool_hit_rate=round(s.hit_rate, 4), pool_fragmentation=round(s.fragmentation, 4),
                       pool_bytes_held=s.bytes_held, pool_requests=s.requests, pool_evictions=s.evictions)
        if self.mgr is not None:
            s = self.mgr.stats()
            out.update(prediction_hit_rate=round(s.hit_rate, 4), prediction_precision=round(s.precision, 4),
                       prediction_wasted=s.wasted)
        return out


def alloc_latency(alloc: Allocator, mix, device, samples: int, inner: int) -> list[float]:
    """Microseconds per get+put pair: each sample runs `inner` steps of the whole mix (get all,
    then put all, as a step does), after 3 warm-up steps that warm both the caching allocator and
    the pool. The device is synchronised first so no queued work is counted."""
    for _ in range(3):
        _one_step(alloc, mix)
    gt.sync(device)

    def sample():
        for _ in range(inner):
            _one_step(alloc, mix)

    ms = gt.time_calls(sample, HOST, samples, warmup=0)
    return [m * 1e3 / (inner * len(mix)) for m in ms]


def _one_step(alloc: Allocator, mix) -> None:
    with alloc.step():
        held = [alloc.get(shape, dtype) for shape, dtype in mix]
        for t in held:
            alloc.put(t)


def largest_free_torch_block(device: torch.device) -> int:
    """Largest inactive block inside reserved segments: the biggest request served without growth."""
    best = 0
    for seg in torch.cuda.memory_snapshot():
        if seg.get("device", device.index) != device.index:
            continue
        for block in seg.get("blocks", []):
            if block.get("state") == "inactive":
                best = max(best, block["size"])
    return best


def serving_workload(alloc: Allocator, device: torch.device, d: Dims, n_requests: int, concurrency: int,
                     prompt_range: tuple[int, int], decode_range: tuple[int, int], seed: int = 0) -> dict:
    """Varied-length requests served `concurrency` at a time, round robin, one step each.

    KV grows like transformers' DynamicCache (a new, one-token-longer K and V tensor per layer per
    step; the copy is left out, the allocation pattern is what matters here), plus each step's
    activations. Fragmentation is sampled after every step as 1 - live/reserved, where live is the
    bytes this workload holds in tensors (a pool's idle blocks count as fragmentation, as the
    caching allocator's do), and as torch's own 1 - allocated/reserved. Stops with the last
    `concurrency` requests still in flight, so the end state has live KV to fragment around.
    """
    rng = random.Random(seed)
    kv_shape = lambda n: (1, d.kv_heads, n, d.head_dim)  # noqa: E731
    active, live_bytes, admitted, done = [], 0, 0, 0
    frag_live, frag_torch, peak_live, peak_reserved, allocs = [], [], 0, 0, 0
    is_cuda = device.type == "cuda"

    def take(shape, dtype):
        nonlocal live_bytes, allocs
        allocs += 1
        t = alloc.get(shape, dtype)
        live_bytes += t.numel() * t.element_size()
        return t

    def drop(t):
        nonlocal live_bytes
        live_bytes -= t.numel() * t.element_size()
        alloc.put(t)

    while done < n_requests - concurrency:
        while len(active) < concurrency and admitted < n_requests:
            p, g = rng.randint(*prompt_range), rng.randint(*decode_range)
            with alloc.step():  # a prefill is a step too (the predictive manager serves requests only in one)
                acts = [take((1, p, d.hidden), BF16), take((1, p, d.inter), BF16), take((1, p, d.inter), BF16)]
                kv = [take(kv_shape(p), BF16) for _ in range(2 * d.layers)]
                for t in acts:
                    drop(t)
            active.append({"n": p, "left": g, "kv": kv})
            admitted += 1
        for req in list(active):
            with alloc.step():
                acts = [take((1, 1, d.hidden), BF16), take((1, 1, d.inter), BF16), take((1, 1, d.vocab), F32)]
                new_kv = [take(kv_shape(req["n"] + 1), BF16) for _ in range(2 * d.layers)]
                for t in req["kv"] + acts:
                    drop(t)
            req["kv"], req["n"], req["left"] = new_kv, req["n"] + 1, req["left"] - 1
            if req["left"] == 0:
                for t in req["kv"]:
                    drop(t)
                active.remove(req)
                done += 1
            peak_live = max(peak_live, live_bytes)
            if is_cuda:
                reserved = torch.cuda.memory_reserved(device)
                peak_reserved = max(peak_reserved, reserved)
                frag_live.append(1 - live_bytes / reserved)
                frag_torch.append(1 - torch.cuda.memory_allocated(device) / reserved)
    out = {"requests": n_requests, "allocations": allocs, "peak_live_bytes": peak_live, **alloc.extra()}
    if is_cuda:
        gt.sync(device)
        free_torch = largest_free_torch_block(device)
        free_pool = alloc.pool.largest_free_block() if alloc.pool is not None else 0
        out.update(
            frag_live_series=frag_live, frag_torch_series=frag_torch,
            frag_live_end=frag_live[-1], frag_torch_end=frag_torch[-1],
            peak_reserved_bytes=peak_reserved, reserved_end_bytes=torch.cuda.memory_reserved(device),
            largest_fit_bytes=max(free_torch, free_pool), largest_fit_torch_bytes=free_torch,
        )
    return out


class DecodeLoop:
    """A synthetic decode loop with explicit output buffers: per layer and step, allocate the
    step's tensors through an `Allocator` and run the layer's matmuls into them (`out=`). Timing
    the allocation calls against the whole step gives the allocator's time share (C3)."""

    def __init__(self, d: Dims, device: torch.device, ctx: int):
        g = torch.Generator(device=device).manual_seed(0)
        w = lambda *s: torch.randn(*s, generator=g, device=device, dtype=BF16) * 0.02  # noqa: E731
        qkv_out = (d.heads + 2 * d.kv_heads) * d.head_dim
        self.weights = [(w(d.hidden, qkv_out), w(d.hidden, d.hidden), w(d.hidden, d.inter), w(d.inter, d.hidden))
                        for _ in range(d.layers)]
        self.d, self.device, self.ctx = d, device, ctx

    def step(self, alloc: Allocator) -> float:
        """One decode step; returns host seconds spent inside allocator calls."""
        d, spent = self.d, 0.0
        x = torch.zeros(1, d.hidden, device=self.device, dtype=BF16)
        with alloc.step():
            for w_qkv, w_o, w_up, w_down in self.weights:
                t0 = time.perf_counter()
                qkv = alloc.get((1, w_qkv.shape[1]), BF16)
                scores = alloc.get((1, d.heads, 1, self.ctx), F32)
                h = alloc.get((1, d.hidden), BF16)
                up = alloc.get((1, d.inter), BF16)
                y = alloc.get((1, d.hidden), BF16)
                spent += time.perf_counter() - t0
                torch.matmul(x, w_qkv, out=qkv)
                scores.fill_(0.0)
                torch.matmul(qkv[:, : d.hidden], w_o, out=h)
                torch.matmul(h, w_up, out=up)
                torch.matmul(up, w_down, out=y)
                x = x + y
                t0 = time.perf_counter()
                for t in (qkv, scores, h, up, y):
                    alloc.put(t)
                spent += time.perf_counter() - t0
        return spent
